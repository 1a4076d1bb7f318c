r"""Writes the reproduction report: every run's results and budget, and the paper-vs-ours tables, as Markdown and
PNG figures; regenerates the marked tables of other Markdown files (gin/README.md) from the same runs.

    python -m crvae_tf.report --runs=runs/ --out=docs/results.md
    python -m crvae_tf.report --runs=vae=/work/runs_table1/vae,crvae=/work/runs_table1/crvae --out=/tmp/r.md
    python -m crvae_tf.report --runs=/work/runs_table1 --update_markdown=gin/README.md    # its marked blocks only

--runs is a folder of run directories (each subfolder with run.json, progress.json or eval/) or NAME=DIR pairs.
Each run's eval/*.json results are recognised by their keys (likelihood, sample quality, classification folds,
disentanglement; anything else is listed as is); a damaged or partial file is named in the report's "Skipped files"
section (and logged) and never stops it. Runs are only read (a trainer may be writing them).

--out writes the whole report (Table 1 with the validation curve points and paired differences, Table 2 when there
are classification results, sample quality, disentanglement, other results, every run's budget and provenance, the
skipped files) plus its figures into --figures_dir (default: the report's folder): <stem>_curves.png (validation
IWAE-5 against epochs and training hours) and <stem>_fid.png (FID over training, when sample-quality results
record their step). Figures need matplotlib (`pip install -e ".[plot]"`); without it they are left out, said so.

--update_markdown regenerates, in each named file, what lies between `<!-- report:NAME begin -->` and
`<!-- report:NAME end -->` for every such pair (NAME: one of BLOCKS), and leaves every other byte as it was.

The last line of stdout is one line of JSON: the files written, the runs read, the files skipped. Errors are one
line on stderr with a distinct exit status (`crvae_tf.cli`): 2 for a bad flag or a Markdown file without markers,
5 for a missing path.
"""

from crvae_tf import startup

startup.quiet_tensorflow()

import json
import os

from absl import app
from absl import flags
from absl import logging

from crvae_tf import artifacts
from crvae_tf import cli
from crvae_tf.evaluation import learning_curves
from crvae_tf.evaluation import report_lib

VERBOSE = flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)
RUNS = flags.DEFINE_string("runs", None, "A folder of run directories, or NAME=DIR pairs, comma-separated.")
OUT = flags.DEFINE_string("out", None, "The Markdown report to write (e.g. docs/results.md).")
FIGURES_DIR = flags.DEFINE_string("figures_dir", None, "Where the report's PNG figures go (default: --out's folder).")
UPDATE_MARKDOWN = flags.DEFINE_list(
    "update_markdown",
    [],
    "Markdown files whose <!-- report:NAME begin/end --> blocks are regenerated (e.g. gin/README.md).",
)

# The blocks a Markdown file may mark, and what fills each.
BLOCKS = {
    "table1": lambda collected: report_lib.render_table1(collected),
    "runs": report_lib.render_runs,
    "table2": lambda collected: report_lib.render_table2(collected) or "No classification results yet.",
    "sample_quality": lambda collected: report_lib.render_sample_quality(collected) or "No sample-quality results yet.",
}


def _figures(collected, out):
    """Draws the report's figures beside it; returns name -> path relative to the report's folder."""
    folder = FIGURES_DIR.value or os.path.dirname(os.path.abspath(out))
    stem = os.path.splitext(os.path.basename(out))[0]
    figures = {}
    curves = report_lib.curves_for_plot(collected)
    fid = report_lib.fid_series(collected)
    try:
        if curves:
            path = os.path.join(folder, f"{stem}_curves.png")
            metric = collected[0]["curve_metric"]
            label = f"validation {report_lib.metric_label(metric)} (nats)"
            learning_curves.plot_curves(curves, path, label, report_lib.curves_title(collected))
            figures["curves"] = path
        if fid:
            path = os.path.join(folder, f"{stem}_fid.png")
            report_lib.plot_series(fid, path, "FID (proxy_fid: the proxy network's)", "FID over training")
            figures["fid"] = path
    except ImportError as error:
        logging.warning("Figures left out: %s", error)
    return figures


def _command(markdown=None) -> str:
    """The command that regenerates the report (with `markdown`: that file's blocks only)."""
    parts = ["python -m crvae_tf.report", f"--runs={RUNS.value}"]
    if markdown:
        parts.append(f"--update_markdown={markdown}")
    else:
        parts.append(f"--out={OUT.value}")
    return " ".join(parts)


def _update_markdown(path, collected):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--update_markdown: {path} is not a file (paths are relative to {os.getcwd()}).")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    names = report_lib.block_names(text)
    if not names:
        raise app.UsageError(
            f"--update_markdown: {path} has no <!-- report:NAME begin --> ... <!-- report:NAME end --> markers; insert "
            f"a pair once where a generated block belongs (NAME one of {', '.join(BLOCKS)})."
        )
    unknown = [name for name in names if name not in BLOCKS]
    if unknown:
        raise app.UsageError(f"--update_markdown: {path} marks unknown block(s) {unknown}; known: {', '.join(BLOCKS)}.")
    updated = text
    for name in names:
        try:
            generated = f"_Generated by `{_command(markdown=path)}` from the runs; never edit it by hand._"
            updated = report_lib.replace_block(updated, name, f"{generated}\n\n{BLOCKS[name](collected)}")
        except report_lib.ReportError as error:
            raise app.UsageError(f"--update_markdown: {path}: {error}") from None
    if updated != text:
        artifacts.atomic_write_text(path, updated)
    return {"path": os.path.abspath(path), "blocks": names, "changed": updated != text}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Pass everything as --flags (see --helpfull).")
    if not RUNS.value:
        raise app.UsageError("--runs is required: a folder of run directories, or NAME=DIR pairs.")
    if not OUT.value and not UPDATE_MARKDOWN.value:
        raise app.UsageError("Nothing to write: give --out=REPORT.md and/or --update_markdown=FILE.md.")
    if OUT.value and not OUT.value.endswith(".md"):
        raise app.UsageError(f"--out={OUT.value} must be a Markdown file (.md).")
    try:
        found = report_lib.find_runs(RUNS.value)
    except report_lib.ReportError as error:
        raise app.UsageError(str(error)) from None
    collected = [report_lib.collect_run(name, model_dir) for name, model_dir in found]
    skipped = [f"{path}: {reason}" for run in collected for path, reason in run["skipped"]]
    for line in skipped:
        logging.warning("Skipped %s", line)
    summary = {"runs": [run["name"] for run in collected], "skipped": skipped}
    if OUT.value:
        figures = _figures(collected, OUT.value)
        folder = os.path.dirname(os.path.abspath(OUT.value))
        links = {name: os.path.relpath(path, folder) for name, path in figures.items()}
        artifacts.atomic_write_text(OUT.value, report_lib.render_report(collected, links, _command()))
        summary.update(out=os.path.abspath(OUT.value), figures=sorted(figures.values()))
    if UPDATE_MARKDOWN.value:
        summary["updated"] = [_update_markdown(path, collected) for path in UPDATE_MARKDOWN.value]
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    cli.run(main, flags.FLAGS, lambda: cli.LoggingOptions(VERBOSE.value, bool(flags.FLAGS["verbosity"].present)))
