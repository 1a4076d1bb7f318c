r"""Explores the latent space of a trained run; writes what it finds next to the run.

    python -m crvae_tf.explore --model_dir=runs/mnist_cvae --mode=empirical_prior \
        [--checkpoint=latest|best|STEP] [--num_samples=64] [--seed=0] [--max_images=N] [--gin_bindings=...]

Modes (only `empirical_prior` for now):

* `empirical_prior`: the "empirical cVAE" of paper Sec. 3, Fig. 2(h). Fits one MVN per latent channel,
  N(mu_k, Sigma_k), to posterior samples z^n ~ q(z | x_n), one per image of the run's TRAINING split
  (never the test split), binarized exactly as the run's evaluation pipeline does (`data.make_dataset(...,
  training=False)`), with posterior noise from the run's `train.seed` (`crvae_tf.empirical_prior`). The
  prior is saved with the model and reused by later calls for the same checkpoint step and image count.
  Then decodes `--num_samples` latents from it and the same number from the standard-normal prior, on
  paired noise: the standard sample is eps, the empirical one A eps + mu, eps from `--seed`.
  Needs a convolutional latent (cVAE `conv`, `block_fc`, `channel_recurrent`); the FC VAE is rejected.

Outputs:
    model_dir/empirical_prior/step<step>.npz           the fitted prior + metadata (EmpiricalPrior.load)
    model_dir/explore/empirical_prior-step<step>.png   Bernoulli means of the empirical-prior samples
    model_dir/explore/standard_prior-step<step>.png    the same for N(0, I)
The last stdout line is a one-line JSON summary (paths, step, num_images, whether the prior was reused).

The run is rebuilt with `train_lib.load_run` from its saved gin config; `--gin_bindings` override it
(e.g. `dataset.local_path=...` when the data moved).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import data as data_lib
from crvae_tf import empirical_prior as prior_lib
from crvae_tf import train_lib

MODES = ("empirical_prior",)
EXPLORE_DIR = "explore"
# Images per encoder call when fitting. Fixed (not a flag): with dynamic binarization the evaluation
# pipeline's noise depends on the batch index, so a fixed batch size keeps a run's prior reproducible.
FIT_BATCH_SIZE = 256
# Latents per decoder call when rendering the grids.
DECODE_BATCH_SIZE = 256

# --model_dir, --gin_bindings and --checkpoint mean the same in every crvae_tf binary; allow_override lets
# two binaries that define them live in one process (the tests import several).
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
    "checkpoint", "latest", "'latest', 'best' (best validation IWAE_k) or a step.", allow_override=True
)
MODE = flags.DEFINE_string("mode", "empirical_prior", f"What to explore, one of {list(MODES)}.")
NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Latents decoded from each prior.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the prior samples (the same eps for both priors).", allow_override=True)
MAX_IMAGES = flags.DEFINE_integer(
    "max_images", None, "Fit on the first N training images (default: all).", allow_override=True
)


def fit_or_load_prior(run: train_lib.Run, model_dir: str, max_images=None):
    """The empirical prior of `run` at its checkpoint step, reused from disk when it matches, else fitted.

    A saved `model_dir/empirical_prior/step<step>.npz` is reused when it was fitted to the same latent
    shape, on the training split, with the run's seed and the same number of images; otherwise the prior
    is fitted on the first `max_images` training images and saved (atomically) over it.

    Returns:
      (EmpiricalPrior, path, reused: bool).
    """
    latent_shape = prior_lib.latent_shape_of(run.model)  # rejects the FC head before any work
    images = run.splits.train
    if max_images is not None:
        if int(max_images) < 2:
            raise ValueError(f"--max_images={max_images} must be >= 2 (an unbiased covariance needs N >= 2).")
        images = images[: int(max_images)]
    path = prior_lib.prior_path(model_dir, run.step)
    if os.path.isfile(path):
        saved = prior_lib.EmpiricalPrior.load(path)
        wanted = (latent_shape, len(images), run.seed, "train")
        found = (saved.latent_shape, saved.num_images, saved.seed, saved.split)
        if found == wanted:
            logging.info("Reusing the empirical prior %s (%d images).", path, saved.num_images)
            return saved, path, True
        logging.info(
            "Refitting %s: it was fitted with (latent shape, images, seed, split) = %s, now %s.", path, found, wanted
        )
    dataset = data_lib.make_dataset(
        images, batch_size=FIT_BATCH_SIZE, binarization=run.splits.binarization, seed=run.seed, training=False
    )
    prior = prior_lib.EmpiricalPrior.fit(
        run.model, dataset, seed=run.seed, step=run.step, split="train", source=run.checkpoint_path
    )
    prior.save(path)
    logging.info(
        "Fitted the empirical prior on %d training images (max jitter %.3g); saved %s.",
        prior.num_images,
        float(prior.jitter.max()),
        path,
    )
    return prior, path, False


def _decode_grid(model, z, path):
    means = np.concatenate(
        [
            model.generate(tf.constant(z[start : start + DECODE_BATCH_SIZE], tf.float32)).numpy()
            for start in range(0, len(z), DECODE_BATCH_SIZE)
        ]
    )
    artifacts.write_png(path, artifacts.image_grid(means))
    return path


def explore_empirical_prior(
    model_dir: str, checkpoint="latest", num_samples: int = 64, seed: int = 0, max_images=None, gin_bindings=()
) -> dict:
    """Fits (or reuses) the run's empirical prior and writes sample grids from it and from N(0, I).

    Returns:
      The JSON-able summary the binary prints.
    """
    if int(num_samples) < 1:
        raise ValueError(f"--num_samples={num_samples} must be >= 1.")
    if int(seed) < 0:
        raise ValueError(f"--seed={seed} must be >= 0.")
    run = train_lib.load_run(model_dir, checkpoint, gin_bindings)
    prior, prior_file, reused = fit_or_load_prior(run, model_dir, max_images)
    eps = prior_lib.standard_normal_latents(num_samples, prior.latent_dim, seed)
    folder = os.path.join(model_dir, EXPLORE_DIR)
    grids = {
        kind: _decode_grid(run.model, z, os.path.join(folder, f"{kind}-step{run.step}.png"))
        for kind, z in (("empirical_prior", prior.transform(eps)), ("standard_prior", eps))
    }
    return {
        "mode": "empirical_prior",
        "model_dir": model_dir,
        "step": run.step,
        "checkpoint": run.checkpoint_path,
        "prior": prior_file,
        "reused_prior": reused,
        "num_images": prior.num_images,
        "split": prior.split,
        "latent_shape": list(prior.latent_shape),
        "jitter_max": float(prior.jitter.max()),
        "num_samples": int(num_samples),
        "seed": int(seed),
        "empirical_prior_png": grids["empirical_prior"],
        "standard_prior_png": grids["standard_prior"],
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Use --model_dir/--mode/--checkpoint/...")
    if MODE.value not in MODES:
        raise app.UsageError(f"--mode={MODE.value!r} is not a mode of this binary; the modes are {list(MODES)}.")
    if not MODEL_DIR.value:
        raise app.UsageError("--model_dir is required: the run directory written by python -m crvae_tf.train.")
    summary = explore_empirical_prior(
        MODEL_DIR.value, CHECKPOINT.value, NUM_SAMPLES.value, SEED.value, MAX_IMAGES.value, BINDINGS.value
    )
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    app.run(main)
