"""Does a model reproduce the sprites' shapes, or only blobs at the right place and size?

The embedded sprites (`crvae_tf.data.sprites`) come with their ground-truth factors, so a reconstruction
can be scored without a learned classifier: render each of the four shapes (square, ellipse, triangle,
heart) at the image's own rotation and position, at the scale that fits the image best, and call the image
the shape whose best rendering is nearest in squared error:

    predicted_i = argmin_s min_c || xhat_i - render(s, c * scale_i, rotation_i, x_i, y_i) ||^2 ,
    c in `SCALE_SEARCH` (0.6 ... 1.4).

The search over the scale matters: with the true scale fixed, a blob's area alone would tell the shapes
apart (at equal scale a square covers 1.8 r^2, a triangle 1.2 r^2), and blurred blobs scored 0.97. With it, a
blob is nearest to whichever shape best fits a blob, whatever the truth, and its accuracy stays near chance
(0.25); a reconstruction that keeps corners, points and the heart's notch scores near 1.
`shape_confusion` gives the `[true shape, predicted shape]` counts.
"""

from typing import Dict

import numpy as np

from crvae_tf.data.sprites import SPRITE_SHAPES
from crvae_tf.data.sprites import render_sprites

SCALE_SEARCH = tuple(np.round(np.linspace(0.6, 1.4, 17), 3))


def nearest_shape(images: np.ndarray, factors: Dict[str, np.ndarray], radius: float = 9.0) -> np.ndarray:
    """The shape index whose best-scaled, pose-matched rendering is nearest to each image.

    Args:
      images: `[N, 28, 28, 1]` (or `[N, 28, 28]`) in [0, 1], e.g. Bernoulli means of reconstructions.
      factors: the images' ground-truth factors ('scale', 'rotation', 'x', 'y' `[N]`; 'shape' is ignored).
      radius: the `dataset.sprite_radius` the images were generated with.

    Returns:
      int64 `[N]` indices into `SPRITE_SHAPES`.
    """
    num_images = len(images)
    images = np.asarray(images, np.float32).reshape(num_images, -1)
    pose = {key: np.asarray(factors[key], np.float32) for key in ("rotation", "x", "y")}
    distances = np.full((num_images, len(SPRITE_SHAPES)), np.inf)
    for shape_index in range(len(SPRITE_SHAPES)):
        for factor in SCALE_SEARCH:
            candidate = dict(
                pose,
                shape=np.full(num_images, shape_index, np.int64),
                scale=(np.asarray(factors["scale"], np.float32) * factor).astype(np.float32),
            )
            rendered = render_sprites(candidate, radius).reshape(num_images, -1)
            error = np.sum(np.square(images - rendered), axis=1)
            distances[:, shape_index] = np.minimum(distances[:, shape_index], error)
    return np.argmin(distances, axis=1).astype(np.int64)


def shape_confusion(images: np.ndarray, factors: Dict[str, np.ndarray], radius: float = 9.0) -> np.ndarray:
    """int64 `[4, 4]` counts: rows the true shape, columns the `nearest_shape` prediction."""
    predicted = nearest_shape(images, factors, radius)
    confusion = np.zeros((len(SPRITE_SHAPES), len(SPRITE_SHAPES)), np.int64)
    np.add.at(confusion, (np.asarray(factors["shape"], np.int64), predicted), 1)
    return confusion


def shape_accuracy(images: np.ndarray, factors: Dict[str, np.ndarray], radius: float = 9.0) -> float:
    """Fraction of images whose `nearest_shape` is their true shape (chance: 0.25; blobs stay near it)."""
    confusion = shape_confusion(images, factors, radius)
    return float(np.trace(confusion) / max(1, confusion.sum()))


def score_reconstructions(model, splits, images: np.ndarray, factors: Dict[str, np.ndarray], batch_size: int = 256):
    """Shape accuracy and confusion of a VAE-family model's reconstructions of sprites.

    Args:
      model: has `reconstruct(images) -> [N, 28, 28, 1]` Bernoulli means (the posterior mean decoded).
      splits: the sprites' `data.ImageSplits` (its `generator['radius']` is the rendering radius).
      images: `[N, 28, 28, 1]` sprites in [0, 1] (the anti-aliased intensities, not binarized).
      factors: their ground-truth factors (`splits.factors[split]`, indexed like `images`).
      batch_size: images per reconstruction pass (speed only).

    Returns:
      {'shape_accuracy': float, 'shape_confusion': `[4][4]` list of counts (rows true, columns predicted),
      'shape_names': `SPRITE_SHAPES`}.
    """
    if splits.name != "sprites" or not splits.generator:
        raise ValueError(f"Shape accuracy needs the embedded sprites with their generator; got {splits.name!r}.")
    reconstructions = np.concatenate(
        [np.asarray(model.reconstruct(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    )
    confusion = shape_confusion(reconstructions, factors, splits.generator["radius"])
    return {
        "shape_accuracy": float(np.trace(confusion) / max(1, confusion.sum())),
        "shape_confusion": confusion.tolist(),
        "shape_names": list(SPRITE_SHAPES),
    }
