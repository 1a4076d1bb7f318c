"""Networks and layers (gin-free, serializable).

blocks                 channel blocks (time steps), StackedLSTM, BlockDense, CReLU, BatchNorm, LearnedBias, inits
heads                  the latent heads: FCHead (VAE), ConvHead (cVAE), BlockFCHead (bcVAE),
                       ChannelRecurrentHead (crVAE)
folding                BatchNorm folded into the convolutions for evaluation mode (FoldedInference)
discriminator_layers   TorchDropout, RowL2Normalize, MinibatchDiscrimination
networks               MNIST and RGB 64/128 encoders / decoders, discriminator trunk / head, Q head
"""
