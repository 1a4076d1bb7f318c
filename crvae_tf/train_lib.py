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

import io
import json
import logging as logging_std
import os
import time
from typing import NamedTuple

from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import builders
from crvae_tf import data as data_lib


class _GinResourceProbeFilter(logging_std.Filter):
    """Drops gin's "Path not found" log lines: gin probes `include` paths as Python packages first."""

    def filter(self, record):
        return not (record.pathname.endswith("resource_reader.py") and "Path not found" in str(record.msg))


def parse_gin(gin_files, gin_bindings, finalize=True):
    """Parses recipes, then bindings (bindings win), and optionally locks the config.

    `include` lines resolve relative to each recipe's folder (`gin/common/*.gin` hold shared settings).
    """
    for path in gin_files:
        gin.add_config_file_search_path(os.path.dirname(os.path.abspath(path)))
    probe_filter = _GinResourceProbeFilter()
    root = logging_std.getLogger()
    root.addFilter(probe_filter)
    try:
        gin.parse_config_files_and_bindings(list(gin_files), list(gin_bindings), finalize_config=finalize)
    finally:
        root.removeFilter(probe_filter)


class DiscriminatorCollapseError(RuntimeError):
    """The discriminator's batch accuracy stayed pinned at 0 or 1; the message says what to change."""


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss becomes NaN or Inf."""


CHECKPOINT_DIR = "checkpoints"
BEST_DIR = os.path.join("checkpoints", "best")


class Checkpoints(NamedTuple):
    """The checkpoint objects of a run (see `restore_or_initialize`)."""

    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    best_manager: tf.train.CheckpointManager
    step: tf.Variable
    epoch: tf.Variable
    best_score: tf.Variable


def restore_or_initialize(model_dir, model, optimizers, max_to_keep=3) -> Checkpoints:
    """Creates the checkpoint objects and restores the latest checkpoint in `model_dir`, if any.

    A checkpoint holds the model (weights, BatchNorm statistics, both noise streams), every optimizer, the
    step, the epoch, the training RNG state and the best validation score so far. `checkpoints/best/` holds
    the one checkpoint with the best validation IWAE_k (model selection on the validation split).
    """
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    best_score = tf.Variable(-np.inf, dtype=tf.float64, trainable=False, name="best_validation_score")
    layer_states = layer_rng_states(model)
    checkpoint = tf.train.Checkpoint(
        model=model,
        step=step,
        epoch=epoch,
        rng_state=model.seed_generator.state,
        best_validation_score=best_score,
        **({"layer_rng_states": layer_states} if layer_states else {}),
        **{f"{name}_optimizer": opt for name, opt in optimizers.items()},
    )
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(model_dir, CHECKPOINT_DIR), max_to_keep=max_to_keep, checkpoint_name="ckpt"
    )
    best_manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(model_dir, BEST_DIR), max_to_keep=1, checkpoint_name="ckpt"
    )
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("Restored %s (step %d)", manager.latest_checkpoint, int(step.numpy()))
    return Checkpoints(checkpoint, manager, best_manager, step, epoch, best_score)


def layer_rng_states(model) -> list:
    """State variables of the `keras.random.SeedGenerator`s owned by layers (e.g. the discriminator's dropout),
    which TF checkpoints do not reach through the model (a SeedGenerator is not trackable). The model's own
    training stream is checkpointed as `rng_state`; its evaluation stream is reset before every pass."""
    own = {id(model.seed_generator.state), id(model.eval_seed_generator.state)}
    return [v for v in model.variables if v.path.endswith("seed_generator_state") and id(v) not in own]


class Run(NamedTuple):
    """A trained run rebuilt by `load_run`."""

    model: object  # crvae_tf.models.VAE, weights restored, in evaluation use
    step: int  # the training step of the restored checkpoint
    checkpoint_path: str
    splits: data_lib.ImageSplits  # the run's training dataset (train / validation / test)
    seed: int  # train.seed of the run


def resolve_checkpoint(model_dir: str, checkpoint="latest") -> str:
    """Path prefix of a run's checkpoint: 'latest', 'best' (best validation IWAE_k), or a step number."""
    folder = os.path.join(model_dir, CHECKPOINT_DIR)
    if checkpoint in ("latest", "best"):
        path = tf.train.latest_checkpoint(os.path.join(model_dir, BEST_DIR) if checkpoint == "best" else folder)
        if path is None:
            what = (
                "no best checkpoint (written after the first validation pass)"
                if checkpoint == "best"
                else "no checkpoint"
            )
            raise FileNotFoundError(
                f"{model_dir} has {what} under {folder}. Train it with "
                f"python -m crvae_tf.train --model_dir={model_dir} ..."
            )
        return path
    try:
        number = int(checkpoint)
    except (TypeError, ValueError):
        raise ValueError(f"checkpoint={checkpoint!r} must be 'latest', 'best' or a step number") from None
    state = tf.train.get_checkpoint_state(folder)
    available = [] if state is None else list(state.all_model_checkpoint_paths)
    for path in available:
        if path.endswith(f"ckpt-{number}"):
            return path
    steps = [int(p.rsplit("-", 1)[1]) for p in available]
    raise FileNotFoundError(f"{model_dir} has no checkpoint for step {number}; kept steps: {steps}, plus 'best'.")


def checkpoint_value(text: str):
    """Parses a `--checkpoint` flag: 'latest', 'best', or a step number (a non-negative int)."""
    if text in ("latest", "best"):
        return text
    try:
        step = int(text)
    except ValueError:
        step = -1
    if step < 0:
        raise ValueError(f"{text!r} must be 'latest', 'best' or a step number (a non-negative int).")
    return step


def load_run(model_dir: str, checkpoint="latest", gin_bindings=()) -> Run:
    """Rebuilds a run's model from its saved config (+ `gin_bindings`) and restores a checkpoint.

    Parses `operative_config.gin` (every parameter the run used, defaults included), then `config.gin`
    (everything the recipe bound, e.g. `eval_dataset.*`, which training never calls), then `gin_bindings`.
    Leaves that config parsed (unlocked), so callers can build more configurables from it (for example
    `builders.build_eval_dataset`). Only the model is restored (optimizer state is not needed).
    """
    configs = [os.path.join(model_dir, name) for name in ("operative_config.gin", "config.gin")]
    if not os.path.isfile(configs[0]):
        raise FileNotFoundError(
            f"{model_dir} has no operative_config.gin: it is not a crvae_tf run directory "
            "(train one with python -m crvae_tf.train --model_dir=...)."
        )
    path = resolve_checkpoint(model_dir, checkpoint)
    gin.clear_config()
    parse_gin([c for c in configs if os.path.isfile(c)], list(gin_bindings), finalize=False)
    seed = gin.query_parameter("train.seed")
    splits = builders.build_dataset(seed=seed)
    model = builders.build_model(image_shape=splits.train.shape[1:], seed=seed)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    tf.train.Checkpoint(model=model, step=step).restore(path).expect_partial().assert_existing_objects_matched()
    return Run(model, int(step.numpy()), path, splits, seed)


PROGRESS_KEYS = (
    "loss",
    "distortion",
    "rate",
    "active_units",
    "reconstruction",
    "discriminator_accuracy",
    "discriminator_skip_rate",
)
_TAG_PREFIXES = (("kl_step_", "kl/step_"), ("discriminator_", "discriminator/"), ("generator_", "generator/"))


def summary_tag(key: str) -> str:
    """TensorBoard tag of a metric: 'kl_step_3' -> 'kl/step_3', 'discriminator_loss_real' ->
    'discriminator/loss_real', 'generator_adversarial' -> 'generator/adversarial'; others unchanged."""
    for prefix, tag in _TAG_PREFIXES:
        if key.startswith(prefix):
            return tag + key[len(prefix) :]
    return key


class CollapseMonitor:
    """Counts consecutive steps whose discriminator batch accuracy is exactly 0 or exactly 1.

    `update(accuracy)` returns True once `patience` consecutive steps were pinned (None or 0: never).
    """

    def __init__(self, patience):
        self.patience = int(patience) if patience else 0
        self.pinned = 0
        self.value = None

    def update(self, accuracy: float) -> bool:
        self.pinned = self.pinned + 1 if accuracy in (0.0, 1.0) else 0
        self.value = accuracy
        return bool(self.patience) and self.pinned >= self.patience

    def describe(self, step: int) -> str:
        verdict = "wins" if self.value == 1.0 else "loses"
        return (
            f"The discriminator's batch accuracy has been {self.value:.0f} for {self.pinned} consecutive steps "
            f"(step {step}): it {verdict} outright and the generator gets no useful signal."
        )


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


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
    steps_per_epoch = data_lib.steps_per_epoch(len(splits.train), batch_size)
    model = builders.build_model(image_shape=splits.train.shape[1:], seed=seed)
    optimizers, clip_values = builders.build_optimizers(model, steps_per_epoch)
    model.compile(optimizers=optimizers, clip_values=clip_values, jit_compile=jit_compile)
    checkpoints = restore_or_initialize(model_dir, model, optimizers, keep_checkpoints)
    manager, step_var, epoch_var = checkpoints.manager, checkpoints.step, checkpoints.epoch
    selection_metric, selection_mode = model.selection_metric
    sign = 1.0 if selection_mode == "max" else -1.0  # best_score holds sign * metric: higher is better
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
            data_lib.make_dataset(
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

    def log_scalars(writer, logs, step):
        with writer.as_default():
            for key, value in logs.items():
                tf.summary.scalar(summary_tag(key), value, step=step)
            if writer is train_writer:
                for name, optimizer in optimizers.items():
                    tf.summary.scalar(f"learning_rate/{name}", builders.current_learning_rate(optimizer), step=step)
                tf.summary.scalar("epoch", step / steps_per_epoch, step=step)
        writer.flush()

    def log_images(step):
        reconstructions = model.reconstruct(fixed_images)
        samples = model.generate(fixed_z)
        for kind, images in (
            ("inputs", fixed_images),
            ("reconstructions", reconstructions),
            ("prior_samples", samples),
        ):
            grid = artifacts.image_grid(images.numpy())
            artifacts.write_png(os.path.join(model_dir, "images", f"{kind}-{step:08d}.png"), grid)
            with train_writer.as_default():
                tf.summary.image(kind, grid[None], step=step)
        train_writer.flush()

    # Noise streams of layers that draw in evaluation too (the discriminator's Torch spatial dropout keeps
    # dropping at inference): validation must not advance them, or a resumed run would diverge.
    seed_states = layer_rng_states(model)

    def validate(step):
        model.reset_metrics()
        model.reset_evaluation_rng()
        saved_states = [v.numpy() for v in seed_states]
        logs = {}
        for batch in data_lib.make_dataset(
            validation_images, batch_size=batch_size, binarization=splits.binarization, seed=seed, training=False
        ):
            logs = test_step(batch)
        logs = {k: float(v) for k, v in logs.items()}
        for variable, state in zip(seed_states, saved_states):
            variable.assign(state)
        model.reset_metrics()
        log_scalars(validation_writer, logs, step)
        if sign * logs[selection_metric] > float(checkpoints.best_score.numpy()):
            # Model selection on the validation split (never the test split): keep the best checkpoint by
            # the model's selection metric (IWAE_k for the VAE family).
            checkpoints.best_score.assign(sign * logs[selection_metric])
            checkpoints.best_manager.save(checkpoint_number=step)
            artifacts.atomic_write_text(
                os.path.join(model_dir, BEST_DIR, "best.json"),
                json.dumps(
                    {
                        "step": step,
                        "metric": selection_metric,
                        "mode": selection_mode,
                        "value": logs[selection_metric],
                        "split": "validation",
                    }
                ),
            )
        return logs

    last_save = time.time()

    def save(step):
        nonlocal last_save
        last_save = time.time()
        manager.save(checkpoint_number=step)
        artifacts.atomic_write_text(os.path.join(model_dir, "operative_config.gin"), gin.operative_config_str())

    step = initial_step = int(step_var.numpy())
    if step:
        print(f"Resuming from step {step} ({manager.latest_checkpoint})", flush=True)
    else:
        log_images(0)
    progbar = (
        keras.utils.Progbar(max_steps, interval=5.0, unit_name="step", stateful_metrics=[m.name for m in model.metrics])
        if progress_bar
        else None
    )
    train_logs, validation_logs = {}, {}
    start_time, start_step = time.time(), step
    collapse_monitor = CollapseMonitor(discriminator_collapse_steps)

    def save_batch(batch, what):
        path = os.path.join(model_dir, f"{what}_batch-{step:08d}.npy")
        artifacts.atomic_write_bytes(path, _npy_bytes(batch.numpy()))
        return path

    while step < max_steps:
        epoch, skip = divmod(step, steps_per_epoch)
        dataset = data_lib.make_dataset(
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
            nonfinite = {
                k: float(logs[k])
                for k in ("loss", "discriminator_loss")
                if k in logs and not np.isfinite(float(logs[k]))
            }
            if nonfinite:
                bad = save_batch(batch, "nonfinite")
                raise NonFiniteLossError(
                    f"The training loss became non-finite at step {step} ({nonfinite}). The last good checkpoint "
                    f"({manager.latest_checkpoint}) was kept and the offending batch saved to {bad}. "
                    "Lower optimizer.learning_rate or set optimizer.group_gradient_clip."
                )
            if "discriminator_batch_accuracy" in logs and collapse_monitor.update(
                float(logs["discriminator_batch_accuracy"])
            ):
                bad = save_batch(batch, "collapse")
                raise DiscriminatorCollapseError(
                    f"{collapse_monitor.describe(step)} The last good checkpoint ({manager.latest_checkpoint}) "
                    f"was kept and the last batch saved to {bad}. Adjust model.adversarial_weight, "
                    "model.discriminator_accuracy_threshold or the discriminator learning rate "
                    "(optimizer.group_learning_rate_scale), or raise train.discriminator_collapse_steps."
                )
            if progbar is not None:
                progbar.update(step, [(k, float(v)) for k, v in logs.items() if k in PROGRESS_KEYS])
            if step % log_every_steps == 0 or step % validation_every_steps == 0 or step == max_steps:
                train_logs = {k: float(v) for k, v in logs.items()}
                log_scalars(train_writer, train_logs, step)
                with train_writer.as_default():
                    tf.summary.scalar(
                        "images_per_second",
                        (step - start_step) * batch_size / max(time.time() - start_time, 1e-9),
                        step=step,
                    )
                model.reset_metrics()
            if step % validation_every_steps == 0 or step == max_steps:
                validation_logs = validate(step)
            if step % image_every_steps == 0 or step == max_steps:
                log_images(step)
            if (
                step % checkpoint_every_steps == 0
                or step == max_steps
                or (checkpoint_every_secs and time.time() - last_save >= checkpoint_every_secs)
            ):
                save(step)
            if step >= max_steps:
                break
    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
        save(step)
    train_writer.close()
    validation_writer.close()
    return {
        "step": step,
        "initial_step": initial_step,
        "train": train_logs,
        "validation": validation_logs,
        "checkpoint": manager.latest_checkpoint,
    }
