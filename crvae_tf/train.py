r"""Trains a model from gin recipes; reruns with the same --model_dir resume from the latest checkpoint.

    python -m crvae_tf.train --gin_file=gin/mnist_crvae.gin --model_dir=/tmp/crvae \
        --gin_bindings="dataset.local_path='../shared/data/mnist/mnist.npz'" \
        --gin_bindings="train.max_steps=300"

Flags are only --gin_file (repeatable), --gin_bindings (repeatable), --model_dir and --verbose (tracebacks and INFO
logs); every hyperparameter lives in gin. One trainer per --model_dir (a second one exits 6 naming the first); a
run keeps the configuration it started with: a resume may change train.max_steps, data paths and the logging,
validation and checkpoint cadence (recorded in run.json), anything else exits 7 before any file is written.
Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and exits 130 / 143; the same command
resumes. Exit statuses: `crvae_tf.cli`.
"""

from crvae_tf import startup

startup.quiet_tensorflow()

import os

from absl import app
from absl import flags
from absl import logging

from crvae_tf import cli
from crvae_tf import runs
from crvae_tf.training import console
from crvae_tf.training import loop

VERBOSE = flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)
FLAGS = flags.DEFINE_multi_string("gin_file", [], "Gin recipe file(s), applied in order.")
BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], 'Gin bindings that override the files, e.g. "train.max_steps=300".'
)
MODEL_DIR = flags.DEFINE_string("model_dir", None, "Output directory; resumed when it holds a checkpoint.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Use --gin_file/--gin_bindings/--model_dir.")
    if not MODEL_DIR.value:
        raise app.UsageError("--model_dir is required: the run's output directory (resumed when it holds one).")
    for path in FLAGS.value:
        if not os.path.isfile(path):
            raise app.UsageError(f"--gin_file={path} is not a file (paths are relative to {os.getcwd()}).")
    runs.parse_gin(FLAGS.value, BINDINGS.value)
    result = loop.train(MODEL_DIR.value)
    logging.info("Finished at step %d; checkpoint %s", result["step"], result["checkpoint"])
    print(console.summary(result), flush=True)


if __name__ == "__main__":
    cli.run(main, flags.FLAGS, lambda: cli.LoggingOptions(VERBOSE.value, bool(flags.FLAGS["verbosity"].present)))
