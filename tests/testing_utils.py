"""Shared helpers for the tests: a gin-clearing TestCase, tiny model bindings and fake data files."""

import contextlib
import io
import os

from absl import flags
import gin
import keras
import numpy as np
import tensorflow as tf

from crvae_tf.architectures import blocks
from crvae_tf.architectures import heads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO, "gin")


# The adversarial family on tiny hand-made networks (tiny_adversarial_parts): 16x16 RGB images.
TINY_RGB_SHAPE = (16, 16, 3)


def tiny_adversarial_parts(kind="channel_recurrent", with_q=True, seed=0):
    """Hand-made parts of a 16x16 RGB VAE-GAN (encoder, head, decoder, discriminator trunk and head, Q head or None):
    a crVAE head (T = 2, latent 4x4x4) or an FC head (16), a few layers each, seeded."""
    keras.utils.set_random_seed(seed)
    encoder = keras.Sequential(
        [
            keras.Input(TINY_RGB_SHAPE),
            keras.layers.Conv2D(8, 3, strides=4, padding="same"),
            blocks.BatchNorm(momentum=0.1, epsilon=1e-6),
            keras.layers.LeakyReLU(0.1),
        ],
        name="encoder",
    )
    if kind == "channel_recurrent":
        head = heads.ChannelRecurrentHead(
            (4, 4, 8),
            latent_channels=4,
            num_time_steps=2,
            hidden_units=8,
            loc_path="conv",
            inference_batchnorm=True,
            lstm_jit_compile=False,  # as tiny_head_bindings
            name="latent_head",
        )
    else:
        head = heads.FCHead((4, 4, 8), latent_dim=16, name="latent_head")
    decoder = keras.Sequential(
        [keras.Input((4, 4, 8)), keras.layers.Conv2DTranspose(3, 4, strides=4), keras.layers.Activation("tanh")],
        name="decoder",
    )
    trunk = keras.Sequential(
        [keras.Input(TINY_RGB_SHAPE), keras.layers.Conv2D(4, 3, strides=4, padding="same"), keras.layers.ReLU()],
        name="discriminator_trunk",
    )
    disc = keras.Sequential(
        [keras.Input((4, 4, 4)), keras.layers.Flatten(), keras.layers.Dense(1)], name="discriminator"
    )
    q = None
    if with_q:
        q = keras.Sequential(
            [keras.Input((4, 4, 4)), keras.layers.Flatten(), keras.layers.Dense(head.latent_dim)], name="q_head"
        )
    return encoder, head, decoder, trunk, disc, q


def run_main(main, argv) -> str:
    """The stdout of a binary's `main` run in-process, its absl flags parsed from `argv` (argv[0]: the program name);
    the flags are reset before and after."""
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(list(argv))
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            main(list(argv[:1]))
        return output.getvalue()
    finally:
        flags.FLAGS.unparse_flags()


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


# The adversarial recipes' discriminator, shrunk (on top of TINY_BINDINGS and tiny_head_bindings).
TINY_ADVERSARIAL_BINDINGS = [
    "discriminator.widths = [4, 8, 8, 8]",
    "discriminator.units = 16",
    "discriminator.num_kernels = 6",
    "discriminator.kernel_dim = 3",
]


def tiny_head_bindings(kind):
    if kind == "fc":
        return ["latent_head.latent_dim = 16"]
    bindings = ["latent_head.latent_channels = 8"]
    if kind == "channel_recurrent":
        # The plain graph: an XLA compile of the LSTMs costs seconds per traced step, more than a tiny run. The
        # default ('auto': XLA in float32 training) has its own tests (layers_test, execution_test, golden_test).
        bindings += ["latent_head.hidden_units = 16", "latent_head.lstm_jit_compile = False"]
    return bindings


def write_fake_mnist(path, num_train=300, num_test=60, seed=0):
    """A keras-layout mnist.npz of digit-like blobs: x_train [N, 28, 28] uint8, y_train, x_test, y_test."""
    rng = np.random.default_rng(seed)

    def images(n):
        yy, xx = np.mgrid[:28, :28]
        cy, cx = rng.uniform(9, 19, (2, n, 1, 1))
        radius = rng.uniform(4, 8, (n, 1, 1))
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        return np.clip(blob * 255 + rng.integers(0, 3, (n, 28, 28)), 0, 255).astype(np.uint8)

    np.savez(
        path,
        x_train=images(num_train),
        y_train=rng.integers(0, 10, num_train).astype(np.uint8),
        x_test=images(num_test),
        y_test=rng.integers(0, 10, num_test).astype(np.uint8),
    )
    return path


def write_fake_binarized_mnist(path, num_train=30, num_valid=10, num_test=21, seed=0, flip_pixel=None):
    """A bit-packed binarized_mnist.npz (keys train, valid, test: uint8 [N, 98] = np.packbits of the 784
    row-major 0/1 pixels, the layout of the Larochelle file) of thresholded blobs.

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


# ---------------------------------------------------------------- fake RGB image folders (CelebA, CUB-style)

# The marker of the fake faces: a square in the face window at these fractions of the window
# (top, left, height, width); its centre lands at ((0.25 + 0.05) R, (0.6 + 0.05) R) of the R x R output.
FACE_MARK = (0.25, 0.6, 0.1, 0.1)


def write_image(path, pixels, fmt="jpeg"):
    pixels = tf.constant(pixels, tf.uint8)
    if fmt == "png":
        payload = tf.io.encode_png(pixels)
    else:
        payload = tf.io.encode_jpeg(pixels, quality=100, chroma_downsampling=False)
    with open(path, "wb") as f:
        f.write(payload.numpy())


def fake_face(height, width, tag):
    """uint8 [height, width, 3]: green = 255 inside the scaled face window (+1 px), 0 outside; a red marker at
    `FACE_MARK` of the window; red also carries a horizontal ramp (no image is blank); blue = `tag` (identity)."""
    scale_y, scale_x = height / 218.0, width / 178.0
    top, left, size = 40 * scale_y, 15 * scale_x, (148 * scale_y, 148 * scale_x)
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(0, 60, width, dtype=np.uint8)[None, :]
    rows = slice(int(np.floor(top)) - 1, int(np.ceil(top + size[0])) + 1)
    cols = slice(int(np.floor(left)) - 1, int(np.ceil(left + size[1])) + 1)
    image[rows, cols, 1] = 255
    mark_rows = slice(
        int(round(top + FACE_MARK[0] * size[0])), int(round(top + (FACE_MARK[0] + FACE_MARK[2]) * size[0]))
    )
    mark_cols = slice(
        int(round(left + FACE_MARK[1] * size[1])), int(round(left + (FACE_MARK[1] + FACE_MARK[3]) * size[1]))
    )
    image[mark_rows, mark_cols, 0] = 255
    image[..., 2] = tag
    return image


def write_faces(folder, height, width, ids, fmt="jpeg"):
    os.makedirs(folder, exist_ok=True)
    for image_id in ids:
        ext = "png" if fmt == "png" else "jpg"
        write_image(os.path.join(folder, f"{image_id:06d}.{ext}"), fake_face(height, width, image_id % 250), fmt)
    return folder


def write_cub_style(root, entries, ids_are_uuids=False):
    """entries: (relative path, image or None (listed but absent), (x, y, w, h), is_train)."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    with (
        open(os.path.join(root, "images.txt"), "w") as images,
        open(os.path.join(root, "bounding_boxes.txt"), "w") as boxes,
        open(os.path.join(root, "train_test_split.txt"), "w") as split,
    ):
        for number, (relative, pixels, box, is_train) in enumerate(entries, 1):
            image_id = f"{number:08x}-0000-4000-8000-{number:012x}" if ids_are_uuids else str(number)
            images.write(f"{image_id} {relative}\n")
            boxes.write(f"{image_id} {' '.join(str(v) for v in box)}\n")
            split.write(f"{image_id} {int(is_train)}\n")
            if pixels is not None:
                os.makedirs(os.path.dirname(os.path.join(root, "images", relative)), exist_ok=True)
                write_image(os.path.join(root, "images", relative), pixels, "png")
    return root


def fake_bird(height, width, box, tag):
    """uint8 [height, width, 3]: green = 255 inside the (x, y, w, h) box and a vertical ramp in [0, 100] outside,
    red a horizontal ramp, blue = tag."""
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = np.linspace(0, 90, width, dtype=np.uint8)[None, :]
    image[..., 1] = np.linspace(0, 100, height, dtype=np.uint8)[:, None]
    x, y, w, h = (int(v) for v in box)
    image[y : y + h, x : x + w, 1] = 255
    image[..., 2] = tag
    return image


def write_fake_cub(root, num_images, seed=0):
    """A CUB_200_2011-style folder of `num_images` synthetic birds (boxes in bounding_boxes.txt), 3 in 4 for
    training; returns `root`."""
    rng = np.random.default_rng(seed)
    entries = []
    for index in range(num_images):
        height, width = rng.integers(60, 100, 2)
        w, h = rng.integers(20, int(min(height, width)) - 10, 2)
        x, y = rng.integers(0, width - w), rng.integers(0, height - h)
        box = (int(x), int(y), int(w), int(h))
        entries.append(
            (
                f"{index % 3:03d}.Bird/bird_{index:04d}.png",
                fake_bird(int(height), int(width), box, index),
                box,
                index % 4 != 0,
            )
        )
    return write_cub_style(root, entries)
