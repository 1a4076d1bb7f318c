"""Layers of the adversarial family's discriminator: Torch-semantics dropout, row L2 normalisation and
minibatch discrimination (Salimans et al. 2016; the authors' `BatchDiscrimination`, porting notes 6.3).

Gin-free and serializable.
"""

import keras
from keras import ops

from crvae_tf.architectures import replicas
from crvae_tf.architectures.blocks import PACKAGE
from crvae_tf.architectures.blocks import torch_uniform


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

    (porting notes 1: the second argument of `nn.Dropout` is `v1`, of `nn.SpatialDropout` it is
    `stochasticInference`; SpatialDropout never rescales.) The authors' discriminator uses
    `spatial=True, stochastic_inference=True` in its conv trunk and the plain variant in its head (porting notes 6.1).
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
        # Under a strategy, each replica keeps its rows of the global batch's draw (`replicas.uniform`).
        keep = replicas.uniform(shape, self.seed_generator) >= self.rate
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

    Torch7 `nn.Normalize(2)` as in the authors' discriminator head (porting notes 6.1; paper G.4 "Norm(1)"),
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
    GANs", Sec. 3.2, exactly as the `BatchDiscrimination` module the authors use (porting notes 6.3).

    For X: `[N, d]`, with W: `[d, B*C]` (B = `num_kernels`, C = `kernel_dim`) and bias b: `[B*C]`:

        M = X W + b,  reshaped to `[N, B, C]`
        D_{ij,b} = sum_c |M_{i,b,c} - M_{j,b,c}|
        o_{i,b} = (1/N) sum_j exp(-D_{ij,b})          (mean over the batch, j = i included)
        output = concat([X, o], axis=-1)               `[N, d + B]`

    The diagonal is not masked: every row contributes exp(0) = 1, i.e. 1/N, to its own o (the Torch
    `nn.Sum` with size-average). The bias cancels in the differences (it gets zero gradient); it is kept,
    zero-initialised, so that parameter counts match the Torch module (which wraps an `nn.Linear`). W has
    Torch's Linear default U(+-1/sqrt(d)) (porting notes 10.2). Memory is O(N^2 * B * C) per call.

    Under a `tf.distribute` strategy each replica holds n = N / R rows. With `synchronized = False` (Keras' and the
    per-replica default of data-parallel GANs) j runs over the replica's own n rows: o compares an example with its
    replica's batch only, and its value depends on R. With `synchronized = True` (set by the training loop when
    `train.synchronized_batch_statistics`) the rows M of every replica are all-gathered (`replicas.all_gather`,
    gradient included) and j runs over all N: the output of a replica's rows is the output the one-device layer gives
    them on the concatenated batch (the mean over j does not depend on the order of the rows).
    """

    def __init__(self, num_kernels: int = 100, kernel_dim: int = 5, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        if num_kernels < 1 or kernel_dim < 1:
            raise ValueError(f"num_kernels and kernel_dim must be >= 1, got {num_kernels}, {kernel_dim}")
        self.num_kernels = int(num_kernels)
        self.kernel_dim = int(kernel_dim)
        self.use_bias = bool(use_bias)
        self.synchronized = False

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
        others = replicas.all_gather(m) if self.synchronized else m  # [N_all, B, C]
        distances = ops.sum(ops.abs(ops.expand_dims(m, 1) - ops.expand_dims(others, 0)), axis=-1)  # [N, N_all, B]
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
