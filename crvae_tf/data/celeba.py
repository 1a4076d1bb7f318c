"""CelebA for the adversarial experiments: `load_celeba` returns an `ImageSplits` of uint8 `[num_images, R, R, 3]`
read-only memory maps (R = 64 or 128) in [0, 255]; `pipeline.make_dataset` turns them into float32 batches in
[0, 1] and flips training batches horizontally. `ImageSplits.names` gives each row's file name ('000001.jpg';
tfds examples 'celeb_a/<split>[<index>]'), which `masks.dataset_landmark_masks` looks up in
`list_landmarks_align_celeba.txt`; it is None for a cache written before names were recorded (`image_cache`).
Gin-free.

CelebA ('celeba'):
  * a local folder of aligned CelebA images at ANY resolution (`local_path`; e.g. the official
    `img_align_celeba/` at 178x218, or a 2x-downsampled copy at 89x109). File names `NNNNNN.jpg` (also
    .jpeg / .png) are the CelebA ids. Splits come from `list_eval_partition.txt` (or Kaggle's
    `list_eval_partition.csv`; 0 train, 1 validation, 2 test) when it lies in the folder, its parent or
    grandparent, or an `Eval/` folder beside them; otherwise from the official id ranges 1-162770 train,
    162771-182637 validation, 182638-202599 test. When that leaves validation or test empty (a partial copy:
    e.g. ids 1-10000 are all official "train"), ALL local images form one pool and a seeded hold-out
    (`validation_size` images for validation and as many for test) replaces the official split; `source`
    and the manifest say so.
  * tensorflow-datasets `celeb_a` (when `local_path` is None), splits train / validation / test, from a
    prepared `data_dir`, or prepared from `manual_dir` holding the five original files. tfds' own download
    of CelebA (Google Drive) is never attempted: it fails with quota / HTML pages (a known tfds problem).

  Face crop: `crop=(top, left, height, width)` in the coordinates of the 178x218 (width x height) aligned
  image, default `CELEBA_FACE_CROP = (40, 15, 148, 148)` (rows 40:188, columns 15:163: the crop of Larsen
  et al.'s VAE-GAN). For an image of H x W pixels the rows are scaled by H / 218 and the columns by W / 178,
  and each of top, left, height, width is rounded to the nearest pixel (halves up): 89x109 images get rows
  20:94, columns 8:82 (the exact window, columns 7.5:81.5, is off by half a pixel). `crop='none'` keeps the
  whole image (for pre-cropped faces). The crop is then resized to R x R (bilinear, antialiased).
"""

import os
from typing import Dict
from typing import Optional

from crvae_tf.data.image_cache import build_or_load
from crvae_tf.data.image_cache import check_fraction
from crvae_tf.data.image_cache import check_resolution
from crvae_tf.data.image_cache import holdout_size
from crvae_tf.data.image_cache import source_text
from crvae_tf.data.image_files import CELEBA_MANUAL_FILES
from crvae_tf.data.image_files import Item
from crvae_tf.data.image_files import Source
from crvae_tf.data.image_files import abspath
from crvae_tf.data.image_files import check_celeba_crop
from crvae_tf.data.image_files import list_images
from crvae_tf.data.image_files import listing_fingerprint
from crvae_tf.data.image_files import tfds_builder
from crvae_tf.data.image_files import tfds_source
from crvae_tf.data.splits import SPLIT_NAMES
from crvae_tf.data.splits import DataUnavailableError
from crvae_tf.data.splits import ImageSplits

CELEBA_OFFICIAL_RANGES = {"train": (1, 162770), "validation": (162771, 182637), "test": (182638, 202599)}
_PARTITION_NAMES = ("list_eval_partition.txt", "list_eval_partition.csv")
_PARTITION_SPLITS = {0: "train", 1: "validation", 2: "test"}


def _find_partition_file(folder: str) -> Optional[str]:
    candidates = []
    for base in (folder, os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))):
        candidates += [os.path.join(base, name) for name in _PARTITION_NAMES]
        candidates += [os.path.join(base, "Eval", name) for name in _PARTITION_NAMES]
    return next((path for path in candidates if os.path.isfile(path)), None)


def _read_partition(path: str) -> Dict[str, str]:
    """`list_eval_partition.txt` (`<file> <0|1|2>`) or Kaggle's `.csv` (`image_id,partition` header)."""
    partition = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            fields = line.replace(",", " ").split()
            if not fields:
                continue
            if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
                if number == 1:
                    continue  # A header line.
                raise DataUnavailableError(
                    f"{path}:{number}: expected '<image file> <0|1|2>', got {line.strip()!r}. Fix or remove the "
                    "partition file (without it the official CelebA id ranges are used)."
                )
            if int(fields[1]) not in _PARTITION_SPLITS:
                raise DataUnavailableError(
                    f"{path}:{number}: partition {fields[1]} is not 0 (train), 1 (validation) or 2 (test)."
                )
            partition[fields[0]] = _PARTITION_SPLITS[int(fields[1])]
    return partition


def _official_celeba_split(name: str) -> Optional[str]:
    stem = os.path.splitext(name)[0]
    if not stem.isdigit():
        return None
    index = int(stem)
    for split, (first, last) in CELEBA_OFFICIAL_RANGES.items():
        if first <= index <= last:
            return split
    return None


def list_celeba_folder(local_path) -> Source:
    """Lists a folder of aligned CelebA images and assigns the splits (see the module docstring)."""
    folder = abspath(local_path)
    expected = (
        "a folder of aligned CelebA images 000001.jpg ... 202599.jpg (any resolution, e.g. the official "
        "img_align_celeba/ or a downsampled copy)"
    )
    if not os.path.isdir(folder):
        hint = (
            " It is a file: unzip it (img_align_celeba.zip) and point to the folder." if os.path.isfile(folder) else ""
        )
        raise DataUnavailableError(
            f"dataset.local_path={os.fspath(local_path)!r} is not a folder (resolved to {folder}).{hint} Expected "
            f"{expected}. Set dataset.local_path to that folder, or leave it unset to read tensorflow-datasets "
            "celeb_a (dataset.data_dir, dataset.manual_dir)."
        )
    names = list_images(folder)
    if not names and os.path.isdir(os.path.join(folder, "img_align_celeba")):
        folder = os.path.join(folder, "img_align_celeba")
        names = list_images(folder)
    if not names:
        raise DataUnavailableError(
            f"dataset.local_path={os.fspath(local_path)!r} ({folder}) holds no .jpg/.jpeg/.png images. Expected "
            f"{expected}. Set dataset.local_path to that folder. Entries found: {sorted(os.listdir(folder))[:10]}."
        )
    partition_file = _find_partition_file(folder)
    notes, missing = [], []
    metadata = []
    if partition_file is not None:
        partition = _read_partition(partition_file)
        present = set(names)
        unlisted = [name for name in names if name not in partition]
        missing = [name for name in partition if name not in present]
        names = [name for name in names if name in partition]
        splits = [partition[name] for name in names]
        metadata = [partition_file]
        rule = f"partition file {partition_file}"
        num_listed = len(partition)
        if unlisted:
            notes.append(
                f"{len(unlisted)} images not in {os.path.basename(partition_file)} were ignored (e.g. {unlisted[:3]})"
            )
    else:
        splits = [_official_celeba_split(name) for name in names]
        unnumbered = [name for name, split in zip(names, splits) if split is None]
        rule = "official CelebA id ranges (1-162770 train, 162771-182637 validation, 182638-202599 test)"
        num_listed = len(names)
        if unnumbered:
            notes.append(
                f"{len(unnumbered)} images without a CelebA id in 1..202599 (e.g. {unnumbered[:3]}) go "
                "to the hold-out pool"
            )
    counts = {split: splits.count(split) for split in SPLIT_NAMES}
    if counts["validation"] == 0 or counts["test"] == 0 or None in splits:
        notes.append(
            f"{rule} -> {counts} images per split here (a partial copy?), so all {len(names)} images "
            "form one pool with a seeded validation / test hold-out instead"
        )
        splits = ["pool"] * len(names)
    else:
        notes.append(f"splits from the {rule}")
    paths = [os.path.join(folder, name) for name in names]
    items = [Item("celeba", split, name, path=path) for name, split, path in zip(names, splits, paths)]
    return Source(
        "celeba", f"folder:{folder}", items, listing_fingerprint(folder, paths, metadata), num_listed, missing, notes
    )


def list_tfds_celeba(data_dir, download, manual_dir) -> Source:
    hint = (
        "Point dataset.local_path at a folder of aligned CelebA JPEGs (000001.jpg ..., any resolution), or set "
        f"dataset.manual_dir to a folder holding {list(CELEBA_MANUAL_FILES)}, or dataset.data_dir to a tfds "
        "data directory where celeb_a is already prepared."
    )
    builder, datasets = tfds_builder("celeb_a", data_dir, download, manual_dir, SPLIT_NAMES, hint)
    return tfds_source("celeba", "celeb_a", builder, datasets, with_box=False)


def load_celeba(
    *,
    local_path,
    data_dir,
    download,
    manual_dir,
    resolution,
    crop,
    validation_size,
    seed,
    cache_dir,
    flip,
    max_corrupt_fraction,
    num_workers,
) -> ImageSplits:
    """CelebA at `resolution` x `resolution` (see the module docstring). Returns uint8 memmap splits."""
    resolution = check_resolution(resolution)
    crop = check_celeba_crop(crop)
    max_corrupt_fraction = check_fraction(max_corrupt_fraction, "max_corrupt_fraction")
    if local_path is not None:
        if manual_dir is not None:
            raise ValueError(
                "Set either dataset.local_path (a folder of aligned CelebA images) or dataset.manual_dir "
                "(the five original files for tfds celeb_a), not both."
            )
        source = list_celeba_folder(local_path)
        holdout = None
        if any(item.split == "pool" for item in source.items):
            holdout = {"seed": int(seed), "validation_size": validation_size, "num_holdouts": 2}
            holdout_size(validation_size, len(source.items), 2, "celeba")  # Fail before decoding.
    else:
        source = list_tfds_celeba(data_dir, download, manual_dir)
        holdout = None
    if crop == "none":
        crop_text = "whole image (crop='none')"
    else:
        crop_text = (
            f"face crop rows {crop[0]}:{crop[0] + crop[2]}, columns {crop[1]}:{crop[1] + crop[3]} of the "
            "178x218 image, scaled to each image's size"
        )
    cached = build_or_load(
        "celeba",
        [source],
        resolution=resolution,
        crop=crop,
        box_scale=1.0,
        holdout=holdout,
        cache_dir=cache_dir,
        data_dir=data_dir,
        max_corrupt_fraction=max_corrupt_fraction,
        num_workers=num_workers,
        describe_crop=crop_text,
    )
    return ImageSplits(
        "celeba",
        "none",
        cached.arrays["train"],
        cached.arrays["validation"],
        cached.arrays["test"],
        source_text("celeba", resolution, cached.manifest, cached.manifest_path, crop_text),
        flip=bool(flip),
        manifest_path=cached.manifest_path,
        names=cached.names,
    )
