r"""Table 2 (paper Sec. 4.5): semi-supervised STL-10 classification accuracy of one run per fold, and the line of the
table (mean ± std over the folds).

    python -m crvae_tf.classify --model_dirs=runs/stl10_crvae/fold0,runs/stl10_crvae/fold1,... --name=crVAE
    python -m crvae_tf.classify --model_dirs=runs/stl10_crvae/fold3 --reevaluate   # one fold again

For each run directory (a `model.family='semi_supervised_vae_gan'` run, `gin/stl10_crvae_gan.gin` or
`gin/stl10_vae_gan.gin`, trained on `dataset.fold=k`), `crvae_tf.evaluation.classification.evaluate_run` selects the
kept checkpoint with the best accuracy on the run's validation split (the labeled training images outside the fold)
and scores it on the test split, writing DIR/eval/classification-fold<k>-step<S>.json; a run that already has such
a file is not evaluated again unless --reevaluate. Then one line per fold, the Table 2 row (`--name`: the paper's
row name, e.g. 'crVAE' or 'Standard VAE', to print its number beside ours) and, last, the summary as one line of
JSON (also written to --output when given). --gin_bindings apply to every run's config (e.g. its
dataset.local_path on this machine). Errors are one line on stderr with a distinct exit status (`crvae_tf.cli`).
"""

from crvae_tf import startup

startup.quiet_tensorflow()

import json
import os

from absl import app
from absl import flags
import gin

from crvae_tf import artifacts
from crvae_tf import cli
from crvae_tf.evaluation import classification

VERBOSE = flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)
MODEL_DIRS = flags.DEFINE_list("model_dirs", [], "The runs, one per fold (comma-separated).")
NAME = flags.DEFINE_string(
    "name", "ours", f"The Table 2 row's name; one of {list(classification.PAPER_TABLE2)} prints the paper's number."
)
BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Gin bindings applied after each run's config, e.g. dataset.local_path.", allow_override=True
)
BATCH = flags.DEFINE_integer("batch_size", 256, "Images per forward pass.", allow_override=True)
REEVALUATE = flags.DEFINE_boolean("reevaluate", False, "Evaluate runs that already have a result again.")
OUTPUT = flags.DEFINE_string("output", None, "Also write the summary JSON to this file (atomically).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Use --model_dirs=DIR,DIR,...")
    if not MODEL_DIRS.value:
        raise app.UsageError("--model_dirs is required: the runs of the folds, comma-separated.")
    if BATCH.value < 1:
        raise app.UsageError(f"--batch_size={BATCH.value} must be positive.")
    results = []
    for model_dir in MODEL_DIRS.value:
        if not os.path.isdir(model_dir):
            raise NotADirectoryError(
                f"--model_dirs: {model_dir} is not a directory (paths are relative to {os.getcwd()})."
            )
        if not os.path.isfile(os.path.join(model_dir, "operative_config.gin")):
            raise FileNotFoundError(f"{model_dir} is not a crvae_tf run (no operative_config.gin); train it first.")
        existing = None if REEVALUATE.value else classification.latest_result(model_dir)
        if existing is not None:
            results.append(existing)
            continue
        try:
            results.append(classification.evaluate_run(model_dir, None, BATCH.value, BINDINGS.value))
        except classification.NotAClassifierError as error:
            raise cli.UnsupportedRunError(str(error)) from error
        finally:
            gin.clear_config()
    try:
        summary = classification.summarize_folds(results)
    except ValueError as error:
        raise app.UsageError(f"{error} Pass each fold's run once in --model_dirs.") from error
    summary.update(name=NAME.value, model_dirs=[os.path.abspath(d) for d in MODEL_DIRS.value])
    summary["paper"] = classification.PAPER_TABLE2.get(NAME.value)
    for model_dir, result in zip(MODEL_DIRS.value, results):
        print(
            f"fold {result['fold']}: test accuracy {100 * result['test_accuracy']:.2f}% "
            f"(± {100 * result['test_accuracy_stderr']:.2f}, {result['num_test']} images; step {result['step']}, "
            f"validation {100 * result['validation_accuracy']:.2f}%) {model_dir}"
        )
    print(classification.table2_line(NAME.value, summary))
    line = json.dumps(summary, sort_keys=True)
    if OUTPUT.value:
        artifacts.atomic_write_text(OUTPUT.value, line + "\n")
    print(line, flush=True)


if __name__ == "__main__":
    cli.run(main, flags.FLAGS, lambda: cli.LoggingOptions(VERBOSE.value, bool(flags.FLAGS["verbosity"].present)))
