"""Learning curves of runs, read back from their TensorBoard events: a validation metric against epochs and
against the cumulative training time, and a figure comparing several runs. Gin-free.

    curve = learning_curve(model_dir, "iwae_5")   # steps, epochs, train_seconds, values (validation split)
    summarize({"crVAE": curve}, "iwae_5")        # last and best values per run
    plot_curves({"VAE": curve_a, "crVAE": curve_b}, "docs/curves.png", "validation IWAE-5 (nats)")

Epochs come from `run.json` (steps per epoch); the training time is the `train_seconds` scalar the loop logs
at every summary (it adds up over every sitting of a resumed run). Where an event file repeats a step (a run
resumed from an earlier checkpoint), the last value written wins.
"""

import glob
import io
import os

import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import runs


def read_scalars(event_dir: str, tag: str) -> dict:
    """{step: value} of one scalar tag in a TensorBoard event folder (later events win for a repeated step)."""
    values = {}
    for path in sorted(glob.glob(os.path.join(event_dir, "events.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[int(event.step)] = float(
                        tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
                    )
    return values


def learning_curve(model_dir: str, metric: str, split: str = "validation") -> dict:
    """The metric's curve of one run: numpy arrays `steps`, `epochs`, `train_seconds` (NaN where unknown) and
    `values`, sorted by step."""
    info = runs.read_run_info(model_dir)
    if info is None or "steps_per_epoch" not in info:
        raise ValueError(f"{model_dir} has no run.json with steps_per_epoch (train it with this version of crvae_tf).")
    values = read_scalars(os.path.join(model_dir, "tb", split), metric)
    if not values:
        raise ValueError(f"{model_dir}/tb/{split} has no {metric!r} scalar yet (it is written at each validation).")
    seconds = read_scalars(os.path.join(model_dir, "tb", "train"), "train_seconds")
    steps = np.array(sorted(values), np.int64)
    return {
        "steps": steps,
        "epochs": steps / float(info["steps_per_epoch"]),
        "train_seconds": np.array([seconds.get(int(s), np.nan) for s in steps], np.float64),
        "values": np.array([values[int(s)] for s in steps], np.float64),
    }


def plot_curves(curves: dict, path: str, ylabel: str, title: str = "") -> None:
    """Two panels, the metric against epochs and against training hours, one line per run; written as a PNG.

    Needs matplotlib (`pip install -e ".[plot]"`).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as error:
        raise ImportError('Plotting needs matplotlib: pip install -e ".[plot]"') from error
    figure, axes = pyplot.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for name, curve in curves.items():
        (line,) = axes[0].plot(curve["epochs"], curve["values"], marker=".", label=name)
        axes[1].plot(curve["train_seconds"] / 3600.0, curve["values"], marker=".", color=line.get_color())
    axes[0].set_xlabel("epoch")
    axes[1].set_xlabel("training time (hours)")
    axes[0].set_ylabel(ylabel)
    for axis in axes:
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    pyplot.close(figure)
    artifacts.atomic_write_bytes(path, buffer.getvalue())


def summarize(curves: dict, metric: str) -> list:
    """One dict per run: last step, epoch and value, best step and value (max for bounds, min otherwise), hours."""
    rows = []
    higher_is_better = metric.startswith(("iwae", "elbo"))
    for name, curve in curves.items():
        best = int(curve["values"].argmax() if higher_is_better else curve["values"].argmin())
        rows.append(
            {
                "run": name,
                "metric": metric,
                "last_step": int(curve["steps"][-1]),
                "last_epoch": round(float(curve["epochs"][-1]), 3),
                "last_value": round(float(curve["values"][-1]), 3),
                "best_step": int(curve["steps"][best]),
                "best_value": round(float(curve["values"][best]), 3),
                "train_hours": round(float(curve["train_seconds"][-1]) / 3600.0, 3),
            }
        )
    return rows
