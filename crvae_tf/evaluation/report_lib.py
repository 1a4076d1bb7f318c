"""The reproduction report: every run's results and budget, collected from its directory, and the paper-vs-ours
tables as Markdown (`python -m crvae_tf.evaluate --report=RUNS`, `write`). Gin-free and flag-free. Collection
reads files and never writes into a run; rendering is pure functions over the collected dicts.

    collected = [collect_run(name, model_dir) for name, model_dir in find_runs("runs/")]
    markdown = render_report(collected)                    # every section that has results
    readme = replace_block(readme, "table1", render_table1(collected, table1_pairs=True))
    summary = write("runs/", out="docs/results.md", markdown_files=["gin/README.md"])   # what the binary does

What one run gives (`collect_run`):
  run.json          family, schedule (max_steps, steps_per_epoch, batch_size), versions; runs started since the
                    report exists also `started_utc`, `git_commit` and `hardware` (`crvae_tf.runs.write_run_info`)
  progress.json     the step and the cumulative training seconds at the last checkpoint
  operative_config.gin, config.gin   the recipe (inferred, `infer_recipe`), model.precision, train.seed
  tb/validation     the validation IWAE-5 curve (its points are printed in Table 1)
  eval/*.json       every result file, and explore/disentangle-*.json (`RESULT_GLOBS`), recognised by its keys
                    (`result_kind`):
                      likelihood       'nll' (`crvae_tf.evaluate`; per-image arrays in the .npz of the same name)
                      sample_quality   'fid' / 'kid_mean' / 'inception_score_mean' or their 'proxy_' forms
                      classification   'test_accuracy' or 'accuracy' with 'fold' (one fold: `evaluation.classification`
                                       writes eval/classification-fold<k>-step<S>.json, one run per fold), or
                                       'fold_accuracies' (a list); Table 2 pools the folds of each model
                      disentanglement  a key of DISENTANGLEMENT_KEYS ('mig', 'sap', 'dci_disentanglement', ...), at
                                       the top level or under 'metrics' (`evaluation.disentanglement`)
                      other            anything else: listed with its numeric keys
                    A file that is not a JSON object, or a known kind without its numbers, is skipped and named in the
                    report's "Skipped files" section with the reason (never a crash).

Paired differences (Table 1): where two rows' headline NLLs were estimated on the same images (same `data_sha256`
and count) and both per-image .npz files exist, d_i = NLL_a(x_i) - NLL_b(x_i) = log p_b(x_i) - log p_a(x_i) per
image i (nats), reported as mean_i d_i +- std_i(d_i, ddof=1) / sqrt(N), and the number of images where a is lower.
"""

import contextlib
import datetime
import glob
import io
import json
import math
import os
import re
from typing import Dict
from typing import List
from typing import Optional
from typing import Sequence
from typing import Tuple

from absl import logging
import numpy as np

from crvae_tf import artifacts
from crvae_tf import runs
from crvae_tf.evaluation import classification
from crvae_tf.evaluation import learning_curves
from crvae_tf.evaluation.results import EVAL_DIR

# Table 1 of the paper (MNIST test NLL, nats, K = 10,000 importance samples per image): recipe -> (row, NLL). The one
# home of these numbers (the paper's Table 1 and gin/README.md's recipe table agree).
PAPER_TABLE1 = {
    "mnist_vae": ("standard VAE", 82.04),
    "mnist_cvae": ("cVAE", 83.12),
    "mnist_bcvae": ("bcVAE", 82.17),
    "mnist_crvae_inference": ("crVAE, recurrency at inference", 81.86),
    "mnist_crvae_generation": ("crVAE, recurrency at generation", 81.71),
    "mnist_crvae": ("crVAE, recurrency at both", 80.84),
    "mnist_crvae_iwae40": ("crVAE, both, trained as IWAE (k=40)", 80.02),
}
# Table 2 of the paper (STL-10 test accuracy, %, mean over the 10 folds of 1,000 labels): model kind -> (row,
# accuracy); the numbers have one home, `classification.PAPER_TABLE2`.
PAPER_TABLE2 = {
    kind: (row, classification.PAPER_TABLE2[row]) for kind, row in (("vae_gan", "Standard VAE"), ("crvae_gan", "crVAE"))
}
# Paired NLL differences printed under Table 1: (a, b) means a minus b.
TABLE1_PAIRS = (
    ("mnist_crvae", "mnist_vae"),
    ("mnist_cvae", "mnist_vae"),
    ("mnist_bcvae", "mnist_vae"),
    ("mnist_crvae_inference", "mnist_vae"),
    ("mnist_crvae_generation", "mnist_vae"),
    ("mnist_crvae", "mnist_cvae"),
    ("mnist_crvae", "mnist_bcvae"),
    ("mnist_crvae", "mnist_crvae_inference"),
    ("mnist_crvae", "mnist_crvae_generation"),
    ("mnist_crvae_generation", "mnist_crvae_inference"),
    ("mnist_crvae_iwae40", "mnist_crvae"),
)
SAMPLE_QUALITY_KEYS = ("fid", "kid_mean", "inception_score_mean")
DISENTANGLEMENT_KEYS = (
    "mig",
    "sap",
    "dci_disentanglement",
    "dci_completeness",
    "dci_informativeness",
    "factor_vae",
    "factor_vae_accuracy",
    "beta_vae",
    "beta_vae_accuracy",
    "disentanglement",
)
KINDS = ("likelihood", "sample_quality", "classification", "disentanglement", "other")
NOT_RECORDED = "not recorded"
MINUS = "\u2212"


class ReportError(ValueError):
    """A runs folder or a Markdown file the report cannot use (the message says what to fix)."""


# ----------------------------------------------------------------------------------------------------- collection


def is_run_dir(path: str) -> bool:
    """A folder a trainer or an evaluation wrote into: it has run.json, progress.json or an eval/ folder."""
    return os.path.isdir(path) and any(
        os.path.exists(os.path.join(path, name)) for name in (runs.RUN_FILE, runs.PROGRESS_FILE, EVAL_DIR)
    )


def find_runs(spec: str) -> List[Tuple[str, str]]:
    """(name, model_dir) of the runs named by `spec`: a folder holding run directories (each subfolder that
    `is_run_dir`, named by the subfolder; or the folder itself if it is one), or a comma list of NAME=DIR."""
    spec = spec.strip()
    if "=" in spec:
        found = []
        for item in spec.split(","):
            name, _, model_dir = item.strip().partition("=")
            if not name or not model_dir:
                raise ReportError(f"--report entry {item!r} must be NAME=DIR (or give one folder of runs).")
            if not os.path.isdir(model_dir):
                raise FileNotFoundError(f"--report: {model_dir} (run {name!r}) is not a directory.")
            found.append((name, model_dir))
        return found
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"--report={spec} is not a directory (paths are relative to {os.getcwd()}).")
    if is_run_dir(spec):
        return [(os.path.basename(os.path.normpath(spec)), spec)]
    found = [
        (name, os.path.join(spec, name))
        for name in sorted(os.listdir(spec))
        if not name.startswith(".") and is_run_dir(os.path.join(spec, name))
    ]
    if not found:
        raise ReportError(
            f"--report={spec} holds no run directory (a folder with run.json, progress.json or eval/); "
            "give the folder that holds the runs, or NAME=DIR pairs."
        )
    return found


def _plain(value):
    """A config value as plain Python: references and macros as their text."""
    if isinstance(value, (bool, int, float, str, type(None))):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return str(value)


def read_config(model_dir: str, skipped: list) -> dict:
    """'selector.parameter' -> value of the run's operative config, overlaid with its config.gin (its recipe and
    bindings); {} when neither exists. A file gin cannot parse is added to `skipped`."""
    bindings = {}
    for name in ("operative_config.gin", runs.CONFIG_FILE):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            continue
        try:
            with open(path) as f:
                bindings.update({k: _plain(v) for k, v in runs.config_bindings(f.read()).items()})
        except Exception as error:  # a damaged or foreign file: report it, keep going
            skipped.append((path, f"not a readable gin config ({type(error).__name__}: {error})"))
    return bindings


def infer_recipe(bindings: dict, family: Optional[str] = None) -> Optional[str]:
    """The MNIST recipe (a key of PAPER_TABLE1) a run's config amounts to, or None for any other run.

    dataset 'mnist' + latent_head.kind: 'fc' -> mnist_vae, 'conv' -> mnist_cvae, 'block_fc' -> mnist_bcvae,
    'channel_recurrent' -> mnist_crvae_inference / _generation / mnist_crvae by its recurrent_* switches (unset: on),
    and mnist_crvae_iwae40 when both are on and model.num_importance_samples > 1.
    """
    if bindings.get("dataset.name") != "mnist" or (family not in (None, "VAE")):
        return None
    if str(bindings.get("model.family", "vae")).strip("'@") not in ("vae", "None"):
        return None
    kind = bindings.get("latent_head.kind")
    simple = {"fc": "mnist_vae", "conv": "mnist_cvae", "block_fc": "mnist_bcvae"}
    if kind in simple:
        return simple[kind]
    if kind != "channel_recurrent":
        return None
    inference = bindings.get("latent_head.recurrent_inference")
    generation = bindings.get("latent_head.recurrent_generation")
    inference = True if inference is None else bool(inference)
    generation = True if generation is None else bool(generation)
    if inference and generation:
        samples = bindings.get("model.num_importance_samples") or 1
        return "mnist_crvae_iwae40" if int(samples) > 1 else "mnist_crvae"
    if inference:
        return "mnist_crvae_inference"
    return "mnist_crvae_generation" if generation else None


def model_kind(bindings: dict, family: Optional[str]) -> Optional[str]:
    """'crvae_gan' / 'vae_gan' for the adversarial family (Table 2's rows), by the latent head; else None."""
    adversarial = family == "VAEGAN" or "vae_gan" in str(bindings.get("model.family", ""))
    if not adversarial:
        return None
    return "crvae_gan" if bindings.get("latent_head.kind") == "channel_recurrent" else "vae_gan"


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def result_kind(result: dict) -> str:
    """The kind of an eval JSON, from its keys (module docstring)."""
    if "nll" in result:
        return "likelihood"
    if any(key in result or f"proxy_{key}" in result for key in SAMPLE_QUALITY_KEYS):
        return "sample_quality"
    if "fold_accuracies" in result or (_accuracy_key(result) and "fold" in result):
        return "classification"
    if disentanglement_values(result):
        return "disentanglement"
    return "other"


def _accuracy_key(result: dict) -> Optional[str]:
    """The key of a one-fold classification result's accuracy: 'accuracy' or 'test_accuracy'."""
    return next((key for key in ("accuracy", "test_accuracy") if key in result), None)


def disentanglement_values(result: dict) -> List[Tuple[str, float]]:
    """(name, value) of the DISENTANGLEMENT_KEYS in a result, at its top level or under 'metrics' (the layout of
    `evaluation.disentanglement.evaluate_groups`)."""
    nested = result.get("metrics") if isinstance(result.get("metrics"), dict) else {}
    return [
        (key, source[key])
        for source in (result, nested)
        for key in DISENTANGLEMENT_KEYS
        if key in source and (_is_number(source[key]) or source[key] is None)
    ]


def _check_result(kind: str, result: dict) -> Optional[str]:
    """Why a recognised result cannot be reported (its number missing or not a number), or None."""
    if kind == "likelihood" and not _is_number(result.get("nll")):
        return f"'nll' is {result.get('nll')!r}, not a number"
    if kind == "classification":
        if "fold_accuracies" in result:
            folds = result["fold_accuracies"]
            if not isinstance(folds, list) or not folds or not all(_is_number(a) for a in folds):
                return "'fold_accuracies' is not a non-empty list of numbers"
        elif not _is_number(result.get(_accuracy_key(result))):
            key = _accuracy_key(result)
            return f"'{key}' is {result.get(key)!r}, not a number"
    if kind == "sample_quality":
        values = [result.get(k, result.get(f"proxy_{k}")) for k in SAMPLE_QUALITY_KEYS]
        if not any(_is_number(v) for v in values):
            return "no FID / KID / IS value is a number"
    return None


# Where a run's results lie, relative to the run: every eval/*.json, and the disentanglement summaries that
# `python -m crvae_tf.explore --mode=disentangle` writes (`evaluation.disentanglement_lib`).
RESULT_GLOBS = (os.path.join(EVAL_DIR, "*.json"), os.path.join("explore", "disentangle-*.json"))


def read_results(model_dir: str, skipped: list) -> Dict[str, list]:
    """kind -> the run's results of that kind (RESULT_GLOBS; each with '_path' and '_file', its path relative to the
    run, added), sorted by file name. Files that cannot be used are appended to `skipped` as (path, reason)."""
    found = {kind: [] for kind in KINDS}
    paths = [path for pattern in RESULT_GLOBS for path in sorted(glob.glob(os.path.join(model_dir, pattern)))]
    for path in paths:
        if os.path.basename(path).startswith("."):
            continue
        try:
            with open(path) as f:
                result = json.load(f)
        except (OSError, UnicodeDecodeError, ValueError) as error:
            skipped.append((path, f"not valid JSON ({error})"))
            continue
        if not isinstance(result, dict):
            skipped.append((path, f"a JSON {type(result).__name__}, not an object"))
            continue
        kind = result_kind(result)
        problem = _check_result(kind, result)
        if problem:
            skipped.append((path, f"a {kind} result whose {problem}"))
            continue
        found[kind].append({**result, "_path": path, "_file": os.path.relpath(path, model_dir)})
    return found


def _utc_of_mtime(path: str) -> Optional[str]:
    try:
        stamp = os.path.getmtime(path)
    except OSError:
        return None
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _quiet_deprecation():
    try:
        from tensorflow.python.util import deprecation

        return deprecation.silence()
    except (ImportError, AttributeError):  # another TensorFlow layout: the warning is only noise
        return contextlib.nullcontext()


def read_curve(model_dir: str, metric: str, skipped: list) -> Optional[dict]:
    """{'steps', 'values', 'train_seconds'} (lists, by step) of a validation scalar, or None without one."""
    folder = os.path.join(model_dir, "tb", "validation")
    if not os.path.isdir(folder):
        return None
    try:
        with _quiet_deprecation():  # summary_iterator's deprecation warning says nothing to a report's reader
            values = learning_curves.read_scalars(folder, metric)
            seconds = learning_curves.read_scalars(os.path.join(model_dir, "tb", "train"), "train_seconds")
    except Exception as error:  # a damaged event file (a crash mid-write): report it, keep going
        skipped.append((folder, f"unreadable TensorBoard events ({type(error).__name__}: {error})"))
        return None
    if not values:
        return None
    steps = sorted(values)
    return {
        "steps": steps,
        "values": [values[s] for s in steps],
        "train_seconds": [seconds.get(s, float("nan")) for s in steps],
    }


def _read_json(path: str, skipped: list):
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        skipped.append((path, f"not valid JSON ({error})"))
        return None
    if not isinstance(value, dict):
        skipped.append((path, f"a JSON {type(value).__name__}, not an object"))
        return None
    return value


def collect_run(name: str, model_dir: str, metric: str = "iwae_5") -> dict:
    """Everything the report says about one run (module docstring); never raises for a damaged file."""
    skipped = []
    info = _read_json(os.path.join(model_dir, runs.RUN_FILE), skipped)
    progress = _read_json(os.path.join(model_dir, runs.PROGRESS_FILE), skipped) or {}
    bindings = read_config(model_dir, skipped)
    family = (info or {}).get("family")
    try:
        trainer = runs.trainer_of(model_dir)
    except Exception:  # an unreadable lock file says nothing either way
        trainer = None
    return {
        "name": name,
        "model_dir": model_dir,
        "info": info,
        "progress": progress,
        "last_checkpoint_utc": _utc_of_mtime(os.path.join(model_dir, runs.PROGRESS_FILE)),
        "training_now": trainer is not None,
        "bindings": bindings,
        "recipe": infer_recipe(bindings, family),
        "model_kind": model_kind(bindings, family),
        "results": read_results(model_dir, skipped),
        "curve": read_curve(model_dir, metric, skipped),
        "curve_metric": metric,
        "skipped": skipped,
    }


# ------------------------------------------------------------------------------------------------- computations


def headline_nll(run: dict) -> Optional[dict]:
    """The run's Table 1 number: the test-split likelihood result on the most images (the standard error shrinks
    with N), then with the most importance samples, then of the latest step; None without one."""
    tests = [r for r in run["results"]["likelihood"] if r.get("split", "test") == "test"]
    if not tests:
        return None
    return max(
        tests, key=lambda r: (r.get("num_images") or 0, r.get("num_importance_samples") or 0, r.get("step") or 0)
    )


def per_image_log_likelihood(result: dict) -> Optional[np.ndarray]:
    """float64 `[N]` log p(x_i) of a likelihood result, from the .npz of the same name beside its JSON (else the
    path it records); None if absent or unreadable."""
    candidates = [os.path.splitext(result["_path"])[0] + ".npz"]
    if result.get("per_image_path"):
        candidates.append(result["per_image_path"])
    for path in candidates:
        if not os.path.isfile(path):
            continue
        try:
            with np.load(path, allow_pickle=False) as saved:
                return np.asarray(saved["log_likelihood"], np.float64)
        except Exception as error:  # damaged: no paired number from it
            logging.warning("Skipping per-image file %s (%s).", path, error)
    return None


def paired_difference(log_likelihood_a, log_likelihood_b) -> dict:
    """Per-image NLL differences of a minus b over the same N images (module docstring).

    Args:
      log_likelihood_a, log_likelihood_b: `[N]` estimates of log p(x_i) (nats) of two models on the same images.

    Returns:
      {'mean': mean_i d_i, 'stderr': std(d, ddof=1) / sqrt(N) (None for N = 1), 'a_lower': #{i: d_i < 0},
       'num_images': N} with d_i = -log p_a(x_i) + log p_b(x_i).
    """
    a = np.asarray(log_likelihood_a, np.float64)
    b = np.asarray(log_likelihood_b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired images differ: shapes {a.shape} and {b.shape}")
    d = b - a
    n = len(d)
    return {
        "mean": float(np.mean(d)),
        "stderr": float(np.std(d, ddof=1) / math.sqrt(n)) if n > 1 else None,
        "a_lower": int(np.sum(d < 0)),
        "num_images": n,
    }


def table1_runs(collected: Sequence[dict]) -> Dict[str, List[dict]]:
    """PAPER_TABLE1 recipe -> the runs of that recipe (in the given order)."""
    rows = {recipe: [] for recipe in PAPER_TABLE1}
    for run in collected:
        if run["recipe"] in rows:
            rows[run["recipe"]].append(run)
    return rows


def table1_pairs(collected: Sequence[dict], pairs=TABLE1_PAIRS) -> List[dict]:
    """The paired differences of `pairs` (recipe a minus recipe b) whose headline NLLs share their images; the first
    run of each recipe."""
    by_recipe = {recipe: runs_[0] for recipe, runs_ in table1_runs(collected).items() if runs_}
    out = []
    for recipe_a, recipe_b in pairs:
        if recipe_a not in by_recipe or recipe_b not in by_recipe:
            continue
        run_a, run_b = by_recipe[recipe_a], by_recipe[recipe_b]
        result_a, result_b = headline_nll(run_a), headline_nll(run_b)
        if result_a is None or result_b is None:
            continue
        if result_a.get("data_sha256") != result_b.get("data_sha256") or result_a.get("data_sha256") is None:
            continue
        ll_a, ll_b = per_image_log_likelihood(result_a), per_image_log_likelihood(result_b)
        if ll_a is None or ll_b is None or ll_a.shape != ll_b.shape:
            continue
        out.append(
            {
                "a": run_a["name"],
                "b": run_b["name"],
                "recipe_a": recipe_a,
                "recipe_b": recipe_b,
                "k_a": result_a.get("num_importance_samples"),
                "k_b": result_b.get("num_importance_samples"),
                **paired_difference(ll_a, ll_b),
            }
        )
    return out


def fold_accuracies(run: dict) -> List[Tuple[str, float]]:
    """(fold label, accuracy) of a run's classification results: fold lists, and per-fold files (the latest step of
    each fold: `evaluation.classification` writes eval/classification-fold<k>-step<S>.json, one run per fold)."""
    out, latest = [], {}
    for result in run["results"]["classification"]:
        if "fold_accuracies" in result:
            name = os.path.basename(result["_path"])
            out.extend((f"{name}[{i}]", float(a)) for i, a in enumerate(result["fold_accuracies"]))
            continue
        fold = str(result.get("fold"))
        if fold not in latest or (result.get("step") or 0) >= (latest[fold].get("step") or 0):
            latest[fold] = result
    out.extend((fold, float(result[_accuracy_key(result)])) for fold, result in sorted(latest.items()))
    return out


# ----------------------------------------------------------------------------------------------------- rendering


def fmt(value, digits: int = 2) -> str:
    """A number for a table: thousands separators, a typographic minus, '–' for None / NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        text = f"{int(value):,}"
    else:
        text = f"{float(value):,.{digits}f}"
    return text.replace("-", MINUS)


def fmt_duration(seconds) -> str:
    if seconds is None or not _is_number(seconds):
        return NOT_RECORDED
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _epochs(run: dict, step) -> Optional[float]:
    per_epoch = (run["info"] or {}).get("steps_per_epoch")
    return step / per_epoch if per_epoch and step is not None else None


def precision_text(run: dict) -> str:
    return str(run["bindings"].get("model.precision") or NOT_RECORDED)


def commit_text(run: dict) -> str:
    commit = (run["info"] or {}).get("git_commit")
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "") if commit else NOT_RECORDED


def hardware_text(run: dict) -> str:
    hardware = (run["info"] or {}).get("hardware")
    if not hardware:
        return NOT_RECORDED
    gpus = hardware.get("gpus") or []
    devices = f"{len(gpus)} GPU" + ("s" if len(gpus) != 1 else "") if gpus else "no GPU"
    return f"{hardware.get('cpu_count', '?')} CPU cores ({hardware.get('machine', '?')}), {devices}"


def trained_text(run: dict) -> str:
    step = run["progress"].get("step")
    if step is None:
        return "no checkpoint yet" + (" (training now)" if run["training_now"] else "")
    max_steps = (run["info"] or {}).get("max_steps")
    epochs = _epochs(run, step)
    text = f"{fmt(step)}" + (f" of {fmt(max_steps)}" if max_steps else "") + " steps"
    if epochs is not None:
        text += f" ({epochs:.2f} epochs)"
    text += f", {fmt_duration(run['progress'].get('train_seconds'))} of training"
    if run["training_now"]:
        text += " (training now)"
    return text


def curve_text(run: dict) -> str:
    """'v (step), ..., **best (step, best)**' of the validation curve; bounds: higher is better."""
    curve = run["curve"]
    if not curve:
        return "–"
    values = curve["values"]
    best = int(np.argmax(values)) if run["curve_metric"].startswith(("iwae", "elbo")) else int(np.argmin(values))
    parts = []
    for i, (step, value) in enumerate(zip(curve["steps"], values)):
        parts.append(f"**{fmt(value)} ({fmt(step)}, best)**" if i == best else f"{fmt(value)} ({fmt(step)})")
    images = run["bindings"].get("train.num_validation_images")
    return (f"on {fmt(images)} images: " if _is_number(images) else "") + ", ".join(parts)


def metric_label(metric: str) -> str:
    return {"iwae_5": "IWAE-5", "elbo": "ELBO"}.get(metric, metric)


def nll_text(result: Optional[dict]) -> str:
    if result is None:
        return "–"
    stderr = result.get("nll_stderr")
    return f"**{fmt(result['nll'])}**" + (f" ± {fmt(stderr)}" if _is_number(stderr) else "")


def estimate_text(result: Optional[dict]) -> str:
    if result is None:
        return "–"
    n, total = result.get("num_images"), result.get("num_images_in_split")
    images = f"{fmt(n)}" + (f" of {fmt(total)}" if total and total != n else "") + " images"
    parts = [f"K = {fmt(result.get('num_importance_samples'))}", images, f"step {fmt(result.get('step'))}"]
    if result.get("checkpoint"):
        parts[-1] += f" ({result['checkpoint']})"
    parts.append(f"estimated in {result.get('precision', NOT_RECORDED)}")
    if _is_number(result.get("elbo")):
        parts.append(f"ELBO {fmt(result['elbo'])}")
    if _is_number(result.get("iwae_5")):
        parts.append(f"IWAE-5 {fmt(result['iwae_5'])}")
    if result.get("finished_utc"):
        parts.append(f"finished {result['finished_utc'][:16].replace('T', ' ')} UTC")
    return "; ".join(parts)


def render_table1(collected: Sequence[dict], pairs: bool = True, missing_rows: bool = True) -> str:
    """Table 1 (paper vs ours), one line per run of a PAPER_TABLE1 recipe, and the paired differences."""
    header = [
        "paper row (paper NLL)",
        "run",
        "trained (steps, epochs, training time)",
        f"validation {metric_label(collected[0]['curve_metric'] if collected else 'iwae_5')} by step (best in bold)",
        "our test NLL ± s.e.",
        "estimate (K, images, checkpoint step, precision, bounds on the same images)",
        "training precision",
        "commit; started; last checkpoint",
    ]
    rows = []
    for recipe, runs_ in table1_runs(collected).items():
        label, paper = PAPER_TABLE1[recipe]
        if not runs_:
            if missing_rows:
                rows.append([f"{label} ({fmt(paper)})", f"`{recipe}.gin`: not run", "–", "–", "–", "–", "–", "–"])
            continue
        for run in runs_:
            result = headline_nll(run)
            started = (run["info"] or {}).get("started_utc") or NOT_RECORDED
            last = run["last_checkpoint_utc"] or "–"
            rows.append(
                [
                    f"{label} ({fmt(paper)})",
                    f"{run['name']} (`{recipe}.gin`)",
                    trained_text(run),
                    curve_text(run),
                    nll_text(result),
                    estimate_text(result),
                    precision_text(run),
                    f"{commit_text(run)}; {started}; {last}",
                ]
            )
    text = markdown_table(header, rows)
    text += (
        "\n\n(± is the standard error over the images. The paper's NLLs are K = 10,000 on all 10,000 test images "
        "after its full schedule. Training time: the training loop's cumulative wall time (progress.json), pauses "
        "and shared cores included.)"
    )
    if pairs:
        paired = table1_pairs(collected)
        if paired:
            text += "\n\n" + render_pairs(paired)
    return text


def render_pairs(paired: Sequence[dict]) -> str:
    rows = [
        [
            f"{p['a']} − {p['b']}",
            f"{fmt(p['mean'])} ± {fmt(p['stderr'])}",
            f"{fmt(p['a_lower'])} of {fmt(p['num_images'])}",
            f"{fmt(p['k_a'])} / {fmt(p['k_b'])}",
        ]
        for p in paired
    ]
    return (
        "Paired differences of the test NLL over the same images (per-image a − b; ± the standard error of the "
        "per-image differences):\n\n"
        + markdown_table(["a − b", "mean NLL difference (nats)", "images where a is lower", "K (a / b)"], rows)
    )


def render_likelihoods(collected: Sequence[dict]) -> Optional[str]:
    """Every likelihood result of every run (Table 1 shows each run's headline one), with its cost."""
    rows = []
    for run in collected:
        headline = headline_nll(run)
        for result in run["results"]["likelihood"]:
            rows.append(
                [
                    run["name"],
                    result["_file"] + (" (Table 1)" if result is headline else ""),
                    result.get("split", "–"),
                    fmt(result.get("step")),
                    fmt(result.get("num_importance_samples")),
                    fmt(result.get("num_images")),
                    nll_text(result).replace("**", ""),
                    fmt(result.get("elbo")),
                    fmt(result.get("iwae_5")),
                    result.get("precision", NOT_RECORDED),
                    fmt_duration(result.get("estimation_s")),
                    (result.get("finished_utc") or NOT_RECORDED)[:16].replace("T", " "),
                ]
            )
    if not rows:
        return None
    header = ["run", "file", "split", "step", "K", "images", "NLL ± s.e.", "ELBO", "IWAE-5", "precision"]
    return markdown_table(header + ["estimation time", "finished (UTC)"], rows)


def render_runs(collected: Sequence[dict]) -> str:
    """Every run's budget and provenance."""
    rows = []
    for run in collected:
        info = run["info"] or {}
        versions = info.get("versions") or {}
        rows.append(
            [
                run["name"],
                f"`{run['model_dir']}`",
                info.get("family", NOT_RECORDED),
                f"`{run['recipe']}.gin`" if run["recipe"] else (run["model_kind"] or "–"),
                trained_text(run),
                fmt(info.get("batch_size")),
                precision_text(run),
                fmt(run["bindings"].get("train.seed")),
                hardware_text(run),
                commit_text(run),
                info.get("started_utc") or NOT_RECORDED,
                run["last_checkpoint_utc"] or "–",
                ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) or NOT_RECORDED,
            ]
        )
    return markdown_table(
        [
            "run",
            "directory",
            "family",
            "recipe",
            "trained",
            "batch",
            "precision",
            "seed",
            "hardware",
            "commit",
            "started",
            "last checkpoint (file time)",
            "versions",
        ],
        rows,
    )


def render_table2(collected: Sequence[dict]) -> Optional[str]:
    """STL-10 test accuracy, mean ± std (ddof 1) over the folds of every run of a model (crVAE-GAN / VAE-GAN: the
    protocol trains one run per fold), against the paper's Table 2; None without classification results.

        mean = (1/F) sum_k a_k,   std = sqrt( sum_k (a_k - mean)^2 / (F - 1) )   (F folds of a model; '–' for F = 1)

    Raises:
      ReportError: one fold of a model in two runs (it would count twice); pass each fold's run once.
    """
    groups, owners = {}, {}
    for run in collected:
        for fold, accuracy in fold_accuracies(run):
            kind = run["model_kind"]
            # A per-fold file's label is its fold; a fold list's entries ('file[i]') belong to their run.
            key = (kind, fold) if "[" not in fold else (kind, run["name"], fold)
            if key in owners:
                raise ReportError(
                    f"Table 2: fold {fold} of the {kind} runs appears in runs {owners[key]!r} and {run['name']!r}; "
                    "each fold counts once: give each fold's run once (--report=NAME=DIR,...)."
                )
            owners[key] = run["name"]
            groups.setdefault(kind, []).append((run["name"], fold, accuracy))
    rows = []
    for kind, entries in groups.items():
        values = np.array([a for _, _, a in entries], np.float64)
        percent = values * 100.0 if np.all(values <= 1.0) else values  # the JSONs hold fractions
        std = float(np.std(percent, ddof=1)) if len(percent) > 1 else None
        label, paper = PAPER_TABLE2.get(kind, ("–", None))
        rows.append(
            [
                f"{label} ({fmt(paper)})" if paper is not None else "–",
                ", ".join(sorted({name for name, _, _ in entries})),
                f"{fmt(float(np.mean(percent)))} ± {fmt(std)}",
                f"{len(percent)}: " + ", ".join(f"{fold} {fmt(a)}" for (_, fold, _), a in zip(entries, percent)),
            ]
        )
    return (
        markdown_table(
            ["paper row (paper accuracy, %)", "runs", "our test accuracy, % (mean ± std over folds)", "folds: fold %"],
            rows,
        )
        + "\n\nThe paper's accuracies are means over the 10 official folds of 1,000 labels on the 8,000 test images."
        if rows
        else None
    )


def _metric(result: dict, key: str):
    """(name, value) of `key` or its proxy form in a result, or (None, None)."""
    for name in (key, f"proxy_{key}"):
        if _is_number(result.get(name)):
            return name, result[name]
    return None, None


def render_sample_quality(collected: Sequence[dict]) -> Optional[str]:
    rows = []
    for run in collected:
        for result in run["results"]["sample_quality"]:
            network = result.get("network") if isinstance(result.get("network"), dict) else {}
            values = []
            for key, spread in (
                ("fid", None),
                ("kid_mean", "kid_sem"),
                ("inception_score_mean", "inception_score_std"),
            ):
                name, value = _metric(result, key)
                if name is None:
                    continue
                _, error = _metric(result, spread) if spread else (None, None)
                digits = 4 if "kid" in key else 2
                values.append(
                    f"{name} {fmt(value, digits)}" + (f" ± {fmt(error, digits)}" if error is not None else "")
                )
            classifier = [  # the project classifier's statistics of the samples (evaluate --metrics=...)
                f"{key[len('classifier_') :]} {fmt(value, 3)}"
                for key, value in result.items()
                if key.startswith(("classifier_sample_", "classifier_real_")) and _is_number(value)
            ]
            budget = result.get("budget") if isinstance(result.get("budget"), dict) else {}
            sha = str(network.get("sha256") or "")[:12]
            rows.append(
                [
                    run["name"],
                    result["_file"],
                    fmt(result.get("step")),
                    "; ".join(values),
                    ", ".join(classifier) or "–",
                    f"{network.get('name', NOT_RECORDED)}"
                    + (f" {sha}" if sha else "")
                    + (" (proxy)" if network.get("is_proxy", True) else ""),
                    f"{fmt(result.get('num_real'))} / {fmt(result.get('num_fake'))}",
                    fmt_duration(budget.get("wall_time_s")),
                ]
            )
    if not rows:
        return None
    header = ["run", "file", "step", "metrics", "classifier statistics", "feature network (sha256)"]
    return (
        markdown_table(header + ["real / generated images", "wall time"], rows)
        + "\n\nThe paper reports no FID, KID or Inception Score (its image results are qualitative); proxy_* numbers "
        "are comparable only between results of the same feature network (same sha256)."
    )


def _numeric_items(result: dict, prefix: str = "") -> List[Tuple[str, float]]:
    out = []
    for key, value in result.items():
        if key.startswith("_"):
            continue
        if _is_number(value):
            out.append((prefix + key, value))
        elif isinstance(value, dict):
            out.extend(_numeric_items(value, f"{prefix}{key}."))
    return out


def render_generic(collected: Sequence[dict], kind: str, limit: int = 12) -> Optional[str]:
    """One line per result of `kind`: its numeric entries (the first `limit`)."""
    rows = []
    for run in collected:
        for result in run["results"][kind]:
            items = _numeric_items(result)
            shown = ", ".join(f"{k} {fmt(v, 4)}" for k, v in items[:limit])
            if len(items) > limit:
                shown += f", ... ({len(items) - limit} more)"
            rows.append([run["name"], result["_file"], fmt(result.get("step")), shown or "–"])
    if not rows:
        return None
    return markdown_table(["run", "file", "step", "numbers"], rows)


def _dominant_text(result: dict) -> str:
    """'factor t, ...': the time step that alone explains most of each factor (`evaluate_groups`), or '–'."""
    dominant = result.get("dominant_time_step")
    explained = dominant.get("explained") if isinstance(dominant, dict) else None
    if not isinstance(explained, dict) or not explained:
        return "–"
    return ", ".join(f"{factor} {step}" for factor, step in explained.items())


def render_disentanglement(collected: Sequence[dict]) -> Optional[str]:
    """One line per disentanglement result: its metrics, the factors and the time steps (groups) scored."""
    rows = []
    for run in collected:
        for result in run["results"]["disentanglement"]:
            factors = result.get("factor_names")
            rows.append(
                [
                    run["name"],
                    result["_file"],
                    fmt(result.get("step")),
                    ", ".join(f"{k} {fmt(v, 3)}" for k, v in disentanglement_values(result)),
                    ", ".join(map(str, factors)) if isinstance(factors, list) else "–",
                    _dominant_text(result),
                    fmt(result.get("num_time_steps")),
                    fmt(result.get("num_test")),
                ]
            )
    if not rows:
        return None
    header = ["run", "file", "step", "metrics", "factors", "dominant time step per factor (explained)"]
    return markdown_table(header + ["groups (time steps)", "test codes"], rows) + (
        "\n\nThe paper reports no disentanglement score (its Sec. 4.4 and Fig. 5 are qualitative)."
    )


def render_skipped(collected: Sequence[dict]) -> Optional[str]:
    lines = [f"- `{path}`: {reason}" for run in collected for path, reason in run["skipped"]]
    return "\n".join(lines) if lines else None


def render_report(collected: Sequence[dict], figures: Optional[Dict[str, str]] = None, command: str = "") -> str:
    """The whole report: Table 1, paired differences, figures, Table 2, sample quality, disentanglement, other
    results, the runs' budgets and the skipped files; sections without results are left out."""
    figures = figures or {}
    parts = ["# Reproduction report: paper vs ours", ""]
    if command:
        parts += [f"Generated by `{command}` (tables are never hand-typed; rerun it to refresh).", ""]
    parts += ["## Table 1: MNIST test NLL (nats)", "", render_table1(collected), ""]
    if "curves" in figures:
        parts += [f"![validation curves of every run]({figures['curves']})", ""]
    likelihoods = render_likelihoods(collected)
    if likelihoods:
        parts += ["### Every likelihood estimate", "", likelihoods, ""]
    table2 = render_table2(collected)
    if table2:
        parts += ["## Table 2: STL-10 classification accuracy", "", table2, ""]
    sample_quality = render_sample_quality(collected)
    if sample_quality:
        parts += ["## Sample quality", "", sample_quality, ""]
        if "fid" in figures:
            parts += [f"![FID over training]({figures['fid']})", ""]
    disentanglement = render_disentanglement(collected)
    if disentanglement:
        parts += ["## Disentanglement", "", disentanglement, ""]
    other = render_generic(collected, "other")
    if other:
        parts += ["## Other results (kind not recognised)", "", other, ""]
    parts += ["## Runs: budget and provenance", "", render_runs(collected), ""]
    skipped = render_skipped(collected)
    if skipped:
        parts += ["## Skipped files", "", skipped, ""]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------- figures


def fid_series(collected: Sequence[dict]) -> Dict[str, Tuple[List[int], List[float]]]:
    """'run: metric' -> (steps, values) of the sample-quality results that record a step (FID over training)."""
    series = {}
    for run in collected:
        points = {}
        for result in run["results"]["sample_quality"]:
            name, value = _metric(result, "fid")
            if name is None or not _is_number(result.get("step")):
                continue
            points.setdefault(name, {})[int(result["step"])] = float(value)
        for name, by_step in points.items():
            steps = sorted(by_step)
            series[f"{run['name']}: {name}"] = (steps, [by_step[s] for s in steps])
    return series


def plot_series(series: Dict[str, Tuple[List[int], List[float]]], path: str, ylabel: str, title: str = "") -> None:
    """One line per series against the training step, written as a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError as error:
        raise ImportError('Plotting needs matplotlib: pip install -e ".[plot]"') from error
    figure, axis = pyplot.subplots(figsize=(6, 3.6))
    for name, (steps, values) in series.items():
        axis.plot(steps, values, marker=".", label=name)
    axis.set_xlabel("training step")
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    if title:
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    pyplot.close(figure)
    artifacts.atomic_write_bytes(path, buffer.getvalue())


def curves_title(collected: Sequence[dict]) -> str:
    """The curves figure's title: the runs' batch sizes, training precisions and validation images."""

    def distinct(values):
        return "/".join(sorted({str(v) for v in values if v is not None})) or NOT_RECORDED

    plotted = [run for run in collected if run["curve"]]
    batch = distinct((run["info"] or {}).get("batch_size") for run in plotted)
    precision = distinct(run["bindings"].get("model.precision") for run in plotted)
    images = distinct(run["bindings"].get("train.num_validation_images") for run in plotted)
    return f"batch {batch}, {precision}; validation on {images} images"


def curves_for_plot(collected: Sequence[dict]) -> Dict[str, dict]:
    """name -> the `learning_curves.plot_curves` curve (numpy arrays) of every run with a validation curve and a
    known steps_per_epoch."""
    out = {}
    for run in collected:
        per_epoch = (run["info"] or {}).get("steps_per_epoch")
        if not run["curve"] or not per_epoch:
            continue
        steps = np.array(run["curve"]["steps"], np.int64)
        out[run["name"]] = {
            "steps": steps,
            "epochs": steps / float(per_epoch),
            "train_seconds": np.array(run["curve"]["train_seconds"], np.float64),
            "values": np.array(run["curve"]["values"], np.float64),
        }
    return out


# ---------------------------------------------------------------------------------------------- marked blocks

_BLOCK = "<!-- report:{name} {edge} -->"


def block_names(text: str) -> List[str]:
    """Names of the `<!-- report:NAME begin -->` markers in a Markdown text, in order."""
    return re.findall(r"<!-- report:([A-Za-z0-9_]+) begin -->", text)


def replace_block(text: str, name: str, content: str) -> str:
    """`text` with what lies between `<!-- report:NAME begin -->` and `<!-- report:NAME end -->` replaced by
    `content` (one blank line either side); everything outside the markers is kept byte for byte. Idempotent."""
    begin, end = _BLOCK.format(name=name, edge="begin"), _BLOCK.format(name=name, edge="end")
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ReportError(
            f"expected exactly one {begin} followed by one {end}; found {text.count(begin)} and {text.count(end)}. "
            "Insert the pair once around the generated block."
        )
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n\n{content.strip()}\n\n{end}{tail}"


# ---------------------------------------------------------------------------------------------------- writing

# The blocks a Markdown file may mark (`<!-- report:NAME begin -->`), and what fills each.
BLOCKS = {
    "table1": lambda collected: render_table1(collected),
    "runs": render_runs,
    "table2": lambda collected: render_table2(collected) or "No classification results yet.",
    "sample_quality": lambda collected: render_sample_quality(collected) or "No sample-quality results yet.",
}
COMMAND = "python -m crvae_tf.evaluate"


def command(runs_spec: str, out: Optional[str] = None, markdown: Optional[str] = None) -> str:
    """The command that regenerates the report at `out` (with `markdown`: that file's marked blocks only)."""
    target = f"--update_markdown={markdown}" if markdown else f"--report_out={out}"
    return f"{COMMAND} --report={runs_spec} {target}"


def draw_figures(collected: Sequence[dict], out: str, figures_dir: Optional[str] = None) -> Dict[str, str]:
    """Draws the report's figures (module docstring of `crvae_tf.evaluate`) into `figures_dir` (default: `out`'s
    folder) as <stem>_curves.png and <stem>_fid.png; returns name -> path. Without matplotlib: {} (logged)."""
    folder = figures_dir or os.path.dirname(os.path.abspath(out))
    stem = os.path.splitext(os.path.basename(out))[0]
    figures = {}
    curves = curves_for_plot(collected)
    fid = fid_series(collected)
    try:
        if curves:
            path = os.path.join(folder, f"{stem}_curves.png")
            label = f"validation {metric_label(collected[0]['curve_metric'])} (nats)"
            learning_curves.plot_curves(curves, path, label, curves_title(collected))
            figures["curves"] = path
        if fid:
            path = os.path.join(folder, f"{stem}_fid.png")
            plot_series(fid, path, "FID (proxy_fid: the proxy network's)", "FID over training")
            figures["fid"] = path
    except ImportError as error:
        logging.warning("Figures left out: %s", error)
    return figures


def update_markdown(path: str, collected: Sequence[dict], runs_spec: str) -> dict:
    """Regenerates every marked block of the Markdown file `path` (atomically; untouched when nothing changed).

    Raises:
      FileNotFoundError: `path` is not a file.
      ReportError: no markers, an unknown block name, or a broken pair of markers.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--update_markdown: {path} is not a file (paths are relative to {os.getcwd()}).")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    names = block_names(text)
    if not names:
        raise ReportError(
            f"--update_markdown: {path} has no <!-- report:NAME begin --> ... <!-- report:NAME end --> markers; insert "
            f"a pair once where a generated block belongs (NAME one of {', '.join(BLOCKS)})."
        )
    unknown = [name for name in names if name not in BLOCKS]
    if unknown:
        raise ReportError(f"--update_markdown: {path} marks unknown block(s) {unknown}; known: {', '.join(BLOCKS)}.")
    generated = f"_Generated by `{command(runs_spec, markdown=path)}` from the runs; never edit it by hand._"
    updated = text
    for name in names:
        try:
            updated = replace_block(updated, name, f"{generated}\n\n{BLOCKS[name](collected)}")
        except ReportError as error:
            raise ReportError(f"--update_markdown: {path}: {error}") from None
    if updated != text:
        artifacts.atomic_write_text(path, updated)
    return {"path": os.path.abspath(path), "blocks": names, "changed": updated != text}


def write(
    runs_spec: str,
    out: Optional[str] = None,
    figures_dir: Optional[str] = None,
    markdown_files: Sequence[str] = (),
) -> dict:
    """Collects the runs of `runs_spec` (`find_runs`) and writes the report to `out` (Markdown, with its figures)
    and/or regenerates the marked blocks of `markdown_files`; returns the summary the binary prints (the runs read,
    the files skipped, what was written). Damaged result files are logged and listed, never fatal.

    Raises:
      ReportError: a bad `runs_spec` or Markdown file (the message says what to fix).
      FileNotFoundError: a path that does not exist.
    """
    found = find_runs(runs_spec)
    collected = [collect_run(name, model_dir) for name, model_dir in found]
    skipped = [f"{path}: {reason}" for run in collected for path, reason in run["skipped"]]
    for line in skipped:
        logging.warning("Skipped %s", line)
    summary = {"runs": [run["name"] for run in collected], "skipped": skipped}
    if out:
        figures = draw_figures(collected, out, figures_dir)
        folder = os.path.dirname(os.path.abspath(out))
        links = {name: os.path.relpath(path, folder) for name, path in figures.items()}
        artifacts.atomic_write_text(out, render_report(collected, links, command(runs_spec, out=out)))
        summary.update(out=os.path.abspath(out), figures=sorted(figures.values()))
    if markdown_files:
        summary["updated"] = [update_markdown(path, collected, runs_spec) for path in markdown_files]
    return summary
