"""The adversarial family's loss terms (paper Eq. 4, App. H; porting notes 5.2-5.5, 6.4) as pure functions.

Every function takes explicit tensors and returns per-example values (`[batch]`); the caller reduces. Images
are in the model's range [-1, 1]; discriminator outputs are logits l (D = sigmoid(l)).

    reconstruction_error(x, x_rec)  = mean_pixels (x_rec - x)^2       ('per_pixel': the paper's division by
                                    = sum_pixels  (x_rec - x)^2         C*H*W and the code's MSECriterion;
                                                                        'per_image')
    generator_adversarial_loss(l)   = softplus(-l) = -log D(y)        ('non_saturating', the code's
                                                                        BCE(D(y), 1))
                                    = -softplus(l) = log(1 - D(y))    ('minimax', the paper's App. H)
    mutual_information_error(q, u)  = (1/D) sum_d w_{t(d)} (q_d - u_d)^2  (Q's prediction of the generation-path
                                                                        output u = transform(z); u is a constant)
    discriminator_loss(l, y)        = BCE(sigmoid(l), y)                (labels y: 1 real, 0 fake)
    classification_loss(l, y)       = -log softmax(l)_y                 (the semi-supervised class head, Sec. 4.5)

The discriminator's batch (`discriminator_batch`) and the rule that skips its step when it is winning too
clearly (`discriminator_update_allowed`, the paper's 90% accuracy threshold) live here too, so that one module
holds the adversarial maths and the model holds only the update structure.
"""

import tensorflow as tf

ADVERSARIAL_LOSSES = ("non_saturating", "minimax")
RECONSTRUCTION_NORMALIZATIONS = ("per_pixel", "per_image")


def reconstruction_error(images, reconstructions, normalization: str = "per_pixel"):
    """Squared error per image: `[batch, H, W, C]` twice -> `[batch]`, mean ('per_pixel') or sum over pixels."""
    if normalization not in RECONSTRUCTION_NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} is not one of {list(RECONSTRUCTION_NORMALIZATIONS)}.")
    squared = tf.reshape(tf.square(reconstructions - images), [tf.shape(images)[0], -1])
    if normalization == "per_pixel":
        return tf.reduce_mean(squared, axis=-1)
    return tf.reduce_sum(squared, axis=-1)


def generator_adversarial_loss(logits, kind: str = "non_saturating"):
    """The generator's adversarial loss per image from discriminator logits `[batch, 1]` -> float32 `[batch]`."""
    if kind not in ADVERSARIAL_LOSSES:
        raise ValueError(f"adversarial loss {kind!r} is not one of {list(ADVERSARIAL_LOSSES)}.")
    logits = tf.cast(logits[:, 0], tf.float32)
    if kind == "non_saturating":
        return tf.nn.softplus(-logits)  # -log D(y)
    return -tf.nn.softplus(logits)  # log(1 - D(y))


def mutual_information_error(predictions, u, num_time_steps: int, step_weights=None):
    """Per-time-step weighted mean squared error of Q's prediction of u.

    Args:
      predictions: `[batch, latent_dim]` Q's output.
      u: `[batch, latent_dim]` the generation-path output (treated as a constant target).
      num_time_steps: T; time step t is the contiguous slice `[t*D/T, (t+1)*D/T)`.
      step_weights: None or T weights w_t (the code: 0.1, 1.5, 1.5, 1.25, 0.1, 0.1, 1, 1).

    Returns:
      float32 `[batch]`: (1/D) sum_d w_{t(d)} (q_d - u_d)^2, i.e. the mean over dimensions.
    """
    squared = tf.square(tf.cast(predictions, tf.float32) - tf.stop_gradient(tf.cast(u, tf.float32)))
    latent_dim = squared.shape[-1]
    per_step = tf.reduce_mean(tf.reshape(squared, [-1, num_time_steps, latent_dim // num_time_steps]), axis=-1)
    if step_weights is not None:
        per_step = per_step * tf.constant(step_weights, tf.float32)
    return tf.reduce_sum(per_step, axis=-1) / num_time_steps


def discriminator_batch(real, reconstructions, prior_samples):
    """The code's discriminator batch: every other real image, every 4th reconstruction and prior sample.

    For a batch of B (divisible by 4): positions i = 0, 2, 4, ... real (B/2, label 1), i = 1, 5, ...
    reconstructions (B/4, label 0), i = 3, 7, ... prior samples (B/4, label 0). The code picks different positions
    (porting notes 5.3: the 1-based i = 0 / 3 (mod 4) rule) for the same half / quarter / quarter split of disjoint
    images; which positions are used does not matter, since the images of a batch are exchangeable. (The paper
    says "half fake".)

    Returns (images `[B, H, W, C]`, labels float32 `[B]`, kind int32 `[B]`: 0 real, 1 reconstruction, 2 prior).
    """
    images = tf.concat([real[0::2], reconstructions[1::4], prior_samples[3::4]], axis=0)
    num_real, num_rec = tf.shape(real[0::2])[0], tf.shape(reconstructions[1::4])[0]
    num_prior = tf.shape(prior_samples[3::4])[0]
    labels = tf.concat([tf.ones([num_real]), tf.zeros([num_rec + num_prior])], axis=0)
    kind = tf.concat([tf.zeros([num_real], tf.int32), tf.ones([num_rec], tf.int32), tf.fill([num_prior], 2)], axis=0)
    return images, labels, kind


def discriminator_loss(logits, labels):
    """Binary cross-entropy per example: logits `[batch]`, labels `[batch]` (1 real, 0 fake) -> `[batch]`."""
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=tf.cast(logits, tf.float32))


def discriminator_correct(logits, labels):
    """1.0 where the discriminator classifies the example right (logit > 0 means "real"), else 0.0: `[batch]`."""
    return tf.cast(tf.equal(tf.cast(logits > 0.0, tf.float32), labels), tf.float32)


def classification_loss(logits, labels):
    """Softmax cross-entropy per example, the class loss of the semi-supervised discriminator (paper Sec. 4.5; CC-GAN's
    LogSoftmax + ClassNLLCriterion, Denton et al. 2016): -log softmax(l)_y = logsumexp_k l_k - l_y.

    Args:
      logits: `[batch, num_classes]` class logits (any float dtype; computed in float32).
      labels: int `[batch]` classes in [0, num_classes).

    Returns:
      float32 `[batch]`, in nats.
    """
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
    )


def classification_correct(logits, labels):
    """1.0 where argmax_k l_k equals the label, else 0.0: logits `[batch, num_classes]`, labels `[batch]` ->
    `[batch]`."""
    predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.cast(tf.equal(predictions, tf.cast(labels, tf.int32)), tf.float32)


def discriminator_update_allowed(accuracy, threshold: float):
    """The skip rule (paper App. H; the code's margin 0.1): the discriminator takes its step only while its
    batch accuracy is at most `threshold` (0.9); above it, the step is skipped so it does not overpower the
    generator. `accuracy` is a scalar in [0, 1]; returns a boolean scalar."""
    return accuracy <= threshold


__all__ = [
    "ADVERSARIAL_LOSSES",
    "RECONSTRUCTION_NORMALIZATIONS",
    "reconstruction_error",
    "generator_adversarial_loss",
    "mutual_information_error",
    "discriminator_batch",
    "discriminator_loss",
    "discriminator_correct",
    "discriminator_update_allowed",
    "classification_loss",
    "classification_correct",
]
