"""Image completion by optimising the latent code (paper Sec. 4.3, Eq. 5, Fig. 4, S3). Gin-free, TF only.

Given an image x `[batch, H, W, C]`, a mask m (1 = observed pixel, 0 = missing; `[batch, H, W, 1]` broadcast
over the channels, or `[batch, H, W, C]`) and a generator gen(z) (the whole generation path: for the crVAE the
generation LSTM over z_1..z_T, then the deconvolutions), find

    z* = argmin_z  L(z),
    L(z) = sum_{h,w,c} (m * (x - gen(z)))^2  +  gamma * 0.5 * ||z||^2  +  tau * log(1 - D(gen(z)))

and return the completion gen(z*) * (1 - m) + x * m: observed pixels are copied from x exactly, missing ones
come from the generator.

Eq. 5 as printed reads  ||gen(z) m - x m||^2 + gamma log N(z; 0, I) + tau log(1 - D(gen(z))). Minimising
+gamma log N(z; 0, I) would REWARD latents of low prior density, i.e. push z away from the prior. The intent (and
Yan et al.'s Attribute2Image inference, the paper's ref. [30]) is a prior penalty, so the second term here is
the NEGATIVE log-density up to its constant: -log N(z; 0, I) = 0.5 ||z||^2 + (D/2) log(2 pi). The constant
does not move the minimiser and is left out. The third term is as printed: with D = sigmoid(l) for the
discriminator's logit l, log(1 - D) = log(sigmoid(-l)) = -softplus(l), computed in that stable form; minimising
it pushes D(gen z) towards 1 ("real"). It is unbounded below as l grows (linearly in l), so keep tau small
relative to the masked error. It only exists for the adversarial family (a model with a discriminator).

The optimiser is Adam (Kingma & Ba 2015, bias-corrected) on z, written with raw TF ops inside one
`tf.while_loop`, so `complete` traces into a SavedModel signature with a dynamic number of steps and a dynamic
batch: no Python loop over steps, no Keras optimizer, no NumPy. The per-example losses are SUMMED over the batch
before differentiation, so each image's z receives exactly the gradient of its own loss (the examples do not
interact, except through a discriminator whose logits couple the batch: minibatch discrimination). Adam's
update is invariant to the scale of each coordinate's gradient, so one learning rate suits every batch size.

Pixel range: `generate(z)` must return images in the range of `images` (e.g. both in [0, 1]); the squared error,
hence the meaning of gamma, depends on it. `crvae_tf.exploration.completion_lib` uses the dataset range [0, 1]
(`model.generate`) for both families.

Functions:
  completion_loss(images, mask, generated, z, gamma, tau, fake_logits) -> [batch]
  complete(generate, images, mask, z_init, num_steps, ...) -> dict(images, z, generated, loss, initial_loss)
  occlude(images, mask, fill) -> x * m + fill * (1 - m): the input the encoder sees
  initial_latents(encode, images_masked, init, seed) -> z_0 [batch, latent_dim]
"""

import tensorflow as tf

# Defaults of the optimisation (the explore binary's flags default to these; see README "Image completion").
DEFAULT_NUM_STEPS = 100
DEFAULT_LEARNING_RATE = 0.03
DEFAULT_GAMMA = 1.0

INITS = ("posterior_mean", "posterior_sample", "prior")
# Mixed into the user's seed so the initial-latent noise differs from other streams seeded with the same int.
_INIT_SEED_SALT = 0x636F6D70  # "comp"


def _float(x, name):
    x = tf.convert_to_tensor(x)
    if not x.dtype.is_floating:
        x = tf.cast(x, tf.float32)
    return tf.cast(x, tf.float32, name=name)


def completion_loss(images, mask, generated, z, gamma, tau=0.0, fake_logits=None):
    """The per-example completion objective of Eq. 5, with the prior term's sign corrected (module docstring).

        loss[b] = sum_{h,w,c} (m[b] * (x[b] - gen[b]))^2 + gamma * 0.5 * ||z[b]||^2 - tau * softplus(l[b])

    where -softplus(l) = log(1 - sigmoid(l)) = log(1 - D(gen z)) for the discriminator logit l of gen(z).

    Args:
      images: x, `[batch, H, W, C]`.
      mask: m, `[batch, H, W, 1]` or `[batch, H, W, C]` (anything that broadcasts against `images`); 1 =
        observed, 0 = missing.
      generated: gen(z), `[batch, H, W, C]`, in the pixel range of `images`.
      z: `[batch, latent_dim]`.
      gamma: weight of the prior penalty 0.5 ||z||^2 (a scalar, Python or tensor).
      tau: weight of the adversarial term (a scalar). Non-zero needs `fake_logits`.
      fake_logits: the discriminator's logits for `generated`, `[batch, 1]` or `[batch]`, or None.

    Returns:
      float32 `[batch]`.
    """
    images = _float(images, "images")
    generated = _float(generated, "generated")
    mask = _float(mask, "mask")
    z = _float(z, "z")
    masked_error = tf.reduce_sum(tf.square(mask * (images - generated)), axis=[1, 2, 3])
    prior = 0.5 * tf.reduce_sum(tf.square(z), axis=1)
    loss = masked_error + _float(gamma, "gamma") * prior
    if fake_logits is None:
        if not isinstance(tau, tf.Tensor) and float(tau) != 0.0:
            raise ValueError(
                f"tau={tau} weights the adversarial term log(1 - D(gen z)), which needs the discriminator's logits "
                "(fake_logits / discriminator_logits); pass them, or set tau=0 (a model without a discriminator)."
            )
        return loss
    logits = tf.reshape(_float(fake_logits, "fake_logits"), [-1])
    log_one_minus_d = -tf.nn.softplus(logits)
    return loss + _float(tau, "tau") * log_one_minus_d


def occlude(images, mask, fill=0.0):
    """x * m + fill * (1 - m): the occluded image the encoder sees (and the grids show).

    `fill` broadcasts against `images`: a scalar, a per-channel value `[C]`, or an image `[H, W, C]` (the mean
    training face, `completion_lib`'s choice: its masked-region fill is measured there).
    """
    images = _float(images, "images")
    mask = _float(mask, "mask")
    return images * mask + _float(fill, "fill") * (1.0 - mask)


def _stateless_seed(seed):
    """A Python int or an int scalar / `[2]` tensor -> an int64 `[2]` seed for `tf.random.stateless_*`."""
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(f"seed must be an integer (a Python int or an int32/int64 tensor), got dtype {seed.dtype}.")
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(_INIT_SEED_SALT, tf.int64)])
    if seed.shape.rank == 1 and seed.shape[0] == 2:
        return seed
    raise ValueError(f"seed must be a scalar or a pair [2], got shape {seed.shape}.")


def initial_latents(encode, images_masked, init="posterior_mean", seed=0, latent_dim=None):
    """z_0 for `complete`, from the occluded images.

    Args:
      encode: images `[batch, H, W, C]` (in whatever range the caller's `encode` expects) ->
        (loc, log_variance), each `[batch, latent_dim]`: the posterior q(z | x_occluded).
      images_masked: the occluded images (`occlude`).
      init: 'posterior_mean' (the paper's: the encoder's mean for the occluded image), 'posterior_sample'
        (loc + exp(log_variance / 2) * eps) or 'prior' (eps ~ N(0, I)); eps is TF stateless noise from `seed`.
      seed: a Python int, or an int scalar or `[2]` tensor.
      latent_dim: with init='prior', skips the encoder call when given.

    Returns:
      float32 `[batch, latent_dim]`.
    """
    if init not in INITS:
        raise ValueError(f"init={init!r} is not one of {list(INITS)}.")
    if init == "prior" and latent_dim is not None:
        shape = tf.stack([tf.shape(images_masked)[0], tf.constant(int(latent_dim), tf.int32)])
        return tf.random.stateless_normal(shape, _stateless_seed(seed), dtype=tf.float32)
    if encode is None:
        raise ValueError(f"init={init!r} needs `encode` (only init='prior' with latent_dim given works without it).")
    loc, log_variance = encode(images_masked)
    loc, log_variance = _float(loc, "loc"), _float(log_variance, "log_variance")
    if init == "posterior_mean":
        return loc
    eps = tf.random.stateless_normal(tf.shape(loc), _stateless_seed(seed), dtype=tf.float32)
    if init == "prior":
        return eps
    return loc + tf.exp(0.5 * log_variance) * eps


def complete(
    generate,
    images,
    mask,
    z_init,
    num_steps,
    learning_rate=DEFAULT_LEARNING_RATE,
    gamma=DEFAULT_GAMMA,
    tau=0.0,
    discriminator_logits=None,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-8,
):
    """Completes `images` where `mask` is 0 by `num_steps` Adam steps on z (module docstring, Eq. 5).

    Adam, per coordinate, at step t = 1..num_steps with g = d(sum_b loss[b]) / dz:
        m_t = beta_1 m_{t-1} + (1 - beta_1) g,   v_t = beta_2 v_{t-1} + (1 - beta_2) g^2,
        z_t = z_{t-1} - learning_rate * (m_t / (1 - beta_1^t)) / (sqrt(v_t / (1 - beta_2^t)) + epsilon).

    Args:
      generate: z `[batch, latent_dim]` -> images `[batch, H, W, C]` in the pixel range of `images`
        (differentiable; evaluation mode).
      images: x, `[batch, H, W, C]` (the missing pixels' values are never read: they are multiplied by m = 0).
      mask: m, `[batch, H, W, 1]` or `[batch, H, W, C]`; 1 = observed, 0 = missing.
      z_init: z_0 `[batch, latent_dim]` (`initial_latents`).
      num_steps: a Python int or an int scalar tensor (0, or a negative count, returns the completion from z_0;
        bound it where it comes from a client: each step is a decoder forward and backward pass).
      learning_rate, gamma, tau, beta_1, beta_2, epsilon: Python floats or float scalar tensors.
      discriminator_logits: images `[batch, H, W, C]` (the range of `images`) -> logits `[batch, 1]`; needed
        when tau != 0.

    Returns:
      dict with
        images: the completion gen(z*) * (1 - m) + x * m, `[batch, H, W, C]`;
        z: z* `[batch, latent_dim]`;
        generated: gen(z*) `[batch, H, W, C]`;
        loss: the objective at z*, `[batch]`;
        initial_loss: the objective at z_0, `[batch]`.
    """
    images = _float(images, "images")
    mask = _float(mask, "mask")
    z_init = _float(z_init, "z_init")
    num_steps = tf.cast(num_steps, tf.int32)
    learning_rate = _float(learning_rate, "learning_rate")
    beta_1 = _float(beta_1, "beta_1")
    beta_2 = _float(beta_2, "beta_2")
    epsilon = _float(epsilon, "epsilon")
    if discriminator_logits is None and not isinstance(tau, tf.Tensor) and float(tau) != 0.0:
        raise ValueError(
            f"tau={tau} needs discriminator_logits (the adversarial term log(1 - D(gen z))); a model without a "
            "discriminator (the VAE family) completes with tau=0."
        )

    def objective(z):
        generated = generate(z)
        logits = discriminator_logits(generated) if discriminator_logits is not None else None
        return completion_loss(images, mask, generated, z, gamma, tau, logits), generated

    def gradient(z):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss, _ = objective(z)
            total = tf.reduce_sum(loss)  # sum, not mean: each z[b] gets the gradient of its own loss[b]
        return tape.gradient(total, z)

    def body(step, z, m, v):
        g = gradient(z)
        t = tf.cast(step + 1, tf.float32)
        m = beta_1 * m + (1.0 - beta_1) * g
        v = beta_2 * v + (1.0 - beta_2) * tf.square(g)
        m_hat = m / (1.0 - tf.pow(beta_1, t))
        v_hat = v / (1.0 - tf.pow(beta_2, t))
        return step + 1, z - learning_rate * m_hat / (tf.sqrt(v_hat) + epsilon), m, v

    initial_loss, _ = objective(z_init)
    zeros = tf.zeros_like(z_init)
    _, z_star, _, _ = tf.while_loop(
        lambda step, z, m, v: step < num_steps,
        body,
        (tf.constant(0, tf.int32), z_init, zeros, zeros),
        name="completion_adam",
    )
    loss, generated = objective(z_star)
    return {
        "images": generated * (1.0 - mask) + images * mask,
        "z": z_star,
        "generated": generated,
        "loss": loss,
        "initial_loss": initial_loss,
    }
