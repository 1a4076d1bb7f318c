"""The export contract: tiny trained runs of every family exported, then served without crvae_tf.

What each test proves is in its docstring. The runs (VAE, cVAE, bcVAE, crVAE, 1 training step each), their
exports, the [-1, 1]-input stand-in of the adversarial family and two fresh serving-side processes are
shared (setUpClass); every test that writes works in its own temporary folder.
"""

import ast
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

from absl import app
from absl import flags
import gin
import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from crvae_tf import data
from crvae_tf import export as export_binary
from crvae_tf import runs
from crvae_tf.models import completion
from crvae_tf.models import latent_steps
from crvae_tf.serving import endpoints
from crvae_tf.serving import export_lib
from crvae_tf.serving import graph_checks
from crvae_tf.serving import publish
from crvae_tf.training import loop

import testing_utils

FAMILIES = {
    "vae": ("mnist_vae.gin", "fc"),
    "cvae": ("mnist_cvae.gin", "conv"),
    "bcvae": ("mnist_bcvae.gin", "block_fc"),
    "crvae": ("mnist_crvae.gin", "channel_recurrent"),
}
SIGNED = "crvae_gan"  # the adversarial family: a tiny crVAE-GAN on fake faces, pixels in [-1, 1] inside
STEP = 1
SAMPLE_NUM, SAMPLE_SEED = 5, 123
CLIENT_PATH = os.path.join(testing_utils.REPO, "export", "client.py")

# Every op the serving graphs of the four families may contain. A new op (a new layer, a TF upgrade) fails
# `test_serving_graph_is_core_tf_without_cudnn_or_xla` until it is reviewed for TF Serving and added here.
OP_ALLOWLIST = frozenset(
    {
        # arithmetic, activations, layers
        "AddV2",
        "BiasAdd",
        "Conv2D",
        "Conv2DBackpropInput",
        "Einsum",
        "Exp",
        "LeakyRelu",
        "MatMul",
        "Mul",
        "Neg",
        "RealDiv",
        "Relu",
        "Rsqrt",
        "Sigmoid",
        "Sub",
        "Tanh",
        # shapes and layout
        "ConcatV2",
        "GatherV2",
        "Pack",
        "Pad",
        "Prod",
        "Reshape",
        "Shape",
        "Split",
        "Squeeze",
        "StridedSlice",
        "Transpose",
        "Cast",
        "Identity",
        "IdentityN",  # the forward side of tf.custom_gradient (blocks.lstm_recurrence)
        "DepthToSpace",  # blocks.TorchConv2DTranspose's four phases (its kernel's rows are reversed: ReverseV2)
        "ReverseV2",
        "SpaceToDepth",  # the gradient of DepthToSpace (the `complete` signature optimises z through the decoder)
        "Const",
        "NoOp",
        "Select",
        # input checks (Assert under If for float data), comparisons, reductions
        "All",
        "Assert",
        "EnsureShape",
        "Equal",
        "GreaterEqual",
        "If",
        "IsFinite",
        "LessEqual",
        "LogicalAnd",
        "Max",
        "Min",
        # stateless sampling (seed scrambling of tf.random.stateless_normal)
        "StatelessRandomNormalV2",
        "StatelessRandomUniformFullIntV2",
        "BitwiseOr",
        "LeftShift",
        # traverse (Range, SelectV2 over the time-step slice) and complete: the Adam loop over z (While) and the
        # generator's gradient with respect to z, all core ops (no custom gradient op)
        "AddN",
        "BiasAddGrad",
        "BroadcastGradientArgs",
        "BroadcastTo",
        "Conv2DBackpropFilter",
        "DynamicStitch",
        "Fill",
        "FloorMod",
        "InvertPermutation",
        "LeakyReluGrad",
        "Less",
        "LogicalOr",
        "Pow",
        "Range",
        "ReluGrad",
        "SelectV2",
        "ShapeN",
        "SigmoidGrad",
        "Slice",
        "Sqrt",
        "Square",
        "StatelessRandomGetKeyCounter",
        "StridedSliceGrad",
        "Sum",
        "TanhGrad",
        "Tile",
        "Unpack",
        "While",
        "ZerosLike",
        # variables, function calls, checkpoint save/restore
        "AssignVariableOp",
        "DisableCopyOnRead",
        "MergeV2Checkpoints",
        "Placeholder",
        "ReadVariableOp",
        "RestoreV2",
        "SaveV2",
        "ShardedFilename",
        "StatefulPartitionedCall",
        "StaticRegexFullMatch",
        "StringJoin",
        "VarHandleOp",
    }
)

# The publication and binary tests export several times; what they check (folders, renames, clean-up, flags) does not
# depend on the graph, so they trace one signature, not every endpoint (`complete` traces the generator's gradient).
ONE_ENDPOINT = endpoints.ENDPOINTS[:1]

# Runs in a fresh interpreter that cannot import crvae_tf or keras: TF Serving's side of the contract.
SERVING_SCRIPT = r"""
import json, sys
sys.modules["crvae_tf"] = None   # any import of crvae_tf (or keras) now raises ImportError
sys.modules["keras"] = None
import numpy as np
import tensorflow as tf
spec = json.load(open(sys.argv[1]))
inputs = np.load(spec["inputs"])
out = {}
for name, path in sorted(spec["exports"].items()):
    loaded = tf.saved_model.load(path)
    sig = loaded.signatures
    out[name + "/signature_names"] = np.array(sorted(sig.keys()))
    for batch in (1, 3):    # the batch dimension is dynamic
        z = tf.constant(inputs[name + "/z"][:batch])
        out[name + f"/serving_default/images/{batch}"] = sig["serving_default"](z=z)["images"].numpy()
    num, seed = tf.constant(spec["num"], tf.int32), tf.constant(spec["seed"], tf.int64)
    for call in (1, 2):
        result = sig["sample"](num=num, seed=seed)
        out[name + f"/sample/images/{call}"] = result["images"].numpy()
        out[name + f"/sample/z/{call}"] = result["z"].numpy()
    images = tf.constant(inputs[name + "/images"])
    encoded = sig["encode"](images=images)
    out[name + "/encode/loc"] = encoded["loc"].numpy()
    out[name + "/encode/scale"] = encoded["scale"].numpy()
    out[name + "/reconstruct/images"] = sig["reconstruct"](images=images)["images"].numpy()
    out[name + "/training_step"] = loaded.training_step.numpy()
    out[name + "/latent_shape"] = loaded.latent_shape.numpy()
    out[name + "/metadata_json"] = np.array(loaded.metadata_json.numpy().decode())
out["modules"] = np.array(sorted(m for m in sys.modules if m.split(".")[0] in ("crvae_tf", "keras") and sys.modules[m]))
np.savez(spec["out"], **out)
"""


def complete_call(loaded, images, mask, steps, seed):
    """The loaded export's `complete` signature on numpy inputs -> dict of numpy outputs."""
    out = loaded.signatures["complete"](
        images=tf.constant(images, tf.float32),
        mask=tf.constant(mask, tf.float32),
        steps=tf.constant(steps, tf.int32),
        seed=tf.constant(seed, tf.int64),
    )
    return {k: v.numpy() for k, v in out.items()}


def load_client():
    spec = importlib.util.spec_from_file_location("export_client", CLIENT_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_serving_process(spec_path):
    """Runs SERVING_SCRIPT in a fresh interpreter, CPU only, outside the repository; returns its outputs."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    with open(spec_path) as f:
        out = json.load(f)["out"]
    child = subprocess.run(
        [sys.executable, "-c", SERVING_SCRIPT, spec_path],
        cwd=os.path.dirname(spec_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if child.returncode:
        raise AssertionError(f"serving-side process failed (exit {child.returncode}):\n{child.stderr[-4000:]}")
    with np.load(out) as arrays:
        return {key: arrays[key] for key in arrays.files}


def parse_saved_model_cli(text):
    """`saved_model_cli show --all` text -> {signature: {'method': str, 'inputs'|'outputs': {name: (dtype, shape)}}}."""
    signatures, current, tensor = {}, None, None
    for line in text.splitlines():
        line = line.strip()
        match = re.match(r"signature_def\['(.+)'\]:$", line)
        if match:
            current = signatures.setdefault(match.group(1), {"inputs": {}, "outputs": {}, "method": None})
            continue
        match = re.match(r"(inputs|outputs)\['(.+)'\] tensor_info:$", line)
        if match and current is not None:
            tensor = current[match.group(1)].setdefault(match.group(2), [None, None])
            continue
        if line.startswith("dtype:") and tensor is not None:
            tensor[0] = line.split(":", 1)[1].strip()
        elif line.startswith("shape:") and tensor is not None:
            tensor[1] = line.split(":", 1)[1].strip()
        elif line.startswith("Method name is:") and current is not None:
            current["method"] = line.split(":", 1)[1].strip()
    return {
        name: {
            "method": s["method"],
            "inputs": {k: tuple(v) for k, v in s["inputs"].items()},
            "outputs": {k: tuple(v) for k, v in s["outputs"].items()},
        }
        for name, s in signatures.items()
    }


def cli_form(dtype, shape):
    """('float32', [-1, 16]) -> ('DT_FLOAT', '(-1, 16)'), as saved_model_cli prints it."""
    names = {"float32": "DT_FLOAT", "int32": "DT_INT32", "int64": "DT_INT64"}
    if not shape:
        return names[dtype], "()"
    return names[dtype], "(" + ", ".join(str(d) for d in shape) + ")"


class SessionSignatures:
    """The export loaded the way TF Serving loads it: a TF1 session that restores variables from the checkpoint,
    fed through `Session::MakeCallable` (no Python-side shape validation, like a C++ server)."""

    def __init__(self, path):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        self.meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)

    def __call__(self, signature, **inputs):
        sig = self.meta_graph.signature_def[signature]
        names = sorted(inputs)
        outputs = sorted(sig.outputs)
        options = config_pb2.CallableOptions(
            feed=[sig.inputs[n].name for n in names], fetch=[sig.outputs[n].name for n in outputs]
        )
        callable_ = self.session._make_callable_from_options(options)
        results = callable_(*[np.asarray(inputs[n]) for n in names])
        return dict(zip(outputs, results))

    def close(self):
        self.session.close()


class ExportTest(testing_utils.GinTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="export_test-")
        cls.mnist = testing_utils.write_fake_mnist(os.path.join(cls.tmp, "mnist.npz"))
        cls.runs, cls.exports, cls.models, cls.operative = {}, {}, {}, {}
        for name, (recipe, kind) in FAMILIES.items():
            model_dir = os.path.join(cls.tmp, "runs", name)
            gin.clear_config()
            runs.parse_gin(
                [os.path.join(testing_utils.GIN_DIR, recipe)], cls.bindings(kind, max_steps=STEP), finalize=False
            )
            loop.train(model_dir)
            gin.clear_config()
            cls.runs[name] = model_dir
            cls.exports[name] = export_lib.export_run(model_dir, os.path.join(cls.tmp, "exports", name))
            cls.models[name] = runs.load_run(model_dir).model  # the in-memory reference
            with open(os.path.join(model_dir, "operative_config.gin")) as f:
                cls.operative[name] = f.read()
        gin.clear_config()
        # The adversarial family through the same export_run: a crVAE-GAN (with its Q head) on fake faces.
        faces = testing_utils.write_faces(os.path.join(cls.tmp, "faces"), 109, 89, range(1, 25))
        model_dir = os.path.join(cls.tmp, "runs", SIGNED)
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "celeba64.gin")],
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("channel_recurrent")
            + testing_utils.TINY_ADVERSARIAL_BINDINGS
            + [
                f"dataset.local_path = '{faces}'",
                f"dataset.cache_dir = '{cls.tmp}/cache'",
                "dataset.validation_size = 4",
                f"train.max_steps = {STEP}",
                "model.mutual_information_weight = 0.02",
            ],
            finalize=False,
        )
        loop.train(model_dir)
        gin.clear_config()
        cls.runs[SIGNED] = model_dir
        cls.exports[SIGNED] = export_lib.export_run(model_dir, os.path.join(cls.tmp, "exports", SIGNED))
        cls.models[SIGNED] = runs.load_run(model_dir).model
        gin.clear_config()
        # Fixed inputs, then the serving-side process twice (two "server restarts").
        rng = np.random.default_rng(0)
        cls.inputs = {}
        for name, model in cls.models.items():
            cls.inputs[f"{name}/z"] = rng.standard_normal((3, model.latent_dim)).astype(np.float32)
            cls.inputs[f"{name}/images"] = rng.uniform(0.0, 1.0, (4,) + tuple(model.image_shape)).astype(np.float32)
        inputs_path = os.path.join(cls.tmp, "inputs.npz")
        np.savez(inputs_path, **cls.inputs)
        cls.served = []
        for restart in range(2):
            spec_path = os.path.join(cls.tmp, f"serve-{restart}.json")
            with open(spec_path, "w") as f:
                json.dump(
                    {
                        "exports": {name: e.path for name, e in cls.exports.items()},
                        "inputs": inputs_path,
                        "out": os.path.join(cls.tmp, f"served-{restart}.npz"),
                        "num": SAMPLE_NUM,
                        "seed": SAMPLE_SEED,
                    },
                    f,
                )
            cls.served.append(run_serving_process(spec_path))

    @classmethod
    def tearDownClass(cls):
        cls._loaded.clear()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    @classmethod
    def bindings(cls, kind, max_steps):
        return (
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings(kind)
            + [f"dataset.local_path = '{cls.mnist}'", "dataset.validation_size = 40", f"train.max_steps = {max_steps}"]
        )

    _loaded = {}

    def loaded(self, name):
        """`tf.saved_model.load` of the family's export, loaded once for the tests that call its signatures."""
        if name not in self._loaded:
            self._loaded[name] = tf.saved_model.load(self.exports[name].path)
        return self._loaded[name]

    def expected(self, name):
        """What the in-memory model computes on the fixed inputs (the values every serving path must match)."""
        model = self.models[name]
        z = self.inputs[f"{name}/z"]
        images = self.inputs[f"{name}/images"]
        lo, hi = model.input_range
        loc, log_variance = model.encode(tf.constant(lo + (hi - lo) * images), training=False)
        sample_z = tf.random.stateless_normal([SAMPLE_NUM, model.latent_dim], seed=[SAMPLE_SEED, 0], alg="philox")
        return {
            "serving_default/images": model.generate(tf.constant(z)).numpy(),
            "sample/z": sample_z.numpy(),
            "sample/images": model.generate(sample_z).numpy(),
            "encode/loc": loc.numpy(),
            "encode/scale": np.exp(0.5 * log_variance.numpy()),
            "reconstruct/images": model.generate(loc).numpy(),
        }

    # ------------------------------------------------------------------------------------------ layout

    def test_versioned_layout_and_metadata(self):
        """E/<step>/ holds a SavedModel plus metadata (JSON file and typed variables); nothing else is in E."""
        for name in FAMILIES:
            export = self.exports[name]
            export_dir = os.path.dirname(export.path)
            with self.subTest(family=name):
                self.assertEqual(os.listdir(export_dir), [str(STEP)])
                self.assertEqual(publish.versions(export_dir), [STEP])
                for file in (
                    "saved_model.pb",
                    "variables/variables.index",
                    export_lib.METADATA_FILE,
                    export_lib.OPERATIVE_CONFIG_FILE,
                ):
                    self.assertTrue(os.path.isfile(os.path.join(export.path, file)), msg=file)
                with open(os.path.join(export.path, export_lib.METADATA_FILE)) as f:
                    metadata = json.load(f)
                model = self.models[name]
                self.assertEqual(metadata["training_step"], STEP)
                self.assertEqual(metadata["model_name"], model.name)
                self.assertEqual(metadata["latent_dim"], model.latent_dim)
                self.assertEqual(metadata["image_shape"], [28, 28, 1])
                self.assertEqual(metadata["output_pixel_range"], [0.0, 1.0])
                self.assertEqual(metadata["input_pixel_range"], [0.0, 1.0])
                self.assertEqual(metadata["model_input_range"], [0.0, 1.0])
                self.assertEqual(metadata["operative_config"], self.operative[name])
                self.assertEqual(metadata["tensorflow_version"], tf.__version__)
                self.assertTrue(metadata["checkpoint"].endswith(f"ckpt-{STEP}"))
                self.assertEqual(set(metadata["signatures"]), set(export_lib.SIGNATURES))
                with open(os.path.join(export.path, export_lib.OPERATIVE_CONFIG_FILE)) as f:
                    self.assertEqual(f.read(), self.operative[name])
                self.assertEqual(
                    oct(os.stat(os.path.join(export.path, export_lib.METADATA_FILE)).st_mode & 0o444),
                    oct(0o444),
                    msg="metadata must be readable by a serving container's user",
                )
        # Flat latent for the VAE; C x 4 x 4 (channel-major) for the conv-shaped latents (tiny: 8 channels).
        self.assertEqual(self.exports["vae"].metadata["latent_shape"], [16])
        for name in ("cvae", "bcvae", "crvae"):
            self.assertEqual(self.exports[name].metadata["latent_shape"], [8, 4, 4])
        self.assertEqual(self.exports[SIGNED].metadata["model_input_range"], [-1.0, 1.0])
        self.assertEqual(self.exports[SIGNED].metadata["latent_shape"], [8, 4, 4])
        self.assertEqual(self.exports[SIGNED].metadata["image_shape"], [64, 64, 3])
        self.assertEqual(self.exports[SIGNED].metadata["output_pixel_range"], [0.0, 1.0])

    def test_signatures_as_saved_model_cli_shows_them(self):
        """`saved_model_cli show --all`: every signature's name, predict method, DT_* dtypes, -1 batch (and -1
        num_points), fixed inner dims."""
        cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
        command = [cli] if os.path.exists(cli) else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
        for name in ("vae", "crvae"):
            export = self.exports[name]
            with self.subTest(family=name):
                shown = subprocess.run(
                    command + ["show", "--all", "--dir", export.path],
                    capture_output=True,
                    text=True,
                    check=True,
                    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
                ).stdout
                parsed = parse_saved_model_cli(shown)
                self.assertEqual(set(parsed) - {"__saved_model_init_op"}, set(export_lib.SIGNATURES))
                model = self.models[name]
                table = endpoints.signature_table(model.latent_dim, model.image_shape)
                for signature, spec in table.items():
                    self.assertEqual(parsed[signature]["method"], "tensorflow/serving/predict")
                    for side in ("inputs", "outputs"):
                        self.assertEqual(
                            parsed[signature][side],
                            {k: cli_form(*v) for k, v in spec[side].items()},
                            msg=f"{signature} {side}",
                        )
                d = model.latent_dim
                self.assertEqual(parsed["serving_default"]["inputs"], {"z": ("DT_FLOAT", f"(-1, {d})")})
                self.assertEqual(parsed["sample"]["inputs"], {"num": ("DT_INT32", "()"), "seed": ("DT_INT64", "()")})
                self.assertEqual(parsed["encode"]["outputs"]["scale"], ("DT_FLOAT", f"(-1, {d})"))
        # The other families: the same contract, read from the SavedModel proto the CLI prints.
        for name, export in self.exports.items():
            proto = self.signature_defs(export.path)
            table = endpoints.signature_table(self.models[name].latent_dim, self.models[name].image_shape)
            for signature, spec in table.items():
                for side in ("inputs", "outputs"):
                    got = {
                        k: (tf.dtypes.as_dtype(v.dtype).name, [d.size for d in v.tensor_shape.dim])
                        for k, v in getattr(proto[signature], side).items()
                    }
                    self.assertEqual(
                        got,
                        {k: (dtype, list(shape)) for k, (dtype, shape) in spec[side].items()},
                        msg=f"{name} {signature} {side}",
                    )

    @staticmethod
    def signature_defs(path):
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        return proto.meta_graphs[0].signature_def

    # ------------------------------------------------------------------------------------------ serving side

    def test_fresh_tf_only_process_matches_the_in_memory_model(self):
        """Loaded with only tf.saved_model.load (crvae_tf and keras unimportable, no GPU), every signature of every
        family matches the in-memory model on fixed inputs, at batch 1 and 3; encode of the [-1, 1] model gets
        its pixels mapped; the process never imported crvae_tf or keras."""
        served = self.served[0]
        self.assertEqual(list(served["modules"]), [])
        for name in self.models:
            expected = self.expected(name)
            with self.subTest(family=name):
                self.assertEqual(list(served[f"{name}/signature_names"]), sorted(export_lib.SIGNATURES))
                for batch in (1, 3):
                    self.assertAllClose(
                        served[f"{name}/serving_default/images/{batch}"],
                        expected["serving_default/images"][:batch],
                        atol=1e-5,
                        rtol=0,
                    )
                self.assertAllEqual(served[f"{name}/sample/z/1"], expected["sample/z"])
                self.assertAllClose(served[f"{name}/sample/images/1"], expected["sample/images"], atol=1e-5, rtol=0)
                for key in ("encode/loc", "encode/scale", "reconstruct/images"):
                    self.assertAllClose(served[f"{name}/{key}"], expected[key], atol=1e-5, rtol=1e-5, msg=key)
                self.assertEqual(int(served[f"{name}/training_step"]), STEP)
                self.assertEqual(list(served[f"{name}/latent_shape"]), self.exports[name].metadata["latent_shape"])
                self.assertEqual(
                    json.loads(str(served[f"{name}/metadata_json"]))["operative_config"],
                    self.exports[name].metadata["operative_config"],
                )
                for key in ("serving_default/images/3", "sample/images/1", "reconstruct/images"):
                    self.assertTrue(0.0 <= served[f"{name}/{key}"].min() and served[f"{name}/{key}"].max() <= 1.0)
        # The [-1, 1] model: exported encode(x in [0, 1]) == VAEGAN.encode(2x - 1), so the mapping happened.
        images = self.inputs[f"{SIGNED}/images"]
        loc, _ = self.models[SIGNED].encode(tf.constant(2.0 * images - 1.0), training=False)
        self.assertAllClose(served[f"{SIGNED}/encode/loc"], loc.numpy(), atol=1e-5)
        unmapped, _ = self.models[SIGNED].encode(tf.constant(images), training=False)
        self.assertGreater(np.abs(unmapped.numpy() - loc.numpy()).max(), 1e-3)

    def test_same_seed_same_bytes_across_calls_and_restarts(self):
        """`sample` with one (num, seed) returns byte-identical images and z on two calls and in two processes;
        another seed gives other images."""
        first, second = self.served
        for name in self.models:
            with self.subTest(family=name):
                for key in ("images", "z"):
                    reference = first[f"{name}/sample/{key}/1"].tobytes()
                    self.assertEqual(first[f"{name}/sample/{key}/2"].tobytes(), reference)
                    self.assertEqual(second[f"{name}/sample/{key}/1"].tobytes(), reference)
                    self.assertEqual(second[f"{name}/sample/{key}/2"].tobytes(), reference)
                self.assertEqual(
                    first[f"{name}/sample/images/1"].shape, (SAMPLE_NUM,) + tuple(self.models[name].image_shape)
                )
        loaded = self.loaded("crvae")
        a = loaded.signatures["sample"](num=tf.constant(2), seed=tf.constant(SAMPLE_SEED, tf.int64))["z"].numpy()
        b = loaded.signatures["sample"](num=tf.constant(2), seed=tf.constant(SAMPLE_SEED + 1, tf.int64))["z"].numpy()
        self.assertAllEqual(a, first["crvae/sample/z/1"][:2])  # the first rows do not depend on num
        self.assertFalse(np.allclose(a, b))

    def test_tf_serving_style_session_restores_and_serves_every_signature(self):
        """A TF1 session (TF Serving's loader: variables restored from the checkpoint, tensors fed by name) runs
        every signature with the in-memory model's results, so no variable is left uninitialised."""
        for name in self.models:
            expected = self.expected(name)
            session = SessionSignatures(self.exports[name].path)
            try:
                with self.subTest(family=name):
                    got = session("serving_default", z=self.inputs[f"{name}/z"])
                    self.assertAllClose(got["images"], expected["serving_default/images"], atol=1e-5, rtol=0)
                    got = session("sample", num=np.int32(SAMPLE_NUM), seed=np.int64(SAMPLE_SEED))
                    self.assertAllEqual(got["z"], expected["sample/z"])
                    got = session("encode", images=self.inputs[f"{name}/images"])
                    self.assertAllClose(got["loc"], expected["encode/loc"], atol=1e-5, rtol=1e-5)
                    got = session("reconstruct", images=self.inputs[f"{name}/images"])
                    self.assertAllClose(got["images"], expected["reconstruct/images"], atol=1e-5, rtol=1e-5)
            finally:
                session.close()

    def test_wrong_inputs_fail_with_the_expected_shape_named(self):
        """Wrong z width / rank, image shape, empty batch, num or seed rank, num range and pixel range fail with
        InvalidArgumentError naming what was expected, both through `tf.saved_model.load` signatures and when
        fed straight into the graph as TF Serving does (no TensorSpec check on that path)."""
        d = self.models["crvae"].latent_dim
        path = self.exports["crvae"].path
        loaded = tf.saved_model.load(path)
        session = SessionSignatures(path)
        z_width = re.escape(f"z must be [batch, {d}] float32")
        z_rank = re.escape(f"expected shape [?,{d}]")
        image_shape = re.escape("images must be [batch, 28, 28, 1] float32")
        cases = [  # signature, inputs, error regex, also via tf.saved_model.load (its TensorSpec may reject first)
            ("serving_default", {"z": np.zeros([2, d - 1], np.float32)}, z_width, True),
            ("serving_default", {"z": np.zeros([2, d + 3], np.float32)}, z_width, True),
            ("serving_default", {"z": np.zeros([d], np.float32)}, z_width, True),
            ("serving_default", {"z": np.zeros([2, d, 1], np.float32)}, f"{z_width}|{z_rank}", True),
            ("encode", {"images": np.zeros([2, 28, 28, 3], np.float32)}, image_shape, True),
            ("reconstruct", {"images": np.zeros([2, 32, 32, 1], np.float32)}, image_shape, True),
            ("encode", {"images": np.full([2, 28, 28, 1], 255.0, np.float32)}, re.escape("in [0, 1]"), True),
            (
                "sample",
                {"num": np.int32(0), "seed": np.int64(1)},
                re.escape("num must be an int32 scalar in [1, "),
                True,
            ),
            ("sample", {"num": np.int32(endpoints.MAX_SAMPLE_NUM + 1), "seed": np.int64(1)}, "num must be", True),
            (
                "sample",
                {"num": np.array([2], np.int32), "seed": np.int64(1)},
                re.escape("[1] is not compatible with expected shape []"),
                False,
            ),
            (
                "sample",
                {"num": np.int32(2), "seed": np.array([1, 2], np.int64)},
                re.escape("[2] is not compatible with expected shape []"),
                False,
            ),
        ]
        try:
            for signature, inputs, pattern, via_load in cases:
                with self.subTest(signature=signature, shapes={k: np.shape(v) for k, v in inputs.items()}):
                    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, pattern):
                        session(signature, **inputs)
                    if via_load:
                        with self.assertRaisesRegex((tf.errors.InvalidArgumentError, ValueError, TypeError), pattern):
                            loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        finally:
            session.close()
        # An empty batch is refused with the same message.
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, re.escape("with batch >= 1; got shape] [0 ")):
            loaded.signatures["serving_default"](z=tf.zeros([0, d]))

    def test_traverse_moves_one_time_step_along_a_straight_line(self):
        """`traverse`'s latent bookkeeping exactly, on the crVAE (T = 8 time steps) and the [-1, 1] family: point 0
        is z; only slice t - 1 of `latent_steps.model_step_slices`
        moves; it moves to one documented stateless draw z~_t shared by every row, along (1 - a) z_t + a z~_t; the
        images are the model's decode of the path. `traverse_images` starts from the posterior means."""
        step, points, seed = 3, 4, 11  # time step t = 3 of T = 8, counted from 1 as in the paper
        for name in ("crvae", SIGNED):
            model = self.models[name]
            loaded = self.loaded(name)
            z = self.inputs[f"{name}/z"][:2]
            with self.subTest(family=name):
                out = loaded.signatures["traverse"](
                    z=tf.constant(z),
                    time_step=tf.constant(step),
                    num_points=tf.constant(points),
                    seed=tf.constant(seed, tf.int64),
                )
                paths, images = out["z"].numpy(), out["images"].numpy()
                self.assertEqual(paths.shape, (2, points, model.latent_dim))
                self.assertEqual(images.shape, (2, points) + tuple(model.image_shape))
                start, stop = latent_steps.model_step_slices(model)[step - 1]
                self.assertEqual(self.exports[name].metadata["traverse"]["step_slices"][step - 1], [start, stop])
                target = tf.random.stateless_normal(
                    [stop - start], seed=[seed, endpoints.TRAVERSE_SEED_SALT + step], alg="philox"
                ).numpy()
                alpha = np.arange(points, dtype=np.float32) / np.float32(points - 1)
                expected = np.repeat(z[:, None, :], points, axis=1)
                expected[:, :, start:stop] = (1 - alpha)[None, :, None] * z[:, None, start:stop] + alpha[
                    None, :, None
                ] * target
                self.assertAllEqual(paths[:, 0], z)  # point 0 is z exactly
                self.assertAllEqual(paths[:, -1, start:stop], np.stack([target, target]))  # shared z~_t, exactly
                outside = np.ones(model.latent_dim, bool)
                outside[start:stop] = False
                self.assertAllEqual(paths[:, :, outside], expected[:, :, outside])  # other steps fixed, exactly
                self.assertAllClose(paths, expected, atol=1e-6, rtol=0)
                decoded = model.generate(tf.constant(paths.reshape(-1, model.latent_dim))).numpy()
                self.assertAllClose(images.reshape(decoded.shape), decoded, atol=1e-5, rtol=0)
                from_images = loaded.signatures["traverse_images"](
                    images=tf.constant(self.inputs[f"{name}/images"][:2]),
                    time_step=tf.constant(step),
                    num_points=tf.constant(points),
                    seed=tf.constant(seed, tf.int64),
                )["z"].numpy()
                self.assertAllClose(from_images[:, 0], self.expected(name)["encode/loc"][:2], atol=1e-5, rtol=1e-5)
                self.assertAllEqual(from_images[:, -1, start:stop], np.stack([target, target]))
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, re.escape("time_step must be an int32 scalar in [1, 8]")
        ):
            loaded.signatures["traverse"](
                z=tf.constant(z), time_step=tf.constant(0), num_points=tf.constant(3), seed=tf.constant(1, tf.int64)
            )
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, re.escape("num_points must be an int32 scalar in [2,")
        ):
            loaded.signatures["traverse"](
                z=tf.constant(z), time_step=tf.constant(1), num_points=tf.constant(1), seed=tf.constant(1, tf.int64)
            )

    def test_complete_is_the_library_completion_in_the_model_pixel_range(self):
        """`complete` equals `crvae_tf.models.completion` run on the in-memory model with the export's settings: z_0
        the posterior mean of the occluded image (seed < 0; encoded in the model's own range, so the [-1, 1] family
        is mapped) or the documented posterior sample (seed >= 0), Adam steps on z, the observed pixels copied
        exactly; the missing pixels' values are never read; bad masks and step counts are refused in the graph."""
        steps = 3
        for name in ("crvae", SIGNED):
            model = self.models[name]
            loaded = self.loaded(name)
            images = self.inputs[f"{name}/images"][:2]
            mask = np.ones(images.shape[:3] + (1,), np.float32)
            mask[:, images.shape[1] // 2 :] = 0.0  # the bottom half is missing
            with self.subTest(family=name):

                def serve(steps, seed, x=images, m=mask, loaded=loaded):
                    return complete_call(loaded, x, m, steps, seed)

                lo, hi = model.input_range
                occluded = completion.occlude(images, mask, endpoints.COMPLETION_FILL)
                loc, log_variance = model.encode(lo + (hi - lo) * occluded, training=False)
                self.assertAllClose(serve(0, -1)["z"], loc.numpy(), atol=1e-5, rtol=1e-5)
                posterior = (loc, log_variance)
                sample = completion.initial_latents(lambda _, p=posterior: p, occluded, "posterior_sample", 5)
                self.assertAllClose(serve(0, 5)["z"], sample.numpy(), atol=1e-5, rtol=1e-5)
                reference = completion.complete(
                    model.generate,
                    images,
                    mask,
                    loc,
                    steps,
                    learning_rate=self.exports[name].metadata["complete"]["learning_rate"],
                    gamma=self.exports[name].metadata["complete"]["gamma"],
                )
                served = serve(steps, -1)
                self.assertAllClose(served["z"], reference["z"].numpy(), atol=1e-4, rtol=1e-4)
                self.assertAllClose(served["images"], reference["images"].numpy(), atol=1e-4, rtol=1e-4)
                observed = np.broadcast_to(mask == 1.0, images.shape)
                self.assertAllEqual(served["images"][observed], images[observed])
                scrambled = np.where(observed, images, 1.0 - images).astype(np.float32)
                self.assertEqual(serve(steps, -1, x=scrambled)["images"].tobytes(), served["images"].tobytes())
        for inputs, message in (
            ({"mask": np.full_like(mask, 0.5)}, "mask must hold 0 (missing pixel) or 1 (observed pixel) only"),
            ({"mask": mask[:1]}, "mask must have the batch size of images; got mask and images batch sizes] [1] [2]"),
            ({"steps": endpoints.MAX_COMPLETION_STEPS + 1}, "steps must be an int32 scalar in [0, 1000]"),
            ({"steps": -1}, "steps must be an int32 scalar in [0, 1000]"),
        ):
            with (
                self.subTest(invalid=sorted(inputs)),
                self.assertRaisesRegex(tf.errors.InvalidArgumentError, re.escape(message)),
            ):
                request = {"images": images, "mask": mask, "steps": 1, "seed": -1, **inputs}
                complete_call(loaded, **request)

    def test_serving_graph_is_core_tf_without_cudnn_or_xla(self):
        """Every op of every export (graph + function library) is in the reviewed allowlist of core ops; none is
        CudnnRNN*, nothing carries _XlaMustCompile; the allowlist itself holds only tf.raw_ops names."""
        self.assertEqual(sorted(op for op in OP_ALLOWLIST if not hasattr(tf.raw_ops, op)), [])
        for name, export in self.exports.items():
            with self.subTest(family=name):
                ops = graph_checks.saved_model_ops(export.path)
                self.assertIn("Conv2DBackpropInput", ops)  # the decoder, inside the function library
                self.assertEqual(sorted(op for op in ops if op.startswith("CudnnRNN")), [])
                self.assertEqual(sorted(set(ops) - OP_ALLOWLIST), [], msg="new ops: review them for TF Serving")
                self.assertEqual(graph_checks.xla_compiled_functions(export.path), [])
                self.assertEqual(dict(graph_checks.check_serving_graph(export.path)), dict(ops))
        # The crVAE's LSTMs are plain matmuls: no RNN op of any kind, and one While only, `complete`'s Adam loop
        # (a Keras RNN layer in the generator would add a While to every signature that decodes).
        ops = graph_checks.saved_model_ops(self.exports["crvae"].path)
        self.assertEqual([op for op in ops if "RNN" in op or "LSTM" in op], [])
        self.assertEqual(ops["While"], 1)

    def test_graph_checks_reject_cudnn_custom_and_xla(self):
        """`check_serving_graph` refuses a cuDNN op, a non-core op and an XLA-compiled function, naming the fix."""
        path = self.exports["vae"].path
        for ops, pattern in (({"CudnnRNNV3": 1, "MatMul": 2}, "cuDNN-only"), ({"MyCustomOp": 1}, "not core")):
            with self.subTest(ops=ops), mock.patch.object(graph_checks, "saved_model_ops", return_value=ops):
                with self.assertRaisesRegex(graph_checks.ServingGraphError, pattern):
                    graph_checks.check_serving_graph(path)
        with mock.patch.object(graph_checks, "xla_compiled_functions", return_value=["__inference_f_1"]):
            with self.assertRaisesRegex(graph_checks.ServingGraphError, "jit_compile"):
                graph_checks.check_serving_graph(path)

    def test_keras_rnn_layers_are_traced_without_cudnn(self):
        """A model with a Keras LSTM (as an adversarial generator might have) is traced with use_cudnn=False
        (its value is restored afterwards) and exports only core ops."""
        seen = []

        class LSTMGenerator:
            input_range = (0.0, 1.0)
            name = "lstm_generator"
            image_shape = (4, 4, 1)
            latent_dim = 8

            def __init__(self):
                self.lstm = keras.layers.LSTM(4, return_sequences=True)
                self.lstm(tf.zeros([1, 4, 2]))

            @property
            def variables(self):
                return self.lstm.variables

            def _flatten_layers(self, include_self=True):
                return [self.lstm]

            def encode(self, images, training=False):
                flat = tf.reshape(images, [-1, 16])[:, :8]
                return flat, tf.zeros_like(flat)

            def generate(self, z):
                seen.append(self.lstm.use_cudnn)
                return tf.sigmoid(tf.reshape(self.lstm(tf.reshape(z, [-1, 4, 2])), [-1, 4, 4, 1]))

        model = LSTMGenerator()
        export = export_lib.export_model(model, os.path.join(self.get_temp_dir(), "lstm"), 7)
        self.assertTrue(seen)
        self.assertEqual(set(seen), {False})
        self.assertEqual(model.lstm.use_cudnn, "auto")
        self.assertEqual(sorted(op for op in export.ops if op.startswith("Cudnn")), [])
        z = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
        loaded = tf.saved_model.load(export.path)
        self.assertAllClose(
            loaded.signatures["serving_default"](z=tf.constant(z))["images"], model.generate(tf.constant(z)), atol=1e-6
        )

    # ------------------------------------------------------------------------------------------ atomicity

    @mock.patch.object(endpoints, "ENDPOINTS", ONE_ENDPOINT)
    def test_interrupted_export_leaves_no_version_behind(self):
        """A save that dies midway (after writing part of the SavedModel, or by KeyboardInterrupt), or a graph
        check that fails, leaves no version folder and no temporary folder; an existing version is untouched."""
        model = self.models["vae"]
        export_dir = os.path.join(self.get_temp_dir(), "interrupted")
        existing = export_lib.export_model(model, export_dir, 1)
        before = sorted(os.listdir(existing.path))
        real_save = tf.saved_model.save

        def save_then_die(module, path, **kwargs):
            real_save(module, path, **kwargs)  # saved_model.pb and variables/ are on disk...
            self.assertTrue(os.path.exists(os.path.join(path, "saved_model.pb")))
            self.assertEqual(publish.versions(export_dir), [1])  # ...but not visible as a version
            raise RuntimeError("disk full")

        def die_midway(module, path, **kwargs):
            os.makedirs(os.path.join(path, "variables"))
            with open(os.path.join(path, "saved_model.pb"), "wb") as f:
                f.write(b"\x08")
            raise KeyboardInterrupt

        for version, patch, error in (
            (2, mock.patch.object(tf.saved_model, "save", side_effect=save_then_die), RuntimeError),
            (3, mock.patch.object(tf.saved_model, "save", side_effect=die_midway), KeyboardInterrupt),
            (
                4,
                mock.patch.object(
                    export_lib, "check_serving_graph", side_effect=graph_checks.ServingGraphError("CudnnRNNV3")
                ),
                ValueError,
            ),
            (1, mock.patch.object(tf.saved_model, "save", side_effect=save_then_die), RuntimeError),
        ):
            with self.subTest(version=version, error=error.__name__):
                with patch, self.assertRaises(error):
                    export_lib.export_model(model, export_dir, version, overwrite=True)
                self.assertEqual(os.listdir(export_dir), ["1"])
                self.assertEqual(publish.versions(export_dir), [1])
                self.assertEqual(sorted(os.listdir(existing.path)), before)

    @mock.patch.object(endpoints, "ENDPOINTS", ONE_ENDPOINT)
    def test_existing_version_requires_overwrite_and_is_swapped_atomically(self):
        """Exporting an existing version fails with a message naming --overwrite; with overwrite the new export
        replaces it (new metadata) and nothing else is left in the folder."""
        model = self.models["vae"]
        export_dir = os.path.join(self.get_temp_dir(), "overwrite")
        first = export_lib.export_model(model, export_dir, 5, extra_metadata={"run": "first"})
        with self.assertRaisesRegex(FileExistsError, "--overwrite"):
            export_lib.export_model(model, export_dir, 5, extra_metadata={"run": "second"})
        self.assertEqual(os.listdir(export_dir), ["5"])
        second = export_lib.export_model(model, export_dir, 5, extra_metadata={"run": "second"}, overwrite=True)
        self.assertEqual(second.path, first.path)
        self.assertEqual(os.listdir(export_dir), ["5"])
        with open(os.path.join(second.path, export_lib.METADATA_FILE)) as f:
            self.assertEqual(json.load(f)["run"], "second")
        # Without renameat2 (other systems) the two-rename fallback gives the same result.
        with mock.patch.object(publish, "_exchange", return_value=False):
            export_lib.export_model(model, export_dir, 5, extra_metadata={"run": "third"}, overwrite=True)
        self.assertEqual(os.listdir(export_dir), ["5"])
        with open(os.path.join(second.path, export_lib.METADATA_FILE)) as f:
            self.assertEqual(json.load(f)["run"], "third")
        with self.assertRaisesRegex(ValueError, "non-negative"):
            export_lib.export_model(model, export_dir, -1)

    # ------------------------------------------------------------------------------------------ binary

    @mock.patch.object(endpoints, "ENDPOINTS", ONE_ENDPOINT)
    def test_binary_exports_a_checkpoint_and_reports_clear_errors(self):
        """`python -m crvae_tf.export` (flags parsed, then main) writes E/<step> for a chosen checkpoint, prints
        one JSON line; bad flags are UsageErrors, a missing run or checkpoint path errors, each saying what to fix.
        (One signature traced: the binary's flags and checkpoint choice do not depend on the graph, and setUpClass
        exports every family's full graph through the same `export_run`.)"""
        model_dir = os.path.join(self.get_temp_dir(), "run")
        shutil.copytree(self.runs["crvae"], model_dir)
        export_dir = os.path.join(self.get_temp_dir(), "served")
        argv = [
            "export",
            f"--model_dir={model_dir}",
            f"--export_dir={export_dir}",
            f"--gin_bindings=dataset.local_path = '{self.mnist}'",
        ]
        try:
            flags.FLAGS.unparse_flags()
            flags.FLAGS(argv + [f"--checkpoint={STEP}"])
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                export_binary.main(["export"])
            result = json.loads(output.getvalue().strip().splitlines()[-1])
            self.assertEqual(result["version"], STEP)
            self.assertEqual(result["path"], os.path.join(export_dir, str(STEP)))
            self.assertEqual(result["signatures"], list(export_lib.SIGNATURES))
            self.assertEqual(publish.versions(export_dir), [STEP])
            with open(os.path.join(result["path"], export_lib.METADATA_FILE)) as f:
                self.assertIn(f"dataset.local_path = '{self.mnist}'", json.load(f)["gin_bindings"])
            # Flag errors are UsageErrors; runtime ones are path errors (crvae_tf.cli: exit 5, no usage text).
            for bad, error, message in (
                ("--checkpoint=last", app.UsageError, "--checkpoint"),
                ("--checkpoint=9", FileNotFoundError, "no checkpoint for step 9"),
                ("--checkpoint=latest", FileExistsError, "already exists.*--overwrite"),
                (f"--model_dir={model_dir}-missing", NotADirectoryError, "is not a directory"),
            ):
                with self.subTest(flag=bad):
                    flags.FLAGS.unparse_flags()
                    flags.FLAGS(argv + [bad])
                    with self.assertRaisesRegex(error, message):
                        export_binary.main(["export"])
            self.assertEqual(publish.versions(export_dir), [STEP])
            flags.FLAGS.unparse_flags()
            flags.FLAGS(argv + ["--checkpoint=latest", "--overwrite"])
            with contextlib.redirect_stdout(io.StringIO()):
                export_binary.main(["export"])
            self.assertEqual(os.listdir(export_dir), [str(STEP)])
        finally:
            flags.FLAGS.unparse_flags()

    def test_a_celeba_run_exports_with_its_images_absent(self):
        """Export reads the image shape from run.json: the training images need not be on the machine."""
        model_dir = os.path.join(self.get_temp_dir(), "copied_run")
        shutil.copytree(self.runs[SIGNED], model_dir)
        info = runs.read_run_info(model_dir)
        self.assertEqual((info["family"], info["image_shape"]), ("VAEGAN", [64, 64, 3]))
        export = export_lib.export_run(
            model_dir,
            os.path.join(self.get_temp_dir(), "e"),
            gin_bindings=[
                f"dataset.local_path = '{self.get_temp_dir()}/no_faces_here'",
                f"dataset.cache_dir = '{self.get_temp_dir()}/no_cache_here'",
            ],
        )
        self.assertEqual(export.metadata["image_shape"], [64, 64, 3])

    def test_a_run_without_run_json_still_loads_from_its_dataset(self):
        """Runs written before run.json fall back to loading their dataset once for the image shape; when that
        data moved, the error names the binding that fixes it and nothing is published."""
        model_dir = os.path.join(self.get_temp_dir(), "old_run")
        shutil.copytree(self.runs["vae"], model_dir)
        os.remove(os.path.join(model_dir, runs.RUN_FILE))
        self.assertEqual(runs.load_run(model_dir).model.image_shape, (28, 28, 1))
        self.assertEqual(runs.max_steps(model_dir), STEP)  # from the operative config, parsed by gin
        with self.assertRaisesRegex(data.DataUnavailableError, "predates run.json.*dataset.local_path"):
            export_lib.export_run(
                model_dir,
                os.path.join(self.get_temp_dir(), "e"),
                gin_bindings=[f"dataset.local_path = '{self.mnist}.moved'"],
            )
        self.assertFalse(os.path.exists(os.path.join(self.get_temp_dir(), "e", str(STEP))))

    # ------------------------------------------------------------------------------------------ client

    def test_client_does_not_import_crvae_tf(self):
        """export/client.py runs on a machine without this project: it imports no crvae_tf module."""
        with open(CLIENT_PATH) as f:
            tree = ast.parse(f.read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        self.assertEqual({name for name in imported if name.split(".")[0] == "crvae_tf"}, set())

    def test_grpc_client_builds_valid_predict_requests_for_every_signature(self):
        """For every signature the client's PredictRequest names the model and signature, carries exactly the
        signature's inputs with its dtypes and compatible shapes, survives serialization, and fed to the export
        (as a server would) gives the in-memory results, parsed back by the client from a PredictResponse."""
        try:
            from tensorflow_serving.apis import predict_pb2
            from tensorflow_serving.apis import prediction_service_pb2_grpc  # noqa: F401
        except ImportError as error:  # a clear failure, never a silent skip
            self.fail(
                f"tensorflow-serving-api is required for this test ({error}): "
                "pip install 'tensorflow-serving-api==2.21.0' (or pip install -e '.[test]')."
            )
        client = load_client()
        name = "crvae"
        model = self.models[name]
        signature_defs = self.signature_defs(self.exports[name].path)
        loaded = self.loaded(name)
        expected = self.expected(name)
        images = self.inputs[f"{name}/images"]
        requests = {
            "serving_default": client.make_inputs("serving_default", latent_dim=model.latent_dim),
            "sample": client.make_inputs("sample", num=SAMPLE_NUM, seed=SAMPLE_SEED),
            "encode": client.make_inputs("encode", images=images),
            "reconstruct": client.make_inputs("reconstruct", images=images),
            "traverse": client.make_inputs("traverse", num=2, latent_dim=model.latent_dim, time_step=1, num_points=3),
            "traverse_images": client.make_inputs("traverse_images", images=images, time_step=2, num_points=2),
            "complete": client.make_inputs("complete", images=images, mask="bottom_half", steps=2, seed=-1),
        }
        self.assertEqual(set(requests), set(export_lib.SIGNATURES))
        for signature, inputs in requests.items():
            with self.subTest(signature=signature):
                request = client.grpc_request("crvae", signature, inputs, version=STEP)
                request = predict_pb2.PredictRequest.FromString(request.SerializeToString())
                self.assertEqual(
                    (request.model_spec.name, request.model_spec.signature_name, request.model_spec.version.value),
                    ("crvae", signature, STEP),
                )
                spec = signature_defs[signature]
                self.assertEqual(set(request.inputs), set(spec.inputs))
                feed = {}
                for key, tensor in request.inputs.items():
                    self.assertEqual(tensor.dtype, spec.inputs[key].dtype, msg=key)
                    expected_shape = tf.TensorShape(spec.inputs[key].tensor_shape)
                    value = tf.make_ndarray(tensor)
                    self.assertTrue(expected_shape.is_compatible_with(value.shape), msg=f"{key}: {value.shape}")
                    np.testing.assert_array_equal(value, inputs[key])
                    feed[key] = tf.constant(value)
                # The server's side: run the signature, answer with a PredictResponse.
                response = predict_pb2.PredictResponse()
                response.model_spec.CopyFrom(request.model_spec)
                for key, value in loaded.signatures[signature](**feed).items():
                    response.outputs[key].CopyFrom(tf.make_tensor_proto(value.numpy()))
                outputs = client.parse_grpc_response(
                    predict_pb2.PredictResponse.FromString(response.SerializeToString())
                )
                self.assertEqual(set(outputs), set(spec.outputs))
                if signature == "sample":
                    self.assertAllEqual(outputs["z"], expected["sample/z"])
                if signature in ("encode", "reconstruct"):
                    key = "encode/loc" if signature == "encode" else "reconstruct/images"
                    self.assertAllClose(outputs[key.split("/")[1]], expected[key], atol=1e-5, rtol=1e-5)
        # A stub call goes through the same request (no network: a fake stub records it).
        recorded = []

        class FakeStub:
            def Predict(self, request, timeout):
                recorded.append(request)
                response = predict_pb2.PredictResponse()
                response.outputs["images"].CopyFrom(tf.make_tensor_proto(np.zeros([1, 28, 28, 1], np.float32)))
                return response

        outputs = client.grpc_predict("unused:0", "crvae", "sample", requests["sample"], stub=FakeStub())
        self.assertEqual(recorded[0].model_spec.signature_name, "sample")
        self.assertEqual(outputs["images"].shape, (1, 28, 28, 1))

    def test_rest_client_bodies_and_responses(self):
        """REST: the body is TF Serving's columnar JSON (scalars allowed); decoded with the signature's dtypes it
        reproduces the inputs; responses with named and unnamed (single-output) tensors both parse; the metadata
        answer gives D; HTTP errors surface the server's message."""
        client = load_client()
        name = "crvae"
        loaded = self.loaded(name)
        signature_defs = self.signature_defs(self.exports[name].path)
        for signature in export_lib.SIGNATURES:
            inputs = client.make_inputs(
                signature,
                num=2,
                seed=3,
                latent_dim=self.models[name].latent_dim,
                images=self.inputs[f"{name}/images"][:2],
                mask="right_half",
                num_points=2,
                steps=2,
            )
            body = json.loads(json.dumps(client.rest_request_body(signature, inputs)))
            self.assertEqual(body["signature_name"], signature)
            feed = {
                k: tf.constant(v, tf.dtypes.as_dtype(signature_defs[signature].inputs[k].dtype))
                for k, v in body["inputs"].items()
            }
            for key, value in feed.items():
                np.testing.assert_array_equal(value.numpy(), inputs[key])
            result = {k: v.numpy().tolist() for k, v in loaded.signatures[signature](**feed).items()}
            # TF Serving's answer: {"outputs": {...}}, or {"outputs": tensor} when there is one output.
            payload = {"outputs": result if len(result) > 1 else next(iter(result.values()))}
            parsed = client.parse_rest_response(signature, json.loads(json.dumps(payload)))
            self.assertEqual(set(parsed), set(signature_defs[signature].outputs))
            for key, value in parsed.items():
                self.assertAllClose(value, np.asarray(result[key], np.float32))
        with self.assertRaisesRegex(client.ServingError, "z must be"):
            client.parse_rest_response("serving_default", {"error": "assertion failed: [z must be [batch, 128]"})
        metadata = {
            "metadata": {
                "signature_def": {
                    "signature_def": {
                        "serving_default": {
                            "inputs": {
                                "z": {"dtype": "DT_FLOAT", "tensor_shape": {"dim": [{"size": "-1"}, {"size": "128"}]}}
                            }
                        }
                    }
                }
            }
        }
        self.assertEqual(client.latent_dim_from_metadata_json(metadata), 128)

        class FakeResponse(io.BytesIO):
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

        sent = []

        def fake_urlopen(request, timeout):
            sent.append(request)
            return FakeResponse(json.dumps({"outputs": {"images": [[[[0.5]]]], "z": [[0.0]]}}).encode())

        outputs = client.rest_predict(
            "localhost:8501", "crvae", "sample", client.make_inputs("sample", 1, 7), version=STEP, urlopen=fake_urlopen
        )
        self.assertEqual(sent[0].full_url, f"http://localhost:8501/v1/models/crvae/versions/{STEP}:predict")
        self.assertEqual(json.loads(sent[0].data), {"signature_name": "sample", "inputs": {"num": 1, "seed": 7}})
        self.assertEqual(outputs["images"].shape, (1, 1, 1, 1))

    def test_client_png_grid_and_command_line(self):
        """The client's numpy-only PNG encoder writes the grid TensorFlow decodes back exactly; the command line
        runs end to end against a fake server and writes the PNG and a JSON summary."""
        client = load_client()
        images = np.random.default_rng(0).uniform(0, 1, (5, 6, 7, 1)).astype(np.float32)
        grid = client.image_grid(images)
        self.assertEqual(grid.shape, (2 * 7 + 1, 3 * 8 + 1, 1))
        self.assertAllEqual(tf.io.decode_png(client.encode_png(grid)).numpy(), grid)
        rgb = np.random.default_rng(1).integers(0, 256, (4, 5, 3)).astype(np.uint8)
        self.assertAllEqual(tf.io.decode_png(client.encode_png(rgb)).numpy(), rgb)
        out = os.path.join(self.get_temp_dir(), "grid.png")
        served = self.served[0]["crvae/sample/images/1"]
        with mock.patch.object(client, "rest_predict", return_value={"images": served, "z": np.zeros([5, 128])}):
            with contextlib.redirect_stdout(io.StringIO()) as output:
                summary = client.main(["--mode=rest", "--signature=sample", "--num=5", "--seed=3", f"--out={out}"])
        self.assertEqual(json.loads(output.getvalue().strip().splitlines()[-1]), summary)
        self.assertAllEqual(tf.io.decode_png(tf.io.read_file(out)).numpy(), client.image_grid(served))
        with self.assertRaisesRegex(ValueError, "divide 8-bit images by 255"):
            client.make_inputs("encode", images=np.full([1, 28, 28, 1], 255.0))
        with self.assertRaisesRegex(ValueError, "latent width"):
            client.make_inputs("serving_default")

    def test_models_config_parses_as_tf_serving_config(self):
        """export/models.config is a valid ModelServerConfig whose models point under /models."""
        from google.protobuf import text_format
        from tensorflow_serving.config import model_server_config_pb2

        with open(os.path.join(testing_utils.REPO, "export", "models.config")) as f:
            config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
        models = config.model_config_list.config
        self.assertTrue(models)
        for model in models:
            self.assertEqual(model.model_platform, "tensorflow")
            self.assertTrue(model.base_path.startswith("/models/"), msg=model.base_path)

    def test_serving_benchmark_reports_latency_of_both_paths(self):
        """`python -m crvae_tf.bench --serving`'s measurement: p50/p99 of the exported serving_default and of Keras
        predict per batch size, on one recipe's weights (tiny here; the figures are in the final report)."""
        from crvae_tf import bench

        rows = bench.bench_serving(
            "vae",
            [1, 4],
            iterations=3,
            warmup=1,
            gin_dir=testing_utils.GIN_DIR,
            bindings=testing_utils.TINY_BINDINGS + testing_utils.tiny_head_bindings("fc"),
        )
        self.assertEqual([row["batch_size"] for row in rows], [1, 4])
        for row in rows:
            for key in ("exported_p50_ms", "exported_p99_ms", "keras_p50_ms", "keras_p99_ms"):
                self.assertGreater(row[key], 0.0)
            self.assertLessEqual(row["exported_p50_ms"], row["exported_p99_ms"])
            self.assertNotIn("target_met", row)  # bench reports measurements, not targets set outside the project

    def test_readme_documents_every_signature(self):
        """export/README.md names each signature with its inputs and outputs, and the serving commands."""
        with open(os.path.join(testing_utils.REPO, "export", "README.md")) as f:
            readme = f.read()
        table = endpoints.signature_table(1024, (28, 28, 1))
        for signature, spec in table.items():
            self.assertIn(f"`{signature}`", readme)
            for name in list(spec["inputs"]) + list(spec["outputs"]):
                self.assertIn(f"`{name}`", readme)
        for text in (
            "docker run",
            "tensorflow/serving",
            ":predict",
            "PredictRequest",
            "models.config",
            export_lib.METADATA_FILE,
            "CudnnRNN",
            "--overwrite",
        ):
            self.assertIn(text, readme)


if __name__ == "__main__":
    tf.test.main()
