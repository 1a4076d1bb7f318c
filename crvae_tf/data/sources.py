"""One entry point for every dataset: `load_image_splits(name, ...)` dispatches to its source module.

Image datasets and tf.data input pipelines for the channel-recurrent VAE experiments.

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
`flip=True`; `crvae_tf/data/celeba.py`, `birds.py` and `image_cache.py` document their sources, crop rules,
splits, cache and validation.

`'stl10'` (`crvae_tf/data/stl10.py`) is the semi-supervised protocol of Table 2: a training pool of unlabeled +
labeled images (labels -1 for unlabeled) with its own cropping pipeline, labeled validation and test splits.

No code path ever falls back silently to other data: if the requested data cannot be found a
`DataUnavailableError` says exactly which binding to set. tensorflow-datasets is only imported when
it is actually used (it is slow to import), and on an offline machine `tfds.load(..., download=True)`
retries the network for minutes before failing; pass `download=False` (or a `local_path`) there.
"""

import logging
import time
from typing import Optional
from typing import Tuple
from typing import Union

from crvae_tf.data import birds
from crvae_tf.data import celeba
from crvae_tf.data import stl10
from crvae_tf.data.mnist import DEFAULT_MNIST_VALIDATION_SIZE
from crvae_tf.data.mnist import load_binarized_mnist
from crvae_tf.data.mnist import load_mnist
from crvae_tf.data.splits import DATASET_NAMES
from crvae_tf.data.splits import RGB_DATASET_NAMES
from crvae_tf.data.splits import ImageSplits
from crvae_tf.data.splits import check_seed
from crvae_tf.data.sprites import load_sprites

_logger = logging.getLogger(__name__)


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
    num_sprites: Optional[Tuple[int, int, int]] = None,
    sprite_radius: Optional[float] = None,
    sprite_scale: Optional[Tuple[float, float]] = None,
    sprite_rotation: Optional[Tuple[float, float]] = None,
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
    fold: Optional[int] = None,
    labeled_batch_size: Optional[int] = None,
) -> ImageSplits:
    """Loads the train / validation / test splits of one dataset.

    Args:
      name: 'mnist', 'binarized_mnist', 'sprites', 'celeba', 'birds' or 'stl10' (see the module docstring and, for
        the RGB ones, `crvae_tf/data/celeba.py`, `birds.py`, `image_cache.py` and `stl10.py`).
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
      num_sprites: 'sprites' only: `(num_train, num_validation, num_test)` (None: (8192, 1024, 1024)).
      sprite_radius, sprite_scale, sprite_rotation: 'sprites' only: the pixel radius of a shape at scale 1,
        the `(low, high)` range of scales and of rotations in degrees (`data.generate_sprites`; None: 9,
        (0.5, 1), (0, 360), the dSprites-like set of small shapes in every orientation). The quickstart draws
        larger, less rotated shapes.
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
      fold, labeled_batch_size: 'stl10' only: the official labeled fold 0..9 (None: no fold) and the labeled images
        per training step (`crvae_tf/data/stl10.py`, which also reads local_path, manual_dir, data_dir, cache_dir,
        resolution, validation_size and flip).

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
    check_seed(seed, "seed")
    start = time.perf_counter()
    if name == "stl10":
        for key, value in dict(
            crop=crop,
            box_scale=box_scale,
            cub_path=cub_path,
            birdsnap_path=birdsnap_path,
            nabirds_path=nabirds_path,
            num_sprites=num_sprites,
            sprite_radius=sprite_radius,
            sprite_scale=sprite_scale,
            sprite_rotation=sprite_rotation,
        ).items():
            if value is not None:
                raise ValueError(f"dataset.{key}={value!r} does not apply to dataset.name='stl10'; unset it.")
        splits = stl10.load_stl10(
            local_path=local_path,
            data_dir=data_dir,
            download=download,
            manual_dir=manual_dir,
            cache_dir=cache_dir,
            fold=fold,
            resolution=resolution,
            labeled_batch_size=labeled_batch_size,
            validation_size=validation_size,
            seed=seed,
            flip=flip,
        )
        _logger.info("Loaded %r in %.2f s.", splits, time.perf_counter() - start)
        return splits
    if fold is not None or labeled_batch_size is not None:
        raise ValueError(
            f"dataset.fold and dataset.labeled_batch_size apply to dataset.name='stl10' only, not {name!r}; unset them."
        )
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
            splits = celeba.load_celeba(local_path=local_path, crop=crop, **common)
        else:
            if local_path is not None or crop is not None:
                raise ValueError(
                    f"dataset.name='birds' takes its sources from dataset.cub_path, dataset.birdsnap_path "
                    f"and dataset.nabirds_path, and crops bounding boxes (dataset.box_scale); unset "
                    f"dataset.local_path ({local_path!r}) and dataset.crop ({crop!r})."
                )
            splits = birds.load_birds(
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
        validation_size = DEFAULT_MNIST_VALIDATION_SIZE
    sprite_options = dict(
        num_sprites=num_sprites, sprite_radius=sprite_radius, sprite_scale=sprite_scale, sprite_rotation=sprite_rotation
    )
    given = sorted(key for key, value in sprite_options.items() if value is not None)
    if given and name != "sprites":
        raise ValueError(
            f"{', '.join(f'dataset.{key}' for key in given)} only apply to dataset.name='sprites', not to "
            f"dataset.name={name!r}; unset them."
        )
    if name == "sprites":
        splits = load_sprites(
            local_path,
            seed,
            (8192, 1024, 1024) if num_sprites is None else num_sprites,
            9.0 if sprite_radius is None else sprite_radius,
            (0.5, 1.0) if sprite_scale is None else sprite_scale,
            (0.0, 360.0) if sprite_rotation is None else sprite_rotation,
        )
    elif name == "mnist":
        splits = load_mnist(local_path, data_dir, download, validation_size, seed)
    else:
        splits = load_binarized_mnist(local_path, data_dir, download)
    _logger.info("Loaded %r in %.2f s.", splits, time.perf_counter() - start)
    return splits
