"""The model families (gin-free Keras 3 subclassed models with custom `train_step`).

base.LatentVariableModel   encoder -> latent head -> decoder, parameter groups, noise streams, trackers
vae.VAE                    VAE, cVAE, bcVAE and every crVAE variant (the latent head is the variant)
vae_gan.VAEGAN             VAE-GAN and crVAE-GAN (paper Eq. 4)
semi_supervised.SemiSupervisedVAEGAN   VAEGAN + a class head on the discriminator (Sec. 4.5, STL-10)
schedules.WarmupSchedule   the discriminator's learning-rate warm-up
optimizers.FusedAdam       Adam through TensorFlow's fused kernel (the optimizer of every recipe)
completion                 image completion by optimising z (Eq. 5): completion_loss, complete (Adam in a while_loop)
latent_steps               time step t as slice t of the flat z (every head), and the latents of the views of
                           Sec. 4.4: progressive, time-step interpolation, style, manifold (Eq. S1); NumPy only
"""

from crvae_tf.models.base import LatentVariableModel
from crvae_tf.models.optimizers import FusedAdam
from crvae_tf.models.schedules import WarmupSchedule
from crvae_tf.models.semi_supervised import SemiSupervisedVAEGAN
from crvae_tf.models.vae import VAE
from crvae_tf.models.vae import parameter_counts
from crvae_tf.models.vae_gan import VAEGAN

__all__ = [
    "FusedAdam",
    "LatentVariableModel",
    "SemiSupervisedVAEGAN",
    "VAE",
    "VAEGAN",
    "WarmupSchedule",
    "parameter_counts",
]
