"""Subprocess entry of distribute_test (TensorFlow's devices must be set before its first op, hence a process).

    python tests/distributed_run.py parity SPEC.json   # one-device vs MirroredStrategy steps on 2 logical CPUs
    python tests/distributed_run.py train SPEC.json    # crvae_tf.training.loop.train (a MultiWorker worker)

parity SPEC: {"replica_checks": path.npz, "cases": [{"gin_files": [...], "bindings": [...], "steps": n,
"out": path.npz}, ...]}. For each case, two copies of the configured model (same seed) train n steps on the same
global batches of the training pipeline: one with `model.train_step` on one device (eagerly), one under
`MirroredStrategy(['/cpu:0', '/cpu:1'])` with the loop's replicated step and synchronized batch statistics.
`out` gets, per step, both runs' logs (`logs_one`, `logs_two`: JSON lists), the initial weights (`init_<i>`) and
the final weights of both (`one_<i>`, `two_<i>`; names in `names`). `replica_checks` gets each replica's noise rows
and minibatch-discrimination outputs, and their one-device references.

train SPEC: {"gin_files": [...], "bindings": [...], "model_dir": ..., "out": path.npz}: trains, then writes the final
step and weights to `out`.
"""

import contextlib
import json
import sys

import numpy as np
import tensorflow as tf


def _parity(spec):
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import gin
    import keras

    from crvae_tf import builders
    from crvae_tf import data
    from crvae_tf import runs
    from crvae_tf.training import distribution

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    _replica_checks(strategy, spec["replica_checks"])
    for case in spec["cases"]:
        gin.clear_config()
        runs.parse_gin(case["gin_files"], case["bindings"], finalize=False)
        settings = builders.train_settings()
        seed, batch_size = settings.seed, settings.batch_size
        splits = builders.build_dataset(seed=seed)
        steps_per_epoch = data.steps_per_epoch(len(splits.train), batch_size)
        models, steps = [], []
        for scope in (None, strategy):
            keras.utils.set_random_seed(seed)
            with scope.scope() if scope else contextlib.nullcontext():
                model = builders.build_model(image_shape=splits.image_shape, seed=seed)
                optimizers, clip_values = builders.build_optimizers(model, steps_per_epoch)
                model.compile(optimizers=optimizers, clip_values=clip_values)
            if scope is None:  # eager: two steps of a tiny model cost less than tracing them
                steps.append(model.train_step)
            else:
                distribution.synchronize_batch_statistics(model)
                steps.append(distribution.replicated_step(strategy, model.train_step, batch_size // 2, model.metrics))
            models.append(model)
        initial = [v.numpy() for v in models[0].weights]
        batches = data.make_dataset(
            splits.train,
            batch_size=batch_size,
            binarization=splits.binarization,
            seed=seed,
            training=True,
            flip=splits.flip,
        )
        logs = ([], [])
        for _, batch in zip(range(case["steps"]), batches):
            for index, (model, step) in enumerate(zip(models, steps)):
                model.reset_metrics()
                logs[index].append({k: float(v) for k, v in step(batch).items()})
        arrays = {f"one_{i}": v.numpy() for i, v in enumerate(models[0].weights)}
        arrays.update({f"init_{i}": v for i, v in enumerate(initial)})
        arrays.update({f"two_{i}": v.numpy() for i, v in enumerate(models[1].weights)})
        np.savez(
            case["out"],
            logs_one=json.dumps(logs[0]),
            logs_two=json.dumps(logs[1]),
            names=np.array([v.path for v in models[0].weights]),
            names_two=np.array([v.path for v in models[1].weights]),
            **arrays,
        )


def _replica_checks(strategy, out):
    """Noise rows and minibatch discrimination of each replica, against one-device draws (written to `out`)."""
    import keras

    from crvae_tf.architectures import discriminator_layers
    from crvae_tf.architectures import replicas

    features = tf.constant(np.random.default_rng(0).standard_normal((8, 6)), tf.float32)
    layer = discriminator_layers.MinibatchDiscrimination(num_kernels=3, kernel_dim=2)
    layer(features)  # built on one device; the replicas read the same (non-distributed) weights
    with strategy.scope():  # a mirrored state: each replica advances its own copy, in step with the others
        generator = keras.random.SeedGenerator(7)

    def replica_fn(synchronized):
        def fn():
            context = tf.distribute.get_replica_context()
            rows = features[context.replica_id_in_sync_group * 4 :][:4]
            layer.synchronized = synchronized
            return layer(rows), replicas.normal([4, 3], generator)

        return fn

    arrays = {}
    for synchronized in (False, True):
        outputs, noise = strategy.run(tf.function(replica_fn(synchronized)))
        arrays[f"mbd_{synchronized}"] = np.concatenate(
            [t.numpy() for t in strategy.experimental_local_results(outputs)]
        )
        arrays[f"noise_{synchronized}"] = np.concatenate(
            [t.numpy() for t in strategy.experimental_local_results(noise)]
        )
    layer.synchronized = False
    arrays["mbd_global"] = layer(features).numpy()
    arrays["mbd_halves"] = np.concatenate([layer(features[:4]).numpy(), layer(features[4:]).numpy()])
    reference = keras.random.SeedGenerator(7)
    arrays["noise_global"] = np.concatenate([keras.random.normal([8, 3], seed=reference).numpy() for _ in range(2)])
    np.savez(out, **arrays)


def _train(spec):
    import gin

    from crvae_tf import runs
    from crvae_tf.architectures import blocks
    from crvae_tf.training import loop

    runs.parse_gin(spec["gin_files"], spec["bindings"], finalize=False)
    del gin
    result = loop.train(spec["model_dir"])
    head = result["model"].latent_head
    lstms = [getattr(head, name, None) for name in ("inference_lstm", "generation_lstm")]
    np.savez(
        spec["out"],
        step=result["step"],
        initial_step=result["initial_step"],
        # The LSTMs whose training passes ran the XLA-compiled stack in this process.
        xla_lstms=sum(lstm is not None and lstm in blocks._COMPILED_STACKS for lstm in lstms),
        names=np.array([v.path for v in result["model"].weights]),
        **{f"w{i}": v.numpy() for i, v in enumerate(result["model"].weights)},
    )


if __name__ == "__main__":
    import resource
    import time

    mode, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        {"parity": _parity, "train": _train}[mode](json.load(f))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{mode}: {usage.ru_utime + usage.ru_stime:.1f} CPU seconds, {time.process_time():.1f} process time")
