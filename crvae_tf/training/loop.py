"""The training loop: builders -> compiled model -> train steps, with checkpoints and TensorBoard. Gin-free.

`train(model_dir)` takes its settings from `builders.train_settings` (gin: `train.*`). It drives the model's own
Keras `train_step` through `tf.function` (without AutoGraph: the models' steps use explicit `tf.cond` /
`tf.while_loop` and skip its source-to-source conversion, 10% of a tiny run's start-up; a subclass whose step
branches in Python on a tensor gets TensorFlow's "using a `tf.Tensor` as a Python `bool`" error and should use
`tf.cond`), up to `train.steps_per_execution` steps per call but never past a step at which a periodic task is due
(`training.execution`), which gives exact control over resumption: the data order and binarization noise are
functions of (seed, epoch, batch index), and the checkpoint holds the weights, every optimizer's state, the step,
the epoch and the model's RNG state, so a run that is killed and restarted with the same command continues as if it
had never stopped. What it writes: `crvae_tf.runs`. The periodic parts (summaries, image grids, validation,
checkpoints) are objects in `training.triggers`; the stops on a non-finite loss or a collapsed discriminator are in
`training.monitors`.
"""

import contextlib
import os
import shutil
import signal
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from crvae_tf import builders
from crvae_tf import data
from crvae_tf import runs
from crvae_tf.training import console as console_lib
from crvae_tf.training import distribution
from crvae_tf.training import execution
from crvae_tf.training import monitors
from crvae_tf.training import triggers


def train(model_dir: str, settings=None):
    """Trains the configured model, resuming from the latest checkpoint in `model_dir`.

    The run directory is locked first (`runs.RunDirectory`: a second trainer on it raises `locking.LockedError`),
    then the config is checked against the run's own (`runs.prepare_config`: a resume may change only
    `runs.RESUME_SAFE` settings, else `runs.ConfigMismatchError`, before any file is written). SIGINT / SIGTERM
    finish the current call (at most `train.steps_per_execution` steps), write a checkpoint and raise
    `monitors.TrainingInterrupted`.

    Args:
      model_dir: output directory (see `crvae_tf.runs`); resumed when it holds a checkpoint.
      settings: a `builders.TrainSettings`; None reads them from gin (`train.*`, `builders.train_settings`).

    Returns:
      dict with the final `step`, the `initial_step` it resumed from, the last `train` and `validation` metrics
      (`validation_step`: the step of the latter), the `best` checkpoint's record (best.json) if any, the last
      `checkpoint` path, the `seconds` of this sitting, the accepted config `amendments` and the trained `model`
      (in memory).
    """
    settings = settings or builders.train_settings()
    # MultiWorkerMirroredStrategy must exist before the first TF op of the process.
    strategy = distribution.make_strategy(settings.distribution, settings.devices)
    if not distribution.is_chief(strategy):  # another worker holds the lock and checks and writes the config
        with monitors.InterruptGuard() as interrupts:
            result = _train(model_dir, settings, interrupts, strategy)
        result["amendments"] = []
        return result
    with runs.RunDirectory(model_dir), monitors.InterruptGuard() as interrupts:
        amendments = runs.prepare_config(model_dir)
        result = _train(model_dir, settings, interrupts, strategy)
    result["amendments"] = amendments
    return result


def _train(model_dir, settings, interrupts, strategy):
    start_time = time.time()
    (
        max_steps,
        batch_size,
        seed,
        jit_compile,
        log_every_steps,
        image_every_steps,
        validation_every_steps,
        num_validation_images,
        num_image_samples,
        progress_bar,
        checkpoint_every_steps,
        checkpoint_every_secs,
        keep_checkpoints,
        discriminator_collapse_steps,
    ) = settings[:14]
    distributed = settings.distribution != "default"
    if distributed and jit_compile:
        raise ValueError(
            f"train.jit_compile=True is not supported with train.distribution={settings.distribution!r} "
            "(Keras compiles no XLA under a strategy); set train.jit_compile=False."
        )
    chief = distribution.is_chief(strategy)
    worker, num_workers = distribution.worker_index_and_count(strategy)
    keras.utils.set_random_seed(seed)
    console = console_lib.Console(max_steps, progress=progress_bar and chief)

    splits = builders.build_dataset(seed=seed)
    steps_per_epoch = data.steps_per_epoch(len(splits.train), batch_size)
    with strategy.scope() if distributed else contextlib.nullcontext():
        model = builders.build_model(image_shape=splits.image_shape, seed=seed)
        if chief:
            runs.write_run_info(model_dir, model, max_steps, batch_size, steps_per_epoch)
        optimizers, clip_values = builders.build_optimizers(model, steps_per_epoch)
        model.compile(optimizers=optimizers, clip_values=clip_values, jit_compile=jit_compile)
        checkpoints = runs.restore_or_initialize(model_dir, model, optimizers, keep_checkpoints)
    manager, step_var, epoch_var = checkpoints.manager, checkpoints.step, checkpoints.epoch
    validation_every_steps = validation_every_steps or steps_per_epoch

    if chief:
        train_writer = tf.summary.create_file_writer(os.path.join(model_dir, "tb", "train"))
        validation_writer = tf.summary.create_file_writer(os.path.join(model_dir, "tb", "validation"))
        operative = runs.write_operative_config(model_dir)
        with train_writer.as_default():
            tf.summary.text("gin/operative_config", runs.config_markdown(operative), step=int(step_var.numpy()))
    else:
        train_writer = validation_writer = tf.summary.create_noop_writer()

    if distributed:
        adversarial = hasattr(model, "discriminator")
        replicas = strategy.num_replicas_in_sync
        per_replica = distribution.check_batch(strategy, batch_size, 4 if adversarial and replicas > 1 else 1)
        if settings.synchronized_batch_statistics and replicas > 1:
            synchronized = distribution.synchronize_batch_statistics(model)
            console.message(f"{replicas} replicas, {per_replica} images each; {synchronized} layers synchronized")
        train_step = distribution.replicated_step(strategy, model.train_step, per_replica, model.metrics)
        plain_step = distribution.replicated_step(
            strategy, execution.step_between_logs(model, settings.diagnostics), per_replica, model.metrics
        )
    else:
        train_step = tf.function(model.train_step, jit_compile=jit_compile, reduce_retracing=True, autograph=False)
        plain_step = tf.function(
            execution.step_between_logs(model, settings.diagnostics),
            jit_compile=jit_compile,
            reduce_retracing=True,
            autograph=False,
        )
    test_step = tf.function(model.test_step, reduce_retracing=True, autograph=False)

    # Fixed inputs for the image grids: the first validation images (fixed binarization) and a fixed z.
    fixed_images = next(
        iter(
            data.make_dataset(
                splits.validation[:num_image_samples],
                batch_size=num_image_samples,
                binarization=splits.binarization,
                seed=seed,
                training=False,
            )
        )
    )
    fixed_z = tf.constant(
        np.random.default_rng(seed).standard_normal((num_image_samples, model.latent_dim)), tf.float32
    )
    # Every validation pass, the periodic ones and the one at the end of the run, scores the same images.
    validation_images = splits.validation[:num_validation_images] if num_validation_images else splits.validation

    step = initial_step = int(step_var.numpy())
    clock = triggers.TrainingClock(runs.read_progress(model_dir).get("train_seconds", 0.0) if step else 0.0)
    resumed_from = manager.latest_checkpoint

    def on_save(saved_step):
        if chief:
            runs.write_operative_config(model_dir)
            runs.write_progress(model_dir, saved_step, clock.seconds())

    write_dir = model_dir
    if not chief:
        # Under MultiWorkerMirroredStrategy, reading or resetting a metric and saving a checkpoint are collective ops
        # that every worker must run in the same order; the other workers therefore run the chief's summaries,
        # validation and checkpoints, writing into a scratch folder deleted at the end (TF's multi-worker pattern).
        write_dir = tempfile.mkdtemp(prefix=f"crvae_tf-worker{worker}-")
        checkpoints = checkpoints._replace(
            manager=tf.train.CheckpointManager(checkpoints.checkpoint, os.path.join(write_dir, "ckpt"), max_to_keep=1),
            best_manager=tf.train.CheckpointManager(checkpoints.checkpoint, os.path.join(write_dir, "best"), 1),
        )
    if num_workers > 1:  # the workers' clocks differ: a time-based checkpoint would split their collectives
        checkpoint_every_secs = None

    log_cadence = triggers.Every(log_every_steps, max_steps)
    validation_cadence = triggers.Every(validation_every_steps, max_steps)
    summaries = triggers.TrainSummaries(
        train_writer,
        model,
        optimizers,
        builders.current_learning_rate,
        steps_per_epoch,
        batch_size,
        cadence=lambda s: log_cadence.due(s) or validation_cadence.due(s),
        start_step=step,
        clock=clock,
    )
    validation = triggers.Validation(
        write_dir,
        validation_writer,
        model,
        test_step,
        validation_images,
        splits.binarization,
        batch_size,
        seed,
        checkpoints,
        validation_cadence,
        console=console,
        should_stop=lambda: interrupts.requested,
    )
    grids = triggers.ImageGrids(
        model_dir, train_writer, model, fixed_images, fixed_z, triggers.Every(image_every_steps, max_steps)
    )
    checkpointing = triggers.Checkpointing(
        checkpoints.manager,
        triggers.Every(checkpoint_every_steps, max_steps),
        checkpoint_every_secs,
        on_save,
    )
    histograms = triggers.PosteriorHistograms(
        train_writer, model, fixed_images, triggers.Every(image_every_steps, max_steps)
    )
    periodic = [summaries, validation, grids, histograms, checkpointing]  # in this order after every step
    if model.num_time_steps > 1:
        periodic.insert(3, triggers.ProgressiveGrid(model_dir, train_writer, model, fixed_z, grids.every))
    if not chief:  # no image grids; the rest writes into write_dir
        periodic = [summaries, validation, checkpointing]
    guard = monitors.TrainingGuard(write_dir, discriminator_collapse_steps, lambda: manager.latest_checkpoint)
    # Several steps per call (`training.execution`), never past a step at which a periodic task is due. Several
    # workers run one step per call: their calls must hold the same collectives, and 'auto' follows each one's clock.
    steps_per_execution = 1 if num_workers > 1 else settings.steps_per_execution
    # The steps between logging points run without the training diagnostics ('logged_steps'): a logged step runs
    # alone, with the step that records them.
    logged_only = settings.diagnostics == "logged_steps"
    plan = execution.ExecutionPlan(
        steps_per_execution, periodic, steps_per_epoch, max_steps, recorded=summaries.due if logged_only else None
    )
    execute = execute_plain = None

    if step:
        console.message(f"Resuming from step {step} ({resumed_from})")
    elif chief:
        for trigger in periodic[2:-1]:  # the grids and histograms of the untrained model
            trigger(0)
    console.message(
        f"Training {type(model).__name__} on {len(splits.train)} images of {'x'.join(map(str, splits.image_shape))} "
        f"to step {max_steps} (batch {batch_size}, {steps_per_epoch} steps per epoch); validation on "
        f"{len(validation_images)} images every {validation_every_steps} steps; {model_dir}"
    )

    def stop_if_interrupted():
        if not interrupts.requested:
            return
        console.close()
        if step > 0 and not checkpointing.saved(step):
            checkpointing(step)
        name = signal.Signals(interrupts.signum).name
        where = f"checkpoint {manager.latest_checkpoint}" if step > 0 else "nothing to checkpoint yet"
        raise monitors.TrainingInterrupted(
            f"{name}: interrupted at step {step} ({where}); rerun the same command to resume.", step, interrupts.signum
        )

    try:
        while step < max_steps:
            stop_if_interrupted()
            epoch, skip = divmod(step, steps_per_epoch)
            dataset = data.make_dataset(
                splits.train,
                batch_size=batch_size,
                binarization=splits.binarization,
                seed=seed,
                training=True,
                epoch=epoch,
                skip_batches=skip,
                flip=splits.flip,
                **({"shard": (worker, num_workers)} if num_workers > 1 else {}),
            )
            iterator = iter(dataset)
            if execute is None:
                execute = execution.multi_step(train_step, dataset.element_spec)
                execute_plain = execution.multi_step(plain_step, dataset.element_spec)
            end_of_epoch = (epoch + 1) * steps_per_epoch
            while step < min(end_of_epoch, max_steps):
                call = execute if plan.records(step) else execute_plain
                ran, logs, seconds = execution.run_and_check(call, iterator, plan.steps(step), guard, step)
                plan.observe(ran, seconds)
                step += ran
                step_var.assign(step)
                epoch_var.assign(step // steps_per_epoch)
                console.progress(step, {k: float(v) for k, v in logs.items() if k in console_lib.PROGRESS_KEYS})
                for trigger in periodic:
                    if trigger.due(step) and not (trigger is validation and interrupts.requested):
                        trigger(step, logs)
                stop_if_interrupted()
                if step >= max_steps:
                    break
        if not checkpointing.saved(step):
            checkpointing(step)
    finally:
        console.close()
        train_writer.close()
        validation_writer.close()
        if write_dir != model_dir:
            shutil.rmtree(write_dir, ignore_errors=True)
    return {
        "step": step,
        "initial_step": initial_step,
        "train": summaries.last,
        "validation": validation.last,
        "validation_step": validation.last_step,
        "best": runs.read_best(model_dir),
        "checkpoint": manager.latest_checkpoint,
        "seconds": time.time() - start_time,
        "model": model,
    }
