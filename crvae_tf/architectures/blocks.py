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
import weakref

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


LSTM_JIT_COMPILE = ("auto", "stack", "cells", True, False)


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
    never contain cuDNN-only RNN kernels. The recurrence has a hand-written backward pass
    (`lstm_recurrence`): the gradient of the recurrent kernel over all steps is one matmul, not T - 1.

    `jit_compile` selects XLA for *training* calls (`training=True`), where the unrolled recurrence is ~25 small
    element-wise ops per step and layer forward and ~40 backward:
      - 'stack' (or True): the whole stack, matmuls included, is one XLA function (`lstm_recurrence` inside);
      - 'cells': only each step's element-wise work is compiled (`fused_lstm_recurrence`); the matmuls stay in
        the graph's oneDNN kernels; the cell state is kept in float32;
      - 'auto' (default): 'stack' when the layer computes in float32, 'cells' otherwise (mixed precision);
      - False: the plain graph (`lstm_recurrence`).
    Evaluation, sampling and exports always run the plain graph (TF Serving never sees an XLA function).
    Measured on 2 idle CPU cores, batch 128, T = 8, 512 units, 2 layers, forward + backward, inputs of 512 (the
    MNIST inference LSTM) / 128 (generation); PyTorch's oneDNN `nn.LSTM` on the same machine in brackets:
      float32:   plain 163.6 / 131.6 ms, 'stack' 135-137 / 114 ms, 'cells' 166-169 / 133-139 ms (130.7 / 106.7);
      bfloat16:  plain 83-85 / 72-86 ms, 'stack' 150.8 / 124.7 ms (XLA's CPU matmuls), 'cells' 80.6-80.8 /
                 64.2-64.9 ms (72.9 / 60.7 under `torch.autocast`); forward only: plain 32.1 / 27.4-27.8 ms,
                 'cells' 26.8-27.2 / 22.8 ms (22.4 / 18.6).
    Hence 'auto'. On GPUs: not measured.
    """

    def __init__(self, units: int, num_layers: int = 2, jit_compile="auto", **kwargs):
        super().__init__(**kwargs)
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if not (isinstance(jit_compile, bool) or (isinstance(jit_compile, str) and jit_compile in LSTM_JIT_COMPILE)):
            raise ValueError(f"jit_compile must be one of {LSTM_JIT_COMPILE}, got {jit_compile!r}")
        self.units = units
        self.num_layers = num_layers
        self.jit_compile = jit_compile

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

    def xla_mode(self, training):
        """What a call with this `training` compiles: None (plain graph), 'stack' or 'cells' (class docstring)."""
        if not training or self.jit_compile is False:
            return None
        if self.jit_compile == "auto":
            return "stack" if self.compute_dtype == "float32" else "cells"
        return "stack" if self.jit_compile is True else self.jit_compile

    def compiles(self, training) -> bool:
        """Whether a call with this `training` runs any part of the stack under XLA."""
        return self.xla_mode(training) is not None

    def call(self, x, training=None):
        # The weights as tensors here, inside the layer's call: under a mixed policy they are read in the compute
        # dtype (Keras' autocast), and XLA receives plain tensors.
        weights = [
            (tf.convert_to_tensor(k), tf.convert_to_tensor(r), tf.convert_to_tensor(b))
            for k, r, b in zip(self.kernels, self.recurrent_kernels, self.biases)
        ]
        mode = self.xla_mode(training)
        if mode == "stack":
            return _compiled_stack(self)(x, weights)
        return lstm_stack(x, weights, fused_lstm_recurrence if mode == "cells" else lstm_recurrence)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], self.units)

    def get_config(self):
        return {
            **super().get_config(),
            "units": self.units,
            "num_layers": self.num_layers,
            "jit_compile": self.jit_compile,
        }


def lstm_stack(x, weights, recurrence=None):
    """`[batch, T, in] -> [batch, T, units]`: the stacked LSTM of `StackedLSTM`, for `weights` a list of
    (kernel `[in, 4U]`, recurrent kernel `[U, 4U]`, bias `[4U]`) per layer, gates (i, f, g, o); `recurrence` is
    `lstm_recurrence` (default) or `fused_lstm_recurrence`."""
    recurrence = recurrence or lstm_recurrence
    steps = x.shape[1]
    for kernel, recurrent_kernel, bias in weights:
        features, units4 = kernel.shape
        # Input projection of all steps at once, time-major: [T*batch, in] @ [in, 4U] -> [T, batch, 4U].
        time_major = tf.reshape(tf.transpose(x, (1, 0, 2)), (-1, features))
        projected = tf.reshape(tf.matmul(time_major, kernel) + bias, (steps, -1, units4))
        x = tf.transpose(recurrence(projected, recurrent_kernel), (1, 0, 2))
    return x


# One XLA-compiled `lstm_stack` per layer, held outside the layer: a `tf.function` attribute of a Keras layer
# would be tracked (and could be written into SavedModels), which exports must never contain.
_COMPILED_STACKS = weakref.WeakKeyDictionary()


def _compiled_stack(layer):
    if layer not in _COMPILED_STACKS:
        _COMPILED_STACKS[layer] = tf.function(lstm_stack, jit_compile=True, autograph=False)
    return _COMPILED_STACKS[layer]


def _recurrent_kernel_gradient(hs, das, recurrent_kernel):
    """dR = sum_{t>=1} h_{t-1}^T da_t as one matmul over the [(T-1) batch] rows (zeros for T = 1)."""
    if len(hs) < 2:
        return tf.zeros_like(recurrent_kernel)
    units = recurrent_kernel.shape[0]
    previous = tf.reshape(tf.stack(hs[:-1]), (-1, units))
    return tf.matmul(previous, tf.reshape(tf.stack(das[1:]), (-1, 4 * units)), transpose_a=True)


@tf.custom_gradient
def lstm_recurrence(projected, recurrent_kernel):
    """The LSTM recurrence over precomputed input projections, with a hand-written backward pass.

    Forward, for t = 0..T-1 with h_{-1} = c_{-1} = 0 and gates (i, f, g, o):
        a_t = projected[t] + h_{t-1} R;   i, f, o = sigmoid(a^i, a^f, a^o);   g = tanh(a^g)
        c_t = f * c_{t-1} + i * g;        h_t = o * tanh(c_t).
    Backward (BPTT), with dh_t = dL/dh_t from the outputs plus da_{t+1} R^T, dc_t including f_{t+1} * dc_{t+1}:
        da^o = dh * tanh(c) * o (1 - o);  dc += dh * o * (1 - tanh(c)^2);  da^i = dc * g * i (1 - i);
        da^g = dc * i * (1 - g^2);        da^f = dc * c_{t-1} * f (1 - f)
        dprojected[t] = da_t;             dR = sum_{t>=1} h_{t-1}^T da_t  (one matmul over [(T-1) batch] rows).
    Autodiff of the unrolled loop computes the same numbers (tests/layers_test.py checks it) but spends one small
    matmul per step on dR and a full-size strided-slice gradient per step on dprojected.

    Args:
      projected: `[T, batch, 4U]` input projections x_t W + b, time-major, gate order (i, f, g, o).
      recurrent_kernel: `[U, 4U]` R.

    Returns:
      `[T, batch, U]` the hidden states h_t.
    """
    steps = projected.shape[0]
    inputs = tf.unstack(projected, num=steps, axis=0)
    h = c = None
    hs, cs, tanh_cs, gates = [], [], [], []
    for t in range(steps):
        a = inputs[t] if h is None else inputs[t] + tf.matmul(h, recurrent_kernel)
        i, f, g, o = tf.split(a, 4, axis=-1)
        i, f, o, g = tf.sigmoid(i), tf.sigmoid(f), tf.sigmoid(o), tf.tanh(g)
        c = i * g if c is None else f * c + i * g
        tanh_c = tf.tanh(c)
        h = o * tanh_c
        hs.append(h)
        cs.append(c)
        tanh_cs.append(tanh_c)
        gates.append((i, f, g, o))

    def grad(upstream):
        dhs = tf.unstack(upstream, num=steps, axis=0)
        dh_next = dc_next = None
        das = [None] * steps
        for t in reversed(range(steps)):
            i, f, g, o = gates[t]
            dh = dhs[t] if dh_next is None else dhs[t] + dh_next
            dc = dh * o * (1.0 - tf.square(tanh_cs[t]))
            if dc_next is not None:
                dc = dc + dc_next
            da_f = dc * cs[t - 1] * f * (1.0 - f) if t > 0 else tf.zeros_like(f)
            das[t] = tf.concat(
                [dc * g * i * (1.0 - i), da_f, dc * i * (1.0 - tf.square(g)), dh * tanh_cs[t] * o * (1.0 - o)], -1
            )
            if t > 0:
                dh_next = tf.matmul(das[t], recurrent_kernel, transpose_b=True)
                dc_next = dc * f
        return tf.stack(das), _recurrent_kernel_gradient(hs, das, recurrent_kernel)

    return tf.stack(hs), grad


def _cell_dtype(dtype):
    """The dtype of a fused cell's gates and state: float32 for 16-bit compute dtypes, else the compute dtype."""
    return tf.float32 if tf.as_dtype(dtype).size < 4 else dtype


def _lstm_cell_state(x_t, hr, c_prev):
    """Gates and cell state of one step in `_cell_dtype` (`hr` = h_{t-1} R, `c_prev` = c_{t-1}; None at t = 0)."""
    a = tf.cast(x_t if hr is None else x_t + hr, _cell_dtype(x_t.dtype))
    i, f, g, o = tf.split(a, 4, axis=-1)
    i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
    c = i * g if c_prev is None else f * c_prev + i * g
    return (i, f, g, o), c


@tf.function(jit_compile=True, autograph=False)
def _lstm_cell_forward(x_t, hr, c_prev):
    """One fused step: h_t (in `x_t`'s dtype) and c_t (in `_cell_dtype`)."""
    (_, _, _, o), c = _lstm_cell_state(x_t, hr, c_prev)
    return tf.cast(o * tf.tanh(c), x_t.dtype), c


@tf.function(jit_compile=True, autograph=False)
def _lstm_cell_backward(x_t, hr, c_prev, dh_out, dh_next, dc_next):
    """One fused backward step, recomputing the gates: da_t (in `x_t`'s dtype) and f_t dc_t for step t-1.

    `dh_next` = da_{t+1} R^T and `dc_next` = f_{t+1} dc_{t+1} are None at t = T-1; `hr`, `c_prev` None at t = 0.
    """
    (i, f, g, o), c = _lstm_cell_state(x_t, hr, c_prev)
    tanh_c = tf.tanh(c)
    dh = tf.cast(dh_out if dh_next is None else dh_out + dh_next, c.dtype)
    dc = dh * o * (1.0 - tf.square(tanh_c))
    if dc_next is not None:
        dc = dc + dc_next
    da_f = tf.zeros_like(f) if c_prev is None else dc * c_prev * f * (1.0 - f)
    da = tf.concat([dc * g * i * (1.0 - i), da_f, dc * i * (1.0 - tf.square(g)), dh * tanh_c * o * (1.0 - o)], -1)
    return tf.cast(da, x_t.dtype), dc * f


@tf.custom_gradient
def fused_lstm_recurrence(projected, recurrent_kernel):
    """`lstm_recurrence`'s maths with each step's element-wise work in one XLA-compiled cell.

    The matmuls (h_{t-1} R forward; da_t R^T and the dR of `lstm_recurrence` backward) stay outside XLA, in the
    graph's own (oneDNN) kernels, which are faster than XLA's CPU matmuls in bfloat16; each step's ~25 forward
    and ~40 backward element-wise ops become one compiled cell. The cell computes its gates in float32 and keeps
    the cell state c_t (and its gradient) in float32 when the compute dtype has 16 bits (a bfloat16 c_t in the
    plain graph carries 8 mantissa bits through the recurrence), in the compute dtype otherwise; h_t and da_t
    come out in the compute dtype, for the matmuls. The backward cell recomputes the gates from the saved
    h_{t-1} R and c_{t-1} instead of saving them.

    Args:
      projected: `[T, batch, 4U]` input projections x_t W + b, time-major, gate order (i, f, g, o).
      recurrent_kernel: `[U, 4U]` R.

    Returns:
      `[T, batch, U]` the hidden states h_t, in `projected`'s dtype.
    """
    steps = projected.shape[0]
    inputs = tf.unstack(projected, num=steps, axis=0)
    hs, cs, hrs = [], [], []
    h = c = hr = None
    for t in range(steps):
        if h is not None:
            hr = tf.matmul(h, recurrent_kernel)
        h, c = _lstm_cell_forward(inputs[t], hr, c)
        hs.append(h)
        cs.append(c)
        hrs.append(hr)

    def grad(upstream):
        dhs = tf.unstack(upstream, num=steps, axis=0)
        dh_next = dc_next = None
        das = [None] * steps
        for t in reversed(range(steps)):
            c_prev = cs[t - 1] if t > 0 else None
            das[t], dc_next = _lstm_cell_backward(inputs[t], hrs[t], c_prev, dhs[t], dh_next, dc_next)
            if t > 0:
                dh_next = tf.matmul(das[t], recurrent_kernel, transpose_b=True)
        return tf.stack(das), _recurrent_kernel_gradient(hs, das, recurrent_kernel)

    return tf.stack(hs), grad


FILTER_GRADIENTS = ("auto", "native", "forward_conv")


def _same_pads(size: int, kernel: int, stride: int) -> tuple:
    """(before, after) zero rows of TensorFlow's 'same' padding for a convolution of side `size`."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_pads(size, kernel_size, strides, padding):
    if padding == "valid":
        return (0, 0), (0, 0)
    return tuple(_same_pads(n, k, s) for n, k, s in zip(size, kernel_size, strides))


def conv_filter_gradient(x, dy, kernel_size, strides, pads):
    """The filter gradient of y = conv2d(pad(x), W, strides, 'valid') as ONE forward convolution.

        dW[a, b, c, f] = sum_{n, i, j} xp[n, s_h i + a, s_w j + b, c] dy[n, i, j, f]
    is the 'valid' convolution, dilated by the strides, of xp read as `[C, Hp, Wp, N]` (the channels as the batch,
    the batch as the channels) with dy read as a filter `[Ho, Wo, N, F]`. The same multiply-adds as TensorFlow's
    `Conv2DBackpropFilter`, but oneDNN's bfloat16 backward-weights kernel is slow where the maps are small and the
    forward kernel is not (`Conv2D` has the figures).

    Args:
      x: `[batch, H, W, C]` the convolution's input.
      dy: `[batch, Ho, Wo, F]` the gradient of its output.
      kernel_size: (kh, kw).
      strides: (s_h, s_w).
      pads: ((top, bottom), (left, right)) zeros around x.

    Returns:
      `[kh, kw, C, F]`.
    """
    (top, bottom), (left, right) = pads
    (kh, kw), (sh, sw) = kernel_size, strides
    xp = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    xp = xp[:, : sh * (dy.shape[1] - 1) + kh, : sw * (dy.shape[2] - 1) + kw, :]  # rows no output reads
    swapped = tf.nn.conv2d(
        tf.transpose(xp, (3, 1, 2, 0)), tf.transpose(dy, (1, 2, 0, 3)), 1, "VALID", dilations=[sh, sw]
    )
    return tf.transpose(swapped, (1, 2, 0, 3))


def conv2d_forward_filter_gradient(x, kernel, strides, padding):
    """`tf.nn.conv2d(x, kernel, strides, padding)` ('same' or 'valid') whose filter gradient is
    `conv_filter_gradient`; the input gradient is TensorFlow's (a transposed convolution)."""
    strides, padding = tuple(strides), padding.upper()
    pads = _conv_pads(x.shape[1:3], kernel.shape[:2], strides, padding.lower())

    @tf.custom_gradient
    def convolution(x, kernel):
        def grad(dy):
            dx = tf.nn.conv2d_transpose(dy, kernel, tf.shape(x), strides, padding)
            return dx, conv_filter_gradient(x, dy, kernel.shape[:2], strides, pads)

        return tf.nn.conv2d(x, kernel, strides, padding), grad

    return convolution(x, kernel)


def conv2d_transpose_forward_filter_gradient(x, kernel, output_shape, strides, padding):
    """`tf.nn.conv2d_transpose(x, kernel [kh, kw, out, in], output_shape, strides, padding)` (output_shape static:
    `[batch or None, H, W, out]`) whose filter gradient is
    `conv_filter_gradient` with the roles swapped (the transposed convolution is the adjoint of conv2d(y, kernel):
    its input plays that convolution's output gradient); the input gradient is `tf.nn.conv2d(dy, kernel)`."""
    strides, padding = tuple(strides), padding.upper()
    height, width = output_shape[1:3]
    pads = _conv_pads((height, width), kernel.shape[:2], strides, padding.lower())

    @tf.custom_gradient
    def transposed(x, kernel):
        def grad(dy):
            return tf.nn.conv2d(dy, kernel, strides, padding), conv_filter_gradient(
                dy, x, kernel.shape[:2], strides, pads
            )

        shape = tf.stack([tf.shape(x)[0], height, width, kernel.shape[2]])
        return tf.nn.conv2d_transpose(x, kernel, shape, strides, padding), grad

    return transposed(x, kernel)


def _check_filter_gradient(filter_gradient):
    if filter_gradient not in FILTER_GRADIENTS:
        raise ValueError(f"filter_gradient must be one of {FILTER_GRADIENTS}, got {filter_gradient!r}")
    return filter_gradient


# The 'auto' rule of `Conv2D` / `Conv2DTranspose` (measured; see `Conv2D`).
FORWARD_FILTER_GRADIENT_MAX_SIDE = 8
FORWARD_FILTER_GRADIENT_MIN_CHANNELS = 128


def _forward_filter_gradient_pays(filter_gradient, compute_dtype, gradient_side, channels) -> bool:
    if filter_gradient != "auto":
        return filter_gradient == "forward_conv"
    return (
        compute_dtype == "bfloat16"
        and gradient_side is not None
        and gradient_side <= FORWARD_FILTER_GRADIENT_MAX_SIDE
        and channels >= FORWARD_FILTER_GRADIENT_MIN_CHANNELS
        and not tf.config.list_logical_devices("GPU")  # measured on CPUs only: cuDNN keeps its own kernel
    )


class _FilterGradientChoice:
    """What `Conv2D` and `Conv2DTranspose` add to Keras' layers: the `filter_gradient` setting and training calls that
    run `_forward_filter_gradient_op` (the layer's op with `conv_filter_gradient` as its filter gradient), plus bias
    and activation, where `forward_filter_gradient(input_shape)` says so; every other call is Keras' own."""

    def __init__(self, *args, filter_gradient="auto", **kwargs):
        super().__init__(*args, **kwargs)
        self.filter_gradient = _check_filter_gradient(filter_gradient)

    def call(self, inputs, training=None):
        if not (training and self.forward_filter_gradient(inputs.shape)):
            return super().call(inputs)
        # The kernel as a tensor (in the compute dtype under a mixed policy): a custom gradient takes no variables.
        outputs = self._forward_filter_gradient_op(inputs, tf.convert_to_tensor(self.kernel))
        if self.use_bias:
            outputs = tf.nn.bias_add(outputs, self.bias)
        return outputs if self.activation is None else self.activation(outputs)

    def get_config(self):
        return {**super().get_config(), "filter_gradient": self.filter_gradient}


@keras.saving.register_keras_serializable(PACKAGE)
class Conv2D(_FilterGradientChoice, keras.layers.Conv2D):
    """`keras.layers.Conv2D` whose training calls may compute the filter gradient as a forward convolution.

    `filter_gradient`: 'native' (TensorFlow's `Conv2DBackpropFilter`), 'forward_conv' (`conv_filter_gradient`: the
    batch and channel axes swapped, one dilated forward convolution; same maths, different rounding) or 'auto'
    (default): 'forward_conv' when computing in bfloat16 on output maps of side <= 8 from >= 128 input channels,
    'native' otherwise. Only training calls (`training=True`) change; the forward pass, evaluation, folding and exports
    are Keras' own. Weights, checkpoint keys and configs are those of `keras.layers.Conv2D` plus `filter_gradient`.

    Why: oneDNN 3.7 (TensorFlow 2.21's) runs bfloat16 backward-weights on small maps at about half the speed of its
    forward kernels. Filter gradient alone, batch 128, 2 idle CPU cores, best of 12, bfloat16 (float32 in brackets),
    native -> forward conv, ms: the MNIST encoder's 8x8x128 3x3 16.5 -> 10.9 (16.1 -> 21.3), 8 -> 4 stride 2 10.2 ->
    5.8 (8.0 -> 9.4), 4x4x256 34.7 -> 9.9 (18.8 -> 17.1); the decoder's 8x8x256 44-60 -> 31 (54 -> 74), and, through
    `Conv2DTranspose`, 4 -> 8 35-45 -> 15 (35 -> 29), 8 -> 16 40-50 -> 29-31 (58 -> 59); where it loses: 16x16x128
    33-58 -> 43-49 (58 -> 135), 30x30x64 32 -> 62 (57 -> 279), the encoder's 15 -> 8 from 64 channels 5.7 -> 7.5
    (6.1 -> 11.8). Hence bfloat16, small maps, many channels; whole MNIST crVAE bfloat16 training step, both variants
    stepped alternately in one process: 717-728 ms native, 683-686 ms 'auto'. GPUs: not measured, so 'auto' keeps
    TensorFlow's kernel whenever a GPU is visible.
    """

    def forward_filter_gradient(self, input_shape) -> bool:
        """Whether a training call on `input_shape` computes the filter gradient as a forward convolution."""
        supported = self.dilation_rate == (1, 1) and self.groups == 1 and self.data_format == "channels_last"
        output_side = self.compute_output_shape(input_shape)[1]
        return supported and _forward_filter_gradient_pays(
            self.filter_gradient, self.compute_dtype, output_side, input_shape[-1]
        )

    def _forward_filter_gradient_op(self, inputs, kernel):
        return conv2d_forward_filter_gradient(inputs, kernel, self.strides, self.padding)


@keras.saving.register_keras_serializable(PACKAGE)
class Conv2DTranspose(_FilterGradientChoice, keras.layers.Conv2DTranspose):
    """`keras.layers.Conv2DTranspose` with `Conv2D`'s `filter_gradient` ('auto': a forward convolution when computing
    in bfloat16 from input maps of side <= 8 to >= 128 output channels: the filter gradient of a transposed convolution
    is that of the convolution it transposes, whose output gradient is this layer's input). 'same' or 'valid'
    padding, no `output_padding`, no dilation; anything else is Keras' own."""

    def forward_filter_gradient(self, input_shape) -> bool:
        supported = self.dilation_rate == (1, 1) and self.output_padding is None and self.data_format == "channels_last"
        return supported and _forward_filter_gradient_pays(
            self.filter_gradient, self.compute_dtype, input_shape[1], self.filters
        )

    def _forward_filter_gradient_op(self, inputs, kernel):
        output_shape = self.compute_output_shape(inputs.shape)
        return conv2d_transpose_forward_filter_gradient(inputs, kernel, output_shape, self.strides, self.padding)


@keras.saving.register_keras_serializable(PACKAGE)
class NarrowConv2D(keras.layers.Conv2D):
    """A stride-1 'valid' `Conv2D` with few output channels (the MNIST decoder's 64 -> 1 logits layer), computed
    as one matmul to every kernel tap and a sum of shifted slices:
        taps[b, y, x, (i, j, f)] = sum_c x[b, y, x, c] * kernel[i, j, c, f]      ([batch*H*W, C] @ [C, kh*kw*F])
        out[b, y, x, f] = sum_{i, j} taps[b, y + i, x + j, (i, j, f)] + bias[f].
    The same function and weights as `keras.layers.Conv2D` (checkpoints and configs are interchangeable), but
    oneDNN's direct convolution is slow for F = 1: on 2 idle CPU cores the MNIST decoder's 64 -> 1 output layer
    takes 48.6 ms for 640 rows (evaluation) and 29.5 ms forward + backward for 128 (training) as a convolution,
    14.2 ms and 17.6 ms this way (float32). Other strides, paddings or dilations fall back to the convolution.
    """

    def convolution_op(self, inputs, kernel):
        if self.strides != (1, 1) or self.padding != "valid" or self.dilation_rate != (1, 1) or self.groups != 1:
            return super().convolution_op(inputs, kernel)
        kh, kw, channels, filters = kernel.shape
        height, width = inputs.shape[1], inputs.shape[2]
        per_tap = tf.reshape(tf.transpose(kernel, (2, 0, 1, 3)), (channels, kh * kw * filters))
        taps = tf.matmul(tf.reshape(inputs, (-1, channels)), per_tap)
        taps = tf.reshape(taps, tf.concat([tf.shape(inputs)[:3], [kh * kw * filters]], 0))
        out_h, out_w = height - kh + 1, width - kw + 1
        total = None
        for i in range(kh):
            for j in range(kw):
                first = (i * kw + j) * filters
                tap = taps[:, i : i + out_h, j : j + out_w, first : first + filters]
                total = tap if total is None else total + tap
        return total


@keras.saving.register_keras_serializable(PACKAGE)
class TorchConv2DTranspose(keras.layers.Conv2DTranspose):
    """Torch's `SpatialFullConvolution(k=4, s=2, p)`: a 4x4 stride-2 transposed convolution whose output, of side
    2n - 2p + 2 for an input of side n, is the 'valid' transposed convolution (side 2n + 2) with p rows and columns
    cut from every border. Weights and configuration keys are those of `keras.layers.Conv2DTranspose` (kernel
    `[4, 4, out, in]`), plus `torch_padding`.

    p = 2 (the MNIST decoder's 16 -> 30 layer) is computed without the cut border, as four phases (sub-pixel
    convolution): with Y = y + 2 = 2m + r, output row y = 2q + r only sees input rows q and q + 1, through kernel
    rows r + 2 and r:
        out[2q + r, 2u + s] = sum_{a, b in {0, 1}} x[q + a, u + b] . K[r + 2 (1 - a), s + 2 (1 - b)]
    i.e. one 'valid' 2x2 convolution to 4 * out channels, ordered (r, s, out), then `depth_to_space(2)`. Same
    multiply-adds as the 30x30 output needs (the valid form computes 34x34 and discards 12%), and no strided-slice
    gradient: on 2 idle CPU cores, 128 rows of the MNIST layer forward + backward in 127 ms against 178 ms for the
    valid form with the cut (PyTorch's ConvTranspose2d: 136 ms), 640 rows forward 212 against 225 ms (float32).
    Other p use the valid form and the cut.
    """

    def __init__(self, filters, torch_padding: int = 2, **kwargs):
        for key, value in (("kernel_size", (4, 4)), ("strides", (2, 2)), ("padding", "valid")):
            given = kwargs.pop(key, value)  # from_config passes the base class's keys back
            normalized = tuple(given) if isinstance(given, (list, tuple)) else given
            if normalized != value and (not isinstance(given, int) or (given, given) != value):
                raise ValueError(f"TorchConv2DTranspose is 4x4, stride 2, 'valid' plus a cut; got {key}={given!r}")
        super().__init__(filters, (4, 4), strides=(2, 2), padding="valid", **kwargs)
        if not 0 <= int(torch_padding) <= 3:
            raise ValueError(f"torch_padding must be in [0, 3] for a 4x4 kernel, got {torch_padding}")
        self.torch_padding = int(torch_padding)

    def transposed_op(self, inputs, kernel):
        """The layer's linear map without bias, for a kernel `[4, 4, out, in]` (its own, or a folded one:
        `architectures.folding`)."""
        p = self.torch_padding
        if p == 2:
            channels = inputs.shape[-1]
            kernel = tf.reshape(tf.transpose(kernel, (0, 1, 3, 2)), (2, 2, 2, 2, channels, self.filters))
            kernel = tf.reverse(kernel, [0, 2])  # (1 - a, r, 1 - b, s, in, out) -> (a, r, b, s, in, out)
            kernel = tf.reshape(tf.transpose(kernel, (0, 2, 4, 1, 3, 5)), (2, 2, channels, 4 * self.filters))
            return tf.nn.depth_to_space(tf.nn.conv2d(inputs, kernel, 1, "VALID"), 2)
        outputs = ops.conv_transpose(inputs, kernel, strides=2, padding="valid", data_format="channels_last")
        return outputs[:, p:-p, p:-p, :] if p else outputs

    def call(self, inputs):
        p = self.torch_padding
        if p == 2:
            outputs = self.transposed_op(inputs, self.kernel)
            return tf.nn.bias_add(outputs, self.bias) if self.use_bias else outputs
        outputs = super().call(inputs)  # Keras' op, bias and activation, then the cut
        return outputs[:, p:-p, p:-p, :] if p else outputs

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        side = [None if n is None else 2 * n + 2 - 2 * self.torch_padding for n in (height, width)]
        return (batch, side[0], side[1], self.filters)

    def get_config(self):
        return {**super().get_config(), "torch_padding": self.torch_padding}


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
