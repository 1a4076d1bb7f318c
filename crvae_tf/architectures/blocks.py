"""Building blocks of the networks and latent heads: channel blocks (the time steps), stacked LSTMs,
block-wise Dense, CReLU, Torch-style BatchNorm, learned offsets (mu0, b_enc, b_dec) and the authors' initialisers.

Gin-free and serializable (`get_config`).

Latent layout (the one convention every head shares)
----------------------------------------------------
A latent code is a flat vector `z` of shape `[batch, latent_dim]`. For heads with a convolutional latent
(`conv`, `block_fc`, `channel_recurrent`) the vector is the **channel-major** (C, H, W) flattening of a
`latent_channels x 4 x 4` tensor, exactly the row-major `nn.View` order of the authors' Torch code.
Consequently time step `t` of a channel-recurrent model, the contiguous channel group
`[t*C/T, (t+1)*C/T)` (paper Sec. 3, Fig. 1(d)), is the contiguous slice
`z[:, t*D/T:(t+1)*D/T]` (`to_channel_blocks`), and the per-time-step KL is a sum over contiguous slices
(`crvae_tf.objectives.bounds.kl_per_time_step`).
"""

import math

import keras
from keras import ops
import tensorflow as tf

from crvae_tf.architectures import replicas

PACKAGE = "crvae_tf"


def torch_uniform(fan: int) -> keras.initializers.Initializer:
    """U(-1/sqrt(fan), 1/sqrt(fan)): Torch's default Linear/LSTM initialisation (porting notes 10.2)."""
    bound = 1.0 / math.sqrt(fan)
    return keras.initializers.RandomUniform(-bound, bound)


def conv_init(kernel_size: int, out_channels: int) -> keras.initializers.Initializer:
    """The authors' `ConvInit`: U(+-1/sqrt(k_h*k_w*C_out)) for (transposed) convolutions (porting notes 10.2)."""
    return torch_uniform(kernel_size * kernel_size * out_channels)


def to_channel_blocks(x, num_blocks: int):
    """Splits NHWC features into `num_blocks` contiguous channel groups, each flattened in (c, h, w) order.

    Args:
        x: `[batch, height, width, channels]`, channels divisible by `num_blocks`.
        num_blocks: T.

    Returns:
        `[batch, T, channels/T * height * width]`; block t holds channels `[t*C/T, (t+1)*C/T)`.
    """
    _, height, width, channels = x.shape
    if channels % num_blocks:
        raise ValueError(
            f"{channels} channels cannot be split into {num_blocks} equal channel blocks; "
            "choose num_time_steps dividing the channel count."
        )
    x = ops.transpose(x, (0, 3, 1, 2))  # [batch, C, H, W]
    return ops.reshape(x, (-1, num_blocks, channels // num_blocks * height * width))


def time_step_prefixes(z, num_time_steps: int):
    """The progressive latents of paper Fig. 5(a): for t = 0..T, z with time steps 1..t kept and the rest zero.

    Args:
      z: `[batch, latent_dim]` (flat, channel-major; time step t is the contiguous slice t of the vector).
      num_time_steps: T; latent_dim must be divisible by it.

    Returns:
      `[T + 1, batch, latent_dim]`: entry 0 is all zeros, entry T is z.
    """
    z = ops.convert_to_tensor(z)
    latent_dim = z.shape[-1]
    if latent_dim % num_time_steps:
        raise ValueError(f"latent_dim={latent_dim} is not divisible by num_time_steps={num_time_steps}")
    step = latent_dim // num_time_steps
    position = ops.arange(latent_dim) // step  # the time step (0-based) of each dimension
    masks = ops.cast(position[None, :] < ops.arange(num_time_steps + 1)[:, None], z.dtype)  # [T + 1, D]
    return masks[:, None, :] * z[None, :, :]


def flat_to_nhwc(z, channels: int, height: int, width: int):
    """Channel-major flat `[batch, C*H*W]` -> NHWC `[batch, H, W, C]` (inverse of `nhwc_to_flat`)."""
    return ops.transpose(ops.reshape(z, (-1, channels, height, width)), (0, 2, 3, 1))


def nhwc_to_flat(x):
    """NHWC `[batch, H, W, C]` -> channel-major flat `[batch, C*H*W]`."""
    _, height, width, channels = x.shape
    return ops.reshape(ops.transpose(x, (0, 3, 1, 2)), (-1, channels * height * width))


@keras.saving.register_keras_serializable(PACKAGE)
class CReLU(keras.layers.Layer):
    """Concatenated ReLU: relu(concat([x, -x], channel axis)); doubles the channels (positive part first)."""

    def call(self, x):
        return ops.relu(ops.concatenate([x, -x], axis=-1))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (2 * input_shape[-1],)


@keras.saving.register_keras_serializable(PACKAGE)
class BatchNorm(keras.layers.BatchNormalization):
    """BatchNormalization over the channels of NHWC maps, using TensorFlow's fused kernel when training.

    Training on `[batch, H, W, C]` computes y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta with
    `tf.compat.v1.nn.fused_batch_norm` (one pass for the statistics, one for the output, float32 statistics
    for bfloat16 inputs) instead of Keras' generic moments + normalisation (five elementwise passes, and
    an upcast of bfloat16 maps to float32): about 7% of a crVAE training step on a 2-core CPU
    (`python -m crvae_tf.bench`). Moving averages: moving = momentum * moving + (1 - momentum) * batch, with
    the *unbiased* batch variance, as Torch's SpatialBatchNormalization (porting notes 1). Any other rank or
    axis, and inference, use the Keras implementation (identical maths).
    """

    def call(self, inputs, training=None, mask=None):
        if not (
            training
            and self.trainable
            and mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and self.center
            and self.scale
            and not self.renorm
        ):
            return super().call(inputs, training=training, mask=mask)
        if self.synchronized and replicas.replica_context() is not None:
            return self._synchronized_call(inputs)
        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            self.gamma,
            self.beta,
            mean=self.moving_mean,
            variance=self.moving_variance,
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=True,
            exponential_avg_factor=1.0 - self.momentum,
        )
        # With exponential_avg_factor < 1 the kernel returns the updated moving statistics.
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return outputs

    def _synchronized_call(self, inputs):
        """Training with `synchronized=True` in a strategy's step: the statistics of the global batch.

        With per-channel sums over every replica's N*H*W positions (n in all), in two passes as the fused kernel
        (two all-reduces; E[x^2] - E[x]^2 in one pass loses digits where |mean| >> std): mean = sum x / n, then
        var_B = sum (x - mean)^2 / n (float32); y = gamma * (x - mean) / sqrt(var_B + eps) + beta, and the moving
        averages take the unbiased n / (n - 1) var_B, as the fused kernel does on one device. Every replica
        computes the same statistics, so the moving averages stay equal on all of them.
        """
        x = tf.cast(inputs, tf.float32)
        count = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        total, count = replicas.all_reduce_sum([tf.reduce_sum(x, axis=[0, 1, 2]), count])
        mean = total / count
        variance = replicas.all_reduce_sum(tf.reduce_sum(tf.square(x - mean), axis=[0, 1, 2])) / count
        outputs = tf.nn.batch_normalization(
            x, mean, variance, tf.cast(self.beta, tf.float32), tf.cast(self.gamma, tf.float32), self.epsilon
        )
        unbiased = variance * count / tf.maximum(count - 1.0, 1.0)
        self.moving_mean.assign(self.momentum * self.moving_mean + (1.0 - self.momentum) * mean)
        self.moving_variance.assign(self.momentum * self.moving_variance + (1.0 - self.momentum) * unbiased)
        return tf.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(PACKAGE)
class LearnedBias(keras.layers.Layer):
    """Adds a learned bias of the input's (non-batch) shape: Torch `nn.Add`, init U(+-0.01*sqrt(3))."""

    def build(self, input_shape):
        limit = 0.01 * math.sqrt(3.0)
        self.bias = self.add_weight(
            name="bias", shape=tuple(input_shape[1:]), initializer=keras.initializers.RandomUniform(-limit, limit)
        )

    def call(self, x):
        return x + self.bias


@keras.saving.register_keras_serializable(PACKAGE)
class BlockDense(keras.layers.Layer):
    """T independent Dense layers, one per sequence position: `[batch, T, in] -> [batch, T, units]`.

    Block t computes `y_t = x_t W_t + b_t` with its own `W_t: [in, units]` (no weight sharing), the bcVAE
    building block (paper Sec. 3, "connect each block with an FC layer individually").
    """

    def __init__(self, units: int, bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        _, steps, features = input_shape
        self.kernel = self.add_weight(
            name="kernel", shape=(steps, features, self.units), initializer=torch_uniform(features)
        )
        self.bias = self.add_weight(name="bias", shape=(steps, self.units), initializer=self.bias_initializer)

    def call(self, x):
        return ops.einsum("bti,tio->bto", x, self.kernel) + self.bias

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }


@keras.saving.register_keras_serializable(PACKAGE)
class StackedLSTM(keras.layers.Layer):
    """A stack of LSTM layers over a short, static sequence, returning every step of the top layer.

    `[batch, T, in] -> [batch, T, units]`, zero initial state, gates (i, f, g, o):
            i, f, o = sigmoid(.), g = tanh(.);  c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t).
    Equivalent to Torch `cudnn.LSTM(in, units, num_layers, batch_first)` as used by the authors (porting notes 1),
    with its two bias vectors folded into one. Initialisation follows porting notes 10.2: all weights
    U(+-1/sqrt(units)), forget-gate bias 1 + U(+-1/sqrt(units)).

    Written out rather than using `keras.layers.LSTM` because (a) T is a static 8, so the loop unrolls
    and the input projection of all T steps is one large matmul per layer, which is markedly faster on CPU
    than a while-loop; (b) the graph contains only core matmul/elementwise ops, so exported SavedModels
    never contain cuDNN-only RNN kernels.
    """

    def __init__(self, units: int, num_layers: int = 2, **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.units = units
        self.num_layers = num_layers

    def build(self, input_shape):
        _, steps, features = input_shape
        if steps is None:
            raise ValueError("StackedLSTM needs a static number of time steps")
        init = torch_uniform(self.units)
        self.kernels, self.recurrent_kernels, self.biases = [], [], []
        bias_init = ForgetBiasOne(self.units)
        for layer in range(self.num_layers):
            fan_in = features if layer == 0 else self.units
            weights = {
                f"kernel_{layer}": ((fan_in, 4 * self.units), init),
                f"recurrent_kernel_{layer}": ((self.units, 4 * self.units), init),
                f"bias_{layer}": ((4 * self.units,), bias_init),
            }
            for name, (shape, initializer) in weights.items():
                # One attribute per weight: TF checkpoints track attributes, not the contents of lists.
                setattr(self, name, self.add_weight(name=name, shape=shape, initializer=initializer))
            self.kernels.append(getattr(self, f"kernel_{layer}"))
            self.recurrent_kernels.append(getattr(self, f"recurrent_kernel_{layer}"))
            self.biases.append(getattr(self, f"bias_{layer}"))

    def call(self, x):
        steps = x.shape[1]
        for kernel, recurrent_kernel, bias in zip(self.kernels, self.recurrent_kernels, self.biases):
            features = x.shape[-1]
            # Input projection of all steps at once: [batch*T, in] @ [in, 4U].
            projected = ops.reshape(
                ops.matmul(ops.reshape(x, (-1, features)), kernel) + bias, (-1, steps, 4 * self.units)
            )
            h = c = None
            outputs = []
            for t in range(steps):
                gates = projected[:, t]
                if h is not None:
                    gates = gates + ops.matmul(h, recurrent_kernel)
                i, f, g, o = ops.split(gates, 4, axis=-1)
                i, o, g = ops.sigmoid(i), ops.sigmoid(o), ops.tanh(g)
                c = i * g if c is None else ops.sigmoid(f) * c + i * g
                h = o * ops.tanh(c)
                outputs.append(h)
            x = ops.stack(outputs, axis=1)
        return x

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "num_layers": self.num_layers}


@keras.saving.register_keras_serializable(PACKAGE)
class ForgetBiasOne(keras.initializers.Initializer):
    """LSTM bias init of the authors' `RNNinit`: U(+-1/sqrt(U)) everywhere, plus 1 on the forget gate."""

    def __init__(self, units):
        self.units = units

    def __call__(self, shape, dtype=None):
        bound = 1.0 / math.sqrt(self.units)
        values = keras.random.uniform(shape, -bound, bound, dtype=dtype)
        forget = ops.concatenate([ops.zeros((self.units,)), ops.ones((self.units,)), ops.zeros((2 * self.units,))])
        return values + ops.cast(forget, values.dtype)

    def get_config(self):
        return {"units": self.units}


def conv(filters, kernel_size, name=None, init_out=None):
    """Same-padded stride-1 conv with the authors' ConvInit and zero bias."""
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", name=name, kernel_initializer=conv_init(kernel_size, init_out or filters)
    )


def batch_norm(momentum, epsilon, name=None):
    """Fused NHWC `BatchNorm` with Keras momentum (= 1 - Torch momentum; porting notes 1)."""
    return BatchNorm(momentum=momentum, epsilon=epsilon, name=name)
