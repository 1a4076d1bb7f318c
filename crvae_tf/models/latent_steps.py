"""Time steps of a latent as slices of the flat z, and the latent constructions of the disentangling views.

Gin-free, NumPy only (imported by the serving layer too). Paper Sec. 4.4, Fig. 5, S2, S4, S5, Eq. S1.

Where the time steps are
------------------------
z `[batch, D]` is the channel-major flattening of the latent's natural shape `latent_shape`: `[D]` for a flat latent
(FC VAE), `[C, h, w]` for a conv-shaped one (cVAE, bcVAE, crVAE; `LatentHead.latent_shape`). The heads with time
steps (`BlockFCHead`, `ChannelRecurrentHead`, `crvae_tf.architectures.heads`) reshape z to `[B, T, D/T]` before their
per-step layers and reshape their per-step log-variances `[B, T, D/T]` back to `[B, D]`, so time step t (1-based)
is the contiguous block

    z_t = z[(t-1) D/T : t D/T],    t = 1..T,

which for a conv latent is latent channels `[(t-1) C/T, t C/T)` at every position (C/T channels of h*w each).
`step_slices` returns these `[start, stop)` ranges; `tests/latent_views_test.py` checks them against the heads' own
code (a change of slice t alone moves the crVAE's generation LSTM output from step t on, never before it).

For heads without time steps (`FCHead`, `ConvHead`: `num_time_steps == 1`) "time step t" means the same channel
slice, so every view also runs on the paper's baselines: T = `DEFAULT_NUM_TIME_STEPS` = 8 (the paper's T) slices of
the channels (flat: of the D units), or the largest divisor <= 8 of the channel count when 8 does not divide it.

The constructions
-----------------
All return float32 arrays, are pure functions of their arguments and a non-negative int `seed`
(`np.random.default_rng([seed, tag, t])`: a separate stream per view and per time step, so the draws for one t are
the same whether one step or every step is asked for). D = latent_dim, T = time steps, t is 1-based.

* `prior_latents(num, D, seed)`: z ~ N(0, I), `[num, D]`.
* `progressive_latents` (Fig. 5a): from z = 0, for t = 1..T draw z_t ~ N(0, I) keeping z_1..z_{t-1}:
  `[num, T+1, D]`, column k holds steps 1..k of one prior draw and zeros elsewhere (column 0 is z = 0).
* `interpolation_latents` (Fig. 5b-d, S4): from base z, one new z~_t ~ N(0, I) shared by every row (the paper's
  "shared by the two rows"), points z_t(a) = (1 - a) z_t + a z~_t, a = 0, 1/(P-1), .., 1, other steps fixed:
  `[num, P, D]`; column 0 is z, column P-1 is z with z_t replaced by z~_t.
* `style_latents` (Fig. 5e-h, S5): z_t resampled S times, other steps fixed: `[num, S, D]`; draw s is shared by
  every row (column s shows the same z_t on each sample). `style_latents_every_step`: `[num, T, S, D]`.
* `manifold_latents` (Fig. S2, Eq. S1): the 2-D interpolation across four latents Z_1..Z_4,
  Z(psi, phi) = cos(phi) (cos(psi) Z_1 + sin(psi) Z_2) + sin(phi) (cos(psi) Z_3 + sin(psi) Z_4),
  psi, phi in [0, pi/2]: `[rows, cols, D]` with Z_1, Z_2 the top corners and Z_3, Z_4 the bottom ones.
"""

import math

from absl import logging
import numpy as np

DEFAULT_NUM_TIME_STEPS = 8

# Second word of the seed of each view's noise stream (`np.random.default_rng([seed, tag, t])`).
PRIOR_TAG = 201
PROGRESSIVE_TAG = 202
INTERPOLATION_TAG = 203
STYLE_TAG = 204

MANIFOLD_WEIGHTS = ("sine", "linear")

_noted_channel_counts = set()


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative int (the same seed gives the same latents).")
    return int(seed)


def _check_count(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what}={value!r} must be an int >= {minimum}.")
    return int(value)


def model_latent_shape(model) -> tuple:
    """The latent's natural shape: the head's `latent_shape` (`(D,)` or `(C, h, w)`) when it multiplies out to
    `model.latent_dim`, else `(latent_dim,)` (duck-typed models without a crvae_tf head are flat)."""
    shape = getattr(getattr(model, "latent_head", None), "latent_shape", None)
    if shape is not None and math.prod(int(d) for d in shape) == int(model.latent_dim):
        return tuple(int(d) for d in shape)
    return (int(model.latent_dim),)


def _largest_divisor(channels: int, limit: int = DEFAULT_NUM_TIME_STEPS) -> int:
    return max(d for d in range(1, min(limit, channels) + 1) if channels % d == 0)


def time_steps(model) -> int:
    """T of the views: the head's `num_time_steps` when > 1 (bcVAE, crVAE; also a cVAE whose recipe splits its KL
    report into T channel blocks, as `gin/mnist_cvae.gin` does, so the views' slices are the blocks its per-step KL
    reports); else the paper's T = 8 channel slices (`DEFAULT_NUM_TIME_STEPS`), or the largest divisor <= 8 of the
    channel count (flat: latent_dim) when 8 does not divide it (logged once per channel count). Models without a
    `latent_head` count as flat `[latent_dim]`."""
    head = getattr(model, "latent_head", None)
    steps = int(getattr(head, "num_time_steps", 1) or 1)
    if steps > 1:
        return steps
    channels = model_latent_shape(model)[0]
    steps = _largest_divisor(channels)
    if steps != DEFAULT_NUM_TIME_STEPS and channels not in _noted_channel_counts:
        _noted_channel_counts.add(channels)
        logging.warning(
            "The latent has no time steps and its %d channels are not divisible by %d: the views use T=%d channel "
            "slices of %d channels each.",
            channels,
            DEFAULT_NUM_TIME_STEPS,
            steps,
            channels // steps,
        )
    return steps


def step_slices(latent_shape, num_time_steps: int) -> list:
    """The `[start, stop)` range of each time step in the flat z (see the module docstring).

    Args:
      latent_shape: `[D]` (flat) or `[C, h, w]` (conv-shaped; z is its channel-major flattening).
      num_time_steps: T, which must divide D (flat) or C (conv).

    Returns:
      T tuples `(start, stop)`, step t (1-based) at index t-1: `((t-1) D/T, t D/T)`.
    """
    shape = tuple(int(d) for d in latent_shape)
    if not shape or any(d < 1 for d in shape):
        raise ValueError(f"latent_shape={list(latent_shape)} must be [D] or [C, h, w] with positive sizes.")
    steps = _check_count(num_time_steps, "num_time_steps")
    channels = shape[0]
    if channels % steps:
        what = "latent_dim" if len(shape) == 1 else "the latent channel count"
        raise ValueError(
            f"{what} {channels} (latent shape {list(shape)}) is not divisible by num_time_steps={steps}: a time step "
            f"is a block of whole channels; choose a T that divides {channels}."
        )
    size = math.prod(shape) // steps
    return [(t * size, (t + 1) * size) for t in range(steps)]


def model_step_slices(model, num_time_steps=None) -> list:
    """`step_slices` of the model's latent with T = `time_steps(model)` (or `num_time_steps`, which must equal the
    head's own T when the head has time steps)."""
    own = time_steps(model)
    head_steps = int(getattr(getattr(model, "latent_head", None), "num_time_steps", 1) or 1)
    if num_time_steps is None:
        num_time_steps = own
    elif head_steps > 1 and int(num_time_steps) != head_steps:
        raise ValueError(
            f"num_time_steps={num_time_steps}, but the model's latent head has T={head_steps} time steps; its "
            f"slices are only meaningful at T={head_steps} (leave num_time_steps unset)."
        )
    return step_slices(model_latent_shape(model), num_time_steps)


def _check_slices(slices) -> list:
    """`slices` as `step_slices` returns them: T >= 1 contiguous equal `(start, stop)` ranges from 0."""
    slices = [tuple(int(v) for v in s) for s in slices]
    size = slices[0][1] - slices[0][0] if slices else 0
    expected = [(t * size, (t + 1) * size) for t in range(len(slices))]
    if not slices or size < 1 or slices != expected:
        raise ValueError(
            f"slices={slices} are not time-step slices: pass step_slices(latent_shape, T) or model_step_slices(model)."
        )
    return slices


def _check_latents(z, slices, what: str) -> np.ndarray:
    z = np.asarray(z, dtype=np.float32)
    latent_dim = slices[-1][1]
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"{what} must be [num, {latent_dim}] (the flat latent), got shape {list(z.shape)}.")
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{what} has NaN or Inf entries.")
    return z


def _check_time_step(time_step, slices) -> int:
    steps = len(_check_slices(slices))
    if isinstance(time_step, bool) or not isinstance(time_step, (int, np.integer)) or not 1 <= time_step <= steps:
        raise ValueError(f"time_step={time_step!r} must be an int in 1..{steps} (the latent has T={steps} time steps).")
    return int(time_step)


def _normal(seed: int, tag: int, t: int, shape) -> np.ndarray:
    return np.random.default_rng([seed, tag, t]).standard_normal(shape).astype(np.float32)


def prior_latents(num: int, latent_dim: int, seed: int) -> np.ndarray:
    """z ~ N(0, I): float32 `[num, latent_dim]`, a pure function of `seed`."""
    num = _check_count(num, "num")
    return _normal(_check_seed(seed), PRIOR_TAG, 0, (num, _check_count(latent_dim, "latent_dim")))


def progressive_latents(num: int, slices, seed: int) -> np.ndarray:
    """Progressive generation (paper Fig. 5a): `[num, T+1, D]`.

    One prior draw z ~ N(0, I) per row; column k (k = 0..T) keeps z_1..z_k and sets z_{k+1}..z_T to 0, the prior
    mean. Column 0 is z = 0; column k differs from column k-1 exactly in slice k.
    """
    num = _check_count(num, "num")
    slices = _check_slices(slices)
    z = _normal(_check_seed(seed), PROGRESSIVE_TAG, 0, (num, slices[-1][1]))
    out = np.zeros((num, len(slices) + 1, z.shape[1]), np.float32)
    for k in range(1, len(slices) + 1):
        stop = slices[k - 1][1]
        out[:, k, :stop] = z[:, :stop]
    return out


def interpolation_target(slices, time_step: int, seed: int) -> np.ndarray:
    """z~_t ~ N(0, I), float32 `[D/T]`: the new value of step t shared by every row of `interpolation_latents`."""
    t = _check_time_step(time_step, slices)
    start, stop = slices[t - 1]
    return _normal(_check_seed(seed), INTERPOLATION_TAG, t, (stop - start,))


def interpolation_latents(base, slices, time_step: int, num_points: int, seed: int, target=None) -> np.ndarray:
    """Time-step interpolation (paper Fig. 5b-d, S4): `[num, P, D]`.

    Row i, point p: base_i with slice t replaced by (1 - a_p) z_t + a_p z~_t, a_p = p / (P-1); every other slice
    as in base_i. z~_t is `target` (`[D/T]`) or `interpolation_target(slices, time_step, seed)`, the same for every
    row. Point 0 is base exactly, point P-1 has z_t = z~_t exactly.

    Args:
      base: `[num, D]` latents (prior draws or posterior means).
      slices: `step_slices` of the latent.
      time_step: t in 1..T.
      num_points: P >= 2.
      seed: seed of z~_t (unused when `target` is given).
      target: optional z~_t `[D/T]`.
    """
    base = _check_latents(base, slices, "base")
    t = _check_time_step(time_step, slices)
    points = _check_count(num_points, "num_points", 2)
    start, stop = slices[t - 1]
    if target is None:
        target = interpolation_target(slices, t, seed)
    target = np.asarray(target, np.float32)
    if target.shape != (stop - start,):
        raise ValueError(f"target must be [{stop - start}] (one time step's slice), got shape {list(target.shape)}.")
    alpha = np.linspace(0.0, 1.0, points, dtype=np.float32)[None, :, None]  # [1, P, 1]
    out = np.repeat(base[:, None, :], points, axis=1)
    out[:, :, start:stop] = (1.0 - alpha) * base[:, None, start:stop] + alpha * target[None, None, :]
    out[:, -1, start:stop] = target  # exact endpoint, whatever the rounding of (1 - a) z_t + a z~_t
    return out


def style_draws(slices, time_step: int, num_samples: int, seed: int) -> np.ndarray:
    """The S draws of z_t ~ N(0, I) of `style_latents`: float32 `[S, D/T]`."""
    t = _check_time_step(time_step, slices)
    start, stop = slices[t - 1]
    return _normal(_check_seed(seed), STYLE_TAG, t, (_check_count(num_samples, "num_samples"), stop - start))


def style_latents(base, slices, time_step: int, num_samples: int, seed: int) -> np.ndarray:
    """Style sampling (paper Fig. 5e-h, S5): `[num, S, D]`, base_i with slice t replaced by draw s of
    `style_draws` (shared by every row), every other slice as in base_i."""
    base = _check_latents(base, slices, "base")
    t = _check_time_step(time_step, slices)
    draws = style_draws(slices, t, num_samples, seed)
    start, stop = slices[t - 1]
    out = np.repeat(base[:, None, :], len(draws), axis=1)
    out[:, :, start:stop] = draws[None]
    return out


def style_latents_every_step(base, slices, num_samples: int, seed: int) -> np.ndarray:
    """`style_latents` for t = 1..T: `[num, T, S, D]`, entry [:, t-1] equal to `style_latents(..., t, ...)`."""
    return np.stack([style_latents(base, slices, t, num_samples, seed) for t in range(1, len(slices) + 1)], axis=1)


def interpolation_latents_every_step(base, slices, num_points: int, seed: int) -> np.ndarray:
    """`interpolation_latents` for t = 1..T (each with its own z~_t): `[num, T, P, D]`."""
    return np.stack(
        [interpolation_latents(base, slices, t, num_points, seed) for t in range(1, len(slices) + 1)], axis=1
    )


def _unit_weights(num: int, weights: str):
    """(w0, w1) `[num]` float64 along one axis of the manifold grid: cos / sin of angles 0..pi/2 (Eq. S1) or
    1 - u / u of u = 0..1 (linear); exactly (1, 0) at the first point and (0, 1) at the last."""
    if weights == "sine":
        angle = np.linspace(0.0, np.pi / 2.0, num)
        w0, w1 = np.cos(angle), np.sin(angle)
    else:
        u = np.linspace(0.0, 1.0, num)
        w0, w1 = 1.0 - u, u
    w0[0], w1[0], w0[-1], w1[-1] = 1.0, 0.0, 0.0, 1.0
    return w0, w1


def manifold_weights(rows: int, cols: int, weights: str = "sine") -> np.ndarray:
    """The coefficients of Z_1..Z_4 at every grid point: float64 `[rows, cols, 4]`.

    'sine' (Eq. S1): row i has phi_i = (pi/2) i/(rows-1), column j psi_j = (pi/2) j/(cols-1);
    (cos phi cos psi, cos phi sin psi, sin phi cos psi, sin phi sin psi). For nearly orthogonal Z_k of equal
    norm (independent high-dimensional latents) the interpolant keeps their norm, the prior's typical radius.
    'linear': bilinear, with (1 - v, v), (1 - u, u) in place of (cos, sin); its centre has ~half the norm.
    Corners are exactly one-hot.
    """
    if weights not in MANIFOLD_WEIGHTS:
        raise ValueError(f"weights={weights!r} must be one of {list(MANIFOLD_WEIGHTS)}.")
    rows, cols = _check_count(rows, "rows", 2), _check_count(cols, "cols", 2)
    c_phi, s_phi = _unit_weights(rows, weights)
    c_psi, s_psi = _unit_weights(cols, weights)
    return np.stack(
        [np.outer(c_phi, c_psi), np.outer(c_phi, s_psi), np.outer(s_phi, c_psi), np.outer(s_phi, s_psi)], axis=-1
    )


def manifold_latents(corners, rows: int, cols: int, weights: str = "sine") -> np.ndarray:
    """Manifold interpolation (paper Fig. S2, Eq. S1): float32 `[rows, cols, D]`.

    Point (i, j) = sum_k manifold_weights[i, j, k] Z_k (computed in float64): Z_1 at the top left, Z_2 top right,
    Z_3 bottom left, Z_4 bottom right, exactly.

    Args:
      corners: `[4, D]` latents Z_1..Z_4 (the paper: posterior samples of four validation images).
      rows, cols: grid size, each >= 2.
      weights: 'sine' (Eq. S1) or 'linear' (plain bilinear).
    """
    corners = np.asarray(corners, dtype=np.float32)
    if corners.ndim != 2 or corners.shape[0] != 4:
        raise ValueError(f"corners must be [4, latent_dim] (Z_1..Z_4), got shape {list(corners.shape)}.")
    if not np.all(np.isfinite(corners)):
        raise ValueError("corners has NaN or Inf entries.")
    coefficients = manifold_weights(rows, cols, weights)
    return np.einsum("ijk,kd->ijd", coefficients, corners.astype(np.float64)).astype(np.float32)
