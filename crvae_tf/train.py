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

`job.kind` (gin, `builders.job_kind`) chooses what is trained: 'model' (the default: the recipe's model,
`crvae_tf.training.loop`) or 'feature_net', the project's offline feature network for sample quality (a small
MNIST-digit or sprite-shape classifier, `crvae_tf.evaluation.feature_classifier`; its recipes bind it):

    python -m crvae_tf.train --gin_file=gin/feature_net/mnist.gin --model_dir=runs/feature_net_mnist \
        --gin_bindings="dataset.local_path='../shared/data/mnist/mnist.npz'"
    python -m crvae_tf.train --gin_file=gin/feature_net/sprites.gin --model_dir=runs/feature_net_sprites

It writes MODEL_DIR/feature_net.keras and MODEL_DIR/feature_net.json (the images from `dataset.*`, the classifier's
hyperparameters `feature_net.*`), never replacing an existing feature_net.keras (exit 5), and prints that JSON
(without the config) as the last line of stdout, INFO logs (one line per epoch) on stderr. Use it with

    python -m crvae_tf.evaluate --model_dir=RUN --metrics=fid,kid,is,classifier_accuracy \
        --gin_bindings="sample_quality.feature_network='classifier'" \
        --gin_bindings="sample_quality.feature_network_path='runs/feature_net_mnist/feature_net.keras'"
"""

from crvae_tf import startup

startup.quiet_tensorflow()

import json
import os

from absl import app
from absl import flags
from absl import logging
import gin

from crvae_tf import builders
from crvae_tf import cli
from crvae_tf import runs
from crvae_tf.evaluation import feature_classifier
from crvae_tf.training import console
from crvae_tf.training import loop

VERBOSE = flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)
FLAGS = flags.DEFINE_multi_string("gin_file", [], "Gin recipe file(s), applied in order.")
BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], 'Gin bindings that override the files, e.g. "train.max_steps=300".'
)
MODEL_DIR = flags.DEFINE_string("model_dir", None, "Output directory; resumed when it holds a checkpoint.")


def _model_job(model_dir: str) -> None:
    """The 'model' job: the recipe's model (`training.loop.train`), resumed when `model_dir` holds a checkpoint."""
    result = loop.train(model_dir)
    logging.info("Finished at step %d; checkpoint %s", result["step"], result["checkpoint"])
    print(console.summary(result), flush=True)


def _feature_net_job(model_dir: str) -> None:
    """The 'feature_net' job (module docstring)."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)  # one line per epoch
    settings = builders.feature_net_settings()
    feature_classifier.refuse_existing(model_dir)  # before the images are read
    splits = builders.build_dataset(seed=settings["seed"])
    info = feature_classifier.train_and_save(model_dir, settings, splits, config=gin.config_str())
    print(json.dumps({k: v for k, v in info.items() if k != "config"}), flush=True)


# What --model_dir receives, by `job.kind` (one entry per `builders.JOB_KINDS`).
JOBS = {"model": _model_job, "feature_net": _feature_net_job}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Use --gin_file/--gin_bindings/--model_dir.")
    if not MODEL_DIR.value:
        raise app.UsageError("--model_dir is required: the run's output directory (resumed when it holds one).")
    for path in FLAGS.value:
        if not os.path.isfile(path):
            raise app.UsageError(f"--gin_file={path} is not a file (paths are relative to {os.getcwd()}).")
    runs.parse_gin(FLAGS.value, BINDINGS.value)
    JOBS[builders.job_kind()](MODEL_DIR.value)


if __name__ == "__main__":
    cli.run(main, flags.FLAGS, lambda: cli.LoggingOptions(VERBOSE.value, bool(flags.FLAGS["verbosity"].present)))
