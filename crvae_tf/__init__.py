"""crvae_tf: Channel-Recurrent VAEs (Shang, Sohn, Akata, Tian) in Keras 3 / TensorFlow."""

__version__ = "0.1.0"
