"""BatchNorm folding for inference: a `keras.Sequential` network evaluated with every convolution -> BatchNorm
(-> LeakyReLU / ReLU) run as one convolution with a folded kernel and bias. Gin-free.

In inference mode BatchNorm is an affine map per output channel c,
    BN(y)_c = gamma_c (y_c - mean_c) / sqrt(var_c + eps) + beta_c = s_c y_c + t_c,
so for a linear layer y = conv(x, W) + b,
    BN(conv(x, W) + b) = conv(x, W * s) + (s (b - mean) + beta),        W * s: W scaled along its output channels.
Keras runs the BatchNorm as two elementwise passes over the layer's output ([batch, H, W, C]), the conv's bias
as a third and the activation as a fourth; folded, the whole block is `conv -> bias_add -> leaky_relu`, which
TensorFlow's grappler remapper fuses into one oneDNN convolution on CPU (`_FusedConv2D`). The folded kernel is
computed from the current variables inside the traced function, so it follows the weights (cheap: kernel-sized).

Exact in real arithmetic; in float32 the result differs from the unfolded network by rounding (relative ~1e-6,
tested). Training (batch statistics) never folds. Only the patterns below fold; any other layer is called as is.

  Conv2D (stride s, 'valid'/'same', no dilation/groups), with a ZeroPadding2D just before it merged into the
    convolution's explicit padding; `blocks.NarrowConv2D` (its matmul form);
  Conv2DTranspose (Keras, `ops.conv_transpose`) and `blocks.TorchConv2DTranspose` (`transposed_op`);
  then an optional Identity, a BatchNormalization over the last axis, and an optional LeakyReLU / ReLU.
"""

import keras
import tensorflow as tf

from crvae_tf.architectures import blocks


def _batch_norm_affine(bn):
    """(s, t) float32 of an inference-mode BatchNormalization over the last axis: BN(y) = s y + t."""
    inverse = tf.math.rsqrt(tf.cast(bn.moving_variance, tf.float32) + bn.epsilon)
    scale = inverse * tf.cast(bn.gamma, tf.float32) if bn.scale else inverse
    shift = -tf.cast(bn.moving_mean, tf.float32) * scale
    if bn.center:
        shift += tf.cast(bn.beta, tf.float32)
    return scale, shift


def _foldable_bn(layer) -> bool:
    return (
        isinstance(layer, keras.layers.BatchNormalization)
        and layer.axis in (-1, 3)
        and not getattr(layer, "renorm", False)
        and not getattr(layer, "synchronized", False)
    )


def _plain_conv(layer) -> bool:
    return (
        type(layer) in (keras.layers.Conv2D, blocks.Conv2D, blocks.NarrowConv2D)
        and layer.data_format == "channels_last"
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and layer.activation is keras.activations.linear
    )


def _transposed_conv(layer) -> bool:
    return (
        type(layer) in (keras.layers.Conv2DTranspose, blocks.Conv2DTranspose, blocks.TorchConv2DTranspose)
        and layer.data_format == "channels_last"
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.activation is keras.activations.linear
    )


class _Block:
    """[ZeroPadding2D] conv [Identity] BatchNorm [LeakyReLU | ReLU], run folded."""

    def __init__(self, padding, conv, bn, activation):
        self.padding, self.conv, self.bn, self.activation = padding, conv, bn, activation
        self.transposed = _transposed_conv(conv)

    def __call__(self, x):
        conv = self.conv
        scale, shift = _batch_norm_affine(self.bn)
        kernel = tf.cast(conv.kernel, tf.float32)
        # Output channels: the last kernel axis of a convolution, the third of a transposed one ([kh, kw, out, in]).
        kernel = kernel * (scale[:, None] if self.transposed else scale)
        bias = shift + scale * tf.cast(conv.bias, tf.float32) if conv.use_bias else shift
        kernel, bias = tf.cast(kernel, x.dtype), tf.cast(bias, x.dtype)
        if isinstance(conv, blocks.TorchConv2DTranspose):
            y = conv.transposed_op(x, kernel)
        elif self.transposed:
            y = keras.ops.conv_transpose(
                x,
                kernel,
                strides=conv.strides,
                padding=conv.padding,
                output_padding=conv.output_padding,
                data_format="channels_last",
            )
        elif (
            self.padding is not None and type(conv) in (keras.layers.Conv2D, blocks.Conv2D) and conv.padding == "valid"
        ):
            (top, bottom), (left, right) = self.padding.padding
            y = tf.nn.conv2d(x, kernel, conv.strides, [[0, 0], [top, bottom], [left, right], [0, 0]])
        else:
            if self.padding is not None:
                x = self.padding(x)
            y = conv.convolution_op(x, kernel)
        y = tf.nn.bias_add(y, bias)
        if self.activation is None:
            return y
        if isinstance(self.activation, keras.layers.LeakyReLU):
            return tf.nn.leaky_relu(y, alpha=float(self.activation.negative_slope))
        return self.activation(y)


def _is_activation(layer) -> bool:
    return isinstance(layer, keras.layers.LeakyReLU) or (
        isinstance(layer, keras.layers.ReLU)
        and layer.max_value is None
        and float(layer.negative_slope) == 0.0
        and float(layer.threshold) == 0.0
    )


def plan(layers):
    """The stages of a folded forward pass: `_Block`s where the pattern matches, else the layers themselves."""
    layers = list(layers)
    stages, i = [], 0
    while i < len(layers):
        padding = layers[i] if isinstance(layers[i], keras.layers.ZeroPadding2D) else None
        j = i + (padding is not None)
        if j < len(layers) and (_plain_conv(layers[j]) or _transposed_conv(layers[j])):
            k = j + 1
            if k < len(layers) and isinstance(layers[k], keras.layers.Identity):
                k += 1
            if k < len(layers) and _foldable_bn(layers[k]):
                activation = layers[k + 1] if k + 1 < len(layers) and _is_activation(layers[k + 1]) else None
                stages.append(_Block(padding, layers[j], layers[k], activation))
                i = k + 1 + (activation is not None)
                continue
        stages.append(layers[i])
        i += 1
    return stages


class FoldedInference:
    """`folded(x)`: `sequential(x, training=False)` with BatchNorm folded into the convolutions before it.

    Args:
      sequential: a built `keras.Sequential`; its layers are shared (not copied), so the folded pass always uses
        the current weights.
    """

    def __init__(self, sequential: keras.Sequential):
        self.sequential = sequential
        self.stages = plan(sequential.layers)
        self.num_folded = sum(isinstance(s, _Block) for s in self.stages)

    def __call__(self, x):
        x = tf.cast(x, self.sequential.compute_dtype)
        for stage in self.stages:
            x = stage(x) if isinstance(stage, _Block) else stage(x, training=False)
        return x
