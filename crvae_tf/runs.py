"""The run-directory contract: what a training run writes, and how every later stage reads it back.

    model_dir/run.lock                   the trainer's lock while one runs (host, PID, start time, command)
    model_dir/run.json                   written once, when the run starts: family, image shape, latent shape,
                                         schedule, versions; later resumes append their `amendments`
    model_dir/progress.json              step and cumulative training seconds at the last checkpoint
    model_dir/config.gin                 the full parsed config, written once, when the run starts
    model_dir/operative_config.gin       the parameters actually used (rewritten at each checkpoint)
    model_dir/checkpoints/ckpt-<step>.*  TF checkpoints (+ `checkpoint` state file); checkpoints/best/ the best one
    model_dir/tb/train, tb/validation    TensorBoard events
    model_dir/images/<kind>-<step>.png   image grids
    model_dir/eval/, explore/, export/   what evaluate, explore and export write

`load_run` rebuilds a run's model from its saved config and restores a checkpoint without loading the
dataset (the image shape comes from `run.json`; runs written before it existed fall back to loading the
dataset once). Part of the gin surface: it parses a run's config files.

One run, one owner, one configuration: `RunDirectory` holds the run's lock (`locking`) while a trainer writes, and
`prepare_config` compares a later command with the run's `config.gin` before any file is touched: the settings of
`RESUME_SAFE` may change on a resume (recorded in `run.json` as an amendment), anything else is refused
(`ConfigMismatchError`). `parse_gin` turns gin's errors into `ConfigError`s that name the file, the line and the
closest known name.
"""

import datetime
import difflib
import inspect
import io
import json
import logging as logging_std
import os
import re
import shutil
import tokenize
from typing import NamedTuple

from absl import logging
import gin
from gin import config_parser
import keras
import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import builders
from crvae_tf import data
from crvae_tf import locking


class _GinResourceProbeFilter(logging_std.Filter):
    """Drops gin's probe log lines ("Path not found", "system_path_file_exists"): gin probes `include` paths as
    Python packages first."""

    def filter(self, record):
        return not record.pathname.endswith("resource_reader.py")


class ConfigError(ValueError):
    """A recipe or binding the user can fix (syntax, unknown name, wrong type); the message says where."""


def _registered():
    """name -> gin Configurable of every registered configurable."""
    return {configurable.name: configurable for _, configurable in gin.config._REGISTRY.items()}


def _parameters(configurable) -> dict:
    """name -> inspect.Parameter of what a configurable accepts (its allowlist / denylist applied)."""
    try:
        signature = inspect.signature(configurable.wrapped)
    except (TypeError, ValueError):
        return {}
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {n: p for n, p in signature.parameters.items() if p.kind in kinds}
    if configurable.allowlist:
        names = {n: p for n, p in names.items() if n in configurable.allowlist}
    if configurable.denylist:
        names = {n: p for n, p in names.items() if n not in configurable.denylist}
    return names


def _did_you_mean(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


_UNKNOWN_CONFIGURABLE = re.compile(r"No configurable matching '([^']+)'")
_UNKNOWN_PARAMETER = re.compile(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'")


def _suggest(message: str) -> str:
    """gin's message about an unknown name, with the closest known name added to its first line."""
    first, _, rest = message.partition("\n")
    match = _UNKNOWN_CONFIGURABLE.search(first)
    if match:
        name = match.group(1).rsplit("/", 1)[-1]
        first += _did_you_mean(name.rsplit(".", 1)[-1], _registered())
    match = _UNKNOWN_PARAMETER.search(first)
    if match:
        configurable = _registered().get(match.group(1).rsplit(".", 1)[-1])
        if configurable is not None:
            names = _parameters(configurable)
            first += _did_you_mean(match.group(2), names) + f" Its parameters: {', '.join(sorted(names))}."
    return first + ("\n" + rest if rest else "")


def _included_files(path: str, seen=None) -> list:
    """`path` and the files it includes (recursively), as gin resolves them (relative to the including file)."""
    seen = [] if seen is None else seen
    if path in seen or not os.path.isfile(path):
        return seen
    seen.append(path)
    with open(path) as f:
        text = f.read()
    for name in re.findall(r"^\s*include\s+['\"]([^'\"]+)['\"]", text, flags=re.M):
        _included_files(os.path.join(os.path.dirname(path), name), seen)
    return seen


def _unclosed(text: str):
    """(line, what) of the unclosed bracket or string that ends `text` inside a statement, or None."""
    opened = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.OP and token.string in "([{":
                opened.append((token.start[0], token.string))
            elif token.type == tokenize.OP and token.string in ")]}" and opened:
                opened.pop()
    except tokenize.TokenError as error:
        if "string" in str(error.args[0]):
            return error.args[1][0], "string"
        return (opened[0][0], f"bracket {opened[0][1]!r}") if opened else (error.args[1][0], "statement")
    return None


def _token_error(paths, bindings) -> ConfigError:
    """The ConfigError of gin's tokenize.TokenError (which names no file): the file and line of the unclosed bracket."""
    for path in [p for top in paths for p in _included_files(top)]:
        with open(path) as f:
            found = _unclosed(f.read())
        if found:
            line, what = found
            return ConfigError(f"{path}, line {line}: this {what} is never closed (the file ends inside it).")
    for binding in bindings:
        found = _unclosed(binding)
        if found:
            return ConfigError(f"--gin_bindings={binding!r}: this {found[1]} is never closed.")
    return ConfigError(f"A recipe or binding ends inside an unclosed bracket or string ({', '.join(paths)}).")


def _expected_type(parameter):
    """The plain type (int, float, bool, str) a parameter takes, from its annotation or default; None if unsure
    (annotated `object`: several types, checked by the configurable itself)."""
    if parameter.annotation is object:
        return None
    if parameter.annotation in (int, float, bool, str):
        return parameter.annotation
    default = parameter.default
    if default is not inspect.Parameter.empty and type(default) in (int, float, bool, str):
        return type(default)
    return None


def _type_fits(value, expected) -> bool:
    if value is None or expected is None:
        return True
    if expected is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if expected is int:
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if expected is float:
        return isinstance(value, (int, float))
    return isinstance(value, expected)


def check_binding_types() -> None:
    """Refuses bindings whose value cannot be of the parameter's type (`train.max_steps = 'abc'`), naming each one.

    The type is the parameter's annotation or its default's type (int, float, bool, str); None is always allowed,
    references and macros are not checked. Raises ConfigError."""
    registered = _registered()
    wrong = []
    for (scope, selector), values in gin.config._CONFIG.items():
        configurable = registered.get(selector.rsplit(".", 1)[-1])
        if configurable is None:
            continue
        parameters = _parameters(configurable)
        for name, value in values.items():
            if isinstance(value, gin.config.ConfigurableReference) or name not in parameters:
                continue
            expected = _expected_type(parameters[name])
            if not _type_fits(value, expected):
                key = f"{scope + '/' if scope else ''}{configurable.name}.{name}"
                default = parameters[name].default
                shown = (
                    "" if default is inspect.Parameter.empty or default is gin.REQUIRED else f", default {default!r}"
                )
                wrong.append(f"{key} = {value!r}: expects {expected.__name__}{shown}, got {type(value).__name__}")
    if wrong:
        raise ConfigError("Wrongly typed binding(s):\n  " + "\n  ".join(wrong))


CONFIG_FILE = "config.gin"
LOCK_FILE = "run.lock"

# What may change when a run is resumed: the length of the schedule, where the data is read from, and the cadence
# of logging, image grids, validation and checkpoints (none of them changes a training step: validation draws from
# its own noise stream). Anything else (model, optimizer, batch size, seed, the validation images) is refused.
RESUME_SAFE = frozenset(
    {
        "train.max_steps",
        "train.log_every_steps",
        "train.image_every_steps",
        "train.validation_every_steps",
        "train.num_image_samples",
        "train.progress_bar",
        "train.steps_per_execution",
        "train.diagnostics",
        "model.fold_batch_norm",
        "train.checkpoint_every_steps",
        "train.checkpoint_every_secs",
        "train.max_checkpoints_to_keep",
        "train.keep_checkpoints",
        "train.discriminator_collapse_steps",
        "dataset.local_path",
        "dataset.data_dir",
        "dataset.cache_dir",
        "dataset.cub_path",
        "dataset.download",
        "eval_dataset.local_path",
        "eval_dataset.data_dir",
        "eval_dataset.cache_dir",
        "eval_dataset.download",
    }
)


def write_config(model_dir: str) -> None:
    """Writes `config.gin`: the whole parsed config (recipe + bindings), once, when the run starts."""
    artifacts.atomic_write_text(os.path.join(model_dir, CONFIG_FILE), gin.config_str())


class ConfigMismatchError(ValueError):
    """A command's configuration differs from its run's `config.gin` in settings a resume may not change."""

    def __init__(self, message: str, changes: dict):
        super().__init__(message)
        self.changes = changes


class _Text:
    """A gin reference or macro as its source text (compared, never evaluated)."""

    def __init__(self, text):
        self.text = text

    def __eq__(self, other):
        return isinstance(other, _Text) and other.text == self.text

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return self.text


class _TextDelegate(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_configurable_name, evaluate):
        return _Text(f"@{scoped_configurable_name}{'()' if evaluate else ''}")

    def macro(self, macro_name):
        return _Text(f"%{macro_name}")


def config_bindings(text: str) -> dict:
    """'scope/selector.parameter' (or a macro's name) -> value of every binding in a gin config text (as written by
    `gin.config_str`); references and macros stay text. Includes and imports are ignored."""
    bindings = {}
    for statement in config_parser.ConfigParser(text, _TextDelegate()):
        if isinstance(statement, config_parser.BindingStatement):
            key = f"{statement.scope + '/' if statement.scope else ''}{statement.selector}"
            bindings[f"{key}.{statement.arg_name}" if statement.arg_name else key] = statement.value
    return bindings


def _format(value) -> str:
    return "(not bound)" if value is _UNBOUND else repr(value)


_UNBOUND = object()


def _binding_default(key: str):
    """The default of a 'selector.parameter' key (the value an unbound parameter takes), or _UNBOUND."""
    selector, _, name = key.rpartition(".")
    configurable = _registered().get(selector.rsplit("/", 1)[-1])
    parameter = _parameters(configurable).get(name) if configurable else None
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return _UNBOUND
    return parameter.default


def config_changes(old_text: str, new_text: str) -> dict:
    """key -> (old value, new value) of every binding that differs between two gin config texts."""
    old, new = config_bindings(old_text), config_bindings(new_text)
    return {
        key: (old.get(key, _UNBOUND), new.get(key, _UNBOUND))
        for key in sorted(set(old) | set(new))
        if old.get(key, _UNBOUND) != new.get(key, _UNBOUND)
    }


def has_checkpoint(model_dir: str) -> bool:
    return tf.train.latest_checkpoint(os.path.join(model_dir, CHECKPOINT_DIR)) is not None


def prepare_config(model_dir: str) -> dict:
    """Checks the parsed gin config against the run's own and writes what a (re)start records; call under the lock.

    A new run (no checkpoint yet) gets `config.gin`. An existing one keeps it byte for byte: the parsed config is
    compared with it, changes of `RESUME_SAFE` settings are recorded as an amendment in `run.json` (with the time
    and the bindings that `load_run` applies after `config.gin`), and any other change raises `ConfigMismatchError`
    before anything is written.

    Returns:
      the accepted changes, key -> (old text, new text) (empty for a new run or an unchanged one).
    """
    path = os.path.join(model_dir, CONFIG_FILE)
    current = gin.config_str()
    if not has_checkpoint(model_dir) or not os.path.isfile(path):
        if os.path.isfile(path):
            with open(path) as f:
                if f.read() != current:
                    logging.warning(
                        "%s holds no checkpoint yet: its config.gin is replaced by this command's.", model_dir
                    )
        write_config(model_dir)
        return {}
    with open(path) as f:
        saved = f.read()
    changes = config_changes(saved, current)
    refused = {key: change for key, change in changes.items() if key not in RESUME_SAFE}
    if refused:
        lines = "\n".join(
            f"  {key}: {_format(old)} (run) -> {_format(new)} (this command)" for key, (old, new) in refused.items()
        )
        raise ConfigMismatchError(
            f"{model_dir} holds a run trained with another configuration ({path}, written when the run started). "
            f"This command differs in:\n{lines}\n"
            f"A resume may change only {', '.join(sorted(RESUME_SAFE))}. Nothing was written. To train this "
            "configuration, use a new --model_dir; to resume the run, rerun it with its own recipe and bindings "
            f"({path} lists them).",
            refused,
        )
    if not changes:
        return {}
    bindings = []
    for key, (_, new) in changes.items():
        value = new if new is not _UNBOUND else _binding_default(key)
        if value is _UNBOUND:
            raise ConfigMismatchError(
                f"{model_dir}: this command unbinds {key}, which has no default to record.", changes
            )
        bindings.append(f"{key} = {value!r}")
    amendment = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "changes": {key: [_format(old), _format(new)] for key, (old, new) in changes.items()},
        "bindings": bindings,
    }
    info = read_run_info(model_dir)
    if info is not None:
        info.setdefault("amendments", []).append(amendment)
        if "train.max_steps" in changes:
            info["max_steps"] = int(gin.query_parameter("train.max_steps"))
        artifacts.atomic_write_text(os.path.join(model_dir, RUN_FILE), json.dumps(info, indent=1))
    for key, (old, new) in changes.items():
        logging.warning(
            "Resuming %s with %s = %s (was %s): recorded in run.json.", model_dir, key, _format(new), _format(old)
        )
    return {key: (_format(old), _format(new)) for key, (old, new) in changes.items()}


def amendment_bindings(model_dir: str) -> list:
    """The bindings of every amendment recorded in the run's `run.json`, oldest first."""
    info = read_run_info(model_dir) or {}
    return [binding for amendment in info.get("amendments", []) for binding in amendment.get("bindings", [])]


def remove_stale_temps(model_dir: str) -> list:
    """Removes what a killed trainer leaves behind: `checkpoints/ckpt-N_temp/` folders of a checkpoint being written
    and the `.tmp-*` files of atomic writes in the folders the trainer owns. Call under the run's lock."""
    removed = []
    for folder in (os.path.join(model_dir, CHECKPOINT_DIR), os.path.join(model_dir, BEST_DIR)):
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name.endswith("_temp") and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                logging.warning("Removed %s, a checkpoint whose writing was interrupted.", path)
                removed.append(path)
    for folder in (model_dir, os.path.join(model_dir, "images"), os.path.join(model_dir, BEST_DIR)):
        removed += artifacts.remove_stale_temp_files(folder)
    return removed


class RunDirectory:
    """The trainer's hold on a run directory: its lock (`run.lock`, taken before anything is written; see
    `crvae_tf.locking`), then the removal of stale temporary files. A context manager."""

    def __init__(self, model_dir: str):
        self.model_dir = model_dir
        self.lock = locking.DirectoryLock(model_dir, LOCK_FILE, "training run")

    def __enter__(self):
        if os.path.exists(self.model_dir) and not os.path.isdir(self.model_dir):
            raise NotADirectoryError(f"--model_dir={self.model_dir} is a file, not a directory.")
        self.lock.acquire()
        try:
            remove_stale_temps(self.model_dir)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc):
        self.lock.release()
        return False


def trainer_of(model_dir: str):
    """The live trainer holding the run's lock (a dict: host, pid, started, command), or None."""
    return locking.holder(model_dir, LOCK_FILE)


def write_operative_config(model_dir: str) -> str:
    """Writes (and returns) `operative_config.gin`: every parameter the run's configurables actually used."""
    text = gin.operative_config_str()
    artifacts.atomic_write_text(os.path.join(model_dir, "operative_config.gin"), text)
    return text


def config_markdown(text: str) -> str:
    """A gin config as markdown (TensorBoard's text dashboard)."""
    return gin.markdown(text)


def parse_gin(gin_files, gin_bindings=(), finalize=True):
    """Parses recipes, then bindings (bindings win), and optionally locks the config.

    `include` lines resolve relative to each recipe's folder (`gin/common/*.gin` hold shared settings). Errors a
    user can fix raise `ConfigError`: syntax errors name the file and line, unknown names get the closest known
    one, wrongly typed values name the binding (`check_binding_types`).
    """
    gin_files, gin_bindings = list(gin_files), list(gin_bindings)
    for path in gin_files:
        gin.add_config_file_search_path(os.path.dirname(os.path.abspath(path)))
    probe_filter = _GinResourceProbeFilter()
    root = logging_std.getLogger()
    # On the handlers too: a logger's own filters do not see the records its children (absl's, gin's) propagate.
    filtered = [root, *root.handlers, logging.get_absl_handler()]
    for target in filtered:
        target.addFilter(probe_filter)
    try:
        gin.parse_config_files_and_bindings(gin_files, gin_bindings, finalize_config=False)
        check_binding_types()
        if finalize:
            gin.finalize()
    except tokenize.TokenError:
        raise _token_error(gin_files, gin_bindings) from None
    except SyntaxError as error:
        where = f"{error.filename}, line {error.lineno}" if error.filename else f"--gin_bindings, line {error.lineno}"
        text = f"\n    {error.text.strip()}" if error.text else ""
        raise ConfigError(f"{where}: {error.msg}{text}") from None
    except ConfigError:
        raise
    except (ValueError, OSError) as error:  # an unknown configurable / parameter / include
        raise ConfigError(_suggest(str(error))) from None
    finally:
        for target in filtered:
            target.removeFilter(probe_filter)


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


def read_best(model_dir: str):
    """`checkpoints/best/best.json` (step, metric, mode, value, split) as a dict, or None before the first one."""
    path = os.path.join(model_dir, BEST_DIR, "best.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


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


COMMIT_ENV = "CRVAE_TF_COMMIT"


def source_commit() -> str:
    """The git commit of the crvae_tf source that runs ('<sha>' or '<sha>-dirty' with uncommitted tracked changes),
    from `git` in the package's checkout; else the environment variable CRVAE_TF_COMMIT (set it when running from a
    copy of the tree without .git); else None."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):  # an installed or copied package: not its own checkout
        return os.environ.get(COMMIT_ENV) or None
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "crvae_tf"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if head:
            return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get(COMMIT_ENV) or None


def _hardware() -> dict:
    """What trains the run: CPU count, machine, the accelerators TensorFlow sees."""
    import platform

    return {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "gpus": [device.name for device in tf.config.list_physical_devices("GPU")],
    }


def write_run_info(model_dir: str, model, max_steps: int, batch_size: int, steps_per_epoch: int) -> dict:
    """Writes `run.json`: what a consumer needs without the dataset (image shape, latent size, family, the
    schedule's length), the versions that trained it and its provenance (`started_utc`, `git_commit` from
    `source_commit`, `hardware`). Written once, when the run starts (a run.json that exists beside a checkpoint is
    kept: its `amendments` record what later resumes changed; the provenance of a start is never added later)."""
    import crvae_tf  # the package version

    existing = read_run_info(model_dir)
    keep = existing is not None and has_checkpoint(model_dir)

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
    if keep:  # a resumed run: only the keys an older crvae_tf did not write yet are added
        missing = {key: value for key, value in info.items() if key not in existing}
        if not missing:
            return existing
        info = {**existing, **missing}
    else:  # the start's provenance (a resume would record its own commit and machine, not the start's)
        info.update(
            started_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            git_commit=source_commit(),
            hardware=_hardware(),
        )
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
    (everything the recipe bound, e.g. `eval_dataset.*`, which training never calls), then the bindings of the
    amendments in `run.json` (what resumes changed), then `gin_bindings`. It only reads: a trainer may be writing
    the run meanwhile (its checkpoints appear complete or not at all).
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
    trainer = trainer_of(model_dir)
    if trainer is not None:
        logging.info(
            "%s is being trained by %s; reading its complete checkpoint %s.", model_dir, locking.describe(trainer), path
        )
    gin.clear_config()
    bindings = amendment_bindings(model_dir) + list(gin_bindings)
    parse_gin([c for c in configs if os.path.isfile(c)], bindings, finalize=False)
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
