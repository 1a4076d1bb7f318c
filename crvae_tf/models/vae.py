"""The VAE family as a Keras 3 subclassed model with a custom `train_step` / `test_step`.

One class, `VAE`, covers the standard VAE, cVAE, bcVAE and every crVAE variant: the variant is the
latent head (`crvae_tf.architectures.heads`). Gin-free.

Objective, per image, in nats (`crvae_tf.objectives.bounds`):
    loss = distortion + kl_weight * sum_t kl_step_weights[t] * KL_t
where distortion = -log p(x|z) with one reparameterised sample z = loc + exp(log_variance/2) * eps,
and KL_t the analytic KL of time step t. The batch loss is the mean over images.

Map from the paper's symbols to the names used here (also in README.md):
    alpha (KL weight, Eq. 4 / App. H)        -> kl_weight (per image, against a per-image summed
                                                reconstruction; the code's alpha = 0.001 on a
                                                per-pixel-mean BCE is kl_weight = 0.784 on MNIST)
    alpha_1, alpha_2 (per-time-step weights) -> kl_weight * kl_step_weights[t]
    T (time steps / channel blocks)           -> latent_head.num_time_steps
    beta (adversarial weight)                -> adversarial_weight (the adversarial family)

Parameter groups and optimizers: the trainable variables are split into `encoder` (conv encoder and
the mean path), `latent_head` (the recurrent / block modules of the latent head: the authors'
var_encoder and var_decoder) and `decoder` (generation entry and deconv net). `compile` takes one
optimizer per non-empty group and an optional element-wise gradient clamp per group (the original
clamps the LSTM modules to [-5, 5] and trains them at LR / T).
"""

import keras
import tensorflow as tf

from crvae_tf.models.base import LatentVariableModel
from crvae_tf.objectives import bounds

GROUPS = ("encoder", "latent_head", "decoder")


@keras.saving.register_keras_serializable("crvae_tf")
class VAE(LatentVariableModel):
    """A VAE with Bernoulli likelihood over binary images and a pluggable latent head.

    Args:
      encoder: network `[batch, H, W, C] -> [batch, h, w, c_feat]`.
      latent_head: a `crvae_tf.architectures.heads.LatentHead` for features of shape (h, w, c_feat).
      decoder: network `[batch, h, w, c_feat] -> [batch, H, W, C]` logits.
      image_shape: (H, W, C).
      kl_weight: weight of the KL term per image (1.0 = the ELBO).
      kl_step_weights: optional list of T per-time-step KL weights (default all 1).
      seed: seed of the model's `keras.random.SeedGenerator`, the source of every random draw.
      num_importance_samples: k. 1 trains on the (weighted) ELBO; k > 1 trains on the IWAE_k bound
        (Burda et al. 2016; Table 1's "IWAE k=40" row), which has no KL weight.
      num_validation_samples: k of the IWAE_k bound that `test_step` reports as `iwae_<k>` (the authors
        selected models on IWAE-5, porting notes 7).
    """

    # Range of the pixels `encode` takes (`generate` always returns [0, 1]). The adversarial family
    # trains on [-1, 1]; exporters and image grids map through this.
    input_range = (0.0, 1.0)

    def __init__(
        self,
        encoder,
        latent_head,
        decoder,
        image_shape=(28, 28, 1),
        kl_weight: float = 1.0,
        kl_step_weights=None,
        seed=None,
        num_importance_samples: int = 1,
        num_validation_samples: int = 5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.latent_head = latent_head
        self.decoder = decoder
        self.image_shape = tuple(int(d) for d in image_shape)
        self.kl_weight = float(kl_weight)
        self.num_time_steps = latent_head.num_time_steps
        kl_step_weights = bounds.check_step_weights(kl_step_weights, self.num_time_steps)
        self.kl_step_weights = kl_step_weights
        self.num_importance_samples = int(num_importance_samples)
        self.num_validation_samples = int(num_validation_samples)
        if self.num_importance_samples < 1 or self.num_validation_samples < 1:
            raise ValueError(
                f"num_importance_samples ({num_importance_samples}) and num_validation_samples "
                f"({num_validation_samples}) must be >= 1."
            )
        if self.num_importance_samples > 1 and (
            self.kl_weight != 1.0 or any(w != 1.0 for w in (kl_step_weights or []))
        ):
            raise ValueError(
                f"IWAE training (num_importance_samples={self.num_importance_samples}) optimises a bound "
                f"on log p(x) and has no KL weight; set kl_weight=1 and no kl_step_weights (got "
                f"kl_weight={kl_weight}, kl_step_weights={kl_step_weights})."
            )
        self._init_noise_streams(seed)
        self._init_trackers(["loss", "distortion", "rate", "elbo", f"iwae_{self.num_validation_samples}"])

    GROUPS = GROUPS

    @property
    def selection_metric(self):
        """(validation metric, 'max' | 'min') that picks the best checkpoint: IWAE_k, higher is better."""
        return f"iwae_{self.num_validation_samples}", "max"

    # ------------------------------------------------------------------ structure
    def build(self, input_shape=None):
        """Creates every weight by calling the sub-networks on zeros (subclassed models must be called)."""
        features = self.encoder(keras.ops.zeros((1,) + self.image_shape))
        self.latent_head.infer(features)
        self.decoder(self.latent_head.generate(keras.ops.zeros((1, self.latent_dim))))
        self.latent_head.built = True
        self.built = True

    def variable_groups(self):
        """Maps group name -> trainable variables. Every trainable variable is in exactly one group."""
        return self._generator_groups()

    # ------------------------------------------------------------------ inference / generation
    def reconstruct(self, images):
        """Bernoulli means in [0, 1] of the reconstructions from the posterior mean, for images in [0, 1]."""
        return tf.sigmoid(self(images, training=False))

    def sample_posterior(self, loc, log_variance, num_samples=None, training=True):
        """Reparameterised z = loc + exp(log_variance / 2) * eps.

        eps comes from the training SeedGenerator when `training`, else from the evaluation one.
        Returns `[batch, latent_dim]`, or `[num_samples, batch, latent_dim]` when `num_samples` is given.
        """
        shape = tf.shape(loc) if num_samples is None else tf.concat([[num_samples], tf.shape(loc)], 0)
        eps = self._normal(shape, training, batch_axis=0 if num_samples is None else 1)
        return loc + tf.exp(0.5 * log_variance) * tf.cast(eps, loc.dtype)

    def generate(self, z):
        """Prior samples' Bernoulli means in [0, 1] for given z `[batch, latent_dim]`."""
        return tf.sigmoid(self.decode(z, training=False))

    # ------------------------------------------------------------------ objective
    def log_importance_weights(self, images, num_samples: int, training=False):
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), z_k ~ q(z|x), for K = `num_samples` samples.

        The encoder runs once; the K samples of the whole batch go through the generation path together.

        Args:
          images: `[batch, H, W, C]` binary images.
          num_samples: K.
          training: network mode and noise stream (training or evaluation `SeedGenerator`).

        Returns:
          `[K, batch]` float32 log weights in nats; `bounds.iwae_bound` of them is IWAE_K, their mean the ELBO.
        """
        loc, log_variance = self.encode(images, training=training)
        z = self.sample_posterior(loc, log_variance, num_samples=num_samples, training=training)
        return self.log_importance_weights_at(images, loc, log_variance, z, training=training)

    def decode_samples(self, z, training=False):
        """Samples on a leading axis: z `[K, batch, latent_dim]` -> logits `[K, batch, H, W, C]` (one decoder pass)."""
        logits = self.decode(tf.reshape(z, [-1, self.latent_dim]), training=training)
        return tf.reshape(logits, tf.concat([tf.shape(z)[:2], self.image_shape], 0))

    def log_importance_weights_at(self, images, loc, log_variance, z, training=False):
        """log w_k of given samples z `[K, batch, latent_dim]` of the posterior (loc, log_variance) -> `[K, batch]`."""
        return bounds.log_importance_weights(images, self.decode_samples(z, training=training), z, loc, log_variance)

    def compute_terms(self, images, training=False):
        """Per-image objective terms for a batch `[batch, H, W, C]` of binary images.

        With one importance sample: loss = distortion + kl_weight * sum_t kl_step_weights[t] * KL_t, one
        reparameterised z. With k = `num_importance_samples` > 1: loss = -IWAE_k, and `distortion` is the mean
        over the k samples of -log p(x|z_k). `rate` and `kl_steps` are always the analytic KL.

        Returns a dict of `[batch]` tensors `loss`, `distortion`, `rate`, `elbo`, plus `kl_steps`
        `[batch, T]` and the posterior `loc` `[batch, latent_dim]`.
        """
        loc, log_variance = self.encode(images, training=training)
        return self._terms(images, loc, log_variance, training)

    def _terms(self, images, loc, log_variance, training):
        kl_steps = bounds.kl_per_time_step(loc, log_variance, self.num_time_steps)
        rate = tf.reduce_sum(kl_steps, axis=-1)
        k = self.num_importance_samples if training else 1
        if k == 1:
            z = self.sample_posterior(loc, log_variance, training=training)
            distortion = bounds.bernoulli_distortion(images, self.decode(z, training=training))
            loss = distortion + bounds.weighted_rate(kl_steps, self.kl_weight, self.kl_step_weights)
        else:
            z = self.sample_posterior(loc, log_variance, num_samples=k, training=training)  # [k, B, D]
            logits = self.decode_samples(z, training=training)
            distortion = tf.reduce_mean(bounds.bernoulli_distortion(images, logits), axis=0)
            loss = -bounds.iwae_bound(bounds.log_importance_weights(images, logits, z, loc, log_variance))
        return {
            "loss": loss,
            "distortion": distortion,
            "rate": rate,
            "elbo": -(distortion + rate),
            "kl_steps": kl_steps,
            "loc": loc,
        }

    # ------------------------------------------------------------------ training
    def compile(self, optimizers=None, clip_values=None, **kwargs):
        """Attaches one optimizer per parameter group.

        Args:
          optimizers: dict group -> `keras.optimizers.Optimizer`, for every non-empty group in
            `GROUPS`, or a single optimizer used for all groups.
          clip_values: optional dict group -> c: gradients of that group are clamped element-wise to
            [-c, c] before its optimizer step (the original's +-5 clamp on the recurrent modules).
          **kwargs: passed to `keras.Model.compile` (e.g. `jit_compile`).
        """
        groups = {name: variables for name, variables in self.variable_groups().items() if variables}
        if optimizers is None:
            optimizers = keras.optimizers.Adam()
        if isinstance(optimizers, keras.optimizers.Optimizer):
            if len(groups) > 1:
                raise ValueError(
                    "Give one optimizer per parameter group (a dict); an optimizer instance can "
                    "only be applied to the variables it was built with."
                )
            optimizers = {next(iter(groups)): optimizers}
        self._attach_optimizers(groups, optimizers, clip_values, **kwargs)

    def _update_trackers(self, terms, iwae=None):
        """Updates the trackers with a batch's terms (and IWAE_k, when given); returns their running means."""
        iwae_name = f"iwae_{self.num_validation_samples}"
        if iwae is not None:
            self._trackers[iwae_name].update_state(iwae)
        for key in ("loss", "distortion", "rate", "elbo"):
            self._trackers[key].update_state(terms[key])
        self._update_latent_trackers(terms["kl_steps"], terms["loc"])
        return {
            name: tracker.result() for name, tracker in self._trackers.items() if name != iwae_name or iwae is not None
        }

    def train_step(self, data):
        images = self._images(data)
        names = list(self.group_optimizers)
        groups = self.variable_groups()  # Python-side, evaluated once at trace time
        variables = [v for name in names for v in groups[name]]
        with tf.GradientTape() as tape:
            terms = self.compute_terms(images, training=True)
            # Mean over the batch; divided by the replica count so that strategies sum correctly.
            loss = tf.reduce_mean(terms["loss"]) / tf.distribute.get_strategy().num_replicas_in_sync
        gradients = tape.gradient(loss, variables)
        self._apply_split(names, groups, gradients)
        return {**self._update_trackers(terms), **self._diagnostic_results()}

    def test_step(self, data):
        """ELBO terms (one sample, analytic KL) and IWAE_k (k = `num_validation_samples`), evaluation mode."""
        images = self._images(data)
        loc, log_variance = self.encode(images, training=False)  # once for both
        z = self.sample_posterior(loc, log_variance, num_samples=self.num_validation_samples, training=False)
        iwae = bounds.iwae_bound(self.log_importance_weights_at(images, loc, log_variance, z))
        return self._update_trackers(self._terms(images, loc, log_variance, training=False), iwae)

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        return {
            **super().get_config(),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "latent_head": keras.saving.serialize_keras_object(self.latent_head),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "image_shape": self.image_shape,
            "kl_weight": self.kl_weight,
            "kl_step_weights": self.kl_step_weights,
            "seed": self.seed,
            "num_importance_samples": self.num_importance_samples,
            "num_validation_samples": self.num_validation_samples,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "latent_head", "decoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def parameter_counts(model: VAE) -> dict:
    """Trainable parameter counts per group and in total."""
    counts = {name: int(sum(v.numpy().size for v in variables)) for name, variables in model.variable_groups().items()}
    counts["total"] = sum(counts.values())
    return counts
