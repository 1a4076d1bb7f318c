"""The disentangling views of paper Sec. 4.4 (Fig. 5, S2, S4, S5, Eq. S1) as image grids of a trained run. Gin-free.

Each view builds latents with `crvae_tf.models.latent_steps` (where the time steps are, the constructions and their
math), decodes them with `model.generate` (images in [0, 1] for both families) in batches of `DECODE_BATCH_SIZE`,
and writes one PNG grid under `model_dir/explore/` and the same grid as a TensorBoard image (tag
`explore/<name>`, at the checkpoint's step) to `model_dir/tb/explore`. Grids (D = latent_dim, T = time steps;
for the FC VAE and the cVAE "time step t" is channel slice t of `latent_steps.time_steps`):

    progressive  (Fig. 5a)        rows: samples; columns k = 0..T: z_1..z_k of one prior draw, the rest 0
    interpolate  (Fig. 5b-d, S4)  rows: samples; columns: P points from z_t to one z~_t shared by all rows
    style        (Fig. 5e-h, S5)  rows: samples; column 0: the sample, columns 1..S: z_t redrawn (draw s shared)
    manifold     (Fig. S2, Eq. S1) P x P grid across the posterior samples of four validation images (corners:
                                  top left, top right, bottom left, bottom right), plus a strip of the four images

With `time_step=None`, `interpolate` and `style` run every t: the rows are (sample, t) pairs, sample-major (row
i*T + t - 1). `source='prior'` takes the rows' base z from N(0, I); `source='posterior'` takes the posterior means of
validation images. Validation images are binarized exactly as the run's evaluation pipeline does
(`data.make_dataset(..., training=False)` with the run's seed and batches of `IMAGE_BATCH_SIZE`), mapped to the
model's `input_range` ([-1, 1] for the adversarial family) before `model.encode`. Every draw is a pure function of
`seed`; posterior samples use eps from `np.random.default_rng([seed, POSTERIOR_TAG])`.

Argument errors are `ViewArgumentError` (a ValueError naming the binary's flag), raised before any decoding.
"""

import os

import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import data as data_lib
from crvae_tf.architectures import heads
from crvae_tf.models import latent_steps

VIEWS = ("progressive", "interpolate", "style", "manifold")
SOURCES = ("prior", "posterior")
EXPLORE_DIR = "explore"
TENSORBOARD_DIR = os.path.join("tb", "explore")
DECODE_BATCH_SIZE = 256
IMAGE_BATCH_SIZE = 256  # fixed: dynamic binarization's noise depends on the batch index
POSTERIOR_TAG = 205
MAX_GRID_IMAGES = 4096  # one grid decodes at most this many latents
DEFAULT_ROWS = {"progressive": 8, "interpolate": 8, "style": 8}
DEFAULT_ROWS_EVERY_STEP = 2  # rows per sample when every time step is shown
MANIFOLD_CORNERS = 4


class ViewArgumentError(ValueError):
    """An argument of a view (a flag of `python -m crvae_tf.explore`) is out of range for this run."""


# --------------------------------------------------------------------------------------------- model helpers


def decode(model, z) -> np.ndarray:
    """`model.generate` of `[N, D]` latents in batches: float32 `[N, H, W, C]` in [0, 1]."""
    z = np.asarray(z, np.float32)
    return np.concatenate(
        [
            np.asarray(model.generate(tf.constant(z[start : start + DECODE_BATCH_SIZE])), np.float32)
            for start in range(0, len(z), DECODE_BATCH_SIZE)
        ]
    )


def posterior(model, images):
    """Posterior parameters of images in [0, 1] (mapped to `model.input_range` first): (loc, log_variance), each
    float32 `[N, D]`, in evaluation mode."""
    lo, hi = (float(v) for v in getattr(model, "input_range", (0.0, 1.0)))
    pixels = lo + (hi - lo) * np.asarray(images, np.float32)
    locs, log_variances = [], []
    for start in range(0, len(pixels), IMAGE_BATCH_SIZE):
        loc, log_variance = model.encode(tf.constant(pixels[start : start + IMAGE_BATCH_SIZE]), training=False)
        locs.append(np.asarray(loc, np.float32))
        log_variances.append(np.asarray(log_variance, np.float32))
    return np.concatenate(locs), np.concatenate(log_variances)


def posterior_samples(model, images, seed: int) -> np.ndarray:
    """z = loc + exp(log_variance / 2) eps, eps ~ N(0, I) from `np.random.default_rng([seed, POSTERIOR_TAG])`:
    one posterior sample per image, float32 `[N, D]`."""
    loc, log_variance = posterior(model, images)
    eps = np.random.default_rng([int(seed), POSTERIOR_TAG]).standard_normal(loc.shape)
    return (loc + np.exp(0.5 * log_variance.astype(np.float64)) * eps).astype(np.float32)


def evaluation_images(splits, indices, seed: int) -> np.ndarray:
    """Validation images `indices`, binarized as the evaluation pipeline binarizes them: float32 `[N, H, W, C]`.

    Streams `make_dataset(validation[:max(indices) + 1], training=False)` in batches of `IMAGE_BATCH_SIZE`; batch i
    of a prefix is batch i of the whole split (same images, same binarization seed), so image k is exactly the one
    the run's evaluation sees.
    """
    indices = [int(i) for i in indices]
    prefix = splits.validation[: max(indices) + 1]
    dataset = data_lib.make_dataset(
        prefix, batch_size=IMAGE_BATCH_SIZE, binarization=splits.binarization, seed=seed, training=False
    )
    pixels = np.concatenate([np.asarray(batch[0] if isinstance(batch, tuple) else batch) for batch in dataset])
    return pixels[indices].astype(np.float32)


# --------------------------------------------------------------------------------------------- argument checks


def _positive(value, flag: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ViewArgumentError(f"{flag}={value} must be an integer >= {minimum}.")
    return int(value)


def _check_time_step(time_step, num_time_steps: int, kind: str):
    if time_step is None:
        return None
    if isinstance(time_step, bool) or not isinstance(time_step, (int, np.integer)):
        raise ViewArgumentError(f"--time_step={time_step!r} must be an integer in 1..{num_time_steps}.")
    if not 1 <= time_step <= num_time_steps:
        raise ViewArgumentError(
            f"--time_step={time_step} is out of range: this run's latent has T={num_time_steps} {kind} (1..T; "
            "0 or unset: every time step)."
        )
    return int(time_step)


def _image_indices(indices, count: int, num_validation: int, mode: str):
    if indices is None or len(indices) == 0:
        if count > num_validation:
            raise ViewArgumentError(
                f"--mode={mode} needs {count} validation images; the run's validation split has {num_validation}."
            )
        return list(range(count))
    indices = [int(i) for i in indices]
    if len(indices) != count:
        raise ViewArgumentError(
            f"--image_indices has {len(indices)} entries; --mode={mode} needs {count}"
            + (" (the four corners of the manifold)." if mode == "manifold" else " (one per row: --num_samples).")
        )
    bad = [i for i in indices if not 0 <= i < num_validation]
    if bad:
        raise ViewArgumentError(
            f"--image_indices {bad} are out of range: the validation split has {num_validation} images (0.."
            f"{num_validation - 1})."
        )
    return indices


def _check_grid(rows: int, cols: int):
    if rows * cols > MAX_GRID_IMAGES:
        raise ViewArgumentError(
            f"the grid would hold {rows} x {cols} = {rows * cols} images, more than {MAX_GRID_IMAGES}; lower "
            "--num_samples or --num_points."
        )


# --------------------------------------------------------------------------------------------- the views


def _base_latents(run, source: str, num: int, image_indices, seed: int, mode: str):
    """The rows' base z `[num, D]` and the validation indices they came from (None for the prior)."""
    if source == "prior":
        if image_indices:
            raise ViewArgumentError("--image_indices needs --source=posterior (the prior's rows come from --seed).")
        return latent_steps.prior_latents(num, run.model.latent_dim, seed), None
    indices = _image_indices(image_indices, num, len(run.splits.validation), mode)
    loc, _ = posterior(run.model, evaluation_images(run.splits, indices, run.seed))
    return loc, indices


def view_latents(
    run,
    mode: str,
    *,
    time_step=None,
    num_samples=None,
    num_points: int = 8,
    seed: int = 0,
    source="prior",
    image_indices=None,
):
    """The latents of one view, checked arguments and all: (`[rows, cols, D]` float32, details dict).

    `run` needs `.model`, `.seed` and (posterior source, manifold) `.splits`. See the module docstring for the
    layouts. The details are JSON-able: time steps, slices, layout, the images used.
    """
    if mode not in VIEWS:
        raise ViewArgumentError(f"--mode={mode!r} is not a view; the views are {list(VIEWS)}.")
    if source not in SOURCES:
        raise ViewArgumentError(f"--source={source!r} must be one of {list(SOURCES)}.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ViewArgumentError(f"--seed={seed} must be an integer >= 0.")
    model = run.model
    slices = latent_steps.model_step_slices(model)
    steps = len(slices)
    head = getattr(model, "latent_head", None)
    # The cVAE's ConvHead may carry T > 1, but only to split its KL report: its steps are plain channel slices.
    has_steps = int(getattr(head, "num_time_steps", 1) or 1) > 1 and not isinstance(
        head, (heads.FCHead, heads.ConvHead)
    )
    kind = "time steps" if has_steps else "channel slices (the head has no time steps)"
    time_step = _check_time_step(time_step, steps, kind)
    details = {
        "latent_shape": list(latent_steps.model_latent_shape(model)),
        "num_time_steps": steps,
        "time_steps_are": "the head's time steps" if has_steps else "channel slices",
        "step_slices": [list(s) for s in slices],
        "seed": int(seed),
    }
    if mode == "manifold":
        if time_step is not None:
            raise ViewArgumentError("--time_step does not apply to --mode=manifold (it mixes whole latents).")
        size = _positive(num_points, "--num_points", 2)
        _check_grid(size, size)
        indices = _image_indices(image_indices, MANIFOLD_CORNERS, len(run.splits.validation), mode)
        images = evaluation_images(run.splits, indices, run.seed)
        corners = posterior_samples(model, images, seed)
        details.update(image_indices=indices, weights="sine (Eq. S1)", inputs=images)
        return latent_steps.manifold_latents(corners, size, size), details

    every = time_step is None
    num = _positive(default_num_samples(mode, time_step) if num_samples is None else num_samples, "--num_samples")
    if mode == "progressive":
        if not every:
            raise ViewArgumentError("--time_step does not apply to --mode=progressive (it adds every step in turn).")
        if source != "prior" or image_indices:
            raise ViewArgumentError(
                "--mode=progressive starts from z = 0 and draws from the prior: drop --source/--image_indices."
            )
        _check_grid(num, steps + 1)
        return latent_steps.progressive_latents(num, slices, seed), details
    points = _positive(num_points, "--num_points", 2 if mode == "interpolate" else 1)
    columns = points if mode == "interpolate" else points + 1
    _check_grid(num * (steps if every else 1), columns)
    base, indices = _base_latents(run, source, num, image_indices, seed, mode)
    details.update(source=source, image_indices=indices, time_step="all" if every else time_step)
    if mode == "interpolate":
        if every:
            latents = latent_steps.interpolation_latents_every_step(base, slices, points, seed)
        else:
            latents = latent_steps.interpolation_latents(base, slices, time_step, points, seed)[:, None]
    else:
        if every:
            latents = latent_steps.style_latents_every_step(base, slices, points, seed)
        else:
            latents = latent_steps.style_latents(base, slices, time_step, points, seed)[:, None]
        unchanged = np.broadcast_to(base[:, None, None, :], latents.shape[:2] + (1, base.shape[1]))
        latents = np.concatenate([unchanged, latents], axis=2)  # column 0: the sample itself
    return latents.reshape((-1,) + latents.shape[2:]), details  # [num * T', cols, D], sample-major


def view_name(mode: str, details: dict, step: int) -> str:
    """The file stem of a view's grid, e.g. `interpolate-prior-t3-seed0-step600`."""
    parts = [mode]
    if mode in ("interpolate", "style"):
        time_step = details["time_step"]
        parts += [details["source"], "all" if time_step == "all" else f"t{time_step}"]
    return "-".join(parts + [f"seed{details['seed']}", f"step{step}"])


def render_view(run, model_dir: str, mode: str, **options) -> dict:
    """Builds, decodes and writes one view of a loaded run (`runs.Run` or any object with `.model`, `.seed`,
    `.step`, `.splits`, `.checkpoint_path`); `options` as `view_latents`.

    Writes `model_dir/explore/<view_name>.png` (and, for the manifold, `...-inputs.png`: the four validation images)
    and the same grids as TensorBoard images to `model_dir/tb/explore`.

    Returns:
      The JSON-able summary the binary prints: paths, grid size, time steps and slices, the images used.
    """
    latents, details = view_latents(run, mode, **options)
    rows, cols, latent_dim = latents.shape
    images = decode(run.model, latents.reshape(rows * cols, latent_dim))
    name = view_name(mode, details, run.step)
    folder = os.path.join(model_dir, EXPLORE_DIR)
    grids = {name: artifacts.image_grid(images, columns=cols)}
    inputs = details.pop("inputs", None)
    if inputs is not None:
        grids[f"{name}-inputs"] = artifacts.image_grid(inputs, columns=len(inputs))
    paths = {}
    writer = tf.summary.create_file_writer(os.path.join(model_dir, TENSORBOARD_DIR))
    try:
        for stem, grid in grids.items():
            paths[stem] = os.path.join(folder, f"{stem}.png")
            artifacts.write_png(paths[stem], grid)
            with writer.as_default():
                tf.summary.image(f"explore/{stem}", grid[None], step=int(run.step))
        writer.flush()
    finally:
        writer.close()
    summary = {
        "mode": mode,
        "model_dir": model_dir,
        "step": int(run.step),
        "checkpoint": getattr(run, "checkpoint_path", None),
        "family": type(run.model).__name__,
        "png": paths[name],
        "rows": int(rows),
        "columns": int(cols),
        "tensorboard": os.path.join(model_dir, TENSORBOARD_DIR),
        **details,
    }
    if inputs is not None:
        summary["inputs_png"] = paths[f"{name}-inputs"]
    if mode in ("interpolate", "style") and details["time_step"] == "all":
        summary["row_order"] = "sample-major: row i*T + t - 1 shows sample i, time step t"
    return summary


def image_grid_size(rows: int, cols: int, height: int, width: int, padding: int = 1):
    """(height, width) in pixels of an `artifacts.image_grid` of rows x cols tiles."""
    return rows * (height + padding) + padding, cols * (width + padding) + padding


def default_num_samples(mode: str, time_step) -> int:
    """Rows of a view when --num_samples is unset."""
    if mode == "manifold":
        return MANIFOLD_CORNERS
    return DEFAULT_ROWS_EVERY_STEP if time_step is None and mode != "progressive" else DEFAULT_ROWS[mode]
