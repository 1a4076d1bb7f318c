"""Semi-supervised classification accuracy (paper Sec. 4.5, Table 2): per-fold results and their mean and std.
Gin-free.

The protocol (Coates et al. 2011; CC-GAN, Denton et al. 2016): for each official STL-10 fold k (1,000 labeled
training images; `dataset.fold=k`) one run is trained; its checkpoint is SELECTED on the classification accuracy of
the 4,000 labeled training images outside the fold (the run's validation split; never the test set), and that
checkpoint's accuracy on the 8,000 test images is the fold's score. Table 2 reports the mean over the folds; the
standard deviation over folds is reported alongside (sample std, ddof = 1). This module scores one fold
(`python -m crvae_tf.evaluate --model_dir=FOLD_RUN --metrics=classification`); the report pools the folds
(`python -m crvae_tf.evaluate --report=RUNS`, `report_lib.render_table2`: mean and std over the folds of each model).

    accuracy(f, S) = (1/|S|) sum_{(x, y) in S} 1[argmax_k f_k(x) = y]
    stderr         = sqrt(accuracy (1 - accuracy) / |S|)                 (binomial, per fold)

f is the discriminator's class head on its trunk (`models.SemiSupervisedVAEGAN.class_logits`, evaluation mode:
no dropout). Images are the run's own splits (`data.stl10`: resized to the protocol's size, no crop, no flip).
Accuracies are fractions in [0, 1] in the JSON; the Table 2 line prints percentages.

Files (through `artifacts.atomic_write_text`, like the NLL results of `evaluation.results`):

    DIR/eval/classification-fold<k>-step<S>.json     the fold's result (S: the selected checkpoint's step)
"""

import json
import math
import os
import time
from typing import Iterable
from typing import Optional
from typing import Sequence

import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import runs
from crvae_tf.evaluation.results import EVAL_DIR

RESULT_PREFIX = "classification"
# Table 2 of the paper (mean test accuracy over the 10 folds, %; no spread given). Left: autoencoder + discriminator
# pipelines; right: other methods. Rows marked † in the paper are taken from the original papers.
PAPER_TABLE2 = {
    "Deterministic AE [32]": 73.81,  # †
    "Standard VAE": 74.91,
    "crVAE": 75.86,
    "Stacked What-Where AE [34]": 74.33,  # †
    "Exemplar CNN [35]": 75.40,  # †
    "Unsupervised Pre-train [36]": 70.40,  # †
}


class NotAClassifierError(ValueError):
    """The run's model has no class head (it is not a `semi_supervised_vae_gan` run)."""


def class_logits(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """float32 `[N, num_classes]` class logits of `images` (`[N, H, W, C]`, uint8 in [0, 255] or float in [0, 1]),
    in batches, evaluation mode (`model.class_logits(x, training=False)`)."""
    images = np.asarray(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    logits_fn = tf.function(lambda x: model.class_logits(x, training=False), reduce_retracing=True)
    out = [
        logits_fn(tf.constant(np.asarray(images[start : start + batch_size], np.float32) / scale)).numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(out, axis=0)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Top-1 accuracy of `logits` `[N, K]` against int `labels` `[N]` (module docstring): accuracy, its binomial
    standard error, the counts."""
    logits, labels = np.asarray(logits), np.asarray(labels, np.int64)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"logits {logits.shape} and labels {labels.shape} must be [N, K] and [N] with N > 0.")
    correct = int(np.sum(np.argmax(logits, axis=1) == labels))
    value = correct / len(labels)
    return {
        "accuracy": value,
        "accuracy_stderr": math.sqrt(value * (1.0 - value) / len(labels)),
        "num_correct": correct,
        "num_images": int(len(labels)),
    }


def _split(splits, name: str):
    labels = (splits.labels or {}).get(name)
    if labels is None or np.any(np.asarray(labels) < 0):
        raise ValueError(
            f"The run's {name} split has no class labels ({splits.name!r}); classification needs a labeled dataset "
            "(dataset.name='stl10')."
        )
    return splits.split(name), np.asarray(labels, np.int64)


def result_path(model_dir: str, fold, step: int) -> str:
    fold_text = "all" if fold is None else str(int(fold))
    return os.path.join(model_dir, EVAL_DIR, f"{RESULT_PREFIX}-fold{fold_text}-step{int(step)}.json")


def evaluate_run(
    model_dir: str,
    steps: Optional[Sequence[int]] = None,
    batch_size: int = 256,
    gin_bindings: Iterable[str] = (),
    write: bool = True,
) -> dict:
    """Selects a run's checkpoint on validation accuracy and scores it on the test split (module docstring).

    Args:
      model_dir: a `semi_supervised_vae_gan` run (`runs.load_run`); its fold (`dataset.fold`, from the training
        pool: `data.stl10.TrainingPool.fold`) is recorded in the result and its file name.
      steps: the checkpoint steps to compare (None: every kept checkpoint, `runs.kept_steps`).
      batch_size: images per forward pass.
      gin_bindings: applied after the run's config (e.g. its dataset.local_path on another machine).
      write: write `eval/classification-fold<k>-step<S>.json` atomically.

    Returns:
      dict: fold, selected `step`, `validation_accuracy`, `test_accuracy` (+ stderrs and counts), the validation
      accuracy of every compared checkpoint (`validation_by_step`), the dataset source, seconds, `path`.
    """
    start = time.time()
    steps = sorted(runs.kept_steps(model_dir) if steps is None else {int(s) for s in steps})
    if not steps:
        raise FileNotFoundError(
            f"{model_dir} has no checkpoint to evaluate; train it first (python -m crvae_tf.train)."
        )
    run = runs.load_run(model_dir, steps[-1], gin_bindings)
    if not hasattr(run.model, "class_logits"):
        raise NotAClassifierError(
            f"{model_dir} trained a {type(run.model).__name__}, which has no class head; classification needs "
            "model.family='semi_supervised_vae_gan' (gin/stl10_crvae_gan.gin)."
        )
    validation_images, validation_labels = _split(run.splits, "validation")
    test_images, test_labels = _split(run.splits, "test")
    fold = getattr(run.splits.train, "fold", None)
    step_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    checkpoint = tf.train.Checkpoint(model=run.model, step=step_variable)
    by_step = {}
    for step in steps:
        checkpoint.restore(runs.resolve_checkpoint(model_dir, step)).expect_partial()
        by_step[step] = accuracy(class_logits(run.model, validation_images, batch_size), validation_labels)
    # The highest validation accuracy; ties go to the earliest step.
    selected = max(steps, key=lambda s: (by_step[s]["num_correct"], -s))
    checkpoint.restore(runs.resolve_checkpoint(model_dir, selected)).expect_partial()
    test = accuracy(class_logits(run.model, test_images, batch_size), test_labels)
    result = {
        "metric": RESULT_PREFIX,
        "fold": fold,
        "step": int(selected),
        "split": "test",
        "selection": "highest validation accuracy over the kept checkpoints",
        "test_accuracy": test["accuracy"],
        "test_accuracy_stderr": test["accuracy_stderr"],
        "num_test": test["num_images"],
        "validation_accuracy": by_step[selected]["accuracy"],
        "num_validation": by_step[selected]["num_images"],
        "validation_by_step": {str(s): by_step[s]["accuracy"] for s in steps},
        "dataset": run.splits.source,
        "seconds": time.time() - start,
    }
    if write:
        path = result_path(model_dir, fold, selected)
        artifacts.atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True) + "\n")
        result["path"] = path
    return result
