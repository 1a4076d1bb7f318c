r"""Trains a model from gin recipes; reruns with the same --model_dir resume from the latest checkpoint.

    python -m crvae_tf.train --gin_file=gin/mnist_crvae.gin --model_dir=/tmp/crvae \
        --gin_bindings="dataset.local_path='../shared/data/mnist/mnist.npz'" \
        --gin_bindings="train.max_steps=300"

Flags are only --gin_file (repeatable), --gin_bindings (repeatable) and --model_dir; every
hyperparameter lives in gin.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging

from crvae_tf import runs
from crvae_tf.training import loop

FLAGS = flags.DEFINE_multi_string("gin_file", [], "Gin recipe file(s), applied in order.")
BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], 'Gin bindings that override the files, e.g. "train.max_steps=300".'
)
MODEL_DIR = flags.DEFINE_string("model_dir", None, "Output directory; resumed when it holds a checkpoint.")
flags.mark_flag_as_required("model_dir")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Use --gin_file/--gin_bindings/--model_dir.")
    for path in FLAGS.value:
        if not os.path.exists(path):
            raise app.UsageError(f"--gin_file={path} does not exist (paths are relative to {os.getcwd()}).")
    runs.parse_gin(FLAGS.value, BINDINGS.value)
    result = loop.train(MODEL_DIR.value)
    logging.info("Finished at step %d; checkpoint %s", result["step"], result["checkpoint"])
    print(f"Finished at step {result['step']}: train {result['train']}, validation {result['validation']}")


if __name__ == "__main__":
    app.run(main)
