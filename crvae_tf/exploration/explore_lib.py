"""The exploration binary's library (`python -m crvae_tf.explore`): each mode as a function of a loaded run that
writes PNG grids under `model_dir/explore/` and returns a JSON-serialisable summary. Gin-free.

* `explore_empirical_prior`: fit (or reuse) the empirical prior of paper Fig. 2(h) on the run's training
  split and decode paired samples from it and from N(0, I) (`empirical_prior`).
* `explore_view`: one disentangling view of paper Sec. 4.4 (`progressive`, `interpolate`, `style`, `manifold`;
  Fig. 5, S2, S4, S5), rendered by `crvae_tf.exploration.views`.
"""

import os

from absl import logging
import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import data as data_lib
from crvae_tf import runs
from crvae_tf.exploration import empirical_prior as prior_lib
from crvae_tf.exploration import views

EXPLORE_DIR = "explore"
# Images per encoder call when fitting. Fixed (not a flag): with dynamic binarization the evaluation
# pipeline's noise depends on the batch index, so a fixed batch size keeps a run's prior reproducible.
FIT_BATCH_SIZE = 256
# Latents per decoder call when rendering the grids.
DECODE_BATCH_SIZE = 256


def fit_or_load_prior(run: runs.Run, model_dir: str, max_images=None):
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
    run = runs.load_run(model_dir, checkpoint, gin_bindings)
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


def explore_view(model_dir: str, mode: str, checkpoint="latest", gin_bindings=(), **options) -> dict:
    """Loads the run at `checkpoint` and renders the view `mode` (one of `views.VIEWS`) into `model_dir/explore/`.

    Args:
      options: `views.view_latents`'s keyword arguments (time_step, num_samples, num_points, seed, source,
        image_indices).

    Returns:
      The JSON-able summary the binary prints (`views.render_view`).
    """
    if mode not in views.VIEWS:
        raise views.ViewArgumentError(f"--mode={mode!r} is not a view; the views are {list(views.VIEWS)}.")
    run = runs.load_run(model_dir, checkpoint, gin_bindings)
    return views.render_view(run, model_dir, mode, **options)
