"""The training loop: builders -> compiled model -> train steps, with checkpoints and TensorBoard.

`train(model_dir)` is the one gin-configurable entry point (`train.*`). It drives the model's own
Keras `train_step` through `tf.function`, step by step, which gives exact control over resumption:
the data order and binarization noise are functions of (seed, epoch, batch index), and the checkpoint
holds the weights, every optimizer's state, the step, the epoch and the model's RNG state, so a run
that is killed and restarted with the same command continues as if it had never stopped.

Output directory (the contract, also in README.md):
    model_dir/config.gin                 the full parsed config, written before training
    model_dir/operative_config.gin       the parameters actually used (rewritten at each checkpoint)
    model_dir/checkpoints/ckpt-<step>.*  TF checkpoints (+ `checkpoint` state file)
    model_dir/tb/train, tb/validation    TensorBoard events: scalars, images, the operative config text
    model_dir/images/<kind>-<step>.png   inputs / reconstructions / prior samples on a fixed batch / fixed z
    model_dir/nonfinite_batch-<step>.npy the offending batch when a loss became non-finite
    model_dir/collapse_batch-<step>.npy  the last batch when an adversarial run stopped on discriminator collapse
"""

import os

import gin
import keras
import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import builders
from crvae_tf import data
from crvae_tf import runs
from crvae_tf.training import monitors
from crvae_tf.training import triggers

PROGRESS_KEYS = (
    "loss",
    "distortion",
    "rate",
    "active_units",
    "reconstruction",
    "discriminator_accuracy",
    "discriminator_skip_rate",
)


@gin.configurable("train", denylist=["model_dir"])
def train(
    model_dir: str,
    # The loop.
    max_steps: int = gin.REQUIRED,
    batch_size: int = 128,
    seed: int = 0,
    jit_compile: bool = False,
    # Logging and evaluation.
    log_every_steps: int = 50,
    image_every_steps: int = 500,
    validation_every_steps=None,
    num_validation_images=None,
    num_image_samples: int = 64,
    progress_bar: bool = True,
    # Checkpoints.
    checkpoint_every_steps: int = 500,
    checkpoint_every_secs: float = 300.0,
    keep_checkpoints: int = 3,
    # Adversarial family.
    discriminator_collapse_steps=1000,
):
    """Trains the configured model, resuming from the latest checkpoint in `model_dir`.

    Args:
      model_dir: output directory (see the module docstring); resumed when it holds a checkpoint.
      max_steps: total optimizer steps (an MNIST epoch at batch 128 is 390 steps of the 50k training
        images after holding out 10k for validation).
      batch_size: images per step (paper: 128).
      seed: the one seed: weight init, data order, binarization noise, the model's SeedGenerator.
      jit_compile: XLA-compile the train step (slower on CPU; for GPUs).
      log_every_steps: scalar summaries cadence (means over the interval).
      image_every_steps: image grids cadence (TensorBoard + PNG).
      validation_every_steps: validation cadence; default: the end of every epoch.
      num_validation_images: cap on validation images per evaluation (default: all of them).
      num_image_samples: images per grid.
      progress_bar: show a Keras progress bar.
      checkpoint_every_steps: checkpoint cadence (a checkpoint is also written at the end).
      checkpoint_every_secs: also checkpoint when this many seconds passed since the last one, so a
        killed run loses at most this much work whatever the step cadence (None: steps only).
      keep_checkpoints: how many checkpoints to keep.
      discriminator_collapse_steps: adversarial models: stop (DiscriminatorCollapseError) when the
        discriminator's batch accuracy is exactly 0 or exactly 1 for this many consecutive steps (it
        has lost or won outright). None disables the check.

    Returns:
      dict with the final `step` and the last `train` and `validation` metrics.
    """
    if max_steps is None or int(max_steps) < 1:
        raise ValueError(f"train.max_steps must be a positive integer, got {max_steps}")
    for name, value in (
        ("batch_size", batch_size),
        ("log_every_steps", log_every_steps),
        ("image_every_steps", image_every_steps),
        ("checkpoint_every_steps", checkpoint_every_steps),
    ):
        if int(value) < 1:
            raise ValueError(f"train.{name} must be >= 1, got {value}")
    os.makedirs(model_dir, exist_ok=True)
    artifacts.atomic_write_text(os.path.join(model_dir, "config.gin"), gin.config_str())
    keras.utils.set_random_seed(seed)

    splits = builders.build_dataset(seed=seed)
    steps_per_epoch = data.steps_per_epoch(len(splits.train), batch_size)
    model = builders.build_model(image_shape=splits.image_shape, seed=seed)
    runs.write_run_info(model_dir, model, max_steps)
    optimizers, clip_values = builders.build_optimizers(model, steps_per_epoch)
    model.compile(optimizers=optimizers, clip_values=clip_values, jit_compile=jit_compile)
    checkpoints = runs.restore_or_initialize(model_dir, model, optimizers, keep_checkpoints)
    manager, step_var, epoch_var = checkpoints.manager, checkpoints.step, checkpoints.epoch
    validation_every_steps = validation_every_steps or steps_per_epoch

    train_writer = tf.summary.create_file_writer(os.path.join(model_dir, "tb", "train"))
    validation_writer = tf.summary.create_file_writer(os.path.join(model_dir, "tb", "validation"))
    operative = gin.operative_config_str()
    artifacts.atomic_write_text(os.path.join(model_dir, "operative_config.gin"), operative)
    with train_writer.as_default():
        tf.summary.text("gin/operative_config", gin.markdown(operative), step=int(step_var.numpy()))

    train_step = tf.function(model.train_step, jit_compile=jit_compile, reduce_retracing=True)
    test_step = tf.function(model.test_step, reduce_retracing=True)

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
    validation_images = splits.validation[:num_validation_images] if num_validation_images else splits.validation

    def write_operative_config():
        artifacts.atomic_write_text(os.path.join(model_dir, "operative_config.gin"), gin.operative_config_str())

    step = initial_step = int(step_var.numpy())
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
    )
    validation = triggers.Validation(
        model_dir,
        validation_writer,
        model,
        test_step,
        validation_images,
        splits.binarization,
        batch_size,
        seed,
        checkpoints,
        validation_cadence,
    )
    grids = triggers.ImageGrids(
        model_dir, train_writer, model, fixed_images, fixed_z, triggers.Every(image_every_steps, max_steps)
    )
    checkpointing = triggers.Checkpointing(
        manager, triggers.Every(checkpoint_every_steps, max_steps), checkpoint_every_secs, write_operative_config
    )
    periodic = [summaries, validation, grids, checkpointing]  # in this order after every step
    guard = monitors.TrainingGuard(model_dir, discriminator_collapse_steps, lambda: manager.latest_checkpoint)

    if step:
        print(f"Resuming from step {step} ({manager.latest_checkpoint})", flush=True)
    else:
        grids(0)
    progbar = (
        keras.utils.Progbar(max_steps, interval=5.0, unit_name="step", stateful_metrics=[m.name for m in model.metrics])
        if progress_bar
        else None
    )

    while step < max_steps:
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
        )
        for batch in dataset:
            logs = train_step(batch)
            step += 1
            step_var.assign(step)
            epoch_var.assign(step // steps_per_epoch)
            guard.check(step, logs, batch)
            if progbar is not None:
                progbar.update(step, [(k, float(v)) for k, v in logs.items() if k in PROGRESS_KEYS])
            for trigger in periodic:
                if trigger.due(step):
                    trigger(step, logs)
            if step >= max_steps:
                break
    if not checkpointing.saved(step):
        checkpointing(step)
    train_writer.close()
    validation_writer.close()
    return {
        "step": step,
        "initial_step": initial_step,
        "train": summaries.last,
        "validation": validation.last,
        "checkpoint": manager.latest_checkpoint,
    }
