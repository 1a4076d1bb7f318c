"""Golden checkpoints: the code restores what an earlier version of it trained, and computes the same numbers.

`tests/golden/<name>/` holds, for a tiny model of each family (VAE, crVAE, crVAE-GAN), a full training
checkpoint (weights, BatchNorm statistics, noise streams, every optimizer's slots, the step) written after two
seeded training steps, and `expected.npz` with the two training losses, the posterior and the decoder output on
a fixed batch. The test rebuilds each model from the same bindings with today's code, restores the checkpoint
with every object matched and every saved value consumed (so no variable, checkpoint key or Keras registered
name may change), and checks the outputs; it also reruns the two seeded steps from scratch and compares the
losses (the training step is unchanged).

Regenerate only when a change of behaviour is intended, and say so in the commit:
    python tests/golden_test.py --regenerate
"""

import os
import sys

import gin
import keras
import numpy as np
import tensorflow as tf

from crvae_tf import builders

import testing_utils

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")

_COMMON = [
    "encoder.base_channels = 4",
    "decoder.base_channels = 4",
    "optimizer.learning_rate = 3e-3",
    "optimizer.lr_halving_epochs = 50",
]
_CRVAE_HEAD = [
    "latent_head.kind = 'channel_recurrent'",
    "latent_head.latent_channels = 8",
    "latent_head.num_time_steps = 8",
    "latent_head.hidden_units = 16",
    "latent_head.num_layers = 2",
    "latent_head.recurrent_inference = True",
    "latent_head.recurrent_generation = True",
    "optimizer.group_learning_rate_scale = {'latent_head': 0.125}",
    "optimizer.group_gradient_clip = {'latent_head': 5.0}",
]
# name -> (image shape, bindings)
MODELS = {
    "vae": (
        (28, 28, 1),
        _COMMON
        + [
            "encoder.last_stride2_kernel = 5",
            "latent_head.kind = 'fc'",
            "latent_head.latent_dim = 16",
            "model.kl_weight = 0.784",
        ],
    ),
    "crvae": (
        (28, 28, 1),
        _COMMON
        + _CRVAE_HEAD
        + [
            "encoder.last_stride2_kernel = 3",
            "latent_head.loc_path = 'dense'",
            "model.kl_weight = 0.784",
        ],
    ),
    "crvae_gan": (
        (64, 64, 3),
        _COMMON
        + _CRVAE_HEAD
        + testing_utils.TINY_ADVERSARIAL_BINDINGS
        + [
            "model.family = 'vae_gan'",
            "latent_head.loc_path = 'conv'",
            "latent_head.inference_batchnorm = True",
            "model.kl_weight = 1e-4",
            "model.kl_step_weights = [3, 3, 3, 2, 2, 2, 2, 2]",
            "model.adversarial_weight = 0.01",
            "model.mutual_information_weight = 0.02",
            "model.mutual_information_step_weights = [0.1, 1.5, 1.5, 1.25, 0.1, 0.1, 1.0, 1.0]",
            "optimizer.group_warmup = {'discriminator': [[10, 0.02], [30, 0.2]]}",
        ],
    ),
}
SEED = 3
BATCH = 8


def _batches(image_shape):
    """Two training batches and one evaluation batch, fixed by a NumPy seed (binary for MNIST, [0, 1] for RGB)."""
    rng = np.random.default_rng(11)
    images = rng.uniform(size=(3, BATCH) + image_shape).astype(np.float32)
    if image_shape[-1] == 1:
        images = (images > 0.7).astype(np.float32)
    return [tf.constant(b) for b in images]


def _build(name):
    image_shape, bindings = MODELS[name]
    gin.clear_config()
    gin.parse_config(bindings)
    keras.utils.set_random_seed(SEED)
    model = builders.build_model(image_shape=image_shape, seed=SEED)
    optimizers, clips = builders.build_optimizers(model, steps_per_epoch=10)
    model.compile(optimizers=optimizers, clip_values=clips)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(
        model=model,
        step=step,
        rng_state=model.seed_generator.state,
        **{f"{n}_optimizer": o for n, o in optimizers.items()},
    )
    return model, checkpoint, step


def _train_two_steps(model):
    train_step = tf.function(model.train_step)
    losses = []
    for batch in _batches(model.image_shape)[:2]:
        logs = train_step(batch)
        losses.append(float(logs["loss"]))
        model.reset_metrics()
    return np.array(losses)


def _outputs(model):
    """Deterministic functions of the weights: posterior parameters and the decoder output at the mean."""
    images = _batches(model.image_shape)[2]
    if model.input_range[0] < 0:
        images = images * 2.0 - 1.0
    loc, log_variance = model.encode(images, training=False)
    return {"loc": loc.numpy(), "log_variance": log_variance.numpy(), "decoded": model.decode(loc).numpy()}


def regenerate():
    for name in MODELS:
        folder = os.path.join(GOLDEN_DIR, name)
        if os.path.isdir(folder):
            tf.io.gfile.rmtree(folder)
        model, checkpoint, step = _build(name)
        losses = _train_two_steps(model)
        step.assign(2)
        checkpoint.write(os.path.join(folder, "ckpt"))
        np.savez(os.path.join(folder, "expected.npz"), train_losses=losses, **_outputs(model))
        print(name, losses)


class GoldenCheckpointTest(testing_utils.GinTestCase):
    def test_restores_every_object_and_reproduces_outputs(self):
        for name in MODELS:
            with self.subTest(model=name):
                expected = np.load(os.path.join(GOLDEN_DIR, name, "expected.npz"))
                model, checkpoint, step = _build(name)
                status = checkpoint.read(os.path.join(GOLDEN_DIR, name, "ckpt"))
                status.assert_consumed()  # every saved value has an object, every object a saved value
                self.assertEqual(int(step.numpy()), 2)
                for key, value in _outputs(model).items():
                    self.assertAllClose(value, expected[key], rtol=1e-4, atol=1e-5, msg=f"{name}: {key}")

    def test_first_two_seeded_steps_give_the_recorded_losses(self):
        for name in MODELS:
            with self.subTest(model=name):
                expected = np.load(os.path.join(GOLDEN_DIR, name, "expected.npz"))
                model, _, _ = _build(name)
                self.assertAllClose(_train_two_steps(model), expected["train_losses"], rtol=1e-4)


if __name__ == "__main__":
    if "--regenerate" in sys.argv:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        regenerate()
    else:
        tf.test.main()
