"""RGB face and bird datasets for the adversarial experiments: CelebA and the Birds composite.

`data.load_image_splits('celeba' | 'birds', resolution=R, ...)` calls `load_celeba` / `load_birds` here. Both
return an `ImageSplits` of uint8 `[num_images, R, R, 3]` read-only memory maps (R = 64 or 128), pixel
values in [0, 255]; `data.make_dataset` turns them into float32 batches in [0, 1] and flips training batches
horizontally. Gin-free.

Sources
-------
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
    of CelebA (Google Drive) is never attempted: it fails with quota / HTML pages (user_pain_points B.1).

  Face crop: `crop=(top, left, height, width)` in the coordinates of the 178x218 (width x height) aligned
  image, default `CELEBA_FACE_CROP = (40, 15, 148, 148)` (rows 40:188, columns 15:163: the crop of Larsen
  et al.'s VAE-GAN). For an image of H x W pixels the rows are scaled by H / 218 and the columns by W / 178,
  and each of top, left, height, width is rounded to the nearest pixel (halves up): 89x109 images get rows
  20:94, columns 8:82 (the exact window, columns 7.5:81.5, is off by half a pixel). `crop='none'` keeps the
  whole image (for pre-cropped faces). The crop is then resized to R x R (bilinear, antialiased).

Birds ('birds'): the union of any subset of
  * CUB-200-2011 (`cub_path`): the `CUB_200_2011/` folder (or its parent) with `images.txt` (`<id> <path>`),
    `bounding_boxes.txt` (`<id> <x> <y> <width> <height>`, pixels, floats), `train_test_split.txt`
    (`<id> <1 = train, 0 = test>`) and `images/<path>`. `cub_path='tfds'` reads tensorflow-datasets
    `caltech_birds2011` instead (feature `bbox` = normalised [ymin, xmin, ymax, xmax]; splits train / test).
  * NABirds (`nabirds_path`): the `nabirds/` folder (or its parent) with the same three files (ids are
    UUIDs, boxes integers) and `images/<path>` (the release's layout, Van Horn et al. 2015).
  * Birdsnap (`birdsnap_path`): the folder with `images.txt`, tab-separated WITH a header line, fields
    `url, md5, path, species_id, bb_x1, bb_y1, bb_x2, bb_y2, <part>_x, <part>_y ...` (corner coordinates,
    the box is x1..x2, y1..y2, width x2 - x1), the images at `images/<path>` or `download/images/<path>`
    (where the release's `get_birdsnap.py` puts them), and optionally `test_images.txt` (a `path` header, then
    one path per line: the 2,443 test images of Berg et al. 2014; without it every image is training data).
  Images listed in the metadata but absent on disk (Flickr images that could no longer be fetched, partial
  copies such as a 200-image CUB sample) are counted in the manifest, not an error, unless a source has
  none at all. Train = the union of the sources' train images, test = the union of their test images,
  validation = a seeded hold-out of `validation_size` training images. The manifest and `source` report
  each source's contribution and the total against the paper's 106,474.

  ROI crop: the bounding box (clipped to the image) is made square, side = max(box width, box height) *
  `box_scale` (default 1.0), centred on the box centre, then shifted inside the image where it fits; along
  an axis where the side exceeds the image, the missing rows / columns repeat the edge pixels. Resized to
  R x R (bilinear, antialiased).

Cache
-----
Each image is decoded, cropped and resized ONCE; the result is stored as uint8 `.npy` files, one per
split, in `<cache root>/<dataset>-<R>-<key>/` (`train.npy`, `validation.npy`, `test.npy`, `manifest.json`),
where the cache root is `cache_dir`, else `<data_dir>/crvae_tf_cache`, else `~/.cache/crvae_tf`, and key =
the first 16 hex digits of a SHA-256 over the source listings (relative path, size and mtime of every
present image, the bytes of every metadata file, the first image of every tfds split), the crop rule,
resolution and hold-out (seed, size). A changed source therefore gets a new folder (old folders can be
deleted by hand). Every file is written to a temporary name and renamed; `manifest.json` is written last
and marks the folder complete, so an interrupted preprocessing run is redone, never half-read.

Validation (user_pain_points B.4)
---------------------------------
Undecodable images (truncated, empty, an HTML page saved as .jpg, ...), boxes outside their image and
blank images (every pixel equal) are skipped, listed with the reason in the manifest (`rejected`) and
counted in a logged warning. If more than `max_corrupt_fraction` (default 1%) of the present images are
rejected, nothing is cached: the list is written to `<cache folder>/rejected.json` and a
`DataUnavailableError` names it.
"""

import concurrent.futures
import csv
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from typing import Callable
from typing import Dict
from typing import Iterable
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import data as data_lib

RESOLUTIONS = (64, 128)
CELEBA_ALIGNED_SHAPE = (218, 178)  # (height, width) of the official aligned CelebA images.
CELEBA_FACE_CROP = (40, 15, 148, 148)  # (top, left, height, width) in 178x218 coordinates (Larsen et al.).
CELEBA_OFFICIAL_RANGES = {"train": (1, 162770), "validation": (162771, 182637), "test": (182638, 202599)}
CELEBA_MANUAL_FILES = (
    "img_align_celeba.zip",
    "list_eval_partition.txt",
    "list_attr_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "identity_CelebA.txt",
)
PAPER_BIRDS_TOTAL = 106474  # Birdsnap + NABirds + CUB ROIs in Shang et al. (paper section 4).
BIRD_SOURCES = ("cub", "birdsnap", "nabirds")
DEFAULT_HOLDOUT_FRACTION = 0.05
DEFAULT_MAX_CORRUPT_FRACTION = 0.01
CACHE_FORMAT = "crvae_tf-image-cache-v1"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_CUB_FILES = ("images.txt", "bounding_boxes.txt", "train_test_split.txt")
_PARTITION_NAMES = ("list_eval_partition.txt", "list_eval_partition.csv")
_PARTITION_SPLITS = {0: "train", 1: "validation", 2: "test"}
_BINDINGS = {
    "celeba": "dataset.local_path",
    "cub": "dataset.cub_path",
    "birdsnap": "dataset.birdsnap_path",
    "nabirds": "dataset.nabirds_path",
}
_CHUNK = 256  # Images submitted to the worker threads at once (bounds the memory of decoded tfds images).

_logger = logging.getLogger(__name__)


class _Rejected(Exception):
    """An image that cannot be used; the message is the reason recorded in the manifest."""


@dataclasses.dataclass
class _Item:
    """One image to preprocess.

    `path` (a file) or `image` (decoded uint8 `[H, W, 3]`, from tfds) is set; `box` is None (CelebA face
    crop) or `(x, y, width, height)` pixels (birds; for tfds boxes normalised `[ymin, xmin, ymax, xmax]`
    with `normalized_box=True`). `split` is 'train' | 'validation' | 'test' | 'pool' (hold-out pending).
    """

    source: str
    split: str
    name: str
    path: Optional[str] = None
    image: Optional[np.ndarray] = None
    box: Optional[Tuple[float, float, float, float]] = None
    normalized_box: bool = False


@dataclasses.dataclass
class _Source:
    """The listing of one source: what to decode and how it was found."""

    name: str
    description: str  # e.g. "folder:/data/CUB_200_2011" or "tfds:caltech_birds2011".
    items: List[_Item]  # Present images (local folders) or a lazy tfds iterable.
    fingerprint: str
    num_listed: int
    missing: List[str]
    notes: List[str] = dataclasses.field(default_factory=list)
    # tfds sources: split -> a function returning a fresh iterable of `_Item`s, and the examples per split.
    tfds_splits: Optional[Dict[str, Callable[[], Iterable[_Item]]]] = None
    tfds_counts: Optional[Dict[str, int]] = None

    def num_items(self, split: Optional[str] = None) -> int:
        """Present images (all splits, or one)."""
        if self.tfds_splits is None:
            return sum(1 for item in self.items if split is None or item.split == split)
        return sum(n for s, n in self.tfds_counts.items() if split is None or s == split)

    def iterate(self) -> Iterable[_Item]:
        if self.tfds_splits is None:
            yield from self.items
        else:
            for make_items in self.tfds_splits.values():
                yield from make_items()


# ----------------------------------------------------------------------------------------------------
# Crop rules.
# ----------------------------------------------------------------------------------------------------


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def check_celeba_crop(crop) -> Union[str, Tuple[int, int, int, int]]:
    """Validates `crop`: None (the default face crop), 'none' (whole image) or `(top, left, height, width)`."""
    if crop is None:
        return CELEBA_FACE_CROP
    if isinstance(crop, str):
        if crop == "none":
            return "none"
        raise ValueError(
            f"crop={crop!r} must be None (the default face crop {CELEBA_FACE_CROP}), 'none' (use the "
            "whole, pre-cropped image) or (top, left, height, width) in 178x218 coordinates; set "
            "dataset.crop."
        )
    values = tuple(crop) if isinstance(crop, (tuple, list)) else None
    height, width = CELEBA_ALIGNED_SHAPE
    if (
        values is None
        or len(values) != 4
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
        or values[0] < 0
        or values[1] < 0
        or values[2] < 1
        or values[3] < 1
        or values[0] + values[2] > height
        or values[1] + values[3] > width
    ):
        raise ValueError(
            f"crop={crop!r} must be four ints (top, left, height, width) of a window inside the "
            f"{width}x{height} (width x height) aligned CelebA image, e.g. {CELEBA_FACE_CROP} "
            "(rows 40:188, columns 15:163); set dataset.crop."
        )
    return tuple(int(v) for v in values)


def celeba_crop_window(height: int, width: int, crop) -> Tuple[int, int, int, int]:
    """The face window `(top, left, window_height, window_width)` in pixels of an `height x width` image.

    `crop` (from `check_celeba_crop`) is given in 178x218 coordinates; rows scale by `height / 218`,
    columns by `width / 178`, each value rounded to the nearest pixel (halves up) and the window clamped
    inside the image. `crop='none'` is the whole image.
    """
    if crop == "none":
        return 0, 0, height, width
    top, left, crop_height, crop_width = crop
    scale_y, scale_x = height / CELEBA_ALIGNED_SHAPE[0], width / CELEBA_ALIGNED_SHAPE[1]
    window_height = min(max(_round_half_up(crop_height * scale_y), 1), height)
    window_width = min(max(_round_half_up(crop_width * scale_x), 1), width)
    top = min(max(_round_half_up(top * scale_y), 0), height - window_height)
    left = min(max(_round_half_up(left * scale_x), 0), width - window_width)
    return top, left, window_height, window_width


def square_box_window(
    height: int, width: int, box: Sequence[float], box_scale: float = 1.0
) -> Tuple[int, int, int, int]:
    """The square ROI `(top, left, side, side)` around a bounding box `(x, y, box_width, box_height)` (pixels).

    The box is clipped to the image; side = round(max(box width, box height) * box_scale), centred on the
    clipped box's centre; on each axis where side <= the image extent the square is shifted inside the
    image, otherwise it stays centred and `crop_window` repeats the edge pixels.

    Raises:
      _Rejected: the box is empty or lies outside the image.
    """
    x, y, box_width, box_height = (float(v) for v in box)
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + box_width, float(width)), min(y + box_height, float(height))
    if not all(map(math.isfinite, (x, y, box_width, box_height))) or x1 - x0 < 1.0 or y1 - y0 < 1.0:
        raise _Rejected(
            f"bounding box (x={x:g}, y={y:g}, w={box_width:g}, h={box_height:g}) is empty or lies "
            f"outside the {width}x{height} image"
        )
    side = max(_round_half_up(max(x1 - x0, y1 - y0) * box_scale), 1)
    top = _round_half_up((y0 + y1) / 2.0 - side / 2.0)
    left = _round_half_up((x0 + x1) / 2.0 - side / 2.0)
    if side <= height:
        top = min(max(top, 0), height - side)
    if side <= width:
        left = min(max(left, 0), width - side)
    return top, left, side, side


def crop_window(image: np.ndarray, window: Tuple[int, int, int, int]) -> np.ndarray:
    """`image[top:top + h, left:left + w]` of a `[H, W, C]` array; rows / columns outside repeat the edge."""
    top, left, window_height, window_width = window
    height, width = image.shape[:2]
    if top >= 0 and left >= 0 and top + window_height <= height and left + window_width <= width:
        return image[top : top + window_height, left : left + window_width]
    rows = np.clip(np.arange(top, top + window_height), 0, height - 1)
    cols = np.clip(np.arange(left, left + window_width), 0, width - 1)
    return image[rows[:, None], cols[None, :]]


def resize_to_uint8(patch: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 `[h, w, 3]` -> uint8 `[R, R, 3]`: bilinear with antialiasing (box-filtered when shrinking), rounded.

    Raises:
      _Rejected: every pixel of `patch` has the same value (a blank image), or the resize produced
        non-finite or out-of-range values (the value-range check of user_pain_points B.4).
    """
    if int(patch.max()) == int(patch.min()):
        raise _Rejected(f"blank image: every pixel of the crop equals {int(patch.max())}")
    resized = tf.image.resize(
        tf.convert_to_tensor(patch, tf.float32), [resolution, resolution], method="bilinear", antialias=True
    ).numpy()
    if not np.all(np.isfinite(resized)) or resized.min() < -1.0 or resized.max() > 256.0:
        raise _Rejected(f"resized values outside [0, 255] (min {resized.min()}, max {resized.max()})")
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def decode_image_file(path: str) -> np.ndarray:
    """Reads and decodes a JPEG / PNG / GIF / BMP file to uint8 `[H, W, 3]` (grayscale and RGBA converted).

    Raises:
      _Rejected: the file is empty, unreadable, an HTML / text page, or not a decodable image.
    """
    try:
        with open(path, "rb") as f:
            payload = f.read()
    except OSError as error:
        raise _Rejected(f"unreadable: {type(error).__name__}: {error}") from error
    if not payload:
        raise _Rejected("empty file (0 bytes)")
    head = payload[:256].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"{")):
        raise _Rejected("an HTML / text page, not an image (a failed or blocked download?)")
    try:
        image = tf.io.decode_image(payload, channels=3, expand_animations=False).numpy()
    except tf.errors.OpError as error:  # InvalidArgument (bad data), Unknown, ...
        message = " ".join(str(error.message).split())
        raise _Rejected(f"undecodable ({len(payload)} bytes): {message[:200]}") from error
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise _Rejected(f"decoded to an empty image of shape {image.shape}")
    return image


# ----------------------------------------------------------------------------------------------------
# Listings.
# ----------------------------------------------------------------------------------------------------


def _abspath(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"Expected a path string, got {path!r}.")
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listing_fingerprint(root: str, paths: Sequence[str], metadata_files: Sequence[str]) -> str:
    """SHA-256 over (path relative to `root`, size, mtime_ns) of `paths` and the bytes of `metadata_files`."""
    digest = hashlib.sha256()
    for path in metadata_files:
        digest.update(f"meta:{os.path.relpath(path, root)}:{_file_digest(path)}\n".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _list_images(folder: str) -> List[str]:
    return sorted(
        name
        for name in os.listdir(folder)
        if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name))
    )


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
                raise data_lib.DataUnavailableError(
                    f"{path}:{number}: expected '<image file> <0|1|2>', got {line.strip()!r}. Fix or remove the "
                    "partition file (without it the official CelebA id ranges are used)."
                )
            if int(fields[1]) not in _PARTITION_SPLITS:
                raise data_lib.DataUnavailableError(
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


def list_celeba_folder(local_path) -> _Source:
    """Lists a folder of aligned CelebA images and assigns the splits (see the module docstring)."""
    folder = _abspath(local_path)
    expected = (
        "a folder of aligned CelebA images 000001.jpg ... 202599.jpg (any resolution, e.g. the official "
        "img_align_celeba/ or a downsampled copy)"
    )
    if not os.path.isdir(folder):
        hint = (
            " It is a file: unzip it (img_align_celeba.zip) and point to the folder." if os.path.isfile(folder) else ""
        )
        raise data_lib.DataUnavailableError(
            f"dataset.local_path={os.fspath(local_path)!r} is not a folder (resolved to {folder}).{hint} Expected "
            f"{expected}. Set dataset.local_path to that folder, or leave it unset to read tensorflow-datasets "
            "celeb_a (dataset.data_dir, dataset.manual_dir)."
        )
    names = _list_images(folder)
    if not names and os.path.isdir(os.path.join(folder, "img_align_celeba")):
        folder = os.path.join(folder, "img_align_celeba")
        names = _list_images(folder)
    if not names:
        raise data_lib.DataUnavailableError(
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
    counts = {split: splits.count(split) for split in data_lib.SPLIT_NAMES}
    if counts["validation"] == 0 or counts["test"] == 0 or None in splits:
        notes.append(
            f"{rule} -> {counts} images per split here (a partial copy?), so all {len(names)} images "
            "form one pool with a seeded validation / test hold-out instead"
        )
        splits = ["pool"] * len(names)
    else:
        notes.append(f"splits from the {rule}")
    paths = [os.path.join(folder, name) for name in names]
    items = [_Item("celeba", split, name, path=path) for name, split, path in zip(names, splits, paths)]
    return _Source(
        "celeba", f"folder:{folder}", items, _listing_fingerprint(folder, paths, metadata), num_listed, missing, notes
    )


def _locate(path, source: str, marker_dir: str, required: Sequence[str]) -> str:
    root = _abspath(path)
    for candidate in (root, os.path.join(root, marker_dir)):
        if all(os.path.isfile(os.path.join(candidate, name)) for name in required):
            return candidate
    found = sorted(os.listdir(root))[:12] if os.path.isdir(root) else "(not a folder)"
    raise data_lib.DataUnavailableError(
        f"{_BINDINGS[source]}={os.fspath(path)!r}: expected {marker_dir}/{', '.join(required)} and "
        f"{marker_dir}/images/ under {root} (or {', '.join(required)} directly in it); found {found}. Set "
        f"{_BINDINGS[source]} to the {marker_dir} folder of the {source} release."
    )


def _read_id_table(path: str, num_fields: int, binding: str) -> Dict[str, List[str]]:
    table = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != num_fields:
                raise data_lib.DataUnavailableError(
                    f"{path}:{number}: expected {num_fields} space-separated fields, got {line.strip()!r}. The file "
                    f"is damaged or not from this dataset; fix {binding}."
                )
            table[fields[0]] = fields[1:]
    return table


def list_cub_style(path, source: str) -> _Source:
    """CUB-200-2011 or NABirds folder: images.txt, bounding_boxes.txt (x y w h), train_test_split.txt, images/."""
    marker = "CUB_200_2011" if source == "cub" else "nabirds"
    root = _locate(path, source, marker, _CUB_FILES)
    binding = _BINDINGS[source]
    files = [os.path.join(root, name) for name in _CUB_FILES]
    images = _read_id_table(files[0], 2, binding)
    boxes = _read_id_table(files[1], 5, binding)
    is_train = _read_id_table(files[2], 2, binding)
    items, missing = [], []
    for image_id, (relative,) in images.items():
        if image_id not in boxes or image_id not in is_train:
            raise data_lib.DataUnavailableError(
                f"{root}: image id {image_id} of images.txt has no row in bounding_boxes.txt or "
                f"train_test_split.txt. The metadata files are from different releases; fix {binding}."
            )
        try:
            box = tuple(float(v) for v in boxes[image_id])
        except ValueError as error:
            raise data_lib.DataUnavailableError(
                f"{files[1]}: bad box for id {image_id}: {boxes[image_id]}; fix {binding}."
            ) from error
        file_path = os.path.join(root, "images", relative)
        if not os.path.isfile(file_path):
            missing.append(relative)
            continue
        split = "train" if is_train[image_id][0] == "1" else "test"
        items.append(_Item(source, split, relative, path=file_path, box=box))
    return _make_local_source(source, root, items, images, missing, files, marker)


def list_birdsnap(path) -> _Source:
    """Birdsnap folder: images.txt (TSV with header: url md5 path species_id bb_x1 bb_y1 bb_x2 bb_y2 ...)."""
    root = _locate(path, "birdsnap", "birdsnap", ("images.txt",))
    binding = _BINDINGS["birdsnap"]
    listing = os.path.join(root, "images.txt")
    with open(listing, encoding="utf-8", errors="replace", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header = [field.strip() for field in rows[0]] if rows else []
    needed = ("path", "bb_x1", "bb_y1", "bb_x2", "bb_y2")
    if not all(field in header for field in needed):
        raise data_lib.DataUnavailableError(
            f"{listing}: the header line {header[:8]} lacks the fields {list(needed)}. Birdsnap's images.txt is "
            f"tab-separated with a header (url, md5, path, species_id, bb_x1, bb_y1, bb_x2, bb_y2, ...); fix "
            f"{binding}."
        )
    column = {field: header.index(field) for field in needed}
    test_file = os.path.join(root, "test_images.txt")
    test_paths, notes = set(), []
    if os.path.isfile(test_file):
        with open(test_file, encoding="utf-8", errors="replace") as f:
            test_paths = {line.strip() for line in f if line.strip()} - {"path"}
    else:
        notes.append("no test_images.txt: every Birdsnap image is training data")
    image_dirs = [os.path.join(root, "images"), os.path.join(root, "download", "images")]
    image_dir = next((d for d in image_dirs if os.path.isdir(d)), image_dirs[0])
    items, missing, listed = [], [], {}
    for number, row in enumerate(rows[1:], 2):
        if not row or not any(field.strip() for field in row):
            continue
        try:
            relative = row[column["path"]].strip()
            x1, y1, x2, y2 = (float(row[column[k]]) for k in ("bb_x1", "bb_y1", "bb_x2", "bb_y2"))
        except (IndexError, ValueError) as error:
            raise data_lib.DataUnavailableError(
                f"{listing}:{number}: malformed row {row[:8]}; fix {binding}."
            ) from error
        listed[relative] = True
        file_path = os.path.join(image_dir, relative)
        if not os.path.isfile(file_path):
            missing.append(relative)
            continue
        split = "test" if relative in test_paths else "train"
        items.append(_Item("birdsnap", split, relative, path=file_path, box=(x1, y1, x2 - x1, y2 - y1)))
    metadata = [listing] + ([test_file] if os.path.isfile(test_file) else [])
    source = _make_local_source(
        "birdsnap",
        root,
        items,
        listed,
        missing,
        metadata,
        f"birdsnap (images under {os.path.relpath(image_dir, root)}/)",
    )
    source.notes.extend(notes)
    return source


def _make_local_source(source, root, items, listed, missing, metadata, marker) -> _Source:
    if not items:
        raise data_lib.DataUnavailableError(
            f"{_BINDINGS[source]}: none of the {len(listed)} images listed under {root} exists on disk (e.g. "
            f"{os.path.join(root, 'images', missing[0]) if missing else '(empty listing)'}). Expected the image "
            f"files of the {marker} release under its images/ folder; fix {_BINDINGS[source]}."
        )
    fingerprint = _listing_fingerprint(root, [item.path for item in items], metadata)
    notes = [f"{len(missing)} of {len(listed)} listed images are not on disk"] if missing else []
    return _Source(source, f"folder:{root}", items, fingerprint, len(listed), missing, notes)


# ----------------------------------------------------------------------------------------------------
# tensorflow-datasets sources.
# ----------------------------------------------------------------------------------------------------


def _tfds_builder(tfds_name: str, data_dir, download: bool, manual_dir, splits: Sequence[str], binding_hint: str):
    """Returns `{split: tf.data.Dataset}` of a prepared (or mocked) tfds dataset; prepares it only on request."""

    def unavailable(error: BaseException) -> data_lib.DataUnavailableError:
        return data_lib.DataUnavailableError(
            f"Could not load tfds dataset {tfds_name!r} (data_dir={data_dir!r}, manual_dir={manual_dir!r}, "
            f"download={download}): {type(error).__name__}: {data_lib._first_line(error)}. {binding_hint}"
        )

    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        builder = tfds.builder(tfds_name, data_dir=data_dir)
    except Exception as error:  # ImportError, unknown builder, ...
        raise unavailable(error) from error

    def read():
        return {split: builder.as_dataset(split=split, shuffle_files=False) for split in splits}

    try:
        return builder, read()
    except AssertionError as not_prepared:  # "could not find data in <dir>": not prepared.
        prepare = manual_dir is not None or (download and tfds_name != "celeb_a")
        if not prepare:
            raise unavailable(not_prepared) from not_prepared
    except Exception as error:
        raise unavailable(error) from error
    if manual_dir is not None:
        manual = _abspath(manual_dir)
        if tfds_name == "celeb_a":
            absent = [name for name in CELEBA_MANUAL_FILES if not os.path.isfile(os.path.join(manual, name))]
            if absent:
                raise data_lib.DataUnavailableError(
                    f"dataset.manual_dir={os.fspath(manual_dir)!r} lacks {absent}. tfds celeb_a is prepared from the "
                    f"five original files {list(CELEBA_MANUAL_FILES)} (checksums verified; tfds never downloads "
                    f"CelebA here). {binding_hint}"
                )
        download_config = tfds.download.DownloadConfig(manual_dir=manual)
    else:
        download_config = None
    try:
        builder.download_and_prepare(download_config=download_config)
        return builder, read()
    except Exception as error:  # Checksums, network, ...
        raise unavailable(error) from error


def _tfds_fingerprint(tfds_name, builder, datasets: Dict[str, tf.data.Dataset], image_key: str) -> str:
    digest = hashlib.sha256(f"tfds:{tfds_name}:{builder.version}:{builder.data_dir}\n".encode())
    for split, dataset in datasets.items():
        try:
            num_examples = builder.info.splits[split].num_examples
        except Exception:  # Not recorded (e.g. under tfds.testing.mock_data).
            num_examples = -1
        first = next(iter(dataset.take(1).as_numpy_iterator()), None)
        image = b"" if first is None else np.ascontiguousarray(first[image_key]).tobytes()
        digest.update(f"{split}:{num_examples}:{hashlib.sha256(image).hexdigest()}\n".encode())
    return digest.hexdigest()


def _tfds_count(builder, split: str, dataset: tf.data.Dataset) -> int:
    """Examples in a tfds split: the recorded count, else the dataset's cardinality, else one pass."""
    try:
        recorded = int(builder.info.splits[split].num_examples)
    except Exception:  # Not recorded (e.g. under tfds.testing.mock_data).
        recorded = 0
    if recorded > 0:
        return recorded
    cardinality = int(dataset.cardinality().numpy())
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1).numpy())


def _tfds_source(
    source_name: str, tfds_name: str, builder, datasets: Dict[str, tf.data.Dataset], with_box: bool
) -> _Source:

    def items_of(split, dataset):
        def make_items():
            for index, example in enumerate(dataset.as_numpy_iterator()):
                box = tuple(float(v) for v in example["bbox"]) if with_box else None
                yield _Item(
                    source_name,
                    split,
                    f"{tfds_name}/{split}[{index}]",
                    image=example["image"],
                    box=box,
                    normalized_box=with_box,
                )

        return make_items

    splits = {split: items_of(split, dataset) for split, dataset in datasets.items()}
    counts = {split: _tfds_count(builder, split, dataset) for split, dataset in datasets.items()}
    return _Source(
        source_name,
        f"tfds:{tfds_name}:{builder.version}",
        [],
        _tfds_fingerprint(tfds_name, builder, datasets, "image"),
        sum(counts.values()),
        [],
        [f"splits from tfds {tfds_name}"],
        tfds_splits=splits,
        tfds_counts=counts,
    )


def list_tfds_celeba(data_dir, download, manual_dir) -> _Source:
    hint = (
        "Point dataset.local_path at a folder of aligned CelebA JPEGs (000001.jpg ..., any resolution), or set "
        f"dataset.manual_dir to a folder holding {list(CELEBA_MANUAL_FILES)}, or dataset.data_dir to a tfds "
        "data directory where celeb_a is already prepared."
    )
    builder, datasets = _tfds_builder("celeb_a", data_dir, download, manual_dir, data_lib.SPLIT_NAMES, hint)
    return _tfds_source("celeba", "celeb_a", builder, datasets, with_box=False)


def list_tfds_cub(data_dir, download, manual_dir) -> _Source:
    hint = (
        "Set dataset.cub_path to a local CUB_200_2011 folder (images.txt, bounding_boxes.txt, "
        "train_test_split.txt, images/), or dataset.data_dir to a tfds data directory where caltech_birds2011 "
        "is prepared."
    )
    builder, datasets = _tfds_builder("caltech_birds2011", data_dir, download, manual_dir, ("train", "test"), hint)
    return _tfds_source("cub", "caltech_birds2011", builder, datasets, with_box=True)


# ----------------------------------------------------------------------------------------------------
# Preprocessing and the cache.
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Processed:
    """Per-item outcome of preprocessing, in submission order."""

    items: List[_Item]
    ok: List[bool]
    rejected: List[dict]
    windows: Dict[str, List[int]]  # "HxW" -> face window, CelebA only (one entry per image size seen).


def _process_item(item: _Item, resolution: int, crop, box_scale: float) -> Tuple[np.ndarray, Optional[tuple]]:
    image = decode_image_file(item.path) if item.image is None else item.image
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    height, width = image.shape[:2]
    if item.box is None:
        window = celeba_crop_window(height, width, crop)
        size_key = (height, width)
    else:
        box = item.box
        if item.normalized_box:  # tfds [ymin, xmin, ymax, xmax] in [0, 1].
            ymin, xmin, ymax, xmax = box
            box = (xmin * width, ymin * height, (xmax - xmin) * width, (ymax - ymin) * height)
        window = square_box_window(height, width, box, box_scale)
        size_key = None
    return resize_to_uint8(crop_window(image, window), resolution), (size_key, window)


def _preprocess(
    items: Iterable[_Item], pool_path: str, capacity: int, resolution: int, crop, box_scale: float, num_workers: int
) -> _Processed:
    """Decodes, crops and resizes `items` into rows 0.. of a uint8 `[capacity, R, R, 3]` .npy memory map."""
    pool = np.lib.format.open_memmap(
        pool_path, mode="w+", dtype=np.uint8, shape=(max(capacity, 1), resolution, resolution, 3)
    )
    done = _Processed([], [], [], {})
    last_log = [time.perf_counter()]

    def work(index_item):
        index, item = index_item
        try:
            pixels, (size_key, window) = _process_item(item, resolution, crop, box_scale)
        except _Rejected as reason:
            return index, str(reason), None
        finally:
            item.image = None  # tfds pixels: keep only the listing, not every decoded image.
        pool[index] = pixels  # noqa: F821 (the cell is deleted only after the pool is closed)
        return index, None, (size_key, window)

    def run(chunk):
        for index, reason, info in executor.map(work, chunk):
            item = chunk[index - chunk[0][0]][1]
            done.ok.append(reason is None)
            if reason is not None:
                done.rejected.append(
                    {"source": item.source, "split": item.split, "image": item.path or item.name, "reason": reason}
                )
            elif info[0] is not None:
                done.windows.setdefault(f"{info[0][0]}x{info[0][1]}", list(info[1]))
        if time.perf_counter() - last_log[0] > 10.0:
            last_log[0] = time.perf_counter()
            _logger.info("Preprocessed %d of %d images ...", len(done.ok), capacity)

    with concurrent.futures.ThreadPoolExecutor(max_workers=num_workers) as executor:
        chunk = []
        for item in items:
            if len(done.items) >= capacity:
                raise RuntimeError(f"More images than the {capacity} counted; the source changed while reading.")
            chunk.append((len(done.items), item))
            done.items.append(item)
            if len(chunk) == _CHUNK:
                run(chunk)
                chunk = []
        if chunk:
            run(chunk)
    pool.flush()
    del pool
    return done


def _write_npy(path: str, source: np.ndarray, rows: np.ndarray) -> None:
    """Writes `source[rows]` (uint8 `[n, R, R, 3]`) to `path` atomically, copying in chunks."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=folder)
    os.close(fd)
    try:
        if len(rows):
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(rows),) + source.shape[1:])
            for start in range(0, len(rows), 1024):
                out[start : start + 1024] = source[rows[start : start + 1024]]
            out.flush()
            del out
        else:
            np.save(tmp, np.zeros((0,) + source.shape[1:], np.uint8))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users.
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _holdout_size(validation_size, pool_size: int, num_holdouts: int, dataset: str) -> int:
    """Images per hold-out split: `validation_size` as a count (int) or a fraction of the pool (float in (0, 1))."""
    if validation_size is None:
        validation_size = DEFAULT_HOLDOUT_FRACTION
    if isinstance(validation_size, bool) or not isinstance(validation_size, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"validation_size={validation_size!r} must be an int (images) or a float in (0, 1) (fraction "
            "of the training pool); set dataset.validation_size."
        )
    if isinstance(validation_size, (float, np.floating)):
        if not 0.0 < validation_size < 1.0:
            raise ValueError(
                f"validation_size={validation_size!r} as a fraction must lie in (0, 1); set dataset.validation_size."
            )
        size = max(1, _round_half_up(validation_size * pool_size))
    else:
        size = int(validation_size)
    if size < 0 or num_holdouts * size >= pool_size:
        raise ValueError(
            f"validation_size={validation_size!r} holds out {num_holdouts} x {size} of the {pool_size} {dataset} "
            f"images that the hold-out draws from, leaving no training images; set dataset.validation_size to a "
            f"smaller count or a fraction such as 0.05."
        )
    return size


def _cache_root(cache_dir, data_dir) -> str:
    if cache_dir is not None:
        return _abspath(cache_dir)
    if data_dir is not None:
        return os.path.join(_abspath(data_dir), "crvae_tf_cache")
    return os.path.join(os.path.expanduser("~"), ".cache", "crvae_tf")


def _load_cached(folder: str, key: str) -> Optional[Tuple[Dict[str, np.ndarray], dict]]:
    manifest_path = os.path.join(folder, "manifest.json")
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    if manifest.get("format") != CACHE_FORMAT or manifest.get("key") != key:
        return None
    arrays = {}
    for split in data_lib.SPLIT_NAMES:
        path = os.path.join(folder, f"{split}.npy")
        try:
            count = manifest["splits"][split]
            array = np.load(path, mmap_mode="r") if count else np.load(path)
        except (OSError, ValueError, KeyError) as error:
            _logger.warning("Cache %s is damaged (%s: %s); rebuilding it.", folder, type(error).__name__, error)
            return None
        if array.shape[0] != count or array.dtype != np.uint8:
            _logger.warning(
                "Cache %s: %s.npy has %s %s, the manifest says %d; rebuilding it.",
                folder,
                split,
                array.dtype,
                array.shape,
                count,
            )
            return None
        arrays[split] = array
    return arrays, manifest


def build_or_load(
    dataset: str,
    sources: Sequence[_Source],
    *,
    resolution: int,
    crop,
    box_scale: float,
    holdout: Optional[dict],
    cache_dir,
    data_dir,
    max_corrupt_fraction: float,
    num_workers,
    describe_crop: str,
) -> Tuple[Dict[str, np.ndarray], dict, str]:
    """Returns `({split: uint8 [n, R, R, 3] memmap}, manifest, manifest path)`, preprocessing on a cache miss.

    `holdout`: None (the sources' own splits) or `{'seed', 'validation_size', 'num_holdouts'}`: 'pool' items
    and, for the birds composite, 'train' items are split by a seeded permutation (see `_assign_splits`).
    """
    key_material = {
        "format": CACHE_FORMAT,
        "dataset": dataset,
        "resolution": resolution,
        "crop": describe_crop,
        "box_scale": box_scale,
        "holdout": holdout,
        "sources": [(s.name, s.description, s.fingerprint) for s in sources],
    }
    key = hashlib.sha256(json.dumps(key_material, sort_keys=True, default=str).encode()).hexdigest()[:16]
    folder = os.path.join(_cache_root(cache_dir, data_dir), f"{dataset}-{resolution}-{key}")
    manifest_path = os.path.join(folder, "manifest.json")
    cached = _load_cached(folder, key)
    if cached is not None:
        _logger.info("Using the preprocessed %s cache %s.", dataset, folder)
        return cached[0], cached[1], manifest_path

    os.makedirs(folder, exist_ok=True)
    start = time.perf_counter()
    num_workers = num_workers or min(8, 2 * (os.cpu_count() or 1))
    capacity = sum(source.num_items() for source in sources)

    def all_items():
        for source in sources:
            yield from source.iterate()

    _logger.warning(
        "Preprocessing %d %s images to %dx%d into %s (once; later runs reuse it) ...",
        capacity,
        dataset,
        resolution,
        resolution,
        folder,
    )
    fd, pool_path = tempfile.mkstemp(prefix=".pool-", suffix=".npy", dir=folder)
    os.close(fd)
    try:
        processed = _preprocess(all_items(), pool_path, capacity, resolution, crop, box_scale, num_workers)
        num_present = len(processed.items)
        rejected = processed.rejected
        if rejected:
            _logger.warning(
                "%d of %d %s images were rejected (corrupt, undecodable, blank or bad box) and skipped; "
                "first: %s. The full list is in %s.",
                len(rejected),
                num_present,
                dataset,
                rejected[0],
                manifest_path,
            )
        if num_present and len(rejected) > max_corrupt_fraction * num_present:
            report = os.path.join(folder, "rejected.json")
            artifacts.atomic_write_text(report, json.dumps(rejected, indent=1))
            raise data_lib.DataUnavailableError(
                f"{len(rejected)} of the {num_present} {dataset} images ({100.0 * len(rejected) / num_present:.1f}%) "
                f"are corrupt or unusable, more than max_corrupt_fraction={max_corrupt_fraction} allows (e.g. "
                f"{rejected[0]['image']}: {rejected[0]['reason']}). The list with reasons is in {report}. Re-fetch "
                "or delete those files (a damaged download or extraction?), or raise dataset.max_corrupt_fraction "
                "to train without them."
            )
        rows, split_sources, split_rule = _assign_splits(processed, holdout, dataset)
        pool = np.load(pool_path, mmap_mode="r")
        for split in data_lib.SPLIT_NAMES:
            _write_npy(os.path.join(folder, f"{split}.npy"), pool, rows[split])
        del pool
    finally:
        if os.path.exists(pool_path):
            os.unlink(pool_path)
    seconds = time.perf_counter() - start
    manifest = _manifest(
        dataset, key, resolution, describe_crop, box_scale, sources, processed, rows, split_sources, split_rule, seconds
    )
    artifacts.atomic_write_text(manifest_path, json.dumps(manifest, indent=1))
    _logger.warning(
        "Preprocessed %d %s images in %.1f s: %s.", num_present - len(rejected), dataset, seconds, manifest["splits"]
    )
    cached = _load_cached(folder, key)
    if cached is None:
        raise RuntimeError(f"The cache just written to {folder} could not be read back.")
    return cached[0], cached[1], manifest_path


def _assign_splits(processed: _Processed, holdout: Optional[dict], dataset: str):
    """Row indices (into the pool) of each split, per-source counts per split, and the split rule text."""
    good = {split: [] for split in ("train", "validation", "test", "pool")}
    for index, (item, ok) in enumerate(zip(processed.items, processed.ok)):
        if ok:
            good[item.split].append(index)
    rule = "the sources' own splits"
    if holdout is not None:
        seed, num_holdouts = holdout["seed"], holdout["num_holdouts"]
        # CelebA partial copies: the whole pool; the Birds composite: its training images.
        pool_name = "pool" if num_holdouts == 2 else "train"
        pool = np.asarray(good[pool_name], np.int64)
        size = _holdout_size(holdout["validation_size"], len(pool), num_holdouts, dataset)
        order = np.random.default_rng(seed).permutation(len(pool))
        good["validation"] = sorted(pool[order[:size]].tolist())
        if num_holdouts == 2:
            good["test"] = sorted(pool[order[size : 2 * size]].tolist())
        good["train"] = sorted(pool[order[num_holdouts * size :]].tolist())
        good["pool"] = []
        held = "validation and test" if num_holdouts == 2 else "validation"
        rule = (
            f"seeded hold-out (seed={seed}, validation_size={holdout['validation_size']!r}): {size} images "
            f"each for {held}, drawn with np.random.default_rng({seed}).permutation from the {len(pool)} usable "
            f"{'images' if num_holdouts == 2 else 'training images'}"
        )
    rows = {split: np.asarray(good[split], np.int64) for split in data_lib.SPLIT_NAMES}
    split_sources = {}
    for split in data_lib.SPLIT_NAMES:
        counts = {}
        for index in rows[split]:
            name = processed.items[index].source
            counts[name] = counts.get(name, 0) + 1
        split_sources[split] = counts
    return rows, split_sources, rule


def _manifest(
    dataset, key, resolution, describe_crop, box_scale, sources, processed, rows, split_sources, split_rule, seconds
) -> dict:
    per_source = []
    for source in sources:
        used = {split: split_sources[split].get(source.name, 0) for split in data_lib.SPLIT_NAMES}
        rejected = [r for r in processed.rejected if r["source"] == source.name]
        per_source.append(
            {
                "name": source.name,
                "source": source.description,
                "listed": source.num_listed,
                "present": source.num_items(),
                "missing": len(source.missing),
                "missing_examples": source.missing[:20],
                "rejected": len(rejected),
                "used": used,
                "total_used": sum(used.values()),
                "notes": source.notes,
            }
        )
    manifest = {
        "format": CACHE_FORMAT,
        "key": key,
        "dataset": dataset,
        "resolution": resolution,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "preprocess_seconds": round(seconds, 2),
        "crop": describe_crop,
        "box_scale": box_scale,
        "split_rule": split_rule,
        "splits": {split: int(len(rows[split])) for split in data_lib.SPLIT_NAMES},
        "sources": per_source,
        "rejected": processed.rejected,
        "files": {split: f"{split}.npy" for split in data_lib.SPLIT_NAMES},
        "pixel_format": "uint8 [num_images, R, R, 3] in [0, 255]",
    }
    if processed.windows:
        manifest["crop_windows"] = {
            size: {"rows": [w[0], w[0] + w[2]], "cols": [w[1], w[1] + w[3]]} for size, w in processed.windows.items()
        }
    if dataset == "birds":
        total = sum(manifest["splits"].values())
        manifest["paper_total"] = PAPER_BIRDS_TOTAL
        manifest["total"] = total
    return manifest


# ----------------------------------------------------------------------------------------------------
# Entry points (called by data.load_image_splits).
# ----------------------------------------------------------------------------------------------------


def check_resolution(resolution) -> int:
    if isinstance(resolution, bool) or resolution not in RESOLUTIONS:
        raise ValueError(
            f"resolution={resolution!r} must be one of {RESOLUTIONS} for the RGB datasets; set dataset.resolution."
        )
    return int(resolution)


def _check_fraction(value, what) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{what}={value!r} must be a number in [0, 1].")
    return float(value)


def _source_text(dataset, resolution, manifest, manifest_path, crop_text) -> str:
    parts = [
        f"{s['name']}={s['source']} ({s['total_used']} used: {s['used']['train']} train, "
        f"{s['used']['validation']} validation, {s['used']['test']} test"
        + (f"; {s['rejected']} rejected" if s["rejected"] else "")
        + "".join(f"; {note}" for note in s["notes"])
        + ")"
        for s in manifest["sources"]
    ]
    text = f"{dataset} {resolution}x{resolution}, {crop_text}; " + " + ".join(parts)
    if dataset == "birds":
        text += f"; total {manifest['total']} images vs the paper's {PAPER_BIRDS_TOTAL}"
    return f"{text}; splits: {manifest['split_rule']}; cache manifest {manifest_path}"


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
) -> data_lib.ImageSplits:
    """CelebA at `resolution` x `resolution` (see the module docstring). Returns uint8 memmap splits."""
    resolution = check_resolution(resolution)
    crop = check_celeba_crop(crop)
    max_corrupt_fraction = _check_fraction(max_corrupt_fraction, "max_corrupt_fraction")
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
            _holdout_size(validation_size, len(source.items), 2, "celeba")  # Fail before decoding.
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
    arrays, manifest, manifest_path = build_or_load(
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
    return data_lib.ImageSplits(
        "celeba",
        "none",
        arrays["train"],
        arrays["validation"],
        arrays["test"],
        _source_text("celeba", resolution, manifest, manifest_path, crop_text),
        flip=bool(flip),
        manifest_path=manifest_path,
    )


def load_birds(
    *,
    cub_path,
    birdsnap_path,
    nabirds_path,
    data_dir,
    download,
    manual_dir,
    resolution,
    box_scale,
    validation_size,
    seed,
    cache_dir,
    flip,
    max_corrupt_fraction,
    num_workers,
) -> data_lib.ImageSplits:
    """The Birds composite (CUB + Birdsnap + NABirds, any subset) at `resolution` (see the module docstring)."""
    resolution = check_resolution(resolution)
    max_corrupt_fraction = _check_fraction(max_corrupt_fraction, "max_corrupt_fraction")
    box_scale = 1.0 if box_scale is None else box_scale
    if isinstance(box_scale, bool) or not isinstance(box_scale, (int, float)) or not 0.0 < box_scale <= 4.0:
        raise ValueError(
            f"box_scale={box_scale!r} must be a number in (0, 4] (the square ROI side over the longer "
            "box side); set dataset.box_scale."
        )
    if cub_path is None and birdsnap_path is None and nabirds_path is None:
        raise data_lib.DataUnavailableError(
            "dataset.name='birds' needs at least one source: set dataset.cub_path (a CUB_200_2011 folder with "
            "images.txt, bounding_boxes.txt, train_test_split.txt, images/; or 'tfds' for tensorflow-datasets "
            "caltech_birds2011), dataset.birdsnap_path (a Birdsnap folder with images.txt and images/) and/or "
            "dataset.nabirds_path (a nabirds folder with images.txt, bounding_boxes.txt, train_test_split.txt, "
            "images/)."
        )
    sources = []
    if cub_path is not None:
        if cub_path == "tfds":
            sources.append(list_tfds_cub(data_dir, download, manual_dir))
        else:
            sources.append(list_cub_style(cub_path, "cub"))
    if birdsnap_path is not None:
        sources.append(list_birdsnap(birdsnap_path))
    if nabirds_path is not None:
        sources.append(list_cub_style(nabirds_path, "nabirds"))
    holdout = {"seed": int(seed), "validation_size": validation_size, "num_holdouts": 1}
    num_train = sum(source.num_items("train") for source in sources)
    _holdout_size(validation_size, num_train, 1, "birds training")  # Fail before decoding.
    crop_text = (
        f"square bounding-box ROI (side = {box_scale:g} x the longer box side, shifted inside the image, "
        "edge-replicated where larger)"
    )
    arrays, manifest, manifest_path = build_or_load(
        "birds",
        sources,
        resolution=resolution,
        crop=None,
        box_scale=float(box_scale),
        holdout=holdout,
        cache_dir=cache_dir,
        data_dir=data_dir,
        max_corrupt_fraction=max_corrupt_fraction,
        num_workers=num_workers,
        describe_crop=crop_text,
    )
    return data_lib.ImageSplits(
        "birds",
        "none",
        arrays["train"],
        arrays["validation"],
        arrays["test"],
        _source_text("birds", resolution, manifest, manifest_path, crop_text),
        flip=bool(flip),
        manifest_path=manifest_path,
    )
