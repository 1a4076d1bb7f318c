"""Files a run leaves behind, written atomically (temp file in the same folder, then `os.replace`).

A reader polling the folder never sees a half-written file, and a crash mid-write never corrupts the
previous version. Gin-free.
"""

import math
import os
import tempfile

import numpy as np
import tensorflow as tf


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Writes `payload` to `path` atomically."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def image_grid(images, columns=None, padding: int = 1) -> np.ndarray:
    """Tiles images into one picture.

    Args:
      images: `[num_images, height, width, channels]` floats in [0, 1].
      columns: images per row (default: ceil(sqrt(num_images))).
      padding: pixels of white border between tiles.

    Returns:
      uint8 `[rows*(height+padding)+padding, columns*(width+padding)+padding, channels]`.
    """
    images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    if images.ndim != 4:
        raise ValueError(f"image_grid expects [num_images, height, width, channels], got shape {images.shape}")
    n, h, w, c = images.shape
    columns = columns or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / columns))
    grid = np.ones((rows * (h + padding) + padding, columns * (w + padding) + padding, c), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = image
    return np.round(grid * 255.0).astype(np.uint8)


def write_png(path: str, grid: np.ndarray) -> None:
    """Encodes a uint8 `[height, width, channels]` picture as PNG and writes it atomically."""
    atomic_write_bytes(path, tf.io.encode_png(grid).numpy())
