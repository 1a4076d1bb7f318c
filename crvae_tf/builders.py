"""The gin surface: configurable builder functions with stable selector names.

Only this module, the train/evaluate/export libraries and the binaries import gin. The selectors are
the same for every model variant:

    dataset.*      which images (`name`, `local_path`, `data_dir`, `download`, `validation_size`)
    encoder.*      the inference conv net (`base_channels`, `last_stride2_kernel`, batch-norm settings)
    latent_head.*  the variant: `kind` in {fc, conv, block_fc, channel_recurrent} and its sizes/switches
    decoder.*      the generation deconv net
    model.*        the objective (`kl_weight`, `kl_step_weights`)
    optimizer.*    Adam per parameter group, per-group LR scale and gradient clamp, LR halving
    train.*        the loop (`max_steps`, `batch_size`, `seed`, logging/checkpoint cadence)
"""

import gin
import keras

from crvae_tf import data as data_lib
from crvae_tf import layers
from crvae_tf import models
from crvae_tf import networks


@gin.configurable("dataset", denylist=["seed"])
def build_dataset(name: str = "sprites", local_path=None, data_dir=None, download: bool = True,
                  validation_size: int = 10000, seed: int = 0) -> data_lib.ImageSplits:
    """Loads the train/validation/test images.

    Args:
      name: 'sprites' (embedded, generated in code), 'mnist' (dynamically binarized per batch) or
        'binarized_mnist' (static, Larochelle).
      local_path: a local file or folder replacing the tfds download (keras-layout `mnist.npz` for
        'mnist'; the bit-packed `binarized_mnist.npz` for 'binarized_mnist').
      data_dir: tfds data directory.
      download: let tfds download when the data is not prepared.
      validation_size: images held out from the training set for validation ('mnist').
      seed: set by `train.seed` (not a binding of its own).
    """
    return data_lib.load_image_splits(name, local_path=local_path, data_dir=data_dir, download=download,
                                      validation_size=validation_size, seed=seed)


@gin.configurable("eval_dataset")
def build_eval_dataset(name=None, local_path=None, data_dir=None, download: bool = False):
    """The dataset whose test split `python -m crvae_tf.evaluate --split=test` scores.

    Args:
      name: None (the run's own `dataset.*` test split) or a dataset name of `build_dataset`. The MNIST
        recipes set 'binarized_mnist': Table 1's statically binarized test set (Larochelle).
      local_path: the local file replacing the tfds download (e.g. the bit-packed `binarized_mnist.npz`).
      data_dir: tfds data directory.
      download: let tfds download (off: evaluation never waits on the network).

    Returns:
      `data_lib.ImageSplits`, or None when `name` is None.
    """
    if name is None:
        return None
    return data_lib.load_image_splits(name, local_path=local_path, data_dir=data_dir, download=download)


@gin.configurable("encoder", denylist=["image_shape"])
def build_encoder(image_shape=(28, 28, 1), base_channels: int = 32, last_stride2_kernel: int = 3,
                  batchnorm_momentum: float = 0.9, batchnorm_epsilon: float = 1e-5):
    """The inference network (`networks.mnist_encoder`); see its docstring for the layers."""
    _check_mnist_shape(image_shape)
    return networks.mnist_encoder(base_channels, last_stride2_kernel, batchnorm_momentum, batchnorm_epsilon)


@gin.configurable("decoder", denylist=["image_shape"])
def build_decoder(image_shape=(28, 28, 1), base_channels: int = 32, batchnorm_momentum: float = 0.9,
                  batchnorm_epsilon: float = 1e-5):
    """The generation network (`networks.mnist_decoder`)."""
    _check_mnist_shape(image_shape)
    return networks.mnist_decoder(base_channels, batchnorm_momentum, batchnorm_epsilon)


def _check_mnist_shape(image_shape):
    if tuple(image_shape) != (28, 28, 1):
        raise ValueError(f"The MNIST networks take 28x28x1 images, got {tuple(image_shape)}.")


# Which latent_head.* arguments each kind accepts (None = not given).
_HEAD_ARGS = {
    "fc": {"latent_dim", "num_time_steps"},
    "conv": {"latent_channels", "num_time_steps"},
    "block_fc": {"latent_channels", "num_time_steps", "loc_path"},
    "channel_recurrent": {"latent_channels", "num_time_steps", "loc_path", "hidden_units", "num_layers",
                          "recurrent_inference", "recurrent_generation", "inference_batchnorm"},
}


@gin.configurable("latent_head", denylist=["feature_shape"])
def build_latent_head(feature_shape, kind: str = gin.REQUIRED, latent_dim=None, latent_channels=None,
                      num_time_steps=None, loc_path=None, hidden_units=None, num_layers=None,
                      recurrent_inference=None, recurrent_generation=None, inference_batchnorm=None,
                      batchnorm_momentum: float = 0.9, batchnorm_epsilon: float = 1e-5):
    """Builds the latent head that defines the model variant.

    Args:
      feature_shape: (h, w, c) of the encoder output (from the encoder).
      kind: 'fc' (VAE), 'conv' (cVAE), 'block_fc' (bcVAE) or 'channel_recurrent' (crVAE).
      latent_dim: 'fc' only (default 1024).
      latent_channels: latent channels of the conv-shaped latents (default 64: 64x4x4 = 1024).
      num_time_steps: T, the number of channel blocks (paper T = 8; default 8, 1 for 'fc').
      loc_path: 'dense' (MNIST crVAE code) or 'conv' (paper G.3, 64x64 code) mean path + learned offset.
      hidden_units, num_layers: LSTM width (512) and depth (2) of the crVAE head.
      recurrent_inference, recurrent_generation: crVAE switches (Table 1 ablations).
      inference_batchnorm: BatchNorm after the inference LSTM (the 64x64 RGB code has one).
      batchnorm_momentum, batchnorm_epsilon: the BatchNorm at the decoder entry (crVAE, cVAE heads);
        recipes share one gin macro with encoder.* and decoder.*.
    """
    given = {key: value for key, value in dict(
        latent_dim=latent_dim, latent_channels=latent_channels, num_time_steps=num_time_steps,
        loc_path=loc_path, hidden_units=hidden_units, num_layers=num_layers,
        recurrent_inference=recurrent_inference, recurrent_generation=recurrent_generation,
        inference_batchnorm=inference_batchnorm).items() if value is not None}
    if kind not in layers.HEADS:
        raise ValueError(f"latent_head.kind={kind!r} is not one of {sorted(layers.HEADS)}")
    unused = sorted(set(given) - _HEAD_ARGS[kind])
    if unused:
        raise ValueError(f"latent_head.kind={kind!r} does not use {unused}; remove those bindings "
                         f"(it accepts {sorted(_HEAD_ARGS[kind])}).")
    if kind != "fc":
        given.setdefault("num_time_steps", 8)
    return layers.HEADS[kind](feature_shape, batchnorm_momentum=batchnorm_momentum,
                              batchnorm_epsilon=batchnorm_epsilon, name="latent_head", **given)


PRECISIONS = ("float32", "mixed_bfloat16")


@gin.configurable("model", denylist=["image_shape", "seed"])
def build_model(image_shape=(28, 28, 1), kl_weight: float = 1.0, kl_step_weights=None, seed=None,
                precision: str = "float32", num_importance_samples: int = 1, num_validation_samples: int = 5):
    """Builds (and builds the weights of) the VAE with the configured encoder, latent head and decoder.

    Args:
      image_shape: from the dataset.
      kl_weight: alpha, per image (see `crvae_tf.models`).
      kl_step_weights: optional per-time-step KL weights, one per time step.
      seed: from `train.seed`.
      precision: 'float32', or 'mixed_bfloat16' (float32 weights, bfloat16 convolutions, matmuls and
        activations, float32 losses): 1.5-1.6x the float32 training throughput measured on a 2-core
        AVX512-BF16 CPU (`python -m crvae_tf.bench --gin_bindings="model.precision='mixed_bfloat16'"`).
      num_importance_samples: k; > 1 trains on the IWAE_k bound (needs kl_weight = 1).
      num_validation_samples: k of the IWAE_k bound reported on the validation split and used to keep
        the best checkpoint (authors: 5).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"model.precision={precision!r} is not one of {list(PRECISIONS)}.")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)   # captured by every layer built below
    try:
        encoder = build_encoder(image_shape)
        decoder = build_decoder(image_shape)
        feature_shape = tuple(encoder.output_shape[1:])
        head = build_latent_head(feature_shape)
        model = models.VAE(encoder, head, decoder, image_shape=image_shape, kl_weight=kl_weight,
                           kl_step_weights=kl_step_weights, seed=seed,
                           num_importance_samples=num_importance_samples,
                           num_validation_samples=num_validation_samples, name="vae")
    finally:
        keras.config.set_dtype_policy(previous)
    model.build()
    return model


@gin.configurable("optimizer", denylist=["model", "steps_per_epoch"])
def build_optimizers(model, steps_per_epoch: int, learning_rate: float = 3e-4,
                     group_learning_rate_scale=None, group_gradient_clip=None,
                     lr_halving_epochs=50, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8):
    """One Adam per parameter group, each with a step-wise halving schedule.

    Args:
      model: the built VAE.
      steps_per_epoch: optimizer steps per training epoch (for the schedule).
      learning_rate: base learning rate (paper: 0.003 crVAE, 0.0003 otherwise).
      group_learning_rate_scale: dict group -> factor on the base rate (original: latent_head 1/T).
      group_gradient_clip: dict group -> c, element-wise clamp to [-c, c] (original: latent_head 5).
      lr_halving_epochs: halve every this many epochs (paper: 50); None keeps the rate constant.
      beta_1, beta_2, epsilon: Adam (the Torch code's epsilon is 1e-8).

    Returns:
      (optimizers dict, clip values dict).
    """
    scales = dict(group_learning_rate_scale or {})
    clips = dict(group_gradient_clip or {})
    for mapping, what in ((scales, "group_learning_rate_scale"), (clips, "group_gradient_clip")):
        unknown = sorted(set(mapping) - set(models.GROUPS))
        if unknown:
            raise ValueError(f"optimizer.{what} has unknown groups {unknown}; groups are {list(models.GROUPS)}")
    optimizers = {}
    for name, variables in model.variable_groups().items():
        if not variables:
            continue
        rate = learning_rate * scales.get(name, 1.0)
        if lr_halving_epochs:
            rate = keras.optimizers.schedules.ExponentialDecay(
                rate, decay_steps=max(1, int(lr_halving_epochs * steps_per_epoch)), decay_rate=0.5, staircase=True)
        optimizers[name] = keras.optimizers.Adam(rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
                                                 name=f"{name}_adam")
    return optimizers, {name: c for name, c in clips.items() if c}


def current_learning_rate(optimizer) -> float:
    """The optimizer's learning rate at its current iteration (schedules evaluated)."""
    rate = optimizer.learning_rate
    return float(rate.numpy() if hasattr(rate, "numpy") else rate)


__all__ = ["build_dataset", "build_encoder", "build_decoder", "build_latent_head", "build_model",
           "build_optimizers", "current_learning_rate"]
