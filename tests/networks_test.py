"""Contracts of the RGB (adversarial) networks and their layers: shapes, oracles, dropout semantics,
initialisation, pinned parameter counts, serialization, and composition with the latent heads."""

import math

import keras
import numpy as np
import tensorflow as tf

from crvae_tf.architectures import blocks
from crvae_tf.architectures import discriminator_layers
from crvae_tf.architectures import heads
from crvae_tf.architectures import networks

# Tiny widths: every builder in a few milliseconds.
TINY_ENCODER = dict(base_channels=4)  # 4x4x32 features
TINY_TRUNK = dict(widths=(4, 8, 8, 8))  # 4x4x8 features
TINY_HEAD = dict(units=16, num_kernels=6, kernel_dim=3)
TINY_LATENT = (4, 4, 8)


def trainable_count(model):
    return int(sum(v.numpy().size for v in model.trainable_variables))


# Trainable parameter counts at the paper/code widths (b = 32; D widths 64-128-256-256 / baseline 32-64-128-256;
# D head 1024 units, 100 x 5 minibatch kernels; Q 64 hidden, latent 4x4x64). The 64x64 encoder, checked by
# hand against the layer list (weights + bias, then BN gamma + beta):
#   conv1 5*5*6*32+32 = 4832 (+64)     conv2 3*3*64*64+64 = 36928 (+128)   conv3 3*3*128*128+128 = 147584 (+256)
#   conv4 3*3*256*256+256 = 590080 (+512)   conv5 590080 (+512)   conv6 3*3*512*256+256 = 1179904 (+512)
#   total 2551392.
PINNED = {
    "rgb_encoder_64": 2551392,
    "rgb_encoder_128": 2602688,  # + conv0 (4832 + 64) and conv1 on 64 instead of 6 channels (+46400)
    "rgb_decoder_64": 2400387,  # 1049344 + 590592 + 524672 + 131264 + 65728 + 37056 + 1731
    "rgb_decoder_128": 2404643,  # + deconv5 (32800 + 64), conv2 64->32 ch, output conv on 32 ch
    "trunk_crvaegan_64": 1619328,  # 4864 + 204928 + 819456 + 590080
    "trunk_crvaegan_128": 1721792,  # + stage0 3->64 (4864), stage1 on 64 channels (102464)
    "trunk_vaegan_64": 553792,  # 2432 + 51264 + 204928 + 295168
    "trunk_vaegan_128": 579424,
    "discriminator_head": 4708953,  # 4096*1024+1024 + (1024*500+500) + 1124+1
    "q_head": 1202560,  # 147520 + 128 + 4160 + 128 + 1049600 + 1024
}

# Full adversarial models (trainable): generator = encoder + latent head + decoder.
PINNED_MODELS = {
    # crVAE-GAN: ChannelRecurrentHead(T=8, 512 hidden, 2 layers, conv loc path, inference BN) = 8040512:
    # loc conv 147520 + b_enc 1024 + inference LSTM 4198400 + BN 1024 + Dense 65664 + generation LSTM 3411968
    # + Dense 65664 + b_dec 1024 + entry conv 147712 + BN 512. Generator 64 = 2551392 + 8040512 + 2400387.
    "crvae_gan_64": {"generator": 12992291, "trunk": 1619328, "discriminator": 4708953, "q": 1202560},
    "crvae_gan_128": {"generator": 13047843, "trunk": 1721792, "discriminator": 4708953, "q": 1202560},
    # VAE-GAN: FCHead(1024) = 2 * (4096*1024 + 1024) + 1024*4096 + 4096 = 12589056; baseline trunk; no Q head.
    "vae_gan_64": {"generator": 17540835, "trunk": 553792, "discriminator": 4708953},
    "vae_gan_128": {"generator": 17596387, "trunk": 579424, "discriminator": 4708953},
}


def numpy_minibatch_discrimination(x, kernel, bias, num_kernels, kernel_dim):
    """Independent oracle: explicit loops over rows i, j and kernels b."""
    m = (x @ kernel + bias).reshape(x.shape[0], num_kernels, kernel_dim)
    n = x.shape[0]
    o = np.zeros((n, num_kernels))
    for i in range(n):
        for b in range(num_kernels):
            o[i, b] = sum(math.exp(-np.abs(m[i, b] - m[j, b]).sum()) for j in range(n)) / n
    return np.concatenate([x, o], axis=1)


def round_trip(model):
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))
    clone.set_weights(model.get_weights())
    return clone


class RGBNetworksTest(tf.test.TestCase):
    def test_encoder_and_decoder_shapes_and_output_range(self):
        rng = np.random.default_rng(0)
        for resolution in (64, 128):
            encoder = networks.rgb_encoder(resolution, **TINY_ENCODER)
            self.assertEqual(encoder.output_shape, (None, 4, 4, 32))
            self.assertEqual(encoder.get_layer("input_crelu").output.shape[1:], (resolution, resolution, 6))
            self.assertEqual(encoder.get_layer("conv1_crelu").output.shape[1:], (32, 32, 8))
            self.assertEqual(encoder.get_layer("conv3_crelu").output.shape[1:], (8, 8, 32))
            self.assertEqual(encoder.get_layer("conv5_crelu").output.shape[1:], (4, 4, 64))
            names = [layer.name for layer in encoder.layers]
            self.assertEqual("conv0_conv" in names, resolution == 128)
            if resolution == 128:
                self.assertEqual(encoder.get_layer("conv0_crelu").output.shape[1:], (64, 64, 8))
                self.assertEqual(encoder.get_layer("conv0_conv").kernel.shape, (5, 5, 6, 4))
            self.assertEqual(encoder.get_layer("conv1_conv").kernel.shape[:2], (5, 5))
            x = rng.uniform(-1, 1, (2, resolution, resolution, 3)).astype(np.float32)
            features = encoder(x, training=True)
            self.assertEqual(features.shape, (2, 4, 4, 32))

            decoder = networks.rgb_decoder(resolution, **TINY_ENCODER)
            self.assertEqual(decoder.input_shape, (None, 4, 4, 32))
            self.assertEqual(decoder.output_shape, (None, resolution, resolution, 3))
            self.assertEqual(decoder.get_layer("deconv4_leaky").output.shape[1:], (64, 64, 8))
            if resolution == 128:
                self.assertEqual(decoder.get_layer("deconv5_leaky").output.shape[1:], (128, 128, 4))
            # Large inputs saturate the tanh: outputs stay in [-1, 1] and reach its ends.
            out = decoder(10.0 * rng.normal(size=(2, 4, 4, 32)).astype(np.float32), training=True).numpy()
            self.assertEqual(out.shape, (2, resolution, resolution, 3))
            self.assertAllInRange(out, -1.0, 1.0)
            self.assertGreater(np.abs(out).max(), 0.9)
        self.assertEqual(networks.rgb_decoder(64, base_channels=4, feature_channels=12).input_shape, (None, 4, 4, 12))

    def test_discriminator_shapes(self):
        rng = np.random.default_rng(1)
        for resolution in (64, 128):
            trunk = networks.discriminator_trunk(resolution, **TINY_TRUNK, seed=0)
            self.assertEqual(trunk.output_shape, (None, 4, 4, 8))
            convs = [layer for layer in trunk.layers if isinstance(layer, keras.layers.Conv2D)]
            self.assertEqual([c.kernel.shape[0] for c in convs], [5] * (len(convs) - 1) + [3])
            self.assertEqual(len(convs), 4 if resolution == 64 else 5)
            self.assertEqual([c.filters for c in convs], ([4] if resolution == 128 else []) + [4, 8, 8, 8])
            self.assertIsInstance(trunk.get_layer("stage4_dropout"), discriminator_layers.TorchDropout)
            x = rng.uniform(-1, 1, (3, resolution, resolution, 3)).astype(np.float32)
            features = trunk(x, training=True)
            self.assertEqual(features.shape, (3, 4, 4, 8))
            head = networks.discriminator_head(trunk.output_shape[1:], **TINY_HEAD)
            self.assertEqual(head.get_layer("minibatch").output.shape, (None, 16 + 6))
            self.assertEqual(head(features).shape, (3, 1))
            q = networks.q_head(trunk.output_shape[1:], latent_shape=TINY_LATENT, hidden_channels=4)
            self.assertEqual(q(features).shape, (3, 128))
        five = networks.discriminator_trunk(128, widths=(2, 4, 8, 8, 8))
        self.assertEqual(five.get_layer("stage0_conv").filters, 2)

    def test_bad_arguments_fail_clearly(self):
        for builder in (networks.rgb_encoder, networks.rgb_decoder, networks.discriminator_trunk):
            with self.assertRaisesRegex(ValueError, r"resolution must be one of \(64, 128\).*got 96"):
                builder(96)
        with self.assertRaisesRegex(ValueError, "needs 4 widths"):
            networks.discriminator_trunk(64, widths=(4, 8, 8))
        with self.assertRaisesRegex(ValueError, "feature_shape must be"):
            networks.discriminator_head((4, 4))
        with self.assertRaisesRegex(ValueError, r"rate must be in \[0, 1\)"):
            discriminator_layers.TorchDropout(1.0)
        with self.assertRaisesRegex(ValueError, "flatten first"):
            discriminator_layers.MinibatchDiscrimination(2, 2)(np.zeros((2, 3, 4), np.float32))

    def test_discriminator_head_matches_numpy_pipeline(self):
        head = networks.discriminator_head((4, 4, 8), **TINY_HEAD)
        features = np.random.default_rng(2).normal(size=(5, 4, 4, 8)).astype(np.float32)
        dense, minibatch, logits = head.get_layer("dense"), head.get_layer("minibatch"), head.get_layer("logits")
        x = features.transpose(0, 3, 1, 2).reshape(5, -1)  # Torch nn.View order (C, H, W)
        x = x @ dense.kernel.numpy() + dense.bias.numpy()
        x = x / np.sqrt((x**2).sum(1, keepdims=True) + 1e-10)
        x = np.maximum(0.5 * x, 0.0)  # Torch v1 dropout at inference: x (1 - p)
        x = numpy_minibatch_discrimination(x, minibatch.kernel.numpy(), minibatch.bias.numpy(), 6, 3)
        expected = x @ logits.kernel.numpy() + logits.bias.numpy()
        self.assertAllClose(head(features, training=False), expected, atol=1e-5)

    def test_q_head_output_is_channel_major(self):
        q = networks.q_head((4, 4, 8), latent_shape=TINY_LATENT, hidden_channels=4)
        features = np.random.default_rng(3).normal(size=(2, 4, 4, 8)).astype(np.float32)
        before_flatten = keras.Model(q.inputs[0], q.get_layer("conv2_leaky").output)(features)
        flat = keras.Model(q.inputs[0], q.get_layer("flatten").output)(features)
        self.assertAllClose(flat, blocks.nhwc_to_flat(before_flatten))
        dense, offset = q.get_layer("dense"), q.get_layer("offset")
        expected = flat.numpy() @ dense.kernel.numpy() + dense.bias.numpy() + offset.bias.numpy()
        self.assertAllClose(q(features), expected, atol=1e-5)
        self.assertEqual(offset.bias.shape, (128,))

    def test_pinned_parameter_counts(self):
        built = {
            "rgb_encoder_64": networks.rgb_encoder(64),
            "rgb_encoder_128": networks.rgb_encoder(128),
            "rgb_decoder_64": networks.rgb_decoder(64),
            "rgb_decoder_128": networks.rgb_decoder(128),
            "trunk_crvaegan_64": networks.discriminator_trunk(64),
            "trunk_crvaegan_128": networks.discriminator_trunk(128),
            "trunk_vaegan_64": networks.discriminator_trunk(64, widths=(32, 64, 128, 256)),
            "trunk_vaegan_128": networks.discriminator_trunk(128, widths=(32, 64, 128, 256)),
            "discriminator_head": networks.discriminator_head((4, 4, 256)),
            "q_head": networks.q_head((4, 4, 256)),
        }
        self.assertEqual({key: trainable_count(model) for key, model in built.items()}, PINNED)
        # BN moving statistics are the only non-trainable weights (dropout seed states are not weights).
        self.assertEqual(built["trunk_crvaegan_64"].count_params(), PINNED["trunk_crvaegan_64"])
        self.assertEqual(built["rgb_encoder_64"].count_params() - PINNED["rgb_encoder_64"], 2 * 992)

    def test_initialisation_follows_the_code(self):
        encoder = networks.rgb_encoder(64, base_channels=8)
        conv = encoder.get_layer("conv2_conv")  # ConvInit: U(+-1/sqrt(k*k*C_out)), bias 0
        bound = 1 / math.sqrt(3 * 3 * 16)
        self.assertAllInRange(conv.kernel, -bound, bound)
        self.assertGreater(np.abs(conv.kernel.numpy()).max(), 0.9 * bound)
        self.assertAllEqual(conv.bias, np.zeros(16))
        self.assertAllEqual(encoder.get_layer("conv2_bn").gamma, np.ones(16))
        decoder = networks.rgb_decoder(64, base_channels=8)
        out_conv = decoder.get_layer("output_conv")
        self.assertAllInRange(out_conv.kernel, -1 / math.sqrt(27), 1 / math.sqrt(27))
        self.assertAllEqual(out_conv.bias, np.zeros(3))

        trunk = networks.discriminator_trunk(64, widths=(16, 32, 32, 64))
        conv = trunk.get_layer("stage2_conv")  # Torch default: U(+-1/sqrt(k*k*C_in))
        bound = 1 / math.sqrt(5 * 5 * 16)
        for weights in (conv.kernel, conv.bias):
            self.assertAllInRange(weights, -bound, bound)
            self.assertGreater(np.abs(weights.numpy()).max(), 0.5 * bound)
        self.assertTrue(np.all(conv.bias.numpy() != 0))

        head = networks.discriminator_head((4, 4, 8), units=64, num_kernels=10, kernel_dim=3)
        dense = head.get_layer("dense")
        self.assertAllInRange(dense.kernel, -1 / math.sqrt(128), 1 / math.sqrt(128))
        self.assertAllEqual(dense.bias, np.zeros(64))
        self.assertAllEqual(head.get_layer("logits").bias, np.zeros(1))
        self.assertAllInRange(head.get_layer("logits").kernel, -1 / math.sqrt(74), 1 / math.sqrt(74))
        self.assertAllEqual(head.get_layer("minibatch").bias, np.zeros(30))
        self.assertAllInRange(head.get_layer("minibatch").kernel, -1 / 8, 1 / 8)

        q = networks.q_head((4, 4, 16), latent_shape=(4, 4, 16), hidden_channels=16)
        gamma = q.get_layer("conv1_bn").gamma.numpy()  # nn default: gamma ~ U(0, 1)
        self.assertAllInRange(gamma, 0.0, 1.0)
        self.assertLess(gamma.min(), 0.9)
        self.assertAllEqual(q.get_layer("conv1_bn").beta, np.zeros(16))
        self.assertAllInRange(q.get_layer("conv1_conv").bias, -1 / math.sqrt(144), 1 / math.sqrt(144))
        self.assertTrue(np.all(q.get_layer("conv2_conv").bias.numpy() != 0))
        q_dense = q.get_layer("dense")
        self.assertAllInRange(q_dense.bias, -1 / 16, 1 / 16)
        self.assertTrue(np.all(q_dense.bias.numpy() != 0))
        self.assertAllInRange(q.get_layer("offset").bias, -0.01 * math.sqrt(3), 0.01 * math.sqrt(3))

    def test_sequential_round_trips(self):
        rng = np.random.default_rng(4)
        trunk = networks.discriminator_trunk(64, **TINY_TRUNK, seed=11)
        cases = [
            (networks.rgb_encoder(64, **TINY_ENCODER), (2, 64, 64, 3)),
            (networks.rgb_encoder(128, **TINY_ENCODER), (2, 128, 128, 3)),
            (networks.rgb_decoder(64, **TINY_ENCODER), (2, 4, 4, 32)),
            (networks.rgb_decoder(128, **TINY_ENCODER), (2, 4, 4, 32)),
            (networks.discriminator_head((4, 4, 8), **TINY_HEAD), (3, 4, 4, 8)),
            (networks.q_head((4, 4, 8), latent_shape=TINY_LATENT, hidden_channels=4), (3, 4, 4, 8)),
            (networks.discriminator_trunk(128, **TINY_TRUNK, torch_dropout=False), (2, 128, 128, 3)),
        ]
        for model, shape in cases:
            with self.subTest(model=model.name):
                clone = round_trip(model)
                self.assertEqual(clone.get_config(), model.get_config())
                x = rng.normal(size=shape).astype(np.float32)
                self.assertAllClose(clone(x, training=False), model(x, training=False), atol=1e-6)
        # The stochastic-inference trunk: the same seeds draw the same channel masks in the clone.
        clone = round_trip(trunk)
        x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
        self.assertAllClose(clone(x, training=True), trunk(x, training=True), atol=1e-6)


class AdversarialLayersTest(tf.test.TestCase):
    def test_minibatch_discrimination_matches_numpy_oracle(self):
        rng = np.random.default_rng(5)
        layer = discriminator_layers.MinibatchDiscrimination(num_kernels=4, kernel_dim=3)
        x = rng.normal(size=(6, 7)).astype(np.float32)
        layer.build(x.shape)
        kernel = rng.normal(scale=0.3, size=(7, 12)).astype(np.float32)
        bias = rng.normal(size=(12,)).astype(np.float32)
        layer.kernel.assign(kernel)
        layer.bias.assign(bias)
        out = layer(x).numpy()
        self.assertEqual(out.shape, (6, 7 + 4))
        self.assertAllClose(out, numpy_minibatch_discrimination(x, kernel, bias, 4, 3), atol=1e-5)
        self.assertAllEqual(out[:, :7], x)
        # The diagonal is not masked: with far-apart rows only exp(0) = 1 survives, so o = 1/N.
        layer.kernel.assign(1000.0 * kernel)
        self.assertAllClose(layer(x).numpy()[:, 7:], np.full((6, 4), 1 / 6), atol=1e-6)
        # W is trained, the bias cancels in the differences (zero gradient).
        layer.kernel.assign(kernel)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x)[:, 7:] * rng.normal(size=(6, 4)).astype(np.float32))
        kernel_grad, bias_grad = tape.gradient(loss, [layer.kernel, layer.bias])
        self.assertGreater(float(tf.reduce_max(tf.abs(kernel_grad))), 1e-3)
        self.assertAllClose(bias_grad, np.zeros(12), atol=1e-6)

    def test_minibatch_discrimination_hand_example(self):
        # Two rows, one kernel of dimension 2, W = I: M = X; D_12 = |1 - 0| + |0 - 1| = 2;
        # o_1 = o_2 = (exp(0) + exp(-2)) / 2 = 0.567667641.
        layer = discriminator_layers.MinibatchDiscrimination(num_kernels=1, kernel_dim=2)
        x = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
        layer.build(x.shape)
        layer.kernel.assign(np.eye(2, dtype=np.float32))
        self.assertAllClose(layer(x), [[1.0, 0.0, 0.567667641], [0.0, 1.0, 0.567667641]], atol=1e-6)
        self.assertAllClose(layer(x[:1]), [[1.0, 0.0, 1.0]])  # a batch of one: only the diagonal

    def test_row_l2_normalize(self):
        x = np.random.default_rng(6).normal(size=(4, 9)).astype(np.float32)
        x[2] = 0.0
        out = discriminator_layers.RowL2Normalize()(x).numpy()
        expected = x / np.sqrt((x.astype(np.float64) ** 2).sum(1, keepdims=True) + 1e-10)
        self.assertAllClose(out, expected, atol=1e-6)
        self.assertAllEqual(out[2], np.zeros(9))  # epsilon: no NaN on a zero row
        self.assertAllClose(np.linalg.norm(out[[0, 1, 3]], axis=1), np.ones(3), atol=1e-5)

    def test_torch_dropout_plain(self):
        x = np.full((64, 50), 3.0, np.float32)
        layer = discriminator_layers.TorchDropout(0.5, seed=1)
        out = layer(x, training=True).numpy()
        self.assertTrue(np.all((out == 0.0) | (out == 3.0)))  # masked, not rescaled
        self.assertBetween(float((out == 0.0).mean()), 0.45, 0.55)
        self.assertAllEqual(layer(x, training=False), np.full((64, 50), 1.5))  # inference: (1 - p) x
        self.assertAllEqual(layer(x), np.full((64, 50), 1.5))  # default: inference
        stochastic = discriminator_layers.TorchDropout(0.25, stochastic_inference=True, seed=1)(
            x, training=False
        ).numpy()
        self.assertTrue(np.all((stochastic == 0.0) | (stochastic == 3.0)))
        self.assertBetween(float((stochastic == 0.0).mean()), 0.2, 0.3)

    def test_torch_dropout_spatial(self):
        x = np.random.default_rng(7).uniform(1.0, 2.0, (4, 5, 5, 16)).astype(np.float32)
        for layer, training in (
            (discriminator_layers.TorchDropout(0.5, spatial=True, seed=2), True),
            (discriminator_layers.TorchDropout(0.5, spatial=True, stochastic_inference=True, seed=2), False),
        ):
            out = layer(x, training=training).numpy()
            dropped = np.all(out == 0.0, axis=(1, 2))  # [batch, channels]
            kept = np.all(out == x, axis=(1, 2))  # unscaled
            self.assertTrue(np.all(dropped | kept))
            self.assertTrue(dropped.any() and kept.any())
        deterministic = discriminator_layers.TorchDropout(0.5, spatial=True)
        self.assertAllClose(deterministic(x, training=False), 0.5 * x)

    def test_torch_dropout_seeds(self):
        x = np.ones((8, 4, 4, 32), np.float32)
        first = discriminator_layers.TorchDropout(0.5, spatial=True, seed=3)
        second = discriminator_layers.TorchDropout(0.5, spatial=True, seed=3)
        other = discriminator_layers.TorchDropout(0.5, spatial=True, seed=4)
        mask = first(x, training=True).numpy()
        self.assertAllEqual(second(x, training=True), mask)  # same seed, same mask
        self.assertNotAllEqual(other(x, training=True), mask)
        self.assertNotAllEqual(first(x, training=True), mask)  # the generator advances
        # Inside a compiled function too.
        compiled = discriminator_layers.TorchDropout(0.5, spatial=True, seed=3)
        self.assertAllEqual(tf.function(lambda t: compiled(t, training=True))(x), mask)

    def test_dropout_flags_in_the_networks(self):
        x = np.random.default_rng(8).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
        torch_trunk = networks.discriminator_trunk(64, **TINY_TRUNK, seed=5)
        # Stochastic inference: two inference calls draw different channel masks.
        self.assertNotAllClose(torch_trunk(x, training=False), torch_trunk(x, training=False))
        keras_trunk = networks.discriminator_trunk(64, **TINY_TRUNK, torch_dropout=False, seed=5)
        self.assertIsInstance(keras_trunk.get_layer("stage1_dropout"), keras.layers.SpatialDropout2D)
        self.assertAllClose(keras_trunk(x, training=False), keras_trunk(x, training=False))
        head = networks.discriminator_head((4, 4, 8), **TINY_HEAD, torch_dropout=False)
        self.assertIsInstance(head.get_layer("dropout"), keras.layers.Dropout)
        torch_head = networks.discriminator_head((4, 4, 8), **TINY_HEAD)
        dropout = torch_head.get_layer("dropout")
        self.assertEqual((dropout.rate, dropout.spatial, dropout.stochastic_inference), (0.5, False, False))

    def test_layer_config_round_trips(self):
        rng = np.random.default_rng(9)
        vectors = rng.normal(size=(5, 6)).astype(np.float32)
        maps = rng.normal(size=(2, 3, 3, 8)).astype(np.float32)
        cases = [
            (discriminator_layers.MinibatchDiscrimination(3, 2), vectors, {}),
            (discriminator_layers.MinibatchDiscrimination(3, 2, use_bias=False), vectors, {}),
            (discriminator_layers.RowL2Normalize(1e-6), vectors, {}),
            (discriminator_layers.TorchDropout(0.3, seed=6), vectors, {"training": True}),
            (discriminator_layers.TorchDropout(0.5, spatial=True, stochastic_inference=True, seed=7), maps, {}),
        ]
        for layer, x, kwargs in cases:
            with self.subTest(layer=type(layer).__name__):
                config = keras.saving.serialize_keras_object(layer)
                clone = keras.saving.deserialize_keras_object(config)
                self.assertIs(type(clone), type(layer))
                self.assertEqual(clone.get_config(), layer.get_config())
                clone.build(x.shape)
                layer.build(x.shape)
                clone.set_weights(layer.get_weights())
                self.assertAllClose(clone(x, **kwargs), layer(x, **kwargs), atol=1e-6)


class CompositionTest(tf.test.TestCase):
    """The adversarial models the lead assembles: encoder -> latent head -> decoder, trunk -> D head / Q."""

    def _check(self, resolution, head, latent_dim, with_q):
        rng = np.random.default_rng(10)
        encoder = networks.rgb_encoder(resolution, **TINY_ENCODER)
        decoder = networks.rgb_decoder(resolution, **TINY_ENCODER)
        trunk = networks.discriminator_trunk(resolution, **TINY_TRUNK, seed=0)
        discriminator = networks.discriminator_head(trunk.output_shape[1:], **TINY_HEAD)
        x = rng.uniform(-1, 1, (3, resolution, resolution, 3)).astype(np.float32)
        loc, log_variance = head.infer(encoder(x, training=True), training=True)
        self.assertEqual((loc.shape, log_variance.shape), ((3, latent_dim), (3, latent_dim)))
        z = rng.normal(size=(3, latent_dim)).astype(np.float32)
        decoded = decoder(head.generate(z, training=True), training=True)
        self.assertEqual(decoded.shape, (3, resolution, resolution, 3))
        features = trunk(decoded, training=True)
        self.assertEqual(discriminator(features, training=True).shape, (3, 1))
        if with_q:
            q = networks.q_head(trunk.output_shape[1:], latent_shape=TINY_LATENT, hidden_channels=4)
            self.assertEqual(q(features, training=True).shape, head.transform(z).shape)

    def test_crvae_gan_and_vae_gan_compose(self):
        for resolution in (64, 128):
            with self.subTest(resolution=resolution):
                crvae = heads.ChannelRecurrentHead(
                    (4, 4, 32),
                    latent_channels=8,
                    num_time_steps=8,
                    hidden_units=16,
                    num_layers=2,
                    loc_path="conv",
                    inference_batchnorm=True,
                )
                self._check(resolution, crvae, 128, with_q=True)
                self._check(resolution, heads.FCHead((4, 4, 32), latent_dim=128), 128, with_q=False)

    def test_full_width_model_parameter_counts(self):
        counts = {}
        for resolution in (64, 128):
            encoder, decoder = networks.rgb_encoder(resolution), networks.rgb_decoder(resolution)
            crvae_head = heads.ChannelRecurrentHead(
                (4, 4, 256),
                latent_channels=64,
                num_time_steps=8,
                hidden_units=512,
                num_layers=2,
                loc_path="conv",
                inference_batchnorm=True,
            )
            fc_head = heads.FCHead((4, 4, 256), latent_dim=1024)
            for head in (crvae_head, fc_head):
                head.build(None)
            self.assertEqual(crvae_head.latent_dim, 1024)
            trunk = networks.discriminator_trunk(resolution)
            baseline_trunk = networks.discriminator_trunk(resolution, widths=(32, 64, 128, 256))
            discriminator = trainable_count(networks.discriminator_head((4, 4, 256)))
            generator = trainable_count(encoder) + trainable_count(decoder)
            counts[f"crvae_gan_{resolution}"] = {
                "generator": generator + trainable_count(crvae_head),
                "trunk": trainable_count(trunk),
                "discriminator": discriminator,
                "q": trainable_count(networks.q_head((4, 4, 256))),
            }
            counts[f"vae_gan_{resolution}"] = {
                "generator": generator + trainable_count(fc_head),
                "trunk": trainable_count(baseline_trunk),
                "discriminator": discriminator,
            }
        self.assertEqual(counts, PINNED_MODELS)
