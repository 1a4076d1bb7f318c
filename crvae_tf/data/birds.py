"""The Birds composite for the adversarial experiments (paper Sec. 4: Birdsnap + NABirds + CUB ROIs):
`load_birds` returns an `ImageSplits` of uint8 `[num_images, R, R, 3]` read-only memory maps, with each row's
source image (`names`: the path under the source's `images/`, e.g. '001.A/x.jpg'; tfds examples
'caltech_birds2011/<split>[<index>]'; the same relative path may occur in two sources). Gin-free.

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
"""

import csv
import os

from crvae_tf.data.image_cache import build_or_load
from crvae_tf.data.image_cache import check_fraction
from crvae_tf.data.image_cache import check_resolution
from crvae_tf.data.image_cache import holdout_size
from crvae_tf.data.image_cache import source_text
from crvae_tf.data.image_files import BINDINGS
from crvae_tf.data.image_files import Item
from crvae_tf.data.image_files import Source
from crvae_tf.data.image_files import locate
from crvae_tf.data.image_files import make_local_source
from crvae_tf.data.image_files import read_id_table
from crvae_tf.data.image_files import tfds_builder
from crvae_tf.data.image_files import tfds_source
from crvae_tf.data.splits import DataUnavailableError
from crvae_tf.data.splits import ImageSplits

BIRD_SOURCES = ("cub", "birdsnap", "nabirds")

_CUB_FILES = ("images.txt", "bounding_boxes.txt", "train_test_split.txt")


def list_cub_style(path, source: str) -> Source:
    """CUB-200-2011 or NABirds folder: images.txt, bounding_boxes.txt (x y w h), train_test_split.txt, images/."""
    marker = "CUB_200_2011" if source == "cub" else "nabirds"
    root = locate(path, source, marker, _CUB_FILES)
    binding = BINDINGS[source]
    files = [os.path.join(root, name) for name in _CUB_FILES]
    images = read_id_table(files[0], 2, binding)
    boxes = read_id_table(files[1], 5, binding)
    is_train = read_id_table(files[2], 2, binding)
    items, missing = [], []
    for image_id, (relative,) in images.items():
        if image_id not in boxes or image_id not in is_train:
            raise DataUnavailableError(
                f"{root}: image id {image_id} of images.txt has no row in bounding_boxes.txt or "
                f"train_test_split.txt. The metadata files are from different releases; fix {binding}."
            )
        try:
            box = tuple(float(v) for v in boxes[image_id])
        except ValueError as error:
            raise DataUnavailableError(
                f"{files[1]}: bad box for id {image_id}: {boxes[image_id]}; fix {binding}."
            ) from error
        file_path = os.path.join(root, "images", relative)
        if not os.path.isfile(file_path):
            missing.append(relative)
            continue
        split = "train" if is_train[image_id][0] == "1" else "test"
        items.append(Item(source, split, relative, path=file_path, box=box))
    return make_local_source(source, root, items, images, missing, files, marker)


def list_birdsnap(path) -> Source:
    """Birdsnap folder: images.txt (TSV with header: url md5 path species_id bb_x1 bb_y1 bb_x2 bb_y2 ...)."""
    root = locate(path, "birdsnap", "birdsnap", ("images.txt",))
    binding = BINDINGS["birdsnap"]
    listing = os.path.join(root, "images.txt")
    with open(listing, encoding="utf-8", errors="replace", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header = [field.strip() for field in rows[0]] if rows else []
    needed = ("path", "bb_x1", "bb_y1", "bb_x2", "bb_y2")
    if not all(field in header for field in needed):
        raise DataUnavailableError(
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
            raise DataUnavailableError(f"{listing}:{number}: malformed row {row[:8]}; fix {binding}.") from error
        listed[relative] = True
        file_path = os.path.join(image_dir, relative)
        if not os.path.isfile(file_path):
            missing.append(relative)
            continue
        split = "test" if relative in test_paths else "train"
        items.append(Item("birdsnap", split, relative, path=file_path, box=(x1, y1, x2 - x1, y2 - y1)))
    metadata = [listing] + ([test_file] if os.path.isfile(test_file) else [])
    source = make_local_source(
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


def list_tfds_cub(data_dir, download, manual_dir) -> Source:
    hint = (
        "Set dataset.cub_path to a local CUB_200_2011 folder (images.txt, bounding_boxes.txt, "
        "train_test_split.txt, images/), or dataset.data_dir to a tfds data directory where caltech_birds2011 "
        "is prepared."
    )
    builder, datasets = tfds_builder("caltech_birds2011", data_dir, download, manual_dir, ("train", "test"), hint)
    return tfds_source("cub", "caltech_birds2011", builder, datasets, with_box=True)


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
) -> ImageSplits:
    """The Birds composite (CUB + Birdsnap + NABirds, any subset) at `resolution` (see the module docstring)."""
    resolution = check_resolution(resolution)
    max_corrupt_fraction = check_fraction(max_corrupt_fraction, "max_corrupt_fraction")
    box_scale = 1.0 if box_scale is None else box_scale
    if isinstance(box_scale, bool) or not isinstance(box_scale, (int, float)) or not 0.0 < box_scale <= 4.0:
        raise ValueError(
            f"box_scale={box_scale!r} must be a number in (0, 4] (the square ROI side over the longer "
            "box side); set dataset.box_scale."
        )
    if cub_path is None and birdsnap_path is None and nabirds_path is None:
        raise DataUnavailableError(
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
    holdout_size(validation_size, num_train, 1, "birds training")  # Fail before decoding.
    crop_text = (
        f"square bounding-box ROI (side = {box_scale:g} x the longer box side, shifted inside the image, "
        "edge-replicated where larger)"
    )
    cached = build_or_load(
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
    return ImageSplits(
        "birds",
        "none",
        cached.arrays["train"],
        cached.arrays["validation"],
        cached.arrays["test"],
        source_text("birds", resolution, cached.manifest, cached.manifest_path, crop_text),
        flip=bool(flip),
        manifest_path=cached.manifest_path,
        names=cached.names,
    )
