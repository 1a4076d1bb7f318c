"""The gin surface: configurable builder functions with stable selector names.

Only this module, the train/evaluate/export libraries and the binaries import gin. The selectors are
the same for every model variant:

    dataset.*      which images (`name`, `local_path`, `data_dir`, `download`, `validation_size`)
    encoder.*      the inference conv net (`base_channels`, `last_stride2_kernel`, batch-norm settings)
    latent_head.*  the variant: `kind` in {fc, conv, block_fc, channel_recurrent} and its sizes/switches
    decoder.*      the generation deconv net
    discriminator.* the adversarial family's discriminator trunk, real/fake head and Q head
    model.*        the family ('vae' | 'vae_gan') and objective (`kl_weight`, `kl_step_weights`,
                   `adversarial_weight`, `mutual_information_weight`, ...)
    optimizer.*    Adam per parameter group, per-group LR scale, gradient clamp and warm-up, LR halving
    train.*        the loop (`max_steps`, `batch_size`, `seed`, logging/checkpoint cadence)
    job.*          what `python -m crvae_tf.train` trains: `kind` 'model' (the above) or 'feature_net'
    feature_net.*  the offline feature network of sample quality (`evaluation.feature_classifier`)
"""

import inspect
from typing import NamedTuple

import gin
import keras

from crvae_tf import data as data_lib
from crvae_tf import models
from crvae_tf.architectures import blocks
from crvae_tf.architectures import heads
from crvae_tf.architectures import networks


def _dataset_selector(name):
    """A gin-registered source `<name>_source(**arguments) -> ImageSplits`: the value of
    `dataset.source = @<name>_source`, equivalent to `dataset.name = '<name>'`."""

    def source(**arguments):
        return data_lib.load_image_splits(name, **arguments)

    source.__name__ = source.__qualname__ = f"{name}_source"
    source.dataset_name = name
    return gin.register(source.__name__)(source)


# `dataset.name` strings are the documented aliases of the selectors @mnist_source, @binarized_mnist_source,
# @sprites_source, @celeba_source and @birds_source. Your own images: register a function
# `my_source(seed, **arguments) -> data.ImageSplits` with gin and bind `dataset.source = @my_source`; it receives
# `seed` and every `dataset.*` argument that is bound.
DATASET_SOURCES = {name: _dataset_selector(name) for name in data_lib.DATASET_NAMES}


@gin.configurable("dataset", denylist=["seed"])
def build_dataset(
    name: str = "sprites",
    source=None,
    local_path=None,
    data_dir=None,
    download: bool = True,
    validation_size=None,
    seed: int = 0,
    num_sprites=None,
    sprite_radius=None,
    sprite_scale=None,
    sprite_rotation=None,
    resolution=None,
    crop=None,
    box_scale=None,
    cub_path=None,
    birdsnap_path=None,
    nabirds_path=None,
    manual_dir=None,
    cache_dir=None,
    flip=None,
    max_corrupt_fraction: float = 0.01,
    fold=None,
    labeled_batch_size=None,
) -> data_lib.ImageSplits:
    """Loads the train/validation/test images (`data.load_image_splits`; RGB details in
    `crvae_tf.data.celeba` and `birds`).

    Args:
      name: 'sprites' (embedded, generated in code), 'mnist' (dynamically binarized per batch),
        'binarized_mnist' (static, Larochelle), 'celeba' or 'birds' (RGB, uint8, for the adversarial models).
      source: instead of `name`, a selector reference (`@celeba_source`, ...: the same datasets) or a
        gin-registered function of your own, `fn(seed, **arguments) -> data.ImageSplits`, which receives `seed`
        and the arguments below that are bound (not None).
      local_path: a local file or folder replacing the tfds download (keras-layout `mnist.npz` for
        'mnist'; the bit-packed `binarized_mnist.npz` for 'binarized_mnist'; for 'celeba' a folder of
        aligned CelebA images 000001.jpg ... at any resolution, e.g. img_align_celeba/).
      data_dir: tfds data directory (also the default cache root of 'celeba' / 'birds').
      download: let tfds download when the data is not prepared (never for tfds celeb_a: see manual_dir).
      validation_size: images held out from the training set for validation: 'mnist' (None: 10000); 'birds'
        and a partial CelebA copy (as many again for test) as a count or a fraction in (0, 1) (None: 0.05).
      seed: set by `train.seed` (not a binding of its own); seeds the hold-outs.
      num_sprites: 'sprites': `(num_train, num_validation, num_test)` (None: (8192, 1024, 1024)).
      sprite_radius: 'sprites': pixel radius of a shape at scale 1 (None: 9; the quickstart: 12).
      sprite_scale: 'sprites': `(low, high)` range of scales, fractions of the radius (None: (0.5, 1)).
      sprite_rotation: 'sprites': `(low, high)` range of rotations in degrees (None: (0, 360)).
      resolution: 'celeba' / 'birds': 64 or 128 (required).
      crop: 'celeba': None (face crop rows 40:188, columns 15:163 of the 178x218 image, scaled to the
        image's size), 'none' (pre-cropped images) or (top, left, height, width) in 178x218 coordinates.
      box_scale: 'birds': square ROI side / longer bounding-box side (None: 1.0).
      cub_path: 'birds': a CUB_200_2011 folder (images.txt, bounding_boxes.txt, train_test_split.txt,
        images/), or 'tfds' for tensorflow-datasets caltech_birds2011.
      birdsnap_path: 'birds': a Birdsnap folder (images.txt with bb_x1..bb_y2, test_images.txt, images/ or
        download/images/).
      nabirds_path: 'birds': a NABirds folder (images.txt, bounding_boxes.txt, train_test_split.txt, images/).
      manual_dir: tfds manual_dir with the original archives (tfds celeb_a: its five files).
      cache_dir: where 'celeba' / 'birds' are preprocessed to (None: <data_dir>/crvae_tf_cache or
        ~/.cache/crvae_tf).
      flip: 'celeba' / 'birds': random horizontal flips of training batches (None: True); `splits.flip`.
      max_corrupt_fraction: 'celeba' / 'birds': the largest fraction of corrupt images skipped (and listed
        in the cache manifest) before loading fails.
      fold: 'stl10': the official labeled fold 0..9 (None: all labeled images but a seeded validation hold-out;
        the only choice on tfds stl10, whose records lose the folds). 'stl10' also reads local_path (the
        stl10_binary/ folder), manual_dir (tfds: stl10_binary.tar.gz), resolution (None: 64), validation_size, flip.
      labeled_batch_size: 'stl10': labeled images per training step (None: train.batch_size).
    """
    arguments = dict(
        local_path=local_path,
        data_dir=data_dir,
        download=download,
        validation_size=validation_size,
        seed=seed,
        num_sprites=num_sprites,
        sprite_radius=sprite_radius,
        sprite_scale=sprite_scale,
        sprite_rotation=sprite_rotation,
        resolution=resolution,
        crop=crop,
        box_scale=box_scale,
        cub_path=cub_path,
        birdsnap_path=birdsnap_path,
        nabirds_path=nabirds_path,
        manual_dir=manual_dir,
        cache_dir=cache_dir,
        flip=flip,
        max_corrupt_fraction=max_corrupt_fraction,
        fold=fold,
        labeled_batch_size=labeled_batch_size,
    )
    if source is None:
        source = DATASET_SOURCES.get(name)
        if source is None:
            raise ValueError(
                f"Unknown dataset name {name!r}; supported names are {', '.join(map(repr, DATASET_SOURCES))} "
                "(set dataset.name), or bind dataset.source to a gin-registered source function."
            )
    elif getattr(source, "dataset_name", None) is None:  # a user's own source: what is bound, and the seed
        defaults = {"download": True, "max_corrupt_fraction": 0.01}
        arguments = {k: v for k, v in arguments.items() if v is not None and defaults.get(k, None) != v or k == "seed"}
    return source(**arguments)


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
    try:
        return data_lib.load_image_splits(name, local_path=local_path, data_dir=data_dir, download=download)
    except data_lib.DataUnavailableError as error:
        raise data_lib.DataUnavailableError(
            f"The test split of eval_dataset.name={name!r} is unavailable. "
            "For evaluation the binding is eval_dataset.local_path (not dataset.local_path), e.g. "
            "--gin_bindings=\"eval_dataset.local_path='/path/to/binarized_mnist.npz'\" "
            f"(or eval_dataset.name=None for the run's own test set). Details: {error}"
        ) from error


@gin.configurable("encoder", denylist=["image_shape"])
def build_encoder(
    image_shape=(28, 28, 1),
    base_channels: int = 32,
    last_stride2_kernel=None,
    batchnorm_momentum=None,
    batchnorm_epsilon=None,
    filter_gradient=None,
):
    """The inference network for the image shape: `networks.mnist_encoder` (28x28x1) or
    `networks.rgb_encoder` (64x64x3, 128x128x3); see their docstrings for the layers.

    Args:
      image_shape: from the dataset.
      base_channels: b (32 in the paper and the code).
      last_stride2_kernel: MNIST only: 3 (crVAE code, the default) or 5 (the code's VAE and cVAE).
      batchnorm_momentum: Keras momentum (= 1 - Torch momentum). Default: 0.9 for MNIST (Torch 0.1, the
        MNIST crVAE code), 0.1 for RGB (Torch `-mom 0.9`, the code's README).
      batchnorm_epsilon: default 1e-5 for MNIST, 1e-6 for RGB (README `-eps 1e-6`).
      filter_gradient: how training computes the convolutions' filter gradients (`blocks.Conv2D`): 'auto' (as one
        forward convolution where that was measured faster: bfloat16, maps of side <= 8, >= 128 channels, no GPU; the
        same maths, bfloat16 rounding), 'native' (TensorFlow's kernel) or 'forward_conv' (always). Default 'auto' (the
        MNIST crVAE's bfloat16 training step 5-6% faster; the CelebA-64 crVAE-GAN's 2.5-4.2%, every one of its 7
        chosen layers faster alone; gin/README.md).
    """
    image_shape = tuple(image_shape)
    filter_gradient = _check_filter_gradient("encoder", filter_gradient)
    if image_shape == MNIST_SHAPE:
        return networks.mnist_encoder(
            base_channels,
            3 if last_stride2_kernel is None else last_stride2_kernel,
            _default(batchnorm_momentum, 0.9),
            _default(batchnorm_epsilon, 1e-5),
            filter_gradient=filter_gradient,
        )
    resolution = _rgb_resolution(image_shape)
    if last_stride2_kernel is not None:
        raise ValueError("encoder.last_stride2_kernel applies to the 28x28 MNIST encoder only; remove the binding.")
    return networks.rgb_encoder(
        resolution,
        base_channels,
        _default(batchnorm_momentum, 0.1),
        _default(batchnorm_epsilon, 1e-6),
        filter_gradient=filter_gradient,
    )


def _check_filter_gradient(scope, filter_gradient):
    """The network's `filter_gradient`: the given one, or the default 'auto'."""
    if filter_gradient is None:
        return "auto"
    if filter_gradient not in blocks.FILTER_GRADIENTS:
        raise ValueError(
            f"{scope}.filter_gradient={filter_gradient!r} is not one of {blocks.FILTER_GRADIENTS}; set it to 'auto' "
            "(the default), 'native' or 'forward_conv'."
        )
    return filter_gradient


@gin.configurable("decoder", denylist=["image_shape"])
def build_decoder(
    image_shape=(28, 28, 1),
    base_channels: int = 32,
    batchnorm_momentum=None,
    batchnorm_epsilon=None,
    filter_gradient=None,
):
    """The generation network: `networks.mnist_decoder` (Bernoulli logits) or `networks.rgb_decoder`
    (tanh, [-1, 1]). Batch-norm defaults and `filter_gradient` as `encoder.*`."""
    image_shape = tuple(image_shape)
    filter_gradient = _check_filter_gradient("decoder", filter_gradient)
    if image_shape == MNIST_SHAPE:
        return networks.mnist_decoder(
            base_channels,
            _default(batchnorm_momentum, 0.9),
            _default(batchnorm_epsilon, 1e-5),
            filter_gradient=filter_gradient,
        )
    return networks.rgb_decoder(
        _rgb_resolution(image_shape),
        base_channels,
        batchnorm_momentum=_default(batchnorm_momentum, 0.1),
        batchnorm_epsilon=_default(batchnorm_epsilon, 1e-6),
        filter_gradient=filter_gradient,
    )


MNIST_SHAPE = (28, 28, 1)
RGB_RESOLUTIONS = (64, 128)


def _default(value, default):
    return default if value is None else value


def _rgb_resolution(image_shape) -> int:
    height, width, channels = image_shape
    if channels != 3 or height != width or height not in RGB_RESOLUTIONS:
        raise ValueError(
            f"No network for images of shape {tuple(image_shape)}: the networks take 28x28x1 (MNIST) "
            f"or square RGB at {RGB_RESOLUTIONS} (set dataset.resolution)."
        )
    return int(height)


# Baseline VAE-GAN discriminator widths (porting notes 6.2); the crVAE-GAN's are (64, 128, 256, 256)
# (porting notes 6.1).
BASELINE_DISCRIMINATOR_WIDTHS = (32, 64, 128, 256)


@gin.configurable("discriminator", denylist=["image_shape", "latent_shape", "with_q_head", "seed"])
def build_discriminator(
    image_shape,
    latent_shape=None,
    with_q_head: bool = False,
    seed=None,
    widths=(64, 128, 256, 256),
    units: int = 1024,
    num_kernels: int = 100,
    kernel_dim: int = 5,
    dropout_rate: float = 0.5,
    torch_dropout: bool = True,
):
    """The discriminator trunk, its real/fake head and (for the MI term) the Q head (porting notes 6).

    Args:
      image_shape: from the dataset.
      latent_shape: (h, w, c) of the conv latent that Q predicts (from the latent head).
      with_q_head: build Q (when model.mutual_information_weight > 0).
      seed: seeds the dropout masks (from `train.seed`).
      widths: conv widths of the trunk, one per stride-1 conv + 2x2 max-pool stage (crVAE-GAN code:
        64, 128, 256, 256; the VAE-GAN baseline code: 32, 64, 128, 256; 128x128 adds one stage).
      units: the head's Dense width (1024).
      num_kernels, kernel_dim: minibatch discrimination (100 kernels x 5 dims).
      dropout_rate: the trunk's spatial dropout and the head's dropout (0.5).
      torch_dropout: the code's Torch dropout semantics (no train-time rescale; spatial dropout also at
        inference) instead of Keras' inverted dropout.

    Returns:
      (trunk, head, q_head or None).
    """
    resolution = _rgb_resolution(tuple(image_shape))
    trunk = networks.discriminator_trunk(
        resolution, tuple(widths), dropout_rate=dropout_rate, torch_dropout=torch_dropout, seed=seed
    )
    feature_shape = tuple(trunk.output_shape[1:])
    head = networks.discriminator_head(
        feature_shape,
        units=units,
        num_kernels=num_kernels,
        kernel_dim=kernel_dim,
        dropout_rate=dropout_rate,
        torch_dropout=torch_dropout,
        seed=None if seed is None else seed + 100,
    )
    q_head = networks.q_head(feature_shape, latent_shape=tuple(latent_shape)) if with_q_head else None
    return trunk, head, q_head


def _head_selector(head_class, name):
    """A gin-registered factory `name(feature_shape, **arguments)` for `head_class`: the value of
    `latent_head.head_fn = @name`. Its hyperparameters stay `latent_head.*` bindings (one home each)."""

    def make_head(feature_shape, **arguments):
        return head_class(feature_shape, **arguments)

    make_head.__name__ = make_head.__qualname__ = name
    make_head.head_class = head_class
    return gin.register(name)(make_head)


# `latent_head.kind` strings (the recipes' spelling) are the documented aliases of the selectors `@<kind>_head`:
# @fc_head, @conv_head, @block_fc_head, @channel_recurrent_head.
HEAD_KINDS = {kind: _head_selector(head_class, f"{kind}_head") for kind, head_class in heads.HEADS.items()}
_ALWAYS_PASSED = {"feature_shape", "batchnorm_momentum", "batchnorm_epsilon", "name"}


def head_arguments(head_class) -> set:
    """The `latent_head.*` arguments a head class accepts: the named parameters of its constructors up to
    `LatentHead` (read from the signatures, so a new head needs no hand-kept list)."""
    names = set()
    for cls in head_class.__mro__:
        if "__init__" in vars(cls):
            names.update(
                p.name
                for p in inspect.signature(cls.__init__).parameters.values()
                if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name != "self"
            )
        if cls is heads.LatentHead:
            break
    return names - _ALWAYS_PASSED


@gin.configurable("latent_head", denylist=["feature_shape"])
def build_latent_head(
    feature_shape,
    kind=None,
    head_fn=None,
    latent_dim=None,
    latent_channels=None,
    num_time_steps=None,
    loc_path=None,
    hidden_units=None,
    num_layers=None,
    recurrent_inference=None,
    recurrent_generation=None,
    inference_batchnorm=None,
    generation_batchnorm=None,
    lstm_jit_compile=None,
    batchnorm_momentum: float = 0.9,
    batchnorm_epsilon: float = 1e-5,
):
    """Builds the latent head that defines the model variant.

    Args:
      feature_shape: (h, w, c) of the encoder output (from the encoder).
      kind: 'fc' (VAE), 'conv' (cVAE), 'block_fc' (bcVAE) or 'channel_recurrent' (crVAE): the string aliases
        of the selectors `@fc_head`, `@conv_head`, `@block_fc_head`, `@channel_recurrent_head`.
      head_fn: instead of `kind`, a selector reference, e.g. `latent_head.head_fn = @channel_recurrent_head`,
        or any gin-registered `fn(feature_shape, **arguments) -> LatentHead` of your own (it receives every
        argument bound below).
      latent_dim: 'fc' only (default 1024).
      latent_channels: latent channels of the conv-shaped latents (default 64: 64x4x4 = 1024).
      num_time_steps: T, the number of channel blocks (paper T = 8; default 8, 1 for 'fc').
      loc_path: 'dense' (MNIST crVAE code) or 'conv' (paper G.3, 64x64 code) mean path + learned offset.
      hidden_units, num_layers: LSTM width (512) and depth (2) of the crVAE head.
      recurrent_inference, recurrent_generation: crVAE switches (Table 1 ablations).
      inference_batchnorm: BatchNorm after the inference LSTM (the 64x64 RGB code has one).
      generation_batchnorm: BatchNorm after the generation LSTM (not in the authors' code; the fix of the early
        posterior collapse that the crVAE recipes switch on, docs/crvae_collapse.md).
      lstm_jit_compile: 'auto' (default), 'stack' (= True), 'cells' or False: how the crVAE LSTMs' training passes
        use XLA. 'stack' compiles the whole stack (fastest in float32 on CPU), 'cells' only each step's element-wise
        work, leaving the matmuls to oneDNN and keeping the cell state in float32 (fastest in bfloat16, where XLA's
        CPU matmuls are slow); 'auto' = 'stack' in float32, 'cells' in mixed precision (`blocks.StackedLSTM` has
        the figures). Evaluation, sampling and exports never use XLA. Numbers differ from False by rounding.
      batchnorm_momentum, batchnorm_epsilon: the BatchNorm at the decoder entry (crVAE, cVAE heads);
        recipes share one gin macro with encoder.* and decoder.*.
    """
    given = {
        key: value
        for key, value in dict(
            latent_dim=latent_dim,
            latent_channels=latent_channels,
            num_time_steps=num_time_steps,
            loc_path=loc_path,
            hidden_units=hidden_units,
            num_layers=num_layers,
            recurrent_inference=recurrent_inference,
            recurrent_generation=recurrent_generation,
            inference_batchnorm=inference_batchnorm,
            generation_batchnorm=generation_batchnorm,
            lstm_jit_compile=lstm_jit_compile,
        ).items()
        if value is not None
    }
    if (kind is None) == (head_fn is None):
        raise ValueError(
            "Set exactly one of latent_head.kind (one of "
            f"{sorted(HEAD_KINDS)}) and latent_head.head_fn (e.g. @channel_recurrent_head); got kind={kind!r}, "
            f"head_fn={head_fn!r}."
        )
    if kind is not None:
        if kind not in HEAD_KINDS:
            raise ValueError(f"latent_head.kind={kind!r} is not one of {sorted(HEAD_KINDS)}")
        head_fn = HEAD_KINDS[kind]
    head_class = getattr(head_fn, "head_class", None)
    label = f"latent_head.kind={kind!r}" if kind is not None else f"latent_head.head_fn={head_fn.__name__}"
    if head_class is not None:
        accepted = head_arguments(head_class)
        unused = sorted(set(given) - accepted)
        if unused:
            raise ValueError(f"{label} does not use {unused}; remove those bindings (it accepts {sorted(accepted)}).")
        if head_class is not heads.FCHead:
            given.setdefault("num_time_steps", 8)
    return head_fn(
        feature_shape,
        batchnorm_momentum=batchnorm_momentum,
        batchnorm_epsilon=batchnorm_epsilon,
        name="latent_head",
        **given,
    )


PRECISIONS = ("float32", "mixed_bfloat16")


def _vae_family(encoder, head, decoder, image_shape, seed, num_importance_samples, num_validation_samples, **kwargs):
    return models.VAE(
        encoder,
        head,
        decoder,
        image_shape=image_shape,
        seed=seed,
        num_importance_samples=num_importance_samples,
        num_validation_samples=num_validation_samples,
        name="vae",
        **kwargs,
    )


def _adversarial_parts(label, encoder, head, image_shape, seed, num_importance_samples, kwargs):
    """Checks an adversarial family's settings and builds its discriminator: (trunk, discriminator, q_head)."""
    if num_importance_samples != 1 or tuple(image_shape) == MNIST_SHAPE:
        raise ValueError(
            f"model.family={label!r} trains RGB images with one posterior sample; got "
            f"image_shape={tuple(image_shape)}, num_importance_samples={num_importance_samples}."
        )
    latent_shape = (head.feature_shape[:2] + (head.latent_channels,)) if hasattr(head, "latent_channels") else None
    with_q = bool(kwargs.get("mutual_information_weight"))
    return build_discriminator(image_shape, latent_shape, with_q_head=with_q, seed=seed)


def _vae_gan_family(
    encoder, head, decoder, image_shape, seed, num_importance_samples, num_validation_samples, **kwargs
):
    del num_validation_samples  # the adversarial family selects on its validation loss
    trunk, discriminator, q_head = _adversarial_parts(
        "vae_gan (dataset 'celeba' or 'birds')", encoder, head, image_shape, seed, num_importance_samples, kwargs
    )
    return models.VAEGAN(
        encoder,
        head,
        decoder,
        trunk,
        discriminator,
        q_head,
        image_shape=image_shape,
        seed=seed,
        name="vae_gan",
        **kwargs,
    )


@gin.configurable("class_head", denylist=["feature_shape", "seed"])
def build_class_head(feature_shape, seed=None, num_classes: int = 10, dropout_rate: float = 0.5):
    """The semi-supervised discriminator's class head on the trunk's features (`networks.class_head`; Sec. 4.5).

    Args:
      feature_shape: the discriminator trunk's output shape (h, w, c).
      seed: seeds its dropout (from `train.seed`).
      num_classes: 10 for STL-10.
      dropout_rate: its spatial dropout (CC-GAN's netC: SpatialDropout; 0.5).
    """
    return networks.class_head(
        feature_shape, num_classes=num_classes, dropout_rate=dropout_rate, seed=None if seed is None else seed + 200
    )


def _semi_supervised_family(
    encoder, head, decoder, image_shape, seed, num_importance_samples, num_validation_samples, **kwargs
):
    del num_validation_samples  # selection is on the validation accuracy (crvae_tf.evaluation.classification)
    trunk, discriminator, q_head = _adversarial_parts(
        "semi_supervised_vae_gan (dataset.name='stl10')",
        encoder,
        head,
        image_shape,
        seed,
        num_importance_samples,
        kwargs,
    )
    return models.SemiSupervisedVAEGAN(
        encoder,
        head,
        decoder,
        trunk,
        discriminator,
        q_head,
        class_head=build_class_head(tuple(trunk.output_shape[1:]), seed=seed),
        image_shape=image_shape,
        seed=seed,
        name="semi_supervised_vae_gan",
        **kwargs,
    )


def _family_selector(model_class, factory, name):
    """A gin-registered family `name` (the value of `model.family = @name`): builds `model_class` from the
    networks; `model_class` tells which `model.*` arguments it accepts."""
    factory.model_class = model_class
    factory.__name__ = factory.__qualname__ = name
    return gin.register(name)(factory)


# `model.family` strings are the documented aliases of the selectors @vae and @vae_gan.
FAMILIES = {
    "vae": _family_selector(models.VAE, _vae_family, "vae"),
    "vae_gan": _family_selector(models.VAEGAN, _vae_gan_family, "vae_gan"),
    "semi_supervised_vae_gan": _family_selector(
        models.SemiSupervisedVAEGAN, _semi_supervised_family, "semi_supervised_vae_gan"
    ),
}
# Arguments of the model classes that the builder itself supplies (networks, shapes, seed, name, IWAE settings).
_STRUCTURAL = {
    "self",
    "encoder",
    "latent_head",
    "decoder",
    "discriminator_trunk",
    "discriminator",
    "q_head",
    "class_head",
    "image_shape",
    "seed",
    "name",
    "num_importance_samples",
    "num_validation_samples",
}


def family_arguments(model_class) -> set:
    """The optional `model.*` objective arguments a model class accepts (read from its constructor, and from its
    base classes' where the constructor forwards `*args` / `**kwargs` to them)."""
    names = set()
    for cls in model_class.__mro__:
        if "__init__" not in vars(cls) or cls is keras.Model:
            continue
        parameters = inspect.signature(cls.__init__).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
            break
    return names - _STRUCTURAL


@gin.configurable("model", denylist=["image_shape", "seed"])
def build_model(
    image_shape=(28, 28, 1),
    family: str = "vae",
    kl_weight: float = 1.0,
    kl_step_weights=None,
    seed=None,
    precision: str = "float32",
    num_importance_samples: int = 1,
    num_validation_samples: int = 5,
    adversarial_weight=None,
    adversarial_loss=None,
    mutual_information_weight=None,
    mutual_information_step_weights=None,
    reconstruction_normalization=None,
    discriminator_accuracy_threshold=None,
    encoder_adversarial_gradient=None,
    legacy_swapped_prior_weights=None,
    legacy_unweighted_prior_mutual_information=None,
    generator_batch=None,
    adversarial_prior_samples=None,
    classification_weight=None,
    fold_batch_norm: bool = True,
):
    """Builds (and builds the weights of) the model with the configured encoder, latent head and decoder.

    Args:
      image_shape: from the dataset.
      family: 'vae' (`models.VAE`: Bernoulli likelihood, binary images) or 'vae_gan'
        (`models.VAEGAN`: MSE reconstruction + discriminator, RGB images; the latent head picks
        the VAE-GAN baseline ('fc') or the crVAE-GAN ('channel_recurrent')), or 'semi_supervised_vae_gan'
        (`models.SemiSupervisedVAEGAN`: + a class head on the discriminator, STL-10, Sec. 4.5); the strings are
        aliases of the selectors `@vae`, `@vae_gan` and `@semi_supervised_vae_gan` (`model.family = @vae_gan`).
      kl_weight: alpha, per image (see `crvae_tf.models` / `crvae_tf.models.vae_gan`).
      kl_step_weights: optional per-time-step KL weights, one per time step (alpha_t = kl_weight * w_t).
      seed: from `train.seed`.
      precision: 'float32', or 'mixed_bfloat16' (float32 weights, bfloat16 convolutions, matmuls and
        activations, float32 losses): 1.5-1.6x the float32 training throughput measured on a 2-core
        AVX512-BF16 CPU (`python -m crvae_tf.bench --gin_bindings="model.precision='mixed_bfloat16'"`).
      num_importance_samples: 'vae': k; > 1 trains on the IWAE_k bound (needs kl_weight = 1).
      num_validation_samples: 'vae': k of the IWAE_k bound reported on the validation split and used to
        keep the best checkpoint (authors: 5).
      adversarial_weight: 'vae_gan': beta (default 0.0125, the code's Birds crVAE-GAN).
      adversarial_loss: 'vae_gan': 'non_saturating' (default, code) or 'minimax' (paper App. H).
      mutual_information_weight: 'vae_gan': kappa of the MI term (default 0; code: 0.02 for crVAE-GAN).
      mutual_information_step_weights: 'vae_gan': per-time-step MI weights (code: 0.1 1.5 1.5 1.25 0.1 0.1 1 1).
      reconstruction_normalization: 'vae_gan': 'per_pixel' (default; the paper's division by C*H*W)
        or 'per_image'.
      discriminator_accuracy_threshold: 'vae_gan': skip the discriminator step above this batch
        accuracy (default 0.9, paper H / code margin 0.1).
      encoder_adversarial_gradient: 'vae_gan': the encoder also minimises the adversarial and MI terms
        (default True: Eq. 4 and the crVAE-GAN code; the VAE-GAN baseline code: False).
      legacy_swapped_prior_weights, legacy_unweighted_prior_mutual_information: 'vae_gan': reproduce
        the two defects of the original crVAE-GAN loop (default False; see `crvae_tf.models.vae_gan`).
      generator_batch: 'vae_gan': 'separate' (default, the code: the generator decodes posterior and prior samples
        in two passes) or 'joint' (one pass over both: BatchNorm statistics of the mixture, the same in training
        and evaluation; `crvae_tf.models.vae_gan.VAEGAN`).
      adversarial_prior_samples: 'vae_gan' / 'semi_supervised_vae_gan': whether prior samples are fakes for the
        discriminator and in the generator's adversarial term (default True for 'vae_gan'; False, reconstructions
        only, for 'semi_supervised_vae_gan': the STL-10 protocol of Sec. 4.5).
      classification_weight: 'semi_supervised_vae_gan': the weight of the class loss on labeled images (1.0).
      fold_batch_norm: evaluation mode (validation, likelihood estimates, grids, exports) runs the encoder and
        decoder with each BatchNorm folded into the convolution before it (`architectures.folding`): the same
        function up to float32 rounding (~1e-6 relative), measured ~5% faster for the MNIST decoder on a CPU.
        False: Keras' layers as they are. Training never folds.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"model.precision={precision!r} is not one of {list(PRECISIONS)}.")
    if isinstance(family, str):
        if family not in FAMILIES:
            raise ValueError(f"model.family={family!r} is not one of {list(FAMILIES)}.")
        family = FAMILIES[family]
    label = f"model.family={family.__name__!r}"
    optional = {
        name: value
        for name, value in dict(
            adversarial_weight=adversarial_weight,
            adversarial_loss=adversarial_loss,
            mutual_information_weight=mutual_information_weight,
            mutual_information_step_weights=mutual_information_step_weights,
            reconstruction_normalization=reconstruction_normalization,
            discriminator_accuracy_threshold=discriminator_accuracy_threshold,
            encoder_adversarial_gradient=encoder_adversarial_gradient,
            legacy_swapped_prior_weights=legacy_swapped_prior_weights,
            legacy_unweighted_prior_mutual_information=legacy_unweighted_prior_mutual_information,
            generator_batch=generator_batch,
            adversarial_prior_samples=adversarial_prior_samples,
            classification_weight=classification_weight,
        ).items()
        if value is not None
    }
    model_class = getattr(family, "model_class", None)
    if model_class is not None:
        unused = sorted(set(optional) - family_arguments(model_class))
        if unused:
            owners = [name for name, f in FAMILIES.items() if set(unused) <= family_arguments(f.model_class)]
            hint = f"set model.family = {owners[0]!r}" if owners else "check the spelling"
            raise ValueError(f"model.{unused} do not apply to {label}; remove them or {hint}.")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)  # captured by every layer built below
    try:
        encoder = build_encoder(image_shape)
        decoder = build_decoder(image_shape)
        feature_shape = tuple(encoder.output_shape[1:])
        head = build_latent_head(feature_shape)
        model = family(
            encoder,
            head,
            decoder,
            image_shape=tuple(image_shape),
            seed=seed,
            num_importance_samples=num_importance_samples,
            num_validation_samples=num_validation_samples,
            kl_weight=kl_weight,
            kl_step_weights=kl_step_weights,
            **optional,
        )
    finally:
        keras.config.set_dtype_policy(previous)
    model.fold_batch_norm = bool(fold_batch_norm)
    model.build()
    return model


# The image budget of a validation pass (`train.num_validation_images`): IWAE-5 on 10,000 MNIST images at the
# recipes' widths takes minutes on a CPU (it dominated a 5-step smoke run: issue #16).
DEFAULT_NUM_VALIDATION_IMAGES = 1024


class TrainSettings(NamedTuple):
    """The training loop's settings (`train.*`); see `train_settings` for each field."""

    max_steps: int
    batch_size: int
    seed: int
    jit_compile: bool
    log_every_steps: int
    image_every_steps: int
    validation_every_steps: object
    num_validation_images: object
    num_image_samples: int
    progress_bar: bool
    checkpoint_every_steps: int
    checkpoint_every_secs: object
    keep_checkpoints: object
    discriminator_collapse_steps: object
    distribution: str = "default"
    devices: object = None
    synchronized_batch_statistics: bool = True
    steps_per_execution: object = "auto"
    diagnostics: str = "logged_steps"


@gin.configurable("train")
def train_settings(
    # The loop.
    max_steps: int = gin.REQUIRED,
    batch_size: int = 128,
    seed: int = 0,
    jit_compile: bool = False,
    steps_per_execution: object = "auto",
    diagnostics: str = "logged_steps",
    # Logging and evaluation.
    log_every_steps: int = 50,
    image_every_steps: int = 500,
    validation_every_steps=None,
    num_validation_images=DEFAULT_NUM_VALIDATION_IMAGES,
    num_image_samples: int = 64,
    progress_bar: bool = True,
    # Checkpoints.
    checkpoint_every_steps: int = 500,
    checkpoint_every_secs: float = 300.0,
    max_checkpoints_to_keep=3,
    keep_checkpoints=None,
    # Adversarial family.
    discriminator_collapse_steps=1000,
    # More than one device (`crvae_tf.training.distribution`).
    distribution: str = "default",
    devices=None,
    synchronized_batch_statistics: bool = True,
) -> TrainSettings:
    """The settings of `crvae_tf.training.loop.train` (gin: `train.*`), checked.

    `num_validation_images` is the budget of every validation pass (the periodic ones and the one at the end of the
    run): the first N validation images (None: all of them). `max_checkpoints_to_keep` bounds the disk a run uses:
    that many checkpoints in `checkpoints/` plus the best one (None: keep every checkpoint); `keep_checkpoints` is
    its former name, still read in older runs' configs.

    `distribution` selects the `tf.distribute` strategy ('default': one device; 'mirrored': the local GPUs, or
    `devices`; 'multi_worker': the workers of TF_CONFIG; 'tpu'), with `batch_size` the global batch split over the
    replicas; `synchronized_batch_statistics` (True) computes BatchNorm moments over the global batch and lets
    minibatch discrimination compare each example with the global batch, so that a step does not depend on the
    number of replicas (False: per-replica statistics, no cross-replica traffic in the layers).

    `steps_per_execution` ('auto' or N >= 1) runs up to N training steps per `tf.function` call (`crvae_tf.training.
    execution`): the periodic tasks, the guard and the numbers are those of one step per call; an interrupt is acted
    on at the end of a call. 'auto' sizes N so that a call lasts about a second; under 'multi_worker' it is 1.

    `diagnostics` says which steps record the per-group training diagnostics (`grad_norm/`, `param_norm/`,
    `update_ratio/`): 'logged_steps' (default) only the steps whose summaries are written, so each logged value is
    that step's; the steps between them skip the copy of every parameter the update ratio needs (measured 36-57 ms
    of a 1.3 s MNIST crVAE step on 2 CPU cores). 'every_step': every step, logged as the mean since the last summary.

    ARGS_DOC
        Returns:
          `TrainSettings`.
    """
    if not (steps_per_execution == "auto" or (type(steps_per_execution) is int and steps_per_execution >= 1)):
        raise ValueError(
            "train.steps_per_execution must be 'auto' or an integer >= 1 (training steps per tf.function call), "
            f"got {steps_per_execution!r}"
        )
    if diagnostics not in ("logged_steps", "every_step"):
        raise ValueError(f"train.diagnostics must be 'logged_steps' or 'every_step', got {diagnostics!r}")
    if distribution == "multi_worker" and steps_per_execution not in ("auto", 1):
        raise ValueError(
            f"train.steps_per_execution={steps_per_execution} is not supported with train.distribution='multi_worker' "
            "(the workers' calls must hold the same collectives); leave it at 'auto' (one step per call there) or 1."
        )
    if max_steps is None or int(max_steps) < 1:
        raise ValueError(f"train.max_steps must be a positive integer, got {max_steps}")
    for name, value in (
        ("batch_size", batch_size),
        ("log_every_steps", log_every_steps),
        ("image_every_steps", image_every_steps),
        ("checkpoint_every_steps", checkpoint_every_steps),
    ):
        if int(value) < 1:
            raise ValueError(f"train.{name} must be >= 1, got {value}")
    if keep_checkpoints is not None:
        max_checkpoints_to_keep = keep_checkpoints
    if max_checkpoints_to_keep is not None and int(max_checkpoints_to_keep) < 1:
        raise ValueError(
            f"train.max_checkpoints_to_keep must be >= 1 or None (keep all), got {max_checkpoints_to_keep}"
        )
    if num_validation_images is not None and int(num_validation_images) < 1:
        raise ValueError(f"train.num_validation_images must be >= 1 or None (all), got {num_validation_images}")
    return TrainSettings(
        int(max_steps),
        int(batch_size),
        seed,
        bool(jit_compile),
        int(log_every_steps),
        int(image_every_steps),
        validation_every_steps,
        num_validation_images,
        int(num_image_samples),
        bool(progress_bar),
        int(checkpoint_every_steps),
        checkpoint_every_secs,
        None if max_checkpoints_to_keep is None else int(max_checkpoints_to_keep),
        discriminator_collapse_steps,
        str(distribution),
        None if devices is None else [str(d) for d in devices],
        bool(synchronized_batch_statistics),
        steps_per_execution,
        str(diagnostics),
    )


@gin.configurable("optimizer", denylist=["model", "steps_per_epoch"])
def build_optimizers(
    model,
    steps_per_epoch: int,
    learning_rate: float = 3e-4,
    group_learning_rate_scale=None,
    group_gradient_clip=None,
    group_warmup=None,
    lr_halving_epochs=50,
    beta_1: float = 0.9,
    beta_2: float = 0.999,
    epsilon: float = 1e-8,
):
    """One Adam per parameter group, each with a step-wise halving schedule.

    Args:
      model: the built model (its `GROUPS`: encoder, latent_head, decoder, and for the adversarial family
        discriminator_trunk, discriminator (the real/fake head), q_head).
      steps_per_epoch: optimizer steps per training epoch (for the schedule).
      learning_rate: base learning rate (paper: 0.003 crVAE, 0.0003 otherwise).
      group_learning_rate_scale: dict group -> factor on the base rate (original: latent_head 1/T; the
        crVAE-GAN's discriminator trunk 1/2; the VAE-GAN baseline's whole discriminator 1/2).
      group_gradient_clip: dict group -> c, element-wise clamp to [-c, c] (original: latent_head 5).
      group_warmup: dict group -> [[until_step, factor], ...]: the rate is multiplied by `factor` while that
        optimizer has taken fewer than `until_step` steps (the code's adam_gan: {'discriminator':
        [[10, 0.02], [30, 0.2]]}, `models.WarmupSchedule`).
      lr_halving_epochs: halve every this many epochs (paper: 50); None keeps the rate constant.
      beta_1, beta_2, epsilon: Adam (the Torch code's epsilon is 1e-8).

    Returns:
      (optimizers dict, clip values dict).
    """
    scales = dict(group_learning_rate_scale or {})
    clips = dict(group_gradient_clip or {})
    warmups = dict(group_warmup or {})
    for mapping, what in (
        (scales, "group_learning_rate_scale"),
        (clips, "group_gradient_clip"),
        (warmups, "group_warmup"),
    ):
        unknown = sorted(set(mapping) - set(model.GROUPS))
        if unknown:
            raise ValueError(
                f"optimizer.{what} has unknown groups {unknown}; this model's groups are {list(model.GROUPS)}"
            )
    optimizers = {}
    for name, variables in model.variable_groups().items():
        if not variables:
            continue
        rate = learning_rate * scales.get(name, 1.0)
        if lr_halving_epochs:
            rate = keras.optimizers.schedules.ExponentialDecay(
                rate, decay_steps=max(1, int(lr_halving_epochs * steps_per_epoch)), decay_rate=0.5, staircase=True
            )
        if warmups.get(name):
            rate = models.WarmupSchedule(rate, warmups[name])
        optimizers[name] = models.FusedAdam(rate, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon, name=f"{name}_adam")
    return optimizers, {name: c for name, c in clips.items() if c}


def current_learning_rate(optimizer) -> float:
    """The optimizer's learning rate at its current iteration (schedules evaluated)."""
    rate = optimizer.learning_rate
    return float(rate.numpy() if hasattr(rate, "numpy") else rate)


JOB_KINDS = ("model", "feature_net")


@gin.configurable("job")
def job_kind(kind: str = "model") -> str:
    """What `python -m crvae_tf.train` trains (gin: `job.kind`), checked.

    Args:
      kind: 'model' (a recipe's model: `crvae_tf.training.loop.train`, `train.*`) or 'feature_net' (the offline
        feature network of sample quality, `feature_net_settings` and `dataset.*`: gin/feature_net/*.gin, trained by
        `evaluation.feature_classifier.train_and_save`).
    """
    if kind not in JOB_KINDS:
        raise ValueError(f"job.kind={kind!r} is not a job; the kinds are {', '.join(repr(k) for k in JOB_KINDS)}.")
    return kind


@gin.configurable("feature_net")
def feature_net_settings(
    num_epochs: int = 3,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    widths=(32, 64),
    feature_dim: int = 128,
    seed: int = 0,
    max_train_images=None,
    blur_sigma_range=None,
    blur_fraction: float = 0.5,
) -> dict:
    """The feature network's recipe (`job.kind = 'feature_net'`; `evaluation.feature_classifier`), checked.

    Args:
      num_epochs: passes over the training split.
      batch_size: images per Adam step.
      learning_rate: Adam's learning rate.
      widths: the two conv layers' channels.
      feature_dim: units of the 'features' layer (the proxy FID's feature dimension).
      seed: weight initialisation, epoch permutations, and the dataset's hold-out / sprite generation
        (`dataset.*`'s seed, as `train.seed` for a model).
      max_train_images: None, or train on the first N training images only (tests).
      blur_sigma_range: None, or (low, high): a seeded `blur_fraction` of each epoch's training images is blurred
        with a Gaussian of standard deviation ~ U(low, high) pixels (`feature_classifier.train_classifier`), so the
        network also names the shapes of blurred images (a VAE's samples).
      blur_fraction: the fraction of each epoch's images blurred when blur_sigma_range is set.
    """
    for name, value in (("num_epochs", num_epochs), ("batch_size", batch_size), ("feature_dim", feature_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"feature_net.{name}={value!r} must be a positive int.")
    if max_train_images is not None and (not isinstance(max_train_images, int) or max_train_images < 2):
        raise ValueError(f"feature_net.max_train_images={max_train_images!r} must be None or an int >= 2.")
    if not learning_rate > 0:
        raise ValueError(f"feature_net.learning_rate={learning_rate!r} must be > 0.")
    return dict(
        num_epochs=num_epochs,
        batch_size=batch_size,
        learning_rate=float(learning_rate),
        widths=[int(w) for w in widths],
        feature_dim=feature_dim,
        seed=int(seed),
        max_train_images=max_train_images,
        blur_sigma_range=None if blur_sigma_range is None else [float(v) for v in blur_sigma_range],
        blur_fraction=float(blur_fraction),
    )


__all__ = [
    "build_dataset",
    "build_encoder",
    "build_decoder",
    "build_discriminator",
    "build_latent_head",
    "build_model",
    "build_optimizers",
    "current_learning_rate",
]
