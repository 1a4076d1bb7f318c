"""Rate, distortion, per-time-step KL, ELBO and the importance-weighted bound, in nats per image.

All functions are pure, take explicit axes and return per-example values; the caller reduces.

For an image x with posterior q(z|x) = N(loc, diag(exp(log_variance))) and prior N(0, I):

    distortion(x) = -E_q[log p(x|z)]                                 (one-sample estimate)
    KL_t(x)       = KL(q(z_t|x) || p(z_t)),  z_t = z[t*D/T:(t+1)*D/T]  (analytic, time step t)
    rate(x)       = sum_t KL_t(x) = KL(q(z|x) || p(z))
    ELBO(x)       = -distortion(x) - rate(x)
    loss(x)       = distortion(x) + kl_weight * sum_t kl_step_weights[t] * KL_t(x)

With kl_weight = 1 and all kl_step_weights = 1 the loss is the negative ELBO. The authors' MNIST code
minimises the per-pixel-mean BCE + alpha * KL / batch with alpha = 0.001, which per image is
BCE_sum + 784 * 0.001 * KL, i.e. kl_weight = 0.784 (porting notes 5.1).

IWAE_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k|x),  z_k ~ q(z|x)   (Burda et al. 2016), over the leading
sample axis of `log_weights: [num_samples, batch]`.

For test-set log-likelihoods with large K, `importance_sampled_log_likelihood` draws the K samples in chunks
and folds them into an online log-sum-exp in float64, so peak memory is that of one chunk, not of K:

    m_j = max(m_{j-1}, max_{k in chunk j} w_k)
    s_j = s_{j-1} exp(m_{j-1} - m_j) + sum_{k in chunk j} exp(w_k - m_j)
    IWAE_K = m_J + log s_J - log K,    ELBO_K = (1/K) sum_k w_k   (the same K samples)
"""

import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from crvae_tf.objectives import distributions

tfd = tfp.distributions


def kl_per_time_step(loc, log_variance, num_time_steps: int):
    """Analytic KL(q || N(0, I)) per time step.

    Args:
      loc: `[batch, latent_dim]` posterior mean.
      log_variance: `[batch, latent_dim]` posterior log-variance.
      num_time_steps: T; `latent_dim` must be divisible by T. Step t is the contiguous slice
        `[t*D/T, (t+1)*D/T)` of the (channel-major) latent vector.

    Returns:
      `[batch, T]` KL in nats; summing over the last axis gives the total KL.
    """
    loc = tf.convert_to_tensor(loc)
    latent_dim = loc.shape[-1]
    if latent_dim % num_time_steps:
        raise ValueError(f"latent_dim={latent_dim} is not divisible by num_time_steps={num_time_steps}")
    q = tfd.Normal(loc=loc, scale=tf.exp(0.5 * log_variance))
    kl = tfd.kl_divergence(q, tfd.Normal(loc=tf.zeros_like(loc), scale=tf.ones_like(loc)))  # [B, D]
    return tf.reduce_sum(tf.reshape(kl, [-1, num_time_steps, latent_dim // num_time_steps]), axis=-1)


def bernoulli_distortion(images, logits):
    """-log p(x|z) summed over pixels. `images`, `logits`: `[..., batch, H, W, C]` -> `[..., batch]`."""
    return -distributions.bernoulli_likelihood(logits).log_prob(images)


def weighted_rate(kl_steps, kl_weight: float = 1.0, kl_step_weights=None):
    """kl_weight * sum_t kl_step_weights[t] * KL_t.  `kl_steps: [batch, T]` -> `[batch]`."""
    if kl_step_weights is not None:
        weights = tf.constant(kl_step_weights, dtype=kl_steps.dtype)
        if weights.shape[0] != kl_steps.shape[-1]:
            raise ValueError(
                f"kl_step_weights has {weights.shape[0]} entries but the model has {kl_steps.shape[-1]} time steps"
            )
        kl_steps = kl_steps * weights
    return kl_weight * tf.reduce_sum(kl_steps, axis=-1)


def check_step_weights(weights, num_time_steps: int, what: str = "kl_step_weights"):
    """Validates per-time-step weights (one per step) and returns them as a list of floats (None stays None)."""
    if weights is None:
        return None
    weights = [float(w) for w in weights]
    if len(weights) != num_time_steps:
        raise ValueError(
            f"{what} has {len(weights)} entries; the latent head has num_time_steps={num_time_steps}. "
            "Give one weight per time step."
        )
    return weights


def active_units(loc, threshold: float = 0.01):
    """Active units (Burda et al. 2016): latent dimensions whose posterior mean varies across inputs,
    Var_x(E_q[z_d]) > threshold, estimated on a batch. `loc: [batch, latent_dim]` -> float32 scalar count."""
    variance = tf.math.reduce_variance(tf.cast(loc, tf.float32), axis=0)
    return tf.reduce_sum(tf.cast(variance > threshold, tf.float32))


def active_units_per_step(loc, num_time_steps: int, threshold: float = 0.01):
    """`active_units` of each time step (the contiguous slice t of the latent): `[batch, latent_dim]` -> `[T]`."""
    variance = tf.math.reduce_variance(tf.cast(loc, tf.float32), axis=0)
    active = tf.cast(variance > threshold, tf.float32)
    return tf.reduce_sum(tf.reshape(active, [num_time_steps, -1]), axis=-1)


def log_importance_weights(images, logits, z, loc, log_variance):
    """log p(x|z_k) + log p(z_k) - log q(z_k|x) for samples on a leading axis.

    Args:
      images: `[batch, H, W, C]` binary images.
      logits: `[num_samples, batch, H, W, C]` decoder logits for z.
      z: `[num_samples, batch, latent_dim]` samples from q(z|x).
      loc, log_variance: `[batch, latent_dim]` posterior parameters.

    Returns:
      `[num_samples, batch]` log importance weights.
    """
    q = distributions.posterior(loc, log_variance)
    return (
        distributions.bernoulli_likelihood(logits).log_prob(images) + distributions.prior(z).log_prob(z) - q.log_prob(z)
    )


def iwae_bound(log_weights):
    """log-mean-exp over the sample axis: `[num_samples, batch]` -> `[batch]` (IWAE_K; K=1 is the ELBO)."""
    return tfp.math.reduce_logmeanexp(log_weights, axis=0)


class LikelihoodEstimate(NamedTuple):
    """Per-example estimates from one set of K importance samples; `[batch]` float64, nats per image."""

    log_likelihood: tf.Tensor  # IWAE_K = log (1/K) sum_k exp(w_k), a stochastic lower bound on log p(x)
    elbo: tf.Tensor  # (1/K) sum_k w_k, an unbiased estimate of the ELBO; <= log_likelihood by Jensen


def streaming_log_mean_exp(log_weight_chunks) -> LikelihoodEstimate:
    """Online log-mean-exp and mean over the sample axis of a stream of chunks, in float64.

    Args:
      log_weight_chunks: an iterable of `[n_j, batch]` log importance weights, consumed one chunk at a time;
        together they hold the K = sum_j n_j samples.

    Returns:
      `LikelihoodEstimate` with `log_likelihood = log (1/K) sum_k exp(w_k)` and `elbo = (1/K) sum_k w_k`. The
      running max is shifted to 0 while it is not finite, so chunks that are entirely -inf give no NaN (all -inf
      gives -inf).
    """
    running_max = running_sum = weight_sum = None
    count = tf.constant(0.0, tf.float64)
    for chunk in log_weight_chunks:
        w = tf.cast(chunk, tf.float64)
        del chunk  # keep only one chunk alive while the next one is drawn
        if running_max is None:
            running_max = tf.fill(tf.shape(w)[1:], tf.constant(-math.inf, tf.float64))
            running_sum = weight_sum = tf.zeros_like(running_max)
        new_max = tf.maximum(running_max, tf.reduce_max(w, axis=0))
        shift = tf.where(tf.math.is_finite(new_max), new_max, tf.zeros_like(new_max))
        # exp(-inf - shift) = 0 rescales an empty (all -inf) running sum without forming inf * 0.
        running_sum = running_sum * tf.exp(running_max - shift) + tf.reduce_sum(tf.exp(w - shift), axis=0)
        running_max = new_max
        weight_sum += tf.reduce_sum(w, axis=0)
        count += tf.cast(tf.shape(w)[0], tf.float64)
        del w
    if running_max is None:
        raise ValueError("log_weight_chunks is empty; need at least one sample")
    shift = tf.where(tf.math.is_finite(running_max), running_max, tf.zeros_like(running_max))
    return LikelihoodEstimate(
        log_likelihood=tf.math.log(running_sum) + shift - tf.math.log(count), elbo=weight_sum / count
    )


def importance_sampled_log_likelihood(log_weights_fn, num_samples: int, chunk_size: int) -> LikelihoodEstimate:
    """IWAE_K estimate of log p(x) (and the ELBO from the same samples) with memory flat in K.

    Args:
      log_weights_fn: `n -> [n, batch]` log importance weights log p(x, z_k) - log q(z_k|x) for n fresh samples
        z_k ~ q(z|x) (e.g. a `tf.function` around the encoder, decoder and `log_importance_weights`). Call this
        function eagerly: its Python loop over chunks keeps one chunk alive at a time.
      num_samples: K >= 1.
      chunk_size: samples per call, >= 1; the last chunk holds the remainder when it does not divide K.

    Returns:
      `LikelihoodEstimate` of `[batch]` float64 tensors in nats per image; the caller reduces over images.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    def chunks():
        for start in range(0, num_samples, chunk_size):
            n = min(chunk_size, num_samples - start)
            yield _check_num_rows(log_weights_fn(n), n)

    return streaming_log_mean_exp(chunks())


def _check_num_rows(log_weights, n):
    shape = tf.TensorShape(getattr(log_weights, "shape", None))
    if shape.rank is not None and (shape.rank < 1 or shape[0] not in (None, n)):
        raise ValueError(f"log_weights_fn({n}) returned shape {shape}; expected [{n}, batch]")
    return log_weights


class GroupedLogMeanExp:
    """Streaming IWAE_k in float64: the mean over consecutive groups of `group` (= k) samples of their
    log-mean-exp, fed one `[n, batch]` chunk of log weights at a time (the authors' IWAE-5 model selection).

    Groups straddle chunk boundaries (a carry of < `group` rows), so the result does not depend on the chunking.
    """

    def __init__(self, group: int):
        self.group = group
        self.carry = None
        self.total = 0.0
        self.count = 0

    def add(self, log_weights):
        w = np.asarray(log_weights, np.float64)
        if self.carry is not None and len(self.carry):
            w = np.concatenate([self.carry, w], axis=0)
        usable = w.shape[0] // self.group * self.group
        if usable:
            g = w[:usable].reshape(usable // self.group, self.group, -1)
            top = np.max(g, axis=1, keepdims=True)
            top = np.where(np.isfinite(top), top, 0.0)
            with np.errstate(divide="ignore"):
                self.total = self.total + np.sum(np.log(np.mean(np.exp(g - top), axis=1)) + top[:, 0], axis=0)
            self.count += usable // self.group
        self.carry = w[usable:]

    def result(self, batch: int) -> np.ndarray:
        if self.count == 0:
            return np.full([batch], np.nan)
        return np.asarray(self.total / self.count, np.float64)


def nats_to_bits_per_dim(nats, num_dims: int):
    """Converts nats per image to bits per dimension."""
    return nats / (num_dims * math.log(2.0))
