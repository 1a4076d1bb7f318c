"""export/client.py's gRPC mode against a loopback PredictionService around the exported SavedModel.

The server is `tensorflow-serving-api`'s generated `PredictionServiceServicer`, subclassed here: `Predict` feeds the
request's TensorProtos (`tf.make_ndarray`) by their SignatureDef tensor names into a TF1 session that loaded the
SavedModel the way TF Serving does (tag "serve", variables restored from the checkpoint, no TensorSpec check), and
answers TensorProtos (`tf.make_tensor_proto`); TF errors become gRPC statuses with the same code and text, as in
TF Serving. It listens on 127.0.0.1 only, on a free port, and is stopped in the class cleanup (and by a watchdog
timer if the cleanup never runs); every client call has a timeout.

What passing proves: the client's real network path (stub, PredictRequest / TensorProto encoding of every
signature's inputs with the contract's dtypes, GetModelMetadata and its SignatureDefMap, response decoding, the
command line) works for every signature, its outputs equal the direct Python call of the loaded SavedModel, and an
invalid request comes back as a gRPC INVALID_ARGUMENT carrying the in-graph message. What it does not prove: TF
Serving's own server semantics, which are emulated here (model and version lookup, the unknown-signature status),
nor anything of version policy, directory polling, request batching or the model config file.
"""

import concurrent.futures
import contextlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
import threading

import grpc
import numpy as np
import serving_testing
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from crvae_tf.models import completion
from crvae_tf.serving import endpoints
from crvae_tf.serving import export_lib

import testing_utils

MODEL_NAME = "crvae"
TIMEOUT_S = 60.0
SERVER_LIFETIME_S = 600.0  # the watchdog stops the server after this even if the class cleanup never runs
GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


class LoopbackPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService for one model version, served from a TF1 session as TF Serving serves it.

    Predict: model name and version must match (else NOT_FOUND), the signature must exist (else
    FAILED_PRECONDITION), the inputs must be exactly the signature's (else INVALID_ARGUMENT); then one
    `Session::RunCallable` with the request tensors fed by name. GetModelMetadata: the SignatureDefMap.
    """

    def __init__(self, saved_model_dir: str, model_name: str, version: int):
        self.model_name, self.version = model_name, int(version)
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        self.signature_defs = tf.compat.v1.saved_model.loader.load(
            self.session, ["serve"], saved_model_dir
        ).signature_def
        self.calls = []
        self.callables = {}
        self.lock = threading.Lock()

    def _check_model_spec(self, model_spec, context):
        version = model_spec.version.value if model_spec.HasField("version") else self.version
        if model_spec.name != self.model_name or version != self.version:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {model_spec}")

    def _model_spec(self, request):
        spec = type(request.model_spec)()
        spec.CopyFrom(request.model_spec)
        spec.version.value = self.version
        return spec

    def Predict(self, request, context):
        self._check_model_spec(request.model_spec, context)
        name = request.model_spec.signature_name or "serving_default"
        self.calls.append(name)
        if name not in self.signature_defs:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{name}" not found.')
        signature = self.signature_defs[name]
        if set(request.inputs) != set(signature.inputs):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input names {sorted(request.inputs)} do not match the signature's {sorted(signature.inputs)}",
            )
        try:
            outputs = self.run(name, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        except tf.errors.OpError as error:
            context.abort(GRPC_CODES[error.error_code], error.message)
        response = predict_pb2.PredictResponse(model_spec=self._model_spec(request))
        for key, value in outputs.items():
            response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
        return response

    def run(self, signature_name: str, inputs: dict) -> dict:
        """One Session::RunCallable of the signature: numpy inputs fed by their tensor names (no shape or dtype
        conversion, as a C++ server feeds them), numpy outputs by output name. Raises tf.errors.OpError."""
        signature = self.signature_defs[signature_name]
        feeds, fetches = sorted(inputs), sorted(signature.outputs)
        with self.lock:  # one callable (pruned, optimised executor) per signature, as a server keeps them
            key = (signature_name, tuple(feeds))
            if key not in self.callables:
                options = config_pb2.CallableOptions(
                    feed=[signature.inputs[k].name for k in feeds], fetch=[signature.outputs[k].name for k in fetches]
                )
                self.callables[key] = self.session._make_callable_from_options(options)
            run = self.callables[key]
        values = run(*[inputs[k] for k in feeds])
        return dict(zip(fetches, values))

    def GetModelMetadata(self, request, context):
        self._check_model_spec(request.model_spec, context)
        if list(request.metadata_field) != ["signature_def"]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Metadata field must be signature_def")
        response = get_model_metadata_pb2.GetModelMetadataResponse(model_spec=self._model_spec(request))
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in self.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(value)
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ServingGrpcTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="serving_grpc_test-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        # The cVAE (conv head, no recurrent generation: `traverse` moves a block of channels), whose `complete`
        # graph builds in a fifth of the crVAE's time; the C API test serves the crVAE.
        cls.model = serving_testing.tiny_model("mnist_cvae.gin", "conv")
        cls.export = serving_testing.export_tiny(os.path.join(cls.tmp, "export"), cls.model)
        cls.service = LoopbackPredictionService(cls.export.path, MODEL_NAME, serving_testing.VERSION)
        cls.addClassCleanup(cls.service.session.close)
        cls.server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=2),
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(cls.service, cls.server)
        port = cls.server.add_insecure_port("127.0.0.1:0")
        if not port:
            raise AssertionError("could not bind a loopback port for the PredictionService")
        cls.address = f"127.0.0.1:{port}"
        cls.server.start()
        cls.addClassCleanup(lambda: cls.server.stop(grace=None).wait(10))
        watchdog = threading.Timer(SERVER_LIFETIME_S, cls.server.stop, args=(None,))
        watchdog.daemon = True
        watchdog.start()
        cls.addClassCleanup(watchdog.cancel)
        cls.client = _load_client()
        rng = np.random.default_rng(0)
        cls.images = rng.uniform(0.0, 1.0, (2, 28, 28, 1)).astype(np.float32)

    def requests(self):
        """One request per signature, built by the client's own `make_inputs`."""
        client, d = self.client, self.model.latent_dim
        return {
            "serving_default": client.make_inputs("serving_default", num=2, seed=3, latent_dim=d),
            "sample": client.make_inputs("sample", num=3, seed=4),
            "encode": client.make_inputs("encode", images=self.images),
            "reconstruct": client.make_inputs("reconstruct", images=self.images),
            "traverse": client.make_inputs("traverse", num=2, seed=5, latent_dim=d, time_step=2, num_points=4),
            "traverse_images": client.make_inputs(
                "traverse_images", seed=6, images=self.images, time_step=8, num_points=3
            ),
            "complete": client.make_inputs("complete", seed=-1, images=self.images, mask="right_half", steps=5),
        }

    def direct(self, signature, inputs):
        """The signature called in this process on the server's own session, without gRPC."""
        return self.service.run(signature, {k: np.asarray(v) for k, v in inputs.items()})

    def test_every_signature_through_the_grpc_client_equals_the_direct_call(self):
        """For each signature of the export, `client.grpc_predict` over the loopback server returns exactly what the
        same signature returns when called directly in this process (same session, no gRPC): the same names,
        shapes, dtypes and bytes, so the request and response encoding lose nothing. (The C API test compares the
        loaders themselves.)"""
        requests = self.requests()
        self.assertEqual(set(requests), set(export_lib.SIGNATURES))
        for signature, inputs in requests.items():
            with self.subTest(signature=signature):
                got = self.client.grpc_predict(
                    self.address, MODEL_NAME, signature, inputs, version=serving_testing.VERSION, timeout=TIMEOUT_S
                )
                expected = self.direct(signature, inputs)
                self.assertEqual(set(got), set(expected))
                for key, value in expected.items():
                    self.assertEqual(got[key].shape, value.shape, msg=key)
                    self.assertEqual(got[key].dtype, value.dtype, msg=key)
                    self.assertEqual(got[key].tobytes(), value.tobytes(), msg=key)
        self.assertEqual(self.service.calls[-len(requests) :], list(requests))
        self.assertEqual(self.direct("traverse", requests["traverse"])["images"].shape, (2, 4, 28, 28, 1))

    def test_the_client_contract_is_the_endpoint_registry(self):
        """export/client.py cannot import crvae_tf, so its copy of the contract is checked here against the registry:
        the same signatures with the same input and output names, the registry's input dtypes, and the completion
        library's default step count."""
        client = self.client
        table = endpoints.signature_table(self.model.latent_dim, self.model.image_shape)
        self.assertEqual(set(client.SIGNATURES), set(table))
        for signature, (inputs, outputs) in client.SIGNATURES.items():
            self.assertEqual(set(inputs), set(table[signature]["inputs"]), msg=signature)
            self.assertEqual(set(outputs), set(table[signature]["outputs"]), msg=signature)
            for name in inputs:
                self.assertEqual(np.dtype(client.INPUT_DTYPES[name]).name, table[signature]["inputs"][name][0])
        self.assertEqual(client.DEFAULT_COMPLETION_STEPS, completion.DEFAULT_NUM_STEPS)

    def test_invalid_requests_come_back_as_grpc_errors_with_the_in_graph_message(self):
        """A wrong-shape z, an out-of-range time step and a non-binary mask come back from the server as gRPC
        INVALID_ARGUMENT with the serving graph's own message (the client raises ServingError carrying both);
        an unknown version is NOT_FOUND."""
        client, d = self.client, self.model.latent_dim
        bad_mask = client.make_inputs("complete", images=self.images, mask="right_half", steps=1)
        bad_mask["mask"] = np.full_like(bad_mask["mask"], 0.5)
        cases = (
            ("serving_default", {"z": np.zeros([2, d - 1], np.float32)}, f"z must be [batch, {d}] float32"),
            (
                "traverse",
                client.make_inputs("traverse", num=1, latent_dim=d, time_step=9, num_points=3),
                "time_step must be an int32 scalar in [1, 8]",
            ),
            ("complete", bad_mask, "mask must hold 0 (missing pixel) or 1 (observed pixel) only"),
        )
        for signature, inputs, message in cases:
            with self.subTest(signature=signature):
                with self.assertRaises(client.ServingError) as raised:
                    client.grpc_predict(self.address, MODEL_NAME, signature, inputs, timeout=TIMEOUT_S)
                self.assertIn("gRPC INVALID_ARGUMENT", str(raised.exception))
                self.assertIn(message, str(raised.exception))
        with self.assertRaisesRegex(client.ServingError, "gRPC NOT_FOUND"):
            client.grpc_predict(self.address, MODEL_NAME, "sample", self.requests()["sample"], version=2, timeout=5)

    def test_command_line_in_grpc_mode(self):
        """`client.py --mode=grpc` end to end: serving_default and traverse read D from GetModelMetadata and write
        the PNG grid of the server's images (traverse: one row per z, num_points columns); complete writes the
        completed images."""
        client = self.client
        self.assertEqual(client.grpc_latent_dim(self.address, MODEL_NAME, timeout=TIMEOUT_S), self.model.latent_dim)
        np.save(os.path.join(self.tmp, "images.npy"), self.images)
        for signature, flags in (
            ("serving_default", ["--num=2", "--seed=3"]),
            ("traverse", ["--num=2", "--seed=5", "--time_step=1", "--num_points=3"]),
            ("complete", [f"--images={self.tmp}/images.npy", "--mask=center", "--steps=2", "--seed=4"]),
        ):
            with self.subTest(signature=signature):
                out = os.path.join(self.tmp, f"{signature}.png")
                argv = ["--mode=grpc", f"--server={self.address}", f"--model={MODEL_NAME}", f"--signature={signature}"]
                with contextlib.redirect_stdout(io.StringIO()) as printed:
                    summary = client.main(argv + flags + [f"--out={out}", f"--timeout={TIMEOUT_S}"])
                self.assertEqual(json.loads(printed.getvalue().strip().splitlines()[-1]), summary)
                inputs = client.make_inputs(
                    signature,
                    num=2,
                    seed={"serving_default": 3, "traverse": 5, "complete": 4}[signature],
                    latent_dim=self.model.latent_dim,
                    images=self.images,
                    mask="center",
                    time_step=1,
                    num_points=3,
                    steps=2,
                )
                images = self.direct(signature, inputs)["images"]
                columns = images.shape[1] if images.ndim == 5 else None
                grid = client.image_grid(images.reshape((-1, 28, 28, 1)), columns=columns)
                png = tf.io.decode_png(tf.io.read_file(out)).numpy()
                self.assertEqual(png.shape, grid.shape)
                self.assertLessEqual(np.abs(png.astype(int) - grid.astype(int)).max(), 1)  # float rounding at .5


def _load_client():
    spec = importlib.util.spec_from_file_location("client", os.path.join(testing_utils.REPO, "export", "client.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    tf.test.main()
