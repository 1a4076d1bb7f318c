"""Keras layers of crvae_tf: channel blocks, stacked LSTMs, block-wise Dense, the latent heads, and the
discriminator layers of the adversarial models (`TorchDropout`, `RowL2Normalize`, `MinibatchDiscrimination`).

Everything here is gin-free and serializable (`get_config`), importable in a notebook or a serving job.

Latent layout (the one convention every head shares)
----------------------------------------------------
A latent code is a flat vector `z` of shape `[batch, latent_dim]`. For heads with a convolutional latent
(`conv`, `block_fc`, `channel_recurrent`) the vector is the **channel-major** (C, H, W) flattening of a
`latent_channels x 4 x 4` tensor, exactly the row-major `nn.View` order of the authors' Torch code.
Consequently time step `t` of a channel-recurrent model, the contiguous channel group
`[t*C/T, (t+1)*C/T)` (paper Sec. 3, Fig. 1(d)), is the contiguous slice
`z[:, t*D/T:(t+1)*D/T]`, and the per-time-step KL is a sum over contiguous slices (`bounds.py`).

Latent heads
------------
A head turns encoder features `h: [batch, H, W, C_feat]` into the posterior parameters
`(loc, log_variance)`, each `[batch, latent_dim]`, and turns a latent `z: [batch, latent_dim]` into
decoder input features `[batch, H, W, C_feat]`:

* `FCHead` (standard VAE, paper G.3 / notes 3.1): Dense loc, Dense log-variance, Dense back.
* `ConvHead` (cVAE, notes 3.2): 3x3 conv loc and log-variance (C_lat x 4 x 4), 3x3 conv + BN back.
* `BlockFCHead` (bcVAE, paper Sec. 3 and G.3): T channel blocks with one Dense per block on the
    log-variance path and on the generation path, learned offsets mu0.
* `ChannelRecurrentHead` (crVAE, notes 3.4/3.5): T contiguous channel blocks fed as a sequence to a
    stacked LSTM plus a time-shared Dense on the inference (log-variance) path, and the same on the
    generation path z -> u; learned biases b_enc (added to loc) and b_dec (added to u). Two switches,
    `recurrent_inference` and `recurrent_generation`, replace either LSTM path by T independent Dense
    layers (the "inference only" / "generation only" rows of Table 1).

Every head sorts its layers into the parameter groups `encoder`, `latent_head` and `decoder`
(`variable_groups()`), matching the authors' separate Torch modules (encoder, var_encoder/var_decoder,
decoder) so each group can have its own optimizer, learning rate and gradient clamp.
"""

import math

import keras
from keras import ops
import tensorflow as tf

PACKAGE = "crvae_tf"


def torch_uniform(fan: int) -> keras.initializers.Initializer:
    """U(-1/sqrt(fan), 1/sqrt(fan)): Torch's default Linear/LSTM initialisation (notes 10.2)."""
    bound = 1.0 / math.sqrt(fan)
    return keras.initializers.RandomUniform(-bound, bound)


def conv_init(kernel_size: int, out_channels: int) -> keras.initializers.Initializer:
    """The authors' `ConvInit`: U(+-1/sqrt(k_h*k_w*C_out)) for (transposed) convolutions (notes 10.2)."""
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
    the *unbiased* batch variance, as Torch's SpatialBatchNormalization (notes 1). Any other rank or
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
    Equivalent to Torch `cudnn.LSTM(in, units, num_layers, batch_first)` as used by the authors (notes 1),
    with its two bias vectors folded into one. Initialisation follows notes 10.2: all weights
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


@keras.saving.register_keras_serializable(PACKAGE)
class TorchDropout(keras.layers.Layer):
    """Dropout with the semantics of Torch7 `nn.Dropout(p, true)` and `nn.SpatialDropout(p, true)`.

    With keep mask m ~ Bernoulli(1 - rate) (one draw per element, or per (sample, channel) when
    `spatial=True`, i.e. whole NHWC channels are dropped):

    | mode                                   | output        | Torch module                         |
    |----------------------------------------|---------------|--------------------------------------|
    | training                               | x * m         | both (no 1/(1-p) rescale: "v1")      |
    | inference, `stochastic_inference=False`| x * (1 - rate)| `nn.Dropout(p, true)` evaluate()     |
    | inference, `stochastic_inference=True` | x * m         | `nn.SpatialDropout(p, true)` evaluate|

    (notes 1: the second argument of `nn.Dropout` is `v1`, of `nn.SpatialDropout` it is
    `stochasticInference`; SpatialDropout never rescales.) The authors' discriminator uses
    `spatial=True, stochastic_inference=True` in its conv trunk and the plain variant in its head (notes 6.1).
    Keras `Dropout` / `SpatialDropout2D` instead rescale by 1/(1-rate) in training and are the identity in
    inference; the network builders offer those through `torch_dropout=False`.

    Randomness comes from a `keras.random.SeedGenerator` owned by the layer: two layers built with the same
    `seed` draw the same masks, so runs are reproducible; `seed=None` draws a seed from Keras' global RNG
    (`keras.utils.set_random_seed`).

    Args:
      rate: drop probability p in [0, 1).
      spatial: drop whole channels of `[batch, ..., channels]` inputs (rank >= 3) instead of elements.
      stochastic_inference: also drop (without rescale) in inference mode.
      seed: integer seed of the layer's SeedGenerator, or None.
    """

    def __init__(self, rate: float, spatial: bool = False, stochastic_inference: bool = False, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"TorchDropout rate must be in [0, 1), got {rate}")
        self.rate = float(rate)
        self.spatial = bool(spatial)
        self.stochastic_inference = bool(stochastic_inference)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not (training or self.stochastic_inference):
            return inputs * ops.cast(1.0 - self.rate, inputs.dtype)
        if self.rate == 0.0:
            return inputs
        shape = ops.shape(inputs)
        if self.spatial:
            if len(inputs.shape) < 3:
                raise ValueError(
                    f"spatial TorchDropout needs [batch, ..., channels] inputs, got shape "
                    f"{inputs.shape}; use spatial=False for vectors"
                )
            shape = (shape[0],) + (1,) * (len(inputs.shape) - 2) + (shape[-1],)
        keep = keras.random.uniform(shape, seed=self.seed_generator) >= self.rate
        return inputs * ops.cast(keep, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rate": self.rate,
            "spatial": self.spatial,
            "stochastic_inference": self.stochastic_inference,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(PACKAGE)
class RowL2Normalize(keras.layers.Layer):
    """Row-wise L2 normalisation y = x / sqrt(sum_k x_k^2 + epsilon) over the last axis.

    Torch7 `nn.Normalize(2)` as in the authors' discriminator head (notes 6.1; paper G.4 "Norm(1)"),
    whose norm is (sum |x|^2 + 1e-10)^(1/2).
    """

    def __init__(self, epsilon: float = 1e-10, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, x):
        return x / ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True) + ops.cast(self.epsilon, x.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(PACKAGE)
class MinibatchDiscrimination(keras.layers.Layer):
    """Minibatch ("batch") discrimination of Salimans et al. 2016, "Improved Techniques for Training
    GANs", Sec. 3.2, exactly as the `BatchDiscrimination` module the authors use (notes 6.3).

    For X: `[N, d]`, with W: `[d, B*C]` (B = `num_kernels`, C = `kernel_dim`) and bias b: `[B*C]`:

        M = X W + b,  reshaped to `[N, B, C]`
        D_{ij,b} = sum_c |M_{i,b,c} - M_{j,b,c}|
        o_{i,b} = (1/N) sum_j exp(-D_{ij,b})          (mean over the batch, j = i included)
        output = concat([X, o], axis=-1)               `[N, d + B]`

    The diagonal is not masked: every row contributes exp(0) = 1, i.e. 1/N, to its own o (the Torch
    `nn.Sum` with size-average). The bias cancels in the differences (it gets zero gradient); it is kept,
    zero-initialised, so that parameter counts match the Torch module (which wraps an `nn.Linear`). W has
    Torch's Linear default U(+-1/sqrt(d)) (notes 10.2). Memory is O(N^2 * B * C) per call.
    """

    def __init__(self, num_kernels: int = 100, kernel_dim: int = 5, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if num_kernels < 1 or kernel_dim < 1:
            raise ValueError(f"num_kernels and kernel_dim must be >= 1, got {num_kernels}, {kernel_dim}")
        self.num_kernels = int(num_kernels)
        self.kernel_dim = int(kernel_dim)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(
                f"MinibatchDiscrimination takes [batch, features] inputs, got shape {input_shape}; flatten first"
            )
        features = int(input_shape[-1])
        size = self.num_kernels * self.kernel_dim
        self.kernel = self.add_weight(name="kernel", shape=(features, size), initializer=torch_uniform(features))
        self.bias = self.add_weight(name="bias", shape=(size,), initializer="zeros") if self.use_bias else None

    def call(self, x):
        m = ops.matmul(x, self.kernel)
        if self.bias is not None:
            m = m + self.bias
        m = ops.reshape(m, (-1, self.num_kernels, self.kernel_dim))  # [N, B, C]
        distances = ops.sum(ops.abs(ops.expand_dims(m, 1) - ops.expand_dims(m, 0)), axis=-1)  # [N, N, B]
        similarity = ops.mean(ops.exp(-distances), axis=1)  # [N, B]
        return ops.concatenate([x, similarity], axis=-1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (input_shape[-1] + self.num_kernels,)

    def get_config(self):
        return {
            **super().get_config(),
            "num_kernels": self.num_kernels,
            "kernel_dim": self.kernel_dim,
            "use_bias": self.use_bias,
        }


def conv(filters, kernel_size, name=None, init_out=None):
    """Same-padded stride-1 conv with the authors' ConvInit and zero bias."""
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", name=name, kernel_initializer=conv_init(kernel_size, init_out or filters)
    )


def batch_norm(momentum, epsilon, name=None):
    """Fused NHWC `BatchNorm` with Keras momentum (= 1 - Torch momentum; notes 1)."""
    return BatchNorm(momentum=momentum, epsilon=epsilon, name=name)


class LatentHead(keras.layers.Layer):
    """Base class of the latent heads. See the module docstring for the contract.

    Subclasses set `self.latent_dim`, `self.num_time_steps`, `self.feature_shape` and fill the three
    layer lists `_encoder_layers`, `_latent_head_layers`, `_decoder_layers`, then implement
    `infer(features, training)` and `generate(z, training)`.
    """

    def __init__(
        self,
        feature_shape,
        num_time_steps: int = 1,
        batchnorm_momentum: float = 0.9,
        batchnorm_epsilon: float = 1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.feature_shape = tuple(int(d) for d in feature_shape)
        if len(self.feature_shape) != 3:
            raise ValueError(f"feature_shape must be (height, width, channels), got {feature_shape}")
        self.num_time_steps = int(num_time_steps)
        self.batchnorm_momentum = batchnorm_momentum
        self.batchnorm_epsilon = batchnorm_epsilon
        self._encoder_layers, self._latent_head_layers, self._decoder_layers = [], [], []

    def call(self, features, training=False):
        """Keras entry point: returns the posterior parameters `(loc, log_variance)`."""
        return self.infer(features, training=training)

    def build(self, input_shape):
        zeros = ops.zeros((1,) + self.feature_shape)
        self.infer(zeros)
        self.generate(ops.zeros((1, self.latent_dim)))
        self.built = True

    def variable_groups(self):
        """Maps parameter group name -> list of trainable variables owned by this head."""
        collect = lambda layers: [v for layer in layers for v in layer.trainable_variables]
        return {
            "encoder": collect(self._encoder_layers),
            "latent_head": collect(self._latent_head_layers),
            "decoder": collect(self._decoder_layers),
        }

    def _check_time_steps(self, dim, what):
        if dim % self.num_time_steps:
            raise ValueError(f"{what} ({dim}) is not divisible by num_time_steps={self.num_time_steps}")

    def get_config(self):
        return {
            **super().get_config(),
            "feature_shape": self.feature_shape,
            "num_time_steps": self.num_time_steps,
            "batchnorm_momentum": self.batchnorm_momentum,
            "batchnorm_epsilon": self.batchnorm_epsilon,
        }


@keras.saving.register_keras_serializable(PACKAGE)
class FCHead(LatentHead):
    """Standard VAE head (notes 3.1, paper G.3): Dense(latent_dim) loc and log-variance, Dense back.

    features `[B, H, W, C]` -> flatten -> Dense loc `[B, D]`, Dense log-variance `[B, D]`;
    z `[B, D]` -> Dense(H*W*C) -> reshape `[B, H, W, C]`, with no BN and no activation (as the code).
    """

    def __init__(self, feature_shape, latent_dim: int = 1024, **kwargs):
        super().__init__(feature_shape, **kwargs)
        self.latent_dim = int(latent_dim)
        self._check_time_steps(self.latent_dim, "latent_dim")
        fan_in = math.prod(self.feature_shape)
        dense = lambda units, fan, name: keras.layers.Dense(units, kernel_initializer=torch_uniform(fan), name=name)
        self.loc_dense = dense(self.latent_dim, fan_in, "loc")
        self.log_variance_dense = dense(self.latent_dim, fan_in, "log_variance")
        self.generation_dense = dense(fan_in, self.latent_dim, "generation")
        self._encoder_layers = [self.loc_dense, self.log_variance_dense]
        self._decoder_layers = [self.generation_dense]

    def infer(self, features, training=False):
        flat = ops.reshape(features, (-1, math.prod(self.feature_shape)))
        return self.loc_dense(flat), self.log_variance_dense(flat)

    def generate(self, z, training=False):
        return ops.reshape(self.generation_dense(z), (-1,) + self.feature_shape)

    def get_config(self):
        return {**super().get_config(), "latent_dim": self.latent_dim}


class _ConvLatentHead(LatentHead):
    """Shared parts of heads whose latent is `latent_channels x H x W` (flattened channel-major)."""

    def __init__(self, feature_shape, latent_channels: int = 64, **kwargs):
        super().__init__(feature_shape, **kwargs)
        self.latent_channels = int(latent_channels)
        height, width, _ = self.feature_shape
        self.latent_dim = self.latent_channels * height * width
        self._check_time_steps(self.latent_channels, "latent_channels")

    def _to_flat(self, x):
        return nhwc_to_flat(x)

    def _to_nhwc(self, z, channels):
        height, width, _ = self.feature_shape
        return flat_to_nhwc(z, channels, height, width)

    def get_config(self):
        return {**super().get_config(), "latent_channels": self.latent_channels}


@keras.saving.register_keras_serializable(PACKAGE)
class ConvHead(_ConvLatentHead):
    """cVAE head (notes 3.2): 3x3 conv loc / log-variance to `latent_channels`; 3x3 conv + BN back."""

    def __init__(self, feature_shape, **kwargs):
        super().__init__(feature_shape, **kwargs)
        feature_channels = self.feature_shape[-1]
        self.loc_conv = conv(self.latent_channels, 3, name="loc")
        self.log_variance_conv = conv(self.latent_channels, 3, name="log_variance")
        self.entry_conv = conv(feature_channels, 3, name="entry_conv")
        self.entry_bn = batch_norm(self.batchnorm_momentum, self.batchnorm_epsilon, name="entry_bn")
        self._encoder_layers = [self.loc_conv, self.log_variance_conv]
        self._decoder_layers = [self.entry_conv, self.entry_bn]

    def infer(self, features, training=False):
        return (self._to_flat(self.loc_conv(features)), self._to_flat(self.log_variance_conv(features)))

    def generate(self, z, training=False):
        u = self._to_nhwc(z, self.latent_channels)
        return self.entry_bn(self.entry_conv(u), training=training)


class _BlockedHead(_ConvLatentHead):
    """Heads with a loc path (`dense` or `conv`, plus a learned offset) and channel-block sequences."""

    def __init__(self, feature_shape, loc_path: str = "conv", **kwargs):
        super().__init__(feature_shape, **kwargs)
        if loc_path not in ("dense", "conv"):
            raise ValueError(f"loc_path must be 'dense' or 'conv', got {loc_path!r}")
        self.loc_path = loc_path
        height, width, feature_channels = self.feature_shape
        self._check_time_steps(feature_channels, "the encoder feature channels")
        if loc_path == "dense":
            self.loc_layer = keras.layers.Dense(
                self.latent_dim, name="loc", kernel_initializer=torch_uniform(height * width * feature_channels)
            )
        else:
            self.loc_layer = conv(self.latent_channels, 3, name="loc")
        self.loc_offset = LearnedBias(name="loc_offset")  # -mu0 of the paper, b_enc of the code
        self._encoder_layers = [self.loc_layer, self.loc_offset]

    def _loc(self, features):
        if self.loc_path == "dense":
            loc = self.loc_layer(ops.reshape(features, (-1, math.prod(self.feature_shape))))
        else:
            loc = self._to_flat(self.loc_layer(features))
        return self.loc_offset(loc)

    def get_config(self):
        return {**super().get_config(), "loc_path": self.loc_path}


@keras.saving.register_keras_serializable(PACKAGE)
class BlockFCHead(_BlockedHead):
    """bcVAE head (paper Sec. 3, G.3): one Dense per channel block, learned offsets mu0.

    Inference: features -> T contiguous channel blocks `[B, T, C_feat/T*H*W]` -> T independent Dense ->
    log-variance `[B, T, D/T]` -> flat `[B, D]`; loc = conv/dense(features) + mu0_enc.
    Generation: z `[B, T, D/T]` -> T independent Dense to `C_feat/T*H*W` -> concatenated into
    `[B, C_feat, H, W]` -> + mu0_dec -> decoder (no extra conv, as the paper's G.3).
    """

    def __init__(self, feature_shape, **kwargs):
        super().__init__(feature_shape, **kwargs)
        height, width, feature_channels = self.feature_shape
        self.inference_blocks = BlockDense(self.latent_dim // self.num_time_steps, name="inference_blocks")
        self.generation_blocks = BlockDense(
            feature_channels // self.num_time_steps * height * width, name="generation_blocks"
        )
        self.generation_offset = LearnedBias(name="generation_offset")
        self._latent_head_layers = [self.inference_blocks, self.generation_blocks]
        self._decoder_layers = [self.generation_offset]

    def infer(self, features, training=False):
        blocks = to_channel_blocks(features, self.num_time_steps)
        log_variance = ops.reshape(self.inference_blocks(blocks), (-1, self.latent_dim))
        return self._loc(features), log_variance

    def generate(self, z, training=False):
        height, width, feature_channels = self.feature_shape
        blocks = ops.reshape(z, (-1, self.num_time_steps, self.latent_dim // self.num_time_steps))
        flat = ops.reshape(self.generation_blocks(blocks), (-1, feature_channels * height * width))
        return self._to_nhwc(self.generation_offset(flat), feature_channels)


@keras.saving.register_keras_serializable(PACKAGE)
class ChannelRecurrentHead(_BlockedHead):
    """crVAE head (paper Sec. 3, Fig. 1(d); authors' code, notes 3.4 / 3.5).

    Inference (variance path): features `[B, H, W, C_feat]` -> T contiguous channel blocks
    `[B, T, C_feat/T*H*W]` -> stacked LSTM(hidden_units) -> [BatchNorm over B*T rows, RGB models] ->
    time-shared Dense(D/T) -> log-variance `[B, D]` (step t fills latent channels [t*C/T, (t+1)*C/T)).
    Mean path: Dense (MNIST code) or 3x3 conv (64x64 code) + b_enc.

    Generation: z `[B, D]` -> T blocks `[B, T, D/T]` -> stacked LSTM(hidden_units) -> time-shared
    Dense(D/T) -> u `[B, D]` -> + b_dec -> 3x3 conv to C_feat + BN (no activation) -> decoder.

    `recurrent_inference=False` / `recurrent_generation=False` replace the LSTM + time-shared Dense of
    that path by T independent Dense layers (`BlockDense`), giving Table 1's "generation only" /
    "inference only" ablations. Both True is the paper's crVAE.
    """

    def __init__(
        self,
        feature_shape,
        hidden_units: int = 512,
        num_layers: int = 2,
        recurrent_inference: bool = True,
        recurrent_generation: bool = True,
        inference_batchnorm: bool = False,
        **kwargs,
    ):
        super().__init__(feature_shape, **kwargs)
        self.hidden_units = int(hidden_units)
        self.num_layers = int(num_layers)
        self.recurrent_inference = bool(recurrent_inference)
        self.recurrent_generation = bool(recurrent_generation)
        self.inference_batchnorm = bool(inference_batchnorm)
        step_dim = self.latent_dim // self.num_time_steps
        time_shared = lambda name: keras.layers.Dense(
            step_dim,
            name=name,
            kernel_initializer=torch_uniform(self.hidden_units),
            bias_initializer=torch_uniform(self.hidden_units),
        )
        if self.recurrent_inference:
            self.inference_lstm = StackedLSTM(self.hidden_units, self.num_layers, name="inference_lstm")
            self.inference_bn = (
                keras.layers.BatchNormalization(
                    momentum=0.9,
                    epsilon=1e-5,
                    name="inference_bn",
                    gamma_initializer=keras.initializers.RandomUniform(0, 1),
                )
                if self.inference_batchnorm
                else None
            )
            self.inference_dense = time_shared("inference_dense")
            inference = [self.inference_lstm, self.inference_dense] + (
                [self.inference_bn] if self.inference_bn is not None else []
            )
        else:
            self.inference_blocks = BlockDense(step_dim, name="inference_blocks")
            inference = [self.inference_blocks]
        if self.recurrent_generation:
            self.generation_lstm = StackedLSTM(self.hidden_units, self.num_layers, name="generation_lstm")
            self.generation_dense = time_shared("generation_dense")
            generation = [self.generation_lstm, self.generation_dense]
        else:
            self.generation_blocks = BlockDense(step_dim, name="generation_blocks")
            generation = [self.generation_blocks]
        self.generation_offset = LearnedBias(name="generation_offset")  # b_dec
        self.entry_conv = conv(self.feature_shape[-1], 3, name="entry_conv")
        self.entry_bn = batch_norm(self.batchnorm_momentum, self.batchnorm_epsilon, name="entry_bn")
        self._latent_head_layers = inference + generation
        self._decoder_layers = [self.generation_offset, self.entry_conv, self.entry_bn]

    def infer(self, features, training=False):
        blocks = to_channel_blocks(features, self.num_time_steps)  # [B, T, C_feat/T*H*W]
        if self.recurrent_inference:
            hidden = self.inference_lstm(blocks)  # [B, T, hidden]
            if self.inference_bn is not None:
                hidden = ops.reshape(
                    self.inference_bn(ops.reshape(hidden, (-1, self.hidden_units)), training=training),
                    (-1, self.num_time_steps, self.hidden_units),
                )
            steps = self.inference_dense(hidden)  # [B, T, D/T]
        else:
            steps = self.inference_blocks(blocks)
        return self._loc(features), ops.reshape(steps, (-1, self.latent_dim))

    def transform(self, z):
        """z `[B, D]` -> u `[B, D]`, the generation-path output before b_dec (the MI target of the GAN)."""
        blocks = ops.reshape(z, (-1, self.num_time_steps, self.latent_dim // self.num_time_steps))
        if self.recurrent_generation:
            steps = self.generation_dense(self.generation_lstm(blocks))
        else:
            steps = self.generation_blocks(blocks)
        return ops.reshape(steps, (-1, self.latent_dim))

    def generate(self, z, training=False):
        u = self.generation_offset(self.transform(z))
        return self.entry_bn(self.entry_conv(self._to_nhwc(u, self.latent_channels)), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_units": self.hidden_units,
            "num_layers": self.num_layers,
            "recurrent_inference": self.recurrent_inference,
            "recurrent_generation": self.recurrent_generation,
            "inference_batchnorm": self.inference_batchnorm,
        }


HEADS = {"fc": FCHead, "conv": ConvHead, "block_fc": BlockFCHead, "channel_recurrent": ChannelRecurrentHead}
