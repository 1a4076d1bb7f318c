"""MNIST sources: LeCun MNIST (dynamically binarized) and the statically binarized MNIST of Larochelle &
Murray (2011), from a local file or tensorflow-datasets.

* `'mnist'`: intensities / 255, `binarization='dynamic'`. The validation split is HELD OUT FROM THE TRAINING
  SET (a seeded random permutation of the 60,000 training images, the last `validation_size` of which become
  validation); the test split is the 10,000 test images. Read from a keras-layout `mnist.npz` (keys
  `x_train [60000, 28, 28] uint8`, `y_train`, `x_test`, `y_test`) or from tfds `mnist`.
* `'binarized_mnist'`: its own 50,000 / 10,000 / 10,000 split, `binarization='static'`. Read from a bit-packed
  npz (keys `train`, `valid`, `test`, uint8 `[num_images, 98]` = `np.packbits` of the 784 row-major 0/1
  pixels) or from tfds `binarized_mnist`.

tensorflow-datasets is imported only when used; offline, `download=True` retries the network for minutes.
"""

import logging
import os
from typing import Dict
from typing import Sequence
from typing import Tuple

import numpy as np

from crvae_tf.data.splits import DATA_DIR_BINDING
from crvae_tf.data.splits import LOCAL_PATH_BINDING
from crvae_tf.data.splits import DataUnavailableError
from crvae_tf.data.splits import ImageSplits
from crvae_tf.data.splits import first_line

_logger = logging.getLogger(__name__)

IMAGE_SIZE = 28
_NUM_PIXELS = IMAGE_SIZE * IMAGE_SIZE
_PACKED_WIDTH = _NUM_PIXELS // 8  # 98 bytes per bit-packed binarized MNIST image.

_KERAS_MNIST_FILENAME = "mnist.npz"
_BINARIZED_MNIST_FILENAME = "binarized_mnist.npz"
_KERAS_MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")
_BINARIZED_MNIST_KEYS = ("train", "valid", "test")
DEFAULT_MNIST_VALIDATION_SIZE = 10000


def load_mnist(local_path, data_dir, download, validation_size, seed) -> ImageSplits:
    if local_path is not None:
        path = _resolve_local_file(local_path, _KERAS_MNIST_FILENAME, "mnist")
        x_train, x_test = _read_keras_mnist(path)
        y_train, y_test = _read_keras_mnist_labels(path, len(x_train), len(x_test))
        source = f"file:{path}"
    else:
        x_train, x_test = _load_tfds("mnist", ("train", "test"), data_dir, download)
        y_train = y_test = None  # the tfds reader takes the images only
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
    labels = None
    if y_train is not None:
        labels = {
            "train": y_train[permutation[:num_train]],
            "validation": y_train[permutation[num_train:]],
            "test": y_test,
        }
    return ImageSplits(
        "mnist",
        "dynamic",
        train,
        validation,
        test,
        f"{source} (validation: {int(validation_size)} training images held out with seed={seed})",
        labels=labels,
    )


def load_binarized_mnist(local_path, data_dir, download) -> ImageSplits:
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
                f"{path}). Set {LOCAL_PATH_BINDING} to the {dataset} file itself or to a folder containing "
                f"{filename!r}. Files in {folder}: {sorted(os.listdir(folder))[:20]}."
            )
    elif not os.path.isfile(path):
        raise DataUnavailableError(
            f"dataset.local_path={os.fspath(local_path)!r} does not exist (resolved to {path}). Set "
            f"{LOCAL_PATH_BINDING} to an existing {dataset} file ({_describe_format(dataset)}) or to a folder "
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
            f"Could not read {path} as an .npz archive ({type(error).__name__}: {first_line(error)}). "
            f"{LOCAL_PATH_BINDING} must point to a {_describe_format(dataset)}."
        ) from error


def _wrong_keys_error(path: str, dataset: str, found, expected) -> DataUnavailableError:
    hint = ""
    if dataset == "mnist" and set(_BINARIZED_MNIST_KEYS) <= set(found):
        hint = " This looks like the bit-packed binarized MNIST file: use it with dataset.name='binarized_mnist'."
    elif dataset == "binarized_mnist" and {"x_train", "x_test"} <= set(found):
        hint = " This looks like a keras-layout MNIST file: use it with dataset.name='mnist'."
    return DataUnavailableError(
        f"{path} has keys {sorted(found)}, but dataset.name={dataset!r} expects keys {list(expected)} "
        f"({_describe_format(dataset)}).{hint} Fix {LOCAL_PATH_BINDING} (or dataset.name)."
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
                f"(num_images >= 1; keras layout). Fix {LOCAL_PATH_BINDING}."
            )
        if array.dtype != np.uint8:
            raise DataUnavailableError(
                f"{path}: {key} has dtype {array.dtype}, expected uint8 intensities in [0, 255] (keras layout). "
                f"Convert it with np.round(x * 255).astype(np.uint8) if it holds [0, 1] floats, or fix "
                f"{LOCAL_PATH_BINDING}."
            )
        images.append(array[..., None])
    return images[0], images[1]


def _read_keras_mnist_labels(path: str, num_train: int, num_test: int):
    """`y_train`, `y_test` as int64 class labels when the file has them with one label per image, else (None, None)."""
    arrays = _open_npz(path, "mnist")
    y_train, y_test = arrays.get("y_train"), arrays.get("y_test")
    if y_train is None or y_test is None or len(y_train) != num_train or len(y_test) != num_test:
        return None, None
    return np.asarray(y_train, np.int64).reshape(-1), np.asarray(y_test, np.int64).reshape(-1)


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
                f"{_PACKED_WIDTH}] ({_describe_format('binarized_mnist')}). Fix {LOCAL_PATH_BINDING}."
            )
        bits = np.unpackbits(packed, axis=1)[:, :_NUM_PIXELS]
        splits.append(bits.reshape(-1, IMAGE_SIZE, IMAGE_SIZE, 1).astype(np.float32))
    return splits[0], splits[1], splits[2]


def _load_tfds(tfds_name: str, splits: Sequence[str], data_dir, download: bool):
    """Loads the `image` feature of each split as uint8 `[num_images, 28, 28, 1]` numpy arrays."""
    if tfds_name == "mnist":
        local_hint = (
            f"--gin_bindings=\"{LOCAL_PATH_BINDING}='/path/to/mnist.npz'\" (keras layout: x_train, y_train, "
            "x_test, y_test)"
        )
    else:
        local_hint = (
            f"--gin_bindings=\"{LOCAL_PATH_BINDING}='/path/to/binarized_mnist.npz'\" (bit-packed: keys "
            "train, valid, test, uint8 [num_images, 98] = np.packbits of the 784 row-major 0/1 pixels)"
        )

    def unavailable(error: BaseException) -> DataUnavailableError:
        return DataUnavailableError(
            f"Could not load tfds dataset {tfds_name!r} (data_dir={data_dir!r}, download={download}): "
            f"{type(error).__name__}: {first_line(error)}. This machine may be offline. Point the recipe at a "
            f"local copy instead: {local_hint}, or prepare the tfds data on a connected machine and set "
            f"{DATA_DIR_BINDING}."
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
