"""Shared helpers for the tests: a gin-clearing TestCase, tiny model bindings and fake data files."""

import os

import gin
import numpy as np
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO, "gin")


class GinTestCase(tf.test.TestCase):
    """Clears gin before and after every test: tests never see each other's bindings."""

    def setUp(self):
        super().setUp()
        gin.clear_config()

    def tearDown(self):
        gin.clear_config()
        super().tearDown()


# Shrinks any recipe to a few-millisecond model: base width 4 (32 feature channels), latent 8x4x4,
# LSTM width 16. Divisibility by the recipes' T = 8 is kept.
TINY_BINDINGS = [
    "encoder.base_channels = 4",
    "decoder.base_channels = 4",
    "train.batch_size = 8",
    "train.log_every_steps = 1",
    "train.image_every_steps = 2",
    "train.checkpoint_every_steps = 2",
    "train.num_image_samples = 4",
    "train.progress_bar = False",
]


def tiny_head_bindings(kind):
    if kind == "fc":
        return ["latent_head.latent_dim = 16"]
    bindings = ["latent_head.latent_channels = 8"]
    if kind == "channel_recurrent":
        bindings.append("latent_head.hidden_units = 16")
    return bindings


def write_fake_mnist(path, num_train=300, num_test=60, seed=0):
    """A keras-layout mnist.npz of digit-like blobs: x_train [N, 28, 28] uint8, y_train, x_test, y_test."""
    rng = np.random.default_rng(seed)

    def images(n):
        yy, xx = np.mgrid[:28, :28]
        cy, cx = rng.uniform(9, 19, (2, n, 1, 1))
        radius = rng.uniform(4, 8, (n, 1, 1))
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2))
        return np.clip(blob * 255 + rng.integers(0, 3, (n, 28, 28)), 0, 255).astype(np.uint8)

    np.savez(path, x_train=images(num_train), y_train=rng.integers(0, 10, num_train).astype(np.uint8),
             x_test=images(num_test), y_test=rng.integers(0, 10, num_test).astype(np.uint8))
    return path


def write_fake_binarized_mnist(path, num_train=30, num_valid=10, num_test=21, seed=0, flip_pixel=None):
    """A bit-packed binarized_mnist.npz (keys train, valid, test: uint8 [N, 98] = np.packbits of the 784
    row-major 0/1 pixels, ../shared/data/MANIFEST.md) of thresholded blobs.

    `flip_pixel=(image, pixel)` flips one test pixel (a changed dataset). Returns the packed 0/1 pixels,
    uint8 `[N, 784]` per key.
    """
    scratch = write_fake_mnist(path + ".keras.npz", num_train=num_train + num_valid, num_test=num_test, seed=seed)
    with np.load(scratch) as keras_layout:
        train = (keras_layout["x_train"] > 100).astype(np.uint8).reshape(-1, 784)
        test = (keras_layout["x_test"] > 100).astype(np.uint8).reshape(-1, 784)
    os.remove(scratch)
    if flip_pixel is not None:
        test[flip_pixel] ^= 1
    bits = {"train": train[:num_train], "valid": train[num_train:], "test": test}
    np.savez(path, **{key: np.packbits(value, axis=1) for key, value in bits.items()})
    return bits
