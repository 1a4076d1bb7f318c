"""Encoder, decoder and discriminator networks, following the authors' Torch code.

* `mnist_encoder` / `mnist_decoder`: 28x28 binary images (VAE, cVAE, bcVAE, crVAE); described below.
* `rgb_encoder` / `rgb_decoder`: CelebA / Birds RGB images in [-1, 1] at 64x64 or 128x128 (VAE-GAN,
  crVAE-GAN), 4x4 features in and out.
* `discriminator_trunk`, `discriminator_head`, `q_head`: the adversarial discriminator, split as in the
  code into three modules with their own optimizers (trunk LR/2, head LR with warm-up, Q LR; porting notes 10.1).
  The RGB builders' docstrings carry their architecture tables.

Gin-free; each builder returns a `keras.Sequential` (serializable, `get_config` included).

Shapes below are height x width x channels for base width b (b = 32 in the paper and the code,
porting notes 2.1 and 4.1). `Cs_n kxk pP` is a conv with n filters, stride s, kernel k, symmetric padding P;
convs whose padding Keras `same` reproduces (every stride-1 3x3 conv, the encoder's 15 -> 8 conv) are `same`;
the others use explicit symmetric `ZeroPadding2D` + `valid`, because Keras `same` pads asymmetrically there and
would shift pixels relative to Torch (`_conv_block`).

Encoder, 28x28x1 -> 4x4x8b:
    C2_b 5x5 p3 -> BN -> CReLU          15x15x2b   (15, not 14: padding 3, as the code)
    C1_2b 3x3 p1 -> BN -> LeakyReLU(0.1) 15x15x2b
    C2_2b 3x3 p1 -> BN -> CReLU          8x8x4b
    C1_4b 3x3 p1 -> BN -> LeakyReLU     8x8x4b
    C2_4b kxk -> BN -> CReLU             4x4x8b    (k=3 p1 in crVAE; k=5 p2 in the code's VAE and cVAE)
    C1_8b 3x3 p1 -> BN -> LeakyReLU     4x4x8b

Decoder, 4x4x8b -> 28x28x1 Bernoulli logits:
    D_8b 4x4 s2 p1 -> BN -> Leaky  8x8;  C1_8b -> BN -> Leaky
    D_4b 4x4 s2 p1 -> BN -> Leaky  16x16; C1_4b -> BN -> Leaky
    D_2b 4x4 s2 p2 -> BN -> Leaky  30x30 (Torch padding 2 = valid 34x34 cropped by 2); C1_2b -> BN -> Leaky
    C1_1 3x3 valid                 28x28 logits (the sigmoid lives in the Bernoulli likelihood)

Differences from the paper's appendix G (documented in README "Paper vs code"): the paper's MNIST
decoder lists an extra D32/C32 stage, a 1x1 output conv and BN + LeakyReLU before the sigmoid, which
cannot produce 28x28; the code's layers above are the default.
"""

import keras

from crvae_tf.architectures import blocks
from crvae_tf.architectures import discriminator_layers


def _same_is_torch_padding(size, kernel_size, stride, padding) -> bool:
    """Whether Keras `same` on a `size`-pixel side computes Torch's convolution with symmetric padding p.

    `same` gives ceil(n / s) outputs with floor(total / 2) zeros before the first pixel, total =
    max((ceil(n / s) - 1) s + k - n, 0); Torch gives floor((n + 2p - k) / s) + 1 outputs with p zeros before it
    (any zeros after the last pixel that no window reaches do not matter). The two agree when both numbers do.
    A stride-1 conv with odd k and p = k // 2 agrees at every size (`size` None: only that case is claimed).
    """
    if stride == 1 and kernel_size % 2 == 1 and padding == kernel_size // 2:
        return True
    if size is None:
        return False
    outputs = -(-size // stride)
    total = max((outputs - 1) * stride + kernel_size - size, 0)
    return outputs == (size + 2 * padding - kernel_size) // stride + 1 and total // 2 == padding


def _conv_block(
    filters, kernel_size, stride, padding, activation, momentum, epsilon, name, size=None, filter_gradient="auto"
):
    """Torch `SpatialConvolution(k, s, p)` -> BN -> CReLU / LeakyReLU(0.1) on maps of side `size` (if known).

    Where Keras `same` computes the same convolution as Torch's padding p (`_same_is_torch_padding`: every
    stride-1 3x3 conv here, and the encoder's 15 -> 8 stride-2 conv), the conv is `same` and the padding happens
    inside oneDNN's kernel; every other padded conv is `ZeroPadding2D(p)` + `valid`. On 2 idle CPU cores, forward +
    backward of one 3x3 layer at batch 128 (float32): 15x15x64 29.5 ms `same` against 33.7 ms pad + valid,
    8x8x128 31.1 against 37.0, 4x4x256 30.1 against 40.6, stride 2 on 15x15x64 11.1-11.8 against 13.6-13.8 (the
    explicit pad costs a copy forward and a slice of the larger input gradient backward; PyTorch: 30.1, 30.5,
    29.4, 10.2). A `same` block keeps an `Identity` where its `ZeroPadding2D` stood: checkpoints name a
    Sequential's layers by position, so every later layer keeps its name and runs trained before still restore.
    The convolution is `blocks.Conv2D`, whose `filter_gradient` decides how training computes its filter gradient.
    """
    same = _same_is_torch_padding(size, kernel_size, stride, padding)
    block = []
    if same:
        block.append(keras.layers.Identity(name=f"{name}_pad"))
    elif padding:
        block.append(keras.layers.ZeroPadding2D(padding, name=f"{name}_pad"))
    block += [
        blocks.Conv2D(
            filters,
            kernel_size,
            strides=stride,
            padding="same" if same else "valid",
            name=f"{name}_conv",
            kernel_initializer=blocks.conv_init(kernel_size, filters),
            filter_gradient=filter_gradient,
        ),
        blocks.batch_norm(momentum, epsilon, name=f"{name}_bn"),
        blocks.CReLU(name=f"{name}_crelu")
        if activation == "crelu"
        else keras.layers.LeakyReLU(negative_slope=0.1, name=f"{name}_leaky"),
    ]
    return block


def mnist_encoder(
    base_channels: int = 32,
    last_stride2_kernel: int = 3,
    batchnorm_momentum: float = 0.9,
    batchnorm_epsilon: float = 1e-5,
    name: str = "encoder",
    filter_gradient: str = "auto",
) -> keras.Sequential:
    """The authors' MNIST inference network: `[batch, 28, 28, 1] -> [batch, 4, 4, 8*base_channels]`.

    Args:
      base_channels: b; 32 reproduces the paper (256 output channels).
      last_stride2_kernel: kernel of the third stride-2 conv: 3 (crVAE code) or 5 (VAE/cVAE code).
      batchnorm_momentum: Keras momentum (= 1 - Torch momentum). crVAE code: 0.9 (Torch 0.1);
        VAE/cVAE code: 0.1 (Torch 0.9, hard-coded there).
      batchnorm_epsilon: 1e-5 (crVAE code) or 1e-6 (VAE/cVAE code).
      name: Keras name.
      filter_gradient: of every convolution (`blocks.Conv2D`): 'auto', 'native' or 'forward_conv'.
    """
    if last_stride2_kernel not in (3, 5):
        raise ValueError(f"last_stride2_kernel must be 3 or 5, got {last_stride2_kernel}")
    b, bn, fg = base_channels, (batchnorm_momentum, batchnorm_epsilon), {"filter_gradient": filter_gradient}
    net = [keras.Input((28, 28, 1))]
    net += _conv_block(b, 5, 2, 3, "crelu", *bn, "conv1", **fg)
    net += _conv_block(2 * b, 3, 1, 1, "leaky", *bn, "conv2", **fg)
    net += _conv_block(2 * b, 3, 2, 1, "crelu", *bn, "conv3", size=15, **fg)
    net += _conv_block(4 * b, 3, 1, 1, "leaky", *bn, "conv4", **fg)
    net += _conv_block(4 * b, last_stride2_kernel, 2, last_stride2_kernel // 2, "crelu", *bn, "conv5", **fg)
    net += _conv_block(8 * b, 3, 1, 1, "leaky", *bn, "conv6", **fg)
    return keras.Sequential(net, name=name)


def _deconv_block(filters, padding, momentum, epsilon, name, filter_gradient="auto"):
    """Torch SpatialFullConvolution(k=4, s=2, p) -> BN -> LeakyReLU(0.1); p = 1 is `blocks.Conv2DTranspose` (with
    `filter_gradient`), other p `blocks.TorchConv2DTranspose`."""
    if padding == 1:
        deconv = [
            blocks.Conv2DTranspose(
                filters,
                4,
                strides=2,
                padding="same",
                name=f"{name}_deconv",
                kernel_initializer=blocks.conv_init(4, filters),
                filter_gradient=filter_gradient,
            )
        ]
    else:  # (n-1)*2 - 2p + 4 (`blocks.TorchConv2DTranspose`)
        deconv = [
            blocks.TorchConv2DTranspose(
                filters, torch_padding=padding, name=f"{name}_deconv", kernel_initializer=blocks.conv_init(4, filters)
            ),
            # Where a Cropping2D stood until the transposed convolution cut its own border: checkpoints name the
            # decoder's layers by position, so the layers after it keep theirs and older runs still restore.
            keras.layers.Identity(name=f"{name}_crop"),
        ]
    return deconv + [
        blocks.batch_norm(momentum, epsilon, name=f"{name}_bn"),
        keras.layers.LeakyReLU(negative_slope=0.1, name=f"{name}_leaky"),
    ]


def mnist_decoder(
    base_channels: int = 32,
    batchnorm_momentum: float = 0.9,
    batchnorm_epsilon: float = 1e-5,
    name: str = "decoder",
    filter_gradient: str = "auto",
) -> keras.Sequential:
    """The authors' MNIST generation network: `[batch, 4, 4, 8b] -> [batch, 28, 28, 1]` Bernoulli logits.
    `filter_gradient`: of the convolutions and p = 1 transposed convolutions (`blocks.Conv2D`)."""
    b, bn, fg = base_channels, (batchnorm_momentum, batchnorm_epsilon), {"filter_gradient": filter_gradient}
    net = [keras.Input((4, 4, 8 * b))]
    net += _deconv_block(8 * b, 1, *bn, "deconv1", **fg)
    net += _conv_block(8 * b, 3, 1, 1, "leaky", *bn, "conv1", **fg)
    net += _deconv_block(4 * b, 1, *bn, "deconv2", **fg)
    net += _conv_block(4 * b, 3, 1, 1, "leaky", *bn, "conv2", **fg)
    net += _deconv_block(2 * b, 2, *bn, "deconv3")  # 16 -> 30
    net += _conv_block(2 * b, 3, 1, 1, "leaky", *bn, "conv3", **fg)
    net += [
        blocks.NarrowConv2D(
            1,
            3,
            padding="valid",
            name="logits",  # 30 -> 28
            kernel_initializer=blocks.conv_init(3, 1),
        )
    ]
    return keras.Sequential(net, name=name)


# ---------------------------------------------------------------------------------------------------------
# RGB networks of the adversarial models (crVAE-GAN, VAE-GAN): CelebA / Birds at 64x64 and 128x128.
# ---------------------------------------------------------------------------------------------------------

RGB_RESOLUTIONS = (64, 128)


def _check_resolution(resolution, what):
    if resolution not in RGB_RESOLUTIONS:
        raise ValueError(
            f"{what}: resolution must be one of {RGB_RESOLUTIONS} (the paper's CelebA / Birds sizes), "
            f"got {resolution!r}; other sizes need their own stage list"
        )


def _torch_conv(filters, kernel_size, fan_in, name):
    """Stride-1 same-padded conv with Torch's default init: weights and bias U(+-1/sqrt(k*k*C_in)) (porting notes 10.2).

    For odd kernels at stride 1 Keras `same` padding is symmetric, i.e. Torch padding k // 2.
    """
    init = blocks.torch_uniform(kernel_size * kernel_size * fan_in)
    return keras.layers.Conv2D(
        filters, kernel_size, padding="same", kernel_initializer=init, bias_initializer=init, name=name
    )


def _dropout(rate, spatial, torch_dropout, seed, name):
    """Torch7 v1 dropout (`discriminator_layers.TorchDropout`) or the Keras layer with the usual rescaling semantics."""
    if torch_dropout:
        return discriminator_layers.TorchDropout(
            rate, spatial=spatial, stochastic_inference=spatial, seed=seed, name=name
        )
    if spatial:
        return keras.layers.SpatialDropout2D(rate, seed=seed, name=name)
    return keras.layers.Dropout(rate, seed=seed, name=name)


def _seed(seed, index):
    return None if seed is None else int(seed) + index


def rgb_encoder(
    resolution: int = 64,
    base_channels: int = 32,
    batchnorm_momentum: float = 0.1,
    batchnorm_epsilon: float = 1e-6,
    name: str = "encoder",
    filter_gradient: str = "auto",
) -> keras.Sequential:
    """The authors' RGB inference network: `[batch, R, R, 3]` (pixels in [-1, 1]) -> `[batch, 4, 4, 8b]`.

    Code `models/allconv_lstm.lua` L28-67 (crVAE-GAN) = `allconv_baseline.lua` L23-62 (VAE-GAN); porting notes 2.2.
    Shapes H x W x C for base width b (b = 32: the code's `baseChannels`, 256 output channels); every conv
    has the authors' ConvInit (U(+-1/sqrt(k*k*C_out)), zero bias), every BN gamma 1 / beta 0:

        layer                                        64x64 input       128x128 input
        input CReLU ([x, -x] -> ReLU)                64x64x6           128x128x6
        conv0  C2_b  5x5 p2 -> BN -> CReLU           (absent)          64x64x2b
        conv1  C2_b  5x5 p2 -> BN -> CReLU           32x32x2b          32x32x2b
        conv2  C2_2b 3x3 p1 -> BN -> CReLU           16x16x4b          16x16x4b
        conv3  C2_4b 3x3 p1 -> BN -> CReLU           8x8x8b            8x8x8b
        conv4  C1_8b 3x3 p1 -> BN -> LeakyReLU(0.1)  8x8x8b            8x8x8b
        conv5  C2_8b 3x3 p1 -> BN -> CReLU           4x4x16b           4x4x16b
        conv6  C1_8b 3x3 p1 -> BN -> LeakyReLU(0.1)  4x4x8b            4x4x8b

    Paper vs code: the paper's G.1 64x64 list has three stride-2 convs, no input CReLU and would end at
    8x8; the code's list above (four stride-2 convs at 64, ending at 4x4) is used (porting notes 2.2, 11).

    128x128 (our choice, porting notes 2.3 [n/v]): the authors' 128x128 results came from an unreleased Stage-2
    upsampling network applied to Stage-1 64x64 samples; this port trains directly at 128 and keeps the
    4x4 feature map (and so the 64x4x4 latent) by prepending one stride-2 stage, `conv0` (C2_b 5x5 p2 -> BN
    -> CReLU), in front of the unchanged 64x64 network. The first two convolutions are then 5x5, as
    paper G.1 states for 128x128. Layer names of the 64x64 part are identical at both resolutions.

    Args:
      resolution: 64 or 128.
      base_channels: b; 32 reproduces the code.
      batchnorm_momentum: Keras momentum (= 1 - Torch momentum): the README's `-mom 0.9` is Keras 0.1.
      batchnorm_epsilon: the README's `-eps 1e-6`.
      name: Keras name.
      filter_gradient: of every convolution (`blocks.Conv2D`): 'auto' (default), 'native' or 'forward_conv'.
    """
    _check_resolution(resolution, "rgb_encoder")
    b, bn, fg = base_channels, (batchnorm_momentum, batchnorm_epsilon), {"filter_gradient": filter_gradient}
    net = [keras.Input((resolution, resolution, 3)), blocks.CReLU(name="input_crelu")]
    if resolution == 128:
        net += _conv_block(b, 5, 2, 2, "crelu", *bn, "conv0", **fg)
    net += _conv_block(b, 5, 2, 2, "crelu", *bn, "conv1", **fg)
    net += _conv_block(2 * b, 3, 2, 1, "crelu", *bn, "conv2", **fg)
    net += _conv_block(4 * b, 3, 2, 1, "crelu", *bn, "conv3", **fg)
    net += _conv_block(8 * b, 3, 1, 1, "leaky", *bn, "conv4", **fg)
    net += _conv_block(8 * b, 3, 2, 1, "crelu", *bn, "conv5", **fg)
    net += _conv_block(8 * b, 3, 1, 1, "leaky", *bn, "conv6", **fg)
    return keras.Sequential(net, name=name)


def rgb_decoder(
    resolution: int = 64,
    base_channels: int = 32,
    feature_channels=None,
    batchnorm_momentum: float = 0.1,
    batchnorm_epsilon: float = 1e-6,
    name: str = "decoder",
    filter_gradient: str = "auto",
) -> keras.Sequential:
    """The authors' RGB generation network: `[batch, 4, 4, F]` -> `[batch, R, R, 3]`, tanh outputs in [-1, 1].

    Code `models/allconv_lstm.lua` L142-172 = `allconv_baseline.lua` L79-109; porting notes 4.2. F is the latent
    head's output channels (`feature_channels`, default 8b = 256). Dk is a 4x4 stride-2 transposed conv with
    Torch padding 1 (exactly 2x upsampling); ConvInit everywhere (U(+-1/sqrt(k*k*C_out)), zero bias):

        layer                                        64x64 output      128x128 output
        deconv1 D_8b -> BN -> LeakyReLU(0.1)         8x8x8b            8x8x8b
        conv1   C1_8b 3x3 p1 -> BN -> LeakyReLU      8x8x8b            8x8x8b
        deconv2 D_4b -> BN -> LeakyReLU              16x16x4b          16x16x4b
        deconv3 D_2b -> BN -> LeakyReLU              32x32x2b          32x32x2b
        deconv4 D_2b -> BN -> LeakyReLU              64x64x2b          64x64x2b
        deconv5 D_b  -> BN -> LeakyReLU              (absent)          128x128xb
        conv2   C1_c 3x3 p1 -> BN -> LeakyReLU       64x64x2b          128x128xb   (c = channels before it)
        output  C1_3 3x3 p1 -> tanh                  64x64x3           128x128x3

    Widths: the code's decoder widths are 256, 256, 128, 64, 64, 64 (b = 32), i.e. 8b, 8b, 4b, 2b, 2b, 2b, so
    `base_channels` shrinks them uniformly for tests. The tanh is part of the network (the MSE
    reconstruction loss compares with pixels in [-1, 1]).

    Paper vs code: paper G.2 lists D32 as the last deconv, no C1_64, a 1x1 output conv and BN + Leaky before
    the tanh; the code's layers above are used (porting notes 4.2, 11).

    128x128 (our choice, porting notes 2.3 [n/v]; the authors used an unreleased Stage-2 upsampler): one more
    D-block, `deconv5` D_b (half the channels, like the paper's final D32), after `deconv4`; the
    following 3x3 conv keeps b channels. The 64x64 layer names are unchanged.

    Args:
      resolution: 64 or 128.
      base_channels: b; 32 reproduces the code.
      feature_channels: channels of the input features; None means 8b.
      batchnorm_momentum, batchnorm_epsilon: as `rgb_encoder` (Keras 0.1 = Torch 0.9; 1e-6).
      name: Keras name.
      filter_gradient: of the convolutions and transposed convolutions (`blocks.Conv2D`), 'auto' by default.
    """
    _check_resolution(resolution, "rgb_decoder")
    b, bn, fg = base_channels, (batchnorm_momentum, batchnorm_epsilon), {"filter_gradient": filter_gradient}
    feature_channels = 8 * b if feature_channels is None else int(feature_channels)
    net = [keras.Input((4, 4, feature_channels))]
    net += _deconv_block(8 * b, 1, *bn, "deconv1", **fg)
    net += _conv_block(8 * b, 3, 1, 1, "leaky", *bn, "conv1", **fg)
    net += _deconv_block(4 * b, 1, *bn, "deconv2", **fg)
    net += _deconv_block(2 * b, 1, *bn, "deconv3", **fg)
    net += _deconv_block(2 * b, 1, *bn, "deconv4", **fg)
    last = 2 * b
    if resolution == 128:
        last = b
        net += _deconv_block(last, 1, *bn, "deconv5", **fg)
    net += _conv_block(last, 3, 1, 1, "leaky", *bn, "conv2", **fg)
    net += [
        keras.layers.Conv2D(3, 3, padding="same", name="output_conv", kernel_initializer=blocks.conv_init(3, 3)),
        keras.layers.Activation("tanh", name="tanh"),
    ]
    return keras.Sequential(net, name=name)


def discriminator_trunk(
    resolution: int = 64,
    widths=(64, 128, 256, 256),
    dropout_rate: float = 0.5,
    torch_dropout: bool = True,
    seed=None,
    name: str = "discriminator_trunk",
) -> keras.Sequential:
    """The discriminator's conv trunk ("Dfeat"): `[batch, R, R, 3]` -> `[batch, 4, 4, widths[-1]]`.

    Code `models/allconv_lstm.lua` L178-200 (crVAE-GAN) and `allconv_baseline.lua` L115-140 (VAE-GAN);
    porting notes 6.1, 6.2. Shared by the GAN head (`discriminator_head`) and the MI head (`q_head`); it has its own
    optimizer in the code (LR/2). Per stage s with width w_s, no batch norm:

        conv k x k stride 1, same padding (Torch p = k//2) -> MaxPool 2x2 -> ReLU -> SpatialDropout(0.5)

    with k = 5 except the last stage (k = 3). Shapes H x W x C (crVAE-GAN widths 64, 128, 256, 256):

        stage     64x64 input       128x128 input
        stage0    (absent)          64x64x64      (5x5, width widths[0])
        stage1    32x32x64          32x32x64
        stage2    16x16x128         16x16x128
        stage3    8x8x256           8x8x256
        stage4    4x4x256           4x4x256       (3x3)

    Widths: crVAE-GAN code 64-128-256-256 (the default); VAE-GAN baseline code 32-64-128-256. Paper G.4
    (32-64-128-128, "stride 2" convs) matches neither; the code is used (porting notes 6.2, 11).

    Init: Torch defaults, weights AND biases U(+-1/sqrt(k*k*C_in)) (the code applies ConvInit to the
    encoder/decoder/D head only; porting notes 10.2).

    Dropout: `torch_dropout=True` is Torch `nn.SpatialDropout(0.5, true)`: whole channels dropped with no
    rescaling, in training AND inference (stochastic inference; `discriminator_layers.TorchDropout`).
    `torch_dropout=False` uses Keras `SpatialDropout2D` (1/(1-p) rescale in training, identity in inference).

    128x128 (our choice; no 128 training code exists, porting notes 2.3): one more 5x5 stage, `stage0`, in front,
    repeating the first width, so the trunk still ends at 4x4. `widths` may also give all 5 widths.

    Args:
      resolution: 64 or 128.
      widths: 4 stage widths (at 128 the first one is repeated for stage0), or 5 widths at 128.
      dropout_rate: p of every SpatialDropout.
      torch_dropout: Torch (True) or Keras (False) dropout semantics.
      seed: base seed of the dropout layers (stage i uses seed + i), or None.
      name: Keras name.
    """
    _check_resolution(resolution, "discriminator_trunk")
    widths = tuple(int(w) for w in widths)
    num_stages = 4 if resolution == 64 else 5
    if resolution == 128 and len(widths) == 4:
        widths = (widths[0],) + widths
    if len(widths) != num_stages:
        raise ValueError(
            f"discriminator_trunk at {resolution}x{resolution} needs {num_stages} widths "
            f"(4 at 64, 4 or 5 at 128), got {len(widths)}: {widths}"
        )
    first = 1 if resolution == 64 else 0
    net = [keras.Input((resolution, resolution, 3))]
    fan_in = 3
    for index, width in enumerate(widths):
        stage = f"stage{first + index}"
        kernel = 3 if index == num_stages - 1 else 5
        net += [
            _torch_conv(width, kernel, fan_in, f"{stage}_conv"),
            keras.layers.MaxPooling2D(2, name=f"{stage}_pool"),
            keras.layers.ReLU(name=f"{stage}_relu"),
            _dropout(dropout_rate, True, torch_dropout, _seed(seed, index), f"{stage}_dropout"),
        ]
        fan_in = width
    return keras.Sequential(net, name=name)


def discriminator_head(
    feature_shape,
    units: int = 1024,
    num_kernels: int = 100,
    kernel_dim: int = 5,
    dropout_rate: float = 0.5,
    torch_dropout: bool = True,
    seed=None,
    name: str = "discriminator",
) -> keras.Sequential:
    """The GAN head of the discriminator: trunk features `[batch, H, W, C]` -> `[batch, 1]` LOGITS.

    Code `models/allconv_lstm.lua` L222-229 (crVAE-GAN) = `allconv_baseline.lua` L141-148; porting notes 6.1, 6.3:

        layer                                              output (H x W x C = 4x4x256, defaults)
        to_chw + flatten (Torch nn.View, (C, H, W) order)  H*W*C = 4096
        dense       Dense(units), bias 0                   1024
        normalize   x / sqrt(sum x^2 + 1e-10)              1024   (`discriminator_layers.RowL2Normalize`)
        dropout     Dropout(0.5), Torch v1                 1024   (no train rescale; x(1-p) in inference)
        relu        ReLU                                   1024
        minibatch   MinibatchDiscrimination(100, 5)        1124   (`discriminator_layers.MinibatchDiscrimination`)
        logits      Dense(1), bias 0                       1

    The code ends with a Sigmoid and BCE on probabilities; here the head returns logits and the sigmoid lives
    in the loss (`sigmoid_cross_entropy_with_logits`), which is the same function but numerically stable.
    Init (porting notes 10.2): Dense and minibatch weights Torch default U(+-1/sqrt(fan_in)), all biases zero (the
    code zeroes every Linear bias of the D head). The channel-major flatten only fixes the order of the
    first Dense's input rows, so weights port 1:1 from Torch. Paper G.4 has FC512; the code's 1024 is used.
    The Torch head dropout is plain `nn.Dropout(0.5, true)` (no stochastic inference); `torch_dropout=False`
    uses Keras `Dropout` instead. The minibatch features depend on the whole batch: feed real and fake
    images in ONE batch, as the code does (porting notes 5.3 phase C).

    Args:
      feature_shape: (H, W, C) of the trunk output, e.g. `trunk.output_shape[1:]`.
      units: width of the first Dense (1024 in the code).
      num_kernels, kernel_dim: B and C of the minibatch discrimination (100 and 5 in the code).
      dropout_rate: p of the dropout.
      torch_dropout: Torch (True) or Keras (False) dropout semantics.
      seed: seed of the dropout layer, or None.
      name: Keras name.
    """
    feature_shape = tuple(int(d) for d in feature_shape)
    if len(feature_shape) != 3:
        raise ValueError(f"discriminator_head: feature_shape must be (height, width, channels), got {feature_shape}")
    fan_in = feature_shape[0] * feature_shape[1] * feature_shape[2]
    net = [
        keras.Input(feature_shape),
        keras.layers.Permute((3, 1, 2), name="to_chw"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(
            units, kernel_initializer=blocks.torch_uniform(fan_in), bias_initializer="zeros", name="dense"
        ),
        discriminator_layers.RowL2Normalize(1e-10, name="normalize"),
        _dropout(dropout_rate, False, torch_dropout, seed, "dropout"),
        keras.layers.ReLU(name="relu"),
        discriminator_layers.MinibatchDiscrimination(num_kernels, kernel_dim, name="minibatch"),
        keras.layers.Dense(
            1, kernel_initializer=blocks.torch_uniform(units + num_kernels), bias_initializer="zeros", name="logits"
        ),
    ]
    return keras.Sequential(net, name=name)


def class_head(
    feature_shape, num_classes: int = 10, dropout_rate: float = 0.5, seed=None, name: str = "class_head"
) -> keras.Sequential:
    """The semi-supervised discriminator's class head (paper Sec. 4.5, following CC-GAN's `netC`): trunk features
    `[batch, H, W, C]` -> `[batch, num_classes]` class LOGITS (softmax in the loss).

        layer                                 output
        dropout   SpatialDropout2D(p)         H x W x C   (CC-GAN: SpatialDropout)
        flatten                               H*W*C
        logits    Dense(num_classes)          num_classes (CC-GAN: a conv whose kernel covers the 2x2 map, i.e. a
                                                           dense layer over the whole feature map)

    Keras inverted dropout (train-time rescale, identity at inference). Init: Torch default U(+-1/sqrt(fan_in)),
    bias zero.
    """
    feature_shape = tuple(int(d) for d in feature_shape)
    fan_in = feature_shape[0] * feature_shape[1] * feature_shape[2]
    net = [
        keras.Input(feature_shape),
        keras.layers.SpatialDropout2D(dropout_rate, seed=seed, name="dropout"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(
            int(num_classes), kernel_initializer=blocks.torch_uniform(fan_in), bias_initializer="zeros", name="logits"
        ),
    ]
    return keras.Sequential(net, name=name)


def q_head(
    feature_shape,
    latent_shape=(4, 4, 64),
    hidden_channels: int = 64,
    batchnorm_momentum: float = 0.1,
    batchnorm_epsilon: float = 1e-6,
    name: str = "q_head",
) -> keras.Sequential:
    """The MI head "Q" (code `recon`): trunk features `[batch, H, W, C]` -> predicted u, `[batch, latent_dim]`.

    Code `models/allconv_lstm.lua` L203-217; porting notes 6.1 (the WACV mutual-information regulariser: Q predicts
    u = `ChannelRecurrentHead.transform(z)`, the generation path output before b_dec, from the trunk
    features of the generated image). Shapes for the defaults (trunk 4x4x256, latent 4x4x64):

        layer                                                     output
        conv1   C1_hidden 3x3 p1 -> BN -> LeakyReLU(0.2)          4x4x64
        conv2   C1_Clat 1x1 -> BN -> LeakyReLU(0.1)               4x4x64
        to_chw + flatten (Torch nn.View, (C, H, W) order)         H*W*C_lat = 1024
        dense   Dense(prod(latent_shape))                         1024
        offset  + learned bias (`blocks.LearnedBias`, U(+-0.01*sqrt(3)))  1024

    Output layout: the flat channel-major (C, H, W) vector of the module docstring of `layers` ("Latent
    layout"), i.e. the same layout as `ChannelRecurrentHead.transform(z)`, so the MI loss is a plain MSE
    and the per-time-step weights apply to contiguous slices. Dense unit k is element (c, h, w) with
    k = c*H*W + h*W + w, exactly Torch's `nn.View(z, w, w)` of the Linear output; the code's 64x4x4
    `nn.Add` is the same per-element bias on that view, so no reshape is needed here.

    Init (porting notes 10.2): convs keep Torch defaults (weights and biases U(+-1/sqrt(k*k*C_in))); BN gamma
    ~ U(0, 1), beta 0 (the code only resets encoder/decoder BN to 1); Dense weights and bias U(+-1/sqrt(fan_in))
    (the Q Linear bias is not zeroed). BN uses the model options (README eps 1e-6, Torch momentum 0.9 =
    Keras 0.1), as in the code. `hidden_channels` is the code's D base width (64) and the second conv
    has the latent channel count `nf` (64).

    Args:
      feature_shape: (H, W, C) of the trunk output.
      latent_shape: (H, W, C_lat) of u; the output has prod(latent_shape) units.
      hidden_channels: width of the first conv.
      batchnorm_momentum, batchnorm_epsilon: Keras momentum (= 1 - Torch) and epsilon of both BN layers.
      name: Keras name.
    """
    feature_shape = tuple(int(d) for d in feature_shape)
    latent_shape = tuple(int(d) for d in latent_shape)
    if len(feature_shape) != 3 or len(latent_shape) != 3:
        raise ValueError(
            f"q_head: feature_shape and latent_shape must be (height, width, channels), got "
            f"{feature_shape} and {latent_shape}"
        )
    height, width, channels = feature_shape
    latent_channels = latent_shape[-1]
    latent_dim = latent_shape[0] * latent_shape[1] * latent_channels
    fan_in = height * width * latent_channels

    def bn(bn_name):
        return blocks.BatchNorm(
            momentum=batchnorm_momentum,
            epsilon=batchnorm_epsilon,
            name=bn_name,
            gamma_initializer=keras.initializers.RandomUniform(0.0, 1.0),
        )

    net = [
        keras.Input(feature_shape),
        _torch_conv(hidden_channels, 3, channels, "conv1_conv"),
        bn("conv1_bn"),
        keras.layers.LeakyReLU(negative_slope=0.2, name="conv1_leaky"),
        _torch_conv(latent_channels, 1, hidden_channels, "conv2_conv"),
        bn("conv2_bn"),
        keras.layers.LeakyReLU(negative_slope=0.1, name="conv2_leaky"),
        keras.layers.Permute((3, 1, 2), name="to_chw"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(
            latent_dim,
            kernel_initializer=blocks.torch_uniform(fan_in),
            bias_initializer=blocks.torch_uniform(fan_in),
            name="dense",
        ),
        blocks.LearnedBias(name="offset"),
    ]
    return keras.Sequential(net, name=name)
