"""Image datasets and tf.data input pipelines for the channel-recurrent VAE experiments.

Three MNIST-family datasets are 28x28 grayscale images of shape `[num_images, 28, 28, 1]`, float32 in
[0, 1], held in memory:

* `'mnist'`: LeCun MNIST, intensities / 255, `binarization='dynamic'` (every training batch is
  re-binarized with fresh Bernoulli noise, x_bin = 1[u < p]). The validation split is HELD OUT FROM THE
  TRAINING SET (a seeded random permutation of the 60,000 training images, the last `validation_size`
  of which become validation); the test split is the 10,000 test images. Read from a keras-layout
  `mnist.npz` (keys `x_train [60000, 28, 28] uint8`, `y_train`, `x_test`, `y_test`) when
  `local_path` is given, otherwise from tensorflow-datasets (`tfds` name `mnist`).
* `'binarized_mnist'`: the static binarization of Larochelle & Murray (2011) with its own
  50,000 / 10,000 / 10,000 train / validation / test split, `binarization='static'` (pixels are
  already 0/1 and are never re-sampled). Read from a bit-packed npz (keys `train`, `valid`, `test`,
  uint8 `[num_images, 98]` = `np.packbits` of the 784 row-major 0/1 pixels) when `local_path` is
  given, otherwise from tensorflow-datasets (`tfds` name `binarized_mnist`).
* `'sprites'`: an embedded, procedurally generated dSprites-like dataset that ships as code, so the
  quickstart runs anywhere offline. Each image shows one white shape (square, ellipse, triangle or
  heart) on black, with known factors of variation: shape, scale, rotation and x/y position. Shapes
  are rendered with 4x4 supersampling and box-downsampled, so pixels are anti-aliased intensities in
  [0, 1]; `binarization='dynamic'`. Generation is deterministic in the seed, numpy-only and vectorized
  (the default 8192 + 1024 + 1024 images take about 1.5 s on one CPU core). Train, validation and test are
  drawn from disjoint random streams (`[seed, 0]`, `[seed, 1]`, `[seed, 2]`).

Two RGB datasets for the adversarial (VAE-GAN / crVAE-GAN) experiments, `'celeba'` and `'birds'`, are
preprocessed once (decode, crop, resize to `resolution` x `resolution`, R = 64 or 128) into a cache of uint8
`.npy` files and returned as read-only memory maps `[num_images, R, R, 3]` in [0, 255], `binarization='none'`,
`flip=True`; `crvae_tf/image_data.py` documents their sources, crop rules, splits, cache and validation.

No code path ever falls back silently to other data: if the requested data cannot be found a
`DataUnavailableError` says exactly which binding to set. tensorflow-datasets is only imported when
it is actually used (it is slow to import), and on an offline machine `tfds.load(..., download=True)`
retries the network for minutes before failing; pass `download=False` (or a `local_path`) there.

The tf.data pipeline (`make_dataset`) yields one epoch at a time. Training order is a deterministic
function of `(seed, epoch)`, and the dynamic-binarization noise and the horizontal flips of
`(seed, epoch, batch index)`, so a run resumed with `skip_batches` continues mid-epoch exactly where it
stopped.
"""

import dataclasses
import logging
import os
import time
from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

import numpy as np
import tensorflow as tf

DATASET_NAMES = ("mnist", "binarized_mnist", "sprites", "celeba", "birds")
RGB_DATASET_NAMES = ("celeba", "birds")
# 'dynamic': re-binarized every batch; 'static': already 0/1; 'none': continuous pixels passed through
# (the RGB datasets; the adversarial models take intensities, not bits).
BINARIZATIONS = ("dynamic", "static", "none")
SPLIT_NAMES = ("train", "validation", "test")
SPRITE_SHAPES = ("square", "ellipse", "triangle", "heart")

IMAGE_SIZE = 28
_NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
_PACKED_WIDTH = _NUM_PIXELS // 8  # 98 bytes per bit-packed binarized MNIST image.

_KERAS_MNIST_FILENAME = "mnist.npz"
_BINARIZED_MNIST_FILENAME = "binarized_mnist.npz"
_KERAS_MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
_BINARIZED_MNIST_KEYS = ("train", "valid", "test")
_LOCAL_PATH_BINDING = "dataset.local_path"
_DATA_DIR_BINDING = "dataset.data_dir"

# Tags that separate the stateless-binarization key streams of training and evaluation.
_TRAIN_NOISE_TAG = 1
_EVAL_NOISE_TAG = 2
_FLIP_TAG = 3  # The horizontal-flip key stream of training batches.
_DEFAULT_MNIST_VALIDATION_SIZE = 10000

_logger = logging.getLogger(__name__)


class DataUnavailableError(RuntimeError):
    """The requested data could not be found or downloaded; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class ImageSplits:
    """The train / validation / test images of one dataset.

    Two pixel formats (see `pixel_format`), both accepted by `make_dataset`:
      * float32 `[num_images, H, W, C]` in [0, 1], in memory: the MNIST family (H = W = 28, C = 1).
      * uint8 `[num_images, R, R, 3]` in [0, 255], read-only `np.memmap`s of the preprocessed cache: 'celeba'
        and 'birds' (R = `resolution`); `make_dataset` divides each batch by 255, never the whole array.

    Attributes:
      name: dataset name, one of `DATASET_NAMES`.
      binarization: 'dynamic' (intensities in [0, 1], re-binarized every batch), 'static' (pixels are
        already 0/1) or 'none' (continuous pixels, passed through: the RGB datasets).
      train: `[num_train, H, W, C]` images.
      validation: `[num_validation, H, W, C]` images.
      test: `[num_test, H, W, C]` images.
      source: human-readable description of where the pixels came from, e.g. "tfds:mnist",
        "file:/path/mnist.npz", "generated:sprites(seed=0)", or for the RGB datasets the sources, per-source
        counts, crop rule, split rule and cache manifest.
      flip: whether training batches should be flipped horizontally at random (p = 0.5); pass it on as
        `make_dataset(..., flip=splits.flip)`. True for 'celeba' and 'birds' unless `dataset.flip=False`.
      manifest_path: the RGB datasets' cache `manifest.json` (sources, counts, crop, rejected files), else None.
    """

    name: str
    binarization: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    source: str
    flip: bool = False
    manifest_path: Optional[str] = None

    def __post_init__(self):
        _check_binarization(self.binarization)
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip={self.flip!r} must be a bool.")

    @property
    def image_shape(self) -> Tuple[int, ...]:
        """`(H, W, C)` of every image."""
        return tuple(self.train.shape[1:])

    @property
    def pixel_format(self) -> str:
        """'uint8 [0, 255]' (divide by 255, as `make_dataset` does per batch) or 'float32 [0, 1]'."""
        return "uint8 [0, 255]" if self.train.dtype == np.uint8 else f"{self.train.dtype} [0, 1]"

    def split(self, name: str) -> np.ndarray:
        """Returns the split `name` ('train' | 'validation' | 'test'): `[num_images, H, W, C]` in `pixel_format`."""
        if name not in SPLIT_NAMES:
            raise ValueError(f"Unknown split {name!r}; valid split names are {', '.join(map(repr, SPLIT_NAMES))}.")
        return getattr(self, name)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{s}={getattr(self, s).shape}" for s in SPLIT_NAMES)
        return (
            f"ImageSplits(name={self.name!r}, binarization={self.binarization!r}, {shapes}, "
            f"pixels={self.pixel_format!r}, flip={self.flip}, source={self.source!r})"
        )


# ----------------------------------------------------------------------------------------------------
# Loading.
# ----------------------------------------------------------------------------------------------------


def load_image_splits(
    name: str,
    *,
    local_path: Optional[str] = None,
    data_dir: Optional[str] = None,
    download: bool = True,
    validation_size: Optional[Union[int, float]] = None,
    seed: int = 0,
    num_sprites: Tuple[int, int, int] = (8192, 1024, 1024),
    resolution: Optional[int] = None,
    crop=None,
    box_scale: Optional[float] = None,
    cub_path: Optional[str] = None,
    birdsnap_path: Optional[str] = None,
    nabirds_path: Optional[str] = None,
    manual_dir: Optional[str] = None,
    cache_dir: Optional[str] = None,
    flip: Optional[bool] = None,
    max_corrupt_fraction: float = 0.01,
    num_workers: Optional[int] = None,
) -> ImageSplits:
    """Loads the train / validation / test splits of one dataset.

    Args:
      name: 'mnist', 'binarized_mnist', 'sprites', 'celeba' or 'birds' (see the module docstring and, for
        the last two, `crvae_tf/image_data.py`).
      local_path: for 'mnist' a keras-layout `mnist.npz` (or a folder containing one); for
        'binarized_mnist' a bit-packed `binarized_mnist.npz` (or a folder containing one); for 'celeba' a
        folder of aligned CelebA images at any resolution. When None the data come from
        tensorflow-datasets. Must be None for 'sprites' and 'birds'.
      data_dir: tensorflow-datasets data directory (None: the tfds default). Unused with `local_path`.
        For the RGB datasets also the default cache root (`<data_dir>/crvae_tf_cache`).
      download: whether tensorflow-datasets may download and prepare missing data. Offline, use
        False: a download attempt then retries the network for minutes before failing. (tfds celeb_a is
        never downloaded, only prepared from `manual_dir`.)
      validation_size: 'mnist': how many of the 60,000 training images are held out (at random, seeded by
        `seed`) as the validation split (None: 10,000). 'birds', and 'celeba' when its official split leaves
        validation or test empty: the seeded hold-out, as a count (int) or a fraction of the pool (float in
        (0, 1)); None: 5%. CelebA's hold-out takes this many images for validation and as many for test.
        Ignored for 'binarized_mnist' and CelebA with its own split, which have their own validation
        splits, and for 'sprites' (see `num_sprites`).
      seed: non-negative int; seeds the validation hold-outs and the sprite generator.
      num_sprites: 'sprites' only: `(num_train, num_validation, num_test)`.
      resolution: 'celeba' / 'birds' only, required: 64 or 128 (output images are R x R).
      crop: 'celeba' only: None (face crop rows 40:188, columns 15:163 of the 178x218 image, scaled to the
        image size), 'none' (whole image, for pre-cropped faces) or `(top, left, height, width)` in 178x218
        coordinates.
      box_scale: 'birds' only: the square ROI's side over the longer bounding-box side (None: 1.0).
      cub_path, birdsnap_path, nabirds_path: 'birds' only, at least one: the local CUB_200_2011 folder (or
        'tfds' for tensorflow-datasets caltech_birds2011), Birdsnap folder and NABirds folder.
      manual_dir: tfds `manual_dir` with the original files ('celeba': the five CelebA files; 'birds' with
        `cub_path='tfds'`: the CUB archive), used to prepare the tfds dataset when it is not prepared yet.
      cache_dir: 'celeba' / 'birds': where the preprocessed cache goes (None: `<data_dir>/crvae_tf_cache`,
        else `~/.cache/crvae_tf`).
      flip: 'celeba' / 'birds': random horizontal flips of training batches (None: True); recorded as
        `ImageSplits.flip`.
      max_corrupt_fraction: 'celeba' / 'birds': the largest fraction of present images that may be
        rejected (corrupt, undecodable, blank, bad box) and skipped before loading fails.
      num_workers: 'celeba' / 'birds': preprocessing threads (None: min(8, 2 x CPU cores)).

    Returns:
      An `ImageSplits`: float32 `[num_images, 28, 28, 1]` arrays in [0, 1] for the MNIST family; uint8
      `[num_images, R, R, 3]` memory maps in [0, 255] for 'celeba' / 'birds'.

    Raises:
      ValueError: unknown `name`, bad `validation_size`, `seed`, `num_sprites`, `resolution`, `crop`, ..., a
        `local_path` given for 'sprites' or 'birds', or an RGB-only argument given for the MNIST family.
      DataUnavailableError: the files are missing, in the wrong format or too many are corrupt, or
        tensorflow-datasets could not provide the data (not prepared, offline, ...); the message names the
        expected files and the binding to set.
    """
    if name not in DATASET_NAMES:
        raise ValueError(
            f"Unknown dataset name {name!r}; supported names are "
            f"{', '.join(map(repr, DATASET_NAMES))} (set dataset.name)."
        )
    _check_seed(seed, "seed")
    start = time.perf_counter()
    rgb_only = dict(
        resolution=resolution,
        crop=crop,
        box_scale=box_scale,
        cub_path=cub_path,
        birdsnap_path=birdsnap_path,
        nabirds_path=nabirds_path,
        manual_dir=manual_dir,
        flip=flip,
    )
    if name in RGB_DATASET_NAMES:
        from crvae_tf import image_data  # pylint: disable=g-import-not-at-top  (image_data imports this module)

        common = dict(
            data_dir=data_dir,
            download=download,
            manual_dir=manual_dir,
            resolution=resolution,
            validation_size=validation_size,
            seed=seed,
            cache_dir=cache_dir,
            flip=True if flip is None else flip,
            max_corrupt_fraction=max_corrupt_fraction,
            num_workers=num_workers,
        )
        if name == "celeba":
            for key in ("box_scale", "cub_path", "birdsnap_path", "nabirds_path"):
                if rgb_only[key] is not None:
                    raise ValueError(
                        f"dataset.{key}={rgb_only[key]!r} is a 'birds' setting; dataset.name='celeba' "
                        "reads dataset.local_path (a folder of aligned images) or tfds celeb_a."
                    )
            splits = image_data.load_celeba(local_path=local_path, crop=crop, **common)
        else:
            if local_path is not None or crop is not None:
                raise ValueError(
                    f"dataset.name='birds' takes its sources from dataset.cub_path, dataset.birdsnap_path "
                    f"and dataset.nabirds_path, and crops bounding boxes (dataset.box_scale); unset "
                    f"dataset.local_path ({local_path!r}) and dataset.crop ({crop!r})."
                )
            splits = image_data.load_birds(
                cub_path=cub_path, birdsnap_path=birdsnap_path, nabirds_path=nabirds_path, box_scale=box_scale, **common
            )
        _logger.info("Loaded %r in %.2f s.", splits, time.perf_counter() - start)
        return splits
    given = sorted(key for key, value in rgb_only.items() if value is not None)
    if given:
        raise ValueError(
            f"{', '.join(f'dataset.{key}' for key in given)} only apply to the RGB datasets "
            f"{RGB_DATASET_NAMES}, not to dataset.name={name!r}; unset them."
        )
    if validation_size is None:
        validation_size = _DEFAULT_MNIST_VALIDATION_SIZE
    if name == "sprites":
        splits = _load_sprites(local_path, seed, num_sprites)
    elif name == "mnist":
        splits = _load_mnist(local_path, data_dir, download, validation_size, seed)
    else:
        splits = _load_binarized_mnist(local_path, data_dir, download)
    _logger.info("Loaded %r in %.2f s.", splits, time.perf_counter() - start)
    return splits


def _load_mnist(local_path, data_dir, download, validation_size, seed) -> ImageSplits:
    if local_path is not None:
        path = _resolve_local_file(local_path, _KERAS_MNIST_FILENAME, "mnist")
        x_train, x_test = _read_keras_mnist(path)
        source = f"file:{path}"
    else:
        x_train, x_test = _load_tfds("mnist", ("train", "test"), data_dir, download)
        source = "tfds:mnist"
    num_pool = x_train.shape[0]
    if (
        isinstance(validation_size, bool)
        or not isinstance(validation_size, (int, np.integer))
        or not 0 <= validation_size < num_pool
    ):
        raise ValueError(
            f"validation_size={validation_size!r} must be an int in [0, {num_pool}) (it is held out "
            f"from the {num_pool} MNIST training images); set dataset.validation_size."
        )
    permutation = np.random.default_rng(seed).permutation(num_pool)
    num_train = num_pool - int(validation_size)
    train = _to_unit_float(x_train[permutation[:num_train]])
    validation = _to_unit_float(x_train[permutation[num_train:]])
    test = _to_unit_float(x_test)
    return ImageSplits(
        "mnist",
        "dynamic",
        train,
        validation,
        test,
        f"{source} (validation: {int(validation_size)} training images held out with seed={seed})",
    )


def _load_binarized_mnist(local_path, data_dir, download) -> ImageSplits:
    if local_path is not None:
        path = _resolve_local_file(local_path, _BINARIZED_MNIST_FILENAME, "binarized_mnist")
        train, validation, test = _read_packed_binarized_mnist(path)
        source = f"file:{path}"
    else:
        raw = _load_tfds("binarized_mnist", ("train", "validation", "test"), data_dir, download)
        if any(int(a.max(initial=0)) > 1 for a in raw):
            _logger.warning(
                "tfds binarized_mnist contains values > 1 (expected 0/1); treating every non-zero pixel as 1."
            )
        train, validation, test = ((a != 0).astype(np.float32) for a in raw)
        source = "tfds:binarized_mnist"
    return ImageSplits("binarized_mnist", "static", train, validation, test, source)


def _load_sprites(local_path, seed, num_sprites) -> ImageSplits:
    if local_path is not None:
        raise ValueError(
            f"dataset.local_path={local_path!r} was given with dataset.name='sprites', but the sprites "
            "dataset is generated in code and reads no files. To train on MNIST from a local file, set "
            "dataset.name='mnist' and dataset.local_path='/path/to/mnist.npz' (or "
            "dataset.name='binarized_mnist' with the bit-packed binarized_mnist.npz); for sprites, "
            "leave dataset.local_path unset."
        )
    if (
        not isinstance(num_sprites, (tuple, list))
        or len(num_sprites) != 3
        or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in num_sprites)
    ):
        raise ValueError(
            f"num_sprites={num_sprites!r} must be three positive ints (num_train, num_validation, "
            "num_test); set dataset.num_sprites."
        )
    train, validation, test = (generate_sprites(int(n), [seed, i])[0] for i, n in enumerate(num_sprites))
    return ImageSplits("sprites", "dynamic", train, validation, test, f"generated:sprites(seed={seed})")


def _resolve_local_file(local_path, filename: str, dataset: str) -> str:
    """Returns the file named by `local_path`, which is either the file itself or a folder holding `filename`."""
    if not isinstance(local_path, (str, os.PathLike)):
        raise ValueError(f"dataset.local_path must be a path string, got {local_path!r}.")
    path = os.path.abspath(os.path.expanduser(os.fspath(local_path)))
    if os.path.isdir(path):
        folder, path = path, os.path.join(path, filename)
        if not os.path.isfile(path):
            raise DataUnavailableError(
                f"dataset.local_path={os.fspath(local_path)!r} is a folder without {filename!r} in it (looked for "
                f"{path}). Set {_LOCAL_PATH_BINDING} to the {dataset} file itself or to a folder containing "
                f"{filename!r}. Files in {folder}: {sorted(os.listdir(folder))[:20]}."
            )
    elif not os.path.isfile(path):
        raise DataUnavailableError(
            f"dataset.local_path={os.fspath(local_path)!r} does not exist (resolved to {path}). Set "
            f"{_LOCAL_PATH_BINDING} to an existing {dataset} file ({_describe_format(dataset)}) or to a folder "
            f"containing {filename!r}."
        )
    return path


def _describe_format(dataset: str) -> str:
    if dataset == "mnist":
        return (
            "keras layout mnist.npz with keys x_train [60000, 28, 28] uint8, y_train, x_test [10000, 28, 28] "
            "uint8, y_test"
        )
    return (
        "bit-packed binarized_mnist.npz with keys train, valid, test: uint8 [num_images, 98] = "
        "np.packbits(pixels, axis=1) of the 784 row-major 0/1 pixels"
    )


def _open_npz(path: str, dataset: str) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise ValueError("not an .npz archive (a single .npy array)")
            return {key: npz[key] for key in npz.files}
    except Exception as error:  # Bad zip, pickled objects, truncated file, ...
        raise DataUnavailableError(
            f"Could not read {path} as an .npz archive ({type(error).__name__}: {_first_line(error)}). "
            f"{_LOCAL_PATH_BINDING} must point to a {_describe_format(dataset)}."
        ) from error


def _wrong_keys_error(path: str, dataset: str, found, expected) -> DataUnavailableError:
    hint = ""
    if dataset == "mnist" and set(_BINARIZED_MNIST_KEYS) <= set(found):
        hint = " This looks like the bit-packed binarized MNIST file: use it with dataset.name='binarized_mnist'."
    elif dataset == "binarized_mnist" and {"x_train", "x_test"} <= set(found):
        hint = " This looks like a keras-layout MNIST file: use it with dataset.name='mnist'."
    return DataUnavailableError(
        f"{path} has keys {sorted(found)}, but dataset.name={dataset!r} expects keys {list(expected)} "
        f"({_describe_format(dataset)}).{hint} Fix {_LOCAL_PATH_BINDING} (or dataset.name)."
    )


def _read_keras_mnist(path: str) -> Tuple[np.ndarray, np.ndarray]:
    """Reads `x_train`, `x_test` (uint8 `[num_images, 28, 28, 1]`) from a keras-layout npz."""
    arrays = _open_npz(path, "mnist")
    if not {"x_train", "x_test"} <= set(arrays):
        raise _wrong_keys_error(path, "mnist", arrays.keys(), _KERAS_MNIST_KEYS)
    images = []
    for key in ("x_train", "x_test"):
        array = arrays[key]
        if array.ndim == 4 and array.shape[-1] == 1:
            array = array[..., 0]
        if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or array.shape[0] == 0:
            raise DataUnavailableError(
                f"{path}: {key} has shape {array.shape}, expected [num_images, 28, 28] "
                f"(num_images >= 1; keras layout). Fix {_LOCAL_PATH_BINDING}."
            )
        if array.dtype != np.uint8:
            raise DataUnavailableError(
                f"{path}: {key} has dtype {array.dtype}, expected uint8 intensities in [0, 255] (keras layout). "
                f"Convert it with np.round(x * 255).astype(np.uint8) if it holds [0, 1] floats, or fix "
                f"{_LOCAL_PATH_BINDING}."
            )
        images.append(array[..., None])
    return images[0], images[1]


def _read_packed_binarized_mnist(path: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads the bit-packed `train`, `valid`, `test` arrays as float32 0/1 `[num_images, 28, 28, 1]`."""
    arrays = _open_npz(path, "binarized_mnist")
    if not set(_BINARIZED_MNIST_KEYS) <= set(arrays):
        raise _wrong_keys_error(path, "binarized_mnist", arrays.keys(), _BINARIZED_MNIST_KEYS)
    splits = []
    for key in _BINARIZED_MNIST_KEYS:
        packed = arrays[key]
        if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != _PACKED_WIDTH or packed.shape[0] == 0:
            raise DataUnavailableError(
                f"{path}: {key} has dtype {packed.dtype} and shape {packed.shape}, expected uint8 [num_images, "
                f"{_PACKED_WIDTH}] ({_describe_format('binarized_mnist')}). Fix {_LOCAL_PATH_BINDING}."
            )
        bits = np.unpackbits(packed, axis=1)[:, :_NUM_PIXELS]
        splits.append(bits.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1).astype(np.float32))
    return splits[0], splits[1], splits[2]


def _load_tfds(tfds_name: str, splits: Sequence[str], data_dir, download: bool):
    """Loads the `image` feature of each split as uint8 `[num_images, 28, 28, 1]` numpy arrays."""
    if tfds_name == "mnist":
        local_hint = (
            f"--gin_bindings=\"{_LOCAL_PATH_BINDING}='/path/to/mnist.npz'\" (keras layout: x_train, y_train, "
            "x_test, y_test)"
        )
    else:
        local_hint = (
            f"--gin_bindings=\"{_LOCAL_PATH_BINDING}='/path/to/binarized_mnist.npz'\" (bit-packed: keys "
            "train, valid, test, uint8 [num_images, 98] = np.packbits of the 784 row-major 0/1 pixels)"
        )

    def unavailable(error: BaseException) -> DataUnavailableError:
        return DataUnavailableError(
            f"Could not load tfds dataset {tfds_name!r} (data_dir={data_dir!r}, download={download}): "
            f"{type(error).__name__}: {_first_line(error)}. This machine may be offline. Point the recipe at a "
            f"local copy instead: {local_hint}, or prepare the tfds data on a connected machine and set "
            f"{_DATA_DIR_BINDING}."
        )

    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError as error:
        raise unavailable(error) from error
    try:
        datasets = tfds.load(tfds_name, split=list(splits), data_dir=data_dir, download=download)
        arrays = []
        for dataset in datasets:
            chunks = list(dataset.map(lambda example: example["image"]).batch(10000).as_numpy_iterator())
            if not chunks:
                raise ValueError("the split is empty")
            arrays.append(np.concatenate(chunks, axis=0))
    except Exception as error:  # Not prepared, connection errors, checksum errors, ... all mean "no data".
        raise unavailable(error) from error
    for split, array in zip(splits, arrays):
        if array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 1):
            raise DataUnavailableError(
                f"tfds {tfds_name!r} split {split!r} has images of shape {array.shape[1:]}, expected (28, 28, 1)."
            )
    return arrays


def _to_unit_float(images: np.ndarray) -> np.ndarray:
    """uint8 `[N, 28, 28, 1]` -> float32 `[N, 28, 28, 1]` in [0, 1]."""
    out = images.astype(np.float32)
    np.divide(out, 255.0, out=out)
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def _check_seed(seed, what: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what}={seed!r} must be a non-negative int.")


def _check_binarization(binarization) -> None:
    if binarization not in BINARIZATIONS:
        raise ValueError(
            f"binarization={binarization!r} is not supported; use one of {', '.join(map(repr, BINARIZATIONS))}."
        )


# ----------------------------------------------------------------------------------------------------
# Procedural sprites.
# ----------------------------------------------------------------------------------------------------

_SUPERSAMPLE = 4  # Sub-samples per pixel side.
_PATCH = 22  # Side, in pixels, of the square patch each shape is rendered into.
_MAX_RADIUS = 9.0  # Pixel radius of a shape's unit circle at scale 1.
_MARGIN = 9.0  # Shape centres lie in [_MARGIN, 28 - _MARGIN] pixels on both axes.
_SCALE_RANGE = (0.5, 1.0)
_CHUNK = 1024  # Images rendered at once (bounds the temporary memory to ~100 MB).


def generate_sprites(num_images: int, seed: Union[int, Sequence[int]]) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Renders dSprites-like images with known factors of variation, deterministically from `seed`.

    Each image is one white shape on black. Shapes are drawn in a unit circle (circumradius 0.95),
    scaled to `9 * scale` pixels, rotated counter-clockwise by `rotation` and centred at pixel
    coordinates `(9 + 10 * x, 9 + 10 * y)` (x to the right, y downwards). Pixels are the covered
    fraction estimated with 4x4 supersampling, so edges are anti-aliased.

    Args:
      num_images: N >= 1.
      seed: non-negative int, or sequence of them, for `np.random.default_rng`.

    Returns:
      images: float32 `[N, 28, 28, 1]` in [0, 1].
      factors: dict of `[N]` arrays: 'shape' int64 index into `SPRITE_SHAPES`; 'scale' float32 in
        [0.5, 1); 'rotation' float32 radians in [0, 2*pi); 'x', 'y' float32 normalised positions in [0, 1).
    """
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"num_images={num_images!r} must be a positive int.")
    seeds = [seed] if np.ndim(seed) == 0 else list(seed)
    for s in seeds:
        _check_seed(s, "seed")
    rng = np.random.default_rng(seed)
    factors = {
        "shape": rng.integers(0, len(SPRITE_SHAPES), size=num_images).astype(np.int64),
        "scale": rng.uniform(*_SCALE_RANGE, size=num_images).astype(np.float32),
        "rotation": rng.uniform(0.0, 2.0 * np.pi, size=num_images).astype(np.float32),
        "x": rng.uniform(0.0, 1.0, size=num_images).astype(np.float32),
        "y": rng.uniform(0.0, 1.0, size=num_images).astype(np.float32),
    }
    images = np.empty((num_images, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
    for start in range(0, num_images, _CHUNK):
        chunk = slice(start, min(start + _CHUNK, num_images))
        images[chunk, :, :, 0] = _render_sprites({k: v[chunk] for k, v in factors.items()})
    return images, factors


def _shape_mask(shape_index: int, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Inside test of shape `shape_index` at unit-circle coordinates `qx, qy` (y up). Returns bool."""
    if shape_index == 0:  # Square, half side 0.67 (circumradius 0.95).
        return np.maximum(np.abs(qx), np.abs(qy)) <= 0.67
    if shape_index == 1:  # Ellipse, semi-axes 0.95 x 0.5.
        return np.square(qx / 0.95) + np.square(qy / 0.5) <= 1.0
    if shape_index == 2:  # Equilateral triangle pointing up, circumradius 0.95 (inradius 0.475).
        edge = 0.475
        return (qy >= -edge) & (0.8660254 * qx + 0.5 * qy <= edge) & (-0.8660254 * qx + 0.5 * qy <= edge)
    # Heart: (X^2 + Y^2 - 1)^3 <= X^2 Y^3, rescaled so it fits the circle of radius 0.95.
    hx = 1.4 * qx
    hy = 1.4 * qy + 0.118
    hx2 = hx * hx
    inner = hx2 + hy * hy - 1.0
    return inner * inner * inner <= hx2 * hy * hy * hy


def _render_sprites(factors: Dict[str, np.ndarray]) -> np.ndarray:
    """float32 `[n, 28, 28]` images for `[n]` factor arrays."""
    n = factors["shape"].shape[0]
    size = _PATCH * _SUPERSAMPLE
    cx = (_MARGIN + factors["x"] * (IMAGE_SIZE - 2 * _MARGIN)).astype(np.float32)
    cy = (_MARGIN + factors["y"] * (IMAGE_SIZE - 2 * _MARGIN)).astype(np.float32)
    # Integer top-left corner of each patch; the patch covers the shape's whole circumcircle.
    ox = np.floor(cx).astype(np.int64) - _PATCH // 2
    oy = np.floor(cy).astype(np.int64) - _PATCH // 2
    sub = ((np.arange(size, dtype=np.float32) + 0.5) / _SUPERSAMPLE)[None, :]  # [1, size]
    dx = (ox[:, None] + sub - cx[:, None])[:, None, :]  # [n, 1, size]
    up = -(oy[:, None] + sub - cy[:, None])[:, :, None]  # [n, size, 1] (y up)
    radius = (_MAX_RADIUS * factors["scale"]).astype(np.float32)
    cos = (np.cos(factors["rotation"]) / radius).astype(np.float32)[:, None, None]
    sin = (np.sin(factors["rotation"]) / radius).astype(np.float32)[:, None, None]
    patches = np.zeros((n, _PATCH, _PATCH), np.float32)
    for shape_index in range(len(SPRITE_SHAPES)):
        members = np.flatnonzero(factors["shape"] == shape_index)
        if members.size == 0:
            continue
        # Rotate the sample offsets by -rotation and divide by the radius: shape-local coordinates.
        c, s, x, y = cos[members], sin[members], dx[members], up[members]
        qx = c * x + s * y
        qy = c * y - s * x
        mask = _shape_mask(shape_index, qx, qy).astype(np.float32)  # [m, size, size]
        patches[members] = mask.reshape(-1, _PATCH, _SUPERSAMPLE, _PATCH, _SUPERSAMPLE).mean(axis=(2, 4))
    # Paste the patches into a padded canvas, then crop to 28 x 28.
    canvas = np.zeros((n, IMAGE_SIZE + 2 * _PATCH, IMAGE_SIZE + 2 * _PATCH), np.float32)
    offsets = np.arange(_PATCH)
    rows = (oy + _PATCH)[:, None, None] + offsets[None, :, None]
    cols = (ox + _PATCH)[:, None, None] + offsets[None, None, :]
    canvas[np.arange(n)[:, None, None], rows, cols] = patches
    return np.clip(canvas[:, _PATCH : _PATCH + IMAGE_SIZE, _PATCH : _PATCH + IMAGE_SIZE], 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------
# tf.data pipeline.
# ----------------------------------------------------------------------------------------------------


def binarize(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Fresh Bernoulli binarization: `x_bin = 1[u < p]`, `u ~ U(0, 1)` from `tf.random.stateless_uniform`.

    Args:
      images: `[...]` intensities p in [0, 1] (any float or integer dtype castable to float32).
      seed: int32/int64 `[2]` stateless seed; the same seed gives the same binarization.

    Returns:
      float32 `[...]` of 0/1 values with `E[x_bin] = p`.
    """
    images = tf.cast(images, tf.float32)
    noise = tf.random.stateless_uniform(tf.shape(images), seed=seed, dtype=tf.float32)
    return tf.cast(noise < images, tf.float32)


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Number of full training batches per epoch (`num_images // batch_size`; the remainder is dropped)."""
    _check_batch_size(batch_size)
    steps = int(num_images) // int(batch_size)
    if steps == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {num_images} training images; lower train.batch_size.")
    return steps


def make_dataset(
    images: np.ndarray,
    *,
    batch_size: int,
    binarization: str,
    seed: int,
    training: bool,
    epoch: int = 0,
    skip_batches: int = 0,
    flip: Optional[bool] = None,
) -> tf.data.Dataset:
    """Builds the input pipeline for one pass over `images`.

    Training (`training=True`): ONE epoch, shuffled with the permutation
    `np.random.default_rng([seed, epoch]).permutation(N)`, batched dropping the last partial batch,
    then `.skip(skip_batches)`. With 'dynamic' binarization batch i (absolute index within the epoch)
    is binarized with a stateless seed derived from `(seed, epoch, i)`; with `flip` each image of batch i
    is mirrored left-right when `u < 0.5`, `u ~ U(0, 1)` from another stateless seed derived from
    `(seed, epoch, i)`. So a run resumed with `skip_batches=k` sees exactly batches k, k+1, ... of the
    uninterrupted epoch, pixels included.

    Evaluation (`training=False`): every image once, in order, the last batch possibly smaller, never
    flipped; 'dynamic' binarization uses a fixed seed derived from `(seed, batch index)`, so the evaluated
    binary set is identical across calls.

    'static' and 'none' binarization pass the pixels through unchanged in both modes. With 'none' the
    images may be uint8 in [0, 255] (e.g. the memory-mapped `ImageSplits` of 'celeba' / 'birds'): each
    batch is gathered from the array in numpy (`tf.numpy_function`; the array is never copied into one
    tensor) and divided by 255.

    Args:
      images: float `[N, H, W, C]` intensities in [0, 1], or with binarization 'none' also uint8
        `[N, H, W, C]` in [0, 255] (e.g. `ImageSplits.train`, possibly an `np.memmap`).
      batch_size: B >= 1; for training also B <= N.
      binarization: 'dynamic', 'static' or 'none' (`ImageSplits.binarization`).
      seed: non-negative int.
      training: selects the training or evaluation pipeline.
      epoch: non-negative int; training only.
      skip_batches: batches of this epoch already consumed, in [0, N // B]; training only.
      flip: random horizontal flips of training batches (p = 0.5 per image); pass `ImageSplits.flip`. None:
        flip exactly when `binarization == 'none'` (the RGB datasets). Ignored in evaluation.

    Returns:
      A prefetched `tf.data.Dataset` of float32 `[B, H, W, C]` batches in [0, 1] (static batch dimension B
      when training; evaluation batches have an unknown batch dimension, the last one holding N mod B).
    """
    _check_binarization(binarization)
    _check_batch_size(batch_size)
    _check_seed(seed, "seed")
    _check_seed(epoch, "epoch")
    if flip is None:
        flip = binarization == "none"
    if not isinstance(flip, (bool, np.bool_)):
        raise ValueError(f"flip={flip!r} must be a bool or None.")
    if not isinstance(images, np.ndarray):
        images = np.asarray(images)
    if images.ndim < 2 or images.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty [num_images, height, width, channels] array, got shape {images.shape}."
        )
    passthrough = binarization == "none"
    if passthrough and images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"images have dtype {images.dtype}; binarization='none' takes uint8 in [0, 255] or float "
            "intensities in [0, 1]."
        )
    if not passthrough and not np.issubdtype(images.dtype, np.floating):
        raise ValueError(
            f"images have dtype {images.dtype}; expected float intensities in [0, 1] (use the arrays "
            "of load_image_splits, or divide uint8 images by 255)."
        )
    num_images = images.shape[0]
    dynamic = binarization == "dynamic"
    if passthrough:
        pixels = None
        gather_batch = _numpy_batch_gatherer(images)
    else:
        pixels = tf.convert_to_tensor(images, dtype=tf.float32)

    if training:
        steps = steps_per_epoch(num_images, batch_size)
        if (
            isinstance(skip_batches, bool)
            or not isinstance(skip_batches, (int, np.integer))
            or not 0 <= skip_batches <= steps
        ):
            raise ValueError(
                f"skip_batches={skip_batches!r} must be an int in [0, {steps}] (the epoch has {steps} "
                f"batches of {batch_size})."
            )
        order = np.random.default_rng([seed, epoch]).permutation(num_images)
        batch_indices = order[: steps * batch_size].reshape(steps, batch_size).astype(np.int64)
        epoch_key = tf.random.experimental.stateless_fold_in(
            tf.constant([seed, _TRAIN_NOISE_TAG], tf.int64), tf.constant(epoch, tf.int64)
        )
        flip_key = tf.random.experimental.stateless_fold_in(
            tf.constant([seed, _FLIP_TAG], tf.int64), tf.constant(epoch, tf.int64)
        )

        def make_batch(index, indices):
            batch = gather_batch(indices) if passthrough else tf.gather(pixels, indices)
            if dynamic:
                batch = binarize(batch, tf.random.experimental.stateless_fold_in(epoch_key, index))
            if flip:
                batch = random_flip_left_right(batch, tf.random.experimental.stateless_fold_in(flip_key, index))
            return batch

        dataset = tf.data.Dataset.from_tensor_slices(batch_indices).enumerate().skip(int(skip_batches))
    else:
        num_batches = -(-num_images // batch_size)
        eval_key = tf.constant([seed, _EVAL_NOISE_TAG], tf.int64)

        def make_batch(index, start):
            stop = tf.minimum(start + batch_size, num_images)
            batch = gather_batch(tf.range(start, stop)) if passthrough else pixels[start:stop]
            if dynamic:
                batch = binarize(batch, tf.random.experimental.stateless_fold_in(eval_key, index))
            return batch

        starts = tf.data.Dataset.range(0, num_batches * batch_size, batch_size)
        dataset = starts.enumerate()
    dataset = dataset.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def random_flip_left_right(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirrors each image of `[B, H, W, C]` along W when `u < 0.5`, `u ~ U(0, 1)` stateless in `seed` (int `[2]`)."""
    flips = tf.random.stateless_uniform(tf.shape(images)[:1], seed=seed, dtype=tf.float32) < 0.5
    return tf.where(flips[:, None, None, None], tf.reverse(images, axis=[2]), images)


def _numpy_batch_gatherer(images: np.ndarray):
    """A graph function `indices [b] int64 -> float32 [b, H, W, C] in [0, 1]` reading `images[indices]` in numpy.

    uint8 images are divided by 255; only the b gathered images are read (memory maps stay on disk).
    """
    is_uint8 = images.dtype == np.uint8
    shape = images.shape[1:]

    def gather(indices):
        batch = np.asarray(images[np.asarray(indices, np.int64)], dtype=np.float32)
        if is_uint8:
            np.divide(batch, 255.0, out=batch)
        return batch

    def gather_batch(indices):
        batch = tf.numpy_function(gather, [indices], tf.float32, stateful=False)
        return tf.ensure_shape(batch, [indices.shape[0]] + list(shape))

    return gather_batch


def _check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive int; set train.batch_size.")
