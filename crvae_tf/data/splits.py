"""The dataset contract: `ImageSplits` (train / validation / test images, optional labels, ground-truth
factors and source file names), the dataset and split names, `DataUnavailableError`, and the argument checks
every source shares.

Gin-free; no source imports another.
"""

import dataclasses
import logging
from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple

import numpy as np

DATASET_NAMES = ("mnist", "binarized_mnist", "sprites", "celeba", "birds", "stl10")
RGB_DATASET_NAMES = ("celeba", "birds")
# 'dynamic': re-binarized every batch; 'static': already 0/1; 'none': continuous pixels passed through
# (the RGB datasets; the adversarial models take intensities, not bits).
BINARIZATIONS = ("dynamic", "static", "none")
SPLIT_NAMES = ("train", "validation", "test")
LOCAL_PATH_BINDING = "dataset.local_path"
DATA_DIR_BINDING = "dataset.data_dir"

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
      labels: None, or split name -> int64 `[num_images]` class labels of that split (datasets with classes); -1
        marks an unlabeled image (STL-10's training pool, `data.stl10`).
      factors: None, or split name -> {factor name -> `[num_images]` array}: ground-truth factors of variation
        (the sprites: 'shape' (index into `sprites.SPRITE_SHAPES`), 'scale', 'rotation', 'x', 'y').
      generator: None, or the parameters a synthetic dataset was rendered with, so the images can be rendered
        again from their factors (the sprites: 'radius', 'scale_range', 'rotation_range';
        `evaluation.sprite_shapes` needs the radius).
      names: None, or split name -> the source file name of each image of that split, in row order (the RGB
        datasets read from files: CelebA's '000001.jpg', a bird's path relative to its source folder; tfds
        examples are named '<tfds name>/<split>[<index>]'). None for datasets without files (the MNIST family,
        the sprites) and for an RGB cache written before the cache recorded names (`image_cache`);
        `masks.landmark_masks` matches them against `list_landmarks_align_celeba.txt`.
    """

    name: str
    binarization: str
    train: np.ndarray
    validation: np.ndarray
    test: np.ndarray
    source: str
    flip: bool = False
    manifest_path: Optional[str] = None
    labels: Optional[Dict[str, np.ndarray]] = None
    factors: Optional[Dict[str, Dict[str, np.ndarray]]] = None
    generator: Optional[Dict[str, object]] = None
    names: Optional[Dict[str, Sequence[str]]] = None

    def __post_init__(self):
        check_binarization(self.binarization)
        if not isinstance(self.flip, bool):
            raise ValueError(f"flip={self.flip!r} must be a bool.")
        if self.names is not None and set(self.names) != set(SPLIT_NAMES):
            raise ValueError(f"names must name the images of every split {SPLIT_NAMES}, got {sorted(self.names)}.")
        for what, per_split in (("labels", self.labels), ("factors", self.factors), ("names", self.names)):
            for split, values in (per_split or {}).items():
                arrays = values.values() if isinstance(values, dict) else [values]
                expected = len(self.split(split))
                if any(len(a) != expected for a in arrays):
                    raise ValueError(f"{what}[{split!r}] must have one entry per image ({expected}).")

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


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def check_seed(seed, what: str) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what}={seed!r} must be a non-negative int.")


def check_binarization(binarization) -> None:
    if binarization not in BINARIZATIONS:
        raise ValueError(
            f"binarization={binarization!r} is not supported; use one of {', '.join(map(repr, BINARIZATIONS))}."
        )
