"""The empirical MVN prior of a convolutional-latent VAE: the "empirical cVAE" of paper Sec. 3, Fig. 2(h).

A model whose latent is a `C x H x W` convolutional code (the cVAE's 64 x 4 x 4, or any head with
`latent_channels`) is trained against the standard-normal prior, yet its posteriors carry spatial
structure that samples from N(0, I) cannot reproduce. The paper replaces the prior after training by one
MVN per latent channel k = 1..C, estimated from posterior samples z^n ~ q(z | x_n), one per image:

    mu_k    = 1/N     sum_n z_k^n                              in R^{HW}
    Sigma_k = 1/(N-1) sum_n (z_k^n - mu_k)(z_k^n - mu_k)^T      in R^{HW x HW}   (unbiased)

where z_k^n is channel k of z^n as an (h, w) row-major vector. Channels are independent of each other
(block-diagonal covariance, "estimated separately for computational efficiency"). Samples are

    z_k = A_k eps_k + mu_k,   A_k A_k^T = Sigma_k + j_k I,   eps_k ~ N(0, I_HW),

with A_k the lower Cholesky factor and j_k >= 0 a jitter, 0 unless Sigma_k is numerically singular
(then the smallest of `JITTER_LADDER` x mean(diag Sigma_k) that makes the factorisation succeed; it is
stored and reported). `sample` and `log_prob` use exactly N(mu_k, A_k A_k^T).

Latent layout: a flat latent `[batch, latent_dim]` is the channel-major (C, H, W) flattening of the code
(see `crvae_tf.architectures.blocks`), so channel k is the contiguous slice `z[:, k*H*W:(k+1)*H*W]`. Every array here
is in that layout: `mean` is `[C, HW]`, `covariance` and `cholesky` are `[C, HW, HW]`.

Estimation streams over batches in float64 (`ChannelMoments`): it keeps the count, the sum of
(z - s) and the sum of (z - s)(z - s)^T per channel, with a fixed shift s (the first batch's mean) that
avoids the cancellation of the textbook sum-of-squares formula. Memory is O(C (HW)^2) whatever N.

Gin-free and flag-free: importable in a notebook. The run-level driver is `python -m crvae_tf.explore`.
"""

import dataclasses
import io
import json
import logging
import os
from typing import Iterable
from typing import Optional
from typing import Tuple
from typing import Union

import numpy as np
import tensorflow as tf

from crvae_tf import artifacts

FORMAT_VERSION = 1
PRIOR_DIR = "empirical_prior"
# Relative jitters tried, in order, when a covariance is not numerically positive definite: the absolute
# jitter added to the diagonal of Sigma_k is the first that works, times mean(diag(Sigma_k)).
JITTER_LADDER = (0.0, 1e-10, 1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
DEFAULT_BATCH_SIZE = 256
# Tags that separate the noise streams derived from one seed (posterior samples vs. prior samples).
_POSTERIOR_TAG = 101
_SAMPLE_TAG = 102
_ARRAYS = ("mean", "covariance", "cholesky", "jitter")

_logger = logging.getLogger(__name__)

LatentShape = Tuple[int, int, int]


def prior_path(model_dir: str, step: int) -> str:
    """Where a run's fitted prior lives: `model_dir/empirical_prior/step<step>.npz`."""
    return os.path.join(model_dir, PRIOR_DIR, f"step{int(step)}.npz")


def latent_shape_of(model) -> LatentShape:
    """(C, H, W) of a model's convolutional latent; rejects flat (FC) latents.

    Args:
      model: a `crvae_tf.models.VAE` (anything with `latent_head` and `latent_dim`) whose head has
        `latent_channels` and `feature_shape = (H, W, C_feat)`.

    Raises:
      ValueError: the head has no `latent_channels` (the standard VAE's `FCHead`), or its shape does not
        multiply out to `latent_dim`.
    """
    head = model.latent_head
    channels = getattr(head, "latent_channels", None)
    if channels is None:
        raise ValueError(
            f"The empirical prior needs a convolutional latent (latent_channels x H x W, e.g. the cVAE's 64x4x4), "
            f"but this model's latent head {type(head).__name__} has a flat latent of {model.latent_dim} dimensions "
            "with no channels to slice (latent_head.kind='fc', the standard VAE). Use a run with "
            "latent_head.kind 'conv' (gin/mnist_cvae.gin), 'block_fc' or 'channel_recurrent'."
        )
    shape = tuple(int(d) for d in head.latent_shape)
    return shape


def _check_latent_shape(latent_shape) -> LatentShape:
    shape = tuple(int(d) for d in latent_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"latent_shape must be (channels, height, width) of positive ints, got {latent_shape}.")
    return shape


def _check_seed(seed, what="seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{what}={seed!r} must be a non-negative int (the same seed gives the same draws).")
    return int(seed)


def _as_channels(z, latent_shape: LatentShape) -> np.ndarray:
    """Flat channel-major `[..., C*H*W]` -> float64 `[..., C, H*W]`."""
    channels, height, width = latent_shape
    z = np.asarray(z, dtype=np.float64)
    if z.ndim < 1 or z.shape[-1] != channels * height * width:
        raise ValueError(
            f"Latents must be [..., {channels * height * width}] (the channel-major flattening of "
            f"{channels}x{height}x{width}), got shape {z.shape}."
        )
    return z.reshape(z.shape[:-1] + (channels, height * width))


def standard_normal_latents(num: int, latent_dim: int, seed: int) -> np.ndarray:
    """eps ~ N(0, I): float64 `[num, latent_dim]`, a pure function of `seed` (stateless, reproducible).

    These are the draws `EmpiricalPrior.sample(num, seed)` transforms, so decoding both shows the standard
    prior and the empirical prior on paired noise.
    """
    if int(num) < 1:
        raise ValueError(f"num={num} must be >= 1.")
    rng = np.random.default_rng([_check_seed(seed), _SAMPLE_TAG])
    return rng.standard_normal((int(num), int(latent_dim)))


class ChannelMoments:
    """Streaming per-channel mean and unbiased covariance of channel-major latents, in float64.

    After `update` with batches z `[batch, C*H*W]` holding N rows in total (z_k = channel k, `[HW]`):

        S1_k = sum_n (z_k^n - s_k),   S2_k = sum_n (z_k^n - s_k)(z_k^n - s_k)^T
        mean_k = s_k + S1_k / N,      covariance_k = (S2_k - S1_k S1_k^T / N) / (N - 1)

    with the shift s = the first batch's mean (exact for any s; a shift near the mean keeps the
    subtraction well conditioned). Memory: `[C, HW]` + `[C, HW, HW]` whatever N.
    """

    def __init__(self, latent_shape):
        self.latent_shape = _check_latent_shape(latent_shape)
        channels, height, width = self.latent_shape
        pixels = height * width
        self.count = 0
        self.shift = None
        self.sum = np.zeros((channels, pixels), np.float64)
        self.sum_outer = np.zeros((channels, pixels, pixels), np.float64)

    def update(self, z) -> "ChannelMoments":
        """Adds a batch `[batch, C*H*W]` of latents (any float dtype; accumulated in float64)."""
        if np.ndim(z) != 2:
            raise ValueError(f"update takes a batch [batch, latent_dim], got shape {np.shape(z)}.")
        z = _as_channels(z, self.latent_shape)  # [batch, C, HW]
        if not np.all(np.isfinite(z)):
            raise FloatingPointError("A batch of latents holds NaN or Inf; the model's posterior is not finite.")
        if not len(z):
            return self
        if self.shift is None:
            self.shift = z.mean(axis=0)
        centred = z - self.shift  # [batch, C, HW]
        self.count += len(z)
        self.sum += centred.sum(axis=0)
        self.sum_outer += np.einsum("bcp,bcq->cpq", centred, centred)
        return self

    def mean(self) -> np.ndarray:
        """mu_k: float64 `[C, HW]`."""
        self._check_count(1)
        return self.shift + self.sum / self.count

    def covariance(self) -> np.ndarray:
        """Sigma_k, unbiased (1 / (N - 1)): float64 `[C, HW, HW]`, symmetrised."""
        self._check_count(2)
        mean_offset = self.sum / self.count
        cov = (self.sum_outer - self.count * np.einsum("cp,cq->cpq", mean_offset, mean_offset)) / (self.count - 1)
        return 0.5 * (cov + np.swapaxes(cov, -1, -2))

    def _check_count(self, minimum):
        if self.count < minimum:
            raise ValueError(f"The moments need at least {minimum} latents, got {self.count}; fit on more images.")


def cholesky_with_jitter(covariance) -> Tuple[np.ndarray, np.ndarray]:
    """Lower Cholesky factors A_k with A_k A_k^T = Sigma_k + j_k I, j_k from `JITTER_LADDER`.

    Args:
      covariance: float64 `[C, P, P]` symmetric positive semi-definite matrices.

    Returns:
      (cholesky `[C, P, P]` lower triangular, jitter `[C]` absolute amounts added to each diagonal).

    Raises:
      np.linalg.LinAlgError: a matrix stays indefinite even with the largest jitter (it is not a covariance).
    """
    covariance = np.asarray(covariance, np.float64)
    factors = np.zeros_like(covariance)
    jitter = np.zeros(covariance.shape[0], np.float64)
    eye = np.eye(covariance.shape[-1])
    for k, sigma in enumerate(covariance):
        scale = float(np.mean(np.diag(sigma)))
        scale = scale if np.isfinite(scale) and scale > 0 else 1.0
        for relative in JITTER_LADDER:
            try:
                factors[k] = np.linalg.cholesky(sigma + relative * scale * eye)
            except np.linalg.LinAlgError:
                continue
            jitter[k] = relative * scale
            break
        else:
            raise np.linalg.LinAlgError(
                f"Sigma_{k} (channel {k}) is not positive semi-definite even with a jitter of "
                f"{JITTER_LADDER[-1]} x mean(diag) = {JITTER_LADDER[-1] * scale:g} on the diagonal; its eigenvalues "
                f"range over [{np.linalg.eigvalsh(sigma).min():g}, {np.linalg.eigvalsh(sigma).max():g}]."
            )
    return factors, jitter


@dataclasses.dataclass(eq=False)
class EmpiricalPrior:
    """One MVN per latent channel, N(mu_k, A_k A_k^T), fitted to posterior samples (paper Sec. 3).

    Attributes:
      mean: float64 `[C, HW]`, mu_k.
      covariance: float64 `[C, HW, HW]`, the unbiased estimate Sigma_k (before jitter).
      latent_shape: (C, H, W) of the model's latent.
      num_images: N, the posterior samples (one per image) the estimate used.
      cholesky: float64 `[C, HW, HW]` lower A_k; computed from `covariance` when None.
      jitter: float64 `[C]`, j_k added to Sigma_k's diagonal before factorising (0 = none needed).
      step: the checkpoint step of the model it was fitted to (None: unknown).
      seed: the seed of the posterior noise eps in z^n = loc_n + sigma_n * eps^n (None: not from `fit`).
      split: the data split the images came from ('train' for `python -m crvae_tf.explore`).
      source: free-text provenance (e.g. the checkpoint path).
    """

    mean: np.ndarray
    covariance: np.ndarray
    latent_shape: LatentShape
    num_images: int
    cholesky: Optional[np.ndarray] = None
    jitter: Optional[np.ndarray] = None
    step: Optional[int] = None
    seed: Optional[int] = None
    split: Optional[str] = None
    source: Optional[str] = None

    def __post_init__(self):
        self.latent_shape = _check_latent_shape(self.latent_shape)
        channels, height, width = self.latent_shape
        pixels = height * width
        self.mean = np.asarray(self.mean, np.float64)
        self.covariance = np.asarray(self.covariance, np.float64)
        for name, array, shape in (
            ("mean", self.mean, (channels, pixels)),
            ("covariance", self.covariance, (channels, pixels, pixels)),
        ):
            if array.shape != shape:
                raise ValueError(f"{name} has shape {array.shape}; latent_shape {self.latent_shape} needs {shape}.")
        if self.cholesky is None:
            self.cholesky, self.jitter = cholesky_with_jitter(self.covariance)
            if self.jitter.max() > 0:
                _logger.warning(
                    "Empirical prior: added a diagonal jitter to %d of %d channel covariances (max "
                    "%.3g) to factorise them.",
                    int(np.sum(self.jitter > 0)),
                    channels,
                    self.jitter.max(),
                )
        else:
            self.cholesky = np.asarray(self.cholesky, np.float64)
            self.jitter = np.zeros(channels) if self.jitter is None else np.asarray(self.jitter, np.float64)
            if self.cholesky.shape != self.covariance.shape or self.jitter.shape != (channels,):
                raise ValueError(
                    f"cholesky {self.cholesky.shape} / jitter {self.jitter.shape} do not match "
                    f"covariance {self.covariance.shape}."
                )
        self.num_images = int(self.num_images)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_moments(cls, moments: ChannelMoments, **metadata) -> "EmpiricalPrior":
        """The prior of accumulated `ChannelMoments` (metadata: step, seed, split, source)."""
        return cls(
            mean=moments.mean(),
            covariance=moments.covariance(),
            latent_shape=moments.latent_shape,
            num_images=moments.count,
            **metadata,
        )

    @classmethod
    def from_latents(cls, latents, latent_shape, **metadata) -> "EmpiricalPrior":
        """The prior of latents `[N, C*H*W]` (or an iterable of such batches), streamed in float64."""
        moments = ChannelMoments(latent_shape)
        if isinstance(latents, np.ndarray):
            latents = [latents]
        for batch in latents:
            moments.update(batch)
        return cls.from_moments(moments, **metadata)

    @classmethod
    def fit(
        cls,
        model,
        images: Union[np.ndarray, Iterable],
        seed: int,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_images: Optional[int] = None,
        **metadata,
    ) -> "EmpiricalPrior":
        """Fits the prior to one posterior sample per image: z^n = loc(x_n) + exp(log_variance(x_n) / 2) eps^n.

        Args:
          model: a `crvae_tf.models.VAE` with a convolutional latent (`latent_shape_of`); run in
            evaluation mode (`model.encode(x, training=False)`, BatchNorm moving statistics).
          images: a float array `[N, H_img, W_img, C_img]` of pixels in [0, 1] (already binarized for the
            Bernoulli models, e.g. the batches of `data.make_dataset(..., training=False)`), or an iterable
            of such batches (a `tf.data.Dataset`, a list of arrays; `(images, labels)` tuples are accepted).
            They are mapped to the model's `input_range` (x -> lo + (hi - lo) x: [-1, 1] for the adversarial
            family) before `model.encode`, as the data pipeline's training path does.
          seed: the posterior noise: eps comes from one stream `np.random.default_rng([seed, 101])` drawn in
            image order, so the result does not depend on how the images are batched.
          batch_size: images per encoder call when `images` is an array.
          max_images: use only the first this many images (None: all).
          **metadata: `step`, `split`, `source` to record.

        Returns:
          The fitted `EmpiricalPrior` (`num_images` = images used, `seed` = `seed`).
        """
        latent_shape = latent_shape_of(model)
        seed = _check_seed(seed)
        if max_images is not None and int(max_images) < 2:
            raise ValueError(f"max_images={max_images} must be >= 2 (an unbiased covariance needs N >= 2) or None.")
        if isinstance(images, np.ndarray):
            if int(batch_size) < 1:
                raise ValueError(f"batch_size={batch_size} must be >= 1.")
            array, size = images, int(batch_size)
            images = (array[start : start + size] for start in range(0, len(array), size))
        rng = np.random.default_rng([seed, _POSTERIOR_TAG])
        lo, hi = (float(v) for v in getattr(model, "input_range", (0.0, 1.0)))
        encode = tf.function(lambda x: model.encode(lo + (hi - lo) * x, training=False), reduce_retracing=True)
        moments = ChannelMoments(latent_shape)
        for batch in images:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            if max_images is not None:
                batch = batch[: int(max_images) - moments.count]
            if len(batch) == 0:
                break
            loc, log_variance = (np.asarray(t, np.float64) for t in encode(tf.convert_to_tensor(batch, tf.float32)))
            eps = rng.standard_normal(loc.shape)
            moments.update(loc + np.exp(0.5 * log_variance) * eps)
            if max_images is not None and moments.count >= int(max_images):
                break
        if moments.count < 2:
            raise ValueError(f"The empirical prior needs at least 2 images, got {moments.count}.")
        return cls.from_moments(moments, seed=seed, **metadata)

    # ------------------------------------------------------------------ the distribution
    @property
    def latent_dim(self) -> int:
        return int(np.prod(self.latent_shape))

    def transform(self, eps) -> np.ndarray:
        """Standard-normal latents `[..., latent_dim]` -> prior samples z_k = A_k eps_k + mu_k, float64."""
        eps = _as_channels(eps, self.latent_shape)  # [..., C, HW]
        z = np.einsum("cpq,...cq->...cp", self.cholesky, eps) + self.mean
        return z.reshape(z.shape[:-2] + (self.latent_dim,))

    def sample(self, num: int, seed: int, dtype=np.float32) -> np.ndarray:
        """`num` samples `[num, latent_dim]` in the model's flat channel-major layout, a pure function of seed.

        Equals `transform(standard_normal_latents(num, latent_dim, seed))` (cast to `dtype`).
        """
        return self.transform(standard_normal_latents(num, self.latent_dim, seed)).astype(dtype)

    def log_prob(self, z) -> np.ndarray:
        """log p(z) = sum_k log N(z_k; mu_k, A_k A_k^T) in nats, float64 `[...]` for z `[..., latent_dim]`.

        With w_k = A_k^{-1} (z_k - mu_k): log N = -1/2 (HW log 2 pi + ||w_k||^2) - sum_i log (A_k)_ii.
        """
        centred = _as_channels(z, self.latent_shape) - self.mean  # [..., C, HW]
        batch_shape = centred.shape[:-2]
        channels, pixels = centred.shape[-2:]
        flat = centred.reshape((-1, channels, pixels, 1))
        whitened = np.linalg.solve(self.cholesky[None], flat)[..., 0]  # [n, C, HW]
        log_det = np.sum(np.log(np.diagonal(self.cholesky, axis1=-2, axis2=-1)))
        log_prob = -0.5 * np.sum(whitened**2, axis=(-2, -1)) - log_det - 0.5 * channels * pixels * np.log(2.0 * np.pi)
        return log_prob.reshape(batch_shape)

    # ------------------------------------------------------------------ persistence
    def get_config(self) -> dict:
        """JSON-able metadata: format, latent shape, N, jitter, step, seed, split, source."""
        return {
            "format_version": FORMAT_VERSION,
            "latent_shape": list(self.latent_shape),
            "latent_dim": self.latent_dim,
            "num_images": self.num_images,
            "jitter_max": float(self.jitter.max()),
            "jittered_channels": int(np.sum(self.jitter > 0)),
            "step": self.step,
            "seed": self.seed,
            "split": self.split,
            "source": self.source,
        }

    def save(self, path: str) -> str:
        """Writes an .npz (arrays + the `get_config` JSON as `metadata`) atomically; returns `path`."""
        buffer = io.BytesIO()
        np.savez(
            buffer, metadata=np.array(json.dumps(self.get_config())), **{name: getattr(self, name) for name in _ARRAYS}
        )
        artifacts.atomic_write_bytes(path, buffer.getvalue())
        return path

    @classmethod
    def load(cls, path: str) -> "EmpiricalPrior":
        """Reads a prior written by `save` (bit-exact arrays)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No empirical prior at {path}; fit one with python -m crvae_tf.explore "
                "--mode=empirical_prior --model_dir=..."
            )
        with np.load(path, allow_pickle=False) as data:
            missing = sorted(set(_ARRAYS + ("metadata",)) - set(data.files))
            if missing:
                raise ValueError(f"{path} is not an empirical prior file: it lacks {missing}.")
            config = json.loads(str(data["metadata"]))
            arrays = {name: data[name] for name in _ARRAYS}
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format_version {config.get('format_version')}; this code reads {FORMAT_VERSION}. Refit it."
            )
        return cls(
            latent_shape=tuple(config["latent_shape"]),
            num_images=config["num_images"],
            step=config["step"],
            seed=config["seed"],
            split=config["split"],
            source=config["source"],
            **arrays,
        )


__all__ = [
    "EmpiricalPrior",
    "ChannelMoments",
    "cholesky_with_jitter",
    "latent_shape_of",
    "prior_path",
    "standard_normal_latents",
    "JITTER_LADDER",
    "PRIOR_DIR",
]
