r"""Plots learning curves of several runs side by side and prints their last and best values as JSON lines.

    python -m crvae_tf.curves --runs=VAE=runs/t1_vae,crVAE=runs/t1_crvae --metric=iwae_5 \
        --out=docs/table1_curves.png [--title="..."]

Each run's validation curve of `--metric` (TensorBoard `tb/validation`) is drawn against epochs and against
its cumulative training time (`train_seconds`, summed over every sitting of a resumed run). Needs matplotlib
(`pip install -e ".[plot]"`).
"""

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags

from crvae_tf.evaluation import learning_curves

RUNS = flags.DEFINE_list("runs", None, "NAME=MODEL_DIR pairs, comma-separated (the legend's order).")
METRIC = flags.DEFINE_string("metric", "iwae_5", "The validation scalar to plot (e.g. iwae_5, elbo, loss).")
OUT = flags.DEFINE_string("out", None, "The PNG to write.")
TITLE = flags.DEFINE_string("title", "", "A title for the figure (budget, hardware, precision).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}.")
    if not RUNS.value or not OUT.value:
        raise app.UsageError("--runs=NAME=MODEL_DIR,... and --out=FILE.png are required.")
    curves = {}
    for item in RUNS.value:
        name, sep, model_dir = item.partition("=")
        if not sep or not name or not model_dir:
            raise app.UsageError(f"--runs entry {item!r} must be NAME=MODEL_DIR.")
        try:
            curves[name] = learning_curves.learning_curve(model_dir, METRIC.value)
        except ValueError as error:
            raise app.UsageError(str(error)) from None
    label = f"validation {METRIC.value}" + (" (nats)" if METRIC.value in ("iwae_5", "elbo", "loss") else "")
    learning_curves.plot_curves(curves, OUT.value, label, TITLE.value)
    for name, curve in curves.items():
        best = int(curve["values"].argmax() if METRIC.value.startswith(("iwae", "elbo")) else curve["values"].argmin())
        print(
            json.dumps(
                {
                    "run": name,
                    "metric": METRIC.value,
                    "last_step": int(curve["steps"][-1]),
                    "last_epoch": round(float(curve["epochs"][-1]), 3),
                    "last_value": round(float(curve["values"][-1]), 3),
                    "best_step": int(curve["steps"][best]),
                    "best_value": round(float(curve["values"][best]), 3),
                    "train_hours": round(float(curve["train_seconds"][-1]) / 3600.0, 3),
                }
            ),
            flush=True,
        )
    print(json.dumps({"figure": os.path.abspath(OUT.value)}), flush=True)


if __name__ == "__main__":
    app.run(main)
