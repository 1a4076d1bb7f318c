"""The serving endpoints: one small spec per endpoint (`ENDPOINTS`), from which both the traced signature
functions (`build_serving_module`) and the contract table (`signature_table`, the exported metadata and
export/README.md) are generated. A new endpoint is one more `Endpoint` in the list.

Signatures (all batch dimensions dynamic, batch >= 1; D = latent_dim, (H, W, C) = the model's image shape):

    serving_default  z float32 [batch, D]                   -> images float32 [batch, H, W, C] in [0, 1]
    sample           num int32 [], seed int64 []            -> images float32 [num, H, W, C] in [0, 1],
                                                               z float32 [num, D]
    encode           images float32 [batch, H, W, C] in [0,1] -> loc float32 [batch, D], scale float32 [batch, D]
    reconstruct      images float32 [batch, H, W, C] in [0,1] -> images float32 [batch, H, W, C] in [0, 1]

`sample` draws z with `tf.random.stateless_normal(shape=[num, D], seed=[seed, 0], alg='philox')`: the
same (num, seed) gives byte-identical outputs on every call and every server restart. Every input is
checked inside the graph (not only by the signature's TensorSpec, which TF Serving does not enforce), so a
wrong shape fails with InvalidArgumentError naming the expected shape, e.g.
"z must be [batch, 1024] float32"; a latent with a NaN or Inf (`serving_default`'s z, and every z the decoder
receives: `sample`'s and `reconstruct`'s) fails with "z must be finite (no NaN or Inf)".

The model interface used (duck typing; the VAE family and the adversarial family both provide it):
`model.image_shape` (H, W, C), `model.latent_dim`, `model.name`, `model.input_range` (pixel range that
`encode` takes: (0, 1) or (-1, 1)), `model.variables`, `model.encode(images, training=False) ->
(loc, log_variance)` and `model.generate(z) -> images in [0, 1]`.
"""

import json
import math
from typing import Callable
from typing import NamedTuple

import tensorflow as tf

# `sample` refuses num outside [1, MAX_SAMPLE_NUM] (one request cannot ask for an unbounded allocation).
MAX_SAMPLE_NUM = 4096
# Second word of the stateless seed pair: z = stateless_normal([num, D], seed=[seed, SAMPLE_SEED_SALT]).
SAMPLE_SEED_SALT = 0
SAMPLE_RNG_ALGORITHM = "philox"
OUTPUT_PIXEL_RANGE = (0.0, 1.0)
INPUT_PIXEL_RANGE = (0.0, 1.0)


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

    def latents(self, z):
        return _checked(z, "z", (self.latent_dim,), "float32")

    def pixels(self, images):
        return _checked_pixels(_checked(images, "images", self.image_shape, "float32"))

    def generate(self, z):
        """Images in [0, 1] from latents checked to be finite (a NaN z would give NaN images against the contract)."""
        return tf.cast(self.model.generate(_checked_finite(z, "z")), tf.float32)

    def encode(self, images):
        """Checked pixels in [0, 1] -> (loc, scale) float32 `[batch, D]`."""
        lo, hi = self.input_range
        if (lo, hi) != INPUT_PIXEL_RANGE:
            images = lo + (hi - lo) * images
        loc, log_variance = self.model.encode(images, training=False)
        return tf.cast(loc, tf.float32), tf.exp(0.5 * tf.cast(log_variance, tf.float32))


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
)
SIGNATURES = tuple(endpoint.name for endpoint in ENDPOINTS)


def signature_table(latent_dim: int, image_shape) -> dict:
    """The serving contract for one model, generated from `ENDPOINTS`: signature -> {'inputs'|'outputs':
    {name: (dtype, shape)}}. Shapes use -1 for the dynamic batch dimension (as `saved_model_cli show` prints
    them); `sample`'s `num`/`seed` are scalars (shape [])."""
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
