"""The tf.data input pipeline: one epoch at a time, deterministic and resumable.

Training order is a deterministic function of `(seed, epoch)`, and the dynamic-binarization noise and the
horizontal flips of `(seed, epoch, batch index)`, so a run resumed with `skip_batches` continues mid-epoch
exactly where it stopped. uint8 images are divided by 255 per batch, never as a whole array.
"""

from typing import Optional

import numpy as np
import tensorflow as tf

from crvae_tf.data.splits import check_binarization
from crvae_tf.data.splits import check_seed

# Tags that separate the stateless-binarization key streams of training and evaluation.
_TRAIN_NOISE_TAG = 1
_EVAL_NOISE_TAG = 2
_FLIP_TAG = 3  # The horizontal-flip key stream of training batches.


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


PREFETCH_BATCHES = 2


def finish(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The last stage of every pipeline of the package: `PREFETCH_BATCHES` batches prefetched, tf.data's
    autotuning off (the maps' `num_parallel_calls=tf.data.AUTOTUNE` then stays at the number of cores, at most 16).

    Why autotuning is off: its optimisation thread sleeps for growing intervals, and destroying the iterator waits
    for it to wake. Every epoch, validation pass and evaluation ends with an iterator destroyed; measured on the
    2-core CPU (TF 2.21, float32): after an evaluation iterator had lived 27 s, its destruction took 12.6 and 14.6 s
    in 2 of 3 runs (0.16 s in the third), 7.7 s in 1 of 2 after 136 s (a training iterator); the NLL benchmark
    (`python -m crvae_tf.bench --nll`, one iterator) ran at 390 importance samples/s in 3 of 4 runs instead of 480,
    the process idle for the difference. With autotuning off: 0.16 s in 3 of 3, and 478-487 samples/s. Our
    pipelines gather batches from memory (or memory-mapped files): a fixed parallelism and two batches ahead keep
    the steps fed, which autotuning has nothing to improve on.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(PREFETCH_BATCHES).with_options(options)


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
    shard: Optional[tuple] = None,
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
      shard: training only: (index w, count W) for multi-worker training: each batch is the w-th of W equal row
        blocks of the global batch of `batch_size` (which W must divide): rows [w*B/W, (w+1)*B/W) of the same
        (seed, epoch) permutation, with the binarization noise and flips those rows get in the global batch.
        Only the shard's images are read. None (or W = 1): the whole batch.

    An `images` object with its own `make_dataset` method (`data.stl10.TrainingPool`: STL-10's unlabeled + labeled
    training pool) gets these arguments and builds its own pipeline.

    Returns:
      A prefetched `tf.data.Dataset` (`finish`) of float32 `[B, H, W, C]` batches in [0, 1] (static batch dimension B
      when training; evaluation batches have an unknown batch dimension, the last one holding N mod B).
    """
    check_binarization(binarization)
    _check_batch_size(batch_size)
    check_seed(seed, "seed")
    check_seed(epoch, "epoch")
    if hasattr(images, "make_dataset"):  # an image source with its own pipeline (`data.stl10.TrainingPool`)
        return images.make_dataset(
            batch_size=batch_size,
            binarization=binarization,
            seed=seed,
            training=training,
            epoch=epoch,
            skip_batches=skip_batches,
            flip=flip,
            shard=shard,
        )
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

        if shard is not None and int(shard[1]) > 1:
            make_batch = _sharded_batches(
                shard,
                batch_size,
                images.shape[1:],
                gather_batch if passthrough else None,
                pixels,
                dynamic,
                flip,
                epoch_key,
                flip_key,
            )

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
    return finish(dataset)


def _sharded_batches(shard, batch_size, image_shape, gather_batch, pixels, dynamic, flip, epoch_key, flip_key):
    """`make_batch` of `make_dataset` for rows [w*B/W, (w+1)*B/W) of each global batch: the noise is drawn for the
    whole batch (the same stateless draws as one worker's) and sliced, the images gathered for the rows only."""
    index_w, count = int(shard[0]), int(shard[1])
    if batch_size % count or not 0 <= index_w < count:
        raise ValueError(
            f"shard={tuple(shard)}: the global batch of {batch_size} must split into {count} equal shards and the "
            f"index must be in [0, {count}); set train.batch_size to a multiple of the number of workers."
        )
    rows = batch_size // count
    start, stop = index_w * rows, (index_w + 1) * rows

    def make_batch(index, indices):
        indices = indices[start:stop]
        batch = gather_batch(indices) if gather_batch is not None else tf.gather(pixels, indices)
        if dynamic:
            seed = tf.random.experimental.stateless_fold_in(epoch_key, index)
            noise = tf.random.stateless_uniform([batch_size, *image_shape], seed=seed, dtype=tf.float32)[start:stop]
            batch = tf.cast(noise < tf.cast(batch, tf.float32), tf.float32)
        if flip:
            seed = tf.random.experimental.stateless_fold_in(flip_key, index)
            flips = tf.random.stateless_uniform([batch_size], seed=seed, dtype=tf.float32)[start:stop] < 0.5
            batch = tf.where(flips[:, None, None, None], tf.reverse(batch, axis=[2]), batch)
        return batch

    return make_batch


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
