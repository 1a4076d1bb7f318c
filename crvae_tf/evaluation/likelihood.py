"""Test-set log-likelihood of a trained run: importance sampling with K samples, as in Table 1.

For every image x of the evaluated split, with the model's posterior q(z|x) as the proposal and K samples
z_k = loc(x) + exp(log_variance(x) / 2) * eps_k, eps_k ~ N(0, I):

    w_k        = log p(x|z_k) + log p(z_k) - log q(z_k|x)                     (nats, float32)
    log p^(x)  = log (1/K) sum_k exp(w_k)                     = IWAE_K(x)     (float64 streaming log-mean-exp)
    ELBO^(x)   = (1/K) sum_k w_k                                              (the same K samples)
    IWAE_5^(x) = (5/K) sum_g log (1/5) sum_{k in group g} exp(w_k)            (K/5 disjoint groups of 5)

and NLL = -(1/N) sum_i log p^(x_i), reported with its standard error std_i(log p^(x_i)) / sqrt(N) across the N
images. Per image, ELBO^ <= IWAE_5^ <= log p^ always hold when 5 divides K (Jensen), and E[log p^]
increases to log p(x) as K grows (Burda et al. 2016). Table 1 uses K = 10,000 on the statically binarized test
set; the authors' code drops the last 16 test images (10000 mod 128), this evaluates every image.

Noise. eps for (image i of the split, sample k) is `tf.random.stateless_normal([latent_dim], seed=[seed * 2^32 + i,
k], alg='philox')`: a function of (seed, i, k) only. The estimate of each image is therefore the same whatever
`batch_size`, `chunk_size` or `max_images` (up to float32 rounding of the batched matmuls), and the same command
gives the same number.

Speed. Per batch of B images the encoder runs once; the K samples are drawn `chunk_size` at a time, and each chunk
(noise, reparameterisation, generation path, decoder, log weights) is one `tf.function` call on `chunk_size * B`
decoder rows (default about 640 rows: `TARGET_DECODER_ROWS`). Its input signature leaves the batch and chunk
dimensions unknown, so the last, smaller batch and the last, smaller chunk reuse the one trace. Only the per-chunk
accumulation is float64 (`bounds.importance_sampled_log_likelihood`), so memory is that of one chunk, flat in K.

Budget. The MNIST crVAE estimates 447 importance samples/s in float32 on 2 otherwise idle AVX-512 cores (about
230 per CPU-second; `python -m crvae_tf.bench --nll`), so the full Table 1 protocol (10,000 images x 10,000
samples = 10^8 decoder rows) is ~2.6 days of such a CPU. `model.precision='mixed_bfloat16'` is ~1.7x faster on
CPUs with AVX512-BF16 but moved the NLL of a (briefly trained) crVAE by ~0.07 nats, so float32 stays the default.
`max_images` caps the images (recorded in the result and in its file name), and an interrupted evaluation resumes
from its last finished batch (`DIR/eval/<name>.partial.npz`) with identical numbers.

Outputs, in the run directory `DIR`:
    DIR/eval/<split>-step<step>-k<K>[-n<max_images>].json   the result (also returned and printed by the binary)
    DIR/eval/<split>-step<step>-k<K>[-n<max_images>].npz    per-image log_likelihood, elbo, iwae_5 (float64 [N])
    DIR/tb/eval_<split>/                                    scalars nll/k<K>, nll_stderr/k<K>, elbo/k<K>,
                                                            iwae_5/k<K> at the checkpoint's step
"""

import hashlib
import io
import json
import os
import time
from typing import Callable
from typing import Iterable
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import builders
from crvae_tf import data as data_lib
from crvae_tf import models
from crvae_tf import runs
from crvae_tf.evaluation import sprite_shapes
from crvae_tf.evaluation.results import EVAL_DIR
from crvae_tf.evaluation.results import Estimates
from crvae_tf.evaluation.results import Partial
from crvae_tf.evaluation.results import provenance
from crvae_tf.evaluation.results import result_path
from crvae_tf.evaluation.results import result_stem
from crvae_tf.evaluation.results import summarize
from crvae_tf.objectives import bounds

SPLITS = ("test", "validation")
DEFAULT_NUM_IMPORTANCE_SAMPLES = 10000  # Table 1 (porting notes 7: the authors ran K = 100 and K = 10,000)
DEFAULT_BATCH_SIZE = 128  # images per encoder pass (the authors' code: 128)
TARGET_DECODER_ROWS = 640  # default chunk_size = this // batch_size samples per decoder pass
IWAE_GROUP = 5  # IWAE_5: the authors' model-selection bound (porting notes 7)
# Datasets of the same images (an eval_dataset must show the images the run trained on, binarized either way).
_DATASET_FAMILY = {"mnist": "mnist", "binarized_mnist": "mnist"}
MAX_SEED = 2**31  # seed * 2^32 + image index must fit an int64 stateless seed


def default_chunk_size(batch_size: int) -> int:
    """Samples per decoder pass so that a pass has about `TARGET_DECODER_ROWS` rows (5 at batch 128)."""
    return max(1, TARGET_DECODER_ROWS // int(batch_size))


class ImportanceSampler:
    """Importance-sampled log p(x) with the model's posterior as proposal, for batches of binary images.

    Args:
      model: a built `models.VAE` (weights restored); evaluation mode throughout (BatchNorm running statistics).
      num_importance_samples: K >= 1.
      chunk_size: samples per decoder pass (None: `default_chunk_size(batch_size)`); a speed / memory knob that
        does not change the estimate beyond float32 rounding.
      seed: in [0, 2^31); the noise of (image i, sample k) is a function of (seed, i, k) only.
      batch_size: images per encoder pass, only used for the default `chunk_size`.

    The two `tf.function`s are traced once (batch and chunk dimensions unknown) and reused by every call of
    `estimate_batch` / `estimate`.
    """

    def __init__(
        self,
        model: models.VAE,
        num_importance_samples: int,
        chunk_size: Optional[int] = None,
        seed: int = 0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ):
        _check_positive_int(num_importance_samples, "num_importance_samples")
        _check_positive_int(batch_size, "batch_size")
        if chunk_size is not None:
            _check_positive_int(chunk_size, "chunk_size")
        _check_seed(seed)
        self.model = model
        self.num_importance_samples = int(num_importance_samples)
        self.chunk_size = min(
            self.num_importance_samples, int(chunk_size) if chunk_size is not None else default_chunk_size(batch_size)
        )
        self.seed = int(seed)
        image_spec = tf.TensorSpec((None,) + tuple(model.image_shape), tf.float32)
        latent_spec = tf.TensorSpec((None, model.latent_dim), tf.float32)
        index_spec = tf.TensorSpec((None,), tf.int64)

        # Closures (not bound methods), so that samplers of successive checkpoints count as different functions.
        def encode(images):
            return model.encode(images, training=False)

        def log_weights(images, loc, log_variance, image_indices, sample_indices):
            return self._log_weights_fn(images, loc, log_variance, image_indices, sample_indices)

        self._encode = tf.function(encode, input_signature=[image_spec], autograph=False)
        self._log_weights = tf.function(
            log_weights, autograph=False, input_signature=[image_spec, latent_spec, latent_spec, index_spec, index_spec]
        )

    def warm_up(self, images):
        """Traces both graph functions with one chunk of samples for `images` `[b, H, W, C]` (nothing is kept)."""
        images = tf.convert_to_tensor(images, tf.float32)
        loc, log_variance = self._encode(images)
        indices = tf.range(tf.shape(images)[0], dtype=tf.int64)
        self._log_weights(
            images,
            loc,
            log_variance,
            indices,
            tf.range(min(self.chunk_size, self.num_importance_samples), dtype=tf.int64),
        ).numpy()

    # ------------------------------------------------------------------ graph functions

    def noise(self, image_indices, sample_indices):
        """eps `[n, b, latent_dim]` float32 for samples `sample_indices [n]` of images `image_indices [b]`.

        Row (k, i) is `stateless_normal([latent_dim], seed=[seed * 2^32 + image_indices[i], sample_indices[k]])`.
        """
        latent_dim = self.model.latent_dim
        keys = tf.constant(self.seed, tf.int64) * (2**32) + image_indices  # [b]
        n, b = tf.shape(sample_indices)[0], tf.shape(image_indices)[0]
        seeds = tf.stack(
            [tf.broadcast_to(keys[None, :], [n, b]), tf.broadcast_to(sample_indices[:, None], [n, b])], axis=-1
        )  # [n, b, 2]
        eps = tf.map_fn(
            lambda seed: tf.random.stateless_normal([latent_dim], seed=seed, alg="philox"),
            tf.reshape(seeds, [-1, 2]),
            fn_output_signature=tf.TensorSpec([latent_dim], tf.float32),
            parallel_iterations=64,
        )
        return tf.reshape(eps, [n, b, latent_dim])

    def _log_weights_fn(self, images, loc, log_variance, image_indices, sample_indices):
        """`[n, b]` float32 log weights of samples `sample_indices` for a batch whose posterior is given."""
        eps = self.noise(image_indices, sample_indices)  # [n, b, D]
        z = loc + tf.exp(0.5 * log_variance) * eps
        return self.model.log_importance_weights_at(images, loc, log_variance, z, training=False)

    # ------------------------------------------------------------------ estimation
    def estimate_batch(self, images, image_indices):
        """Estimates for one batch of binary images `[b, H, W, C]`, images `image_indices [b]` of the split.

        Returns:
          (log_likelihood, elbo, iwae_5): float64 `[b]` numpy arrays (iwae_5 NaN when K < 5).
        """
        images = tf.convert_to_tensor(images, tf.float32)
        loc, log_variance = self._encode(images)  # the encoder runs once per batch
        image_indices = tf.constant(np.asarray(image_indices, np.int64))
        groups = bounds.GroupedLogMeanExp(IWAE_GROUP)
        drawn = 0

        def log_weights_fn(n):
            nonlocal drawn
            weights = self._log_weights(
                images, loc, log_variance, image_indices, tf.range(drawn, drawn + n, dtype=tf.int64)
            )
            drawn += n
            groups.add(weights.numpy())
            return weights

        estimate = bounds.importance_sampled_log_likelihood(
            log_weights_fn, self.num_importance_samples, self.chunk_size
        )
        return estimate.log_likelihood.numpy(), estimate.elbo.numpy(), groups.result(images.shape[0])

    def estimate(
        self,
        batches: Iterable,
        skip_batches: int = 0,
        restored=None,
        on_batch: Optional[Callable] = None,
        log_every_secs: float = 60.0,
        total_images: Optional[int] = None,
        image_indices=None,
    ) -> Estimates:
        """Estimates every image of `batches` (an iterable of `[b, H, W, C]` 0/1 float32 batches, in order).

        Args:
          batches: e.g. `data.make_dataset(images, training=False, ...)`; every image is evaluated once.
          skip_batches: the first batches whose estimates are given in `restored` (a resume): they are hashed
            and checked, not estimated.
          restored: `(log_likelihood, elbo, iwae_5, batch_hashes)` of the skipped batches.
          on_batch: called after each estimated batch with `(batch_index, arrays_so_far, batch_hashes)`.
          log_every_secs: progress log cadence.
          total_images: the number of images in `batches`, for the progress log's time estimate.
          image_indices: the split index of each image of `batches` (its noise key); default 0, 1, 2, ...
        """
        digest = hashlib.sha256()
        parts = {"log_likelihood": [], "elbo": [], "iwae_5": []}
        batch_hashes = []
        if skip_batches:
            for key, array in zip(parts, restored[:3]):
                parts[key].append(np.asarray(array, np.float64))
        first_index = estimated = 0
        start = last_log = time.perf_counter()
        for index, batch in enumerate(batches):
            pixels = _binary_pixels(batch)
            digest.update(pixels.tobytes())
            batch_hashes.append(hashlib.sha256(pixels.tobytes()).hexdigest())
            size = pixels.shape[0]
            if index < skip_batches:
                if batch_hashes[-1] != restored[3][index]:
                    raise ValueError(
                        f"Batch {index} differs from the one in the partial evaluation being resumed "
                        "(the data changed); delete the .partial.npz file to start over."
                    )
            else:
                indices = (
                    np.arange(first_index, first_index + size)
                    if image_indices is None
                    else np.asarray(image_indices)[first_index : first_index + size]
                )
                for key, values in zip(parts, self.estimate_batch(batch, indices)):
                    parts[key].append(values)
                estimated += size
                if on_batch is not None:
                    on_batch(index, {key: np.concatenate(value) for key, value in parts.items()}, list(batch_hashes))
                now = time.perf_counter()
                if now - last_log >= log_every_secs:
                    last_log = now
                    rate = estimated * self.num_importance_samples / (now - start)
                    done = np.concatenate(parts["log_likelihood"])
                    left = (
                        ""
                        if total_images is None
                        else ", %.1f h left"
                        % ((total_images - first_index - size) * self.num_importance_samples / rate / 3600)
                    )
                    logging.info(
                        "Evaluated %d images (batch %d), running NLL %.3f nats, %.1f importance samples/s%s",
                        first_index + size,
                        index + 1,
                        -float(np.mean(done)),
                        rate,
                        left,
                    )
            first_index += size
        if first_index == 0:
            raise ValueError("No images to evaluate: the split is empty.")
        if skip_batches > len(batch_hashes):
            raise ValueError(
                f"The partial evaluation being resumed has {skip_batches} batches, the data only "
                f"{len(batch_hashes)}; delete the .partial.npz file to start over."
            )
        arrays = {key: np.concatenate(value) for key, value in parts.items()}
        return Estimates(
            arrays["log_likelihood"],
            arrays["elbo"],
            arrays["iwae_5"],
            digest.hexdigest(),
            time.perf_counter() - start,
            estimated,
        )


def _binary_pixels(batch) -> np.ndarray:
    """uint8 0/1 pixels of a batch; raises unless every pixel is 0 or 1."""
    values = np.asarray(batch)
    if not np.all((values == 0) | (values == 1)):
        raise ValueError(
            "The evaluated images must be binary (0/1); got other values. Use a 'static' dataset or "
            "data.make_dataset's binarization."
        )
    return values.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# Evaluating a run.
# ----------------------------------------------------------------------------------------------------


EVAL_PRECISION_BINDING = "model.precision = 'float32'"


def select_split(run: runs.Run, split: str):
    """The images `evaluate` scores: (ImageSplits they come from, float32 `[N, H, W, C]`, role).

    'test' scores the test split of `eval_dataset.*` when a recipe sets it (MNIST: the static Larochelle test
    set), else the run's own test split; 'validation' always scores the run's own validation split (the one model
    selection used). `role` is 'eval_dataset' or 'run_dataset'.
    """
    _check_split(split)
    splits, role = run.splits, "run_dataset"
    if split == "test":
        eval_splits = builders.build_eval_dataset()
        if eval_splits is not None:
            families = {name: _DATASET_FAMILY.get(name, name) for name in (run.splits.name, eval_splits.name)}
            if families[run.splits.name] != families[eval_splits.name]:
                raise ValueError(
                    f"The run trained on dataset.name={run.splits.name!r}, but eval_dataset.name={eval_splits.name!r} "
                    "(bound by the recipe, e.g. through gin/common/mnist.gin) would score it on other images. Pass "
                    '--gin_bindings="eval_dataset.name=None" to score the run\'s own test split.'
                )
            splits, role = eval_splits, "eval_dataset"
    images = splits.split(split)
    if tuple(images.shape[1:]) != tuple(run.model.image_shape):
        raise ValueError(
            f"The {split} images of {splits.name!r} have shape {tuple(images.shape[1:])}, the model "
            f"takes {tuple(run.model.image_shape)}; set eval_dataset.name to a dataset of the run's "
            "image shape (or eval_dataset.name=None)."
        )
    return splits, images, role


def evaluate(
    model_dir: str,
    checkpoint="latest",
    num_importance_samples: int = DEFAULT_NUM_IMPORTANCE_SAMPLES,
    split: str = "test",
    gin_bindings=(),
    chunk_size: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_images: Optional[int] = None,
    seed: int = 0,
    log_every_secs: float = 60.0,
) -> dict:
    """Estimates the NLL of a run's checkpoint on a split; writes the JSON result, per-image arrays and scalars.

    Not gin-configurable: its arguments are the evaluation binary's flags (one home each); `gin_bindings` only
    adjust the run's own config (e.g. `eval_dataset.local_path`, `model.precision`).

    Args:
      model_dir: a training run's directory (`operative_config.gin` + `checkpoints/`).
      checkpoint: 'latest', 'best' (best validation IWAE_k) or a step number.
      num_importance_samples: K (Table 1: 10,000).
      split: 'test' or 'validation' (see `select_split`).
      gin_bindings: bindings applied after the run's config.
      chunk_size: samples per decoder pass (None: about `TARGET_DECODER_ROWS` rows per pass); speed only.
      batch_size: images per encoder pass; speed only, except that it fixes the binarization of 'dynamic' splits
        (`data.make_dataset`, seeded with the run's `train.seed`), which the data hash records.
      max_images: a budget cap: evaluate `max_images` images evenly spread over the split (indices
        round(linspace(0, N - 1, max_images)); recorded, and in the file name). Spread, not the first ones:
        the static MNIST test set is sorted by digit, so its first images are all zeros.
      seed: noise seed in [0, 2^31); the same arguments give the same numbers.
      log_every_secs: progress log cadence.

    Returns:
      The result dict, as written to `result_path(...)`: `nll` and `nll_stderr` (nats, positive), `elbo`, `iwae_5`
      (bounds on log p(x), negative) with their stderrs, `num_importance_samples`, `split`, `dataset`,
      `binarization`, `source`, `data_sha256`, `num_images`, `seed`, `step`, `checkpoint_path`, timing, ...
    """
    start = time.perf_counter()
    _check_positive_int(num_importance_samples, "num_importance_samples")
    _check_positive_int(batch_size, "batch_size")
    if chunk_size is not None:
        _check_positive_int(chunk_size, "chunk_size")
    if max_images is not None:
        _check_positive_int(max_images, "max_images")
    _check_seed(seed)
    _check_split(split)
    # Scores are computed in float32 whatever precision the run trained in (its weights are float32; a
    # bfloat16 decoder shifts the NLL by ~0.1 nat, the size of Table 1's gaps). A binding can override it.
    run = runs.load_run(model_dir, checkpoint, [EVAL_PRECISION_BINDING] + list(gin_bindings))
    if not isinstance(run.model, models.VAE):
        raise ValueError(
            f"{model_dir} is a {type(run.model).__name__} run: the importance-sampled NLL needs the VAE "
            "family's Bernoulli likelihood; an adversarial model (MSE reconstruction + discriminator) "
            "defines no likelihood. Export its generator with python -m crvae_tf.export instead."
        )
    splits, images, role = select_split(run, split)
    num_in_split = int(images.shape[0])
    subset = None
    if max_images is not None and max_images < num_in_split:
        subset = np.unique(np.round(np.linspace(0, num_in_split - 1, max_images)).astype(np.int64))
        images = images[subset]
    sampler = ImportanceSampler(run.model, num_importance_samples, chunk_size, seed, batch_size)
    batches = data_lib.make_dataset(
        images, batch_size=batch_size, binarization=splits.binarization, seed=run.seed, training=False
    )
    stem = result_stem(split, run.step, num_importance_samples, max_images)
    folder = os.path.join(model_dir, EVAL_DIR)
    partial = Partial(
        os.path.join(folder, stem + ".partial.npz"),
        {
            "checkpoint_path": os.path.abspath(run.checkpoint_path),
            "num_importance_samples": num_importance_samples,
            "split": split,
            "source": splits.source,
            "seed": seed,
            "batch_size": batch_size,
            "max_images": max_images,
            "precision": run.model.dtype_policy.name,
            "gin_bindings": list(gin_bindings),
        },
    )
    restored = partial.load()
    skip = len(restored[3]) if restored else 0
    num_batches = -(-len(images) // batch_size)
    logging.info(
        "Evaluating %s step %d on %d %s images (%s, %s) with K=%d: %d batches of %d, %d samples per decoder pass%s.",
        model_dir,
        run.step,
        len(images),
        split,
        splits.name,
        splits.binarization,
        num_importance_samples,
        num_batches,
        batch_size,
        sampler.chunk_size,
        f"; resuming after batch {skip}" if skip else "",
    )
    estimates = sampler.estimate(
        batches,
        skip_batches=skip,
        restored=restored,
        on_batch=partial.save,
        log_every_secs=log_every_secs,
        total_images=len(images),
        image_indices=subset,
    )
    if not np.all(np.isfinite(estimates.log_likelihood)):
        bad = np.flatnonzero(~np.isfinite(estimates.log_likelihood))
        raise FloatingPointError(
            f"log p(x) is not finite for {len(bad)} images (first: {bad[:5].tolist()}): the "
            f"checkpoint {run.checkpoint_path} holds non-finite weights or logits."
        )
    result = {
        **summarize(estimates, int(np.prod(run.model.image_shape))),
        "num_importance_samples": int(num_importance_samples),
        "split": split,
        "dataset": splits.name,
        "dataset_role": role,
        "binarization": splits.binarization,
        "source": splits.source,
        "data_sha256": estimates.data_sha256,
        "num_images": int(len(images)),
        "num_images_in_split": num_in_split,
        "max_images": max_images,
        "seed": int(seed),
        "step": int(run.step),
        "checkpoint": str(checkpoint),
        "checkpoint_path": os.path.abspath(run.checkpoint_path),
        "model_dir": os.path.abspath(model_dir),
        "latent_head": type(run.model.latent_head).__name__,
        "precision": run.model.dtype_policy.name,
        "batch_size": int(batch_size),
        "chunk_size": sampler.chunk_size,
        "gin_bindings": list(gin_bindings),
        "units": "nats per image (nll positive; elbo and iwae_5 are bounds on log p(x))",
        "estimation_s": round(estimates.seconds, 3),
        "importance_samples_per_s": round(
            estimates.num_estimated * num_importance_samples / max(estimates.seconds, 1e-9), 2
        ),
        "wall_time_s": None,
        "resumed_images": int(len(images) - estimates.num_estimated),
        "per_image_path": os.path.join(os.path.abspath(folder), stem + ".npz"),
        "result_path": os.path.join(os.path.abspath(folder), stem + ".json"),
        **provenance(),
    }
    if splits.name == "sprites" and splits.factors and splits.generator:
        # Does the model keep the sprites' shapes, or draw blobs at the right place? (no likelihood can tell)
        factors = splits.factors[split]
        if subset is not None:
            factors = {key: value[subset] for key, value in factors.items()}
        result.update(sprite_shapes.score_reconstructions(run.model, splits, images, factors))
    buffer = io.BytesIO()
    np.savez(buffer, log_likelihood=estimates.log_likelihood, elbo=estimates.elbo, iwae_5=estimates.iwae_5)
    artifacts.atomic_write_bytes(result["per_image_path"], buffer.getvalue())
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "tb", f"eval_{split}"))
    suffix = f"k{num_importance_samples}" + ("" if max_images is None else f"_n{max_images}")
    with writer.as_default():
        for key in ("nll", "nll_stderr", "elbo", "iwae_5"):
            if result[key] is not None:
                tf.summary.scalar(f"{key}/{suffix}", result[key], step=run.step)
    writer.close()
    result["wall_time_s"] = round(time.perf_counter() - start, 3)
    artifacts.atomic_write_text(result["result_path"], json.dumps(result, indent=2, allow_nan=False) + "\n")
    partial.remove()
    logging.info(
        "%s: NLL %.3f +- %.3f nats (ELBO %.3f, IWAE_5 %s), %d images, K=%d, %.1f samples/s",
        result["result_path"],
        result["nll"],
        result["nll_stderr"] or 0.0,
        result["elbo"],
        "n/a" if result["iwae_5"] is None else f"{result['iwae_5']:.3f}",
        result["num_images"],
        num_importance_samples,
        result["importance_samples_per_s"],
    )
    return result


def evaluate_new_checkpoints(
    model_dir: str,
    poll_seconds: float = 60.0,
    timeout: float = 3600.0,
    on_result: Optional[Callable[[dict], None]] = None,
    **evaluate_kwargs,
) -> list:
    """Evaluates each checkpoint of a (possibly still training) run once, as it appears.

    Every poll evaluates the kept checkpoints that have no result file yet for these settings (oldest first; a
    checkpoint the trainer deleted meanwhile is skipped). Stops once the checkpoint at `train.max_steps` is
    evaluated, or when no new checkpoint appeared for `timeout` seconds.

    Args:
      model_dir: the run directory.
      poll_seconds: seconds between polls.
      timeout: seconds without a new checkpoint before giving up (0: one pass over the current checkpoints).
      on_result: called with each result dict as it is written (the binary prints it).
      **evaluate_kwargs: `evaluate`'s arguments other than `model_dir` and `checkpoint`.

    Returns:
      The result dicts, in evaluation order.
    """
    if "checkpoint" in evaluate_kwargs:
        raise ValueError("evaluate_new_checkpoints evaluates every checkpoint; do not pass checkpoint=.")
    if poll_seconds <= 0 or timeout < 0:
        raise ValueError(f"poll_seconds={poll_seconds} must be > 0 and timeout={timeout} >= 0.")
    split = evaluate_kwargs.get("split", "test")
    k = evaluate_kwargs.get("num_importance_samples", DEFAULT_NUM_IMPORTANCE_SAMPLES)
    max_images = evaluate_kwargs.get("max_images")
    results, deadline = [], time.time() + timeout
    while True:
        pending = [
            step
            for step in runs.kept_steps(model_dir)
            if not os.path.exists(result_path(model_dir, split, step, k, max_images))
        ]
        for step in pending:
            try:
                result = evaluate(model_dir, checkpoint=step, **evaluate_kwargs)
            except FileNotFoundError as error:  # deleted by the trainer's max_to_keep meanwhile
                logging.warning("Skipping step %d: %s", step, error)
                continue
            results.append(result)
            deadline = time.time() + timeout
            if on_result is not None:
                on_result(result)
        max_steps = runs.max_steps(model_dir)
        done = max_steps is not None and os.path.exists(result_path(model_dir, split, max_steps, k, max_images))
        if done or time.time() >= deadline:
            if not done:
                logging.info("No new checkpoint in %s for %.0f s; stopping.", model_dir, timeout)
            return results
        time.sleep(max(0.0, min(poll_seconds, deadline - time.time())))


def _check_split(split) -> None:
    if split not in SPLITS:
        raise ValueError(
            f"split={split!r} is not one of {list(SPLITS)}: 'test' (Table 1; the eval_dataset.* test "
            "split when configured) or 'validation' (the run's own validation split)."
        )


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int (--{name}).")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed={seed!r} must be an int in [0, 2^31) (--seed).")


__all__ = [
    "Estimates",
    "ImportanceSampler",
    "evaluate",
    "evaluate_new_checkpoints",
    "select_split",
    "summarize",
    "result_path",
    "result_stem",
    "default_chunk_size",
    "SPLITS",
    "DEFAULT_NUM_IMPORTANCE_SAMPLES",
    "DEFAULT_BATCH_SIZE",
]
