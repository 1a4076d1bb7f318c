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
BCE_sum + 784 * 0.001 * KL, i.e. kl_weight = 0.784 (notes 5.1).

IWAE_K(x) = log (1/K) sum_k p(x, z_k) / q(z_k|x),  z_k ~ q(z|x)   (Burda et al. 2016), over the leading
sample axis of `log_weights: [num_samples, batch]`.
"""

import math

import tensorflow as tf
import tensorflow_probability as tfp

from crvae_tf import distributions

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
            raise ValueError(f"kl_step_weights has {weights.shape[0]} entries but the model has "
                             f"{kl_steps.shape[-1]} time steps")
        kl_steps = kl_steps * weights
    return kl_weight * tf.reduce_sum(kl_steps, axis=-1)


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
    return (distributions.bernoulli_likelihood(logits).log_prob(images)
            + distributions.prior(z).log_prob(z) - q.log_prob(z))


def iwae_bound(log_weights):
    """log-mean-exp over the sample axis: `[num_samples, batch]` -> `[batch]` (IWAE_K; K=1 is the ELBO)."""
    return tfp.math.reduce_logmeanexp(log_weights, axis=0)


def nats_to_bits_per_dim(nats, num_dims: int):
    """Converts nats per image to bits per dimension."""
    return nats / (num_dims * math.log(2.0))
