"""Training on more than one device: the `tf.distribute` strategy of `train.distribution`, who writes, and the
per-replica step. Gin-free.

The loop keeps its one-device path (one `tf.function(model.train_step)` call per step) for 'default'. Under any other
strategy, each step is one `tf.function` that runs `strategy.run` over the replicas:

- `train.batch_size` is the global batch B. With W workers of L local replicas each (R = W*L replicas), worker w
  reads rows [w*B/W, (w+1)*B/W) of every global batch of the (seed, epoch) permutation (`data.make_dataset(...,
  shard=(w, W))`), and its local replica j takes rows [j*b, (j+1)*b) of those (b = B/R). Replica ids are worker-major
  (`replica_id_in_sync_group` = w*L + j), so replica r holds rows [r*b, (r+1)*b) of the global batch.
- The models divide each replica's batch-mean loss by R and Keras' optimizers sum the replicas' gradients: the
  gradient of the global batch mean, as on one device.
- Noise, batch statistics and the discriminator's skip decision are functions of the global batch
  (`architectures.replicas`, `models.base.LatentVariableModel._apply`).
- Only the chief (worker 0) writes: checkpoints, TensorBoard, PNG grids, the operative config and run files; it also
  runs validation and the image grids, outside the replicated step. The model directory must be on a file system
  every worker reads (a resumed worker restores the chief's latest checkpoint).
"""

import json
import os

import tensorflow as tf

from crvae_tf.architectures import replicas

DISTRIBUTIONS = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(distribution: str = "default", devices=None):
    """The `tf.distribute.Strategy` of `train.distribution`.

    Args:
      distribution: 'default' (the one-device default strategy), 'mirrored' (`MirroredStrategy` over `devices`, or
        every local GPU, or the CPU when there is none), 'multi_worker' (`MultiWorkerMirroredStrategy`: the cluster
        and this worker's task from the `TF_CONFIG` environment variable; ring all-reduce on CPU-only workers,
        NCCL chosen by TF on GPUs) or 'tpu' (`TPUStrategy` on the TPU of `TPUClusterResolver()`; not tested here).
      devices: 'mirrored' only: a list of device names ('/gpu:0', '/gpu:1'), None for all.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"train.distribution={distribution!r} is not one of {list(DISTRIBUTIONS)}.")
    if devices is not None and distribution != "mirrored":
        raise ValueError(f"train.devices={devices!r} is only read by train.distribution='mirrored'.")
    if distribution == "default":
        return tf.distribute.get_strategy()
    if distribution == "mirrored":
        return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)
    if distribution == "multi_worker":
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        if not config.get("cluster") or not config.get("task"):
            raise ValueError(
                "train.distribution='multi_worker' reads the cluster from TF_CONFIG, which is unset or incomplete; set "
                'TF_CONFIG=\'{"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", '
                '"index": i}}\' on worker i (README.md, "More than one device").'
            )
        gpus = tf.config.list_physical_devices("GPU")
        implementation = (
            tf.distribute.experimental.CommunicationImplementation.AUTO
            if gpus
            else tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation)
        )
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def worker_index_and_count(strategy):
    """(w, W): this worker's index and the number of workers (a chief, when the cluster has one, is worker 0)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 0, 1
    cluster = resolver.cluster_spec().as_dict()
    has_chief = "chief" in cluster
    count = len(cluster.get("worker", [])) + (1 if has_chief else 0)
    if resolver.task_type == "chief":
        return 0, count
    return int(resolver.task_id) + (1 if has_chief else 0), count


def is_chief(strategy) -> bool:
    """True for the worker that writes (worker 0; always True on one machine)."""
    return worker_index_and_count(strategy)[0] == 0


def num_local_replicas(strategy) -> int:
    """L: the replicas this worker runs."""
    return len(strategy.extended.worker_devices)


def check_batch(strategy, batch_size: int, per_replica_multiple: int = 1) -> int:
    """b = B / R, the per-replica batch; raises a ValueError naming the fix when R*multiple does not divide B."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas or (batch_size // replicas) % per_replica_multiple:
        need = f"a multiple of {replicas * per_replica_multiple}"
        why = (
            f" ({replicas} replicas x {per_replica_multiple}: the discriminator batch takes every 4th image)"
            if (per_replica_multiple > 1)
            else f" ({replicas} replicas)"
        )
        raise ValueError(f"train.batch_size={batch_size} must be {need}{why} under this strategy.")
    return batch_size // replicas


def replicated_step(strategy, step_fn, per_replica_batch: int, metrics=()):
    """A `tf.function` `worker batch [L*b, ...] -> logs` running `step_fn` on each local replica's b rows.

    Inside a replica, a Keras metric's `result()` reads that replica's copy before the cross-replica sum; the logs
    named like one of `metrics` are therefore read after the step, in cross-replica context (the running means of
    the global batches). Other logs are the first local replica's (the models make them identical on every replica,
    e.g. the all-reduced discriminator accuracy).
    """
    local = num_local_replicas(strategy)

    def replica_fn(batch):
        context = tf.distribute.get_replica_context()
        start = (tf.cast(context.replica_id_in_sync_group, tf.int32) % local) * per_replica_batch
        return step_fn(batch[start : start + per_replica_batch])

    @tf.function(reduce_retracing=True, autograph=False)
    def step(batch):
        logs = strategy.run(replica_fn, args=(batch,))
        results = {metric.name: metric.result() for metric in metrics}
        return {
            key: results[key] if key in results else strategy.experimental_local_results(value)[0]
            for key, value in logs.items()
        }

    return step


def synchronize_batch_statistics(model) -> int:
    """`architectures.replicas.synchronize_batch_statistics`: BatchNorm moments and minibatch discrimination over
    the global batch (`train.synchronized_batch_statistics`)."""
    return replicas.synchronize_batch_statistics(model)
