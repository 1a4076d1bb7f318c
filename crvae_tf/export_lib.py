"""Export of a trained generator as a TF Serving SavedModel: the serving contract, metadata and atomic writes.

`export_run(model_dir, export_dir)` rebuilds a run's model from its saved config (`train_lib.load_run`),
restores a checkpoint and writes `export_dir/<version>/` (version = the training step) in TF Serving's
versioned layout. `export_model(model, export_dir, version)` does the same for a model already in memory.
The contract is in `export/README.md`; the code below is its single source of truth (`signature_table`).

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
"z must be [batch, 1024] float32".

The model interface used (duck typing; the VAE family and the adversarial family both provide it):
`model.image_shape` (H, W, C), `model.latent_dim`, `model.name`, `model.input_range` (pixel range that
`encode` takes: (0, 1) or (-1, 1)), `model.variables`, `model.encode(images, training=False) ->
(loc, log_variance)` and `model.generate(z) -> images in [0, 1]`.

Serving graph rules (checked on the written SavedModel before it is published, `check_serving_graph`):
only ops registered in core TensorFlow (`tf.raw_ops`), no `CudnnRNN*` op (Keras RNN layers are traced with
`use_cudnn=False`; crvae_tf's own `StackedLSTM` is plain matmuls), no XLA-compiled function.

Atomic publication: the SavedModel and its metadata are written to `export_dir/.tmp-<version>-<hex>/` and
renamed to `export_dir/<version>` only when complete; on any failure the temporary folder is removed. TF
Serving only loads all-digit folder names, so it never sees a half-written version.

Metadata (where to find it, also in export/README.md):
    <version>/assets.extra/crvae_tf_metadata.json   all of it, as JSON (`METADATA_FILE`; keys in `export_model`)
    <version>/assets.extra/operative_config.gin     the run's operative gin config
    tf.saved_model.load(...).metadata_json          the same JSON, as a string variable
    tf.saved_model.load(...).training_step, .latent_shape, .image_shape, .output_pixel_range, .model_name,
        .operative_config                            typed variables
"""

import collections
import ctypes
import datetime
import json
import os
import shutil
from typing import NamedTuple
from typing import Optional
import uuid

import keras
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import crvae_tf
from crvae_tf import data as data_lib
from crvae_tf import train_lib

SIGNATURES = ("serving_default", "sample", "encode", "reconstruct")
# `sample` refuses num outside [1, MAX_SAMPLE_NUM] (one request cannot ask for an unbounded allocation).
MAX_SAMPLE_NUM = 4096
# Second word of the stateless seed pair: z = stateless_normal([num, D], seed=[seed, SAMPLE_SEED_SALT]).
SAMPLE_SEED_SALT = 0
SAMPLE_RNG_ALGORITHM = "philox"
OUTPUT_PIXEL_RANGE = (0.0, 1.0)
INPUT_PIXEL_RANGE = (0.0, 1.0)
METADATA_DIR = "assets.extra"
METADATA_FILE = os.path.join(METADATA_DIR, "crvae_tf_metadata.json")
OPERATIVE_CONFIG_FILE = os.path.join(METADATA_DIR, "operative_config.gin")
METADATA_FORMAT = "crvae_tf.export/1"
TMP_PREFIX = ".tmp-"
FORBIDDEN_OP_PREFIXES = ("CudnnRNN",)


def signature_table(latent_dim: int, image_shape) -> dict:
    """The serving contract for one model: signature -> {'inputs'|'outputs': {name: (dtype, shape)}}.

    Shapes use -1 for the dynamic batch dimension (as `saved_model_cli show` prints them); `sample`'s
    `num`/`seed` are scalars (shape []).
    """
    h, w, c = (int(d) for d in image_shape)
    d = int(latent_dim)
    image = ("float32", [-1, h, w, c])
    latent = ("float32", [-1, d])
    return {
        "serving_default": {"inputs": {"z": latent}, "outputs": {"images": image}},
        "sample": {"inputs": {"num": ("int32", []), "seed": ("int64", [])}, "outputs": {"images": image, "z": latent}},
        "encode": {"inputs": {"images": image}, "outputs": {"loc": latent, "scale": latent}},
        "reconstruct": {"inputs": {"images": image}, "outputs": {"images": image}},
    }


def latent_shape(model) -> list:
    """The latent's natural shape: [D] for flat latents, [C, h, w] for conv-shaped ones (flattened channel-major).

    Conv-shaped latents are recognised by `model.latent_head.latent_channels` and `feature_shape` (crvae_tf's
    conv, block_fc and channel_recurrent heads); anything else is reported as flat.
    """
    head = getattr(model, "latent_head", None)
    channels = getattr(head, "latent_channels", None)
    feature_shape = getattr(head, "feature_shape", None)
    if channels and feature_shape and int(channels) * int(feature_shape[0]) * int(feature_shape[1]) == model.latent_dim:
        return [int(channels), int(feature_shape[0]), int(feature_shape[1])]
    return [int(model.latent_dim)]


# ---------------------------------------------------------------------------------------------------- graph


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


def _checked_scalar(x, name: str):
    """`x` after a runtime check that it is a scalar.

    EnsureShape, not an Assert on `tf.rank`: Grappler folds the rank to the TensorSpec's, so only a kernel that
    reads the runtime shape catches a `[1]` fed by a server ("Shape of tensor num [1] is not compatible with
    expected shape []").
    """
    return tf.ensure_shape(x, [], name=f"check_{name}_is_scalar")


class _NoCudnn:
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


def build_serving_module(model, metadata: dict) -> tf.Module:
    """A `tf.Module` holding the model's variables, the four signature functions and the metadata.

    Args:
      model: the model interface described in the module docstring, built and restored.
      metadata: JSON-serialisable dict (see `export_model`); stored as `metadata_json` and typed variables.

    Returns:
      the module; `module.serving_signatures` maps each name of `SIGNATURES` to its concrete function
      (pass it as `signatures=` to `tf.saved_model.save`).
    """
    latent_dim = int(model.latent_dim)
    image_shape = tuple(int(d) for d in model.image_shape)
    lo, hi = (float(v) for v in getattr(model, "input_range", (0.0, 1.0)))
    module = tf.Module(name="crvae_tf_serving")
    # Only the variables are tracked (not the Keras objects): the SavedModel needs no Keras to load.
    module.model_variables = _tf_variables(model)

    def to_model_range(images):
        return images if (lo, hi) == INPUT_PIXEL_RANGE else lo + (hi - lo) * images

    def generate(z):
        return tf.cast(model.generate(z), tf.float32)

    def encode(images):
        loc, log_variance = model.encode(to_model_range(images), training=False)
        return tf.cast(loc, tf.float32), tf.exp(0.5 * tf.cast(log_variance, tf.float32))

    z_spec = tf.TensorSpec([None, latent_dim], tf.float32, name="z")
    images_spec = tf.TensorSpec((None,) + image_shape, tf.float32, name="images")

    @tf.function(input_signature=[z_spec], jit_compile=False, autograph=False)
    def serving_default(z):
        """z float32 [batch, D] -> {'images': float32 [batch, H, W, C] in [0, 1]}."""
        return {"images": generate(_checked(z, "z", (latent_dim,), "float32"))}

    @tf.function(
        input_signature=[tf.TensorSpec([], tf.int32, name="num"), tf.TensorSpec([], tf.int64, name="seed")],
        jit_compile=False,
        autograph=False,
    )
    def sample(num, seed):
        """num int32 [], seed int64 [] -> {'images': [num, H, W, C] in [0, 1], 'z': [num, D]} (stateless)."""
        num = _checked_scalar(num, "num")
        seed = _checked_scalar(seed, "seed")
        check = tf.debugging.Assert(
            tf.logical_and(num >= 1, num <= MAX_SAMPLE_NUM),
            [f"num must be an int32 scalar in [1, {MAX_SAMPLE_NUM}]; got", num],
            name="check_num_range",
        )
        with tf.control_dependencies([check]):
            shape = tf.stack([num, tf.constant(latent_dim, tf.int32)])
        z = tf.random.stateless_normal(
            shape,
            seed=tf.stack([seed, tf.constant(SAMPLE_SEED_SALT, tf.int64)]),
            dtype=tf.float32,
            alg=SAMPLE_RNG_ALGORITHM,
        )
        return {"images": generate(z), "z": z}

    @tf.function(input_signature=[images_spec], jit_compile=False, autograph=False)
    def encode_fn(images):
        """images float32 [batch, H, W, C] in [0, 1] -> {'loc', 'scale'}: float32 [batch, D] posterior parameters."""
        images = _checked_pixels(_checked(images, "images", image_shape, "float32"))
        loc, scale = encode(images)
        return {"loc": loc, "scale": scale}

    @tf.function(input_signature=[images_spec], jit_compile=False, autograph=False)
    def reconstruct(images):
        """images float32 [batch, H, W, C] in [0, 1] -> {'images'}: generate(posterior mean), in [0, 1]."""
        images = _checked_pixels(_checked(images, "images", image_shape, "float32"))
        loc, _ = encode(images)
        return {"images": generate(loc)}

    # Traced once, here, without cuDNN kernels. The functions are reachable only through the signatures (not
    # as module attributes too), so `tf.saved_model.save` writes each graph once and never retraces.
    with _NoCudnn(model):
        module.serving_signatures = {
            "serving_default": serving_default.get_concrete_function(),
            "sample": sample.get_concrete_function(),
            "encode": encode_fn.get_concrete_function(),
            "reconstruct": reconstruct.get_concrete_function(),
        }

    # Metadata for readers of the SavedModel (TF Serving itself ignores these).
    module.metadata_json = tf.Variable(json.dumps(metadata, sort_keys=True), trainable=False, name="metadata_json")
    module.model_name = tf.Variable(str(metadata.get("model_name", model.name)), trainable=False, name="model_name")
    module.training_step = tf.Variable(
        int(metadata.get("training_step", -1)), dtype=tf.int64, trainable=False, name="training_step"
    )
    module.latent_shape = tf.Variable(latent_shape(model), dtype=tf.int64, trainable=False, name="latent_shape")
    module.image_shape = tf.Variable(list(image_shape), dtype=tf.int64, trainable=False, name="image_shape")
    module.output_pixel_range = tf.Variable(
        list(OUTPUT_PIXEL_RANGE), dtype=tf.float32, trainable=False, name="output_pixel_range"
    )
    module.operative_config = tf.Variable(
        str(metadata.get("operative_config", "")), trainable=False, name="operative_config"
    )
    return module


# ---------------------------------------------------------------------------------------------------- op checks


class ServingGraphError(ValueError):
    """The exported graph contains an op a stock TF Serving binary cannot run (cuDNN-only, XLA, custom)."""


def saved_model_ops(saved_model_dir: str) -> collections.Counter:
    """Counts op types over the SavedModel's graph and every function in its library: the op set a server runs.

    Nodes that call a library function directly (their op is the function's name) are not counted; the
    function's own nodes are.
    """
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    counts = collections.Counter()
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        function_names = {function.signature.name for function in graph.library.function}
        nodes = list(graph.node) + [node for function in graph.library.function for node in function.node_def]
        for node in nodes:
            if node.op not in function_names:
                counts[node.op] += 1
    return counts


def xla_compiled_functions(saved_model_dir: str) -> list:
    """Names of library functions (and nodes) carrying `_XlaMustCompile=True` (jit_compile) in the SavedModel."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    found = []
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        for function in graph.library.function:
            if function.attr.get("_XlaMustCompile") is not None and function.attr["_XlaMustCompile"].b:
                found.append(function.signature.name)
            for node in function.node_def:
                if node.attr.get("_XlaMustCompile") is not None and node.attr["_XlaMustCompile"].b:
                    found.append(f"{function.signature.name}/{node.name}")
        for node in graph.node:
            if node.attr.get("_XlaMustCompile") is not None and node.attr["_XlaMustCompile"].b:
                found.append(node.name)
    return found


def check_serving_graph(saved_model_dir: str) -> collections.Counter:
    """Raises `ServingGraphError` unless every op is core TF, none is `CudnnRNN*` and nothing is XLA-compiled.

    Returns the op counts (`saved_model_ops`).
    """
    ops = saved_model_ops(saved_model_dir)
    cudnn = sorted(op for op in ops if op.startswith(FORBIDDEN_OP_PREFIXES))
    if cudnn:
        raise ServingGraphError(
            f"The serving graph contains cuDNN-only RNN ops {cudnn}: TF Serving on CPU cannot run "
            "them. Export on a machine without a GPU (CUDA_VISIBLE_DEVICES='') or give the "
            "model's RNN layers use_cudnn=False."
        )
    custom = sorted(op for op in ops if not hasattr(tf.raw_ops, op))
    if custom:
        raise ServingGraphError(
            f"The serving graph contains ops that are not core TensorFlow ops: {custom}. The "
            "stock TF Serving binary has no kernels for custom ops; express them in core ops."
        )
    xla = xla_compiled_functions(saved_model_dir)
    if xla:
        raise ServingGraphError(
            f"The serving graph has XLA-compiled functions {xla[:5]}: remove jit_compile=True "
            "from the traced functions (TF Serving does not compile them by default)."
        )
    return ops


# ---------------------------------------------------------------------------------------------------- writing


def _is_version_name(name: str) -> bool:
    return name.isdigit()


def versions(export_dir: str) -> list:
    """The published versions under `export_dir` (all-digit folder names, as TF Serving sees them), ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(export_dir)
        if _is_version_name(name) and os.path.isdir(os.path.join(export_dir, name))
    )


_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def _publish(tmp: str, final: str, overwrite: bool) -> None:
    """Renames the finished `tmp` folder to `final`; with `overwrite`, swaps it with an existing `final`."""
    if not os.path.exists(final):
        os.rename(tmp, final)  # fails (ENOTEMPTY) if another export published `final` meanwhile
        return
    if not overwrite:
        raise FileExistsError(
            f"{final} already exists. Pass --overwrite to replace it (a server that already "
            "loaded this version keeps serving the old one), or export another checkpoint."
        )
    if _exchange(tmp, final):  # `final` is now the new export and `tmp` the old one
        shutil.rmtree(tmp)
        return
    aside = os.path.join(os.path.dirname(final), f"{TMP_PREFIX}old-{os.path.basename(final)}-{uuid.uuid4().hex}")
    os.rename(final, aside)
    os.rename(tmp, final)
    shutil.rmtree(aside)


def _save(module: tf.Module, path: str) -> None:
    """Writes the SavedModel (the step the interruption test breaks)."""
    tf.saved_model.save(
        module,
        path,
        signatures=module.serving_signatures,
        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False),
    )


class Export(NamedTuple):
    """What `export_model` / `export_run` wrote."""

    path: str  # export_dir/<version>
    version: int
    metadata: dict
    ops: dict  # op type -> count in the serving graph


def export_model(
    model,
    export_dir: str,
    version: int,
    *,
    operative_config: str = "",
    extra_metadata: Optional[dict] = None,
    overwrite: bool = False,
) -> Export:
    """Writes `model` as `export_dir/<version>/`, atomically.

    Args:
      model: built model with the interface of the module docstring (weights restored).
      export_dir: TF Serving's model base path (created if missing); holds one folder per version.
      version: non-negative int, normally the training step.
      operative_config: the run's operative gin config text (stored as metadata).
      extra_metadata: more JSON-serialisable metadata (e.g. the checkpoint path).
      overwrite: replace an existing `export_dir/<version>` (atomic swap); otherwise that is an error.

    Returns:
      `Export`. Raises FileExistsError (version exists, no overwrite), ServingGraphError (the graph is not
      servable) or whatever the save raised; in every failure case nothing is left in `export_dir`.
    """
    version = int(version)
    if version < 0:
        raise ValueError(f"version must be a non-negative integer (TF Serving's version folder), got {version}")
    os.makedirs(export_dir, exist_ok=True)
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final) and not overwrite:
        raise FileExistsError(
            f"{final} already exists. Pass --overwrite to replace it (a server that already "
            "loaded this version keeps serving the old one), or export another checkpoint."
        )
    lo, hi = (float(v) for v in getattr(model, "input_range", (0.0, 1.0)))
    head = getattr(model, "latent_head", None)
    metadata = {
        "format": METADATA_FORMAT,
        "model_name": str(model.name),
        "model_class": type(model).__name__,
        "latent_head": type(head).__name__ if head is not None else None,
        "training_step": version,
        "latent_dim": int(model.latent_dim),
        "latent_shape": latent_shape(model),
        "latent_layout": (
            "flat"
            if len(latent_shape(model)) == 1
            else "channel-major: z is the row-major flattening of a [C, h, w] latent (latent_shape)"
        ),
        "image_shape": [int(d) for d in model.image_shape],
        "output_pixel_range": list(OUTPUT_PIXEL_RANGE),
        "input_pixel_range": list(INPUT_PIXEL_RANGE),
        "model_input_range": [lo, hi],
        "signatures": signature_table(model.latent_dim, model.image_shape),
        "sample_rng": {
            "op": "tf.random.stateless_normal",
            "alg": SAMPLE_RNG_ALGORITHM,
            "seed": f"[seed, {SAMPLE_SEED_SALT}]",
            "max_num": MAX_SAMPLE_NUM,
        },
        "crvae_tf_version": crvae_tf.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra_metadata or {}),
        "operative_config": operative_config,
    }
    tmp = os.path.join(export_dir, f"{TMP_PREFIX}{version}-{uuid.uuid4().hex}")
    try:
        module = build_serving_module(model, metadata)
        with _NoCudnn(model):
            _save(module, tmp)
        ops = check_serving_graph(tmp)
        os.makedirs(os.path.join(tmp, METADATA_DIR), exist_ok=True)
        # Plain writes (mode from the umask, readable by a serving container's user): the whole folder is
        # published by one rename below, so the files need no atomicity of their own.
        for name, text in (
            (METADATA_FILE, json.dumps(metadata, indent=2, sort_keys=True)),
            (OPERATIVE_CONFIG_FILE, operative_config),
        ):
            with open(os.path.join(tmp, name), "w") as f:
                f.write(text)
        _publish(tmp, final, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Export(final, version, metadata, dict(ops))


def export_run(
    model_dir: str, export_dir: str, checkpoint="latest", gin_bindings=(), overwrite: bool = False
) -> Export:
    """Rebuilds a run (`train_lib.load_run`: its operative config + `gin_bindings`), restores `checkpoint`
    ('latest', 'best' or a step) and exports it as `export_dir/<training step>/` (`export_model`).

    `dataset.download = False` is bound before `gin_bindings`: the run's data must be local (or prepared for tfds).
    """
    # The image shape comes from the run's dataset; export never waits on a download (tfds retries for minutes).
    try:
        run = train_lib.load_run(
            model_dir, checkpoint=checkpoint, gin_bindings=["dataset.download = False", *gin_bindings]
        )
    except data_lib.DataUnavailableError as error:
        raise data_lib.DataUnavailableError(
            f"{error} (Export rebuilds the model from the run's config, which loads the run's dataset for the image "
            "shape: point it at a local copy with --gin_bindings=\"dataset.local_path='/path/to/data'\".)"
        ) from error
    with open(os.path.join(model_dir, "operative_config.gin")) as f:
        operative_config = f.read()
    extra = {
        "checkpoint": os.path.abspath(run.checkpoint_path),
        "model_dir": os.path.abspath(model_dir),
        "train_seed": run.seed,
        "gin_bindings": list(gin_bindings),
    }
    return export_model(
        run.model, export_dir, run.step, operative_config=operative_config, extra_metadata=extra, overwrite=overwrite
    )
