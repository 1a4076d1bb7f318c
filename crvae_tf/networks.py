"""Encoder and decoder networks for 28x28 binary images, following the authors' Torch code.

Gin-free; each builder returns a `keras.Sequential` (serializable, `get_config` included).

Shapes below are height x width x channels for base width b (b = 32 in the paper and the code,
notes 2.1 and 4.1). `Cs_n kxk pP` is a conv with n filters, stride s, kernel k, symmetric padding P;
stride-2 convs use explicit symmetric `ZeroPadding2D` + `valid`, because Keras `same` pads
asymmetrically at stride 2 and would shift pixels relative to Torch.

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

from crvae_tf import layers as L


def _conv_block(filters, kernel_size, stride, padding, activation, momentum, epsilon, name):
    block = []
    if padding:
        block.append(keras.layers.ZeroPadding2D(padding, name=f"{name}_pad"))
    block += [
        keras.layers.Conv2D(filters, kernel_size, strides=stride, padding="valid", name=f"{name}_conv",
                            kernel_initializer=L.conv_init(kernel_size, filters)),
        L.batch_norm(momentum, epsilon, name=f"{name}_bn"),
        L.CReLU(name=f"{name}_crelu") if activation == "crelu"
        else keras.layers.LeakyReLU(negative_slope=0.1, name=f"{name}_leaky"),
    ]
    return block


def mnist_encoder(base_channels: int = 32, last_stride2_kernel: int = 3, batchnorm_momentum: float = 0.9,
                  batchnorm_epsilon: float = 1e-5, name: str = "encoder") -> keras.Sequential:
    """The authors' MNIST inference network: `[batch, 28, 28, 1] -> [batch, 4, 4, 8*base_channels]`.

    Args:
      base_channels: b; 32 reproduces the paper (256 output channels).
      last_stride2_kernel: kernel of the third stride-2 conv: 3 (crVAE code) or 5 (VAE/cVAE code).
      batchnorm_momentum: Keras momentum (= 1 - Torch momentum). crVAE code: 0.9 (Torch 0.1);
        VAE/cVAE code: 0.1 (Torch 0.9, hard-coded there).
      batchnorm_epsilon: 1e-5 (crVAE code) or 1e-6 (VAE/cVAE code).
      name: Keras name.
    """
    if last_stride2_kernel not in (3, 5):
        raise ValueError(f"last_stride2_kernel must be 3 or 5, got {last_stride2_kernel}")
    b, bn = base_channels, (batchnorm_momentum, batchnorm_epsilon)
    net = [keras.Input((28, 28, 1))]
    net += _conv_block(b, 5, 2, 3, "crelu", *bn, "conv1")
    net += _conv_block(2 * b, 3, 1, 1, "leaky", *bn, "conv2")
    net += _conv_block(2 * b, 3, 2, 1, "crelu", *bn, "conv3")
    net += _conv_block(4 * b, 3, 1, 1, "leaky", *bn, "conv4")
    net += _conv_block(4 * b, last_stride2_kernel, 2, last_stride2_kernel // 2, "crelu", *bn, "conv5")
    net += _conv_block(8 * b, 3, 1, 1, "leaky", *bn, "conv6")
    return keras.Sequential(net, name=name)


def _deconv_block(filters, padding, momentum, epsilon, name):
    """Torch SpatialFullConvolution(k=4, s=2, p) -> BN -> LeakyReLU(0.1)."""
    if padding == 1:
        deconv = [keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="same", name=f"{name}_deconv",
                                               kernel_initializer=L.conv_init(4, filters))]
    else:  # (n-1)*2 - 2p + 4: a valid transposed conv followed by a symmetric crop of p - 0
        deconv = [keras.layers.Conv2DTranspose(filters, 4, strides=2, padding="valid", name=f"{name}_deconv",
                                               kernel_initializer=L.conv_init(4, filters)),
                  keras.layers.Cropping2D(padding, name=f"{name}_crop")]
    return deconv + [L.batch_norm(momentum, epsilon, name=f"{name}_bn"),
                     keras.layers.LeakyReLU(negative_slope=0.1, name=f"{name}_leaky")]


def mnist_decoder(base_channels: int = 32, batchnorm_momentum: float = 0.9, batchnorm_epsilon: float = 1e-5,
                  name: str = "decoder") -> keras.Sequential:
    """The authors' MNIST generation network: `[batch, 4, 4, 8b] -> [batch, 28, 28, 1]` Bernoulli logits."""
    b, bn = base_channels, (batchnorm_momentum, batchnorm_epsilon)
    net = [keras.Input((4, 4, 8 * b))]
    net += _deconv_block(8 * b, 1, *bn, "deconv1")
    net += _conv_block(8 * b, 3, 1, 1, "leaky", *bn, "conv1")
    net += _deconv_block(4 * b, 1, *bn, "deconv2")
    net += _conv_block(4 * b, 3, 1, 1, "leaky", *bn, "conv2")
    net += _deconv_block(2 * b, 2, *bn, "deconv3")   # 16 -> 30
    net += _conv_block(2 * b, 3, 1, 1, "leaky", *bn, "conv3")
    net += [keras.layers.Conv2D(1, 3, padding="valid", name="logits",   # 30 -> 28
                                kernel_initializer=L.conv_init(3, 1))]
    return keras.Sequential(net, name=name)
