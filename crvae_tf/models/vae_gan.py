"""The adversarial family: VAE-GAN (Larsen et al. 2016) and crVAE-GAN (paper Sec. 4.2, Eq. 4).

One Keras 3 subclassed model, `VAEGAN`, with a custom `train_step` and one optimizer per parameter group.
The variant is the latent head: `FCHead` gives the VAE-GAN baseline, `ChannelRecurrentHead` the crVAE-GAN.
Gin-free.

Objective (Eq. 4, with the authors' code where the paper is silent or disagrees; porting notes 5.2-5.5, 6, 11)
------------------------------------------------------------------------------------------------
Pixels are mapped from [0, 1] to [-1, 1] (`input_range`); the decoder ends in tanh. For a batch x with
posterior samples z ~ q(z|x), reconstructions x_rec = G(z), prior samples z_p ~ N(0, I), x_p = G(z_p), and
discriminator logits l(.) (D = sigmoid(l)), per image:

    reconstruction(x) = mean_{pixels} (x_rec - x)^2        ('per_pixel': the paper's division by C*H*W (H),
                                                            the code's MSECriterion; 'per_image': the sum)
    rate_weighted(x)  = kl_weight * sum_t kl_step_weights[t] * KL_t(x)       (alpha_t = kl_weight * w_t)
    adversarial(y)    = softplus(-l(y))       ('non_saturating': -log D(y), the code's BCE(D(y), 1))
                      = -softplus(l(y))       ('minimax': log(1 - D(y)), the paper's App. H)
    mi(y, u)          = mean_d mi_step_weights[t(d)] * (Q(y)_d - u_d)^2    (WACV regulariser: Q predicts the
                                                            generation-path output u = transform(z))

    generator  = reconstruction + rate_weighted + beta * [adversarial(x_rec) + adversarial(x_p)]
                 + kappa * [mi(x_rec, u) + mi(x_p, u_p)]
    Q, trunk   : kappa * [mi(x_rec, u) + mi(x_p, u_p)]          (u is a constant target)
    D (trunk, head): mean BCE over a batch of B/2 real images (label 1), B/4 reconstructions and B/4 prior
                 samples (label 0), skipped when that batch's accuracy exceeds `discriminator_accuracy_threshold`.

The batch loss of each group is the mean over the batch of the per-image values above (the code's Torch
reductions: MSE mean over B*C*H*W, KL sum / B, BCE mean over B).

Map to the paper's symbols: alpha -> kl_weight * kl_step_weights (alpha_1 steps 1-3, alpha_2 steps 4-8 in the
code's reading of "0.0003 progressively reduced to 0.0002"), beta -> adversarial_weight, kappa ->
mutual_information_weight, T -> latent_head.num_time_steps.

Update structure
----------------
The authors update each Torch module in sequence, the decoder and var_decoder twice per iteration (once on
reconstructions, once on prior samples) and the discriminator trunk up to three times (porting notes 5.3). Here each
group takes ONE Adam step per iteration on the sum of the gradients of its terms, computed with the same
pre-update weights (the joint-step approximation of porting notes 12.5). Gradients per group:

    encoder              reconstruction + rate + [beta adversarial(x_rec) + kappa mi(x_rec)]
                         (bracket only with encoder_adversarial_gradient=True: crVAE-GAN; the VAE-GAN
                         baseline's encoder sees reconstruction + rate only, porting notes 5.5)
    latent_head, decoder the generator objective
    q_head               kappa * mi
    discriminator_trunk  kappa * mi + [D loss, unless skipped]
    discriminator        D loss, unless skipped (the step is skipped exactly: `tf.cond` around `apply`)

The discriminator runs in training mode (dropout on) for every term, as in the code.

Defects of the original crVAE-GAN loop (porting notes 5.4) are options that default to the corrected behaviour:
  legacy_swapped_prior_weights: the prior-sample pass scales the adversarial term by kappa and the MI term by
    beta (the code's L251).
  legacy_unweighted_prior_mutual_information: the prior-sample MI term ignores the per-step weights (L219-223).
"""

import keras
import tensorflow as tf

from crvae_tf.architectures import replicas as replicas_lib
from crvae_tf.models.base import LatentVariableModel
from crvae_tf.objectives import bounds
from crvae_tf.objectives import losses

GROUPS = ("encoder", "latent_head", "decoder", "discriminator_trunk", "discriminator", "q_head")
ADVERSARIAL_LOSSES = losses.ADVERSARIAL_LOSSES
RECONSTRUCTION_NORMALIZATIONS = losses.RECONSTRUCTION_NORMALIZATIONS
# How the generator decodes a training batch's posterior samples z and prior samples z_p (see `VAEGAN`).
GENERATOR_BATCHES = ("separate", "joint")


@keras.saving.register_keras_serializable("crvae_tf")
class VAEGAN(LatentVariableModel):
    """VAE-GAN / crVAE-GAN with a discriminator, minibatch discrimination and an optional Q head.

    Args:
      encoder: `[batch, H, W, C]` pixels in [-1, 1] -> features `[batch, h, w, c]`.
      latent_head: a `crvae_tf.architectures.heads.LatentHead` (`ChannelRecurrentHead`: crVAE-GAN; `FCHead`: VAE-GAN).
      decoder: features -> `[batch, H, W, C]` in [-1, 1] (ends in tanh).
      discriminator_trunk: `[batch, H, W, C]` -> features `[batch, h', w', c']` (Dfeat of the code).
      discriminator: trunk features -> real/fake logits `[batch, 1]` (the head; sigmoid in the loss).
      q_head: trunk features -> prediction of u `[batch, latent_dim]`, or None (no MI term).
      image_shape: (H, W, C).
      kl_weight, kl_step_weights: alpha_t = kl_weight * kl_step_weights[t].
      adversarial_weight: beta.
      adversarial_loss: 'non_saturating' (code) or 'minimax' (paper App. H's log(1 - D)).
      mutual_information_weight: kappa (needs a q_head and a head with `transform`, i.e. crVAE).
      mutual_information_step_weights: per-time-step weights of the MI error (code: 0.1, 1.5, 1.5, 1.25, 0.1,
        0.1, 1, 1).
      reconstruction_normalization: 'per_pixel' (mean squared error over C*H*W, paper/code) or 'per_image'
        (sum of squared errors).
      discriminator_accuracy_threshold: the discriminator step is skipped when its batch accuracy is above
        this (code: margin 0.1 -> 0.9).
      encoder_adversarial_gradient: whether the adversarial and MI terms of reconstructions reach the encoder
        (crVAE-GAN code and Eq. 4: True; the VAE-GAN baseline code: False).
      legacy_swapped_prior_weights, legacy_unweighted_prior_mutual_information: the code's defects (above).
      generator_batch: 'separate' (the code: G decodes z, then z_p, two passes in training mode, each normalising
        with its own batch statistics and each updating G's BatchNorm moving averages, which thus track a mix
        weighted toward the prior pass: 90% with the code's momentum) or 'joint' (one pass over the concatenation
        [z; z_p]: batch statistics and moving averages of the same mixture, so evaluation-mode reconstructions and
        samples are normalised as in training). Early in training, while q(z|x) is far from N(0, I), 'separate'
        leaves moving averages that fit neither input (gin/README.md: validation MSE 0.262 as saved vs 0.098
        re-estimated on posterior passes).
      adversarial_prior_samples: True (default): prior samples are fakes for the discriminator and the generator's
        adversarial term covers them. False (the semi-supervised STL-10 protocol of Sec. 4.5: "all fakes are
        reconstructions"): the discriminator's fake half is reconstructions only (its `*_prior` metrics then
        describe the reconstructions of the last quarter) and the generator's adversarial term is on
        reconstructions only.
      seed: seed of the model's noise streams.
    """

    input_range = (-1.0, 1.0)

    def __init__(
        self,
        encoder,
        latent_head,
        decoder,
        discriminator_trunk,
        discriminator,
        q_head=None,
        image_shape=(64, 64, 3),
        kl_weight: float = 1e-4,
        kl_step_weights=None,
        adversarial_weight: float = 0.0125,
        adversarial_loss: str = "non_saturating",
        mutual_information_weight: float = 0.0,
        mutual_information_step_weights=None,
        reconstruction_normalization: str = "per_pixel",
        discriminator_accuracy_threshold: float = 0.9,
        encoder_adversarial_gradient: bool = True,
        legacy_swapped_prior_weights: bool = False,
        legacy_unweighted_prior_mutual_information: bool = False,
        generator_batch: str = "separate",
        adversarial_prior_samples: bool = True,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.latent_head = latent_head
        self.decoder = decoder
        self.discriminator_trunk = discriminator_trunk
        self.discriminator = discriminator
        self.q_head = q_head
        self.image_shape = tuple(int(d) for d in image_shape)
        self.num_time_steps = latent_head.num_time_steps
        self.kl_weight = float(kl_weight)
        self.kl_step_weights = bounds.check_step_weights(kl_step_weights, self.num_time_steps, "kl_step_weights")
        self.adversarial_weight = float(adversarial_weight)
        if adversarial_loss not in ADVERSARIAL_LOSSES:
            raise ValueError(f"adversarial_loss={adversarial_loss!r} is not one of {list(ADVERSARIAL_LOSSES)}.")
        self.adversarial_loss = adversarial_loss
        self.mutual_information_weight = float(mutual_information_weight)
        self.mutual_information_step_weights = bounds.check_step_weights(
            mutual_information_step_weights, self.num_time_steps, "mutual_information_step_weights"
        )
        if self.mutual_information_weight and (q_head is None or not hasattr(latent_head, "transform")):
            raise ValueError(
                f"mutual_information_weight={mutual_information_weight} needs a Q head and a latent head with a "
                f"generation path u = transform(z) (channel_recurrent); got q_head={q_head is not None}, "
                f"latent head {type(latent_head).__name__}. Set model.mutual_information_weight = 0 for the "
                "VAE-GAN baseline."
            )
        if reconstruction_normalization not in RECONSTRUCTION_NORMALIZATIONS:
            raise ValueError(
                f"reconstruction_normalization={reconstruction_normalization!r} is not one of "
                f"{list(RECONSTRUCTION_NORMALIZATIONS)}."
            )
        self.reconstruction_normalization = reconstruction_normalization
        if not 0.0 < float(discriminator_accuracy_threshold) <= 1.0:
            raise ValueError(
                f"discriminator_accuracy_threshold={discriminator_accuracy_threshold} must be in (0, 1] "
                "(1 never skips the discriminator step)."
            )
        self.discriminator_accuracy_threshold = float(discriminator_accuracy_threshold)
        self.encoder_adversarial_gradient = bool(encoder_adversarial_gradient)
        if generator_batch not in GENERATOR_BATCHES:
            raise ValueError(
                f"generator_batch={generator_batch!r} is not one of {list(GENERATOR_BATCHES)} "
                "(set model.generator_batch)."
            )
        self.generator_batch = generator_batch
        self.adversarial_prior_samples = bool(adversarial_prior_samples)
        self.legacy_swapped_prior_weights = bool(legacy_swapped_prior_weights)
        self.legacy_unweighted_prior_mutual_information = bool(legacy_unweighted_prior_mutual_information)
        self._init_noise_streams(seed)
        names = [
            "loss",
            "reconstruction",
            "rate",
            "generator_adversarial",
            "mutual_information",
            "discriminator_loss",
            "discriminator_loss_real",
            "discriminator_loss_reconstruction",
            "discriminator_loss_prior",
            "discriminator_accuracy",
            "discriminator_accuracy_real",
            "discriminator_accuracy_reconstruction",
            "discriminator_accuracy_prior",
            "discriminator_skip_rate",
        ]
        self._init_trackers(names)

    GROUPS = GROUPS
    # Model selection on the validation split: the lowest VAE objective (reconstruction + weighted KL).
    selection_metric = ("loss", "min")

    # ------------------------------------------------------------------ structure
    def build(self, input_shape=None):
        """Creates every weight by calling the sub-networks on zeros."""
        zeros = keras.ops.zeros((2,) + self.image_shape)
        self.latent_head.infer(self.encoder(zeros))
        self.decoder(self.latent_head.generate(keras.ops.zeros((2, self.latent_dim))))
        self.latent_head.built = True
        features = self.discriminator_trunk(zeros)
        self.discriminator(features)
        if self.q_head is not None:
            self.q_head(features)
        self.built = True

    def variable_groups(self):
        """Maps group name -> trainable variables; every trainable variable is in exactly one group."""
        groups = self._generator_groups()
        groups["discriminator_trunk"] = list(self.discriminator_trunk.trainable_variables)
        groups["discriminator"] = list(self.discriminator.trainable_variables)
        groups["q_head"] = list(self.q_head.trainable_variables) if self.q_head is not None else []
        return groups

    # ------------------------------------------------------------------ inference / generation
    def to_model_range(self, images):
        """Dataset pixels in [0, 1] -> the model's [-1, 1]."""
        return tf.cast(images, tf.float32) * 2.0 - 1.0

    def generate(self, z):
        """Images in [0, 1] for latents z `[batch, latent_dim]` (evaluation mode)."""
        return (self.decode(z, training=False) + 1.0) / 2.0

    def reconstruct(self, images):
        """Dataset pixels in [0, 1] -> reconstructions from the posterior mean, in [0, 1]."""
        return (self(self.to_model_range(images), training=False) + 1.0) / 2.0

    def transform(self, z, training=False):
        """u, the generation-path output that Q predicts (`latent_head.transform`); float32 `[batch, latent_dim]`."""
        return tf.cast(self.latent_head.transform(z, training=training), tf.float32)

    # ------------------------------------------------------------------ loss terms with this model's settings
    def reconstruction_error(self, images, reconstructions):
        """`losses.reconstruction_error` with `reconstruction_normalization`: `[batch]`."""
        return losses.reconstruction_error(images, reconstructions, self.reconstruction_normalization)

    def adversarial_term(self, logits):
        """`losses.generator_adversarial_loss` with `adversarial_loss`: logits `[batch, 1]` -> `[batch]`."""
        return losses.generator_adversarial_loss(logits, self.adversarial_loss)

    def mutual_information_term(self, predictions, u, weighted=True):
        """`losses.mutual_information_error` with this model's per-step weights (`weighted=False`: none)."""
        weights = self.mutual_information_step_weights if weighted else None
        return losses.mutual_information_error(predictions, u, self.num_time_steps, weights)

    # ------------------------------------------------------------------ training
    def compile(self, optimizers, clip_values=None, **kwargs):
        """Attaches one optimizer per non-empty parameter group (`GROUPS`) and optional element-wise clamps."""
        groups = {name: variables for name, variables in self.variable_groups().items() if variables}
        self._attach_optimizers(groups, optimizers, clip_values, **kwargs)

    def _forward(self, x, training):
        """Everything the losses need for a batch x `[B, H, W, C]` in [-1, 1]."""
        batch = tf.shape(x)[0]
        loc, log_variance = self.encode(x, training=training)
        z = loc + tf.exp(0.5 * log_variance) * self._normal(tf.shape(loc), training)
        z_prior = self._normal([batch, self.latent_dim], training)
        if self.generator_batch == "joint":
            reconstructions, prior_samples = tf.split(self.decode(tf.concat([z, z_prior], 0), training=training), 2)
        else:
            reconstructions, prior_samples = self.decode(z, training=training), self.decode(z_prior, training=training)
        out = {
            "loc": loc,
            "log_variance": log_variance,
            "z": z,
            "z_prior": z_prior,
            "reconstructions": reconstructions,
            "prior_samples": prior_samples,
        }
        if self.mutual_information_weight:
            out["u"], out["u_prior"] = self.transform(z, training), self.transform(z_prior, training)
        return out

    def _second_fakes(self, out):
        """The fakes of the discriminator batch's last quarter: prior samples, or with `adversarial_prior_samples=False`
        reconstructions (other images of the batch than the first quarter's)."""
        return out["prior_samples"] if self.adversarial_prior_samples else out["reconstructions"]

    def train_step(self, data):
        x = self.to_model_range(self._images(data))
        groups = self.variable_groups()
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        beta, kappa = self.adversarial_weight, self.mutual_information_weight
        prior_beta, prior_kappa = (kappa, beta) if self.legacy_swapped_prior_weights else (beta, kappa)
        if not self.adversarial_prior_samples:
            prior_beta = 0.0
        with tf.GradientTape(persistent=True) as tape:
            out = self._forward(x, training=True)
            kl_steps = bounds.kl_per_time_step(out["loc"], out["log_variance"], self.num_time_steps)
            reconstruction = self.reconstruction_error(x, out["reconstructions"])
            weighted_rate = bounds.weighted_rate(kl_steps, self.kl_weight, self.kl_step_weights)
            features_rec = self.discriminator_trunk(out["reconstructions"], training=True)
            features_prior = self.discriminator_trunk(out["prior_samples"], training=True)
            adversarial_rec = self.adversarial_term(self.discriminator(features_rec, training=True))
            adversarial_prior = self.adversarial_term(self.discriminator(features_prior, training=True))
            zeros = tf.zeros_like(reconstruction)
            mi_rec = mi_prior = zeros
            if kappa:
                mi_rec = self.mutual_information_term(self.q_head(features_rec, training=True), out["u"])
                mi_prior = self.mutual_information_term(
                    self.q_head(features_prior, training=True),
                    out["u_prior"],
                    weighted=not self.legacy_unweighted_prior_mutual_information,
                )
            vae = reconstruction + weighted_rate
            generator = (
                vae + beta * adversarial_rec + prior_beta * adversarial_prior + kappa * mi_rec + prior_kappa * mi_prior
            )
            encoder_loss = generator if self.encoder_adversarial_gradient else vae
            mi_loss = kappa * mi_rec + prior_kappa * mi_prior

            d_images, labels, kind = losses.discriminator_batch(
                x, tf.stop_gradient(out["reconstructions"]), tf.stop_gradient(self._second_fakes(out))
            )
            d_logits = tf.cast(
                self.discriminator(self.discriminator_trunk(d_images, training=True), training=True)[:, 0], tf.float32
            )
            d_losses = losses.discriminator_loss(d_logits, labels)
            mean = lambda v: tf.reduce_mean(v) / replicas
            group_losses = {
                "encoder": mean(encoder_loss),
                "generator": mean(generator),
                "mi": mean(mi_loss),
                "discriminator": mean(d_losses),
            }

        correct = losses.discriminator_correct(d_logits, labels)
        if replicas_lib.replica_context() is None:
            accuracy = tf.reduce_mean(correct)
        else:  # the accuracy of the global batch, identical on every replica, decides the skip
            num_correct, count = replicas_lib.all_reduce_sum(
                [tf.reduce_sum(correct), tf.cast(tf.size(correct), tf.float32)]
            )
            accuracy = num_correct / count
        update = losses.discriminator_update_allowed(accuracy, self.discriminator_accuracy_threshold)

        # One backward pass per loss, over every group that loss trains.
        generator_groups = [
            name
            for name in ("encoder", "latent_head", "decoder")
            if groups[name] and (name != "encoder" or self.encoder_adversarial_gradient)
        ]
        generator_vars = [v for name in generator_groups for v in groups[name]]
        self._apply_split(generator_groups, groups, tape.gradient(group_losses["generator"], generator_vars))
        if not self.encoder_adversarial_gradient:
            self._apply("encoder", tape.gradient(group_losses["encoder"], groups["encoder"]), groups["encoder"])
        if groups["q_head"] and kappa:
            self._apply("q_head", tape.gradient(group_losses["mi"], groups["q_head"]), groups["q_head"])
        trunk, head = groups["discriminator_trunk"], groups["discriminator"]
        d_gradients = tape.gradient(group_losses["discriminator"], trunk + head)
        d_trunk, d_head = d_gradients[: len(trunk)], d_gradients[len(trunk) :]
        if kappa and groups["q_head"]:
            # The trunk always learns from the MI term (the code's phases A and B) and from the real/fake loss
            # only when the discriminator step is not skipped.
            gate = tf.cast(update, tf.float32)
            mi_trunk = tape.gradient(group_losses["mi"], trunk, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            self._apply("discriminator_trunk", [m + gate * g for m, g in zip(mi_trunk, d_trunk)], trunk)

            def step_discriminator(taken=None):
                self._apply("discriminator", d_head, head, taken)
                return tf.constant(True)
        else:

            def step_discriminator(taken=None):
                self._apply("discriminator_trunk", d_trunk, trunk, taken)
                self._apply("discriminator", d_head, head, taken)
                return tf.constant(True)

        if replicas_lib.replica_context() is None:
            tf.cond(update, step_discriminator, lambda: tf.constant(False))
        else:  # tf.cond around optimizer.apply fails under a strategy: the same exact skip without it
            step_discriminator(update)
        del tape

        terms = {
            "loss": vae,
            "reconstruction": reconstruction,
            "rate": tf.reduce_sum(kl_steps, -1),
            "generator_adversarial": adversarial_rec + adversarial_prior,
            "mutual_information": mi_rec + mi_prior,
            "kl_steps": kl_steps,
            "loc": out["loc"],
        }
        logs = self._update_trackers(terms, d_losses, correct, kind, update)
        logs["discriminator_batch_accuracy"] = accuracy
        return {**logs, **self._diagnostic_results()}

    def _update_trackers(self, terms, d_losses=None, correct=None, kind=None, update=None):
        t = self._trackers
        for key in ("loss", "reconstruction", "rate", "generator_adversarial", "mutual_information"):
            t[key].update_state(terms[key])
        self._update_latent_trackers(terms["kl_steps"], terms["loc"])
        if d_losses is not None:
            t["discriminator_loss"].update_state(d_losses)
            t["discriminator_accuracy"].update_state(correct)
            for index, name in enumerate(("real", "reconstruction", "prior")):
                mask = tf.equal(kind, index)
                t[f"discriminator_loss_{name}"].update_state(tf.boolean_mask(d_losses, mask))
                t[f"discriminator_accuracy_{name}"].update_state(tf.boolean_mask(correct, mask))
            if update is not None:
                t["discriminator_skip_rate"].update_state(1.0 - tf.cast(update, tf.float32))
        return {name: tracker.result() for name, tracker in t.items()}

    def test_step(self, data):
        """Validation: VAE objective (posterior sample from the evaluation stream) and the discriminator's
        accuracy on real images, reconstructions and prior samples (no dropout-free pass: the code's D keeps
        stochastic dropout at inference)."""
        x = self.to_model_range(self._images(data))
        out = self._forward(x, training=False)
        kl_steps = bounds.kl_per_time_step(out["loc"], out["log_variance"], self.num_time_steps)
        reconstruction = self.reconstruction_error(x, out["reconstructions"])
        vae = reconstruction + bounds.weighted_rate(kl_steps, self.kl_weight, self.kl_step_weights)
        d_images, labels, kind = losses.discriminator_batch(x, out["reconstructions"], self._second_fakes(out))
        d_logits = tf.cast(self.discriminator(self.discriminator_trunk(d_images))[:, 0], tf.float32)
        d_losses = losses.discriminator_loss(d_logits, labels)
        correct = losses.discriminator_correct(d_logits, labels)
        adversarial = self.adversarial_term(
            self.discriminator(self.discriminator_trunk(out["reconstructions"]))
        ) + self.adversarial_term(self.discriminator(self.discriminator_trunk(out["prior_samples"])))
        zeros = tf.zeros_like(vae)
        terms = {
            "loss": vae,
            "reconstruction": reconstruction,
            "rate": tf.reduce_sum(kl_steps, -1),
            "generator_adversarial": adversarial,
            "mutual_information": zeros,
            "kl_steps": kl_steps,
            "loc": out["loc"],
        }
        logs = self._update_trackers(terms, d_losses, correct, kind)
        return {k: v for k, v in logs.items() if k not in ("discriminator_skip_rate", "mutual_information")}

    # ------------------------------------------------------------------ serialization
    def get_config(self):
        networks = ("encoder", "latent_head", "decoder", "discriminator_trunk", "discriminator", "q_head")
        config = {
            key: (keras.saving.serialize_keras_object(getattr(self, key)) if getattr(self, key) is not None else None)
            for key in networks
        }
        return {
            **super().get_config(),
            **config,
            "image_shape": self.image_shape,
            "kl_weight": self.kl_weight,
            "kl_step_weights": self.kl_step_weights,
            "adversarial_weight": self.adversarial_weight,
            "adversarial_loss": self.adversarial_loss,
            "mutual_information_weight": self.mutual_information_weight,
            "mutual_information_step_weights": self.mutual_information_step_weights,
            "reconstruction_normalization": self.reconstruction_normalization,
            "generator_batch": self.generator_batch,
            "adversarial_prior_samples": self.adversarial_prior_samples,
            "discriminator_accuracy_threshold": self.discriminator_accuracy_threshold,
            "encoder_adversarial_gradient": self.encoder_adversarial_gradient,
            "legacy_swapped_prior_weights": self.legacy_swapped_prior_weights,
            "legacy_unweighted_prior_mutual_information": self.legacy_unweighted_prior_mutual_information,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "latent_head", "decoder", "discriminator_trunk", "discriminator", "q_head"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
