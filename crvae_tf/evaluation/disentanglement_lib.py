"""Per-time-step disentanglement of a trained run (`python -m crvae_tf.explore --mode=disentangle`). Gin-free.

Which time step carries which factor of variation: the run's images are encoded to one posterior sample each (the
representation, `REPRESENTATIONS`: a sample, seeded, so a time step counts with what it passes to the decoder, or the
posterior mean; pixels as stored, not binarised: the sprites' anti-aliased intensities in [0, 1], RGB in [0, 1],
mapped to the model's `input_range`), grouped into the T time steps (slice t
of z, `latent_steps.model_step_slices`: the crVAE's and bcVAE's own steps, channel slice t of T = 8 for the VAE and
cVAE), and scored against known factors with held-out linear probes (`crvae_tf.evaluation.disentanglement`: the
factor-by-time-step table, group MIG / SAP / DCI). Probes are fitted on the first `num_images` TRAINING images and
scored on the first `num_images` VALIDATION images (all of them when there are fewer); the test split is never read.

Factors:
* the sprites (`ImageSplits.factors`): shape (discrete, 4), scale, x, y (continuous) and rotation as
  `rotation_mod_symmetry`, an angle: m * rotation with m the order of the shape's rotational symmetry
  (`SHAPE_SYMMETRY_ORDERS`: square 4, ellipse 2, triangle 3, heart 1), since a square turned by 90 degrees is the
  same image (`disentanglement.symmetry_reduced_angle`).
* CelebA: the 40 binary attributes of an attribute file (`attributes`: an .npz with 'attr' int [N, 40] in {-1, +1},
  'filenames' and 'attr_names', as `list_attr_celeba_000001-010000.npz`), matched to each cached image by its
  source file name (`ImageSplits.names`); images the file lacks are left out (counted in the summary).

Writes under `model_dir/explore/` (atomically): `disentangle-step<S>.json` (settings, metrics, matrices, dominant
time steps), `disentangle-step<S>.md` (the tables), `disentangle-step<S>.png` (heat maps: the fraction of each
factor explained by each time step alone, the permutation importance in the probe on all of z, normalised per
factor, and the intervention matrix (`intervention_matrix`: redraw z_t alone, decode, encode, see which factor's
prediction moves), normalised per factor), for the sprites `factor_grid-step<S>.png` (rows in pairs, one per
factor: ground-truth renderings with that factor swept across its range, the others fixed, and their
reconstructions), and the PNGs as TensorBoard images under `model_dir/tb/explore`.
"""

import io
import json
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import runs
from crvae_tf.data import SPRITE_SHAPES
from crvae_tf.data import DataUnavailableError
from crvae_tf.data import render_sprites
from crvae_tf.evaluation import disentanglement
from crvae_tf.models import latent_steps

EXPLORE_DIR = "explore"
TENSORBOARD_DIR = os.path.join("tb", "explore")
ENCODE_BATCH_SIZE = 256
DEFAULT_NUM_IMAGES = 4096
GRID_POINTS = 8
# 'sample' (default): one posterior sample per image, so a time step counts only with the information it passes to
# the decoder (its posterior noise included); 'mean': the posterior mean, as disentanglement_lib. Whitened probes
# read a mean's smallest variations (a time step with 0.1 nats of KL still moves its 128 means a little): on the
# quickstart crVAE every time step "explained" 0.73-0.98 of every factor from means (512 images, an earlier probe
# with a fixed lambda of 1e-3), the last steps included, whose redraws change nothing visible.
REPRESENTATIONS = ("sample", "mean")
SAMPLE_TAG = 206
INTERVENTION_TAG = 207
ROUND_TRIP_TAG = 2  # the eps stream of re-encoded images (common to the unchanged and the intervened latents)
SHAPE_SYMMETRY_ORDERS = {"square": 4, "ellipse": 2, "triangle": 3, "heart": 1}


class NoFactorsError(ValueError):
    """The run's dataset has no known factors and no attribute file was given."""


class DisentangleSettingsError(ValueError):
    """An argument of the mode (a flag of the binary) is out of range."""


# --------------------------------------------------------------------------------------------- factors


def sprite_factor_table(factors: dict):
    """The sprites' factors as `(values [N, 5] float64, names, kinds)` (module docstring)."""
    shape = np.asarray(factors["shape"], np.int64)
    orders = np.array([SHAPE_SYMMETRY_ORDERS[name] for name in SPRITE_SHAPES])[shape]
    columns = {
        "shape": shape.astype(np.float64),
        "scale": np.asarray(factors["scale"], np.float64),
        "rotation_mod_symmetry": disentanglement.symmetry_reduced_angle(factors["rotation"], orders),
        "x": np.asarray(factors["x"], np.float64),
        "y": np.asarray(factors["y"], np.float64),
    }
    kinds = ["discrete", "continuous", "angle", "continuous", "continuous"]
    return np.stack(list(columns.values()), axis=1), list(columns), kinds


def load_attributes(path: str):
    """(file stem -> row, attributes int8 `[N, A]` in {0, 1}, attribute names) of a CelebA attribute .npz."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--attributes={path} is not a file; pass the CelebA attribute .npz (keys 'attr', 'filenames', "
            "'attr_names'), e.g. list_attr_celeba_000001-010000.npz."
        )
    with np.load(path) as data:
        missing = [key for key in ("attr", "filenames", "attr_names") if key not in data]
        if missing:
            raise DataUnavailableError(
                f"--attributes={path} lacks the keys {missing} (it needs attr, filenames, attr_names)."
            )
        values = (np.asarray(data["attr"]) > 0).astype(np.int8)
        stems = [os.path.splitext(os.path.basename(str(name)))[0] for name in data["filenames"]]
        names = [str(name) for name in data["attr_names"]]
    return {stem: row for row, stem in enumerate(stems)}, values, names


def attribute_rows(image_names, by_stem: dict, split: str):
    """(indices of the images that have attributes, their rows in the attribute file)."""
    if image_names is None:
        raise NoFactorsError(
            f"the run's {split} images have no recorded file names, so --attributes cannot be matched to them: "
            "read CelebA from a folder (dataset.local_path); a cache written before names were recorded must be "
            "deleted and rebuilt."
        )
    stems = [os.path.splitext(os.path.basename(str(name)))[0] for name in image_names]
    kept = [(i, by_stem[stem]) for i, stem in enumerate(stems) if stem in by_stem]
    return np.array([i for i, _ in kept], np.int64), np.array([r for _, r in kept], np.int64)


# --------------------------------------------------------------------------------------------- model helpers


def as_unit_pixels(images) -> np.ndarray:
    """uint8 [0, 255] or float [0, 1] images -> float32 [0, 1]."""
    images = np.asarray(images)
    return images.astype(np.float32) / (255.0 if images.dtype == np.uint8 else 1.0)


def posterior(model, images):
    """(loc, log_variance), each float32 `[N, D]`, of images in [0, 1] (mapped to `model.input_range`), evaluation
    mode."""
    lo, hi = (float(v) for v in getattr(model, "input_range", (0.0, 1.0)))
    locs, log_variances = [], []
    for start in range(0, len(images), ENCODE_BATCH_SIZE):
        pixels = lo + (hi - lo) * as_unit_pixels(images[start : start + ENCODE_BATCH_SIZE])
        loc, log_variance = model.encode(tf.constant(pixels), training=False)
        locs.append(np.asarray(loc, np.float32))
        log_variances.append(np.asarray(log_variance, np.float32))
    return np.concatenate(locs), np.concatenate(log_variances)


def posterior_means(model, images) -> np.ndarray:
    """Posterior means float32 `[N, D]` of images in [0, 1]."""
    return posterior(model, images)[0]


def posterior_codes(model, images, representation: str, seed: int, tag: int) -> np.ndarray:
    """The codes the probes see, float64 `[N, D]`: the posterior mean, or one posterior sample
    loc + exp(log_variance / 2) eps with eps ~ N(0, I) from `np.random.default_rng([seed, SAMPLE_TAG, tag])`."""
    if representation not in REPRESENTATIONS:
        raise DisentangleSettingsError(f"representation={representation!r} must be one of {list(REPRESENTATIONS)}.")
    loc, log_variance = posterior(model, images)
    if representation == "mean":
        return loc.astype(np.float64)
    eps = np.random.default_rng([int(seed), SAMPLE_TAG, int(tag)]).standard_normal(loc.shape)
    return loc + np.exp(0.5 * log_variance.astype(np.float64)) * eps


def decode(model, z) -> np.ndarray:
    """`model.generate` in batches: float32 `[N, H, W, C]` in [0, 1]."""
    return np.concatenate(
        [
            np.asarray(model.generate(tf.constant(z[start : start + ENCODE_BATCH_SIZE], tf.float32)), np.float32)
            for start in range(0, len(z), ENCODE_BATCH_SIZE)
        ]
    )


# --------------------------------------------------------------------------------------------- interventions


def intervention_matrix(model, codes, slices, probes, kinds, scales, representation: str, seed: int) -> np.ndarray:
    """`[T, K]`: how far each factor's prediction moves when z_t alone is redrawn from N(0, I).

    For base codes z (`[N, D]`), x = decode(z) and x_t = decode(z with slice t replaced by eps_t ~ N(0, I), eps_t from
    `np.random.default_rng([seed, INTERVENTION_TAG, t])`); both are encoded again (`representation`, the same
    posterior noise for both) and `probes` (`disentanglement.FactorProbes`) predict their factors; entry [t, k] is
    `disentanglement.intervention_effects` of factor k. Comparing with the round trip of the unchanged z removes what
    decoding and encoding alone move.
    """
    codes = np.asarray(codes, np.float32)
    before = probes.outputs(posterior_codes(model, decode(model, codes), representation, seed, ROUND_TRIP_TAG))
    rows = []
    for t, (start, stop) in enumerate(slices, 1):
        changed = codes.copy()
        changed[:, start:stop] = np.random.default_rng([int(seed), INTERVENTION_TAG, t]).standard_normal(
            (len(codes), stop - start)
        )
        after = probes.outputs(posterior_codes(model, decode(model, changed), representation, seed, ROUND_TRIP_TAG))
        rows.append(disentanglement.intervention_effects(before, after, kinds, scales))
    return np.stack(rows)


# --------------------------------------------------------------------------------------------- factor grid


def sprite_factor_sweeps(generator: dict, num_points: int = GRID_POINTS) -> dict:
    """Factor dicts for `render_sprites`, one per factor ('shape', 'scale', 'rotation', 'x', 'y'): `num_points`
    sprites with that factor swept over its range (the shapes in turn for 'shape') and the others at the middle of
    theirs (a square, unless the shape is swept)."""
    scale_range = [float(v) for v in generator["scale_range"]]
    rotation_range = np.deg2rad([float(v) for v in generator["rotation_range"]])
    middle = {
        "shape": 0,
        "scale": float(np.mean(scale_range)),
        "rotation": float(np.mean(rotation_range)),
        "x": 0.5,
        "y": 0.5,
    }
    sweeps = {
        "shape": np.arange(num_points) % len(SPRITE_SHAPES),
        "scale": np.linspace(*scale_range, num_points),
        "rotation": np.linspace(*rotation_range, num_points),
        "x": np.linspace(0.0, 1.0, num_points),
        "y": np.linspace(0.0, 1.0, num_points),
    }
    out = {}
    for name, values in sweeps.items():
        factors = {key: np.full(num_points, value) for key, value in middle.items()}
        factors[name] = values
        out[name] = {
            key: np.asarray(value, np.int64 if key == "shape" else np.float32) for key, value in factors.items()
        }
    return out


def sprite_factor_grid(model, generator: dict, num_points: int = GRID_POINTS) -> np.ndarray:
    """uint8 grid: for each factor a row of ground-truth sprites sweeping it (`sprite_factor_sweeps`) and a row of
    their reconstructions (the decoded posterior means)."""
    rows = []
    for factors in sprite_factor_sweeps(generator, num_points).values():
        truth = render_sprites(factors, float(generator["radius"]))
        rows += [truth, decode(model, posterior_means(model, truth))]
    return artifacts.image_grid(np.concatenate(rows), columns=num_points)


# --------------------------------------------------------------------------------------------- heat map


def heat_map_png(result: dict, title: str) -> bytes:
    """PNG bytes: heat maps (time steps x factors) of `disentanglement.evaluate_groups`' result, the fraction
    explained by each time step alone, the permutation importance normalised per factor and (when present) the
    intervention matrix normalised by each factor's largest entry, with the values."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as error:
        raise ImportError('The heat map needs matplotlib: pip install -e ".[plot]"') from error
    explained = np.asarray(result["matrices"]["explained"])
    importance = np.asarray(result["matrices"]["importance"])
    totals = importance.sum(axis=0, keepdims=True)
    normalised = np.divide(importance, totals, out=np.zeros_like(importance), where=totals > 0)
    names = result["factor_names"]
    steps, factors = explained.shape
    width = min(16.0, 2.0 + 0.45 * factors) if factors > 8 else 2.4 + 0.7 * factors
    panels = [
        (explained, "explained by z_t alone (R^2 or (H-CE)/H)"),
        (normalised, "share of importance in the probe on all of z"),
    ]
    if "intervention" in result["matrices"]:
        intervention = np.asarray(result["matrices"]["intervention"])
        peaks = intervention.max(axis=0, keepdims=True)
        panels.append(
            (
                np.divide(intervention, peaks, out=np.zeros_like(intervention), where=peaks > 0),
                "intervention: change when z_t is redrawn (/ max)",
            )
        )
    height = 0.42 * steps + 1.9
    if factors > 12:  # many factors (CelebA's 40 attributes): the panels one above the other
        figure, axes = pyplot.subplots(len(panels), 1, figsize=(width, len(panels) * (height + 0.6)))
    else:
        figure, axes = pyplot.subplots(1, len(panels), figsize=(len(panels) * width, height))
    for axis, (matrix, label) in zip(axes, panels):
        axis.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        axis.set_xticks(range(factors))
        axis.set_xticklabels(
            names, rotation=90 if factors > 6 else 30, ha="center" if factors > 6 else "right", fontsize=7
        )
        axis.set_yticks(range(steps))
        axis.set_yticklabels([str(t + 1) for t in range(steps)], fontsize=7)
        axis.set_ylabel("time step t")
        axis.set_title(label, fontsize=8)
        if factors <= 12:
            for t in range(steps):
                for k in range(factors):
                    value = matrix[t, k]
                    axis.text(
                        k, t, f"{value:.2f}", ha="center", va="center", fontsize=6, color="w" if value < 0.6 else "k"
                    )
    figure.suptitle(title, fontsize=8)
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    pyplot.close(figure)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------- the mode


def _factors_of(run, attributes, num_images: int):
    """(codes' image arrays and factor tables for train and test, names, kinds, source description)."""
    splits = run.splits
    train_images, test_images = splits.train[:num_images], splits.validation[:num_images]
    if attributes is None:
        if not splits.factors:
            raise NoFactorsError(
                f"the run's dataset '{splits.name}' has no known factors of variation: --mode=disentangle needs the "
                "sprites (dataset.name='sprites'), or --attributes=<CelebA attribute .npz> for a CelebA run."
            )
        tables = [
            sprite_factor_table({k: np.asarray(v)[:num_images] for k, v in splits.factors[s].items()})
            for s in ("train", "validation")
        ]
        (train_values, names, kinds), (test_values, _, _) = tables
        return (train_images, train_values), (test_images, test_values), names, kinds, {"kind": "sprites factors"}
    by_stem, values, names = load_attributes(attributes)
    picked = []
    for split, images in (("train", splits.train), ("validation", splits.validation)):
        image_names = None if splits.names is None else list(splits.names[split])
        indices, rows = attribute_rows(image_names, by_stem, split)
        if len(indices) < 2:
            raise DataUnavailableError(
                f"--attributes={attributes} has attributes for {len(indices)} of the run's {len(images)} {split} "
                "images (matched by file name): it needs at least 2 per split."
            )
        indices, rows = indices[:num_images], rows[:num_images]
        picked.append(
            (
                np.asarray(images[indices[0] : indices[-1] + 1])[indices - indices[0]],
                values[rows].astype(np.float64),
                len(images),
            )
        )
    source = {
        "kind": "attributes",
        "path": os.path.abspath(attributes),
        "sha256": artifacts.file_sha256(attributes),
        "matched": {"train": int(len(picked[0][1])), "validation": int(len(picked[1][1]))},
    }
    kinds = ["discrete"] * len(names)
    return picked[0][:2], picked[1][:2], names, kinds, source


def explore_disentangle(
    model_dir: str,
    checkpoint="latest",
    gin_bindings=(),
    *,
    num_images: int = DEFAULT_NUM_IMAGES,
    seed: int = 0,
    attributes=None,
    representation: str = "sample",
) -> dict:
    """Scores a run's time steps against known factors and writes the tables and heat maps (module docstring).

    Args:
      num_images: probes are fitted on the first `num_images` training images and scored on the first
        `num_images` validation images (>= 2).
      seed: the posterior samples and the permutations of the importance.
      attributes: None (the sprites' factors) or a CelebA attribute .npz.
      representation: 'sample' (one posterior sample per image) or 'mean' (`REPRESENTATIONS`).

    Returns:
      The JSON-able summary (also `explore/disentangle-step<S>.json`).
    """
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 2:
        raise DisentangleSettingsError(f"--num_images={num_images} must be an integer >= 2.")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DisentangleSettingsError(f"--seed={seed} must be an integer >= 0.")
    if representation not in REPRESENTATIONS:
        raise DisentangleSettingsError(f"representation={representation!r} must be one of {list(REPRESENTATIONS)}.")
    run = runs.load_run(model_dir, checkpoint, gin_bindings)
    model = run.model
    started = time.time()
    (train_images, train_factors), (test_images, test_factors), names, kinds, source = _factors_of(
        run, attributes, int(num_images)
    )
    slices = latent_steps.model_step_slices(model)
    codes_train = posterior_codes(model, train_images, representation, seed, 0)
    codes_test = posterior_codes(model, test_images, representation, seed, 1)
    encoded = time.time()
    result = disentanglement.evaluate_groups(
        codes_train, train_factors, codes_test, test_factors, kinds, slices, factor_names=names, seed=int(seed)
    )
    scored = time.time()
    probes = disentanglement.FactorProbes(codes_train, train_factors, kinds, slices)
    scales = np.maximum(np.std(test_factors, axis=0), 1e-12)
    interventions = intervention_matrix(model, codes_test, slices, probes, kinds, scales, representation, seed)
    result["matrices"]["intervention"] = interventions.tolist()
    result["dominant_time_step"]["intervention"] = dict(zip(names, disentanglement.dominant_groups(interventions)))
    intervened = time.time()
    stem = f"disentangle-step{run.step}"
    folder = os.path.join(model_dir, EXPLORE_DIR)
    paths = {kind: os.path.join(folder, f"{stem}.{kind}") for kind in ("json", "md", "png")}
    family = type(model).__name__
    head = type(getattr(model, "latent_head", None)).__name__
    summary = {
        "mode": "disentangle",
        "model_dir": model_dir,
        "step": int(run.step),
        "checkpoint": run.checkpoint_path,
        "family": family,
        "latent_head": head,
        "time_steps_are": "the head's time steps"
        if head in ("ChannelRecurrentHead", "BlockFCHead")
        else "channel slices",
        "step_slices": [list(s) for s in slices],
        "representation": ("one posterior sample" if representation == "sample" else "the posterior mean")
        + " of the stored pixels (not binarised)",
        "probe_images": {"train": "first of the training split", "test": "first of the validation split"},
        "factors": source,
        "seed": int(seed),
        "seconds": {
            "encode": round(encoded - started, 1),
            "probes": round(scored - encoded, 1),
            "interventions": round(intervened - scored, 1),
        },
        **result,
        "json": paths["json"],
        "markdown": paths["md"],
        "png": paths["png"],
        "tensorboard": os.path.join(model_dir, TENSORBOARD_DIR),
    }
    title = f"{os.path.basename(os.path.normpath(model_dir))} ({family}, {head}), step {run.step}"
    artifacts.atomic_write_text(paths["md"], markdown_report(summary, title))
    grids = {stem: tf.io.decode_png(heat_map_png(result, title)).numpy()}
    if source["kind"] == "sprites factors" and run.splits.generator:
        grid_stem = f"factor_grid-step{run.step}"
        grids[grid_stem] = sprite_factor_grid(model, run.splits.generator)
        summary["factor_grid_png"] = os.path.join(folder, f"{grid_stem}.png")
    writer = tf.summary.create_file_writer(summary["tensorboard"])
    try:
        for name, grid in grids.items():
            artifacts.write_png(os.path.join(folder, f"{name}.png"), grid[..., :3] if grid.shape[-1] == 4 else grid)
            with writer.as_default():
                tf.summary.image(f"explore/{name}", grid[None], step=int(run.step))
        writer.flush()
    finally:
        writer.close()
    artifacts.atomic_write_text(paths["json"], json_text(summary))
    logging.info("Disentanglement of %s at step %d: %s", model_dir, run.step, result["metrics"])
    return summary


def json_text(summary: dict) -> str:
    return json.dumps(summary, indent=1)


def markdown_report(summary: dict, title: str) -> str:
    """The Markdown file: the metrics, the factor-by-time-step tables, and how they were computed."""
    metrics = summary["metrics"]
    lines = [
        f"# Per-time-step disentanglement: {title}",
        "",
        f"Probes fitted on {summary['num_train']} training images, scored on {summary['num_test']} validation "
        f"images; T = {summary['num_time_steps']} ({summary['time_steps_are']}), {summary['representation']}.",
        "",
        "| MIG | SAP | DCI disentanglement | DCI completeness | DCI informativeness |",
        "|---|---|---|---|---|",
        "| "
        + " | ".join(
            f"{metrics[key]:.3f}"
            for key in ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness")
        )
        + " |",
        "",
        "Fraction of each factor explained by time step t alone (held-out R^2, or (H - CE) / H for a discrete factor):",
        "",
        disentanglement.markdown_table(summary, "explained"),
        "",
        "Permutation importance in the probe on all of z (drop of the held-out score when z_t is shuffled):",
        "",
        disentanglement.markdown_table(summary, "importance"),
        "",
        "Intervention: how far the predicted factor moves when z_t alone is redrawn from N(0, I), decoded and encoded "
        "again (discrete: mean total-variation distance of the predicted class distribution; continuous: mean "
        "|change| in test standard deviations; angle: mean |change| / pi):",
        "",
        disentanglement.markdown_table(summary, "intervention"),
        "",
    ]
    return "\n".join(lines)
