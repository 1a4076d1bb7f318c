"""The embedded sprites dataset: a procedurally generated dSprites-like set that ships as code, so the
quickstart runs anywhere offline.

Each 28x28 image shows one white shape (square, ellipse, triangle or heart) on black, with known factors of
variation: shape, scale, rotation and x/y position (kept as `ImageSplits.factors`). Shapes are rendered with
4x4 supersampling and box-downsampled, so pixels are anti-aliased intensities in [0, 1];
`binarization='dynamic'`. Generation is deterministic in the seed, numpy-only and vectorized. Train,
validation and test are drawn from disjoint random streams (`[seed, 0]`, `[seed, 1]`, `[seed, 2]`).
"""

from typing import Dict
from typing import Sequence
from typing import Tuple
from typing import Union

import numpy as np

from crvae_tf.data.mnist import IMAGE_SIZE
from crvae_tf.data.splits import SPLIT_NAMES
from crvae_tf.data.splits import ImageSplits
from crvae_tf.data.splits import check_seed

SPRITE_SHAPES = ("square", "ellipse", "triangle", "heart")


def load_sprites(
    local_path,
    seed,
    num_sprites,
    radius: float = 9.0,
    scale_range: Tuple[float, float] = (0.5, 1.0),
    rotation_range: Tuple[float, float] = (0.0, 360.0),
) -> ImageSplits:
    if local_path is not None:
        raise ValueError(
            f"dataset.local_path={local_path!r} was given with dataset.name='sprites', but the sprites "
            "dataset is generated in code and reads no files. To train on MNIST from a local file, set "
            "dataset.name='mnist' and dataset.local_path='/path/to/mnist.npz' (or "
            "dataset.name='binarized_mnist' with the bit-packed binarized_mnist.npz); for sprites, "
            "leave dataset.local_path unset."
        )
    if (
        not isinstance(num_sprites, (tuple, list))
        or len(num_sprites) != 3
        or not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1 for n in num_sprites)
    ):
        raise ValueError(
            f"num_sprites={num_sprites!r} must be three positive ints (num_train, num_validation, "
            "num_test); set dataset.num_sprites."
        )
    style = dict(radius=radius, scale_range=scale_range, rotation_range=rotation_range)
    generated = [generate_sprites(int(n), [seed, i], **style) for i, n in enumerate(num_sprites)]
    (train, validation, test), factors = zip(*generated)
    return ImageSplits(
        "sprites",
        "dynamic",
        train,
        validation,
        test,
        f"generated:sprites(seed={seed}, radius={radius}, scale_range={tuple(scale_range)}, "
        f"rotation_range={tuple(rotation_range)})",
        factors=dict(zip(SPLIT_NAMES, factors)),
        generator={"radius": float(radius), "scale_range": tuple(scale_range), "rotation_range": tuple(rotation_range)},
    )


_SUPERSAMPLE = 4  # Sub-samples per pixel side.
_CHUNK = 1024  # Images rendered at once (bounds the temporary memory to ~100 MB).


def _check_radius(radius) -> None:
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not 1.0 <= radius <= IMAGE_SIZE / 2:
        raise ValueError(
            f"dataset.sprite_radius={radius!r} must be a number of pixels in [1, {IMAGE_SIZE // 2}] (the radius "
            f"of a shape's circumcircle at scale 1 in the {IMAGE_SIZE}x{IMAGE_SIZE} image)."
        )


def check_sprite_style(radius, scale_range, rotation_range) -> None:
    """Raises ValueError, naming the `dataset.sprite_*` binding, unless the style is renderable."""
    _check_radius(radius)
    for key, value, low, high in (
        ("sprite_scale", scale_range, 0.0, 1.0),
        ("sprite_rotation", rotation_range, -360.0, 720.0),
    ):
        ok = isinstance(value, (tuple, list)) and len(value) == 2
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok or not (low <= value[0] <= value[1] <= high) or (key == "sprite_scale" and value[0] <= 0):
            raise ValueError(
                f"dataset.{key}={value!r} must be a pair (low, high) with "
                + (
                    "0 < low <= high <= 1 (fractions of dataset.sprite_radius)."
                    if key == "sprite_scale"
                    else "-360 <= low <= high <= 720 (degrees, counter-clockwise; (0, 360) is every orientation)."
                )
            )


def generate_sprites(
    num_images: int,
    seed: Union[int, Sequence[int]],
    radius: float = 9.0,
    scale_range: Tuple[float, float] = (0.5, 1.0),
    rotation_range: Tuple[float, float] = (0.0, 360.0),
) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Renders dSprites-like images with known factors of variation, deterministically from `seed`.

    Each image is one white shape on black. Shapes are drawn in a unit circle (circumradius 0.95),
    scaled to `radius * scale` pixels, rotated counter-clockwise by `rotation` and centred at pixel
    coordinates `(r + (28 - 2 r) * x, r + (28 - 2 r) * y)` with `r = radius` (x to the right, y downwards),
    so the shape never leaves the image. Pixels are the covered fraction estimated with 4x4 supersampling,
    so edges are anti-aliased.

    The defaults (radius 9, scale in [0.5, 1), every orientation) are the dSprites-like set; the quickstart
    uses larger, less rotated shapes (`gin/quickstart.gin`) so that a model trained for minutes can tell the
    four shapes apart.

    Args:
      num_images: N >= 1.
      seed: non-negative int, or sequence of them, for `np.random.default_rng`.
      radius: pixels, the radius of a shape's unit circle at scale 1, in [1, 14].
      scale_range: `(low, high)`, 0 < low <= high <= 1: scales are uniform in [low, high).
      rotation_range: `(low, high)` degrees counter-clockwise: rotations are uniform in [low, high).

    Returns:
      images: float32 `[N, 28, 28, 1]` in [0, 1].
      factors: dict of `[N]` arrays: 'shape' int64 index into `SPRITE_SHAPES`; 'scale' float32 in
        `scale_range`; 'rotation' float32 radians (`rotation_range` in radians); 'x', 'y' float32 normalised
        positions in [0, 1).
    """
    check_sprite_style(radius, scale_range, rotation_range)
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"num_images={num_images!r} must be a positive int.")
    seeds = [seed] if np.ndim(seed) == 0 else list(seed)
    for s in seeds:
        check_seed(s, "seed")
    rng = np.random.default_rng(seed)
    factors = {
        "shape": rng.integers(0, len(SPRITE_SHAPES), size=num_images).astype(np.int64),
        "scale": rng.uniform(*scale_range, size=num_images).astype(np.float32),
        "rotation": rng.uniform(*np.deg2rad(rotation_range), size=num_images).astype(np.float32),
        "x": rng.uniform(0.0, 1.0, size=num_images).astype(np.float32),
        "y": rng.uniform(0.0, 1.0, size=num_images).astype(np.float32),
    }
    return render_sprites(factors, radius), factors


def render_sprites(factors: Dict[str, np.ndarray], radius: float = 9.0) -> np.ndarray:
    """Renders given factors (the dict `generate_sprites` returns, any subset of images) at `radius`.

    Returns float32 `[N, 28, 28, 1]` in [0, 1], equal to `generate_sprites`' images for its own factors.
    """
    _check_radius(radius)
    num_images = np.shape(factors["shape"])[0]
    images = np.empty((num_images, IMAGE_SIZE, IMAGE_SIZE, 1), np.float32)
    for start in range(0, num_images, _CHUNK):
        chunk = slice(start, min(start + _CHUNK, num_images))
        images[chunk, :, :, 0] = _render_sprites({k: np.asarray(v)[chunk] for k, v in factors.items()}, float(radius))
    return images


def _shape_mask(shape_index: int, qx: np.ndarray, qy: np.ndarray) -> np.ndarray:
    """Inside test of shape `shape_index` at unit-circle coordinates `qx, qy` (y up). Returns bool."""
    if shape_index == 0:  # Square, half side 0.67 (circumradius 0.95).
        return np.maximum(np.abs(qx), np.abs(qy)) <= 0.67
    if shape_index == 1:  # Ellipse, semi-axes 0.95 x 0.5.
        return np.square(qx / 0.95) + np.square(qy / 0.5) <= 1.0
    if shape_index == 2:  # Equilateral triangle pointing up, circumradius 0.95 (inradius 0.475).
        edge = 0.475
        return (qy >= -edge) & (0.8660254 * qx + 0.5 * qy <= edge) & (-0.8660254 * qx + 0.5 * qy <= edge)
    # Heart: (X^2 + Y^2 - 1)^3 <= X^2 Y^3, rescaled so it fits the circle of radius 0.95.
    hx = 1.4 * qx
    hy = 1.4 * qy + 0.118
    hx2 = hx * hx
    inner = hx2 + hy * hy - 1.0
    return inner * inner * inner <= hx2 * hy * hy * hy


def _render_sprites(factors: Dict[str, np.ndarray], max_radius: float) -> np.ndarray:
    """float32 `[n, 28, 28]` images for `[n]` factor arrays and the radius at scale 1."""
    n = factors["shape"].shape[0]
    # Side, in pixels, of the square patch each shape is rendered into (scales above 1 only come from callers
    # of `render_sprites`, e.g. a scale search).
    patch = 2 * int(np.ceil(max_radius * max(1.0, float(np.max(factors["scale"], initial=0.0))))) + 4
    size = patch * _SUPERSAMPLE
    margin = max_radius  # Centres lie in [margin, 28 - margin] on both axes.
    cx = (margin + factors["x"] * (IMAGE_SIZE - 2 * margin)).astype(np.float32)
    cy = (margin + factors["y"] * (IMAGE_SIZE - 2 * margin)).astype(np.float32)
    # Integer top-left corner of each patch; the patch covers the shape's whole circumcircle.
    ox = np.floor(cx).astype(np.int64) - patch // 2
    oy = np.floor(cy).astype(np.int64) - patch // 2
    sub = ((np.arange(size, dtype=np.float32) + 0.5) / _SUPERSAMPLE)[None, :]  # [1, size]
    dx = (ox[:, None] + sub - cx[:, None])[:, None, :]  # [n, 1, size]
    up = -(oy[:, None] + sub - cy[:, None])[:, :, None]  # [n, size, 1] (y up)
    radius = (max_radius * factors["scale"]).astype(np.float32)
    cos = (np.cos(factors["rotation"]) / radius).astype(np.float32)[:, None, None]
    sin = (np.sin(factors["rotation"]) / radius).astype(np.float32)[:, None, None]
    patches = np.zeros((n, patch, patch), np.float32)
    for shape_index in range(len(SPRITE_SHAPES)):
        members = np.flatnonzero(factors["shape"] == shape_index)
        if members.size == 0:
            continue
        # Rotate the sample offsets by -rotation and divide by the radius: shape-local coordinates.
        c, s, x, y = cos[members], sin[members], dx[members], up[members]
        qx = c * x + s * y
        qy = c * y - s * x
        mask = _shape_mask(shape_index, qx, qy).astype(np.float32)  # [m, size, size]
        patches[members] = mask.reshape(-1, patch, _SUPERSAMPLE, patch, _SUPERSAMPLE).mean(axis=(2, 4))
    # Paste the patches into a padded canvas, then crop to 28 x 28.
    canvas = np.zeros((n, IMAGE_SIZE + 2 * patch, IMAGE_SIZE + 2 * patch), np.float32)
    offsets = np.arange(patch)
    rows = (oy + patch)[:, None, None] + offsets[None, :, None]
    cols = (ox + patch)[:, None, None] + offsets[None, None, :]
    canvas[np.arange(n)[:, None, None], rows, cols] = patches
    return np.clip(canvas[:, patch : patch + IMAGE_SIZE, patch : patch + IMAGE_SIZE], 0.0, 1.0)
