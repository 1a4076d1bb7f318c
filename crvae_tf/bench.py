r"""Training-throughput benchmark: images/second of each MNIST variant, one JSON object per line.

    python -m crvae_tf.bench                       # every variant, batch 128
    python -m crvae_tf.bench --models=crvae,vae --steps=20 --batch_size=128
    python -m crvae_tf.bench --recipes=gin/celeba64.gin,gin/birds128.gin --steps=5   # any recipe's step time

Each variant is built from its recipe (`gin/mnist_<model>.gin`, so the benchmark measures exactly what
the recipe trains: architecture, per-group optimizers, gradient clamp), then trained on random binary
28x28 batches held in memory. Timing rule (the same as the PyTorch twin's, see gin/README.md): every step is
timed with `perf_counter` after `--warmup` untimed steps; `img_per_s = batch_size / median(step time)`. The timed
step is the one the training loop runs between logging points (`training.execution.without_diagnostics`: no
per-group diagnostics, `train.diagnostics='logged_steps'`); `"diagnostics": "every_step"` in a row means they were
recorded (`--gin_bindings="train.diagnostics='every_step'"`).

Training and recipe rows also say what the step ran on and what the recipe's whole schedule would take at that
speed: `device` ('GPU: <name>' or 'CPU: N cores'), `jit_compile` (the recipe's `train.jit_compile`, which the timed
step honours as the training loop does), `schedule_steps` (the recipe's `train.max_steps`) and `schedule_step_hours`
(= schedule_steps x the median step time: the training steps alone, without validation, image grids or checkpoints).
On a machine with a GPU, TensorFlow places the steps on it; the step times and full-schedule figures of the paper's
runs are then one command, e.g. `--recipes=gin/mnist_crvae.gin,gin/celeba64.gin
--gin_bindings="model.precision='mixed_bfloat16'"`, once more with `--gin_bindings=train.jit_compile=True`.

`flops_per_image` counts the multiply-accumulates of every conv, transposed conv, Dense and LSTM gate
matmul of one forward pass (elementwise ops, BN, activations and the loss are ignored), times 2 for
FLOPs and times 3 for forward + backward, the twin's convention.

NLL mode (`--nll`): importance samples per second of the evaluation estimator, the very code path of
`python -m crvae_tf.evaluate` (`eval_lib.ImportanceSampler`: encoder once per batch, `chunk_size` samples per
decoder pass, float64 streaming log-mean-exp), on `--nll_images` random binary images with the recipe's
freshly initialised weights (random weights: the throughput does not depend on them; the printed `nll` is
meaningless). Each K of `--nll_samples` runs in a fresh subprocess, so its peak resident memory (`VmHWM`) is
not masked by an earlier, larger run:

    python -m crvae_tf.bench --nll                                   # crvae, K = 1,000 and 10,000, 16 images
    python -m crvae_tf.bench --nll --nll_samples=1000 --models=crvae,vae

Timing rule (the twin's `nll`): one untimed warm-up chunk (tracing), then the whole estimate is timed;
`samples_per_s = images * K / seconds`. `peak_rss_growth_mb` is the high-water mark's growth from after the
model build to the end, i.e. what the estimator itself needs: it should not grow with K.

Twin mode (`--twin=PATH/torch_twin.py --twin_python=PYTHON`): the three side-by-side ratios against the PyTorch twin of
the authors' MNIST crVAE (issue "Scale", item 4), each pair run back to back in fresh processes on the same machine:
float32 training vs the twin's `train --fast`, `mixed_bfloat16` training vs `train --fast --bf16`, and the NLL
estimator vs `nll --fast` (K = `--nll_samples`' first value, `--nll_images` images). One JSON line per comparison with
both rates and `ratio` = ours / twin (>= 1.0 is the goal), `--twin_rounds` times, alternating which side runs first.
Each row carries `ours_cpu_utilization` (our process's CPU seconds over wall seconds) and a `warning` when it is
below 90% of the cores: on the 2-core machine the kernel now and then keeps both of TensorFlow's compute threads on
one core for a whole run, and that row then measures the scheduler (rerun it). After the rounds, one summary row per
comparison (`twin_summaries`): the geometric mean of the unflagged rounds' ratios, their range, the means by which side
ran first and `order_balanced` (use an even `--twin_rounds`: the side that runs first tends to measure faster). First of
all it measures the machine's matmul peak in float32 and bfloat16 (`matmul_peak_gflop_per_s`, one line), and each
training row carries both sides' achieved GFLOP/s (the same analytic FLOP count) and their `*_fraction_of_peak`:
where both sides sit at the peak, the ratio cannot move past the host's noise:

    python -m crvae_tf.bench --twin=../shared/bench/torch_twin.py --twin_python=../.venv_torch/bin/python

Serving mode (`--serving`): request latency of the exported `serving_default` (the SavedModel of
`python -m crvae_tf.export`, written to a temporary folder and loaded back with `tf.saved_model.load`, i.e. the
graph TF Serving runs, without the server's RPC layer) against Keras `Model.predict` on the same weights (a
`keras.Model` whose `call(z)` is `generate(z)`), at each of `--serving_batch_sizes`:

    python -m crvae_tf.bench --serving                               # crvae, batch 1 and 64
    python -m crvae_tf.bench --serving --models=vae,crvae --serving_iterations=300

Timing rule: `--warmup` untimed calls of each path, then `--serving_iterations` timed calls of each, interleaved
(exported, Keras, exported, ...) so both see the same machine load; each call starts from a numpy z and ends
with numpy images. Prints p50 and p99 in milliseconds and `ratio_p50` = exported / Keras. Recipe weights are
freshly initialised (latency does not depend on their values).

Scaling mode (`--scaling`): the multi-device scaling efficiency of training (issue #13, item 4). For each variant
(`--models`, default crvae), two fresh processes back to back at the SAME global batch `--batch_size`: one trains on
one device exactly as the plain benchmark does (`tf.function(model.train_step)`), the other under
`tf.distribute.MirroredStrategy` over `--scaling_replicas` devices (R, default 2) with the training loop's own
distribution code (`training.distribution`: `make_strategy('mirrored', devices)`, the model and its optimizers built
in the strategy's scope, `check_batch`, `synchronize_batch_statistics` when the recipe's
`train.synchronized_batch_statistics` asks for it, `replicated_step`; B/R images per replica). Devices: the first R
GPUs when the machine has at least R, otherwise the CPU split into R logical devices
(`tf.config.set_logical_device_configuration`, which must precede TensorFlow's initialisation, hence the processes)
with the GPUs hidden from both sides; the row's `device_kind` says which ('GPU' or 'logical CPU devices on N cores')
and `gpus_available` how many GPUs the machine has (0: no GPU, the CPU figure only):

    python -m crvae_tf.bench --scaling                                  # crvae, 2 replicas, batch 128
    python -m crvae_tf.bench --scaling --models=crvae,vae --scaling_replicas=4 --steps=6 --warmup=2

Timing rule: the training benchmark's on both sides (`--warmup` untimed steps, then `--steps` timed ones;
`img_per_s = batch_size / median(step time)`). One JSON line per variant: `img_per_s_1`, `img_per_s_R`,
`scaling_efficiency` = img_per_s_R / img_per_s_1 (the issue's definition: images/s with R devices over 1), on GPUs
also `per_device_efficiency` = scaling_efficiency / R (the usual definition: 1.0 is linear scaling), and each side's
`cpu_utilization` (process CPU seconds over wall seconds). R logical CPU devices share the same cores, so on a CPU
1.0 means the replication costs nothing and the figure measures the overhead of the strategy (per-replica work at
B/R, cross-replica sums, synchronized batch statistics), not a speed-up.
"""

from crvae_tf import startup

startup.quiet_tensorflow()

import json
import math
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import gin
import keras
import numpy as np
import tensorflow as tf

from crvae_tf import builders
from crvae_tf import cli
from crvae_tf import data as data_lib
from crvae_tf import models
from crvae_tf import runs
from crvae_tf.architectures import heads
from crvae_tf.evaluation import likelihood as eval_lib
from crvae_tf.training import distribution
from crvae_tf.training import execution

VARIANTS = ("vae", "cvae", "bcvae", "crvae_inference", "crvae_generation", "crvae")

VERBOSE = flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)
MODELS = flags.DEFINE_list("models", list(VARIANTS), f"Variants to time, from {VARIANTS}.")
STEPS = flags.DEFINE_integer("steps", 20, "Timed training steps per variant.")
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, allocator warm-up).")
# --gin_bindings and --batch_size also exist in other crvae_tf binaries; allow_override lets them share a process.
BATCH = flags.DEFINE_integer("batch_size", 128, "Images per step.", allow_override=True)
GIN_DIR = flags.DEFINE_string("gin_dir", "gin", "Folder holding the mnist_*.gin recipes.")
GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Extra bindings applied after the recipe.", allow_override=True
)

RECIPES = flags.DEFINE_list(
    "recipes",
    [],
    "Recipe files to time instead of the MNIST variants, e.g. "
    "gin/celeba64.gin,gin/birds128.gin (the adversarial family): random images of the "
    "recipe's resolution at its train.batch_size (--batch_size overrides it).",
)
NLL = flags.DEFINE_boolean(
    "nll",
    False,
    "Time the NLL estimator (importance samples/s, peak memory) instead of training; --models then defaults to crvae.",
)
NLL_SAMPLES = flags.DEFINE_list("nll_samples", ["1000", "10000"], "--nll: K values, each in a fresh subprocess.")
NLL_IMAGES = flags.DEFINE_integer("nll_images", 16, "--nll: random binary images estimated.")
NLL_BATCH = flags.DEFINE_integer(
    "nll_batch_size",
    eval_lib.DEFAULT_BATCH_SIZE,
    "--nll: images per encoder pass (as evaluate; capped at --nll_images).",
)
NLL_CHUNK = flags.DEFINE_integer(
    "nll_chunk_size",
    None,
    "--nll: samples per decoder pass (default: evaluate's, "
    f"about {eval_lib.TARGET_DECODER_ROWS} decoder rows per pass).",
)
SERVING = flags.DEFINE_boolean(
    "serving",
    False,
    "Time the exported serving_default against Keras predict "
    "(p50/p99 latency) instead of training; --models then defaults to crvae.",
)
SERVING_BATCHES = flags.DEFINE_list("serving_batch_sizes", ["1", "64"], "--serving: batch sizes (rows of z).")
SERVING_ITERATIONS = flags.DEFINE_integer("serving_iterations", 200, "--serving: timed calls per path and batch.")
TWIN = flags.DEFINE_string(
    "twin",
    None,
    "Path of the PyTorch twin (torch_twin.py): print our / twin throughput ratios instead of timing alone.",
)
TWIN_PYTHON = flags.DEFINE_string("twin_python", None, "--twin: the Python interpreter that has torch installed.")
TWIN_ROUNDS = flags.DEFINE_integer("twin_rounds", 1, "--twin: rounds of each comparison (alternating who runs first).")
SCALING = flags.DEFINE_boolean(
    "scaling",
    False,
    "Print the multi-device scaling efficiency of training (images/s on --scaling_replicas devices over one, the "
    "same global batch) instead of timing alone; --models then defaults to crvae.",
)
SCALING_REPLICAS = flags.DEFINE_integer(
    "scaling_replicas", 2, "--scaling: R, the replicas of the MirroredStrategy side (GPUs, or logical CPU devices)."
)
SCALING_SIDE = flags.DEFINE_enum(
    "scaling_side",
    None,
    ["one", "replicated"],
    "--scaling: set by the benchmark for its child processes (the side this process times); not for users.",
)
NLL_SUBPROCESS = flags.DEFINE_boolean(
    "nll_subprocess",
    True,
    "--nll: run each (model, K) in a fresh process (false: in this one; what each subprocess does).",
)


def forward_macs(model) -> int:
    """Multiply-accumulates of one image's forward pass (encoder, latent head, decoder)."""
    macs = 0
    for network in (model.encoder, model.decoder):
        for layer in network.layers:
            if isinstance(layer, keras.layers.Conv2DTranspose):
                _, h, w, cin = layer.input.shape
                macs += h * w * cin * layer.kernel_size[0] * layer.kernel_size[1] * layer.filters
            elif isinstance(layer, keras.layers.Conv2D):
                _, h, w, cout = layer.output.shape
                macs += h * w * cout * layer.kernel_size[0] * layer.kernel_size[1] * layer.input.shape[-1]
    return macs + head_macs(model.latent_head)


def head_macs(head) -> int:
    """Forward MACs of a latent head, from its configuration."""
    h, w, cf = head.feature_shape
    d, t = head.latent_dim, head.num_time_steps
    feat = h * w * cf
    conv3 = lambda cin, cout: h * w * 9 * cin * cout
    if isinstance(head, heads.FCHead):
        return 2 * feat * d + d * feat
    if isinstance(head, heads.ConvHead):
        return 2 * conv3(cf, head.latent_channels) + conv3(head.latent_channels, cf)
    loc = feat * d if head.loc_path == "dense" else conv3(cf, head.latent_channels)
    if isinstance(head, heads.BlockFCHead):
        return loc + feat * d // t + d * feat // t
    lstm = lambda i: sum(
        t * 4 * head.hidden_units * ((i if n == 0 else head.hidden_units) + head.hidden_units)
        for n in range(head.num_layers)
    )
    inference = lstm(feat // t) + t * head.hidden_units * d // t if head.recurrent_inference else feat * d // t
    generation = lstm(d // t) + t * head.hidden_units * d // t if head.recurrent_generation else d * d // t
    return loc + inference + generation + conv3(head.latent_channels, cf)


def time_steps(step, batches, warmup: int, steps: int) -> tuple:
    """Wall time of each of `steps` training steps after `warmup` untimed ones (cycling over `batches`), and the
    process's CPU seconds over the wall seconds of the timed steps (`cpu_utilization`)."""
    times = []
    cpu = 0.0
    for i in range(warmup + steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        float(step(batches[i % len(batches)])["loss"])  # forces completion of the step
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu += time.process_time() - cpu_start
    return times, round(cpu / sum(times), 2)


def step_rates(batch_size: int, times, digits: int = 4) -> dict:
    """The timing rule's figures: `img_per_s` = batch / median step time, and the median and fastest step (s)."""
    median = statistics.median(times)
    return {
        "img_per_s": round(batch_size / median, 1),
        "step_s_median": round(median, digits),
        "step_s_min": round(min(times), digits),
    }


def _loop_step(model):
    """(the `tf.function` step the training loop runs between logging points, the `train.*` settings) under the
    parsed gin config: `train.diagnostics` and `train.jit_compile` as the loop builds it (one device)."""
    settings = builders.train_settings(max_steps=1)
    step = tf.function(
        execution.step_between_logs(model, settings.diagnostics),
        jit_compile=settings.jit_compile,
        reduce_retracing=True,
        autograph=False,
    )
    return step, settings


def device_description() -> str:
    """What the benchmark's steps ran on: 'GPU: <name>' (TensorFlow places them on the first visible GPU) or
    'CPU: N cores'."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
        return f"GPU: {name}" + (f" (1 of {len(gpus)})" if len(gpus) > 1 else "")
    return f"CPU: {os.cpu_count()} cores"


def schedule_fields(step_s_median: float) -> dict:
    """The recipe's full schedule at the measured step time, from the parsed gin config: `schedule_steps`
    (`train.max_steps`) and `schedule_step_hours` = schedule_steps * step_s_median / 3600, the training steps alone
    (validation passes, image grids and checkpoints come on top; a recipe header gives the whole run's wall time).
    Both None where the config gives no positive integer `train.max_steps` (the benchmark itself does not need one)."""
    try:
        schedule_steps = gin.query_parameter("train.max_steps")
    except ValueError:  # not bound
        schedule_steps = None
    if not (isinstance(schedule_steps, int) and schedule_steps >= 1):
        return {"schedule_steps": None, "schedule_step_hours": None}
    return {"schedule_steps": schedule_steps, "schedule_step_hours": round(schedule_steps * step_s_median / 3600.0, 2)}


def _random_binary_batches(batch_size):
    """Four random binary 28x28 batches (13% ones, about MNIST's), seed 0: what the training benchmarks cycle over."""
    rng = np.random.default_rng(0)
    return [tf.constant((rng.random((batch_size, 28, 28, 1)) < 0.13).astype(np.float32)) for _ in range(4)]


def bench_variant(name, steps, warmup, batch_size, gin_dir, bindings):
    gin.clear_config()
    runs.parse_gin([os.path.join(gin_dir, f"mnist_{name}.gin")], list(bindings), finalize=False)
    keras.utils.set_random_seed(0)
    model = builders.build_model(image_shape=(28, 28, 1), seed=0)
    optimizers, clips = builders.build_optimizers(model, steps_per_epoch=390)
    model.compile(optimizers=optimizers, clip_values=clips)
    step, settings = _loop_step(model)
    batches = _random_binary_batches(batch_size)
    times, cpu_utilization = time_steps(step, batches, warmup, steps)
    median = statistics.median(times)
    flops = 3 * 2 * forward_macs(model)
    params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    return {
        "model": name,
        "batch_size": batch_size,
        "precision": model.dtype_policy.name,
        "diagnostics": settings.diagnostics,
        "jit_compile": settings.jit_compile,
        "device": device_description(),
        **step_rates(batch_size, times),
        **schedule_fields(median),
        "flops_per_image": flops,
        "gflop_per_s": round(flops * batch_size / median / 1e9, 1),
        "params": params,
        "steps": steps,
        # CPU seconds of this process over wall seconds: about --threads when every core worked for it.
        "cpu_utilization": cpu_utilization,
        "threads": os.cpu_count(),
        "tf": tf.__version__,
        "keras": keras.__version__,
    }


def bench_recipe(path, steps, warmup, batch_size, bindings):
    """Median training step time of any recipe (e.g. the adversarial ones) on random images of its shape."""
    gin.clear_config()
    runs.parse_gin([path], list(bindings), finalize=False)
    if gin.query_parameter("dataset.name") in ("celeba", "birds", "stl10"):
        resolution = gin.query_parameter("dataset.resolution")
        image_shape = (resolution, resolution, 3)
    else:
        image_shape = (28, 28, 1)
    batch_size = batch_size or gin.query_parameter("train.batch_size")
    keras.utils.set_random_seed(0)
    model = builders.build_model(image_shape=image_shape, seed=0)
    optimizers, clips = builders.build_optimizers(model, steps_per_epoch=1000)
    model.compile(optimizers=optimizers, clip_values=clips)
    step, settings = _loop_step(model)
    rng = np.random.default_rng(0)
    batches = [tf.constant(rng.random((batch_size,) + image_shape).astype(np.float32)) for _ in range(2)]
    if hasattr(model, "class_logits"):  # semi-supervised (STL-10): (pool, labeled, labels), labeled batch = batch
        labels = tf.constant(rng.integers(0, 10, batch_size))
        batches = [(images, images, labels) for images in batches]
    times, cpu_utilization = time_steps(step, batches, warmup, steps)
    median = statistics.median(times)
    return {
        "recipe": os.path.basename(path),
        "image_shape": list(image_shape),
        "batch_size": batch_size,
        "precision": model.dtype_policy.name,
        "diagnostics": settings.diagnostics,
        "jit_compile": settings.jit_compile,
        "device": device_description(),
        **step_rates(batch_size, times, digits=3),
        **schedule_fields(median),
        "params": models.parameter_counts(model),
        "steps": steps,
        "cpu_utilization": cpu_utilization,
        "threads": os.cpu_count(),
        "tf": tf.__version__,
        "keras": keras.__version__,
    }


def _memory_mb(field: str) -> float:
    """A `/proc/self/status` memory field (VmHWM: peak resident set; VmRSS: current) in MiB (0 if unavailable)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def bench_nll(name, num_samples, num_images, batch_size, chunk_size, gin_dir, bindings):
    """Times `eval_lib.ImportanceSampler` (the evaluation binary's estimator) on random binary images."""
    gin.clear_config()
    runs.parse_gin([os.path.join(gin_dir, f"mnist_{name}.gin")], list(bindings), finalize=False)
    keras.utils.set_random_seed(0)
    model = builders.build_model(image_shape=(28, 28, 1), seed=0)
    batch_size = min(batch_size, num_images)
    images = (np.random.default_rng(0).random((num_images, 28, 28, 1)) < 0.13).astype(np.float32)
    sampler = eval_lib.ImportanceSampler(model, num_samples, chunk_size, seed=0, batch_size=batch_size)
    baseline_mb = _memory_mb("VmHWM")
    sampler.warm_up(images[:batch_size])
    start, cpu_start = time.perf_counter(), time.process_time()
    estimates = sampler.estimate(
        data_lib.make_dataset(images, batch_size=batch_size, binarization="static", seed=0, training=False),
        log_every_secs=1e9,
    )
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mb = _memory_mb("VmHWM")
    return {
        "model": name,
        "mode": "nll",
        "num_importance_samples": num_samples,
        "images": num_images,
        "batch_size": batch_size,
        "chunk_size": sampler.chunk_size,
        "decoder_rows_per_pass": sampler.chunk_size * batch_size,
        "precision": model.dtype_policy.name,
        "samples_per_s": round(num_images * num_samples / seconds, 1),
        "estimation_s": round(seconds, 2),
        # CPU seconds of this process over wall seconds: about --threads when the machine is not shared.
        "cpu_utilization": round(cpu_seconds / seconds, 2),
        "peak_rss_mb": round(peak_mb, 1),
        "peak_rss_growth_mb": round(peak_mb - baseline_mb, 1),
        "weights": "random (recipe initialisation, seed 0)",
        "nll": round(-float(np.mean(estimates.log_likelihood)), 3),
        "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "threads": os.cpu_count(),
        "tf": tf.__version__,
        "keras": keras.__version__,
    }


def _nll_main(models):
    try:
        samples = [int(k) for k in NLL_SAMPLES.value]
    except ValueError:
        raise app.UsageError(f"--nll_samples={','.join(NLL_SAMPLES.value)} must be a list of integers.") from None
    if (
        not samples
        or min(samples) < 1
        or NLL_IMAGES.value < 1
        or NLL_BATCH.value < 1
        or (NLL_CHUNK.value is not None and NLL_CHUNK.value < 1)
    ):
        raise app.UsageError("--nll_samples, --nll_images, --nll_batch_size and --nll_chunk_size must be positive.")
    for name in models:
        for k in samples:
            if not NLL_SUBPROCESS.value:
                result = bench_nll(
                    name, k, NLL_IMAGES.value, NLL_BATCH.value, NLL_CHUNK.value, GIN_DIR.value, GIN_BINDINGS.value
                )
                print(json.dumps(result), flush=True)
                continue
            command = [
                sys.executable,
                "-m",
                "crvae_tf.bench",
                "--nll",
                "--nonll_subprocess",
                f"--models={name}",
                f"--nll_samples={k}",
                f"--nll_images={NLL_IMAGES.value}",
                f"--nll_batch_size={NLL_BATCH.value}",
                f"--gin_dir={GIN_DIR.value}",
            ]
            command += [f"--nll_chunk_size={NLL_CHUNK.value}"] if NLL_CHUNK.value is not None else []
            command += [f"--gin_bindings={b}" for b in GIN_BINDINGS.value]
            child = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
            lines = child.stdout.strip().splitlines()
            if child.returncode or not lines:
                raise RuntimeError(
                    f"The NLL benchmark of {name} at K={k} failed (exit {child.returncode}); its "
                    f"stderr is above. Command: {' '.join(command)}"
                )
            print(lines[-1], flush=True)


class _GeneratorModel(keras.Model):
    """`call(z) = model.generate(z)`: the Keras side of the serving benchmark (`predict` runs its predict_function)."""

    def __init__(self, model, **kwargs):
        super().__init__(**kwargs)
        self.generator = model

    def call(self, z):
        return self.generator.generate(z)


def _percentile_ms(times, q):
    return round(float(np.percentile(np.asarray(times) * 1000.0, q)), 3)


def bench_serving(name, batch_sizes, iterations, warmup, gin_dir, bindings):
    """p50/p99 latency of the exported serving_default vs Keras predict for one recipe; one dict per batch size."""
    import shutil
    import tempfile

    from crvae_tf.serving import export_lib
    # imported here: only this mode needs it

    gin.clear_config()
    runs.parse_gin([os.path.join(gin_dir, f"mnist_{name}.gin")], list(bindings), finalize=False)
    keras.utils.set_random_seed(0)
    model = builders.build_model(image_shape=(28, 28, 1), seed=0)
    folder = tempfile.mkdtemp(prefix="bench_serving-")
    try:
        start = time.perf_counter()
        export = export_lib.export_model(model, folder, 0)
        export_s = time.perf_counter() - start
        serving_default = tf.saved_model.load(export.path).signatures["serving_default"]
        keras_model = _GeneratorModel(model, name="generator")
        results = []
        for batch_size in batch_sizes:
            z = np.random.default_rng(batch_size).standard_normal((batch_size, model.latent_dim)).astype(np.float32)
            exported = lambda z=z: serving_default(z=tf.constant(z))["images"].numpy()
            predict = lambda z=z, n=batch_size: keras_model.predict(z, batch_size=n, verbose=0)
            np.testing.assert_allclose(exported(), predict(), atol=1e-5)  # the same function of z
            for _ in range(warmup):
                exported(), predict()
            times = {"exported": [], "keras": []}
            for _ in range(iterations):
                for key, call in (("exported", exported), ("keras", predict)):
                    start = time.perf_counter()
                    call()
                    times[key].append(time.perf_counter() - start)
            row = {"model": name, "mode": "serving", "batch_size": batch_size}
            for key in ("exported", "keras"):
                row[f"{key}_p50_ms"] = _percentile_ms(times[key], 50)
                row[f"{key}_p99_ms"] = _percentile_ms(times[key], 99)
            row["ratio_p50"] = round(row["exported_p50_ms"] / row["keras_p50_ms"], 3)
            row["ratio_p99"] = round(row["exported_p99_ms"] / row["keras_p99_ms"], 3)
            row.update(
                {
                    "iterations": iterations,
                    "export_s": round(export_s, 2),
                    "latent_dim": int(model.latent_dim),
                    "precision": model.dtype_policy.name,
                    "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
                    "threads": os.cpu_count(),
                    "tf": tf.__version__,
                    "keras": keras.__version__,
                }
            )
            results.append(row)
        return results
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _serving_main(models):
    try:
        batch_sizes = [int(b) for b in SERVING_BATCHES.value]
    except ValueError:
        raise app.UsageError(f"--serving_batch_sizes={','.join(SERVING_BATCHES.value)} must be integers.") from None
    if not batch_sizes or min(batch_sizes) < 1 or SERVING_ITERATIONS.value < 1 or WARMUP.value < 0:
        raise app.UsageError("--serving_batch_sizes and --serving_iterations must be positive, --warmup >= 0.")
    for name in models:
        for row in bench_serving(
            name, batch_sizes, SERVING_ITERATIONS.value, WARMUP.value, GIN_DIR.value, GIN_BINDINGS.value
        ):
            print(json.dumps(row), flush=True)


# The twin comparisons: (name, the twin's arguments, our bench arguments, our JSON key, the twin's JSON key).
TWIN_COMPARISONS = (
    ("train_float32", ["train", "--model", "crvae", "--fast"], ["--models=crvae"], "img_per_s", "img_per_s"),
    (
        "train_mixed_bfloat16",
        ["train", "--model", "crvae", "--fast", "--bf16"],
        ["--models=crvae", "--gin_bindings=model.precision='mixed_bfloat16'"],
        "img_per_s",
        "img_per_s",
    ),
    (
        "nll",
        ["nll", "--model", "crvae", "--fast"],
        ["--nll", "--models=crvae"],
        "samples_per_s",
        "importance_samples_per_s",
    ),
)

# --twin: the precision whose matmul peak a training comparison is measured against.
TWIN_PEAK_DTYPES = {"train_float32": "float32", "train_mixed_bfloat16": "bfloat16"}
PEAK_MATMUL_SIDE = 4096  # n of the [n, n] @ [n, n] products that measure the peak


def _last_json(command, what):
    """Runs `command` and returns the JSON object on its last stdout line; a failure names the command."""
    child = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = child.stdout.strip().splitlines()
    if child.returncode or not lines:
        tail = child.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"{what} failed (exit {child.returncode}): {' '.join(command)}: {tail[0]}")
    return json.loads(lines[-1])


FULL_UTILIZATION = 0.9  # --twin: a row whose process used less than this fraction of the cores gets a warning


def twin_ratio(name, twin_args, our_args, our_key, twin_key, round_index=0, peaks=None):
    """One side-by-side comparison: the twin and our benchmark in fresh processes, back to back (the twin first on
    even rounds), with the same steps, warm-up, batch and (for the NLL) K and images. Returns the JSON row; with
    `peaks` ({dtype: matmul GFLOP/s}, `matmul_peak_gflop_per_s`), a training row also carries each side's achieved
    GFLOP/s and its fraction of the peak of the comparison's precision."""
    steps, warmup, batch = STEPS.value, WARMUP.value, BATCH.value
    k, images = int(NLL_SAMPLES.value[0]), NLL_IMAGES.value
    twin_command = [TWIN_PYTHON.value, TWIN.value] + twin_args + ["--threads", str(os.cpu_count())]
    ours = [sys.executable, "-m", "crvae_tf.bench", f"--gin_dir={GIN_DIR.value}"] + our_args
    if name == "nll":
        twin_command += ["--k", str(k), "--images", str(images)]
        ours += [f"--nll_samples={k}", f"--nll_images={images}"]
    else:
        twin_command += ["--steps", str(steps + 3), "--batch", str(batch)]  # the twin drops its first 3 steps
        ours += [f"--steps={steps}", f"--warmup={warmup}", f"--batch_size={batch}"]
    ours += [f"--gin_bindings={b}" for b in GIN_BINDINGS.value]
    runs_in_order = [("twin", twin_command), ("ours", ours)]
    results = {}
    for side, command in runs_in_order if round_index % 2 == 0 else runs_in_order[::-1]:
        results[side] = _last_json(command, f"--twin: the {side} side of {name}")
    ours_rate, twin_rate = float(results["ours"][our_key]), float(results["twin"][twin_key])
    utilization = results["ours"].get("cpu_utilization")
    achieved = {side: results[side].get(key) for side, key in (("ours", "gflop_per_s"), ("twin", "achieved_gflops"))}
    row = {
        "comparison": name,
        "round": round_index,
        "ours": ours_rate,
        "twin": twin_rate,
        "ratio": round(ours_rate / twin_rate, 3),
        "unit": "images/s" if name != "nll" else "importance samples/s",
        "first": "twin" if round_index % 2 == 0 else "ours",
        "threads": os.cpu_count(),
        "ours_cpu_utilization": utilization,
    }
    dtype = TWIN_PEAK_DTYPES.get(name)
    if peaks and dtype in peaks and None not in achieved.values():
        # Both sides count the same analytic FLOPs (conv, transposed conv, Dense, LSTM gate matmuls; x3 for training):
        # the fraction of the machine's matmul peak each reached, in the comparison's precision.
        for side, gflop_per_s in achieved.items():
            row[f"{side}_gflop_per_s"] = float(gflop_per_s)
            row[f"{side}_fraction_of_peak"] = round(float(gflop_per_s) / peaks[dtype], 3)
    if utilization is not None and utilization < FULL_UTILIZATION * os.cpu_count():
        # Seen on a 2-core VM: now and then the kernel keeps both of TensorFlow's compute threads on one core for a
        # whole run (utilization ~1.0 or ~1.65 instead of ~1.93, throughput 233 or 390 instead of ~450 importance
        # samples/s, the same code and settings). Such a row measures the scheduler, not the code: rerun it.
        row["warning"] = f"our process used {utilization} of {os.cpu_count()} cores: a scheduler artefact, rerun"
    return row


def _twin_main():
    if not TWIN_PYTHON.value:
        raise app.UsageError("--twin needs --twin_python: the interpreter of a venv with torch (pip install torch).")
    for path, what in ((TWIN.value, "--twin"), (TWIN_PYTHON.value, "--twin_python")):
        if not os.path.isfile(path):
            raise app.UsageError(f"{what}={path} is not a file.")
    if TWIN_ROUNDS.value < 1:
        raise app.UsageError("--twin_rounds must be >= 1.")
    peaks = {dtype: matmul_peak_gflop_per_s(dtype) for dtype in dict.fromkeys(TWIN_PEAK_DTYPES.values())}
    print(json.dumps({"matmul_peak_gflop_per_s": peaks, "side": PEAK_MATMUL_SIDE, "threads": os.cpu_count()}))
    rows = []
    for round_index in range(TWIN_ROUNDS.value):
        for comparison in TWIN_COMPARISONS:
            rows.append(twin_ratio(*comparison, round_index=round_index, peaks=peaks))
            print(json.dumps(rows[-1]), flush=True)
    for row in twin_summaries(rows):
        print(json.dumps(row), flush=True)


def matmul_peak_gflop_per_s(dtype="float32", side=None, repeats=6) -> float:
    """The machine's matmul peak as TensorFlow reaches it: the best of `repeats` timed [n, n] @ [n, n] products
    (n = `side`, default `PEAK_MATMUL_SIDE`; one untimed product first), 2 n^3 / seconds / 1e9, in `dtype` (oneDNN's
    float32 or AVX512-BF16 kernels on an x86 CPU). The ceiling of training throughput: ~90% of the MNIST crVAE's
    float32 step time is matmuls and convolutions (gin/README.md, "float32 at the machine's peak")."""
    n = int(side or PEAK_MATMUL_SIDE)
    a = tf.random.stateless_uniform([n, n], seed=[1, 2], dtype=tf.float32)
    b = tf.random.stateless_uniform([n, n], seed=[3, 4], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(b, dtype)
    product = tf.function(lambda x, y: tf.reduce_sum(tf.cast(tf.matmul(x, y)[:1, :1], tf.float32)), autograph=False)
    float(product(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        float(product(a, b))
        best = min(best, time.perf_counter() - start)
    return round(2.0 * n**3 / best / 1e9, 1)


def _geometric_mean(values):
    return round(math.exp(sum(math.log(v) for v in values) / len(values)), 3) if values else None


def twin_summaries(rows):
    """One summary row per comparison over its rounds: the geometric mean of the ratios (`ratio_geomean`) of the rounds
    without a `warning` (scheduler artefacts are left out and counted), its range, and the geometric means of the rounds
    where the twin / our side ran first. On the 2-core VM the side that runs first in a pair was measured faster in
    bfloat16 (session 15, six rounds: the twin 182-196 img/s in the four it ran first, 176 in the two it ran second;
    ours 180-182 first, 169-179 second), so the mean is `order_balanced` only with as many rounds of each order, i.e.
    an even `--twin_rounds`. Training rows measured against a peak add each side's mean fraction of it."""
    summaries = []
    for name in dict.fromkeys(row["comparison"] for row in rows):
        used = [row for row in rows if row["comparison"] == name and "warning" not in row]
        ratios = [row["ratio"] for row in used]
        firsts = [row["first"] for row in used]
        summaries.append(
            {
                "comparison": name,
                "summary": True,
                "rounds": sum(row["comparison"] == name for row in rows),
                "rounds_used": len(used),
                "ratio_geomean": _geometric_mean(ratios),
                "ratio_min": min(ratios, default=None),
                "ratio_max": max(ratios, default=None),
                "ratio_geomean_twin_first": _geometric_mean([r for r, f in zip(ratios, firsts) if f == "twin"]),
                "ratio_geomean_ours_first": _geometric_mean([r for r, f in zip(ratios, firsts) if f == "ours"]),
                "order_balanced": firsts.count("twin") == firsts.count("ours"),
            }
        )
        for side in ("ours", "twin"):
            fractions = [row[f"{side}_fraction_of_peak"] for row in used if f"{side}_fraction_of_peak" in row]
            if fractions:
                summaries[-1][f"{side}_fraction_of_peak_mean"] = round(sum(fractions) / len(fractions), 3)
    return summaries


def scaling_device_kind(num_gpus: int, replicas: int, cores: int) -> str:
    """The devices of `--scaling`: 'GPU' when the machine has at least `replicas` GPUs, else the CPU split into
    logical devices ('logical CPU devices on N cores')."""
    return "GPU" if num_gpus >= replicas else f"logical CPU devices on {cores} cores"


def _configure_scaling_devices(replicas: int, side: str) -> dict:
    """Sets up this process's devices for one `side` ('one' or 'replicated') of `--scaling`, before TensorFlow
    initialises: with at least `replicas` GPUs, the first GPU or the first `replicas`; otherwise the GPUs are hidden
    (both sides run on the CPU) and the replicated side splits the CPU into `replicas` logical devices. Returns the
    row's device fields: device_kind, gpus_available, devices (this side's device names)."""
    gpus = tf.config.list_physical_devices("GPU")
    kind = scaling_device_kind(len(gpus), replicas, os.cpu_count())
    count = replicas if side == "replicated" else 1
    if kind != "GPU":
        try:
            if gpus:
                tf.config.set_visible_devices([], "GPU")
            if count > 1:
                cpu = tf.config.list_physical_devices("CPU")[0]
                tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError as error:  # TensorFlow already initialised: a defect of this module, not of the input
            raise RuntimeError(f"--scaling must set up its devices before TensorFlow's first op: {error}") from None
    prefix = "/gpu" if kind == "GPU" else "/cpu"
    return {"device_kind": kind, "gpus_available": len(gpus), "devices": [f"{prefix}:{i}" for i in range(count)]}


def bench_replicated(name, devices, steps, warmup, batch_size, gin_dir, bindings):
    """Training throughput of a variant under `MirroredStrategy` over `devices` at global batch `batch_size`, with
    the training loop's distribution code; the same timing as `bench_variant`."""
    gin.clear_config()
    runs.parse_gin([os.path.join(gin_dir, f"mnist_{name}.gin")], list(bindings), finalize=False)
    settings = builders.train_settings()
    strategy = distribution.make_strategy("mirrored", devices)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = builders.build_model(image_shape=(28, 28, 1), seed=0)
        optimizers, clips = builders.build_optimizers(model, steps_per_epoch=390)
        model.compile(optimizers=optimizers, clip_values=clips)
    per_replica = distribution.check_batch(strategy, batch_size, 4 if hasattr(model, "discriminator") else 1)
    synchronized = 0
    if settings.synchronized_batch_statistics:
        synchronized = distribution.synchronize_batch_statistics(model)
    diagnostics = settings.diagnostics  # the step the loop runs between logging points, as `bench_variant`
    fn = execution.step_between_logs(model, diagnostics)
    step = distribution.replicated_step(strategy, fn, per_replica, model.metrics)
    times, cpu_utilization = time_steps(step, _random_binary_batches(batch_size), warmup, steps)
    return {
        "model": name,
        "mode": "scaling_replicated",
        "replicas": strategy.num_replicas_in_sync,
        "batch_size": batch_size,
        "per_replica_batch_size": per_replica,
        "synchronized_layers": synchronized,
        "precision": model.dtype_policy.name,
        "diagnostics": diagnostics,
        **step_rates(batch_size, times),
        "steps": steps,
        "cpu_utilization": cpu_utilization,
        "threads": os.cpu_count(),
        "tf": tf.__version__,
        "keras": keras.__version__,
    }


def scaling_row(name, one, replicated, replicas):
    """The `--scaling` line of one variant from its two sides' JSON (one device; `replicas` devices)."""
    efficiency = float(replicated["img_per_s"]) / float(one["img_per_s"])
    row = {
        "model": name,
        "mode": "scaling",
        "replicas": replicas,
        "device_kind": replicated["device_kind"],
        "devices": replicated.get("devices"),
        "gpus_available": replicated.get("gpus_available"),
        "batch_size": replicated.get("batch_size"),
        "img_per_s_1": float(one["img_per_s"]),
        "img_per_s_R": float(replicated["img_per_s"]),
        "scaling_efficiency": round(efficiency, 3),
    }
    if replicated["device_kind"] == "GPU":  # logical CPU devices share the cores: R times the devices, not the work
        row["per_device_efficiency"] = round(efficiency / replicas, 3)
    row.update(
        {
            "cpu_utilization_1": one.get("cpu_utilization"),
            "cpu_utilization_R": replicated.get("cpu_utilization"),
            "precision": replicated.get("precision"),
            "steps": replicated.get("steps"),
            "threads": os.cpu_count(),
        }
    )
    starved = [
        f"the {side} side used {u} of {os.cpu_count()} cores"
        for side, u in (("one-device", row["cpu_utilization_1"]), ("replicated", row["cpu_utilization_R"]))
        if u is not None and u < FULL_UTILIZATION * os.cpu_count()
    ]
    if starved:  # as in --twin: a shared machine or the scheduler, not the code; the ratio is then unreliable
        row["warning"] = "; ".join(starved) + ": the machine was busy or the scheduler kept threads together, rerun"
    return row


def _scaling_main(models):
    replicas, batch = SCALING_REPLICAS.value, BATCH.value
    if replicas < 2:
        raise app.UsageError(f"--scaling_replicas={replicas} must be at least 2 (the one-device side is always run).")
    if batch < 1 or batch % replicas:
        raise app.UsageError(
            f"--batch_size={batch} must be a positive multiple of --scaling_replicas={replicas}: both sides train "
            "on the same global batch, split evenly over the replicas."
        )
    if STEPS.value < 1 or WARMUP.value < 0:
        raise app.UsageError("--steps must be positive and --warmup >= 0.")
    if SCALING_SIDE.value:  # a child process: one side, its devices set up before TensorFlow's first op
        devices = _configure_scaling_devices(replicas, SCALING_SIDE.value)
        for name in models:
            if SCALING_SIDE.value == "one":
                row = bench_variant(name, STEPS.value, WARMUP.value, batch, GIN_DIR.value, GIN_BINDINGS.value)
            else:
                row = bench_replicated(
                    name, devices["devices"], STEPS.value, WARMUP.value, batch, GIN_DIR.value, GIN_BINDINGS.value
                )
            print(json.dumps({**row, **devices}), flush=True)
        return
    for name in models:  # bad recipes or bindings fail here, with the binary's error line, before any child starts
        gin.clear_config()
        runs.parse_gin([os.path.join(GIN_DIR.value, f"mnist_{name}.gin")], list(GIN_BINDINGS.value), finalize=False)
    gin.clear_config()
    for name in models:
        command = [sys.executable, "-m", "crvae_tf.bench", "--scaling", f"--scaling_replicas={replicas}"]
        command += [f"--models={name}", f"--steps={STEPS.value}", f"--warmup={WARMUP.value}", f"--batch_size={batch}"]
        command += [f"--gin_dir={GIN_DIR.value}"] + [f"--gin_bindings={b}" for b in GIN_BINDINGS.value]
        sides = {
            side: _last_json(command + [f"--scaling_side={side}"], f"--scaling: the {side} side of {name}")
            for side in ("one", "replicated")
        }
        print(json.dumps(scaling_row(name, sides["one"], sides["replicated"], replicas)), flush=True)


def main(argv):
    del argv
    if TWIN.value:
        _twin_main()
        return
    unknown = sorted(set(MODELS.value) - set(VARIANTS))
    if unknown:
        raise app.UsageError(f"--models has unknown variants {unknown}; choose from {list(VARIANTS)}")
    modes = [name for name, flag in (("--nll", NLL), ("--serving", SERVING), ("--scaling", SCALING)) if flag.value]
    if len(modes) > 1:
        raise app.UsageError(f"{' and '.join(modes)} are separate modes; pass one.")
    if SCALING.value:
        _scaling_main(MODELS.value if flags.FLAGS["models"].present else ["crvae"])
        return
    if SERVING.value:
        _serving_main(MODELS.value if flags.FLAGS["models"].present else ["crvae"])
        return
    if NLL.value:
        _nll_main(MODELS.value if flags.FLAGS["models"].present else ["crvae"])
        return
    if RECIPES.value:
        for path in RECIPES.value:
            batch = BATCH.value if flags.FLAGS["batch_size"].present else None
            print(json.dumps(bench_recipe(path, STEPS.value, WARMUP.value, batch, GIN_BINDINGS.value)), flush=True)
        return
    for name in MODELS.value:
        result = bench_variant(name, STEPS.value, WARMUP.value, BATCH.value, GIN_DIR.value, GIN_BINDINGS.value)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    cli.run(main, flags.FLAGS, lambda: cli.LoggingOptions(VERBOSE.value, bool(flags.FLAGS["verbosity"].present)))
