"""Randomness and batch statistics when a `tf.distribute` strategy splits the global batch over replicas. Gin-free.

The training loop gives replica r (of R, `replica_id_in_sync_group`) rows [r*b, (r+1)*b) of every global batch of
B = R*b images. The helpers here keep what a step computes a function of the global batch, not of R:

- Noise (`normal`, `uniform`): every replica draws the noise of the *global* batch from the same stream (the model's or
  the layer's `keras.random.SeedGenerator`, whose state advances identically on every replica) and keeps its own
  rows. The streams thus differ across replicas (rows r*b..(r+1)*b) and are reproducible from the seed and the
  replica id; example i of a global batch gets the same noise for any R that divides B, so a run on R replicas draws
  exactly the noise of a one-device run. The cost is R times the noise of one replica's batch (latent-sized noise
  and dropout masks: small beside the networks).
- Batch statistics (`all_reduce_sum`, `all_gather`): cross-replica sums and concatenations in a replica context.

Outside a strategy and in a strategy's cross-replica context (evaluation, image grids) every helper does exactly what
the single-device code did before (the same ops, so one-device runs stay bit-identical).
"""

import keras
import tensorflow as tf


def replica_context():
    """The replica context of a step run by a strategy (`strategy.run`, any number of replicas: `tf.cond` around
    `optimizer.apply` fails there even with one), or None (no strategy, or its cross-replica context)."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    return tf.distribute.get_replica_context()


def _draw_rows(draw, shape, seed_generator, dtype, batch_axis):
    context = replica_context()
    if context is None:
        return draw(shape, seed=seed_generator, dtype=dtype)
    shape = tf.cast(tf.convert_to_tensor(shape), tf.int32)
    rows = shape[batch_axis]
    global_shape = tf.tensor_scatter_nd_update(shape, [[batch_axis]], [rows * context.num_replicas_in_sync])
    noise = draw(global_shape, seed=seed_generator, dtype=dtype)
    start = tf.cast(context.replica_id_in_sync_group, tf.int32) * rows
    return tf.gather(noise, tf.range(start, start + rows), axis=batch_axis)


def normal(shape, seed_generator, dtype="float32", batch_axis: int = 0):
    """N(0, 1) noise of `shape` (`[..., b (batch_axis), ...]`) for this replica: `keras.random.normal` of the global
    shape (b*R rows on `batch_axis`) drawn from `seed_generator`, this replica's b rows."""
    return _draw_rows(keras.random.normal, shape, seed_generator, dtype, batch_axis)


def uniform(shape, seed_generator, dtype="float32", batch_axis: int = 0):
    """U[0, 1) noise of `shape` for this replica, as `normal`."""
    return _draw_rows(keras.random.uniform, shape, seed_generator, dtype, batch_axis)


def all_reduce_sum(values):
    """Cross-replica sums of a tensor (or a nest of tensors) in a strategy's step; the values themselves
    otherwise."""
    context = replica_context()
    return values if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def all_gather(value, axis: int = 0):
    """The concatenation over replicas (in replica order) of `value` along `axis` in a strategy's step (its
    gradient flows back to every replica's rows); `value` itself otherwise."""
    context = replica_context()
    return value if context is None else context.all_gather(value, axis=axis)


def synchronize_batch_statistics(model) -> int:
    """Sets `synchronized = True` on every layer of `model` that has the attribute: Keras `BatchNormalization` (and
    `blocks.BatchNorm`: moments over the global batch) and `MinibatchDiscrimination` (comparisons with the global
    batch). Changes nothing outside a strategy's step. Returns the number of layers set."""
    layers = [layer for layer in model._flatten_layers(include_self=False) if hasattr(layer, "synchronized")]
    for layer in layers:
        layer.synchronized = True
    return len(layers)
