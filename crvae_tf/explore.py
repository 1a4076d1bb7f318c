r"""Explores the latent space of a trained run; writes what it finds next to the run.

    python -m crvae_tf.explore --model_dir=runs/mnist_cvae --mode=empirical_prior \
        [--checkpoint=latest|best|STEP] [--num_samples=64] [--seed=0] [--max_images=N] [--gin_bindings=...]
    python -m crvae_tf.explore --model_dir=runs/quickstart --mode=progressive|interpolate|style|manifold \
        [--time_step=T] [--num_samples=N] [--num_points=P] [--source=prior|posterior] [--image_indices=i,j,..] \
        [--seed=0] [--checkpoint=...] [--gin_bindings=...]
    python -m crvae_tf.explore --model_dir=runs/celeba64 --mode=complete --mask=right_half|eyes|mouth|MASK.png \
        [--landmarks=list_landmarks_align_celeba.txt] [--completion_steps=N] [--completion_learning_rate=LR] \
        [--gamma=G] [--tau=T] [--init=posterior_mean|posterior_sample|prior] [--num_images=64] [--seed=0] \
        [--checkpoint=...]
    python -m crvae_tf.explore --model_dir=runs/quickstart --mode=disentangle [--num_images=4096] [--seed=0] \
        [--attributes=list_attr_celeba_000001-010000.npz] [--checkpoint=...]

Modes (`MODES`):

* `empirical_prior`: the "empirical cVAE" of paper Sec. 3, Fig. 2(h). Fits one MVN per latent channel,
  N(mu_k, Sigma_k), to posterior samples z^n ~ q(z | x_n), one per image of the run's TRAINING split
  (never the test split), binarized exactly as the run's evaluation pipeline does (`data.make_dataset(...,
  training=False)`), with posterior noise from the run's `train.seed` (`crvae_tf.exploration.empirical_prior`). The
  prior is saved with the model and reused by later calls for the same checkpoint step and image count.
  Then decodes `--num_samples` latents from it and the same number from the standard-normal prior, on
  paired noise: the standard sample is eps, the empirical one A eps + mu, eps from `--seed`.
  Needs a convolutional latent (cVAE `conv`, `block_fc`, `channel_recurrent`); the FC VAE is rejected.

* The disentangling views of paper Sec. 4.4 (`crvae_tf.exploration.views`, latents from
  `crvae_tf.models.latent_steps`), for both families and every latent head. Time step t is the contiguous slice
  t of z (the crVAE's and bcVAE's own time steps; for the FC VAE and the cVAE, channel slice t of T = 8):
  - `progressive` (Fig. 5a): from z = 0 add z_t ~ N(0, I) for t = 1..T, keeping the earlier steps; one row per
    sample (`--num_samples`, default 8), T + 1 columns.
  - `interpolate` (Fig. 5b-d, S4): `--num_points` (default 8) points from z_t to one new z~_t shared by every
    row, the other steps fixed.
  - `style` (Fig. 5e-h, S5): the sample, then z_t redrawn `--num_points` times (draw s shared by the rows).
  - `manifold` (Fig. S2, Eq. S1): a `--num_points` x `--num_points` grid across the posterior samples of four
    validation images (`--image_indices`, default the first four), corners top left, top right, bottom left,
    bottom right.
  `interpolate` / `style` take `--time_step` (1..T; 0, the default: every step, rows sample-major, default 2
  samples) and `--source`: `prior` (rows from N(0, I), `--seed`) or `posterior` (posterior means of validation
  images, `--image_indices` or the first `--num_samples`). Validation images are binarized as the evaluation
  pipeline binarizes them.

* `complete` (paper Sec. 4.3, Eq. 5, Fig. 4; `crvae_tf.exploration.completion_lib`): image completion of the first
  `--num_images` validation images under `--mask` (1 = observed; `crvae_tf.data.masks`: the right half, the
  eyes, the mouth of the aligned face crop, or a mask image, white = observed) by `--completion_steps` Adam steps
  on z of ||m (x - gen z)||^2 + gamma/2 ||z||^2 + tau log(1 - D(gen z)) from the posterior mean of the occluded
  image (`--init`). The printed Eq. 5's +gamma log N(z) would push z away from the prior; the negative
  log-density is used. `--tau` > 0 only for the adversarial family. Reports masked-region PSNR / L1 of the
  completion and of two trivial fills (mean training face; reconstruction of the occluded image).
  `--landmarks=PATH` (CelebA's `list_landmarks_align_celeba.txt`) with `--mask=eyes|mouth` gives each face its own
  box from its own landmarks instead of the template's fixed box (files `complete-<eyes|mouth>_landmarks-...`);
  it needs a CelebA run read from a folder of image files (the cache records each row's file name). A CelebA cache
  written before it recorded names is refused with the folder to delete (the next run rebuilds it). The JSON's
  `mask_source` records the template, the mask image, or the landmark file's path, sha256 and every face's box.

* `disentangle` (issue #14 B1; `crvae_tf.evaluation.disentanglement_lib`): which time step carries which factor of
  variation. One posterior sample per image (from `--seed`) of the first `--num_images` (4096) training images fits
  linear probes of each factor from each time step z_t alone and from all of z; the first `--num_images` validation
  images score them. Writes
  the factor-by-time-step tables, group MIG / SAP / DCI (`crvae_tf.evaluation.disentanglement`) and heat maps.
  Factors: the sprites' own (shape, scale, rotation modulo the shape's symmetry, x, y), or for a CelebA run the 40
  attributes of `--attributes` (an .npz with attr, filenames, attr_names), matched to the images by file name.
  For the sprites also a factor grid: each factor swept in ground-truth renderings, and their reconstructions.

Outputs:
    model_dir/empirical_prior/step<step>.npz           the fitted prior + metadata (EmpiricalPrior.load)
    model_dir/explore/empirical_prior-step<step>.png   Bernoulli means of the empirical-prior samples
    model_dir/explore/standard_prior-step<step>.png    the same for N(0, I)
    model_dir/explore/<view>-[<source>-t<t>|all-]seed<seed>-step<step>.png   a view's grid (manifold: also
                                                       ...-inputs.png, the four validation images)
    model_dir/tb/explore/                              views' and completion grids as TensorBoard images
    model_dir/explore/complete-<mask>-step<step>.png   rows original | occluded | reconstruction | completed
    model_dir/explore/complete-<mask>-step<step>.json  settings, metrics (masked PSNR / L1), step, checkpoint
    model_dir/explore/disentangle-step<step>.{json,md,png}  metrics, factor-by-time-step tables, heat maps
    model_dir/explore/factor_grid-step<step>.png       sprites: factor sweeps (truth) and their reconstructions
The last stdout line is a one-line JSON summary (paths, step, grid size; the prior's image count and whether it was
reused; a view's time steps, their slices of z and the validation images used).

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
from crvae_tf.data import masks
from crvae_tf.evaluation import disentanglement_lib
from crvae_tf.exploration import completion_lib
from crvae_tf.exploration import explore_lib
from crvae_tf.exploration import views
from crvae_tf.models import completion

MODES = ("empirical_prior",) + views.VIEWS + ("complete", "disentangle")
VIEW_FLAGS = ("time_step", "num_points", "source", "image_indices")
COMPLETION_FLAGS = (
    "mask",
    "landmarks",
    "completion_steps",
    "completion_learning_rate",
    "gamma",
    "tau",
    "init",
    "num_images",
)

# --model_dir, --gin_bindings and --checkpoint mean the same in every crvae_tf binary; allow_override lets
# two binaries that define them live in one process (the tests import several).
VERBOSE = flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)
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
NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples",
    None,
    "empirical_prior: latents decoded from each prior (default 64); views: rows (samples; default 8, or 2 when "
    "every time step is shown).",
)
SEED = flags.DEFINE_integer(
    "seed", 0, "Seed of every draw (prior samples, z~_t, style draws, posterior noise).", allow_override=True
)
TIME_STEP = flags.DEFINE_integer(
    "time_step", 0, "interpolate/style: the time step t in 1..T whose z_t changes; 0: every time step."
)
NUM_POINTS = flags.DEFINE_integer(
    "num_points", 8, "interpolate: points per row (>= 2); style: redraws of z_t per row; manifold: grid side (>= 2)."
)
SOURCE = flags.DEFINE_enum(
    "source", "prior", list(views.SOURCES), "interpolate/style: rows from N(0, I) or validation posterior means."
)
IMAGE_INDICES = flags.DEFINE_list(
    "image_indices", None, "Validation images: the manifold's four corners, or the rows of --source=posterior."
)
MAX_IMAGES = flags.DEFINE_integer(
    "max_images", None, "Fit on the first N training images (default: all).", allow_override=True
)
MASK = flags.DEFINE_string(
    "mask", "right_half", f"complete: {list(masks.MASK_NAMES)} or a mask image (white = observed, black = missing)."
)
LANDMARKS = flags.DEFINE_string(
    "landmarks",
    None,
    "complete, with --mask=eyes|mouth: CelebA's list_landmarks_align_celeba.txt; each face gets its own box from its "
    "landmarks (default: the fixed template box).",
)
COMPLETION_STEPS = flags.DEFINE_integer(
    "completion_steps", completion.DEFAULT_NUM_STEPS, "complete: Adam steps on z (0: the initial z only)."
)
COMPLETION_LEARNING_RATE = flags.DEFINE_float(
    "completion_learning_rate", completion.DEFAULT_LEARNING_RATE, "complete: Adam's learning rate on z."
)
GAMMA = flags.DEFINE_float(
    "gamma", completion.DEFAULT_GAMMA, "complete: weight of the prior penalty gamma/2 ||z||^2 (pixels in [0, 1])."
)
TAU = flags.DEFINE_float("tau", 0.0, "complete: weight of log(1 - D(gen z)); adversarial runs only.")
INIT = flags.DEFINE_enum(
    "init", "posterior_mean", list(completion.INITS), "complete: z_0 (posterior of the occluded image, or prior)."
)
NUM_IMAGES = flags.DEFINE_integer(
    "num_images",
    None,
    "complete: the first N validation images (default 64); disentangle: probes fitted on the first N training "
    f"images and scored on the first N validation images (default {disentanglement_lib.DEFAULT_NUM_IMAGES}).",
)
ATTRIBUTES = flags.DEFINE_string(
    "attributes",
    None,
    "disentangle, CelebA runs: the attribute .npz (attr, filenames, attr_names), e.g. "
    "list_attr_celeba_000001-010000.npz; the attributes are the factors.",
)


def _view_options() -> dict:
    """The views' keyword arguments from the flags (checked where a run is not needed to check them)."""
    if TIME_STEP.value < 0:
        raise app.UsageError(f"--time_step={TIME_STEP.value} must be >= 0 (0: every time step; else 1..T).")
    try:
        indices = None if IMAGE_INDICES.value is None else [int(i) for i in IMAGE_INDICES.value]
    except ValueError:
        raise app.UsageError(
            f"--image_indices={','.join(IMAGE_INDICES.value)} must be comma-separated integers, e.g. 0,5,9,12."
        ) from None
    return {
        "time_step": TIME_STEP.value or None,
        "num_samples": NUM_SAMPLES.value,
        "num_points": NUM_POINTS.value,
        "seed": SEED.value,
        "source": SOURCE.value,
        "image_indices": indices,
    }


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
    if NUM_SAMPLES.value is not None and NUM_SAMPLES.value < 1:
        raise app.UsageError(f"--num_samples={NUM_SAMPLES.value} must be >= 1.")
    if SEED.value < 0:
        raise app.UsageError(f"--seed={SEED.value} must be >= 0.")
    if MODE.value in views.VIEWS:
        if MAX_IMAGES.value is not None:
            raise app.UsageError(f"--max_images applies to --mode=empirical_prior only, not --mode={MODE.value}.")
        if ATTRIBUTES.value is not None:
            raise app.UsageError(f"--attributes applies to --mode=disentangle only, not --mode={MODE.value}.")
        try:
            summary = explore_lib.explore_view(
                MODEL_DIR.value, MODE.value, CHECKPOINT.value, BINDINGS.value, **_view_options()
            )
        except views.ViewArgumentError as error:
            raise app.UsageError(str(error)) from error
        print(json.dumps(summary), flush=True)
        return
    given = [f"--{name}" for name in VIEW_FLAGS if flags.FLAGS[name].present]
    if given:
        raise app.UsageError(
            f"{', '.join(given)}: only for the views {list(views.VIEWS)}, not for --mode={MODE.value}."
        )
    if MODE.value == "complete":
        _complete()
        return
    if MODE.value == "disentangle":
        _disentangle()
        return
    if ATTRIBUTES.value is not None:
        raise app.UsageError(f"--attributes applies to --mode=disentangle only, not --mode={MODE.value}.")
    given = [f"--{name}" for name in COMPLETION_FLAGS if flags.FLAGS[name].present]
    if given:
        raise app.UsageError(f"{', '.join(given)}: only for --mode=complete, not for --mode={MODE.value}.")
    if MAX_IMAGES.value is not None and MAX_IMAGES.value < 2:
        raise app.UsageError(f"--max_images={MAX_IMAGES.value} must be >= 2 (an unbiased covariance needs N >= 2).")
    num_samples = 64 if NUM_SAMPLES.value is None else NUM_SAMPLES.value
    try:
        summary = explore_lib.explore_empirical_prior(
            MODEL_DIR.value, CHECKPOINT.value, num_samples, SEED.value, MAX_IMAGES.value, BINDINGS.value
        )
    except ValueError as error:
        if "needs a convolutional latent" in str(error):
            raise cli.UnsupportedRunError(str(error)) from error
        raise
    print(json.dumps(summary), flush=True)


def _complete():
    given = [f"--{name}" for name in ("num_samples", "max_images", "attributes") if flags.FLAGS[name].present]
    if given:
        raise app.UsageError(f"{', '.join(given)}: not used by --mode=complete (it takes --num_images).")
    try:
        summary = completion_lib.explore_complete(
            MODEL_DIR.value,
            CHECKPOINT.value,
            mask=MASK.value,
            num_steps=COMPLETION_STEPS.value,
            learning_rate=COMPLETION_LEARNING_RATE.value,
            gamma=GAMMA.value,
            tau=TAU.value,
            init=INIT.value,
            num_images=64 if NUM_IMAGES.value is None else NUM_IMAGES.value,
            seed=SEED.value,
            gin_bindings=BINDINGS.value,
            landmarks=LANDMARKS.value,
        )
    except (completion_lib.CompletionSettingsError, masks.MaskError) as error:
        raise app.UsageError(str(error)) from error
    print(json.dumps(summary), flush=True)


def _disentangle():
    not_used = ("num_samples", "max_images") + tuple(name for name in COMPLETION_FLAGS if name != "num_images")
    given = [f"--{name}" for name in not_used if flags.FLAGS[name].present]
    if given:
        raise app.UsageError(
            f"{', '.join(given)}: not used by --mode=disentangle (it takes --num_images, --seed, --attributes)."
        )
    num_images = disentanglement_lib.DEFAULT_NUM_IMAGES if NUM_IMAGES.value is None else NUM_IMAGES.value
    try:
        summary = disentanglement_lib.explore_disentangle(
            MODEL_DIR.value,
            CHECKPOINT.value,
            BINDINGS.value,
            num_images=num_images,
            seed=SEED.value,
            attributes=ATTRIBUTES.value,
        )
    except disentanglement_lib.DisentangleSettingsError as error:
        raise app.UsageError(str(error)) from error
    except disentanglement_lib.NoFactorsError as error:
        raise cli.UnsupportedRunError(str(error)) from error
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    cli.run(main, flags.FLAGS, lambda: cli.LoggingOptions(VERBOSE.value, bool(flags.FLAGS["verbosity"].present)))
