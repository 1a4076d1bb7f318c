"""The latent heads: what makes a model a VAE, cVAE, bcVAE or crVAE.

Gin-free and serializable; the latent layout is in `crvae_tf.architectures.blocks`.

Latent heads
------------
A head turns encoder features `h: [batch, H, W, C_feat]` into the posterior parameters
`(loc, log_variance)`, each `[batch, latent_dim]`, and turns a latent `z: [batch, latent_dim]` into
decoder input features `[batch, H, W, C_feat]`:

* `FCHead` (standard VAE, paper G.3 / porting notes 3.1): Dense loc, Dense log-variance, Dense back.
* `ConvHead` (cVAE, porting notes 3.2): 3x3 conv loc and log-variance (C_lat x 4 x 4), 3x3 conv + BN back.
* `BlockFCHead` (bcVAE, paper Sec. 3 and G.3): T channel blocks with one Dense per block on the
    log-variance path and on the generation path, learned offsets mu0.
* `ChannelRecurrentHead` (crVAE, porting notes 3.4/3.5): T contiguous channel blocks fed as a sequence to a
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

from crvae_tf.architectures.blocks import PACKAGE
from crvae_tf.architectures.blocks import BlockDense
from crvae_tf.architectures.blocks import LearnedBias
from crvae_tf.architectures.blocks import StackedLSTM
from crvae_tf.architectures.blocks import batch_norm
from crvae_tf.architectures.blocks import conv
from crvae_tf.architectures.blocks import flat_to_nhwc
from crvae_tf.architectures.blocks import nhwc_to_flat
from crvae_tf.architectures.blocks import to_channel_blocks
from crvae_tf.architectures.blocks import torch_uniform


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

    @property
    def latent_shape(self) -> tuple:
        """The latent's natural shape: `(latent_dim,)` for a flat latent, `(C, h, w)` for a conv-shaped one (the
        flat z is its channel-major flattening)."""
        return (int(self.latent_dim),)

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
    """Standard VAE head (porting notes 3.1, paper G.3): Dense(latent_dim) loc and log-variance, Dense back.

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

    @property
    def latent_shape(self) -> tuple:
        height, width, _ = self.feature_shape
        return (self.latent_channels, int(height), int(width))

    def _to_flat(self, x):
        return nhwc_to_flat(x)

    def _to_nhwc(self, z, channels):
        height, width, _ = self.feature_shape
        return flat_to_nhwc(z, channels, height, width)

    def get_config(self):
        return {**super().get_config(), "latent_channels": self.latent_channels}


@keras.saving.register_keras_serializable(PACKAGE)
class ConvHead(_ConvLatentHead):
    """cVAE head (porting notes 3.2): 3x3 conv loc / log-variance to `latent_channels`; 3x3 conv + BN back."""

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
    """crVAE head (paper Sec. 3, Fig. 1(d); authors' code, porting notes 3.4 / 3.5).

    Inference (variance path): features `[B, H, W, C_feat]` -> T contiguous channel blocks
    `[B, T, C_feat/T*H*W]` -> stacked LSTM(hidden_units) -> [BatchNorm over B*T rows, RGB models] ->
    time-shared Dense(D/T) -> log-variance `[B, D]` (step t fills latent channels [t*C/T, (t+1)*C/T)).
    Mean path: Dense (MNIST code) or 3x3 conv (64x64 code) + b_enc.

    Generation: z `[B, D]` -> T blocks `[B, T, D/T]` -> stacked LSTM(hidden_units) -> time-shared
    Dense(D/T) -> u `[B, D]` -> + b_dec -> 3x3 conv to C_feat + BN (no activation) -> decoder.

    `generation_batchnorm=True` adds a BatchNorm over the B*T rows of the generation LSTM's outputs (not in the
    authors' code; the recipes' fix of the early posterior collapse, docs/crvae_collapse.md).

    `recurrent_inference=False` / `recurrent_generation=False` replace the LSTM + time-shared Dense of
    that path by T independent Dense layers (`BlockDense`), giving Table 1's "generation only" /
    "inference only" ablations. Both True is the paper's crVAE.

    `lstm_jit_compile` ('auto', 'stack', 'cells', True, False): how the LSTMs' training passes use XLA
    (`blocks.StackedLSTM`: 'auto' = the whole stack in float32, per-step element-wise cells in mixed precision;
    evaluation and exports never).
    """

    def __init__(
        self,
        feature_shape,
        hidden_units: int = 512,
        num_layers: int = 2,
        recurrent_inference: bool = True,
        recurrent_generation: bool = True,
        inference_batchnorm: bool = False,
        generation_batchnorm: bool = False,
        lstm_jit_compile="auto",
        **kwargs,
    ):
        super().__init__(feature_shape, **kwargs)
        self.lstm_jit_compile = lstm_jit_compile
        self.hidden_units = int(hidden_units)
        self.num_layers = int(num_layers)
        self.recurrent_inference = bool(recurrent_inference)
        self.recurrent_generation = bool(recurrent_generation)
        self.inference_batchnorm = bool(inference_batchnorm)
        self.generation_batchnorm = bool(generation_batchnorm)
        if self.generation_batchnorm and not self.recurrent_generation:
            raise ValueError(
                "generation_batchnorm=True needs recurrent_generation=True (it normalises the generation LSTM's "
                "outputs); remove latent_head.generation_batchnorm or set latent_head.recurrent_generation=True."
            )
        step_dim = self.latent_dim // self.num_time_steps
        time_shared = lambda name: keras.layers.Dense(
            step_dim,
            name=name,
            kernel_initializer=torch_uniform(self.hidden_units),
            bias_initializer=torch_uniform(self.hidden_units),
        )
        if self.recurrent_inference:
            self.inference_lstm = StackedLSTM(
                self.hidden_units, self.num_layers, jit_compile=lstm_jit_compile, name="inference_lstm"
            )
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
            self.generation_lstm = StackedLSTM(
                self.hidden_units, self.num_layers, jit_compile=lstm_jit_compile, name="generation_lstm"
            )
            # Optional BatchNorm over the B*T rows of the generation LSTM's outputs (gamma 1, beta 0): the mirror
            # of the RGB code's inference-side BN, not in the authors' code (docs/crvae_collapse.md). At the Torch
            # initialisation the two LSTM layers shrink z, so u varies across the batch far less than the
            # z-independent pattern of the Dense bias and b_dec, and the decoder-entry BN, which normalises per
            # channel over batch and positions, passes on almost nothing that depends on z.
            self.generation_bn = (
                keras.layers.BatchNormalization(
                    momentum=self.batchnorm_momentum, epsilon=self.batchnorm_epsilon, name="generation_bn"
                )
                if self.generation_batchnorm
                else None
            )
            self.generation_dense = time_shared("generation_dense")
            generation = [self.generation_lstm, self.generation_dense] + (
                [self.generation_bn] if self.generation_bn is not None else []
            )
        else:
            self.generation_blocks = BlockDense(step_dim, name="generation_blocks")
            generation = [self.generation_blocks]
        self.generation_offset = LearnedBias(name="generation_offset")  # b_dec
        self.entry_conv = conv(self.feature_shape[-1], 3, name="entry_conv")
        self.entry_bn = batch_norm(self.batchnorm_momentum, self.batchnorm_epsilon, name="entry_bn")
        self._latent_head_layers = inference + generation
        self._decoder_layers = [self.generation_offset, self.entry_conv, self.entry_bn]

    def _normalize_rows(self, batchnorm, hidden, training):
        """BatchNorm over the B*T rows of LSTM outputs `[B, T, hidden]` (statistics shared by the time steps)."""
        rows = batchnorm(ops.reshape(hidden, (-1, self.hidden_units)), training=training)
        return ops.reshape(rows, (-1, self.num_time_steps, self.hidden_units))

    def infer(self, features, training=False):
        blocks = to_channel_blocks(features, self.num_time_steps)  # [B, T, C_feat/T*H*W]
        if self.recurrent_inference:
            hidden = self.inference_lstm(blocks, training=training)  # [B, T, hidden]
            if self.inference_bn is not None:
                hidden = self._normalize_rows(self.inference_bn, hidden, training)
            steps = self.inference_dense(hidden)  # [B, T, D/T]
        else:
            steps = self.inference_blocks(blocks)
        return self._loc(features), ops.reshape(steps, (-1, self.latent_dim))

    def transform(self, z, training=False):
        """z `[B, D]` -> u `[B, D]`, the generation-path output before b_dec (the MI target of the GAN)."""
        blocks = ops.reshape(z, (-1, self.num_time_steps, self.latent_dim // self.num_time_steps))
        if self.recurrent_generation:
            hidden = self.generation_lstm(blocks, training=training)  # [B, T, hidden]
            if self.generation_bn is not None:
                hidden = self._normalize_rows(self.generation_bn, hidden, training)
            steps = self.generation_dense(hidden)
        else:
            steps = self.generation_blocks(blocks)
        return ops.reshape(steps, (-1, self.latent_dim))

    def generate(self, z, training=False):
        u = self.generation_offset(self.transform(z, training=training))
        return self.entry_bn(self.entry_conv(self._to_nhwc(u, self.latent_channels)), training=training)

    def get_config(self):
        return {
            **super().get_config(),
            "hidden_units": self.hidden_units,
            "num_layers": self.num_layers,
            "recurrent_inference": self.recurrent_inference,
            "recurrent_generation": self.recurrent_generation,
            "inference_batchnorm": self.inference_batchnorm,
            "generation_batchnorm": self.generation_batchnorm,
            "lstm_jit_compile": self.lstm_jit_compile,
        }


HEADS = {"fc": FCHead, "conv": ConvHead, "block_fc": BlockFCHead, "channel_recurrent": ChannelRecurrentHead}
