r"""Exports a trained run as a TF Serving SavedModel: EXPORT_DIR/<training step>/, written atomically.

    python -m crvae_tf.export --model_dir=runs/quickstart --export_dir=/srv/models/crvae
    python -m crvae_tf.export --model_dir=runs/mnist_crvae --export_dir=/srv/models/crvae --checkpoint=best \
        --gin_bindings="dataset.local_path='../shared/data/mnist/mnist.npz'"

The model is rebuilt from the run's operative config (+ --gin_bindings), the checkpoint restored, and the
signatures `serving_default` (z -> images), `sample` (num, seed -> images, z), `encode` (images -> loc, scale),
`reconstruct` (images -> images), `traverse` / `traverse_images` (z or images, time_step, num_points, seed -> one
time step moved along a line) and `complete` (images, mask, steps, seed -> completed images, z) written with metadata
(training step, latent shape, time-step slices, completion settings, pixel ranges, operative config). The
contract, the docker command and request examples are in export/README.md; the library is
`crvae_tf.serving.export_lib`. The last line of stdout is one line of JSON: path, version, signatures. Errors are
one line on stderr with a distinct exit status (`crvae_tf.cli`; --verbose shows the traceback). One export at a time
per EXPORT_DIR (its lock, `.export.lock`); temporary folders left by a killed export are removed at the next one.
"""

from crvae_tf import startup

startup.quiet_tensorflow()

import json
import os

from absl import app
from absl import flags

from crvae_tf import cli
from crvae_tf import runs
from crvae_tf.serving import export_lib

# --model_dir, --gin_bindings and --checkpoint mean the same as in crvae_tf.train / crvae_tf.evaluate;
# allow_override lets the binaries be imported into one process (the tests), whichever comes first.
VERBOSE = flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)
MODEL_DIR = flags.DEFINE_string("model_dir", None, "The training run's directory.", allow_override=True)
BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings",
    [],
    "Gin bindings applied after the run's config, e.g. "
    "\"dataset.local_path='/path/mnist.npz'\" when the run's data moved.",
    allow_override=True,
)
CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    "latest",
    "'latest', 'best' (the best validation score: IWAE_5, or the adversarial family's lowest loss) or a step number.",
    allow_override=True,
)
EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "TF Serving's base path for this model: the export is written to EXPORT_DIR/<training step>/."
)
OVERWRITE = flags.DEFINE_boolean("overwrite", False, "Replace an existing EXPORT_DIR/<step> (atomic swap).")


def _checkpoint_value(text: str):
    try:
        return runs.checkpoint_value(text)
    except ValueError as error:
        raise app.UsageError(f"--checkpoint: {error}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Pass everything as --flags (see --helpfull).")
    if not MODEL_DIR.value:
        raise app.UsageError("--model_dir is required: the training run to export.")
    if not EXPORT_DIR.value:
        raise app.UsageError("--export_dir is required: TF Serving's base path for this model (versions go below it).")
    checkpoint = _checkpoint_value(CHECKPOINT.value)
    if not os.path.isdir(MODEL_DIR.value):
        raise NotADirectoryError(
            f"--model_dir={MODEL_DIR.value} is not a directory (paths are relative to {os.getcwd()})."
        )
    result = export_lib.export_run(
        MODEL_DIR.value,
        EXPORT_DIR.value,
        checkpoint=checkpoint,
        gin_bindings=list(BINDINGS.value),
        overwrite=OVERWRITE.value,
    )
    print(
        json.dumps(
            {
                "path": result.path,
                "version": result.version,
                "signatures": list(export_lib.SIGNATURES),
                "latent_shape": result.metadata["latent_shape"],
                "image_shape": result.metadata["image_shape"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    cli.run(main, flags.FLAGS, lambda: cli.LoggingOptions(VERBOSE.value, bool(flags.FLAGS["verbosity"].present)))
