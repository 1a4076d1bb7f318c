r"""Client for a crvae_tf model served by TF Serving: REST (JSON) or gRPC predict requests -> a PNG grid.

    # 16 prior samples from seed 3 (same seed, same images, on every call and every server restart):
    python export/client.py --server=localhost:8501 --mode=rest --model=crvae --signature=sample --num=16 --seed=3 \
        --out=samples.png
    python export/client.py --server=localhost:8500 --mode=grpc --model=crvae --signature=sample --num=16 --seed=3 \
        --out=samples.png
    # serving_default: z ~ N(0, I) drawn here with numpy from --seed (latent width read from the model's metadata):
    python export/client.py --server=localhost:8501 --mode=rest --model=crvae --signature=serving_default \
        --num=16 --seed=3 --out=decoded.png
    # reconstruct / encode images from a .npy file (float32 [N, H, W, C] in [0, 1]) or PNG files (one image each):
    python export/client.py --server=localhost:8501 --mode=rest --model=crvae --signature=reconstruct \
        --images=digits.npy --out=reconstructions.png
    python export/client.py --server=localhost:8500 --mode=grpc --model=crvae --signature=encode \
        --images=digits.npy --out=posterior.npz
    # traverse: 4 prior draws (numpy, --seed), time step t = 3 (from 1) moved to one new value (server-side, --seed)
    # in 8 points; one row per draw:
    python export/client.py --server=localhost:8501 --mode=rest --model=crvae --signature=traverse \
        --num=4 --time_step=3 --num_points=8 --seed=5 --out=traverse.png
    python export/client.py --server=localhost:8501 --mode=rest --model=crvae --signature=traverse_images \
        --images=digits.npy --time_step=3 --num_points=8 --seed=5 --out=traverse.png
    # complete the right half of each image (mask: right_half / left_half / bottom_half / top_half / center, or a
    # .npy of float32 [N or 1, H, W, 1] / PNG files, 1 = observed), 100 Adam steps from the posterior mean (seed -1):
    python export/client.py --server=localhost:8500 --mode=grpc --model=crvae --signature=complete \
        --images=faces.npy --mask=right_half --steps=100 --seed=-1 --out=completed.png

The contract (signature names, dtypes, shapes, ranges) is in export/README.md. This script does not import
crvae_tf: REST mode needs only numpy; gRPC mode needs `tensorflow-serving-api` (and TensorFlow, which it
depends on, for `tf.make_tensor_proto` / `tf.make_ndarray`). The library functions (`make_inputs`, `make_mask`,
`rest_request_body`, `parse_rest_response`, `grpc_request`, `parse_grpc_response`, `image_grid`, `encode_png`)
are importable for use in other code. The last line of stdout is one line of JSON describing what was written.
"""

import argparse
import glob
import json
import math
import os
import struct
import sys
import tempfile
import urllib.error
import urllib.request
import zlib

import numpy as np

# The serving contract's names (export/README.md): signature -> (input names, output names).
SIGNATURES = {
    "serving_default": (("z",), ("images",)),
    "sample": (("num", "seed"), ("images", "z")),
    "encode": (("images",), ("loc", "scale")),
    "reconstruct": (("images",), ("images",)),
    "traverse": (("z", "time_step", "num_points", "seed"), ("images", "z")),
    "traverse_images": (("images", "time_step", "num_points", "seed"), ("images", "z")),
    "complete": (("images", "mask", "steps", "seed"), ("images", "z")),
}
INPUT_DTYPES = {
    "z": np.float32,
    "num": np.int32,
    "seed": np.int64,
    "images": np.float32,
    "mask": np.float32,
    "time_step": np.int32,
    "num_points": np.int32,
    "steps": np.int32,
}
# Signatures whose z the client draws (numpy N(0, I) from --seed; D from the model's metadata).
LATENT_SIGNATURES = ("serving_default", "traverse")
# Named masks for `complete` (1 = observed): the region named is what the model fills in, except "center", a
# centred square of half the side, which is the region removed.
NAMED_MASKS = ("right_half", "left_half", "bottom_half", "top_half", "center")
DEFAULT_COMPLETION_STEPS = 100  # crvae_tf.models.completion.DEFAULT_NUM_STEPS (tests/serving_grpc_test.py checks)
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


class ServingError(RuntimeError):
    """The server refused or failed the request; the message carries the server's own error text."""


# ------------------------------------------------------------------------------------------------ inputs


def make_inputs(
    signature: str,
    num: int = 16,
    seed: int = 0,
    latent_dim=None,
    images=None,
    mask=None,
    time_step: int = 1,
    num_points: int = 8,
    steps: int = DEFAULT_COMPLETION_STEPS,
) -> dict:
    """The request tensors of one signature, as numpy arrays with the contract's dtypes.

    Args:
      signature: one of `SIGNATURES`.
      num: serving_default / traverse: rows of z; sample: images to draw.
      seed: serving_default / traverse: numpy seed of z ~ N(0, I); sample / traverse / traverse_images / complete:
        the server-side stateless seed (int64; complete: < 0 starts from the posterior mean, >= 0 from a posterior
        sample).
      latent_dim: serving_default / traverse: D (see `rest_latent_dim` / `grpc_latent_dim`).
      images: encode / reconstruct / traverse_images / complete: float32 `[batch, H, W, C]` in [0, 1].
      mask: complete: float32 `[batch or 1, H, W, 1]` (or `[batch or 1, H, W]`) of 0 (missing) / 1 (observed), or a
        name of `NAMED_MASKS`.
      time_step: traverse / traverse_images: the time step t in [1, T], numbered as in the paper.
      num_points: traverse / traverse_images: points per row, both ends included.
      steps: complete: Adam steps on z.

    Returns:
      dict input name -> array: z float32 `[num, D]`; images float32 `[batch, H, W, C]`; mask float32
      `[batch, H, W, 1]`; num / time_step / num_points / steps int32 `[]`; seed int64 `[]`.
    """
    if signature not in SIGNATURES:
        raise ValueError(f"Unknown signature {signature!r}; the model serves {sorted(SIGNATURES)}.")
    if signature == "sample":
        return {"num": np.asarray(num, np.int32), "seed": np.asarray(seed, np.int64)}
    inputs = {}
    if signature in LATENT_SIGNATURES:
        if not latent_dim:
            raise ValueError(f"{signature} needs the latent width D (--latent_dim, or read from the model metadata).")
        inputs["z"] = np.random.default_rng(seed).standard_normal((num, int(latent_dim))).astype(np.float32)
    else:
        inputs["images"] = _checked_images(signature, images)
    if signature in ("traverse", "traverse_images"):
        inputs.update(
            time_step=np.asarray(time_step, np.int32),
            num_points=np.asarray(num_points, np.int32),
            seed=np.asarray(seed, np.int64),
        )
    if signature == "complete":
        inputs.update(
            mask=make_mask(mask, inputs["images"].shape),
            steps=np.asarray(steps, np.int32),
            seed=np.asarray(seed, np.int64),
        )
    return inputs


def _checked_images(signature: str, images) -> np.ndarray:
    if images is None:
        raise ValueError(f"{signature} needs images: --images=file.npy (float32 [N, H, W, C] in [0, 1]) or PNG files.")
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be [batch, height, width, channels], got shape {images.shape}")
    if images.size and (images.min() < 0.0 or images.max() > 1.0):
        raise ValueError(
            f"images must be in [0, 1] (got [{images.min()}, {images.max()}]); divide 8-bit images by 255."
        )
    return images


def make_mask(mask, image_shape) -> np.ndarray:
    """`complete`'s mask float32 `[batch, H, W, 1]` (1 = observed, 0 = missing) for images of `image_shape`
    `[batch, H, W, C]`: a name of `NAMED_MASKS`, or an array `[H, W]`, `[1 or batch, H, W]` or `[1 or batch, H, W,
    1]` of 0 / 1 (one mask is repeated over the batch)."""
    batch, height, width = (int(d) for d in image_shape[:3])
    if mask is None:
        raise ValueError(f"complete needs a mask: --mask={'|'.join(NAMED_MASKS)} or a .npy / PNG files (1 = observed).")
    if isinstance(mask, str):
        if mask not in NAMED_MASKS:
            raise ValueError(f"Unknown mask {mask!r}: one of {list(NAMED_MASKS)}, or a .npy / PNG file.")
        array = np.ones((height, width), np.float32)
        if mask == "right_half":
            array[:, width // 2 :] = 0.0
        elif mask == "left_half":
            array[:, : width // 2] = 0.0
        elif mask == "bottom_half":
            array[height // 2 :, :] = 0.0
        elif mask == "top_half":
            array[: height // 2, :] = 0.0
        else:
            array[height // 4 : height - height // 4, width // 4 : width - width // 4] = 0.0
        mask = array
    mask = np.asarray(mask, np.float32)
    if mask.ndim == 2:
        mask = mask[None]
    if mask.ndim == 3:
        mask = mask[..., None]
    if mask.ndim != 4 or mask.shape[1:] != (height, width, 1) or mask.shape[0] not in (1, batch):
        raise ValueError(f"mask must be [1 or {batch}, {height}, {width}, 1] (or without the 1s), got {mask.shape}")
    if not np.all((mask == 0.0) | (mask == 1.0)):
        raise ValueError("mask must hold 0 (missing pixel) or 1 (observed pixel) only.")
    return np.repeat(mask, batch, axis=0) if mask.shape[0] != batch else mask


def load_images(paths) -> np.ndarray:
    """float32 `[N, H, W, C]` in [0, 1] from one .npy file (already in that layout) or PNG files (one image each)."""
    paths = [p for pattern in paths for p in (sorted(glob.glob(pattern)) or [pattern])]
    if len(paths) == 1 and paths[0].endswith(".npy"):
        return np.load(paths[0]).astype(np.float32)
    import tensorflow as tf  # only for PNG decoding

    return np.stack([tf.io.decode_png(tf.io.read_file(p)).numpy().astype(np.float32) / 255.0 for p in paths])


def load_mask(paths):
    """`--mask`: a name of `NAMED_MASKS` (returned as is), one .npy file (0 / 1 values) or PNG files (one mask
    each, or one for every image; a pixel is observed where its first channel is >= 128)."""
    if len(paths) == 1 and paths[0] in NAMED_MASKS:
        return paths[0]
    paths = [p for pattern in paths for p in (sorted(glob.glob(pattern)) or [pattern])]
    if len(paths) == 1 and paths[0].endswith(".npy"):
        return np.load(paths[0]).astype(np.float32)
    import tensorflow as tf  # only for PNG decoding

    return np.stack([(tf.io.decode_png(tf.io.read_file(p)).numpy()[..., :1] >= 128).astype(np.float32) for p in paths])


# ------------------------------------------------------------------------------------------------ REST


def _model_url(server: str, model: str, version=None) -> str:
    base = server if server.startswith(("http://", "https://")) else f"http://{server}"
    return f"{base}/v1/models/{model}" + (f"/versions/{int(version)}" if version is not None else "")


def rest_request_body(signature: str, inputs: dict) -> dict:
    """TF Serving's REST predict body, columnar ("inputs") format: the only one that carries scalars (sample)."""
    return {"signature_name": signature, "inputs": {name: np.asarray(value).tolist() for name, value in inputs.items()}}


def parse_rest_response(signature: str, payload: dict) -> dict:
    """{"outputs": ...} -> dict output name -> float32 array.

    TF Serving drops the name when a signature has a single output (serving_default, reconstruct):
    then "outputs" is the tensor itself.
    """
    if "error" in payload:
        raise ServingError(payload["error"])
    outputs = payload["outputs"]
    names = SIGNATURES[signature][1]
    if not isinstance(outputs, dict):
        if len(names) != 1:
            raise ServingError(f"{signature} should return {names}, got one unnamed tensor.")
        outputs = {names[0]: outputs}
    return {name: np.asarray(value, np.float32) for name, value in outputs.items()}


def _http(url: str, body=None, timeout: float = 60.0, urlopen=urllib.request.urlopen) -> dict:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"}, method="GET" if data is None else "POST"
    )
    try:
        with urlopen(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as error:
        text = error.read().decode("utf-8", "replace")
        try:
            text = json.loads(text).get("error", text)
        except ValueError:
            pass
        raise ServingError(f"{url}: HTTP {error.code}: {text}") from None
    except urllib.error.URLError as error:
        raise ServingError(
            f"{url}: cannot reach the server ({error.reason}). Is tensorflow_model_server running "
            "with --rest_api_port (export/README.md)?"
        ) from None


def rest_predict(
    server: str,
    model: str,
    signature: str,
    inputs: dict,
    version=None,
    timeout: float = 60.0,
    urlopen=urllib.request.urlopen,
) -> dict:
    """POST {server}/v1/models/{model}[/versions/{v}]:predict; returns dict output name -> array."""
    payload = _http(
        _model_url(server, model, version) + ":predict", rest_request_body(signature, inputs), timeout, urlopen
    )
    return parse_rest_response(signature, payload)


def latent_dim_from_metadata_json(payload: dict) -> int:
    """D from a REST GET .../metadata answer (serving_default's z is [-1, D]; every signature has it)."""
    signature = payload["metadata"]["signature_def"]["signature_def"]["serving_default"]
    return int(signature["inputs"]["z"]["tensor_shape"]["dim"][1]["size"])


def rest_latent_dim(
    server: str, model: str, version=None, timeout: float = 60.0, urlopen=urllib.request.urlopen
) -> int:
    payload = _http(_model_url(server, model, version) + "/metadata", None, timeout, urlopen)
    return latent_dim_from_metadata_json(payload)


# ------------------------------------------------------------------------------------------------ gRPC


def _serving_apis():
    try:
        import tensorflow as tf
        from tensorflow_serving.apis import get_model_metadata_pb2
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_service_pb2_grpc
    except ImportError as error:
        raise ImportError(
            f"gRPC mode needs tensorflow-serving-api ({error}): pip install "
            "'tensorflow-serving-api==2.21.0' (or pip install -e '.[serving]')."
        ) from error
    return tf, get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc


def grpc_request(model: str, signature: str, inputs: dict, version=None):
    """A `tensorflow.serving.PredictRequest` for one signature (tensors with the contract's dtypes)."""
    tf, _, predict_pb2, _ = _serving_apis()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    for name, value in inputs.items():
        dtype = INPUT_DTYPES.get(name)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(value, dtype)))
    return request


def parse_grpc_response(response) -> dict:
    """PredictResponse -> dict output name -> array."""
    tf = _serving_apis()[0]
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def _stub(server: str):
    import grpc

    _, _, _, prediction_service_pb2_grpc = _serving_apis()
    channel = grpc.insecure_channel(
        server,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _grpc_call(method, request, server: str, timeout: float):
    import grpc

    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise ServingError(f"{server}: gRPC {error.code().name}: {error.details()}") from None


def grpc_predict(
    server: str, model: str, signature: str, inputs: dict, version=None, timeout: float = 60.0, stub=None
) -> dict:
    """PredictionService.Predict on {server} (host:port of --port); returns dict output name -> array."""
    stub = stub or _stub(server)
    response = _grpc_call(stub.Predict, grpc_request(model, signature, inputs, version), server, timeout)
    return parse_grpc_response(response)


def grpc_latent_dim(server: str, model: str, version=None, timeout: float = 60.0, stub=None) -> int:
    """D from GetModelMetadata (serving_default's z is [-1, D])."""
    _, get_model_metadata_pb2, _, _ = _serving_apis()
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model
    if version is not None:
        request.model_spec.version.value = int(version)
    stub = stub or _stub(server)
    response = _grpc_call(stub.GetModelMetadata, request, server, timeout)
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    return int(signature_defs.signature_def["serving_default"].inputs["z"].tensor_shape.dim[1].size)


# ------------------------------------------------------------------------------------------------ PNG


def image_grid(images, columns=None, padding: int = 1) -> np.ndarray:
    """`[N, H, W, C]` floats in [0, 1] -> uint8 `[rows*(H+padding)+padding, columns*(W+padding)+padding, C]`."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image_grid expects [num_images, height, width, 1|3|4], got shape {images.shape}")
    n, h, w, c = images.shape
    columns = columns or max(1, int(math.ceil(math.sqrt(n))))
    rows = max(1, int(math.ceil(n / columns)))
    grid = np.ones((rows * (h + padding) + padding, columns * (w + padding) + padding, c), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top : top + h, left : left + w] = image
    return np.round(grid * 255.0).astype(np.uint8)


def encode_png(grid: np.ndarray) -> bytes:
    """uint8 `[H, W, C]` (C = 1, 3 or 4) -> PNG bytes (8-bit, no filtering, zlib level 9). Numpy only."""
    grid = np.ascontiguousarray(grid, np.uint8)
    height, width, channels = grid.shape
    color_type = {1: 0, 3: 2, 4: 6}[channels]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + grid[row].tobytes() for row in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def _atomic_write(path: str, payload: bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_outputs(signature: str, outputs: dict, out: str) -> dict:
    """Writes image outputs as a PNG grid to `out` (encode: loc/scale as .npz); returns a summary dict.

    traverse / traverse_images return `[batch, P, H, W, C]`: one grid row per input, its P points left to right."""
    summary = {"signature": signature, "outputs": {name: list(value.shape) for name, value in outputs.items()}}
    if "images" in outputs:
        images = np.asarray(outputs["images"])
        columns = None
        if images.ndim == 5:
            columns = images.shape[1]
            images = images.reshape((-1,) + images.shape[2:])
        _atomic_write(out, encode_png(image_grid(images, columns=columns)))
        summary["png"] = out
    else:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **outputs)
        _atomic_write(out, buffer.getvalue())
        summary["npz"] = out
    return summary


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--server", default="localhost:8501", help="host:port: 8501 (REST) or 8500 (gRPC) by default.")
    parser.add_argument("--mode", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--model", default="crvae", help="The model name in models.config / --model_name.")
    parser.add_argument(
        "--version", type=int, default=None, help="A specific version (training step); default: the latest."
    )
    parser.add_argument("--signature", choices=sorted(SIGNATURES), default="sample")
    parser.add_argument("--num", type=int, default=16, help="sample / serving_default / traverse: how many rows.")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="sample / traverse* / complete: the server's stateless seed (complete: < 0 starts from the posterior "
        "mean); serving_default / traverse: also the numpy seed of z.",
    )
    parser.add_argument(
        "--latent_dim", type=int, default=None, help="serving_default / traverse: D (default: from the metadata)."
    )
    parser.add_argument(
        "--images",
        nargs="+",
        default=None,
        help="encode / reconstruct / traverse_images / complete: a .npy file (float32 [N, H, W, C] in [0, 1]) or PNGs.",
    )
    parser.add_argument(
        "--mask",
        nargs="+",
        default=None,
        help=f"complete: {' | '.join(NAMED_MASKS)}, a .npy file (0/1, [N or 1, H, W, 1]) or PNG files; 1 = observed.",
    )
    parser.add_argument(
        "--time_step", type=int, default=1, help="traverse*: the time step t in [1, T], numbered as in the paper."
    )
    parser.add_argument("--num_points", type=int, default=8, help="traverse*: points per row, ends included.")
    parser.add_argument("--steps", type=int, default=DEFAULT_COMPLETION_STEPS, help="complete: Adam steps on z.")
    parser.add_argument("--out", default="grid.png", help="PNG grid of the returned images (encode: .npz).")
    parser.add_argument("--timeout", type=float, default=60.0, help="Seconds per request.")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"--num={args.num} must be >= 1.")
    try:
        latent_dim = args.latent_dim
        if args.signature in LATENT_SIGNATURES and not latent_dim:
            latent_dim = (
                rest_latent_dim(args.server, args.model, args.version, args.timeout)
                if args.mode == "rest"
                else grpc_latent_dim(args.server, args.model, args.version, args.timeout)
            )
        images = load_images(args.images) if args.images else None
        mask = load_mask(args.mask) if args.mask else None
        inputs = make_inputs(
            args.signature,
            args.num,
            args.seed,
            latent_dim,
            images,
            mask=mask,
            time_step=args.time_step,
            num_points=args.num_points,
            steps=args.steps,
        )
        predict = rest_predict if args.mode == "rest" else grpc_predict
        outputs = predict(args.server, args.model, args.signature, inputs, args.version, args.timeout)
    except (ServingError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    summary = write_outputs(args.signature, outputs, args.out)
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
