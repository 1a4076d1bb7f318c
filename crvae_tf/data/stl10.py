"""STL-10 for the semi-supervised protocol of paper Sec. 4.5 / Table 2 (CC-GAN's, Denton et al. 2016). Gin-free.

`load_stl10` returns an `ImageSplits` whose images reach the models at `resolution` x `resolution` (64, the
protocol's size):

    train       `TrainingPool`: the 100,000 unlabeled images + the 1,000 labeled images of fold k (`fold`), label
                -1 for the unlabeled rows; `make_dataset` gives (pool batch, labeled batch, labels) per step
    validation  the 4,000 labeled training images outside fold k (model selection), resized, uint8, in memory
    test        the 8,000 test images, resized, uint8, in memory
    labels      split -> int64 class labels 0..9 (the files' 1..10 minus 1); -1 = unlabeled (train only)

With `fold=None` (the only choice on tfds data) every labeled training image is in the labeled stream except a
seeded hold-out of `validation_size` (None: 500) images, which is the validation split.

Sources
-------
* The official `stl10_binary/` folder (`local_path`; the folder itself or its parent): `train_X.bin` `[5000, 3, 96,
  96]` uint8 column-major (byte `c*9216 + x*96 + y` of an image is channel c, column x, row y: the reader's
  `reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)` gives `[N, 96 rows, 96 columns, 3]`), `train_y.bin` (uint8 labels
  1..10), `test_X.bin` / `test_y.bin` (8,000), `unlabeled_X.bin` (100,000 images, 2,764,800,000 bytes: memory-mapped,
  never loaded: a batch reads its own rows only) and `fold_indices.txt` (10 lines of 1,000 0-based indices into the
  training images, the official folds of Coates et al.). Checked: each image file's size is a multiple of 27,648
  bytes, the labels match the images one to one and lie in 1..10, the fold file has 10 lines of equal length with
  distinct in-range indices. Any missing file is one `DataUnavailableError` naming the missing files and the binding.
* tensorflow-datasets `stl10` (`local_path=None`), prepared from `manual_dir` holding the original
  `stl10_binary.tar.gz` (or already prepared in `data_dir`). Its records are shuffled and carry no fold
  membership, so the official folds cannot be mapped onto them: a run with `fold` set is refused. The 100,000
  unlabelled images are written once into `<cache_dir>/stl10_tfds/unlabelled-<key>.npy` and memory-mapped.

Training transform (CC-GAN's `data/stl10.lua` as summarised in the project notes): a square crop of side s ~ U[R, 96]
(continuous; R = `resolution`) at a uniform position, resized to R x R (bilinear, `tf.image.crop_and_resize`), and a
horizontal flip with p = 0.5 (`flip`). Evaluation resizes the whole 96 x 96 image to R x R with the same op, so a
training crop of side 96 equals the evaluation image. Crops, flips and the order are functions of (seed, epoch,
batch index), so a resumed run sees the same batches.
"""

import dataclasses
import hashlib
import logging
import os
from typing import Dict
from typing import Optional

import numpy as np
import tensorflow as tf

from crvae_tf.data.pipeline import finish
from crvae_tf.data.pipeline import random_flip_left_right
from crvae_tf.data.splits import DataUnavailableError
from crvae_tf.data.splits import ImageSplits
from crvae_tf.data.splits import check_seed

_logger = logging.getLogger(__name__)

SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE  # 27,648
NUM_CLASSES = 10
NUM_FOLDS = 10
FOLDER_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "unlabeled_X.bin", "fold_indices.txt")
OFFICIAL_COUNTS = {"train": 5000, "test": 8000, "unlabeled": 100000, "fold": 1000}
DEFAULT_RESOLUTION = 64
DEFAULT_VALIDATION_SIZE = 500  # fold=None only: labeled training images held out for model selection.
UNLABELED = -1

_POOL_CROP_TAG, _LABELED_CROP_TAG, _POOL_FLIP_TAG, _LABELED_FLIP_TAG, _LABELED_ORDER_TAG = 11, 12, 13, 14, 15

_BINDING_HINT = (
    "Set dataset.local_path to the official stl10_binary/ folder (train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
    "unlabeled_X.bin, fold_indices.txt), or leave it unset and set dataset.manual_dir to a folder holding "
    "stl10_binary.tar.gz for tensorflow-datasets stl10 (no official folds: dataset.fold=None)."
)


# ----------------------------------------------------------------------------------------------------
# The binary folder.
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stl10Arrays:
    """The raw STL-10 arrays, `[N, 96, 96, 3]` uint8 (rows, columns, RGB), labels int64 0..9.

    `unlabeled` is a read-only memory map (a strided view of it: indexing reads only the rows asked for); `folds`
    is int64 `[10, fold_size]` of 0-based indices into `train_images`, or None (tfds: no folds).
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    unlabeled: np.ndarray
    folds: Optional[np.ndarray]
    source: str


def column_major_images(flat: np.ndarray) -> np.ndarray:
    """STL-10's column-major bytes `[N * 27648]` -> `[N, 96 rows, 96 columns, 3]` (a view, no copy)."""
    return flat.reshape(-1, 3, SIDE, SIDE).transpose(0, 3, 2, 1)


def _image_count(path: str) -> int:
    size = os.path.getsize(path)
    if size == 0 or size % IMAGE_BYTES:
        raise DataUnavailableError(
            f"{path} has {size:,} bytes, not a positive multiple of {IMAGE_BYTES:,} (one 96x96x3 STL-10 image); the "
            "file is truncated or not an STL-10 binary. Re-extract stl10_binary.tar.gz."
        )
    return size // IMAGE_BYTES


def _read_labels(path: str, expected: int) -> np.ndarray:
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) != expected:
        raise DataUnavailableError(
            f"{path} has {len(raw):,} labels for {expected:,} images in the matching _X.bin; re-extract the files."
        )
    if raw.size and (raw.min() < 1 or raw.max() > NUM_CLASSES):
        raise DataUnavailableError(
            f"{path} holds labels outside 1..{NUM_CLASSES} (min {raw.min()}, max {raw.max()}); not an STL-10 "
            "label file."
        )
    return raw.astype(np.int64) - 1


def read_fold_indices(path: str, num_train: int) -> np.ndarray:
    """`fold_indices.txt`: `NUM_FOLDS` lines of whitespace-separated 0-based indices into the training images.

    Returns int64 `[NUM_FOLDS, fold_size]`. Raises `DataUnavailableError` unless there are exactly 10 non-empty lines
    of equal length, each of distinct integers in [0, num_train).
    """
    with open(path, encoding="ascii", errors="replace") as f:
        lines = [line.split() for line in f if line.strip()]
    if len(lines) != NUM_FOLDS:
        raise DataUnavailableError(
            f"{path} has {len(lines)} non-empty lines; STL-10 has {NUM_FOLDS} folds, one a line."
        )
    try:
        folds = [np.array([int(token) for token in line], np.int64) for line in lines]
    except ValueError as error:
        raise DataUnavailableError(f"{path}: a fold line holds a non-integer ({error}).") from error
    sizes = sorted({len(fold) for fold in folds})
    if len(sizes) != 1:
        raise DataUnavailableError(f"{path}: the folds have different sizes {sizes}; every fold has the same size.")
    for number, fold in enumerate(folds):
        if fold.min() < 0 or fold.max() >= num_train:
            raise DataUnavailableError(
                f"{path}: fold {number} has an index outside [0, {num_train}) (the training images): "
                f"min {fold.min()}, max {fold.max()}."
            )
        if len(np.unique(fold)) != len(fold):
            raise DataUnavailableError(f"{path}: fold {number} repeats an index.")
    return np.stack(folds)


def _find_folder(local_path) -> str:
    folder = os.path.abspath(os.path.expanduser(os.fspath(local_path)))
    nested = os.path.join(folder, "stl10_binary")
    if not os.path.isfile(os.path.join(folder, FOLDER_FILES[0])) and os.path.isdir(nested):
        return nested
    return folder


def read_stl10_folder(local_path) -> Stl10Arrays:
    """Reads and checks the official `stl10_binary/` folder (see the module docstring); `unlabeled` is memory-mapped."""
    folder = _find_folder(local_path)
    if not os.path.isdir(folder):
        raise DataUnavailableError(
            f"dataset.local_path={os.fspath(local_path)!r} is not a folder (resolved to {folder}). {_BINDING_HINT}"
        )
    missing = [name for name in FOLDER_FILES if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise DataUnavailableError(
            f"dataset.local_path={os.fspath(local_path)!r} ({folder}) lacks {missing} of the STL-10 binary files. "
            f"{_BINDING_HINT}"
        )
    path = lambda name: os.path.join(folder, name)  # noqa: E731
    arrays = {}
    for split in ("train", "test"):
        count = _image_count(path(f"{split}_X.bin"))
        arrays[f"{split}_images"] = column_major_images(np.fromfile(path(f"{split}_X.bin"), dtype=np.uint8))
        arrays[f"{split}_labels"] = _read_labels(path(f"{split}_y.bin"), count)
    num_unlabeled = _image_count(path("unlabeled_X.bin"))
    unlabeled = np.memmap(path("unlabeled_X.bin"), dtype=np.uint8, mode="r", shape=(num_unlabeled, 3, SIDE, SIDE))
    folds = read_fold_indices(path("fold_indices.txt"), len(arrays["train_images"]))
    counts = {
        "train": len(arrays["train_images"]),
        "test": len(arrays["test_images"]),
        "unlabeled": num_unlabeled,
        "fold": folds.shape[1],
    }
    if counts != OFFICIAL_COUNTS:
        _logger.warning("STL-10 folder %s holds %s images, not the official %s.", folder, counts, OFFICIAL_COUNTS)
    return Stl10Arrays(
        unlabeled=unlabeled.transpose(0, 3, 2, 1),
        folds=folds,
        source=f"folder:{folder} ({counts['train']} train, {counts['test']} test, {num_unlabeled} unlabeled)",
        **arrays,
    )


# ----------------------------------------------------------------------------------------------------
# tensorflow-datasets stl10.
# ----------------------------------------------------------------------------------------------------


def read_tfds_stl10(data_dir, download, manual_dir, cache_dir) -> Stl10Arrays:
    """tfds `stl10` (splits train / test / unlabelled): train and test in memory, the unlabelled images streamed once
    into `<cache_dir>/stl10_tfds/unlabelled-<hash of the tfds data folder and version>.npy` and memory-mapped. No folds
    (`folds=None`)."""
    from crvae_tf.data.image_files import tfds_builder  # pylint: disable=g-import-not-at-top

    builder, datasets = tfds_builder(
        "stl10", data_dir, download, manual_dir, ("train", "test", "unlabelled"), _BINDING_HINT
    )
    arrays = {}
    for split in ("train", "test"):
        images, labels = [], []
        for example in datasets[split].as_numpy_iterator():
            images.append(example["image"])
            labels.append(example["label"])
        arrays[f"{split}_images"] = np.stack(images).astype(np.uint8)
        arrays[f"{split}_labels"] = np.asarray(labels, np.int64)
    root = os.path.join(os.path.expanduser(cache_dir or "~/.cache/crvae_tf"), "stl10_tfds")
    os.makedirs(root, exist_ok=True)
    key = hashlib.sha256(f"{builder.data_dir}:{builder.version}".encode()).hexdigest()[:12]
    path = os.path.join(root, f"unlabelled-{key}.npy")  # one cache per prepared tfds copy
    if not os.path.isfile(path):
        unlabelled = datasets["unlabelled"].map(lambda example: example["image"])
        count = int(unlabelled.reduce(np.int64(0), lambda n, _: n + 1))  # a first pass: no image is kept
        temporary = f"{path}.tmp-{os.getpid()}"
        out = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.uint8, shape=(count, SIDE, SIDE, 3))
        for row, image in enumerate(unlabelled.as_numpy_iterator()):  # streamed: one image in memory at a time
            out[row] = image
        out.flush()
        del out
        os.replace(temporary, path)
    unlabeled = np.load(path, mmap_mode="r")
    return Stl10Arrays(
        unlabeled=unlabeled,
        folds=None,
        source=f"tfds:stl10 {builder.version} (data_dir={builder.data_dir}; unlabelled cache {path})",
        **arrays,
    )


# ----------------------------------------------------------------------------------------------------
# The protocol's splits and training pipeline.
# ----------------------------------------------------------------------------------------------------


def resize_images(images, resolution: int, boxes=None) -> tf.Tensor:
    """`[b, 96, 96, 3]` (any numeric dtype) -> float32 `[b, R, R, 3]` in the input's units, bilinear.

    `boxes`: float32 `[b, 4]` normalised (y1, x1, y2, x2) crops (`tf.image.crop_and_resize`); None: the whole image.
    """
    images = tf.cast(images, tf.float32)
    count = tf.shape(images)[0]
    if boxes is None:
        boxes = tf.tile(tf.constant([[0.0, 0.0, 1.0, 1.0]]), [count, 1])
    return tf.image.crop_and_resize(images, boxes, tf.range(count), [resolution, resolution])


def random_crop_boxes(count, min_fraction: float, seed) -> tf.Tensor:
    """`[count, 4]` normalised square boxes: side f ~ U[min_fraction, 1] of the image, corner uniform in [0, 1 - f]."""
    uniform = tf.random.stateless_uniform(tf.stack([count, 3]), seed=seed, dtype=tf.float32)
    side = min_fraction + (1.0 - min_fraction) * uniform[:, 0]
    top, left = (1.0 - side) * uniform[:, 1], (1.0 - side) * uniform[:, 2]
    return tf.stack([top, left, top + side, left + side], axis=1)


def _resized_uint8(images: np.ndarray, resolution: int, chunk: int = 512) -> np.ndarray:
    out = np.empty((len(images), resolution, resolution, 3), np.uint8)
    for start in range(0, len(images), chunk):
        batch = np.asarray(images[start : start + chunk])
        out[start : start + len(batch)] = np.clip(np.round(resize_images(batch, resolution).numpy()), 0, 255)
    return out


class TrainingPool:
    """The training split of the semi-supervised protocol: unlabeled images + the labeled fold, as one read-only
    array-like `[N, R, R, 3]` uint8 (rows are read and resized on access; nothing is loaded up front).

    `labels[i]` is the class of row i, or -1 (unlabeled); `fold` is the official fold of the labeled rows (or None).
    `pipeline.make_dataset` hands training to `make_dataset` below, whose batches are `(pool [B, R, R, 3], labeled
    [L, R, R, 3], labels [L])`: B rows of the whole pool (the real images of the real/fake loss; one epoch = N // B
    steps) and L rows of the labeled ones (the class loss), each cropped, resized and flipped at random.
    """

    def __init__(self, parts, labels, resolution: int, labeled_batch_size=None, fold=None):
        self._parts = list(parts)
        self._offsets = np.cumsum([0] + [len(part) for part in self._parts])
        self.labels = np.asarray(labels, np.int64)
        if len(self.labels) != self._offsets[-1]:
            raise ValueError(f"labels has {len(self.labels)} entries for {self._offsets[-1]} rows.")
        self.labeled_rows = np.flatnonzero(self.labels >= 0)
        if len(self.labeled_rows) == 0:
            raise ValueError("The training pool has no labeled row.")
        self.resolution = int(resolution)
        self.labeled_batch_size = labeled_batch_size
        self.fold = fold  # the official fold of the labeled rows, or None
        self.shape = (int(self._offsets[-1]), self.resolution, self.resolution, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"TrainingPool(shape={self.shape}, labeled={len(self.labeled_rows)})"

    def raw(self, indices) -> np.ndarray:
        """uint8 `[b, 96, 96, 3]`: the native rows `indices` (int64 `[b]`), read from their parts."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), SIDE, SIDE, 3), np.uint8)
        part = np.searchsorted(self._offsets, indices, side="right") - 1
        for number in np.unique(part):
            where = np.flatnonzero(part == number)
            rows = indices[where] - self._offsets[number]
            order = np.argsort(rows)  # memory maps read fastest in file order
            out[where[order]] = self._parts[number][rows[order]]
        return out

    def __getitem__(self, key) -> np.ndarray:
        """Rows resized to R x R (the evaluation view), uint8; `key`: an int, a slice or integer indices."""
        if isinstance(key, (int, np.integer)):
            return self[np.array([key])][0]
        indices = np.arange(len(self))[key] if isinstance(key, slice) else np.asarray(key, np.int64)
        return _resized_uint8(self.raw(indices), self.resolution)

    def _gatherer(self):
        def gather(indices):
            return tf.ensure_shape(
                tf.numpy_function(self.raw, [indices], tf.uint8, stateful=False), [indices.shape[0], SIDE, SIDE, 3]
            )

        return gather

    def make_dataset(self, *, batch_size, binarization, seed, training, epoch=0, skip_batches=0, flip=None, shard=None):
        """`pipeline.make_dataset` for this pool (same arguments). Training: one epoch of `(pool, labeled, labels)`
        batches (see the class docstring), pixels float32 in [0, 1]; with `shard=(w, W)` (multi-worker training) the
        w-th of W equal row blocks of each of the three (the global batch is read and augmented, then sliced: the
        same pixels as one worker's, not the least reading). Evaluation: the rows in order, resized, float32
        `[b, R, R, 3]` in [0, 1] (no labels, no crop, no flip)."""
        if binarization != "none":
            raise ValueError(f"STL-10 images are continuous: binarization must be 'none', got {binarization!r}.")
        check_seed(seed, "seed")
        check_seed(epoch, "epoch")
        flip = True if flip is None else bool(flip)  # None: as pipeline.make_dataset for continuous pixels
        gather, resolution = self._gatherer(), self.resolution
        if not training:
            starts = tf.data.Dataset.range(0, len(self), batch_size)
            count = len(self)
            dataset = starts.map(
                lambda start: (
                    resize_images(gather(tf.range(start, tf.minimum(start + batch_size, count))), resolution) / 255.0
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            return finish(dataset)
        steps = len(self) // int(batch_size)
        if steps == 0:
            raise ValueError(
                f"batch_size={batch_size} exceeds the {len(self)} training images; lower train.batch_size."
            )
        if not 0 <= int(skip_batches) <= steps:
            raise ValueError(f"skip_batches={skip_batches!r} must be in [0, {steps}].")
        labeled_size = int(self.labeled_batch_size or batch_size)
        index_w, count_w = (0, 1) if shard is None else (int(shard[0]), int(shard[1]))
        if count_w > 1 and (batch_size % count_w or labeled_size % count_w or not 0 <= index_w < count_w):
            raise ValueError(
                f"shard={tuple(shard)}: train.batch_size={batch_size} and dataset.labeled_batch_size={labeled_size} "
                f"must both split into {count_w} equal shards (and the index lie in [0, {count_w}))."
            )
        order = np.random.default_rng([seed, epoch]).permutation(len(self))[: steps * batch_size]
        pool_indices = order.reshape(steps, batch_size)
        labeled_indices = self._labeled_order(seed, epoch * steps * labeled_size, steps * labeled_size)
        labeled_indices = labeled_indices.reshape(steps, labeled_size)
        labels = tf.constant(self.labels)
        min_fraction = resolution / SIDE
        keys = {
            tag: tf.random.experimental.stateless_fold_in(
                tf.constant([seed, tag], tf.int64), tf.constant(epoch, tf.int64)
            )
            for tag in (_POOL_CROP_TAG, _LABELED_CROP_TAG, _POOL_FLIP_TAG, _LABELED_FLIP_TAG)
        }

        def augment(indices, index, crop_tag, flip_tag):
            raw = gather(indices)
            key = tf.random.experimental.stateless_fold_in(keys[crop_tag], index)
            images = resize_images(raw, resolution, random_crop_boxes(tf.shape(raw)[0], min_fraction, key)) / 255.0
            if flip:
                images = random_flip_left_right(images, tf.random.experimental.stateless_fold_in(keys[flip_tag], index))
            return images

        def rows(tensor, size):
            if count_w == 1:
                return tensor
            return tensor[index_w * size // count_w : (index_w + 1) * size // count_w]

        def make_batch(index, pool, labeled):
            return (
                rows(augment(pool, index, _POOL_CROP_TAG, _POOL_FLIP_TAG), batch_size),
                rows(augment(labeled, index, _LABELED_CROP_TAG, _LABELED_FLIP_TAG), labeled_size),
                rows(tf.gather(labels, labeled), labeled_size),
            )

        dataset = (
            tf.data.Dataset.from_tensor_slices((pool_indices, labeled_indices)).enumerate().skip(int(skip_batches))
        )
        dataset = dataset.map(
            lambda index, rows: make_batch(index, *rows), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        return finish(dataset)

    def _labeled_order(self, seed, start: int, count: int) -> np.ndarray:
        """Rows of the labeled stream at positions start .. start + count - 1: a sequence of seeded permutations of
        the labeled rows (each labeled image once per cycle), so position p depends only on (seed, p)."""
        num = len(self.labeled_rows)
        positions = np.arange(start, start + count)
        cycles = positions // num
        out = np.empty(count, np.int64)
        for cycle in np.unique(cycles):
            where = cycles == cycle
            permutation = np.random.default_rng([seed, _LABELED_ORDER_TAG, int(cycle)]).permutation(num)
            out[where] = self.labeled_rows[permutation[positions[where] % num]]
        return out


def _check_fold(fold, folds):
    if fold is None:
        return None
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < NUM_FOLDS:
        raise ValueError(f"dataset.fold={fold!r} must be an int in 0..{NUM_FOLDS - 1} (or None: no official fold).")
    if folds is None:
        raise DataUnavailableError(
            f"dataset.fold={fold} needs the official folds, but tensorflow-datasets stl10 stores its records shuffled "
            "and without fold membership, so fold_indices.txt cannot be mapped onto them. Set dataset.local_path to "
            "the official stl10_binary/ folder (with fold_indices.txt) for a fold-based run, or dataset.fold=None."
        )
    return int(fold)


def load_stl10(
    *,
    local_path=None,
    data_dir=None,
    download: bool = False,
    manual_dir=None,
    cache_dir=None,
    fold=None,
    resolution=None,
    labeled_batch_size=None,
    validation_size=None,
    seed: int = 0,
    flip=None,
) -> ImageSplits:
    """STL-10 for the semi-supervised protocol (see the module docstring).

    Args:
      local_path: the `stl10_binary/` folder (or its parent); None: tfds `stl10`.
      data_dir, download, manual_dir: tfds (`manual_dir`: a folder holding `stl10_binary.tar.gz`).
      cache_dir: tfds only: where the unlabelled images are written once (None: `~/.cache/crvae_tf`).
      fold: 0..9, the official labeled fold; None: every labeled training image but a seeded hold-out.
      resolution: R, the size the models see (None: 64, CC-GAN's).
      labeled_batch_size: L, labeled images per training step (None: the training batch size).
      validation_size: `fold=None` only: the labeled images held out for validation (None: 500).
      seed: seeds the `fold=None` hold-out.
      flip: random horizontal flips in training (None: True).
    """
    resolution = DEFAULT_RESOLUTION if resolution is None else int(resolution)
    if not 1 <= resolution <= SIDE:
        raise ValueError(f"dataset.resolution={resolution} must be in 1..{SIDE} for STL-10 (the protocol: 64).")
    if labeled_batch_size is not None and int(labeled_batch_size) < 1:
        raise ValueError(f"dataset.labeled_batch_size={labeled_batch_size!r} must be a positive int (or None).")
    if local_path is not None:
        if manual_dir is not None:
            raise ValueError(
                "Set either dataset.local_path (stl10_binary/) or dataset.manual_dir (tfds stl10), not both."
            )
        arrays = read_stl10_folder(local_path)
    else:
        _check_fold(fold, None)  # refused before anything is read
        arrays = read_tfds_stl10(data_dir, download, manual_dir, cache_dir)
    fold = _check_fold(fold, arrays.folds)
    num_train = len(arrays.train_images)
    if fold is not None:
        if validation_size is not None:
            raise ValueError(
                f"dataset.validation_size={validation_size!r} applies to dataset.fold=None only: fold {fold} validates "
                "on the training images outside the fold. Unset it."
            )
        labeled = arrays.folds[fold]
        validation = np.setdiff1d(np.arange(num_train), labeled)
        rule = f"official fold {fold}: {len(labeled)} labeled, the other {len(validation)} training images validate"
    else:
        if validation_size is None:
            validation_size = DEFAULT_VALIDATION_SIZE
        if isinstance(validation_size, bool) or not 0 < int(validation_size) < num_train:
            raise ValueError(f"dataset.validation_size={validation_size!r} must be in 1..{num_train - 1} for STL-10.")
        order = np.random.default_rng([seed, 10]).permutation(num_train)
        validation, labeled = np.sort(order[: int(validation_size)]), np.sort(order[int(validation_size) :])
        rule = f"no fold: {len(labeled)} labeled, a seeded hold-out of {len(validation)} (seed {seed}) validates"
    labeled_images = arrays.train_images[labeled]
    pool_labels = np.concatenate([np.full(len(arrays.unlabeled), UNLABELED, np.int64), arrays.train_labels[labeled]])
    pool = TrainingPool([arrays.unlabeled, labeled_images], pool_labels, resolution, labeled_batch_size, fold)
    labels: Dict[str, np.ndarray] = {
        "train": pool_labels,
        "validation": arrays.train_labels[validation],
        "test": arrays.test_labels,
    }
    return ImageSplits(
        "stl10",
        "none",
        pool,
        _resized_uint8(arrays.train_images[validation], resolution),
        _resized_uint8(arrays.test_images, resolution),
        f"stl10 {arrays.source}; {rule}; {resolution}x{resolution} (train: random crop of side U[{resolution}, 96] "
        "resized, flips)",
        flip=True if flip is None else bool(flip),
        labels=labels,
    )
