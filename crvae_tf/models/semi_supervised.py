"""The semi-supervised VAE-GAN / crVAE-GAN of paper Sec. 4.5 (Table 2, STL-10), after CC-GAN (Denton et al. 2016).

`SemiSupervisedVAEGAN` is a `VAEGAN` whose discriminator also classifies: a class head (`networks.class_head`) on
the discriminator trunk's features gives `num_classes` logits. Gin-free.

Training step (one per batch `(pool [B, H, W, C], labeled [L, H, W, C], labels [L])` of `data.stl10.TrainingPool`):

  1. the `VAEGAN` step on the pool batch (unlabeled + labeled-fold images, all "real"): generator, encoder and the
     real/fake discriminator, with the skip rule. In the STL-10 protocol the fakes are reconstructions only
     (`adversarial_prior_samples=False`, the default here: "D sees fully reconstructed instead of inpainted
     images").
  2. the class step on the labeled batch, with the weights after step 1 (CC-GAN's third, labeled-only pass):

         classification(x, y) = -log softmax(C(trunk(x)))_y          (`losses.classification_loss`, nats)
         loss_class           = classification_weight * mean_batch classification(x, y)

     whose gradient trains the class head and the discriminator trunk (CC-GAN: the class gradient, x lrC, flows
     into D's features). The trunk takes a second step of its own Adam per iteration (one group, one optimizer;
     CC-GAN's optimiser state for this pass is not given in the paper). The class step is never skipped.

Metrics: everything `VAEGAN` logs, plus `classification_loss` and `classification_accuracy` (running means over
the labeled batches, training mode: dropout on, augmented images). Test-set accuracy is
`crvae_tf.evaluation.classification`.
"""

import keras
import tensorflow as tf

from crvae_tf.models import vae_gan
from crvae_tf.models.vae_gan import VAEGAN
from crvae_tf.objectives import losses

GROUPS = vae_gan.GROUPS + ("class_head",)


@keras.saving.register_keras_serializable("crvae_tf")
class SemiSupervisedVAEGAN(VAEGAN):
    """A `VAEGAN` with a class head on the discriminator trunk (see the module docstring).

    Args (beyond `VAEGAN`'s, which keep their meaning):
      class_head: trunk features `[batch, h', w', c']` -> class logits `[batch, num_classes]`.
      classification_weight: the class loss's weight (CC-GAN's lrC multiplier), 1.0.
      adversarial_prior_samples: False here by default (reconstructions are the only fakes, Sec. 4.5).
    """

    GROUPS = GROUPS

    def __init__(
        self,
        *args,
        class_head=None,
        classification_weight: float = 1.0,
        adversarial_prior_samples: bool = False,
        **kwargs,
    ):
        """`args` and `kwargs` are `VAEGAN`'s (encoder, latent_head, decoder, discriminator_trunk, discriminator,
        q_head, image_shape, ...), with `adversarial_prior_samples` False by default."""
        if class_head is None:
            raise ValueError("SemiSupervisedVAEGAN needs a class_head (networks.class_head on the trunk's features).")
        super().__init__(*args, adversarial_prior_samples=adversarial_prior_samples, **kwargs)
        self.class_head = class_head
        self.classification_weight = float(classification_weight)
        if self.classification_weight < 0:
            raise ValueError(f"classification_weight={classification_weight} must be >= 0.")
        self._class_trackers = {
            name: keras.metrics.Mean(name=name) for name in ("classification_loss", "classification_accuracy")
        }

    @property
    def metrics(self):
        return super().metrics + list(self._class_trackers.values())

    def build(self, input_shape=None):
        super().build(input_shape)
        self.class_head(self.discriminator_trunk(keras.ops.zeros((2,) + self.image_shape)))

    def variable_groups(self):
        groups = super().variable_groups()
        groups["class_head"] = list(self.class_head.trainable_variables)
        return groups

    def class_logits(self, images, training=False):
        """Dataset pixels in [0, 1] `[batch, H, W, C]` -> float32 class logits `[batch, num_classes]`."""
        features = self.discriminator_trunk(self.to_model_range(images), training=training)
        return tf.cast(self.class_head(features, training=training), tf.float32)

    def train_step(self, data):
        if not isinstance(data, (tuple, list)) or len(data) != 3:
            raise ValueError(
                "SemiSupervisedVAEGAN trains on (pool images, labeled images, labels) batches "
                "(data.stl10.TrainingPool, dataset.name='stl10'); got a batch without labels."
            )
        pool, labeled, labels = data
        logs = super().train_step(pool)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        trunk, head = list(self.discriminator_trunk.trainable_variables), list(self.class_head.trainable_variables)
        with tf.GradientTape() as tape:
            logits = self.class_logits(labeled, training=True)
            per_example = losses.classification_loss(logits, labels)
            loss = self.classification_weight * tf.reduce_mean(per_example) / replicas
        gradients = tape.gradient(loss, trunk + head)
        self._apply("discriminator_trunk", gradients[: len(trunk)], trunk)
        self._apply("class_head", gradients[len(trunk) :], head)
        self._class_trackers["classification_loss"].update_state(per_example)
        self._class_trackers["classification_accuracy"].update_state(losses.classification_correct(logits, labels))
        class_logs = {name: tracker.result() for name, tracker in self._class_trackers.items()}
        return {**logs, **class_logs, **self._diagnostic_results()}

    def get_config(self):
        return {
            **super().get_config(),
            "class_head": keras.saving.serialize_keras_object(self.class_head),
            "classification_weight": self.classification_weight,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("class_head") is not None:
            config["class_head"] = keras.saving.deserialize_keras_object(config["class_head"])
        return super().from_config(config)
