"""The serving endpoints: one small spec per endpoint (`ENDPOINTS`), from which both the traced signature
functions (`build_serving_module`) and the contract table (`signature_table`, the exported metadata and
export/README.md) are generated. A new endpoint is one more `Endpoint` in the list.

Signatures (batch dimensions dynamic, batch >= 1; D = latent_dim, (H, W, C) = the model's image shape, T = the
latent's time steps (`crvae_tf.models.latent_steps.time_steps`), P = num_points):

    serving_default  z float32 [batch, D]                   -> images float32 [batch, H, W, C] in [0, 1]
    sample           num int32 [], seed int64 []            -> images float32 [num, H, W, C] in [0, 1],
                                                               z float32 [num, D]
    encode           images float32 [batch, H, W, C] in [0,1] -> loc float32 [batch, D], scale float32 [batch, D]
    reconstruct      images float32 [batch, H, W, C] in [0,1] -> images float32 [batch, H, W, C] in [0, 1]
    traverse         z float32 [batch, D], time_step int32 [], -> images float32 [batch, P, H, W, C] in [0, 1],
                     num_points int32 [], seed int64 []        z float32 [batch, P, D]
    traverse_images  images float32 [batch, H, W, C] in [0,1], time_step, num_points, seed -> as traverse, from
                     posterior means of the images
    complete         images float32 [batch, H, W, C] in [0,1], -> images float32 [batch, H, W, C] in [0, 1],
                     mask float32 [batch, H, W, 1] in {0, 1},     z float32 [batch, D]
                     steps int32 [], seed int64 []

`sample` draws z with `tf.random.stateless_normal(shape=[num, D], seed=[seed, 0], alg='philox')`: the
same (num, seed) gives byte-identical outputs on every call and every server restart. Every input is
checked inside the graph (not only by the signature's TensorSpec, which TF Serving does not enforce), so a
wrong shape fails with InvalidArgumentError naming the expected shape, e.g.
"z must be [batch, 1024] float32"; a latent with a NaN or Inf (`serving_default`'s and `traverse`'s z, and every
z the decoder receives: `sample`'s and `reconstruct`'s) fails with "z must be finite (no NaN or Inf)".

`traverse` (paper Fig. 5b-d, S4): time step t = `time_step` in [1, T], numbered as in the paper and as
`python -m crvae_tf.explore --time_step`, is the
contiguous slice [start_t, stop_t) of z (`latent_steps.model_step_slices`; D/T units; for the VAE and cVAE, whose
latent has no time steps, the same channel slices). One new value z~_t ~ N(0, I) `[D/T]` is drawn with
`tf.random.stateless_normal([D/T], seed=[seed, TRAVERSE_SEED_SALT + t], alg='philox')`, shared by every row
(the paper's "shared by the two rows"); point p = 0..P-1 of row b is z_b with slice t replaced by

    (1 - a_p) z_{b,t} + a_p z~_t,   a_p = p / (P - 1),

every other slice unchanged: point 0 is z_b exactly, point P-1 has z_t = z~_t exactly.

`complete` (paper Eq. 5, with the prior term's sign corrected: `crvae_tf.models.completion`): z_0 from the encoder
on the occluded image x * m (missing pixels set to 0): the posterior mean when seed < 0, a posterior sample
loc + scale * eps with eps = `tf.random.stateless_normal([batch, D], seed=[seed, completion._INIT_SEED_SALT])` when
seed >= 0 (`completion.initial_latents(..., 'posterior_sample', seed)`); then `steps` Adam steps on
sum_hwc (m (x - gen z))^2 + gamma 0.5 ||z||^2 inside one tf.while_loop, with the library's learning rate and
gamma; images = gen(z*) (1 - m) + x m (observed pixels copied exactly). Generator-only: the export holds no
discriminator, so the adversarial term's weight tau is 0 for every family.

The model interface used (duck typing; the VAE family and the adversarial family both provide it):
`model.image_shape` (H, W, C), `model.latent_dim`, `model.name`, `model.input_range` (pixel range that
`encode` takes: (0, 1) or (-1, 1)), `model.variables`, `model.encode(images, training=False) ->
(loc, log_variance)` and `model.generate(z) -> images in [0, 1]`; the latent's time steps are read from
`model.latent_head` when there is one (`latent_steps.time_steps`).
"""

import json
import math
from typing import Callable
from typing import NamedTuple

import tensorflow as tf

from crvae_tf.models import completion
from crvae_tf.models import latent_steps

# `sample` refuses num outside [1, MAX_SAMPLE_NUM] (one request cannot ask for an unbounded allocation).
MAX_SAMPLE_NUM = 4096
# Second word of the stateless seed pair: z = stateless_normal([num, D], seed=[seed, SAMPLE_SEED_SALT]).
SAMPLE_SEED_SALT = 0
SAMPLE_RNG_ALGORITHM = "philox"
OUTPUT_PIXEL_RANGE = (0.0, 1.0)
INPUT_PIXEL_RANGE = (0.0, 1.0)
# `traverse` refuses num_points outside [2, MAX_TRAVERSE_POINTS] (each point of each row is one decoded image).
MAX_TRAVERSE_POINTS = 64
# z~_t = stateless_normal([D/T], seed=[seed, TRAVERSE_SEED_SALT + t]): one stream per time step t in [1, T].
TRAVERSE_SEED_SALT = 0x7472  # "tr"
# `complete` refuses steps outside [0, MAX_COMPLETION_STEPS]: a request costs (steps + 2) generator passes
# (forward and backward) per image, so one request cannot hold a server for an unbounded time.
MAX_COMPLETION_STEPS = 1000
# The optimisation settings of `complete`: the completion library's defaults (recorded in the metadata).
COMPLETION_LEARNING_RATE = completion.DEFAULT_LEARNING_RATE
COMPLETION_GAMMA = completion.DEFAULT_GAMMA
COMPLETION_TAU = 0.0  # no discriminator in the export
# Value of the missing pixels in the occluded image the encoder sees for z_0 (`completion.occlude`'s default).
COMPLETION_FILL = 0.0


class Endpoint(NamedTuple):
    """One serving signature: its tensors and the function that computes it.

    `inputs` / `outputs` map a tensor name to (dtype name, shape) given a `Shapes`; -1 is the dynamic batch
    dimension, [] a scalar. `fn(graph, **inputs) -> {output name: tensor}` computes the outputs from the
    `ServingGraph` (the model's functions with their input checks). The input TensorSpecs of the traced function
    and the contract table both come from `inputs`, so they cannot disagree.
    """

    name: str
    inputs: Callable
    outputs: Callable
    fn: Callable
    doc: str


class Shapes(NamedTuple):
    latent_dim: int
    image_shape: tuple

    @property
    def image(self):
        return ("float32", [-1, *self.image_shape])

    @property
    def latent(self):
        return ("float32", [-1, self.latent_dim])

    @property
    def mask(self):
        return ("float32", [-1, *self.image_shape[:2], 1])

    @property
    def image_paths(self):
        """`[batch, num_points, H, W, C]`: one row of images per input."""
        return ("float32", [-1, -1, *self.image_shape])

    @property
    def latent_paths(self):
        return ("float32", [-1, -1, self.latent_dim])


def time_step_slices(model) -> list:
    """The `[start, stop)` range in the flat z of each time step t = 1..T (`latent_steps.model_step_slices`; at
    index t - 1): contiguous blocks of D/T units, also for heads without time steps (the same channel slices)."""
    slices = [(int(start), int(stop)) for start, stop in latent_steps.model_step_slices(model)]
    sizes = {stop - start for start, stop in slices}
    if len(sizes) != 1 or slices[0][0] != 0 or slices[-1][1] != int(model.latent_dim):
        raise ValueError(f"time-step slices {slices} do not tile z [0, {int(model.latent_dim)}) in equal blocks")
    return slices


def latent_shape(model) -> list:
    """The latent's natural shape (`LatentHead.latent_shape`): [D] for flat latents, [C, h, w] for conv-shaped
    ones (z is their channel-major flattening). Models without a crvae_tf head are reported as flat."""
    head = getattr(model, "latent_head", None)
    shape = getattr(head, "latent_shape", None)
    if shape is not None and int(math.prod(shape)) == int(model.latent_dim):
        return [int(d) for d in shape]
    return [int(model.latent_dim)]


def _checked(x, name: str, inner_shape, dtype_name: str):
    """`x` after a runtime check that it is `[batch, *inner_shape]`; the error names the expected shape.

    Neither a TF Serving session (tensors fed straight into the graph) nor a `tf.saved_model.load`ed signature
    enforces the TensorSpec's inner dimensions at run time (measured: a `[2, 8]` z reaches the first MatMul), so
    the check must be an op. The Assert compares runtime dimensions, which nothing can fold away; the rank part
    is folded by Grappler, hence the EnsureShape behind it.
    """
    rank = len(inner_shape) + 1
    expected = "[batch, " + ", ".join(str(int(d)) for d in inner_shape) + "]"
    shape = tf.shape(x)
    padded = tf.concat([shape, tf.zeros([rank], tf.int32)], 0)  # never out of range, whatever the rank
    ok = tf.logical_and(
        tf.equal(tf.size(shape), rank), tf.reduce_all(tf.equal(padded[1:rank], tf.constant(inner_shape, tf.int32)))
    )
    ok = tf.logical_and(ok, padded[0] >= 1)  # empty batches are refused (BatchNorm/reshape edge cases)
    check = tf.debugging.Assert(
        ok,
        [f"{name} must be {expected} {dtype_name} with batch >= 1; got shape", shape],
        summarize=rank + 2,
        name=f"check_{name}_shape",
    )
    with tf.control_dependencies([check]):
        # Grappler folds the rank in `ok` to the TensorSpec's rank, so a wrong rank reaches EnsureShape, whose kernel
        # checks the runtime shape ("Shape of tensor z [2,16,1] is not compatible with expected shape [?,16]").
        return tf.ensure_shape(x, (None,) + tuple(int(d) for d in inner_shape))


def _checked_pixels(images):
    """`images` after a runtime check that every value is in [0, 1] (NaN fails too)."""
    lo, hi = INPUT_PIXEL_RANGE
    ok = tf.reduce_all(tf.logical_and(images >= lo, images <= hi))
    check = tf.debugging.Assert(
        ok,
        [
            f"images must be float32 pixel values in [{lo:g}, {hi:g}] (divide 8-bit images by 255); got min and max",
            tf.reduce_min(images),
            tf.reduce_max(images),
        ],
        name="check_images_range",
    )
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _checked_finite(x, name: str):
    """`x` after a runtime check that every value is finite (no NaN or Inf)."""
    check = tf.debugging.Assert(
        tf.reduce_all(tf.math.is_finite(x)),
        [f"{name} must be finite (no NaN or Inf); got min and max", tf.reduce_min(x), tf.reduce_max(x)],
        name=f"check_{name}_finite",
    )
    with tf.control_dependencies([check]):
        return tf.identity(x)


def _checked_in_range(x, name: str, lo: int, hi: int, what: str):
    """Scalar `x` after a runtime check that lo <= x <= hi; the message names the range and what x means."""
    check = tf.debugging.Assert(
        tf.logical_and(x >= lo, x <= hi),
        [f"{name} must be an {x.dtype.name} scalar in [{lo}, {hi}] ({what}); got", x],
        name=f"check_{name}_range",
    )
    with tf.control_dependencies([check]):
        return tf.identity(x)


def _checked_scalar(x, name: str):
    """`x` after a runtime check that it is a scalar.

    EnsureShape, not an Assert on `tf.rank`: Grappler folds the rank to the TensorSpec's, so only a kernel that
    reads the runtime shape catches a `[1]` fed by a server ("Shape of tensor num [1] is not compatible with
    expected shape []").
    """
    return tf.ensure_shape(x, [], name=f"check_{name}_is_scalar")


class NoCudnn:
    """Context manager: every sub-layer with a `use_cudnn` attribute (Keras LSTM/GRU) traces without cuDNN.

    cuDNN RNN kernels (`CudnnRNNV3`) exist only on GPUs: a graph traced with them cannot be served on CPU
    (B.14). The generic implementation uses the same weights, so no rebuild or weight copy is needed.
    """

    def __init__(self, model):
        flatten = getattr(model, "_flatten_layers", None)
        layers = list(flatten(include_self=True)) if flatten else [model]
        self._layers = [layer for layer in layers if hasattr(layer, "use_cudnn")]
        self._saved = []

    def __enter__(self):
        self._saved = [layer.use_cudnn for layer in self._layers]
        for layer in self._layers:
            layer.use_cudnn = False
        return self

    def __exit__(self, *exc):
        for layer, value in zip(self._layers, self._saved):
            layer.use_cudnn = value
        return False


def _tf_variables(model) -> list:
    """The `tf.Variable`s behind the model's (Keras 3) variables.

    The SavedModel must track these, not the Keras wrappers: a Keras variable exports as a *new* variable
    ("Variable_<n>") in the checkpoint while the traced functions capture the wrapped `tf.Variable`, so a TF1 /
    TF Serving session (which restores through the checkpoint, not the Python object graph) would find the
    functions' variables uninitialised ("Could not find variable decoder/...").
    """
    found = []
    for variable in model.variables:
        inner = getattr(variable, "_value", None)
        inner = inner if isinstance(inner, tf.Variable) else getattr(variable, "value", variable)
        if not isinstance(inner, tf.Variable):
            name = getattr(variable, "path", variable)
            raise TypeError(
                f"Cannot find the tf.Variable behind model variable {name!r} ({type(variable).__name__}); "
                "export needs the TensorFlow backend (KERAS_BACKEND=tensorflow)."
            )
        found.append(inner)
    return found


class ServingGraph:
    """The model's generator and encoder as serving functions, with every input checked inside the graph."""

    def __init__(self, model):
        self.model = model
        self.latent_dim = int(model.latent_dim)
        self.image_shape = tuple(int(d) for d in model.image_shape)
        self.input_range = tuple(float(v) for v in getattr(model, "input_range", (0.0, 1.0)))
        self.step_slices = time_step_slices(model)

    def latents(self, z):
        return _checked(z, "z", (self.latent_dim,), "float32")

    def pixels(self, images):
        return _checked_pixels(_checked(images, "images", self.image_shape, "float32"))

    def mask(self, mask, images):
        """`mask` `[batch, H, W, 1]` after runtime checks of its shape, of its values (0 or 1 only) and that its
        batch is the batch of the (checked) `images`."""
        mask = _checked(mask, "mask", (*self.image_shape[:2], 1), "float32")
        binary = tf.reduce_all(tf.logical_or(tf.equal(mask, 0.0), tf.equal(mask, 1.0)))
        values = tf.debugging.Assert(
            binary,
            [
                "mask must hold 0 (missing pixel) or 1 (observed pixel) only; got min and max",
                tf.reduce_min(mask),
                tf.reduce_max(mask),
            ],
            name="check_mask_values",
        )
        mask_batch, images_batch = tf.shape(mask)[0], tf.shape(images)[0]
        batch = tf.debugging.Assert(
            tf.equal(mask_batch, images_batch),
            ["mask must have the batch size of images; got mask and images batch sizes", mask_batch, images_batch],
            name="check_mask_batch",
        )
        with tf.control_dependencies([values, batch]):
            return tf.identity(mask)

    def generate(self, z):
        """Images in [0, 1] from latents checked to be finite (a NaN z would give NaN images against the contract)."""
        return tf.cast(self.model.generate(_checked_finite(z, "z")), tf.float32)

    def posterior(self, images):
        """Checked pixels in [0, 1] -> (loc, log_variance) float32 `[batch, D]` (the model's own input range
        inside)."""
        lo, hi = self.input_range
        if (lo, hi) != INPUT_PIXEL_RANGE:
            images = lo + (hi - lo) * images
        loc, log_variance = self.model.encode(images, training=False)
        return tf.cast(loc, tf.float32), tf.cast(log_variance, tf.float32)

    def encode(self, images):
        """Checked pixels in [0, 1] -> (loc, scale) float32 `[batch, D]`, scale = exp(log_variance / 2)."""
        loc, log_variance = self.posterior(images)
        return loc, tf.exp(0.5 * log_variance)


def _serving_default(graph, z):
    return {"images": graph.generate(graph.latents(z))}


def _sample(graph, num, seed):
    num = _checked_scalar(num, "num")
    seed = _checked_scalar(seed, "seed")
    check = tf.debugging.Assert(
        tf.logical_and(num >= 1, num <= MAX_SAMPLE_NUM),
        [f"num must be an int32 scalar in [1, {MAX_SAMPLE_NUM}]; got", num],
        name="check_num_range",
    )
    with tf.control_dependencies([check]):
        shape = tf.stack([num, tf.constant(graph.latent_dim, tf.int32)])
    z = tf.random.stateless_normal(
        shape,
        seed=tf.stack([seed, tf.constant(SAMPLE_SEED_SALT, tf.int64)]),
        dtype=tf.float32,
        alg=SAMPLE_RNG_ALGORITHM,
    )
    return {"images": graph.generate(z), "z": z}


def _traversal(graph, z, time_step, num_points, seed):
    """The shared body of `traverse` and `traverse_images` (module docstring): checked finite z `[batch, D]`,
    time_step (1-based, the paper's t) / num_points / seed scalars -> images `[batch, P, H, W, C]`,
    z `[batch, P, D]`."""
    num_steps = len(graph.step_slices)
    time_step = _checked_in_range(
        _checked_scalar(time_step, "time_step"),
        "time_step",
        1,
        num_steps,
        f"the paper's t, counted from 1; the latent has T={num_steps}",
    )
    num_points = _checked_in_range(
        _checked_scalar(num_points, "num_points"), "num_points", 2, MAX_TRAVERSE_POINTS, "points per row, ends included"
    )
    seed = _checked_scalar(seed, "seed")
    size = graph.step_slices[0][1] - graph.step_slices[0][0]  # D/T, the same for every step
    start = tf.gather(tf.constant([s for s, _ in graph.step_slices], tf.int32), time_step - 1)
    # z~_t: one draw shared by every row, from its own stream per time step.
    target = tf.random.stateless_normal(
        [size],
        seed=tf.stack([seed, tf.constant(TRAVERSE_SEED_SALT, tf.int64) + tf.cast(time_step, tf.int64)]),
        dtype=tf.float32,
        alg=SAMPLE_RNG_ALGORITHM,
    )
    target = tf.pad(target, [tf.stack([start, graph.latent_dim - start - size])])  # [D], zero outside slice t
    positions = tf.range(graph.latent_dim)
    inside = tf.logical_and(positions >= start, positions < start + size)  # [D]
    # a_p = p / (P - 1): exactly 0 at the first point and exactly 1 at the last (x / x == 1 in IEEE arithmetic).
    alpha = tf.cast(tf.range(num_points), tf.float32) / tf.cast(num_points - 1, tf.float32)
    alpha = alpha[None, :, None]  # [1, P, 1]
    moved = (1.0 - alpha) * z[:, None, :] + alpha * target[None, None, :]  # [batch, P, D]
    paths = tf.where(inside[None, None, :], moved, z[:, None, :])  # broadcast to [batch, P, D]
    batch = tf.shape(z)[0]
    images = graph.generate(tf.reshape(paths, [-1, graph.latent_dim]))  # [batch * P, H, W, C]
    images = tf.reshape(images, tf.concat([tf.stack([batch, num_points]), tf.constant(graph.image_shape)], 0))
    return {"images": images, "z": paths}


def _traverse(graph, z, time_step, num_points, seed):
    return _traversal(graph, _checked_finite(graph.latents(z), "z"), time_step, num_points, seed)


def _traverse_images(graph, images, time_step, num_points, seed):
    loc, _ = graph.encode(graph.pixels(images))
    return _traversal(graph, loc, time_step, num_points, seed)


def _complete(graph, images, mask, steps, seed):
    """Eq. 5 completion (module docstring): z_0 from the occluded image, `steps` Adam steps on z in a
    tf.while_loop (`completion.complete`, tau = 0), images = gen(z*) (1 - m) + x m."""
    images = graph.pixels(images)
    mask = graph.mask(mask, images)
    steps = _checked_in_range(
        _checked_scalar(steps, "steps"), "steps", 0, MAX_COMPLETION_STEPS, "Adam steps on z; 0 = the initial z"
    )
    seed = _checked_scalar(seed, "seed")
    occluded = completion.occlude(images, mask, COMPLETION_FILL)
    loc, log_variance = graph.posterior(occluded)  # one encoder pass serves both inits
    sample = completion.initial_latents(lambda _: (loc, log_variance), occluded, "posterior_sample", seed)
    z_init = tf.where(seed < 0, loc, sample)
    result = completion.complete(
        lambda z: tf.cast(graph.model.generate(z), tf.float32),
        images,
        mask,
        z_init,
        steps,
        learning_rate=COMPLETION_LEARNING_RATE,
        gamma=COMPLETION_GAMMA,
        tau=COMPLETION_TAU,
    )
    return {"images": result["images"], "z": result["z"]}


def _encode(graph, images):
    loc, scale = graph.encode(graph.pixels(images))
    return {"loc": loc, "scale": scale}


def _reconstruct(graph, images):
    loc, _ = graph.encode(graph.pixels(images))
    return {"images": graph.generate(loc)}


ENDPOINTS = (
    Endpoint(
        "serving_default",
        inputs=lambda s: {"z": s.latent},
        outputs=lambda s: {"images": s.image},
        fn=_serving_default,
        doc="z float32 [batch, D] -> images float32 [batch, H, W, C] in [0, 1]",
    ),
    Endpoint(
        "sample",
        inputs=lambda s: {"num": ("int32", []), "seed": ("int64", [])},
        outputs=lambda s: {"images": s.image, "z": s.latent},
        fn=_sample,
        doc="num int32 [], seed int64 [] -> images [num, H, W, C] in [0, 1], z [num, D] (stateless)",
    ),
    Endpoint(
        "encode",
        inputs=lambda s: {"images": s.image},
        outputs=lambda s: {"loc": s.latent, "scale": s.latent},
        fn=_encode,
        doc="images float32 [batch, H, W, C] in [0, 1] -> loc, scale float32 [batch, D]",
    ),
    Endpoint(
        "reconstruct",
        inputs=lambda s: {"images": s.image},
        outputs=lambda s: {"images": s.image},
        fn=_reconstruct,
        doc="images float32 [batch, H, W, C] in [0, 1] -> generate(posterior mean) in [0, 1]",
    ),
    Endpoint(
        "traverse",
        inputs=lambda s: {
            "z": s.latent,
            "time_step": ("int32", []),
            "num_points": ("int32", []),
            "seed": ("int64", []),
        },
        outputs=lambda s: {"images": s.image_paths, "z": s.latent_paths},
        fn=_traverse,
        doc="z [batch, D], time_step in [1, T], num_points in [2, MAX], seed -> images [batch, P, H, W, C], "
        "z [batch, P, D]",
    ),
    Endpoint(
        "traverse_images",
        inputs=lambda s: {
            "images": s.image,
            "time_step": ("int32", []),
            "num_points": ("int32", []),
            "seed": ("int64", []),
        },
        outputs=lambda s: {"images": s.image_paths, "z": s.latent_paths},
        fn=_traverse_images,
        doc="traverse from the posterior means of images [batch, H, W, C] in [0, 1]",
    ),
    Endpoint(
        "complete",
        inputs=lambda s: {"images": s.image, "mask": s.mask, "steps": ("int32", []), "seed": ("int64", [])},
        outputs=lambda s: {"images": s.image, "z": s.latent},
        fn=_complete,
        doc="images in [0, 1], mask {0, 1} (1 = observed), steps in [0, MAX], seed -> completed images, z*",
    ),
)
SIGNATURES = tuple(endpoint.name for endpoint in ENDPOINTS)


def signature_table(latent_dim: int, image_shape) -> dict:
    """The serving contract for one model, generated from `ENDPOINTS`: signature -> {'inputs'|'outputs':
    {name: (dtype, shape)}}. Shapes use -1 for a dynamic dimension (the batch; `traverse`'s num_points), as
    `saved_model_cli show` prints them; `num`, `seed`, `time_step`, `num_points` and `steps` are scalars (shape [])."""
    shapes = Shapes(int(latent_dim), tuple(int(d) for d in image_shape))
    return {e.name: {"inputs": e.inputs(shapes), "outputs": e.outputs(shapes)} for e in ENDPOINTS}


def _trace(endpoint, graph, shapes):
    """The endpoint's concrete function, with TensorSpecs generated from its `inputs` spec."""
    specs = endpoint.inputs(shapes)
    names = list(specs)
    signature = [
        tf.TensorSpec([None if d == -1 else d for d in shape], tf.as_dtype(dtype), name=name)
        for name, (dtype, shape) in specs.items()
    ]

    def function(*args):
        return endpoint.fn(graph, **dict(zip(names, args)))

    function.__name__ = endpoint.name
    function.__doc__ = endpoint.doc
    return tf.function(function, input_signature=signature, jit_compile=False, autograph=False).get_concrete_function()


def build_serving_module(model, metadata: dict) -> tf.Module:
    """A `tf.Module` holding the model's variables, one concrete function per `ENDPOINTS` entry and the metadata.

    Args:
      model: the model interface described in `export_lib`'s docstring, built and restored.
      metadata: JSON-serialisable dict (see `export_lib.export_model`); stored as `metadata_json` and typed
        variables.

    Returns:
      the module; `module.serving_signatures` maps each name of `SIGNATURES` to its concrete function
      (pass it as `signatures=` to `tf.saved_model.save`).
    """
    graph = ServingGraph(model)
    shapes = Shapes(graph.latent_dim, graph.image_shape)
    module = tf.Module(name="crvae_tf_serving")
    # Only the variables are tracked (not the Keras objects): the SavedModel needs no Keras to load.
    module.model_variables = _tf_variables(model)
    # Traced once, here, without cuDNN kernels. The functions are reachable only through the signatures (not
    # as module attributes too), so `tf.saved_model.save` writes each graph once and never retraces.
    with NoCudnn(model):
        module.serving_signatures = {e.name: _trace(e, graph, shapes) for e in ENDPOINTS}

    # Metadata for readers of the SavedModel (TF Serving itself ignores these).
    module.metadata_json = tf.Variable(json.dumps(metadata, sort_keys=True), trainable=False, name="metadata_json")
    module.model_name = tf.Variable(str(metadata.get("model_name", model.name)), trainable=False, name="model_name")
    module.training_step = tf.Variable(
        int(metadata.get("training_step", -1)), dtype=tf.int64, trainable=False, name="training_step"
    )
    module.latent_shape = tf.Variable(latent_shape(model), dtype=tf.int64, trainable=False, name="latent_shape")
    module.image_shape = tf.Variable(list(graph.image_shape), dtype=tf.int64, trainable=False, name="image_shape")
    module.output_pixel_range = tf.Variable(
        list(OUTPUT_PIXEL_RANGE), dtype=tf.float32, trainable=False, name="output_pixel_range"
    )
    module.operative_config = tf.Variable(
        str(metadata.get("operative_config", "")), trainable=False, name="operative_config"
    )
    return module
