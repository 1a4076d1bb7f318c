r"""Explores the latent space of a trained run; writes what it finds next to the run.

    python -m crvae_tf.explore --model_dir=runs/mnist_cvae --mode=empirical_prior \
        [--checkpoint=latest|best|STEP] [--num_samples=64] [--seed=0] [--max_images=N] [--gin_bindings=...]

Modes (only `empirical_prior` for now):

* `empirical_prior`: the "empirical cVAE" of paper Sec. 3, Fig. 2(h). Fits one MVN per latent channel,
  N(mu_k, Sigma_k), to posterior samples z^n ~ q(z | x_n), one per image of the run's TRAINING split
  (never the test split), binarized exactly as the run's evaluation pipeline does (`data.make_dataset(...,
  training=False)`), with posterior noise from the run's `train.seed` (`crvae_tf.exploration.empirical_prior`). The
  prior is saved with the model and reused by later calls for the same checkpoint step and image count.
  Then decodes `--num_samples` latents from it and the same number from the standard-normal prior, on
  paired noise: the standard sample is eps, the empirical one A eps + mu, eps from `--seed`.
  Needs a convolutional latent (cVAE `conv`, `block_fc`, `channel_recurrent`); the FC VAE is rejected.

Outputs:
    model_dir/empirical_prior/step<step>.npz           the fitted prior + metadata (EmpiricalPrior.load)
    model_dir/explore/empirical_prior-step<step>.png   Bernoulli means of the empirical-prior samples
    model_dir/explore/standard_prior-step<step>.png    the same for N(0, I)
The last stdout line is a one-line JSON summary (paths, step, num_images, whether the prior was reused).

The run is rebuilt with `runs.load_run` from its saved gin config; `--gin_bindings` override it
(e.g. `dataset.local_path=...` when the data moved).
"""

from crvae_tf import startup

startup.quiet_tensorflow()

import json
import os

from absl import app
from absl import flags

from crvae_tf import cli
from crvae_tf.exploration import explore_lib

MODES = ("empirical_prior",)

# --model_dir, --gin_bindings and --checkpoint mean the same in every crvae_tf binary; allow_override lets
# two binaries that define them live in one process (the tests import several).
flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)  # read by cli.run
MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "The run directory (written by python -m crvae_tf.train).", allow_override=True
)
BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings",
    [],
    "Gin bindings applied after the run's saved config, e.g. \"dataset.local_path='mnist.npz'\".",
    allow_override=True,
)
CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    "latest",
    "'latest', 'best' (the best validation score: IWAE_5, or the adversarial family's lowest loss) or a step.",
    allow_override=True,
)
MODE = flags.DEFINE_string("mode", "empirical_prior", f"What to explore, one of {list(MODES)}.")
NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Latents decoded from each prior.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the prior samples (the same eps for both priors).", allow_override=True)
MAX_IMAGES = flags.DEFINE_integer(
    "max_images", None, "Fit on the first N training images (default: all).", allow_override=True
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Use --model_dir/--mode/--checkpoint/...")
    if MODE.value not in MODES:
        raise app.UsageError(f"--mode={MODE.value!r} is not a mode of this binary; the modes are {list(MODES)}.")
    if not MODEL_DIR.value:
        raise app.UsageError("--model_dir is required: the run directory written by python -m crvae_tf.train.")
    if not os.path.isdir(MODEL_DIR.value):
        raise NotADirectoryError(
            f"--model_dir={MODEL_DIR.value} is not a directory (paths are relative to {os.getcwd()})."
        )
    if MAX_IMAGES.value is not None and MAX_IMAGES.value < 2:
        raise app.UsageError(f"--max_images={MAX_IMAGES.value} must be >= 2 (an unbiased covariance needs N >= 2).")
    try:
        summary = explore_lib.explore_empirical_prior(
            MODEL_DIR.value, CHECKPOINT.value, NUM_SAMPLES.value, SEED.value, MAX_IMAGES.value, BINDINGS.value
        )
    except ValueError as error:
        if "needs a convolutional latent" in str(error):
            raise cli.UnsupportedRunError(str(error)) from error
        raise
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    cli.run(main, flags.FLAGS)
