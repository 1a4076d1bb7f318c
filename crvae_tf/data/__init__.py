"""Datasets and input pipelines (gin-free).

    splits        ImageSplits (images, optional labels, ground-truth factors, file names), DataUnavailableError
    sources       load_image_splits(name, ...): the one entry point, dispatching to a source module
    mnist         LeCun MNIST (dynamic binarization) and statically binarized MNIST
    sprites       the embedded procedural sprites with their factors of variation
    celeba        CelebA (local folder or tfds), face crop
    birds         the Birds composite (CUB, NABirds, Birdsnap), ROI crops
    image_files   decoding, crop geometry, listings and fingerprints of RGB sources
    image_cache   the validated uint8 cache of the RGB datasets
    pipeline      make_dataset: deterministic, resumable tf.data epochs, binarization, flips
    masks         completion masks of the face crop: right half, eyes, mouth, landmark boxes, mask images

The names below are the package's public API (`from crvae_tf import data; data.make_dataset(...)`).
"""

from crvae_tf.data.pipeline import binarize
from crvae_tf.data.pipeline import make_dataset
from crvae_tf.data.pipeline import random_flip_left_right
from crvae_tf.data.pipeline import steps_per_epoch
from crvae_tf.data.sources import load_image_splits
from crvae_tf.data.splits import BINARIZATIONS
from crvae_tf.data.splits import DATASET_NAMES
from crvae_tf.data.splits import RGB_DATASET_NAMES
from crvae_tf.data.splits import SPLIT_NAMES
from crvae_tf.data.splits import DataUnavailableError
from crvae_tf.data.splits import ImageSplits
from crvae_tf.data.sprites import SPRITE_SHAPES
from crvae_tf.data.sprites import generate_sprites
from crvae_tf.data.sprites import render_sprites

__all__ = [
    "BINARIZATIONS",
    "DATASET_NAMES",
    "RGB_DATASET_NAMES",
    "SPLIT_NAMES",
    "SPRITE_SHAPES",
    "DataUnavailableError",
    "ImageSplits",
    "binarize",
    "generate_sprites",
    "render_sprites",
    "load_image_splits",
    "make_dataset",
    "random_flip_left_right",
    "steps_per_epoch",
]
