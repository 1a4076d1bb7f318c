"""The run-directory contract: what a training run writes, and how every later stage reads it back.

    model_dir/run.json                   written at the start: family, image shape, latent shape, schedule, versions
    model_dir/progress.json              step and cumulative training seconds at the last checkpoint
    model_dir/config.gin                 the full parsed config, written before training
    model_dir/operative_config.gin       the parameters actually used (rewritten at each checkpoint)
    model_dir/checkpoints/ckpt-<step>.*  TF checkpoints (+ `checkpoint` state file); checkpoints/best/ the best one
    model_dir/tb/train, tb/validation    TensorBoard events
    model_dir/images/<kind>-<step>.png   image grids
    model_dir/eval/, explore/, export/   what evaluate, explore and export write

`load_run` rebuilds a run's model from its saved config and restores a checkpoint without loading the
dataset (the image shape comes from `run.json`; runs written before it existed fall back to loading the
dataset once). Part of the gin surface: it parses a run's config files.
"""

import json
import logging as logging_std
import os
from typing import NamedTuple

from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import builders
from crvae_tf import data


class _GinResourceProbeFilter(logging_std.Filter):
    """Drops gin's "Path not found" log lines: gin probes `include` paths as Python packages first."""

    def filter(self, record):
        return not (record.pathname.endswith("resource_reader.py") and "Path not found" in str(record.msg))


def write_config(model_dir: str) -> None:
    """Writes `config.gin`: the whole parsed config (recipe + bindings), before training starts."""
    artifacts.atomic_write_text(os.path.join(model_dir, "config.gin"), gin.config_str())


def write_operative_config(model_dir: str) -> str:
    """Writes (and returns) `operative_config.gin`: every parameter the run's configurables actually used."""
    text = gin.operative_config_str()
    artifacts.atomic_write_text(os.path.join(model_dir, "operative_config.gin"), text)
    return text


def config_markdown(text: str) -> str:
    """A gin config as markdown (TensorBoard's text dashboard)."""
    return gin.markdown(text)


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
    the one checkpoint with the best validation score (the model's `selection_metric`: IWAE_k for the VAE family,
    the lowest validation loss for the adversarial family).
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


class Run:
    """A trained run rebuilt by `load_run`.

    Attributes:
      model: the model (a `models.VAE` or `models.VAEGAN`), weights restored, in evaluation use.
      step: the training step of the restored checkpoint.
      checkpoint_path: the restored checkpoint's path prefix.
      seed: `train.seed` of the run.
      splits: the run's training dataset (train / validation / test), loaded on first access only: exporting
        or sampling a run never needs the images.
    """

    def __init__(self, model, step: int, checkpoint_path: str, seed: int, splits=None):
        self.model = model
        self.step = step
        self.checkpoint_path = checkpoint_path
        self.seed = seed
        self._splits = splits

    @property
    def splits(self) -> data.ImageSplits:
        if self._splits is None:
            self._splits = builders.build_dataset(seed=self.seed)
        return self._splits


RUN_FILE = "run.json"
RUN_FORMAT = "crvae_tf.run/1"


def write_run_info(model_dir: str, model, max_steps: int, batch_size: int, steps_per_epoch: int) -> dict:
    """Writes `run.json`: what a consumer needs without the dataset (image shape, latent size, family, the
    schedule's length) and the versions that trained it. Rewritten at every (re)start of training."""
    import crvae_tf  # the package version

    info = {
        "format": RUN_FORMAT,
        "family": type(model).__name__,
        "image_shape": list(model.image_shape),
        "latent_dim": int(model.latent_dim),
        "num_time_steps": int(model.num_time_steps),
        "max_steps": int(max_steps),
        "batch_size": int(batch_size),
        "steps_per_epoch": int(steps_per_epoch),
        "versions": {"crvae_tf": crvae_tf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__},
    }
    artifacts.atomic_write_text(os.path.join(model_dir, RUN_FILE), json.dumps(info, indent=1))
    return info


def read_run_info(model_dir: str):
    """The run's `run.json` as a dict, or None for runs written before it existed."""
    path = os.path.join(model_dir, RUN_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        info = json.load(f)
    if info.get("format") != RUN_FORMAT:
        raise ValueError(f"{path} has format {info.get('format')!r}; this crvae_tf reads {RUN_FORMAT!r}.")
    return info


PROGRESS_FILE = "progress.json"


def read_progress(model_dir: str) -> dict:
    """`progress.json`: {'step', 'train_seconds'} as of the last checkpoint ({} before the first one). The
    training time adds up over every sitting of a resumed run (the wall-clock axis of learning curves)."""
    path = os.path.join(model_dir, PROGRESS_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_progress(model_dir: str, step: int, train_seconds: float) -> None:
    artifacts.atomic_write_text(
        os.path.join(model_dir, PROGRESS_FILE), json.dumps({"step": int(step), "train_seconds": float(train_seconds)})
    )


def kept_steps(model_dir: str) -> list:
    """Steps of the checkpoints a run currently keeps in `checkpoints/` (oldest first)."""
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, CHECKPOINT_DIR))
    if state is None:
        return []
    return sorted(_checkpoint_step(path) for path in state.all_model_checkpoint_paths)


def _checkpoint_step(path: str) -> int:
    return int(path.rsplit("-", 1)[1])


def max_steps(model_dir: str):
    """`train.max_steps` of a run (None if it cannot be read): from `run.json`, else, for older runs, from the
    operative config parsed by gin (this clears the current gin config)."""
    info = read_run_info(model_dir)
    if info is not None:
        return info["max_steps"]
    path = os.path.join(model_dir, "operative_config.gin")
    if not os.path.isfile(path):
        return None
    gin.clear_config()
    try:
        parse_gin([path], [], finalize=False)
        return int(gin.query_parameter("train.max_steps"))
    except (ValueError, TypeError):
        return None
    finally:
        gin.clear_config()


def resolve_checkpoint(model_dir: str, checkpoint="latest") -> str:
    """Path prefix of a run's checkpoint: 'latest', 'best' (the best validation score: IWAE_k, or the adversarial
    family's lowest validation loss), or a step number."""
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
    steps = [_checkpoint_step(p) for p in available]
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
    info = read_run_info(model_dir)
    splits = None
    if info is not None:
        image_shape = tuple(info["image_shape"])
    else:  # a run written before run.json: learn the image shape from its dataset
        splits = builders.build_dataset(seed=seed)
        image_shape = splits.image_shape
    model = builders.build_model(image_shape=image_shape, seed=seed)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    tf.train.Checkpoint(model=model, step=step).restore(path).expect_partial().assert_existing_objects_matched()
    return Run(model, int(step.numpy()), path, seed, splits)
