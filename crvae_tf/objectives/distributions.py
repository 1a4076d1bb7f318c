"""TensorFlow Probability distributions used by the losses and bounds (never `tfp.layers`).

Layers return tensors; these helpers turn them into `tfd` objects inside the loss code:

* posterior  q(z|x) = Independent(Normal(loc, exp(log_variance / 2)), 1), event `[latent_dim]`;
* prior      p(z)   = Independent(Normal(0, 1), 1), event `[latent_dim]`;
* likelihood p(x|z) = Independent(Bernoulli(logits), 3), event `[height, width, channels]`.
"""

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions


def posterior(loc, log_variance):
    """Diagonal Gaussian q(z|x). `loc`, `log_variance`: `[..., batch, latent_dim]`."""
    return tfd.Independent(
        tfd.Normal(loc=loc, scale=tf.exp(0.5 * log_variance)), reinterpreted_batch_ndims=1, name="posterior"
    )


def prior(like):
    """Standard normal p(z) with the batch/event shape of the tensor `like` (`[..., latent_dim]`)."""
    zeros = tf.zeros_like(like)
    return tfd.Independent(tfd.Normal(loc=zeros, scale=tf.ones_like(like)), reinterpreted_batch_ndims=1, name="prior")


def bernoulli_likelihood(logits, event_ndims: int = 3):
    """p(x|z) over binary images: logits `[..., height, width, channels]`, event of rank `event_ndims`."""
    return tfd.Independent(
        tfd.Bernoulli(logits=logits, dtype=logits.dtype), reinterpreted_batch_ndims=event_ndims, name="likelihood"
    )
