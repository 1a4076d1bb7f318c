"""Files a run leaves behind, written atomically (temp file in the same folder, then `os.replace`).

A reader polling the folder never sees a half-written file, and a crash mid-write never corrupts the
previous version. The files get the mode of any new file under the process's umask (0644 under umask 022), like
the checkpoints TensorFlow writes, not `mkstemp`'s private 0600. Gin-free.
"""

import hashlib
import math
import os
import tempfile

from absl import logging
import numpy as np
import tensorflow as tf

TMP_PREFIX = ".tmp-"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (/proc/self/status), else set and reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode `open(path, 'w')` would give a new file: 0o666 less the umask."""
    return 0o666 & ~current_umask()


def file_sha256(path: str) -> str:
    """sha256 of a file, or of a directory (sorted relative paths and contents of every file under it)."""
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                digest.update(os.path.relpath(full, path).replace(os.sep, "/").encode() + b"\0")
                with open(full, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 20), b""):
                        digest.update(block)
                digest.update(b"\0")
        return digest.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Writes `payload` to `path` atomically, with the mode of a new file under the umask (`new_file_mode`)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=folder)
    try:
        os.fchmod(fd, new_file_mode())
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


def remove_stale_temp_files(folder: str) -> list:
    """Removes the `.tmp-*` files `atomic_write_bytes` left in `folder` when its process was killed mid-write.

    Call it only while holding the lock of whatever writes into `folder` (another writer's file in flight would
    be removed too). Logs one line per file; returns the removed paths.
    """
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(TMP_PREFIX) and os.path.isfile(path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            logging.warning("Removed %s, a temporary file left by an interrupted write.", path)
            removed.append(path)
    return removed


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
