"""The periodic parts of the training loop, each a small object with a cadence: scalar summaries, image grids,
validation with best-checkpoint selection, and checkpointing. Gin-free.

The loop (`training.loop.train`) calls `trigger.due(step)` after every step and `trigger(step, logs)` when it is
due; a new periodic task (a sample-quality metric, a latent traversal grid) is one more object in that list.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import data
from crvae_tf import runs
from crvae_tf.architectures import blocks
from crvae_tf.training import console as console_lib

_TAG_PREFIXES = (
    ("kl_step_", "kl/step_"),
    ("active_units_step_", "active_units/step_"),
    ("grad_norm_", "grad_norm/"),
    ("param_norm_", "param_norm/"),
    ("update_ratio_", "update_ratio/"),
    ("discriminator_", "discriminator/"),
    ("generator_", "generator/"),
)


def summary_tag(key: str) -> str:
    """TensorBoard tag of a metric: 'kl_step_3' -> 'kl/step_3', 'active_units_step_3' -> 'active_units/step_3',
    'grad_norm_encoder' -> 'grad_norm/encoder' (also param_norm, update_ratio), 'discriminator_loss_real' ->
    'discriminator/loss_real', 'generator_adversarial' -> 'generator/adversarial'; others unchanged."""
    for prefix, tag in _TAG_PREFIXES:
        if key.startswith(prefix):
            return tag + key[len(prefix) :]
    return key


def write_scalars(writer, logs: dict, step: int) -> None:
    """Writes `logs` (name -> float) as TensorBoard scalars under their `summary_tag`s."""
    with writer.as_default():
        for key, value in logs.items():
            tf.summary.scalar(summary_tag(key), value, step=step)
    writer.flush()


class Every:
    """Due at every multiple of `every_steps` and at `max_steps` (the end of the run)."""

    def __init__(self, every_steps: int, max_steps: int):
        self.every_steps, self.max_steps = int(every_steps), int(max_steps)

    def due(self, step: int) -> bool:
        return step % self.every_steps == 0 or step == self.max_steps


class TrainingClock:
    """Seconds of training (validation and image grids included) summed over every sitting of a run."""

    def __init__(self, previous_seconds: float = 0.0):
        self.previous, self.start = float(previous_seconds), time.time()

    def seconds(self) -> float:
        return self.previous + time.time() - self.start


class TrainSummaries:
    """The training scalars: the running means of the model's metrics since the last summary, each optimizer's
    learning rate, the epoch, the throughput and the cumulative training time (`train_seconds`). Resets the
    model's metrics after writing."""

    def __init__(
        self, writer, model, optimizers, learning_rate_fn, steps_per_epoch, batch_size, cadence, start_step, clock
    ):
        self.writer, self.model, self.optimizers = writer, model, optimizers
        self.learning_rate_fn = learning_rate_fn
        self.steps_per_epoch, self.batch_size = steps_per_epoch, batch_size
        self.cadence = cadence
        self.start_step, self.start_time = start_step, time.time()
        self.clock = clock
        self.last = {}

    def due(self, step: int) -> bool:
        return self.cadence(step)

    def __call__(self, step: int, logs: dict) -> None:
        self.last = {k: float(v) for k, v in logs.items()}
        write_scalars(self.writer, self.last, step)
        with self.writer.as_default():
            for name, optimizer in self.optimizers.items():
                tf.summary.scalar(f"learning_rate/{name}", self.learning_rate_fn(optimizer), step=step)
            tf.summary.scalar("epoch", step / self.steps_per_epoch, step=step)
            elapsed = max(time.time() - self.start_time, 1e-9)
            tf.summary.scalar("images_per_second", (step - self.start_step) * self.batch_size / elapsed, step=step)
            tf.summary.scalar("train_seconds", self.clock.seconds(), step=step)
        self.writer.flush()
        self.model.reset_metrics()


class ImageGrids:
    """Inputs, reconstructions (posterior mean) and prior samples on a fixed batch and a fixed z, as PNG files
    (`images/<kind>-<step>.png`) and TensorBoard images."""

    def __init__(self, model_dir, writer, model, fixed_images, fixed_z, every: Every):
        self.model_dir, self.writer, self.model = model_dir, writer, model
        self.fixed_images, self.fixed_z, self.every = fixed_images, fixed_z, every

    def due(self, step: int) -> bool:
        return self.every.due(step)

    def __call__(self, step: int, logs=None) -> None:
        grids = (
            ("inputs", self.fixed_images),
            ("reconstructions", self.model.reconstruct(self.fixed_images)),
            ("prior_samples", self.model.generate(self.fixed_z)),
        )
        for kind, images in grids:
            grid = artifacts.image_grid(np.asarray(images))
            artifacts.write_png(os.path.join(self.model_dir, "images", f"{kind}-{step:08d}.png"), grid)
            with self.writer.as_default():
                tf.summary.image(kind, grid[None], step=step)
        self.writer.flush()


class ProgressiveGrid:
    """The coarse-to-fine view of a channel-recurrent latent (paper Fig. 5(a)) on the fixed z of the image grids:
    one row per sample, column t decodes z with time steps 1..t kept and the rest set to 0 (the prior mean), t = 0..T.
    Written as `images/progressive-<step>.png` and a TensorBoard image (models with T > 1 only)."""

    def __init__(self, model_dir, writer, model, fixed_z, every: Every, rows: int = 8):
        self.model_dir, self.writer, self.model, self.every = model_dir, writer, model, every
        self.fixed_z = fixed_z[:rows]

    def due(self, step: int) -> bool:
        return self.every.due(step)

    def __call__(self, step: int, logs=None) -> None:
        steps = self.model.num_time_steps
        latents = blocks.time_step_prefixes(self.fixed_z, steps)  # [T + 1, rows, D]
        rows = self.fixed_z.shape[0]
        images = self.model.generate(tf.reshape(tf.transpose(latents, (1, 0, 2)), (rows * (steps + 1), -1)))
        grid = artifacts.image_grid(np.asarray(images), columns=steps + 1)
        artifacts.write_png(os.path.join(self.model_dir, "images", f"progressive-{step:08d}.png"), grid)
        with self.writer.as_default():
            tf.summary.image("progressive", grid[None], step=step)
        self.writer.flush()


class PosteriorHistograms:
    """Histograms of the posterior log-variances and means of a fixed batch, one per time step
    (`posterior/log_variance_step_<t>`, `posterior/loc_step_<t>`): where a time step's posterior sits at the prior
    (log-variance 0, mean 0) it carries no information, the signature of posterior collapse."""

    def __init__(self, writer, model, fixed_images, every: Every):
        self.writer, self.model, self.fixed_images, self.every = writer, model, fixed_images, every

    def due(self, step: int) -> bool:
        return self.every.due(step)

    def __call__(self, step: int, logs=None) -> None:
        images = self.fixed_images
        low, _ = getattr(self.model, "input_range", (0.0, 1.0))
        if low < 0:  # the adversarial family encodes [-1, 1]
            images = images * 2.0 - 1.0
        loc, log_variance = self.model.encode(images, training=False)
        steps = self.model.num_time_steps
        with self.writer.as_default():
            for t, (loc_t, log_variance_t) in enumerate(
                zip(tf.split(loc, steps, axis=-1), tf.split(log_variance, steps, axis=-1)), start=1
            ):
                tf.summary.histogram(f"posterior/log_variance_step_{t}", log_variance_t, step=step)
                tf.summary.histogram(f"posterior/loc_step_{t}", loc_t, step=step)
        self.writer.flush()


class Validation:
    """One pass of `test_step` over the validation images, written to TensorBoard and printed as one line; keeps the
    best checkpoint (model selection on the validation split, never the test split) by the model's
    `selection_metric`.

    Validation draws from the model's evaluation noise stream, restarted before each pass, and restores the
    noise streams of layers that draw in evaluation too (the discriminator's Torch spatial dropout), so a
    resumed run equals an uninterrupted one. `should_stop()` (an interrupt) abandons a pass between batches,
    writing nothing.
    """

    def __init__(
        self,
        model_dir,
        writer,
        model,
        test_step,
        images,
        binarization,
        batch_size,
        seed,
        checkpoints,
        every,
        console=None,
        should_stop=lambda: False,
    ):
        self.model_dir, self.writer, self.model, self.test_step = model_dir, writer, model, test_step
        self.images, self.binarization, self.batch_size, self.seed = images, binarization, batch_size, seed
        self.checkpoints, self.every = checkpoints, every
        self.console, self.should_stop = console, should_stop
        self.metric, self.mode = model.selection_metric
        self.sign = 1.0 if self.mode == "max" else -1.0  # best_score holds sign * metric: higher is better
        self.seed_states = runs.layer_rng_states(model)
        self.last = {}
        self.last_step = None

    def due(self, step: int) -> bool:
        return self.every.due(step)

    def __call__(self, step: int, logs=None) -> dict:
        model = self.model
        start = time.time()
        model.reset_metrics()
        model.reset_evaluation_rng()
        saved_states = [v.numpy() for v in self.seed_states]
        result = {}
        dataset = data.make_dataset(
            self.images, batch_size=self.batch_size, binarization=self.binarization, seed=self.seed, training=False
        )
        num_batches = -(-len(self.images) // self.batch_size)
        stopped = False
        for done, batch in enumerate(dataset, 1):
            result = self.test_step(batch)
            if self.console is not None:
                self.console.validation_progress(step, done, num_batches)
            if self.should_stop():
                stopped = True
                break
        result = {k: float(v) for k, v in result.items()}
        for variable, state in zip(self.seed_states, saved_states):
            variable.assign(state)
        model.reset_metrics()
        if stopped:
            return {}
        write_scalars(self.writer, result, step)
        value = result[self.metric]
        best = self.sign * value > float(self.checkpoints.best_score.numpy())
        if best:
            self.checkpoints.best_score.assign(self.sign * value)
            self.checkpoints.best_manager.save(checkpoint_number=step)
            record = {"step": step, "metric": self.metric, "mode": self.mode, "value": value, "split": "validation"}
            artifacts.atomic_write_text(os.path.join(self.model_dir, runs.BEST_DIR, "best.json"), json.dumps(record))
        if self.console is not None:
            self.console.message(console_lib.validation_line(step, result, len(self.images), time.time() - start, best))
        self.last, self.last_step = result, step
        return result


class Checkpointing:
    """Saves a checkpoint (then calls `on_save`: the operative config, the progress file) every `every` steps, at
    the end, and whenever `every_secs` passed since the last save, so a killed run loses at most that much work."""

    def __init__(self, manager, every: Every, every_secs, on_save):
        self.manager, self.every, self.every_secs = manager, every, every_secs
        self.on_save = on_save  # (step) -> None, after each save: the operative config, the progress file
        self.last_save = time.time()

    def due(self, step: int) -> bool:
        return self.every.due(step) or bool(self.every_secs and time.time() - self.last_save >= self.every_secs)

    def __call__(self, step: int, logs=None) -> None:
        self.last_save = time.time()
        self.manager.save(checkpoint_number=step)
        self.on_save(step)

    def saved(self, step: int) -> bool:
        latest = self.manager.latest_checkpoint
        return latest is not None and latest.endswith(f"-{step}")
