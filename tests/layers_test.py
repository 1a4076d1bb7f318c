"""Component contracts of the layers and networks: shapes, ordering, oracles, config round trips."""

from unittest import mock

import keras
import numpy as np
from scipy import special
import tensorflow as tf

from crvae_tf.architectures import blocks
from crvae_tf.architectures import heads
from crvae_tf.architectures import networks


def numpy_lstm(x, kernels, recurrent_kernels, biases):
    """Independent LSTM oracle, gates (i, f, g, o), zero initial state."""
    for w, u, b in zip(kernels, recurrent_kernels, biases):
        batch, steps, _ = x.shape
        units = u.shape[0]
        h = np.zeros((batch, units))
        c = np.zeros((batch, units))
        outputs = []
        for t in range(steps):
            z = x[:, t] @ w + h @ u + b
            i, f, g, o = np.split(z, 4, axis=-1)
            c = special.expit(f) * c + special.expit(i) * np.tanh(g)
            h = special.expit(o) * np.tanh(c)
            outputs.append(h)
        x = np.stack(outputs, 1)
    return x


class LayersTest(tf.test.TestCase):
    def test_channel_blocks_are_contiguous_channel_groups_in_chw_order(self):
        x = np.arange(2 * 3 * 3 * 8, dtype=np.float32).reshape(2, 3, 3, 8)  # NHWC
        steps = blocks.to_channel_blocks(x, 4).numpy()
        nchw = x.transpose(0, 3, 1, 2)
        self.assertEqual(steps.shape, (2, 4, 2 * 9))
        for t in range(4):
            self.assertAllEqual(steps[:, t], nchw[:, 2 * t : 2 * t + 2].reshape(2, -1))
        flat = blocks.nhwc_to_flat(x)
        self.assertAllEqual(blocks.flat_to_nhwc(flat, 8, 3, 3), x)
        self.assertAllEqual(tf.reshape(flat, (2, 4, 18)), steps)  # step t == slice t of the flat code
        with self.assertRaisesRegex(ValueError, "channel blocks"):
            blocks.to_channel_blocks(x, 3)

    def test_stacked_lstm_matches_numpy_oracle(self):
        layer = blocks.StackedLSTM(6, num_layers=2)
        x = np.random.default_rng(0).normal(size=(3, 5, 4)).astype(np.float32)
        out = layer(x).numpy()
        oracle = numpy_lstm(
            x.astype(np.float64),
            [k.numpy() for k in layer.kernels],
            [u.numpy() for u in layer.recurrent_kernels],
            [b.numpy() for b in layer.biases],
        )
        self.assertEqual(out.shape, (3, 5, 6))
        self.assertAllClose(out, oracle, atol=1e-5)

    def test_lstm_recurrence_gradient_matches_autodiff_of_the_unrolled_loop(self):
        """The hand-written backward passes of `lstm_recurrence` and `fused_lstm_recurrence` (XLA cells) against
        TensorFlow's autodiff of the plain unrolled recurrence (float64: they must agree to rounding), for T = 1 (no
        recurrent term) and T = 5."""

        def unrolled(projected, recurrent_kernel):
            h = c = None
            outputs = []
            for t in range(projected.shape[0]):
                a = projected[t] if h is None else projected[t] + tf.matmul(h, recurrent_kernel)
                i, f, g, o = tf.split(a, 4, axis=-1)
                c = tf.sigmoid(i) * tf.tanh(g) if c is None else tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
                h = tf.sigmoid(o) * tf.tanh(c)
                outputs.append(h)
            return tf.stack(outputs)

        rng = np.random.default_rng(1)
        for steps in (1, 5):
            projected = tf.constant(rng.normal(size=(steps, 3, 16)), tf.float64)
            recurrent_kernel = tf.constant(rng.normal(size=(4, 16)) * 0.7, tf.float64)
            upstream = tf.constant(rng.normal(size=(steps, 3, 4)), tf.float64)
            results = []
            for fn in (unrolled, blocks.lstm_recurrence, blocks.fused_lstm_recurrence):
                with tf.GradientTape() as tape:
                    tape.watch([projected, recurrent_kernel])
                    outputs = fn(projected, recurrent_kernel)
                    loss = tf.reduce_sum(outputs * upstream)
                gradients = tape.gradient(
                    loss, [projected, recurrent_kernel], unconnected_gradients=tf.UnconnectedGradients.ZERO
                )
                results.append([outputs] + gradients)
            for ours in results[1:]:
                for a, reference in zip(ours, results[0]):
                    self.assertEqual(a.dtype, tf.float64)  # the fused cells compute in float64 here, not float32
                    self.assertAllClose(a, reference, atol=1e-12, rtol=1e-12)
            if steps > 1:
                self.assertGreater(float(tf.reduce_max(tf.abs(results[1][2]))), 1e-3)

    def test_stacked_lstm_under_xla_computes_the_plain_stack(self):
        """`jit_compile`: training calls under XLA ('stack' and 'cells') give the plain graph's outputs and gradients
        (float32 rounding); which calls compile ('auto' = 'stack' in float32, 'cells' in mixed precision, training
        only; never evaluation); bad values fail; configs keep it."""
        rng = np.random.default_rng(2)
        x = tf.constant(rng.normal(size=(5, 4, 6)), tf.float32)
        upstream = tf.constant(rng.normal(size=(5, 4, 8)), tf.float32)
        xla, plain = blocks.StackedLSTM(8, 2, jit_compile=True), blocks.StackedLSTM(8, 2, jit_compile=False)
        cells = blocks.StackedLSTM(8, 2, jit_compile="cells")
        for layer in (xla, plain, cells):
            layer.build(x.shape)
        for target in (plain, cells):
            for source, weight in zip(xla.weights, target.weights):
                weight.assign(source)

        @tf.function
        def forward_backward(layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                outputs = layer(x, training=True)
                loss = tf.reduce_sum(outputs * upstream)
            graph = tf.compat.v1.get_default_graph().as_graph_def()
            must_compile = any("_XlaMustCompile" in f.attr for f in graph.library.function)
            return [outputs] + tape.gradient(loss, [x] + layer.trainable_weights), must_compile

        ours, compiled = forward_backward(xla)
        for a, b in zip(ours, forward_backward(xla)[0]):  # deterministic: a resumed run recomputes the same steps
            self.assertAllEqual(a, b)
        reference, reference_compiled = forward_backward(plain)
        self.assertTrue(bool(compiled))
        self.assertFalse(bool(reference_compiled))
        for a, b in zip(ours, reference):
            self.assertAllClose(a, b, atol=2e-5, rtol=2e-5)
        self.assertGreater(float(tf.reduce_max(tf.abs(ours[2]))), 1e-3)  # the recurrent kernel gets a gradient
        fused, fused_compiled = forward_backward(cells)
        self.assertTrue(bool(fused_compiled))
        for a, b in zip(fused, reference):
            self.assertAllClose(a, b, atol=2e-5, rtol=2e-5)

        self.assertEqual([xla.xla_mode(t) for t in (True, False, None)], ["stack", None, None])
        self.assertEqual([xla.compiles(t) for t in (True, False, None)], [True, False, False])
        self.assertEqual([cells.xla_mode(t) for t in (True, False)], ["cells", None])
        self.assertEqual([plain.compiles(t) for t in (True, False)], [False, False])
        auto32 = blocks.StackedLSTM(8, 2)
        auto16 = blocks.StackedLSTM(8, 2, dtype="mixed_bfloat16")
        self.assertEqual([auto32.xla_mode(True), auto32.xla_mode(False)], ["stack", None])
        self.assertEqual([auto16.xla_mode(True), auto16.xla_mode(False)], ["cells", None])
        self.assertEqual(blocks.StackedLSTM(8, 2, jit_compile="stack").xla_mode(True), "stack")
        for bad in ("yes", 1, None, "Cells"):
            with self.assertRaisesRegex(ValueError, "jit_compile must be one of"):
                blocks.StackedLSTM(8, 2, jit_compile=bad)
        self.assertEqual(blocks.StackedLSTM.from_config(xla.get_config()).jit_compile, True)
        self.assertEqual(blocks.StackedLSTM.from_config(auto32.get_config()).jit_compile, "auto")
        self.assertEqual(blocks.StackedLSTM.from_config(cells.get_config()).jit_compile, "cells")

    def test_fused_cells_keep_a_float32_cell_state_in_bfloat16(self):
        """Under mixed_bfloat16 the 'cells' LSTM (float32 gates and cell state) is closer to the float32 LSTM than the
        plain bfloat16 graph, in the outputs and every gradient; measured about half the plain graph's error."""
        rng = np.random.default_rng(2)
        x = tf.constant(rng.normal(size=(16, 8, 32)), tf.float32)
        upstream = tf.constant(rng.normal(size=(16, 8, 64)), tf.float32)
        reference = blocks.StackedLSTM(64, 2, jit_compile=False)
        cells = blocks.StackedLSTM(64, 2, jit_compile="cells", dtype="mixed_bfloat16")
        plain = blocks.StackedLSTM(64, 2, jit_compile=False, dtype="mixed_bfloat16")
        for layer in (reference, cells, plain):
            layer.build(x.shape)
        for layer in (cells, plain):
            for source, target in zip(reference.weights, layer.weights):
                target.assign(source)

        def forward_backward(layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                outputs = tf.cast(layer(x, training=True), tf.float32)
                loss = tf.reduce_sum(outputs * upstream)
            return [outputs] + tape.gradient(loss, [x] + layer.trainable_weights)

        exact = forward_backward(reference)

        def relative_errors(layer):
            return [
                float(tf.reduce_max(tf.abs(tf.cast(a, tf.float32) - b)) / tf.reduce_max(tf.abs(b)))
                for a, b in zip(forward_backward(layer), exact)
            ]

        fused_errors, plain_errors = relative_errors(cells), relative_errors(plain)
        self.assertLess(max(fused_errors), 1.5e-2)  # bfloat16 matmuls: a few 1e-3
        self.assertLess(sum(fused_errors), 0.75 * sum(plain_errors))

    def test_forward_filter_gradient_convolutions_are_keras_convolutions(self):
        """`blocks.Conv2D` / `blocks.Conv2DTranspose` with `filter_gradient='forward_conv'` (the filter gradient as one
        dilated forward convolution over swapped batch and channel axes) give Keras' layers' outputs and every gradient
        (float64: equal to rounding), for 'same' (symmetric and asymmetric padding) and 'valid', strides 1 and 2,
        odd and even kernels, non-square maps; evaluation calls are Keras' own."""
        rng = np.random.default_rng(5)
        cases = [
            (blocks.Conv2D, keras.layers.Conv2D, (2, 7, 7, 3), 5, 3, 1, "same"),
            (blocks.Conv2D, keras.layers.Conv2D, (2, 8, 8, 4), 6, 3, 2, "same"),  # pads (0, 1)
            (blocks.Conv2D, keras.layers.Conv2D, (2, 9, 8, 4), 6, 4, 2, "valid"),
            (blocks.Conv2D, keras.layers.Conv2D, (2, 15, 15, 3), 2, 3, 2, "same"),
            (blocks.Conv2DTranspose, keras.layers.Conv2DTranspose, (2, 4, 4, 3), 5, 4, 2, "same"),
            (blocks.Conv2DTranspose, keras.layers.Conv2DTranspose, (2, 5, 3, 3), 4, 4, 2, "valid"),
            (blocks.Conv2DTranspose, keras.layers.Conv2DTranspose, (2, 4, 4, 3), 2, 3, 1, "same"),
        ]
        for ours_class, keras_class, shape, filters, kernel_size, stride, padding in cases:
            x = tf.constant(rng.normal(size=shape), tf.float64)
            args = dict(strides=stride, padding=padding, dtype="float64")
            ours = ours_class(filters, kernel_size, filter_gradient="forward_conv", **args)
            reference = keras_class(filters, kernel_size, **args)
            ours.build(shape)
            reference.build(shape)
            for source, target in zip(reference.weights, ours.weights):
                source.assign(source + rng.normal(size=source.shape) * 0.1)  # a non-zero bias too
                target.assign(source)

            def outputs_and_gradients(layer, x, training):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x, training=training)
                    loss = tf.reduce_sum(y * tf.cos(y))
                return [y] + tape.gradient(loss, [x, layer.kernel, layer.bias])

            self.assertTrue(ours.forward_filter_gradient(shape))
            case = f"{ours_class.__name__} {shape} k{kernel_size} s{stride} {padding}"
            expected = outputs_and_gradients(reference, x, True)
            for training in (True, False):
                with mock.patch.object(blocks, "conv_filter_gradient", wraps=blocks.conv_filter_gradient) as spy:
                    results = outputs_and_gradients(ours, x, training)
                self.assertEqual(spy.called, training, msg=case)  # the forward convolution computed the gradient
                for a, b in zip(results, expected):
                    self.assertAllClose(a, b, atol=1e-12, rtol=1e-12, msg=case)
            self.assertGreater(float(tf.reduce_max(tf.abs(expected[2]))), 1e-2)

    def test_forward_filter_gradient_auto_rule_and_bfloat16(self):
        """'auto' = the forward convolution in bfloat16 on gradient maps of side <= 8 with >= 128 channels (the input
        channels of a convolution, the output channels of a transposed one), Keras' kernel otherwise; in bfloat16 the
        gradients stay within bfloat16 rounding of the float32 ones; bad values fail; configs keep the setting."""
        bf16 = "mixed_bfloat16"
        rule = [
            (blocks.Conv2D(128, 3, padding="same", dtype=bf16), (None, 8, 8, 128), True),  # the encoder's conv4
            (blocks.Conv2D(128, 3, strides=2, padding="same", dtype=bf16), (None, 8, 8, 128), True),  # 8 -> 4
            (blocks.Conv2D(64, 3, strides=2, padding="same", dtype=bf16), (None, 15, 15, 64), False),  # 64 channels
            (blocks.Conv2D(128, 3, padding="same", dtype=bf16), (None, 16, 16, 128), False),  # 16x16 maps
            (blocks.Conv2D(128, 3, padding="same"), (None, 8, 8, 128), False),  # float32
            (blocks.Conv2D(128, 3, padding="same", dtype=bf16, filter_gradient="native"), (None, 8, 8, 128), False),
            (blocks.Conv2D(8, 3, padding="same", filter_gradient="forward_conv"), (None, 30, 30, 8), True),
            (blocks.Conv2DTranspose(256, 4, strides=2, padding="same", dtype=bf16), (None, 4, 4, 256), True),
            (blocks.Conv2DTranspose(128, 4, strides=2, padding="same", dtype=bf16), (None, 8, 8, 256), True),
            (blocks.Conv2DTranspose(64, 4, strides=2, padding="same", dtype=bf16), (None, 8, 8, 256), False),
            (blocks.Conv2DTranspose(128, 4, strides=2, padding="same", dtype=bf16), (None, 16, 16, 256), False),
            (blocks.Conv2DTranspose(128, 4, strides=2, padding="same"), (None, 8, 8, 256), False),
        ]
        for layer, shape, expected in rule:
            self.assertEqual(layer.forward_filter_gradient(shape), expected, msg=f"{layer.name} {shape}")
        with mock.patch.object(tf.config, "list_logical_devices", return_value=["/GPU:0"]):  # measured on CPUs only
            self.assertFalse(rule[0][0].forward_filter_gradient(rule[0][1]))
            self.assertTrue(rule[6][0].forward_filter_gradient(rule[6][1]))  # 'forward_conv' is always
        with self.assertRaisesRegex(ValueError, "filter_gradient must be one of"):
            blocks.Conv2D(4, 3, filter_gradient="fast")
        with self.assertRaisesRegex(ValueError, "filter_gradient must be one of"):
            blocks.Conv2DTranspose(4, 3, filter_gradient=None)
        config = blocks.Conv2DTranspose(4, 3, filter_gradient="native").get_config()
        self.assertEqual(blocks.Conv2DTranspose.from_config(config).filter_gradient, "native")

        rng = np.random.default_rng(6)
        x = tf.constant(rng.normal(size=(4, 8, 8, 128)), tf.float32)
        fast = blocks.Conv2D(32, 3, padding="same", dtype=bf16)
        exact = keras.layers.Conv2D(32, 3, padding="same")
        fast.build(x.shape)
        exact.build(x.shape)
        for source, target in zip(exact.weights, fast.weights):
            target.assign(source)
        self.assertTrue(fast.forward_filter_gradient(x.shape))
        results = []
        for layer in (fast, exact):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.cast(layer(x, training=True), tf.float32)
                loss = tf.reduce_sum(y * y)
            results.append([y] + tape.gradient(loss, [x, layer.kernel]))
        for a, b in zip(*results):
            self.assertEqual(a.dtype, tf.float32)
            scale = float(tf.reduce_max(tf.abs(b)))
            self.assertLess(float(tf.reduce_max(tf.abs(a - b))), 3e-2 * scale)

    def test_narrow_conv2d_is_conv2d(self):
        """`NarrowConv2D` computes what `keras.layers.Conv2D` computes with the same weights (outputs and gradients),
        for 1, 2 and 3 output channels and non-square kernels, and falls back to it for 'same' padding."""
        x = tf.constant(np.random.default_rng(2).normal(size=(3, 9, 7, 5)), tf.float32)
        for filters, kernel_size, padding in ((1, 3, "valid"), (3, (2, 3), "valid"), (2, 3, "same")):
            narrow = blocks.NarrowConv2D(filters, kernel_size, padding=padding)
            reference = keras.layers.Conv2D(filters, kernel_size, padding=padding)
            narrow(x), reference(x)
            reference.set_weights([w + 0.1 for w in narrow.get_weights()])  # a non-zero bias too
            narrow.set_weights(reference.get_weights())
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)
                outputs = [layer(x) for layer in (narrow, reference)]
                losses = [tf.reduce_sum(tf.square(y)) for y in outputs]
            self.assertEqual(outputs[0].shape, outputs[1].shape)
            self.assertAllClose(outputs[0], outputs[1], atol=1e-5)
            ours = tape.gradient(losses[0], [x] + narrow.trainable_variables)
            theirs = tape.gradient(losses[1], [x] + reference.trainable_variables)
            for a, b in zip(ours, theirs):
                self.assertAllClose(a, b, atol=1e-4, rtol=1e-5)
        clone = blocks.NarrowConv2D.from_config(narrow.get_config())
        self.assertIsInstance(clone, blocks.NarrowConv2D)

    def test_torch_conv2d_transpose_is_the_cut_valid_transposed_conv(self):
        """`TorchConv2DTranspose` (p = 2: four phases + depth_to_space) against Keras' 'valid' transposed convolution
        with p rows and columns cut from every border (Torch's definition), outputs and gradients, p = 0..3."""
        x = tf.constant(np.random.default_rng(3).normal(size=(2, 5, 6, 3)), tf.float32)
        for p in range(4):
            ours = blocks.TorchConv2DTranspose(4, torch_padding=p)
            reference = keras.layers.Conv2DTranspose(4, 4, strides=2, padding="valid")
            ours(x), reference(x)
            reference.set_weights([w + 0.1 for w in ours.get_weights()])
            ours.set_weights(reference.get_weights())
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(x)
                y = ours(x)
                full = reference(x)
                cut = full[:, p : full.shape[1] - p, p : full.shape[2] - p, :]
                losses = [tf.reduce_sum(tf.square(v)) for v in (y, cut)]
            self.assertEqual(y.shape, (2, 12 - 2 * p, 14 - 2 * p, 4))
            self.assertEqual(ours.compute_output_shape((None, 5, 6, 3)), (None, 12 - 2 * p, 14 - 2 * p, 4))
            self.assertAllClose(y, cut, atol=1e-5)
            for a, b in zip(
                tape.gradient(losses[0], [x] + ours.trainable_variables),
                tape.gradient(losses[1], [x] + reference.trainable_variables),
            ):
                self.assertAllClose(a, b, atol=1e-4, rtol=1e-5)
        clone = blocks.TorchConv2DTranspose.from_config(ours.get_config())
        self.assertEqual(clone.torch_padding, 3)
        with self.assertRaisesRegex(ValueError, "4x4, stride 2"):
            blocks.TorchConv2DTranspose(4, kernel_size=3)
        with self.assertRaisesRegex(ValueError, "padding='v'"):
            blocks.TorchConv2DTranspose(4, padding="v")
        self.assertEqual(blocks.TorchConv2DTranspose(4, kernel_size=4, strides=2).kernel_size, (4, 4))

    def test_stacked_lstm_forget_bias_init(self):
        layer = blocks.StackedLSTM(64, num_layers=1)
        layer.build((None, 8, 16))
        bias = layer.biases[0].numpy()
        bound = 1 / 8.0
        self.assertAllInRange(bias[64:128], 1 - bound, 1 + bound)
        self.assertAllInRange(np.concatenate([bias[:64], bias[128:]]), -bound, bound)

    def test_block_dense_is_independent_per_block(self):
        layer = blocks.BlockDense(3)
        x = np.random.default_rng(1).normal(size=(2, 4, 5)).astype(np.float32)
        out = layer(x).numpy()
        kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
        for t in range(4):
            self.assertAllClose(out[:, t], x[:, t] @ kernel[t] + bias[t], atol=1e-5)

    def test_mnist_network_shapes(self):
        for kernel in (3, 5):
            encoder = networks.mnist_encoder(last_stride2_kernel=kernel)
            self.assertEqual(encoder.output_shape, (None, 4, 4, 256))
            # 15x15 after the first stride-2 conv, as the authors' code.
            self.assertEqual(encoder.get_layer("conv1_crelu").output.shape[1:], (15, 15, 64))
        decoder = networks.mnist_decoder()
        self.assertEqual(decoder.get_layer("deconv3_crop").output.shape[1:], (30, 30, 64))
        self.assertEqual(decoder.output_shape, (None, 28, 28, 1))

    def test_same_padding_is_used_exactly_where_it_is_torch_padding(self):
        """`_same_is_torch_padding` against Torch's definition computed independently in NumPy (pad p zeros on every
        side, then a 'valid' strided correlation): True exactly where Keras `same` gives Torch's output."""

        def torch_conv(x, kernel, stride, padding):  # x [n, n], kernel [k, k]: Torch SpatialConvolution, one channel
            x = np.pad(x, padding)
            k = kernel.shape[0]
            out = (x.shape[0] - k) // stride + 1
            return np.array(
                [
                    [np.sum(x[i * stride : i * stride + k, j * stride : j * stride + k] * kernel) for j in range(out)]
                    for i in range(out)
                ]
            )

        rng = np.random.default_rng(0)
        agreements = 0
        for size in (4, 7, 8, 15, 16):
            for kernel_size in (1, 2, 3, 4, 5):
                for stride in (1, 2):
                    for padding in range(kernel_size):
                        x = rng.normal(size=(size, size))
                        kernel = rng.normal(size=(kernel_size, kernel_size))
                        expected = torch_conv(x, kernel, stride, padding)
                        same = tf.nn.conv2d(x[None, :, :, None], kernel[:, :, None, None], stride, "SAME")[0, :, :, 0]
                        agrees = same.shape == expected.shape and np.allclose(same, expected, atol=1e-9)
                        claimed = networks._same_is_torch_padding(size, kernel_size, stride, padding)
                        self.assertEqual(claimed, agrees, msg=f"n={size} k={kernel_size} s={stride} p={padding}")
                        if stride == 1 and kernel_size % 2 and padding == kernel_size // 2:
                            self.assertTrue(networks._same_is_torch_padding(None, kernel_size, stride, padding))
                        agreements += agrees
        self.assertGreater(agreements, 20)
        # The MNIST networks: `same` in every stride-1 3x3 block and in the encoder's 15 -> 8 conv3, explicit
        # ZeroPadding2D in conv1 (5x5, p3) and conv5 (8 -> 4); the Identity keeps each block's layer positions.
        encoder = networks.mnist_encoder(base_channels=4)
        kinds = {layer.name: type(layer).__name__ for layer in encoder.layers if layer.name.endswith("_pad")}
        self.assertEqual(
            kinds,
            {
                "conv1_pad": "ZeroPadding2D",
                "conv2_pad": "Identity",
                "conv3_pad": "Identity",
                "conv4_pad": "Identity",
                "conv5_pad": "ZeroPadding2D",
                "conv6_pad": "Identity",
            },
        )
        self.assertEqual(encoder.get_layer("conv3_conv").padding, "same")

    def test_heads_shapes_and_round_trip(self):
        feature_shape = (4, 4, 32)
        cases = [
            heads.FCHead(feature_shape, latent_dim=16),
            heads.ConvHead(feature_shape, latent_channels=8, num_time_steps=4),
            heads.BlockFCHead(feature_shape, latent_channels=8, num_time_steps=4),
            heads.ChannelRecurrentHead(
                feature_shape, latent_channels=8, num_time_steps=4, hidden_units=8, loc_path="dense"
            ),
            heads.ChannelRecurrentHead(
                feature_shape,
                latent_channels=8,
                num_time_steps=4,
                hidden_units=8,
                recurrent_generation=False,
                inference_batchnorm=True,
            ),
            heads.ChannelRecurrentHead(
                feature_shape, latent_channels=8, num_time_steps=4, hidden_units=8, recurrent_inference=False
            ),
        ]
        features = np.random.default_rng(0).normal(size=(3,) + feature_shape).astype(np.float32)
        for head in cases:
            loc, log_var = head.infer(features)
            self.assertEqual(loc.shape, (3, head.latent_dim))
            self.assertEqual(log_var.shape, (3, head.latent_dim))
            self.assertEqual(head.generate(loc).shape, (3,) + feature_shape)
            config = head.get_config()
            clone = type(head).from_config(config)
            self.assertEqual(clone.get_config(), config)
            clone.build(None)
            self.assertEqual(len(clone.trainable_variables), len(head.trainable_variables))
            # Every head variable is in exactly one parameter group.
            groups = head.variable_groups()
            grouped = [id(v) for vs in groups.values() for v in vs]
            self.assertCountEqual(grouped, [id(v) for v in head.trainable_variables])

    def test_recurrence_switches_pick_the_modules(self):
        head = heads.ChannelRecurrentHead(
            (4, 4, 32), latent_channels=8, num_time_steps=4, hidden_units=8, recurrent_generation=False
        )
        self.assertTrue(hasattr(head, "inference_lstm"))
        self.assertFalse(hasattr(head, "generation_lstm"))
        self.assertIsInstance(head.generation_blocks, blocks.BlockDense)

    def test_fused_batch_norm_matches_keras_and_torch_running_stats(self):
        x = np.random.default_rng(2).normal(1.5, 2.0, size=(6, 5, 5, 3)).astype(np.float32)
        fused = blocks.BatchNorm(momentum=0.9, epsilon=1e-5)
        reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
        for layer in (fused, reference):
            layer.build(x.shape)
            layer.gamma.assign([0.5, 1.0, 2.0])
            layer.beta.assign([0.1, -0.2, 0.3])
        self.assertAllClose(fused(x, training=True), reference(x, training=True), atol=1e-5)
        # Running statistics: momentum 0.9 (Torch 0.1), unbiased batch variance as Torch.
        flat = x.reshape(-1, 3).astype(np.float64)
        self.assertAllClose(fused.moving_mean, 0.1 * flat.mean(0), rtol=1e-5)
        self.assertAllClose(fused.moving_variance, 0.9 + 0.1 * flat.var(0, ddof=1), rtol=1e-5)
        inference = (x - fused.moving_mean.numpy()) / np.sqrt(fused.moving_variance.numpy() + 1e-5) * [
            0.5,
            1.0,
            2.0,
        ] + [0.1, -0.2, 0.3]
        self.assertAllClose(fused(x, training=False), inference, atol=1e-5)
        # Gradients flow to the input, gamma and beta.
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(fused(x, training=True) ** 2)
        grads = tape.gradient(loss, fused.trainable_variables)
        self.assertTrue(all(g is not None for g in grads))

    def test_crelu_and_learned_bias(self):
        x = np.array([[[[1.0, -2.0]]]], np.float32)
        self.assertAllEqual(blocks.CReLU()(x), [[[[1.0, 0.0, 0.0, 2.0]]]])
        bias = blocks.LearnedBias()
        out = bias(np.zeros((2, 3), np.float32))
        self.assertAllInRange(out, -0.0174, 0.0174)
        self.assertAllEqual(out[0], out[1])

    def test_sequential_networks_round_trip(self):
        encoder = networks.mnist_encoder(base_channels=4)
        clone = keras.Sequential.from_config(encoder.get_config())
        self.assertEqual(clone.count_params(), encoder.count_params())


class TimeStepPrefixesTest(tf.test.TestCase):
    def test_prefix_t_keeps_the_first_t_time_steps(self):
        z = np.arange(1, 13, dtype=np.float32).reshape(2, 6)  # T = 3 steps of 2 dimensions
        prefixes = blocks.time_step_prefixes(z, 3).numpy()
        self.assertEqual(prefixes.shape, (4, 2, 6))
        for t in range(4):
            expected = z.copy()
            expected[:, 2 * t :] = 0.0
            self.assertAllEqual(prefixes[t], expected)
        with self.assertRaisesRegex(ValueError, "not divisible"):
            blocks.time_step_prefixes(z, 4)
