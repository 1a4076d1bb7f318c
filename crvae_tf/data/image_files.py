"""Reading RGB images: decoding, the crop geometry (CelebA face crop, square bird ROIs), resizing, the
listing of local folders and tfds datasets as sources of items, and the fingerprints that key the cache.

Gin-free. Used by `celeba`, `birds` and `image_cache`.
"""

import dataclasses
import hashlib
import math
import os
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
from crvae_tf.data.splits import DataUnavailableError
from crvae_tf.data.splits import first_line

CELEBA_ALIGNED_SHAPE = (218, 178)  # (height, width) of the official aligned CelebA images.
CELEBA_FACE_CROP = (40, 15, 148, 148)  # (top, left, height, width) in 178x218 coordinates (Larsen et al.).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
BINDINGS = {
    "celeba": "dataset.local_path",
    "cub": "dataset.cub_path",
    "birdsnap": "dataset.birdsnap_path",
    "nabirds": "dataset.nabirds_path",
}
PAPER_BIRDS_TOTAL = 106474  # Birdsnap + NABirds + CUB ROIs in Shang et al. (paper section 4).
CELEBA_MANUAL_FILES = (
    "img_align_celeba.zip",
    "list_eval_partition.txt",
    "list_attr_celeba.txt",
    "list_landmarks_align_celeba.txt",
    "identity_CelebA.txt",
)


class Rejected(Exception):
    """An image that cannot be used; the message is the reason recorded in the manifest."""


@dataclasses.dataclass
class Item:
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
class Source:
    """The listing of one source: what to decode and how it was found."""

    name: str
    description: str  # e.g. "folder:/data/CUB_200_2011" or "tfds:caltech_birds2011".
    items: List[Item]  # Present images (local folders) or a lazy tfds iterable.
    fingerprint: str
    num_listed: int
    missing: List[str]
    notes: List[str] = dataclasses.field(default_factory=list)
    # tfds sources: split -> a function returning a fresh iterable of `Item`s, and the examples per split.
    tfds_splits: Optional[Dict[str, Callable[[], Iterable[Item]]]] = None
    tfds_counts: Optional[Dict[str, int]] = None

    def num_items(self, split: Optional[str] = None) -> int:
        """Present images (all splits, or one)."""
        if self.tfds_splits is None:
            return sum(1 for item in self.items if split is None or item.split == split)
        return sum(n for s, n in self.tfds_counts.items() if split is None or s == split)

    def iterate(self) -> Iterable[Item]:
        if self.tfds_splits is None:
            yield from self.items
        else:
            for make_items in self.tfds_splits.values():
                yield from make_items()


# ----------------------------------------------------------------------------------------------------
# Crop rules.
# ----------------------------------------------------------------------------------------------------


def round_half_up(value: float) -> int:
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
    window_height = min(max(round_half_up(crop_height * scale_y), 1), height)
    window_width = min(max(round_half_up(crop_width * scale_x), 1), width)
    top = min(max(round_half_up(top * scale_y), 0), height - window_height)
    left = min(max(round_half_up(left * scale_x), 0), width - window_width)
    return top, left, window_height, window_width


def square_box_window(
    height: int, width: int, box: Sequence[float], box_scale: float = 1.0
) -> Tuple[int, int, int, int]:
    """The square ROI `(top, left, side, side)` around a bounding box `(x, y, box_width, box_height)` (pixels).

    The box is clipped to the image; side = round(max(box width, box height) * box_scale), centred on the
    clipped box's centre; on each axis where side <= the image extent the square is shifted inside the
    image, otherwise it stays centred and `crop_window` repeats the edge pixels.

    Raises:
      Rejected: the box is empty or lies outside the image.
    """
    x, y, box_width, box_height = (float(v) for v in box)
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + box_width, float(width)), min(y + box_height, float(height))
    if not all(map(math.isfinite, (x, y, box_width, box_height))) or x1 - x0 < 1.0 or y1 - y0 < 1.0:
        raise Rejected(
            f"bounding box (x={x:g}, y={y:g}, w={box_width:g}, h={box_height:g}) is empty or lies "
            f"outside the {width}x{height} image"
        )
    side = max(round_half_up(max(x1 - x0, y1 - y0) * box_scale), 1)
    top = round_half_up((y0 + y1) / 2.0 - side / 2.0)
    left = round_half_up((x0 + x1) / 2.0 - side / 2.0)
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
      Rejected: every pixel of `patch` has the same value (a blank image), or the resize produced
        non-finite or out-of-range values (the value-range check of the cache validation).
    """
    if int(patch.max()) == int(patch.min()):
        raise Rejected(f"blank image: every pixel of the crop equals {int(patch.max())}")
    resized = tf.image.resize(
        tf.convert_to_tensor(patch, tf.float32), [resolution, resolution], method="bilinear", antialias=True
    ).numpy()
    if not np.all(np.isfinite(resized)) or resized.min() < -1.0 or resized.max() > 256.0:
        raise Rejected(f"resized values outside [0, 255] (min {resized.min()}, max {resized.max()})")
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def decode_image_file(path: str) -> np.ndarray:
    """Reads and decodes a JPEG / PNG / GIF / BMP file to uint8 `[H, W, 3]` (grayscale and RGBA converted).

    Raises:
      Rejected: the file is empty, unreadable, an HTML / text page, or not a decodable image.
    """
    try:
        with open(path, "rb") as f:
            payload = f.read()
    except OSError as error:
        raise Rejected(f"unreadable: {type(error).__name__}: {error}") from error
    if not payload:
        raise Rejected("empty file (0 bytes)")
    head = payload[:256].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"{")):
        raise Rejected("an HTML / text page, not an image (a failed or blocked download?)")
    try:
        image = tf.io.decode_image(payload, channels=3, expand_animations=False).numpy()
    except tf.errors.OpError as error:  # InvalidArgument (bad data), Unknown, ...
        message = " ".join(str(error.message).split())
        raise Rejected(f"undecodable ({len(payload)} bytes): {message[:200]}") from error
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise Rejected(f"decoded to an empty image of shape {image.shape}")
    return image


# ----------------------------------------------------------------------------------------------------
# Listings.
# ----------------------------------------------------------------------------------------------------


def abspath(path) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"Expected a path string, got {path!r}.")
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def listing_fingerprint(root: str, paths: Sequence[str], metadata_files: Sequence[str]) -> str:
    """SHA-256 over (path relative to `root`, size, mtime_ns) of `paths` and the bytes of `metadata_files`."""
    digest = hashlib.sha256()
    for path in metadata_files:
        digest.update(f"meta:{os.path.relpath(path, root)}:{artifacts.file_sha256(path)}\n".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(f"{os.path.relpath(path, root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def list_images(folder: str) -> List[str]:
    return sorted(
        name
        for name in os.listdir(folder)
        if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, name))
    )


def locate(path, source: str, marker_dir: str, required: Sequence[str]) -> str:
    root = abspath(path)
    for candidate in (root, os.path.join(root, marker_dir)):
        if all(os.path.isfile(os.path.join(candidate, name)) for name in required):
            return candidate
    found = sorted(os.listdir(root))[:12] if os.path.isdir(root) else "(not a folder)"
    raise DataUnavailableError(
        f"{BINDINGS[source]}={os.fspath(path)!r}: expected {marker_dir}/{', '.join(required)} and "
        f"{marker_dir}/images/ under {root} (or {', '.join(required)} directly in it); found {found}. Set "
        f"{BINDINGS[source]} to the {marker_dir} folder of the {source} release."
    )


def read_id_table(path: str, num_fields: int, binding: str) -> Dict[str, List[str]]:
    table = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != num_fields:
                raise DataUnavailableError(
                    f"{path}:{number}: expected {num_fields} space-separated fields, got {line.strip()!r}. The file "
                    f"is damaged or not from this dataset; fix {binding}."
                )
            table[fields[0]] = fields[1:]
    return table


def make_local_source(source, root, items, listed, missing, metadata, marker) -> Source:
    if not items:
        raise DataUnavailableError(
            f"{BINDINGS[source]}: none of the {len(listed)} images listed under {root} exists on disk (e.g. "
            f"{os.path.join(root, 'images', missing[0]) if missing else '(empty listing)'}). Expected the image "
            f"files of the {marker} release under its images/ folder; fix {BINDINGS[source]}."
        )
    fingerprint = listing_fingerprint(root, [item.path for item in items], metadata)
    notes = [f"{len(missing)} of {len(listed)} listed images are not on disk"] if missing else []
    return Source(source, f"folder:{root}", items, fingerprint, len(listed), missing, notes)


# ----------------------------------------------------------------------------------------------------
# tensorflow-datasets sources.
# ----------------------------------------------------------------------------------------------------


def tfds_builder(tfds_name: str, data_dir, download: bool, manual_dir, splits: Sequence[str], binding_hint: str):
    """Returns `{split: tf.data.Dataset}` of a prepared (or mocked) tfds dataset; prepares it only on request."""

    def unavailable(error: BaseException) -> DataUnavailableError:
        return DataUnavailableError(
            f"Could not load tfds dataset {tfds_name!r} (data_dir={data_dir!r}, manual_dir={manual_dir!r}, "
            f"download={download}): {type(error).__name__}: {first_line(error)}. {binding_hint}"
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
        manual = abspath(manual_dir)
        if tfds_name == "celeb_a":
            absent = [name for name in CELEBA_MANUAL_FILES if not os.path.isfile(os.path.join(manual, name))]
            if absent:
                raise DataUnavailableError(
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


def tfds_source(
    source_name: str, tfds_name: str, builder, datasets: Dict[str, tf.data.Dataset], with_box: bool
) -> Source:

    def items_of(split, dataset):
        def make_items():
            for index, example in enumerate(dataset.as_numpy_iterator()):
                box = tuple(float(v) for v in example["bbox"]) if with_box else None
                yield Item(
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
    return Source(
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
