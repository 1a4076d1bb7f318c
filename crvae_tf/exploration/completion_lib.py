"""Image completion on a trained run's held-out faces (paper Sec. 4.3, Eq. 5, Fig. 4): the `complete` mode of
`python -m crvae_tf.explore`. Gin-free.

For the first `num_images` images of the run's VALIDATION split (never seen in training), a mask m (1 =
observed, 0 = missing; `crvae_tf.data.masks`) and the run's model:

  1. occluded image  x_o = x * m + mean_face * (1 - m), where mean_face `[R, R, 3]` is the mean of the run's
     training images (see "Fill" below);
  2. z_0 = the posterior mean of x_o (`--init=posterior_mean`, the paper's; or a posterior sample, or a prior
     sample, from `--seed`);
  3. z* = `num_steps` Adam steps on  sum (m (x - gen z))^2 + gamma/2 ||z||^2 + tau log(1 - D(gen z))
     (`crvae_tf.models.completion.complete`; the adversarial term only for the adversarial family, whose
     discriminator scores gen(z) in its [-1, 1] input range);
  4. completion  gen(z*) (1 - m) + x m.

Everything is in the dataset's pixel range [0, 1]: `model.generate` returns [0, 1] for both families (the
adversarial decoder's tanh output mapped back), and images are mapped to the model's input range
(`model.to_model_range`, [-1, 1] for the adversarial family) only to be encoded or scored by D. gamma is
therefore relative to a squared error summed over pixels in [0, 1].

Fill: the missing pixels of the image the encoder sees are set to the mean training face, not to 0 (black):
a black box is itself a strong, unnatural feature the encoder encodes (e.g. sunglasses), and on the crVAE-GAN
CelebA-64 run (README "Image completion"; 8 validation faces) the no-optimisation reconstruction from the
mean-face fill scores 12.45 / 16.66 / 16.92 dB masked PSNR (right half / eyes / mouth) against 8.73 / 14.46 /
12.18 dB from the black fill (after 100 Adam steps both starts end within 0.01 dB). The mean face is also the first
trivial baseline.

The adversarial term (tau > 0): D's convolutional trunk keeps the authors' stochastic-inference spatial dropout
(`TorchDropout(spatial=True, stochastic_inference=True)`, active even with training=False) and its head has
minibatch discrimination, so the term is noisy (a new dropout mask every Adam step) and couples the images of a
batch.

Metrics (JSON), on the MISSING pixels only, per image then averaged (mean and standard error over images):
  psnr = 10 log10(1 / mse), mse = mean over the missing pixels and channels of (y - x)^2 (peak 1: [0, 1]);
  l1   = mean over the missing pixels and channels of |y - x|;
  each with its per-image values (validation images split_indices[0]:split_indices[1], in order), and the paired
  gain of the completion over each fill (`completion_gain_over`: mean and standard error of the per-image
  difference in dB);
for y = the completion, the mean-training-face fill, and the no-optimisation fill gen(posterior mean of x_o)
(1 - m) + x m (the reconstruction of the occluded image). The observed pixels of every y equal x exactly.

Masks: 'right_half', 'eyes' and 'mouth' are fixed regions of the face crop (the eyes / mouth boxes of the
alignment template), the same for every face; a mask image is also one mask for all. With `landmarks` (the path of
CelebA's `list_landmarks_align_celeba.txt`, `--landmarks`), 'eyes' and 'mouth' are instead each face's own box
from its own landmarks (`masks.dataset_landmark_masks`: the cache's per-row file names looked up in the file),
written as `complete-<eyes|mouth>_landmarks-...`. The JSON's `mask_source` says which ('template', 'image' or
'landmarks'; for landmarks also the file's absolute path, its sha256 and every face's box). Refused with a message:
landmarks with another mask, a run on a dataset without CelebA file names (MNIST, the sprites, birds; a tfds
celeb_a run), faces the file lacks, and a CelebA cache written before the cache recorded names (delete the folder
the message names; the next run rebuilds it).

Outputs:
  model_dir/explore/complete-<mask>-step<step>.png   per block of up to 16 images, four rows: original |
                                                     occluded | reconstruction of the occluded image |
                                                     completed
  model_dir/explore/complete-<mask>-step<step>.json  settings, step, checkpoint, number of images, mask source,
                                                     metrics
  model_dir/tb/explore/                              the grid (explore/complete-<mask>) and the three PSNRs as
                                                     TensorBoard summaries at the checkpoint's step
"""

import json
import os
import time

import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import runs
from crvae_tf.data import masks as masks_lib
from crvae_tf.exploration import views
from crvae_tf.models import completion

EXPLORE_DIR = "explore"
GRID_COLUMNS = 16
RESULT_FORMAT = "crvae_tf.completion/1"
# Rows of the training split averaged per call when computing the mean face.
MEAN_FACE_CHUNK = 1024


class CompletionSettingsError(ValueError):
    """A setting the user chose that cannot work with this run (the binary reports it as a usage error)."""


def check_settings(num_steps, learning_rate, gamma, tau, init, num_images, batch_size, seed):
    """Refuses settings that cannot work, with the flag to change."""
    problems = []
    if int(num_steps) < 0:
        problems.append(f"--completion_steps={num_steps} must be >= 0")
    if not float(learning_rate) > 0.0:
        problems.append(f"--completion_learning_rate={learning_rate} must be > 0")
    if float(gamma) < 0.0:
        problems.append(f"--gamma={gamma} must be >= 0 (the weight of the prior penalty gamma/2 ||z||^2)")
    if float(tau) < 0.0:
        problems.append(f"--tau={tau} must be >= 0 (the weight of log(1 - D(gen z)))")
    if init not in completion.INITS:
        problems.append(f"--init={init!r} must be one of {list(completion.INITS)}")
    if int(num_images) < 1:
        problems.append(f"--num_images={num_images} must be >= 1")
    if int(batch_size) < 1:
        problems.append(f"batch_size={batch_size} must be >= 1")
    if int(seed) < 0:
        problems.append(f"--seed={seed} must be >= 0")
    if problems:
        raise CompletionSettingsError("; ".join(problems) + ".")


def check_family(model, tau, model_dir="the run") -> bool:
    """Whether `model` has a discriminator; tau > 0 without one is a `CompletionSettingsError`."""
    adversarial = hasattr(model, "discriminator")
    if float(tau) > 0.0 and not adversarial:
        raise CompletionSettingsError(
            f"--tau={tau} weights the adversarial term log(1 - D(gen z)), but {model_dir} is a "
            f"{type(model).__name__} run, which has no discriminator. Use --tau=0 (the default) for the VAE family."
        )
    return adversarial


def mean_face(images) -> np.ndarray:
    """Mean image `[H, W, C]` in [0, 1] of uint8 `[N, H, W, C]` (or float in [0, 1]) images, in chunks."""
    total = np.zeros(images.shape[1:], np.float64)
    for start in range(0, len(images), MEAN_FACE_CHUNK):
        total += np.asarray(images[start : start + MEAN_FACE_CHUNK], np.float64).sum(axis=0)
    scale = 255.0 if np.asarray(images[:1]).dtype == np.uint8 else 1.0
    return (total / (len(images) * scale)).astype(np.float32)


def masked_metrics(outputs, images, mask) -> dict:
    """Per-image PSNR and L1 over the missing pixels (mask == 0), averaged over images.

    Args:
      outputs, images: `[N, H, W, C]` in [0, 1]; mask: `[N, H, W, 1]` or `[H, W, 1]`, 1 = observed.

    Returns:
      {'psnr': mean dB, 'psnr_sem': its standard error, 'l1': mean, 'l1_sem', 'mse': mean per-image mse,
       'per_image_psnr': [N] dB, 'per_image_l1': [N]} (the per-image lists pair runs and fills on the same faces).
    """
    outputs = np.asarray(outputs, np.float64)
    images = np.asarray(images, np.float64)
    missing = np.broadcast_to(1.0 - np.asarray(mask, np.float64), images.shape[:-1] + (1,))
    count = missing.sum(axis=(1, 2, 3)) * images.shape[-1]
    if np.any(count == 0):
        raise ValueError("masked_metrics needs at least one missing pixel per image.")
    mse = (missing * (outputs - images) ** 2).sum(axis=(1, 2, 3)) / count
    l1 = (missing * np.abs(outputs - images)).sum(axis=(1, 2, 3)) / count
    psnr = 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))

    return {
        "psnr": float(psnr.mean()),
        "psnr_sem": standard_error(psnr),
        "l1": float(l1.mean()),
        "l1_sem": standard_error(l1),
        "mse": float(mse.mean()),
        "per_image_psnr": [round(float(v), 4) for v in psnr],
        "per_image_l1": [round(float(v), 5) for v in l1],
    }


def standard_error(values) -> float:
    """Standard error of the mean, std(ddof=1) / sqrt(N) (0 for one value)."""
    values = np.asarray(values, np.float64)
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def paired_gains(metrics: dict) -> dict:
    """Completion minus each fill, per image then averaged: {fill: {'psnr_db': mean, 'psnr_db_sem': SEM}}."""
    completion_psnr = np.asarray(metrics["completion"]["per_image_psnr"])
    gains = {}
    for fill in ("mean_face_fill", "reconstruction_fill"):
        difference = completion_psnr - np.asarray(metrics[fill]["per_image_psnr"])
        gains[fill] = {"psnr_db": float(difference.mean()), "psnr_db_sem": standard_error(difference)}
    return gains


def _model_input(model):
    return getattr(model, "to_model_range", lambda images: tf.cast(images, tf.float32))


def _discriminator_logits(model):
    """images in [0, 1] -> D's logits `[batch, 1]` (evaluation mode), or None for the VAE family."""
    if not hasattr(model, "discriminator"):
        return None

    def logits(images):
        features = model.discriminator_trunk(model.to_model_range(images), training=False)
        return tf.cast(model.discriminator(features, training=False), tf.float32)

    return logits


def completion_function(model, image_shape, use_discriminator: bool):
    """A traced `(images, mask, fill, num_steps, learning_rate, gamma, tau, seed, init) -> dict` for `model`.

    One trace serves every batch size and step count (an input_signature); `init` selects the z_0 branch at
    trace time, so a function is built per init. Returns `complete`'s dict plus 'occluded' and 'reconstruction'
    (gen(posterior mean of the occluded image)).
    """
    height, width, channels = image_shape
    to_model = _model_input(model)
    logits = _discriminator_logits(model) if use_discriminator else None

    def encode(images):
        return model.encode(to_model(images), training=False)

    def build(init):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None, height, width, channels], tf.float32),
                tf.TensorSpec([None, height, width, 1], tf.float32),
                tf.TensorSpec([height, width, channels], tf.float32),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([], tf.float32),
                tf.TensorSpec([2], tf.int64),
            ]
        )
        def run(images, mask, fill, num_steps, learning_rate, gamma, tau, seed):
            occluded = completion.occlude(images, mask, fill)
            loc, log_variance = encode(occluded)
            z_init = completion.initial_latents(lambda _: (loc, log_variance), occluded, init, seed)
            out = completion.complete(
                model.generate,
                images,
                mask,
                z_init,
                num_steps,
                learning_rate=learning_rate,
                gamma=gamma,
                tau=tau if logits is not None else 0.0,
                discriminator_logits=logits,
            )
            out["occluded"] = occluded
            out["reconstruction"] = model.generate(loc)
            return out

        return run

    return build


def _grid(columns_of_rows, columns=GRID_COLUMNS):
    """Blocks of up to `columns` images; per block the four rows (original, occluded, reconstruction, completed)."""
    num, height, width, channels = columns_of_rows[0].shape
    tiles = []
    for start in range(0, num, columns):
        for row in columns_of_rows:
            block = list(row[start : start + columns])
            block += [np.ones((height, width, channels), np.float32)] * (min(columns, num) - len(block))
            tiles += block
    return artifacts.image_grid(np.stack(tiles), columns=min(columns, num))


def result_paths(model_dir: str, mask_name: str, step: int):
    stem = os.path.join(model_dir, EXPLORE_DIR, f"complete-{mask_name}-step{step}")
    return stem + ".png", stem + ".json"


def check_landmarks(mask: str, landmarks) -> None:
    """Refuses `--landmarks` with a mask that has no landmark box, or a landmark file that does not exist."""
    if landmarks is None:
        return
    if mask not in masks_lib.LANDMARK_REGIONS:
        raise CompletionSettingsError(
            f"--landmarks gives each face its own box for --mask=eyes or --mask=mouth only, not --mask={mask}; "
            "drop --landmarks or choose one of those masks."
        )
    if not os.path.isfile(landmarks):
        raise FileNotFoundError(
            f"--landmarks={landmarks}: no such file (CelebA's {masks_lib.LANDMARKS_FILE}, from the dataset's Anno/ "
            "folder, or Kaggle's list_landmarks_align_celeba.csv)."
        )


def mask_boxes(mask_images) -> list:
    """[top, left, bottom, right] (bottom / right exclusive) around the missing pixels of each `[R, R, 1]` mask."""
    boxes = []
    for mask in np.asarray(mask_images):
        rows, cols = np.nonzero(mask[..., 0] < 0.5)
        boxes.append([int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1])
    return boxes


def explore_complete(
    model_dir: str,
    checkpoint="latest",
    mask="right_half",
    num_steps: int = completion.DEFAULT_NUM_STEPS,
    learning_rate: float = completion.DEFAULT_LEARNING_RATE,
    gamma: float = completion.DEFAULT_GAMMA,
    tau: float = 0.0,
    init: str = "posterior_mean",
    num_images: int = 64,
    seed: int = 0,
    batch_size: int = 64,
    gin_bindings=(),
    landmarks=None,
) -> dict:
    """Completes the first `num_images` validation images of a run under `mask` (module docstring).

    Args:
      mask: 'right_half', 'eyes', 'mouth' (`crvae_tf.data.masks.named_mask`) or a mask image path (white =
        observed).
      num_steps, learning_rate, gamma, tau: the optimisation (`completion.complete`); tau > 0 needs the
        adversarial family.
      init: 'posterior_mean', 'posterior_sample' or 'prior'; seed: the stateless seed of the latter two
        (batch b uses the seed pair (seed, b)).
      batch_size: images per optimisation (independent: the result does not depend on it, except through the
        discriminator's minibatch features when tau > 0).
      landmarks: None (fixed masks), or the path of `list_landmarks_align_celeba.txt`: with mask 'eyes' or
        'mouth', each face's own box from its landmarks (module docstring "Masks").

    Returns:
      The JSON-able summary (also written to `complete-<mask>-step<step>.json`).
    """
    check_settings(num_steps, learning_rate, gamma, tau, init, num_images, batch_size, seed)
    masks_lib.check_mask_spec(mask)  # before loading anything
    check_landmarks(mask, landmarks)
    parsed_landmarks = None if landmarks is None else masks_lib.parse_landmarks(landmarks)
    run = runs.load_run(model_dir, checkpoint, gin_bindings)
    model = run.model
    adversarial = check_family(model, tau, model_dir)
    validation = run.splits.validation
    if len(validation) < int(num_images):
        raise CompletionSettingsError(
            f"--num_images={num_images} but the run's validation split has {len(validation)} images; use at most "
            f"{len(validation)}."
        )
    images_all = np.asarray(validation[: int(num_images)])
    images_all = images_all.astype(np.float32) / (255.0 if images_all.dtype == np.uint8 else 1.0)
    height, width, channels = images_all.shape[1:]
    if height != width:
        raise CompletionSettingsError(f"completion masks need square images; this run's are {width}x{height}.")
    if parsed_landmarks is None:
        mask_name, mask_image = masks_lib.mask_from_spec(mask, height)
        masks_all = np.broadcast_to(mask_image, (len(images_all), height, width, 1)).astype(np.float32)
        mask_source = {"kind": "template" if mask in masks_lib.MASK_NAMES else "image"}
    else:
        masks_all = masks_lib.dataset_landmark_masks(run.splits, parsed_landmarks, mask, "validation", num_images)
        mask_name = f"{mask}_landmarks"
        mask_source = {
            "kind": "landmarks",
            "path": os.path.abspath(landmarks),
            "sha256": artifacts.file_sha256(landmarks),
            "images": list(run.splits.names["validation"][: int(num_images)]),
            "boxes": mask_boxes(masks_all),
        }
    face = mean_face(run.splits.train)
    build = completion_function(model, (height, width, channels), adversarial and float(tau) > 0.0)
    function = build(init)
    pieces = {key: [] for key in ("images", "occluded", "reconstruction", "loss", "initial_loss")}
    started = time.time()
    for index, start in enumerate(range(0, len(images_all), int(batch_size))):
        images = images_all[start : start + int(batch_size)]
        out = function(
            tf.constant(images),
            tf.constant(masks_all[start : start + int(batch_size)]),
            tf.constant(face),
            tf.constant(int(num_steps), tf.int32),
            tf.constant(float(learning_rate), tf.float32),
            tf.constant(float(gamma), tf.float32),
            tf.constant(float(tau), tf.float32),
            tf.constant([int(seed), index], tf.int64),
        )
        for key in pieces:
            pieces[key].append(out[key].numpy())
    seconds = time.time() - started
    result = {key: np.concatenate(value) for key, value in pieces.items()}
    reconstruction_fill = result["reconstruction"] * (1.0 - masks_all) + images_all * masks_all
    png_path, json_path = result_paths(model_dir, mask_name, run.step)
    grid = _grid([images_all, result["occluded"], reconstruction_fill, result["images"]])
    artifacts.write_png(png_path, grid)
    summary = {
        "format": RESULT_FORMAT,
        "mode": "complete",
        "model_dir": model_dir,
        "family": type(model).__name__,
        "latent_head": type(model.latent_head).__name__,
        "latent_dim": int(model.latent_dim),
        "step": run.step,
        "checkpoint": run.checkpoint_path,
        "split": "validation",
        "num_images": int(num_images),
        "image_shape": [int(height), int(width), int(channels)],
        "mask": mask if mask in masks_lib.MASK_NAMES else os.path.abspath(mask),
        "mask_name": mask_name,
        "mask_source": mask_source,
        "missing_fraction": float(1.0 - masks_all.mean()),
        "settings": {
            "num_steps": int(num_steps),
            "learning_rate": float(learning_rate),
            "gamma": float(gamma),
            "tau": float(tau),
            "init": init,
            "seed": int(seed),
            "batch_size": int(batch_size),
            "optimizer": "adam(beta_1=0.9, beta_2=0.999, epsilon=1e-8)",
            "occlusion_fill": "mean_training_face",
            "pixel_range": [0.0, 1.0],
        },
        "metrics": {
            "completion": masked_metrics(result["images"], images_all, masks_all),
            "mean_face_fill": masked_metrics(result["occluded"], images_all, masks_all),
            "reconstruction_fill": masked_metrics(reconstruction_fill, images_all, masks_all),
        },
        "split_indices": [0, int(num_images)],
        "objective": {
            "initial_mean": float(result["initial_loss"].mean()),
            "final_mean": float(result["loss"].mean()),
        },
        "seconds": round(seconds, 2),
        "png": png_path,
        "json": json_path,
    }
    summary["completion_gain_over"] = paired_gains(summary["metrics"])
    artifacts.atomic_write_text(json_path, json.dumps(summary, indent=1) + "\n")
    writer = tf.summary.create_file_writer(os.path.join(model_dir, views.TENSORBOARD_DIR))
    with writer.as_default():
        tag = f"explore/complete-{mask_name}"
        tf.summary.image(tag, grid[None], step=int(run.step))
        for fill, metrics in summary["metrics"].items():
            tf.summary.scalar(f"{tag}/psnr_{fill}", metrics["psnr"], step=int(run.step))
    writer.close()
    return summary
