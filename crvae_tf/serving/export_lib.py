"""Export of a trained generator as a TF Serving SavedModel: the serving contract, metadata and atomic writes.

`export_run(model_dir, export_dir)` rebuilds a run's model from its saved config (`runs.load_run`),
restores a checkpoint and writes `export_dir/<version>/` (version = the training step) in TF Serving's
versioned layout. `export_model(model, export_dir, version)` does the same for a model already in memory.
The contract is in `export/README.md`; the code below is its single source of truth (`endpoints.signature_table`).

Serving graph rules (checked on the written SavedModel before it is published, `check_serving_graph`):
only ops registered in core TensorFlow (`tf.raw_ops`), no `CudnnRNN*` op (Keras RNN layers are traced with
`use_cudnn=False`; crvae_tf's own `StackedLSTM` is plain matmuls), no XLA-compiled function.

Atomic publication: the SavedModel and its metadata are written to `export_dir/.tmp-<version>-<hex>/` and
renamed to `export_dir/<version>` only when complete; on any failure the temporary folder is removed. TF
Serving only loads all-digit folder names, so it never sees a half-written version. An export holds
`export_dir/.export.lock` (`locking`) while it writes, and first removes the temporary folders of exports that were
killed (kill -9 runs no cleanup).

Metadata (where to find it, also in export/README.md):
    <version>/assets.extra/crvae_tf_metadata.json   all of it, as JSON (`METADATA_FILE`; keys in `export_model`)
    <version>/assets.extra/operative_config.gin     the run's operative gin config
    tf.saved_model.load(...).metadata_json          the same JSON, as a string variable
    tf.saved_model.load(...).training_step, .latent_shape, .image_shape, .output_pixel_range, .model_name,
        .operative_config                            typed variables
"""

import datetime
import json
import os
import shutil
from typing import NamedTuple
from typing import Optional
import uuid

from absl import logging
import keras
import tensorflow as tf

import crvae_tf
from crvae_tf import data as data_lib
from crvae_tf import locking
from crvae_tf import runs
from crvae_tf.models import completion
from crvae_tf.serving import endpoints
from crvae_tf.serving.endpoints import COMPLETION_FILL
from crvae_tf.serving.endpoints import COMPLETION_GAMMA
from crvae_tf.serving.endpoints import COMPLETION_LEARNING_RATE
from crvae_tf.serving.endpoints import COMPLETION_TAU
from crvae_tf.serving.endpoints import INPUT_PIXEL_RANGE
from crvae_tf.serving.endpoints import MAX_COMPLETION_STEPS
from crvae_tf.serving.endpoints import MAX_SAMPLE_NUM
from crvae_tf.serving.endpoints import MAX_TRAVERSE_POINTS
from crvae_tf.serving.endpoints import OUTPUT_PIXEL_RANGE
from crvae_tf.serving.endpoints import SAMPLE_RNG_ALGORITHM
from crvae_tf.serving.endpoints import SAMPLE_SEED_SALT
from crvae_tf.serving.endpoints import TRAVERSE_SEED_SALT
from crvae_tf.serving.endpoints import NoCudnn
from crvae_tf.serving.endpoints import build_serving_module
from crvae_tf.serving.endpoints import latent_shape
from crvae_tf.serving.endpoints import signature_table
from crvae_tf.serving.graph_checks import check_serving_graph
from crvae_tf.serving.publish import TMP_PREFIX
from crvae_tf.serving.publish import publish
from crvae_tf.serving.publish import save

SIGNATURES = endpoints.SIGNATURES
METADATA_DIR = "assets.extra"
METADATA_FILE = os.path.join(METADATA_DIR, "crvae_tf_metadata.json")
OPERATIVE_CONFIG_FILE = os.path.join(METADATA_DIR, "operative_config.gin")
METADATA_FORMAT = "crvae_tf.export/1"
# One export at a time per export_dir (its `locking.DirectoryLock`); TF Serving ignores the file (not all digits).
LOCK_FILE = ".export.lock"


def remove_stale_exports(export_dir: str) -> list:
    """Removes the `.tmp-*` folders a killed export left in `export_dir` (call under its lock); logs each one."""
    removed = []
    for name in sorted(os.listdir(export_dir)) if os.path.isdir(export_dir) else []:
        path = os.path.join(export_dir, name)
        if name.startswith(TMP_PREFIX) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            logging.warning("Removed %s, the temporary folder of an interrupted export.", path)
            removed.append(path)
    return removed


class Export(NamedTuple):
    """What `export_model` / `export_run` wrote."""

    path: str  # export_dir/<version>
    version: int
    metadata: dict
    ops: dict  # op type -> count in the serving graph


def traverse_metadata(model) -> dict:
    """How `traverse` / `traverse_images` move one time step (endpoints module docstring), for this model."""
    slices = endpoints.time_step_slices(model)
    return {
        "num_time_steps": len(slices),
        "time_step": "1-based, the paper's t (as explore --time_step): time step t is step_slices[t - 1]",
        "step_slices": [list(pair) for pair in slices],
        "time_steps_of_the_head": int(getattr(getattr(model, "latent_head", None), "num_time_steps", 1) or 1),
        "max_num_points": MAX_TRAVERSE_POINTS,
        "target_rng": {
            "op": "tf.random.stateless_normal",
            "alg": SAMPLE_RNG_ALGORITHM,
            "shape": "[D/T], shared by every row",
            "seed": f"[seed, {TRAVERSE_SEED_SALT} + t]",
        },
        "points": "(1 - a) z_t + a z~_t, a = p / (num_points - 1), p = 0..num_points-1; other time steps fixed",
    }


def complete_metadata() -> dict:
    """The settings of `complete` (crvae_tf.models.completion, Eq. 5 with the prior term's sign corrected)."""
    return {
        "objective": "sum_hwc (m (x - gen z))^2 + gamma 0.5 ||z||^2 (tau = 0: the export holds no discriminator)",
        "optimizer": "Adam(beta_1=0.9, beta_2=0.999, epsilon=1e-8), bias-corrected, in one tf.while_loop",
        "learning_rate": COMPLETION_LEARNING_RATE,
        "gamma": COMPLETION_GAMMA,
        "tau": COMPLETION_TAU,
        "max_steps": MAX_COMPLETION_STEPS,
        "library_default_steps": completion.DEFAULT_NUM_STEPS,
        "occlusion_fill": COMPLETION_FILL,
        "init": (
            "seed < 0: the posterior mean of the occluded image x m; seed >= 0: the posterior sample "
            "loc + scale eps, eps = tf.random.stateless_normal([batch, D], "
            f"seed=[seed, {completion._INIT_SEED_SALT:#x}]) "
            "(crvae_tf.models.completion.initial_latents, init='posterior_sample')"
        ),
        "mask": "float32 [batch, H, W, 1], 1 = observed pixel (copied to the output exactly), 0 = missing",
    }


def export_model(
    model,
    export_dir: str,
    version: int,
    *,
    operative_config: str = "",
    extra_metadata: Optional[dict] = None,
    overwrite: bool = False,
) -> Export:
    """Writes `model` as `export_dir/<version>/`, atomically.

    Args:
      model: built model with the interface of the module docstring (weights restored).
      export_dir: TF Serving's model base path (created if missing); holds one folder per version.
      version: non-negative int, normally the training step.
      operative_config: the run's operative gin config text (stored as metadata).
      extra_metadata: more JSON-serialisable metadata (e.g. the checkpoint path).
      overwrite: replace an existing `export_dir/<version>` (atomic swap); otherwise that is an error.

    Returns:
      `Export`. Raises FileExistsError (version exists, no overwrite), ServingGraphError (the graph is not
      servable) or whatever the save raised; in every failure case nothing is left in `export_dir`.
    """
    version = int(version)
    if version < 0:
        raise ValueError(f"version must be a non-negative integer (TF Serving's version folder), got {version}")
    os.makedirs(export_dir, exist_ok=True)
    with locking.DirectoryLock(export_dir, LOCK_FILE, "export"):
        remove_stale_exports(export_dir)
        return _export_locked(model, export_dir, version, operative_config, extra_metadata, overwrite)


def _export_locked(model, export_dir, version, operative_config, extra_metadata, overwrite) -> Export:
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(
            f"{final} already exists. Pass --overwrite to replace it (a server that already "
            "loaded this version keeps serving the old one), or export another checkpoint."
        )
    lo, hi = (float(v) for v in getattr(model, "input_range", (0.0, 1.0)))
    head = getattr(model, "latent_head", None)
    metadata = {
        "format": METADATA_FORMAT,
        "model_name": str(model.name),
        "model_class": type(model).__name__,
        "latent_head": type(head).__name__ if head is not None else None,
        "training_step": version,
        "latent_dim": int(model.latent_dim),
        "latent_shape": latent_shape(model),
        "latent_layout": (
            "flat"
            if len(latent_shape(model)) == 1
            else "channel-major: z is the row-major flattening of a [C, h, w] latent (latent_shape)"
        ),
        "image_shape": [int(d) for d in model.image_shape],
        "output_pixel_range": list(OUTPUT_PIXEL_RANGE),
        "input_pixel_range": list(INPUT_PIXEL_RANGE),
        "model_input_range": [lo, hi],
        "signatures": signature_table(model.latent_dim, model.image_shape),
        "sample_rng": {
            "op": "tf.random.stateless_normal",
            "alg": SAMPLE_RNG_ALGORITHM,
            "seed": f"[seed, {SAMPLE_SEED_SALT}]",
            "max_num": MAX_SAMPLE_NUM,
        },
        "traverse": traverse_metadata(model),
        "complete": complete_metadata(),
        "crvae_tf_version": crvae_tf.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra_metadata or {}),
        "operative_config": operative_config,
    }
    tmp = os.path.join(export_dir, f"{TMP_PREFIX}{version}-{uuid.uuid4().hex}")
    try:
        module = build_serving_module(model, metadata)
        with NoCudnn(model):
            save(module, tmp)
        ops = check_serving_graph(tmp)
        os.makedirs(os.path.join(tmp, METADATA_DIR), exist_ok=True)
        # Plain writes (mode from the umask, readable by a serving container's user): the whole folder is
        # published by one rename below, so the files need no atomicity of their own.
        for name, text in (
            (METADATA_FILE, json.dumps(metadata, indent=2, sort_keys=True)),
            (OPERATIVE_CONFIG_FILE, operative_config),
        ):
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        publish(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Export(final, version, metadata, dict(ops))


def export_run(
    model_dir: str, export_dir: str, checkpoint="latest", gin_bindings=(), overwrite: bool = False
) -> Export:
    """Rebuilds a run (`runs.load_run`: its operative config + `gin_bindings`), restores `checkpoint`
    ('latest', 'best' or a step) and exports it as `export_dir/<training step>/` (`export_model`).

    `dataset.download = False` is bound before `gin_bindings`: the run's data must be local (or prepared for tfds).
    """
    # The image shape comes from run.json; only a run written before it existed loads its dataset for it, and
    # export never waits on a download (tfds retries for minutes).
    try:
        run = runs.load_run(model_dir, checkpoint=checkpoint, gin_bindings=["dataset.download = False", *gin_bindings])
    except data_lib.DataUnavailableError as error:
        raise data_lib.DataUnavailableError(
            f"{error} (This run predates run.json, so export loads the run's dataset to learn the image shape: "
            "point it at a local copy with --gin_bindings=\"dataset.local_path='/path/to/data'\".)"
        ) from error
    with open(os.path.join(model_dir, "operative_config.gin")) as f:
        operative_config = f.read()
    extra = {
        "checkpoint": os.path.abspath(run.checkpoint_path),
        "model_dir": os.path.abspath(model_dir),
        "train_seed": run.seed,
        "gin_bindings": list(gin_bindings),
    }
    return export_model(
        run.model, export_dir, run.step, operative_config=operative_config, extra_metadata=extra, overwrite=overwrite
    )
