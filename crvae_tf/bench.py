r"""Training-throughput benchmark: images/second of each MNIST variant, one JSON object per line.

    python -m crvae_tf.bench                       # every variant, batch 128
    python -m crvae_tf.bench --models=crvae,vae --steps=20 --batch_size=128

Each variant is built from its recipe (`gin/mnist_<model>.gin`, so the benchmark measures exactly what
the recipe trains: architecture, per-group optimizers, gradient clamp), then trained on random binary
28x28 batches held in memory. Timing rule (the same as ../shared/bench/torch_twin.py): every step is
timed with `perf_counter` after `--warmup` untimed steps; `img_per_s = batch_size / median(step time)`.

`flops_per_image` counts the multiply-accumulates of every conv, transposed conv, Dense and LSTM gate
matmul of one forward pass (elementwise ops, BN, activations and the loss are ignored), times 2 for
FLOPs and times 3 for forward + backward, the twin's convention.
"""

import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import gin  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from crvae_tf import builders  # noqa: E402
from crvae_tf import layers  # noqa: E402
from crvae_tf import train_lib  # noqa: E402

VARIANTS = ("vae", "cvae", "bcvae", "crvae_inference", "crvae_generation", "crvae")

MODELS = flags.DEFINE_list("models", list(VARIANTS), f"Variants to time, from {VARIANTS}.")
STEPS = flags.DEFINE_integer("steps", 20, "Timed training steps per variant.")
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, allocator warm-up).")
BATCH = flags.DEFINE_integer("batch_size", 128, "Images per step.")
GIN_DIR = flags.DEFINE_string("gin_dir", "gin", "Folder holding the mnist_*.gin recipes.")
GIN_BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Extra bindings applied after the recipe.")


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
    if isinstance(head, layers.FCHead):
        return 2 * feat * d + d * feat
    if isinstance(head, layers.ConvHead):
        return 2 * conv3(cf, head.latent_channels) + conv3(head.latent_channels, cf)
    loc = feat * d if head.loc_path == "dense" else conv3(cf, head.latent_channels)
    if isinstance(head, layers.BlockFCHead):
        return loc + feat * d // t + d * feat // t
    lstm = lambda i: sum(t * 4 * head.hidden_units * ((i if n == 0 else head.hidden_units) + head.hidden_units)
                         for n in range(head.num_layers))
    inference = lstm(feat // t) + t * head.hidden_units * d // t if head.recurrent_inference else feat * d // t
    generation = lstm(d // t) + t * head.hidden_units * d // t if head.recurrent_generation else d * d // t
    return loc + inference + generation + conv3(head.latent_channels, cf)


def bench_variant(name, steps, warmup, batch_size, gin_dir, bindings):
    gin.clear_config()
    train_lib.parse_gin([os.path.join(gin_dir, f"mnist_{name}.gin")], list(bindings), finalize=False)
    keras.utils.set_random_seed(0)
    model = builders.build_model(image_shape=(28, 28, 1), seed=0)
    optimizers, clips = builders.build_optimizers(model, steps_per_epoch=390)
    model.compile(optimizers=optimizers, clip_values=clips)
    step = tf.function(model.train_step, reduce_retracing=True)
    rng = np.random.default_rng(0)
    batches = [tf.constant((rng.random((batch_size, 28, 28, 1)) < 0.13).astype(np.float32)) for _ in range(4)]
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        float(step(batches[i % len(batches)])["loss"])  # forces completion of the step
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    flops = 3 * 2 * forward_macs(model)
    params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    return {"model": name, "batch_size": batch_size, "precision": model.dtype_policy.name,
            "img_per_s": round(batch_size / median, 1),
            "step_s_median": round(median, 4), "step_s_min": round(min(times), 4),
            "flops_per_image": flops, "gflop_per_s": round(flops * batch_size / median / 1e9, 1),
            "params": params, "steps": steps, "threads": os.cpu_count(),
            "tf": tf.__version__, "keras": keras.__version__}


def main(argv):
    del argv
    unknown = sorted(set(MODELS.value) - set(VARIANTS))
    if unknown:
        raise app.UsageError(f"--models has unknown variants {unknown}; choose from {list(VARIANTS)}")
    for name in MODELS.value:
        result = bench_variant(name, STEPS.value, WARMUP.value, BATCH.value, GIN_DIR.value, GIN_BINDINGS.value)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
