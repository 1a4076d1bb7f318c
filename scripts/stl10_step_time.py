"""Step time of an STL-10 recipe at its real size on generated files in the official binary layout (STL-10 itself is
not on this machine): the recipe's model, optimizers, batch (pool + labeled) and input pipeline (crop, resize, flip);
`--warmup` untimed steps, then the median of `--steps` timed ones.

    .venv/bin/python scripts/stl10_step_time.py gin/stl10_crvae_gan.gin [--steps=5] [--warmup=2] [BINDING ...]

Prints one JSON line: recipe, batch sizes, median / min / max wall seconds per step, the median CPU seconds per step
(this process, all threads: less sensitive to other load on a shared machine), the load average at the end, and the
full schedule's wall time (median x train.max_steps).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import stl10_testing  # noqa: E402

from crvae_tf import builders  # noqa: E402
from crvae_tf import data  # noqa: E402
from crvae_tf import runs  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument("bindings", nargs="*")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as root:
        folder = stl10_testing.write_position_folder(
            os.path.join(root, "stl10_binary"), num_train=200, num_test=20, num_unlabeled=400, fold_size=100
        )
        runs.parse_gin([args.recipe], [f"dataset.local_path = '{folder}'", *args.bindings])
        settings = builders.train_settings()
        splits = builders.build_dataset(seed=settings.seed)
        model = builders.build_model(image_shape=splits.image_shape, seed=settings.seed)
        optimizers, clips = builders.build_optimizers(model, 1010)
        model.compile(optimizers=optimizers, clip_values=clips)
        step = tf.function(model.train_step, reduce_retracing=True)
        times, cpu_times, epoch = [], [], 0
        while len(times) < args.warmup + args.steps:
            batches = data.make_dataset(
                splits.train, batch_size=settings.batch_size, binarization="none", seed=0, training=True, epoch=epoch
            )
            for batch in batches:
                start, cpu_start = time.perf_counter(), time.process_time()
                logs = step(batch)
                float(logs["loss"])
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - cpu_start)
                if len(times) == args.warmup + args.steps:
                    break
            epoch += 1
        timed = times[args.warmup :]
        median = statistics.median(timed)
        print(
            json.dumps(
                {
                    "recipe": args.recipe,
                    "bindings": args.bindings,
                    "batch_size": settings.batch_size,
                    "labeled_batch_size": splits.train.labeled_batch_size,
                    "image_shape": list(splits.image_shape),
                    "seconds_per_step_median": median,
                    "seconds_per_step_min": min(timed),
                    "seconds_per_step_max": max(timed),
                    "cpu_seconds_per_step_median": statistics.median(cpu_times[args.warmup :]),
                    "timed_steps": len(timed),
                    "load_average_1min": os.getloadavg()[0],
                    "cpu_count": os.cpu_count(),
                    "max_steps": settings.max_steps,
                    "schedule_hours": median * settings.max_steps / 3600,
                    "finite_loss": bool(np.isfinite(float(logs["loss"]))),
                }
            )
        )


if __name__ == "__main__":
    main()
