r"""Estimates a trained run's test NLL with K importance samples (Table 1) and prints the result as JSON.

    python -m crvae_tf.evaluate --model_dir=runs/crvae \
        --gin_bindings="eval_dataset.local_path='../shared/data/binarized_mnist/binarized_mnist.npz'"
    python -m crvae_tf.evaluate --model_dir=runs/crvae --checkpoint=best --num_importance_samples=1000 \
        --max_images=500                      # a budget run on CPU (recorded, and in the file name)
    python -m crvae_tf.evaluate --model_dir=runs/crvae --split=validation --poll   # each new checkpoint once
    python -m crvae_tf.evaluate --curves=VAE=runs/vae,crVAE=runs/crvae --curves_out=docs/curves.png   # learning curves
    python -m crvae_tf.evaluate --report=/work/runs_table1 --report_out=docs/results.md    # the reproduction report

--metrics (default 'nll') names what to compute, a comma list of the entries of `METRICS` (name -> function of the
run, returning its result dict); each distinct result is one line of JSON. Sample quality (`sample_quality_eval`):

    python -m crvae_tf.evaluate --model_dir=runs/crvae --checkpoint=best --metrics=fid,kid,is,classifier_accuracy \
        --gin_bindings="sample_quality.feature_network='classifier'" \
        --gin_bindings="sample_quality.feature_network_path='runs/feature_net_mnist/feature_net.keras'"
    python -m crvae_tf.evaluate --export_dir=runs/serving/crvae --metrics=fid,kid \
        --gin_bindings="sample_quality.inception_path='/models/classify_image_graph_def.pb'"

draws `sample_quality.num_samples` prior samples (seeded by --seed) from the run's checkpoint or from the export's
`sample` signature and compares them with --split of the run's dataset (--max_images: a cap spread over the split) in
the chosen network's feature space (`sample_quality.*`, the gin configurable below; only the TF Inception graph gives
results named fid / kid, any other network proxy_fid / proxy_kid_*). The result goes to
DIR/eval/sample_quality-<split>-step<S>-s<num_samples>-<network sha256[:12]>[-n<max_images>][-seed<S>].json (DIR:
the run, or the export's base folder).

Semi-supervised STL-10 accuracy (Table 2, `crvae_tf.evaluation.classification`) of one fold's run:

    python -m crvae_tf.evaluate --model_dir=runs/stl10_crvae/fold0 --metrics=classification

selects the kept checkpoint with the best validation accuracy (--checkpoint=STEP: that one only) and scores it on the
test split, writing DIR/eval/classification-fold<k>-step<S>.json; run it once per fold (scripts/stl10_table2.sh
skips evaluated folds), then the report below (`--report`) pools the folds of each model into Table 2 (mean ± std
over the folds, the paper's number beside it).

With --curves, no model is evaluated: the runs' validation curves of --curves_metric are drawn against epochs and
against cumulative training hours (`crvae_tf.evaluation.learning_curves`; needs matplotlib, `pip install -e
".[plot]"`), and one JSON line per run gives its last and best values.

With --report, no model is evaluated either: the reproduction report (`crvae_tf.evaluation.report_lib`) is written
from the runs' own files, which are only read (a trainer may be writing them):

    python -m crvae_tf.evaluate --report=runs/ --report_out=docs/results.md
    python -m crvae_tf.evaluate --report=vae=/work/runs_table1/vae,crvae=/work/runs_table1/crvae --report_out=/tmp/r.md
    python -m crvae_tf.evaluate --report=/work/runs_table1 --update_markdown=gin/README.md   # its marked blocks only

--report is a folder of run directories (each subfolder with run.json, progress.json or eval/) or NAME=DIR pairs.
Each run's eval/*.json results are recognised by their keys (likelihood, sample quality, classification folds,
disentanglement; anything else is listed as is); a damaged or partial file is named in the report's "Skipped files"
section (and logged) and never stops it. --report_out writes the whole report (Table 1 with the validation curve
points and paired differences, Table 2 when there are classification results, sample quality, disentanglement,
other results, every run's budget and provenance, the skipped files) plus its figures into --report_figures_dir
(default: the report's folder): <stem>_curves.png (validation IWAE-5 against epochs and training hours) and
<stem>_fid.png (FID over training, when sample-quality results record their step); without matplotlib they are left
out, said so. --update_markdown regenerates, in each named file, what lies between `<!-- report:NAME begin -->` and
`<!-- report:NAME end -->` for every such pair (NAME: one of `report_lib.BLOCKS`), and leaves every other byte as
it was. The last line of stdout is one line of JSON: the files written, the runs read, the files skipped. A
Markdown file without markers, or one fold of a model in two runs, exits 2; a missing path 5.

The last line of stdout is the result as one line of JSON (keys include nll, nll_stderr, elbo, iwae_5,
num_importance_samples, split, step, data_sha256); it is also written to
DIR/eval/<split>-step<step>-k<K>[-n<max_images>].json (see `crvae_tf.evaluation.likelihood`). The model and data
settings come from the run's own config; --gin_bindings adjust them (e.g. eval_dataset.local_path, model.precision). An
interrupted evaluation resumes from its last finished batch when the same command is run again. Errors are one line
on stderr with a distinct exit status (`crvae_tf.cli`; --verbose shows the traceback). It may run beside the run's
trainer: it reads only complete checkpoints and never writes the trainer's files.
"""

from crvae_tf import startup

startup.quiet_tensorflow()

import json
import os
from typing import Callable
from typing import Dict
from typing import List

from absl import app
from absl import flags
from absl import logging
import gin

from crvae_tf import builders
from crvae_tf import cli
from crvae_tf import runs
from crvae_tf.evaluation import classification
from crvae_tf.evaluation import learning_curves
from crvae_tf.evaluation import likelihood as eval_lib
from crvae_tf.evaluation import report_lib
from crvae_tf.evaluation import sample_quality_eval

# --model_dir and --gin_bindings have the same meaning as in crvae_tf.train; allow_override lets both binaries be
# imported into one process (the tests), whichever comes first.
VERBOSE = flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)
MODEL_DIR = flags.DEFINE_string("model_dir", None, "The training run's directory.", allow_override=True)
BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings",
    [],
    "Gin bindings applied after the run's config, e.g. \"eval_dataset.local_path='/path/binarized_mnist.npz'\".",
    allow_override=True,
)
CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    "latest",
    "'latest', 'best' (the best validation score: IWAE_5, or the adversarial family's lowest loss) or a step number.",
    allow_override=True,
)
NUM_SAMPLES = flags.DEFINE_integer(
    "num_importance_samples",
    eval_lib.DEFAULT_NUM_IMPORTANCE_SAMPLES,
    "K, importance samples per image (Table 1: 10,000).",
)
SPLIT = flags.DEFINE_enum(
    "split",
    "test",
    list(eval_lib.SPLITS),
    "'test' (the eval_dataset.* test split when the recipe sets one, else the run's) or 'validation' (the run's own).",
)
MAX_IMAGES = flags.DEFINE_integer(
    "max_images",
    None,
    "A budget cap: evaluate N images spread evenly over the split (not its first N, which may be sorted by class); "
    "for sample quality, the real images compared with.",
    allow_override=True,
)
SEED = flags.DEFINE_integer(
    "seed", 0, "Noise seed in [0, 2^31): the same command gives the same numbers.", allow_override=True
)
BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", eval_lib.DEFAULT_BATCH_SIZE, "Images per encoder pass.", allow_override=True
)
CHUNK_SIZE = flags.DEFINE_integer(
    "chunk_size",
    None,
    "Importance samples per decoder pass (default: about "
    f"{eval_lib.TARGET_DECODER_ROWS} decoder rows per pass). Speed and memory only.",
)
POLL = flags.DEFINE_boolean(
    "poll",
    False,
    "Evaluate each checkpoint of the run once as it appears (one JSON line "
    "each), until the one at train.max_steps or --poll_timeout without a new one.",
)
POLL_SECONDS = flags.DEFINE_float("poll_seconds", 60.0, "With --poll: seconds between polls.")
POLL_TIMEOUT = flags.DEFINE_float(
    "poll_timeout", 3600.0, "With --poll: stop after this many seconds without a new checkpoint."
)

EXPORT_DIR = flags.DEFINE_string(
    "export_dir",
    None,
    "Instead of --model_dir, for the sample-quality metrics: an export of python -m crvae_tf.export (EXPORT_DIR, "
    "its newest version, or EXPORT_DIR/<step>); its `sample` signature is evaluated. Results go to EXPORT_DIR/eval/.",
    allow_override=True,
)
METRICS_FLAG = flags.DEFINE_list(
    "metrics",
    ["nll"],
    "Comma-separated metrics to compute, each a name in evaluate.METRICS (e.g. 'nll'); each distinct result is "
    "printed as one line of JSON and written to DIR/eval/.",
)
CURVES = flags.DEFINE_list(
    "curves", None, "Learning curves instead of an evaluation: NAME=MODEL_DIR pairs, comma-separated (legend order)."
)
CURVES_OUT = flags.DEFINE_string("curves_out", None, "With --curves: the PNG to write.")
CURVES_METRIC = flags.DEFINE_string("curves_metric", "iwae_5", "With --curves: the validation scalar to plot.")
CURVES_TITLE = flags.DEFINE_string("curves_title", "", "With --curves: the figure's title (budget, hardware).")
REPORT = flags.DEFINE_string(
    "report", None, "The reproduction report instead of an evaluation: a folder of runs, or NAME=DIR pairs."
)
REPORT_OUT = flags.DEFINE_string("report_out", None, "With --report: the Markdown report to write (docs/results.md).")
REPORT_FIGURES_DIR = flags.DEFINE_string(
    "report_figures_dir", None, "With --report_out: where its PNG figures go (default: the report's folder)."
)
UPDATE_MARKDOWN = flags.DEFINE_list(
    "update_markdown",
    [],
    "With --report: Markdown files whose <!-- report:NAME begin/end --> blocks are regenerated (gin/README.md).",
)


def _plot_curves():
    if not CURVES_OUT.value:
        raise app.UsageError("--curves needs --curves_out=FILE.png.")
    curves = {}
    for item in CURVES.value:
        name, sep, model_dir = item.partition("=")
        if not sep or not name or not model_dir:
            raise app.UsageError(f"--curves entry {item!r} must be NAME=MODEL_DIR.")
        try:
            curves[name] = learning_curves.learning_curve(model_dir, CURVES_METRIC.value)
        except ValueError as error:
            raise app.UsageError(str(error)) from None
    metric = CURVES_METRIC.value
    label = f"validation {metric}" + (" (nats)" if metric in ("iwae_5", "elbo", "loss") else "")
    learning_curves.plot_curves(curves, CURVES_OUT.value, label, CURVES_TITLE.value)
    for row in learning_curves.summarize(curves, metric):
        print(json.dumps(row), flush=True)
    print(json.dumps({"figure": os.path.abspath(CURVES_OUT.value)}), flush=True)


def _write_report():
    for flag in (REPORT_OUT, REPORT_FIGURES_DIR, UPDATE_MARKDOWN):
        if flag.value and not REPORT.value:
            raise app.UsageError(f"--{flag.name} belongs to the report: add --report=RUNS (a folder of runs).")
    if not REPORT.value:
        return False
    if CURVES.value or MODEL_DIR.value or EXPORT_DIR.value:
        raise app.UsageError(
            "--report writes the report from the runs' files; drop --curves, --model_dir and --export_dir."
        )
    if not REPORT_OUT.value and not UPDATE_MARKDOWN.value:
        raise app.UsageError(
            "--report: nothing to write; give --report_out=REPORT.md and/or --update_markdown=FILE.md."
        )
    if REPORT_OUT.value and not REPORT_OUT.value.endswith(".md"):
        raise app.UsageError(f"--report_out={REPORT_OUT.value} must be a Markdown file (.md).")
    try:
        summary = report_lib.write(REPORT.value, REPORT_OUT.value, REPORT_FIGURES_DIR.value, UPDATE_MARKDOWN.value)
    except report_lib.ReportError as error:
        raise app.UsageError(str(error)) from None
    print(json.dumps(summary), flush=True)
    return True


def _checkpoint_value(text: str):
    try:
        return runs.checkpoint_value(text)
    except ValueError as error:
        raise app.UsageError(f"--checkpoint: {error}") from None


@gin.configurable("sample_quality")
def sample_quality_settings(
    feature_network="inception",
    inception_path=None,
    feature_network_path=None,
    feature_layer=None,
    probabilities_layer=None,
    num_samples=10000,
    sample_batch_size=250,
    network_batch_size=100,
    kid_num_subsets=100,
    kid_subset_size=1000,
    kid_max_samples=50000,
    inception_score_splits=10,
    confidence_threshold=0.9,
    cache_dir=None,
) -> sample_quality_eval.Settings:
    """The settings of --metrics=fid,kid,is,classifier_accuracy (`sample_quality_eval.Settings` documents each).

    The samples' seed, the split and the cap on real images are the flags --seed, --split and --max_images.
    feature_network: 'inception' (with inception_path: `classify_image_graph_def.pb`; results named fid / kid),
    'classifier' (the project's own: python -m crvae_tf.train --gin_file=gin/feature_net/mnist.gin;
    feature_network_path), 'keras', 'saved_model' or 'keras_inception_v3' (feature_network_path): proxies, results
    named proxy_fid / proxy_kid_*.
    """
    return sample_quality_eval.Settings(
        feature_network=feature_network,
        inception_path=inception_path,
        feature_network_path=feature_network_path,
        feature_layer=feature_layer,
        probabilities_layer=probabilities_layer,
        num_samples=num_samples,
        sample_batch_size=sample_batch_size,
        network_batch_size=network_batch_size,
        kid_num_subsets=kid_num_subsets,
        kid_subset_size=kid_subset_size,
        kid_max_samples=kid_max_samples,
        inception_score_splits=inception_score_splits,
        confidence_threshold=confidence_threshold,
        cache_dir=cache_dir,
    )


class EvalTarget:
    """What `--metrics` evaluate: a run's checkpoint (`model_dir`, `checkpoint`) or an export (`export_dir`), with
    the requested `metrics`. `shared` holds work that several metrics of one command reuse (computed once)."""

    def __init__(self, model_dir, checkpoint, gin_bindings: List[str], export_dir=None, metrics=()):
        self.model_dir = model_dir
        self.export_dir = export_dir
        self.checkpoint = checkpoint
        self.gin_bindings = list(gin_bindings)
        self.metrics = list(metrics)
        self.shared: Dict[str, dict] = {}


def _likelihood_kwargs(gin_bindings) -> dict:
    return dict(
        num_importance_samples=NUM_SAMPLES.value,
        split=SPLIT.value,
        gin_bindings=list(gin_bindings),
        chunk_size=CHUNK_SIZE.value,
        batch_size=BATCH_SIZE.value,
        max_images=MAX_IMAGES.value,
        seed=SEED.value,
    )


def _nll_run_check(model_dir: str) -> None:
    info = runs.read_run_info(model_dir)
    if info is not None and info.get("family") != "VAE":
        raise cli.UnsupportedRunError(
            f"{model_dir} is a {info.get('family')} run: the importance-sampled NLL needs the VAE family's "
            "Bernoulli likelihood; an adversarial model (MSE reconstruction + discriminator) defines no likelihood. "
            "Export its generator with python -m crvae_tf.export instead."
        )


def _nll(target: EvalTarget) -> dict:
    """The importance-sampled NLL of Table 1 (`crvae_tf.evaluation.likelihood`)."""
    _nll_run_check(target.model_dir)
    try:
        return eval_lib.evaluate(
            target.model_dir, checkpoint=target.checkpoint, **_likelihood_kwargs(target.gin_bindings)
        )
    except ValueError as error:  # a run written before run.json
        if "defines no likelihood" in str(error):
            raise cli.UnsupportedRunError(str(error)) from error
        raise


def _binding_value(name: str):
    try:
        return gin.query_parameter(name)
    except ValueError:  # not bound: the builder's default
        return None


def _sample_quality(target: EvalTarget) -> dict:
    """FID / KID / IS / classifier statistics of the target's samples (`sample_quality_eval`), computed once for
    all of them that --metrics names."""
    if "sample_quality" in target.shared:
        return target.shared["sample_quality"]
    wanted = [m for m in target.metrics if m in sample_quality_eval.METRICS]
    if target.export_dir:
        version_dir, base_dir = sample_quality_eval.resolve_export(target.export_dir)
        metadata = sample_quality_eval.export_metadata(version_dir)
        gin.clear_config()
        runs.parse_gin(
            [os.path.join(version_dir, sample_quality_eval.EXPORT_CONFIG_FILE)],
            ["dataset.download = False", *target.gin_bindings],
            finalize=False,
        )
        settings = sample_quality_settings()
        network = sample_quality_eval.feature_network(settings)  # a missing file fails before any sampling
        seed = metadata.get("train_seed", gin.query_parameter("train.seed"))
        splits, step, output_dir = builders.build_dataset(seed=seed), int(metadata["training_step"]), base_dir
        sample = sample_quality_eval.export_sampler(version_dir)
        source = dict(kind="export", path=os.path.abspath(version_dir), training_step=step)
        source.update(model_dir=metadata.get("model_dir"), checkpoint_path=metadata.get("checkpoint"))
        # The export computes in the precision it was exported with: the run's, unless its export bindings changed it.
        source.update(precision=_binding_value("model.precision"), export_gin_bindings=metadata.get("gin_bindings"))
    else:
        run = runs.load_run(
            target.model_dir, target.checkpoint, [eval_lib.EVAL_PRECISION_BINDING, *target.gin_bindings]
        )
        settings = sample_quality_settings()
        network = sample_quality_eval.feature_network(settings)
        splits, step, output_dir = run.splits, run.step, target.model_dir
        sample = sample_quality_eval.run_sampler(run.model)
        source = dict(kind="run", model_dir=os.path.abspath(target.model_dir), checkpoint=str(target.checkpoint))
        source.update(checkpoint_path=os.path.abspath(run.checkpoint_path), precision=run.model.dtype_policy.name)
    target.shared["sample_quality"] = sample_quality_eval.evaluate_samples(
        sample,
        splits,
        SPLIT.value,
        network,
        settings,
        wanted,
        step,
        output_dir,
        source,
        seed=SEED.value,
        max_images=MAX_IMAGES.value,
    )
    return target.shared["sample_quality"]


def _classification(target: EvalTarget) -> dict:
    """Semi-supervised classification accuracy of one fold's run (`crvae_tf.evaluation.classification`)."""
    steps = [target.checkpoint] if isinstance(target.checkpoint, int) else None
    try:
        return classification.evaluate_run(target.model_dir, steps, gin_bindings=target.gin_bindings)
    except classification.NotAClassifierError as error:
        raise cli.UnsupportedRunError(str(error)) from error


# The metrics of --metrics: name -> function(EvalTarget) -> result dict (written to DIR/eval/ by the function).
# Adding a metric is one entry; metrics that share one computation return the same dict (printed once).
METRICS: Dict[str, Callable[[EvalTarget], dict]] = {
    "nll": _nll,
    "fid": _sample_quality,
    "kid": _sample_quality,
    "is": _sample_quality,
    "classifier_accuracy": _sample_quality,
    "classification": _classification,
}


def _selected_metrics() -> List[str]:
    names = [name.strip() for name in METRICS_FLAG.value if name.strip()]
    if not names:
        raise app.UsageError(f"--metrics is empty; name one or more of {sorted(METRICS)}.")
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise app.UsageError(f"--metrics: unknown {unknown}; the metrics are {sorted(METRICS)}.")
    return list(dict.fromkeys(names))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Pass everything as --flags (see --helpfull).")
    if _write_report():
        return
    if CURVES.value:
        _plot_curves()
        return
    if bool(MODEL_DIR.value) == bool(EXPORT_DIR.value):
        raise app.UsageError(
            "Pass one of --model_dir (a run) and --export_dir (an export; sample-quality metrics only), or "
            "--curves=NAME=MODEL_DIR,... for learning curves."
        )
    for name, value in (
        ("num_importance_samples", NUM_SAMPLES.value),
        ("batch_size", BATCH_SIZE.value),
        ("chunk_size", CHUNK_SIZE.value),
        ("max_images", MAX_IMAGES.value),
    ):
        if value is not None and value < 1:
            raise app.UsageError(f"--{name}={value} must be a positive integer.")
    if not 0 <= SEED.value < eval_lib.MAX_SEED:
        raise app.UsageError(f"--seed={SEED.value} must be in [0, 2^31).")
    metrics = _selected_metrics()
    if EXPORT_DIR.value and [m for m in metrics if m not in sample_quality_eval.METRICS]:
        raise app.UsageError(
            f"--export_dir evaluates samples only ({', '.join(sample_quality_eval.METRICS)}); "
            f"{[m for m in metrics if m not in sample_quality_eval.METRICS]} need the run: pass --model_dir."
        )
    for name, path in (("model_dir", MODEL_DIR.value), ("export_dir", EXPORT_DIR.value)):
        if path and not os.path.isdir(path):
            raise NotADirectoryError(f"--{name}={path} is not a directory (paths are relative to {os.getcwd()}).")
    if not flags.FLAGS["verbosity"].present:
        # An estimate runs for minutes to hours: its start, progress (every minute) and result lines are INFO.
        logging.set_verbosity(logging.INFO)
    if POLL.value:
        if metrics != ["nll"]:
            raise app.UsageError(f"--poll evaluates the NLL only; drop --metrics={','.join(metrics)} or --poll.")
        if CHECKPOINT.present:
            raise app.UsageError("--poll evaluates every checkpoint as it appears; drop --checkpoint.")
        if POLL_SECONDS.value <= 0 or POLL_TIMEOUT.value < 0:
            raise app.UsageError("--poll_seconds must be > 0 and --poll_timeout >= 0.")
        _nll_run_check(MODEL_DIR.value)
        eval_lib.evaluate_new_checkpoints(
            MODEL_DIR.value,
            poll_seconds=POLL_SECONDS.value,
            timeout=POLL_TIMEOUT.value,
            on_result=lambda result: print(json.dumps(result), flush=True),
            **_likelihood_kwargs(BINDINGS.value),
        )
        return
    if EXPORT_DIR.value and CHECKPOINT.present:
        raise app.UsageError("--checkpoint selects a run's weights; an export has one (pick EXPORT_DIR/<step>).")
    target = EvalTarget(MODEL_DIR.value, _checkpoint_value(CHECKPOINT.value), BINDINGS.value, EXPORT_DIR.value, metrics)
    printed = []
    for name in metrics:
        result = METRICS[name](target)
        if not any(result is done for done in printed):  # metrics sharing one computation print it once
            printed.append(result)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    cli.run(main, flags.FLAGS, lambda: cli.LoggingOptions(VERBOSE.value, bool(flags.FLAGS["verbosity"].present)))
