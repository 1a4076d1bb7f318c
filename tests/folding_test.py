"""BatchNorm folding at inference (`architectures.folding`): every network of the project gives the unfolded
network's outputs (evaluation mode) with its BatchNorms folded; the model uses it in evaluation mode only."""

import keras
import numpy as np
import tensorflow as tf

from crvae_tf import models
from crvae_tf.architectures import blocks
from crvae_tf.architectures import folding
from crvae_tf.architectures import heads
from crvae_tf.architectures import networks

import testing_utils


def randomize_batch_norms(network, seed=0):
    """Non-trivial running statistics and affine parameters, so that folding has something to fold."""
    rng = np.random.default_rng(seed)
    for layer in network.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.moving_mean.shape
            layer.moving_mean.assign(rng.normal(size=shape) * 0.3)
            layer.moving_variance.assign(rng.uniform(0.3, 2.0, size=shape))
            layer.gamma.assign(rng.uniform(0.5, 1.5, size=shape))
            layer.beta.assign(rng.normal(size=shape) * 0.2)
        if getattr(layer, "bias", None) is not None and getattr(layer, "use_bias", False):
            layer.bias.assign(rng.normal(size=layer.bias.shape) * 0.1)


def count(network, kind):
    return sum(isinstance(layer, kind) for layer in network.layers)


class FoldedNetworksTest(tf.test.TestCase):
    CASES = {
        "mnist_encoder": lambda: networks.mnist_encoder(base_channels=4),
        "mnist_decoder": lambda: networks.mnist_decoder(base_channels=4),
        "rgb_encoder_64": lambda: networks.rgb_encoder(64, base_channels=4),
        "rgb_decoder_128": lambda: networks.rgb_decoder(128, base_channels=4),
    }

    def test_folded_networks_match_keras_in_evaluation_mode(self):
        for name, build in self.CASES.items():
            with self.subTest(name):
                keras.utils.set_random_seed(0)
                network = build()
                randomize_batch_norms(network)
                shape = (3,) + tuple(network.inputs[0].shape[1:])
                x = tf.constant(np.random.default_rng(1).normal(size=shape).astype(np.float32))
                folded = folding.FoldedInference(network)
                # Every BatchNorm of these networks follows a convolution: all of them fold.
                self.assertEqual(folded.num_folded, count(network, keras.layers.BatchNormalization))
                self.assertLess(len(folded.stages), len(network.layers))
                expected = network(x, training=False).numpy()
                self.assertAllClose(folded(x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
                self.assertAllClose(tf.function(folded)(x), expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())

    def test_folded_kernels_follow_the_weights(self):
        keras.utils.set_random_seed(0)
        network = networks.mnist_decoder(base_channels=4)
        folded = folding.FoldedInference(network)
        x = tf.constant(np.random.default_rng(2).normal(size=(2, 4, 4, 32)).astype(np.float32))
        before = folded(x).numpy()
        randomize_batch_norms(network, seed=5)
        after = folded(x).numpy()
        self.assertGreater(np.abs(after - before).max(), 1e-3)
        self.assertAllClose(after, network(x, training=False), rtol=1e-5, atol=1e-5)

    def test_torch_transposed_convolutions_fold_at_every_padding(self):
        for padding in range(4):
            with self.subTest(padding=padding):
                keras.utils.set_random_seed(padding)
                network = keras.Sequential(
                    [
                        keras.Input((5, 5, 3)),
                        blocks.TorchConv2DTranspose(4, torch_padding=padding, name="deconv"),
                        keras.layers.Identity(name="crop"),
                        blocks.batch_norm(0.9, 1e-5, name="bn"),
                        keras.layers.ReLU(name="relu"),
                    ]
                )
                randomize_batch_norms(network, seed=padding)
                folded = folding.FoldedInference(network)
                self.assertEqual(folded.num_folded, 1)
                self.assertLen(folded.stages, 1)
                x = tf.constant(np.random.default_rng(3).normal(size=(2, 5, 5, 3)).astype(np.float32))
                self.assertAllClose(folded(x), network(x, training=False), rtol=1e-5, atol=1e-5)

    def test_what_does_not_match_is_called_as_is(self):
        keras.utils.set_random_seed(0)
        network = keras.Sequential(
            [
                keras.Input((6, 6, 2)),
                keras.layers.Conv2D(3, 3, activation="relu", name="conv_with_activation"),  # not linear: no fold
                keras.layers.BatchNormalization(name="bn1"),
                keras.layers.Flatten(),
                keras.layers.Dense(5, name="dense"),  # BN after a Dense: not folded
                keras.layers.BatchNormalization(name="bn2"),
            ]
        )
        randomize_batch_norms(network)
        folded = folding.FoldedInference(network)
        self.assertEqual(folded.num_folded, 0)
        self.assertEqual(folded.stages, list(network.layers))
        x = tf.constant(np.random.default_rng(4).normal(size=(2, 6, 6, 2)).astype(np.float32))
        self.assertAllClose(folded(x), network(x, training=False))

    def test_mixed_bfloat16_folds_in_the_compute_dtype(self):
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            keras.utils.set_random_seed(0)
            network = networks.mnist_decoder(base_channels=4)
        finally:
            keras.config.set_dtype_policy(previous)
        randomize_batch_norms(network)
        x = tf.constant(np.random.default_rng(1).normal(size=(4, 4, 4, 32)).astype(np.float32))
        folded = folding.FoldedInference(network)(x)
        self.assertEqual(folded.dtype, tf.bfloat16)
        expected = tf.cast(network(x, training=False), tf.float32)
        # bfloat16 keeps 8 bits: both sides round at every layer.
        self.assertAllClose(tf.cast(folded, tf.float32), expected, rtol=0.1, atol=0.05 * np.abs(expected).max())


class ModelFoldingTest(testing_utils.GinTestCase):
    def test_evaluation_mode_folds_and_training_mode_does_not(self):
        keras.utils.set_random_seed(0)
        model = models.VAE(
            networks.mnist_encoder(base_channels=4),
            heads.HEADS["channel_recurrent"]((4, 4, 32), latent_channels=8, num_time_steps=4, hidden_units=16),
            networks.mnist_decoder(base_channels=4),
            seed=0,
        )
        model.build()
        for network in (model.encoder, model.decoder):
            randomize_batch_norms(network)
        images = tf.constant((np.random.default_rng(0).random((4, 28, 28, 1)) < 0.2).astype(np.float32))
        z = tf.constant(np.random.default_rng(1).normal(size=(4, model.latent_dim)).astype(np.float32))

        self.assertTrue(model.fold_batch_norm)
        folded = model.decode(z), model.encode(images)
        model.fold_batch_norm = False
        plain = model.decode(z), model.encode(images)
        self.assertAllClose(folded[0], plain[0], rtol=1e-5, atol=1e-4)
        self.assertAllClose(folded[1], plain[1], rtol=1e-5, atol=1e-4)
        self.assertNotAllEqual(folded[0], plain[0])  # the folded path ran (rounding differs)

        # Training mode runs Keras' layers (batch statistics, moving averages updated) with folding on or off.
        bn = [layer for layer in model.decoder.layers if isinstance(layer, keras.layers.BatchNormalization)][0]
        moving = bn.moving_mean.numpy()
        model.fold_batch_norm = True
        trained_folded = model.decode(z, training=True)
        self.assertNotAllClose(bn.moving_mean, moving)
        model.fold_batch_norm = False
        bn.moving_mean.assign(moving)
        self.assertAllEqual(model.decode(z, training=True), trained_folded)
        # Nothing of the folding is tracked: the checkpoint's objects are the same with and without it.
        names = {v.path for v in model.variables}
        self.assertFalse([n for n in names if "fold" in n])


if __name__ == "__main__":
    tf.test.main()
