"""The reproduction report (`python -m crvae_tf.evaluate --report`, `evaluation.report_lib`) on a fabricated runs
folder: hand-written
run.json / progress.json / config.gin / eval JSONs / per-image .npz and a tiny TensorBoard event file."""

import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import tensorflow as tf

from crvae_tf import cli
from crvae_tf import evaluate
from crvae_tf import runs
from crvae_tf.evaluation import report_lib

import testing_utils

SHA = "ab" * 32


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _json(path, value):
    _write(path, json.dumps(value))


def _fake_run(root, name, head_bindings, log_likelihood, curve=None, info_extra=None):
    """A run directory as train + evaluate leave it, with a K=100 NLL on len(log_likelihood) test images."""
    model_dir = os.path.join(root, name)
    info = {"format": runs.RUN_FORMAT, "family": "VAE", "max_steps": 30, "batch_size": 8, "steps_per_epoch": 10}
    _json(os.path.join(model_dir, "run.json"), {**info, **(info_extra or {})})
    _json(os.path.join(model_dir, "progress.json"), {"step": 30, "train_seconds": 600.0})
    _write(
        os.path.join(model_dir, "config.gin"),
        "dataset.name = 'mnist'\nmodel.precision = 'mixed_bfloat16'\ntrain.seed = 3\ntrain.num_validation_images = 16\n"
        + head_bindings,
    )
    ll = np.asarray(log_likelihood, np.float64)
    stem = os.path.join(model_dir, "eval", "test-step30-k100-n4")
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    np.savez(stem + ".npz", log_likelihood=ll, elbo=ll - 5, iwae_5=ll - 1)
    summary = {
        "nll": -float(ll.mean()),
        "nll_stderr": float(ll.std(ddof=1) / 2),
        "elbo": float(ll.mean() - 5),
        "iwae_5": float(ll.mean() - 1),
        "num_importance_samples": 100,
        "split": "test",
        "step": 30,
        "checkpoint": "best",
        "num_images": 4,
        "num_images_in_split": 10,
        "precision": "float32",
        "data_sha256": SHA,
        "finished_utc": "2026-12-01T00:23:33+00:00",
    }
    _json(stem + ".json", summary)
    if curve:
        with tf.summary.create_file_writer(os.path.join(model_dir, "tb", "validation")).as_default():
            for step, value in curve:
                tf.summary.scalar("iwae_5", value, step=step)
    return model_dir


class ReportTest(testing_utils.GinTestCase):
    def setUp(self):
        super().setUp()
        self.root = os.path.join(self.get_temp_dir(), "runs")
        self.vae_ll = np.array([-100.0, -90.0, -110.0, -95.0])
        self.crvae_ll = np.array([-96.0, -91.0, -104.0, -93.5])
        _fake_run(self.root, "vae", "latent_head.kind = 'fc'\n", self.vae_ll, curve=[(10, -150.0), (20, -140.5)])
        self.crvae_dir = _fake_run(
            self.root,
            "crvae",
            "latent_head.kind = 'channel_recurrent'\nlatent_head.recurrent_inference = True\n",
            self.crvae_ll,
            curve=[(10, -145.0), (20, -141.0), (30, -141.25)],
            info_extra={"git_commit": "0123456789abcdef0123", "hardware": {"cpu_count": 2, "machine": "x86_64"}},
        )
        evals = os.path.join(self.crvae_dir, "eval")
        _write(os.path.join(evals, "broken.json"), '{"nll": 1')  # a write cut short
        _json(os.path.join(evals, "nan.json"), {"nll": "NaN"})
        _json(os.path.join(evals, "a_list.json"), [1, 2])
        gan = os.path.join(self.root, "crvae_gan")
        _json(os.path.join(gan, "run.json"), {"format": runs.RUN_FORMAT, "family": "VAEGAN", "steps_per_epoch": 10})
        _write(os.path.join(gan, "config.gin"), "dataset.name = 'stl10'\nlatent_head.kind = 'channel_recurrent'\n")
        network = {"name": "tiny", "sha256": "cd" * 32, "is_proxy": True}
        for step, fid in ((10, 40.0), (30, 25.5)):
            _json(
                os.path.join(gan, "eval", f"sample_quality-step{step}.json"),
                {"proxy_fid": fid, "proxy_kid_mean": 0.0123, "proxy_kid_sem": 0.0004, "step": step,
                 "network": network, "num_real": 64, "num_fake": 64, "classifier_sample_confidence": 0.75,
                 "budget": {"wall_time_s": 90.0}},
            )  # fmt: skip
        for fold, step, accuracy in ((0, 5, 0.6), (0, 10, 0.7), (1, 10, 0.8)):  # fold 0: its latest step counts
            _json(
                os.path.join(gan, "eval", f"classification-fold{fold}-step{step}.json"),
                {"fold": fold, "step": step, "test_accuracy": accuracy, "validation_accuracy": 0.5},
            )
        _json(  # explore --mode=disentangle's summary layout
            os.path.join(self.crvae_dir, "explore", "disentangle-step30.json"),
            {
                "step": 30,
                "metrics": {"mig": 0.125, "sap": 0.5, "per_factor": {"mig": [0.1]}},
                "factor_names": ["shape", "scale"],
                "dominant_time_step": {"explained": {"shape": 1, "scale": 3}},
                "num_time_steps": 8,
                "num_test": 64,
            },
        )
        _json(os.path.join(evals, "mystery.json"), {"foo": 1.5, "bar": {"baz": 2}})

    def test_report_of_a_fabricated_runs_folder(self):
        out = os.path.join(self.get_temp_dir(), "docs", "results.md")
        printed = testing_utils.run_main(evaluate.main, ["evaluate", f"--report={self.root}", f"--report_out={out}"])
        summary = json.loads(printed.strip().splitlines()[-1])
        self.assertEqual(summary["runs"], ["crvae", "crvae_gan", "vae"])
        with open(out) as f:
            text = f.read()
        self.assertIn(f"Generated by `python -m crvae_tf.evaluate --report={self.root} --report_out={out}`", text)

        # Table 1: the paper's row and number, ours with its stderr (NumPy oracle), the estimate's budget.
        vae_nll, vae_se = -self.vae_ll.mean(), self.vae_ll.std(ddof=1) / 2
        self.assertIn("| standard VAE (82.04) | vae (`mnist_vae.gin`) | 30 of 30 steps (3.00 epochs), 10.0 min", text)
        self.assertIn(f"**{vae_nll:.2f}** ± {vae_se:.2f}", text)
        self.assertIn("K = 100; 4 of 10 images; step 30 (best); estimated in float32", text)
        self.assertIn("| crVAE, recurrency at both (80.84) | crvae (`mnist_crvae.gin`)", text)
        self.assertIn("`mnist_cvae.gin`: not run", text)
        self.assertIn("on 16 images: −150.00 (10), **−140.50 (20, best)**", text)  # the validation curve's points
        self.assertIn("**−141.00 (20, best)**, −141.25 (30)", text)
        stamp = report_lib._utc_of_mtime(os.path.join(self.crvae_dir, "progress.json"))
        self.assertIn(f"mixed_bfloat16 | 0123456789ab; not recorded; {stamp} |", text)  # precision, commit, dates
        self.assertIn("| not recorded; not recorded; ", text)  # the VAE records neither commit nor start

        self.assertIn(
            "| vae | eval/test-step30-k100-n4.json (Table 1) | test | 30 | 100 | 4 | ", text
        )  # every estimate

        # Paired difference crVAE - VAE, against a by-hand oracle.
        d = (-self.crvae_ll) - (-self.vae_ll)
        mean, se = d.mean(), math.sqrt(np.sum((d - d.mean()) ** 2) / 3) / 2
        self.assertIn(f"| crvae − vae | {mean:.2f} ± {se:.2f} | 3 of 4 |".replace("-", "−"), text)

        # Table 2 (mean ± std over the folds, %), sample quality, disentanglement, the unknown kind.
        folds_std = np.std([70.0, 80.0], ddof=1)
        self.assertIn(f"| crVAE (75.86) | crvae_gan | 75.00 ± {folds_std:.2f} | 2: 0 70.00, 1 80.00 |", text)
        self.assertIn(
            "proxy_fid 25.50; proxy_kid_mean 0.0123 ± 0.0004 | sample_confidence 0.750 | "
            "tiny cdcdcdcdcdcd (proxy) | 64 / 64 | 1.5 min |",
            text,
        )
        disentangled = "| crvae | explore/disentangle-step30.json | 30 | mig 0.125, sap 0.500 | shape, scale |"
        self.assertIn(disentangled + " shape 1, scale 3 | 8 | 64 |", text)
        self.assertIn("| crvae | eval/mystery.json | – | foo 1.5000, bar.baz 2 |", text)

        # Damaged files: named with the reason, skipped, never fatal.
        self.assertIn("broken.json`: not valid JSON", text)
        self.assertIn("nan.json`: a likelihood result whose 'nll' is 'NaN', not a number", text)
        self.assertIn("a_list.json`: a JSON list, not an object", text)
        self.assertEqual(len(summary["skipped"]), 3)

        # Figures beside the report, linked relatively.
        self.assertIn("![validation curves of every run](results_curves.png)", text)
        self.assertIn("![FID over training](results_fid.png)", text)
        for name in ("results_curves.png", "results_fid.png"):
            with open(os.path.join(os.path.dirname(out), name), "rb") as f:
                self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_marked_blocks_are_regenerated_idempotently_and_nothing_else_changes(self):
        before = (
            "# Notes\n\nProse the lead wrote.\n\n<!-- report:table1 begin -->\nold table\n<!-- report:table1 end -->\n"
        )
        after = "\nMore prose, kept byte for byte.\n"
        path = os.path.join(self.get_temp_dir(), "README.md")
        _write(path, before + after)
        argv = ["evaluate", f"--report=vae={self.root}/vae,crvae={self.crvae_dir}", f"--update_markdown={path}"]
        first = json.loads(testing_utils.run_main(evaluate.main, argv).strip().splitlines()[-1])
        self.assertEqual(first["updated"][0]["blocks"], ["table1"])
        self.assertTrue(first["updated"][0]["changed"])
        with open(path) as f:
            once = f.read()
        self.assertTrue(once.startswith(before.split("<!-- report:table1 begin -->")[0]))
        self.assertTrue(once.endswith("<!-- report:table1 end -->\n" + after))
        self.assertIn("| standard VAE (82.04) | vae (`mnist_vae.gin`)", once)
        self.assertIn(
            f"_Generated by `python -m crvae_tf.evaluate --report=vae={self.root}/vae,crvae={self.crvae_dir} "
            f"--update_markdown={path}` from the runs",
            once,
        )
        self.assertNotIn("old table", once)
        second = json.loads(testing_utils.run_main(evaluate.main, argv).strip().splitlines()[-1])
        self.assertFalse(second["updated"][0]["changed"])
        with open(path) as f:
            self.assertEqual(f.read(), once)
        self.assertEqual(report_lib.replace_block(once, "table1", "x"), report_lib.replace_block(once, "table1", "x\n"))

        # A file without markers, or with a broken pair: a usage error naming the fix; nothing written.
        plain = os.path.join(self.get_temp_dir(), "plain.md")
        _write(plain, "no markers\n")
        with self.assertRaisesRegex(Exception, "no <!-- report:NAME begin -->") as caught:
            testing_utils.run_main(evaluate.main, ["evaluate", f"--report={self.root}", f"--update_markdown={plain}"])
        self.assertEqual(cli.message_and_code(caught.exception)[1], cli.EXIT_USAGE)
        with self.assertRaisesRegex(report_lib.ReportError, "exactly one"):
            report_lib.replace_block("<!-- report:table1 end --><!-- report:table1 begin -->", "table1", "x")

    def test_the_binary_reports_bad_input_in_one_line(self):
        """Through `python -m` (the cli wiring): a missing --report folder is one line on stderr, exit status 5."""
        missing = os.path.join(self.get_temp_dir(), "nowhere")
        result = subprocess.run(
            [sys.executable, "-m", "crvae_tf.evaluate", f"--report={missing}", "--report_out=x.md"],
            cwd=testing_utils.REPO,
            env={k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"},  # the binary's quiet start
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(result.returncode, cli.EXIT_PATH, msg=result.stderr[-2000:])
        self.assertEqual(result.stderr, f"crvae_tf.evaluate: error: --report={missing} is not a directory "
                         f"(paths are relative to {testing_utils.REPO}).\n")  # fmt: skip
        self.assertFalse(os.path.exists(os.path.join(testing_utils.REPO, "x.md")))

    def test_bad_input_is_one_clear_error(self):
        missing = os.path.join(self.get_temp_dir(), "nowhere")
        with self.assertRaisesRegex(FileNotFoundError, "is not a directory") as caught:
            testing_utils.run_main(evaluate.main, ["evaluate", f"--report={missing}", "--report_out=/tmp/x.md"])
        self.assertEqual(cli.message_and_code(caught.exception)[1], cli.EXIT_PATH)
        empty = os.path.join(self.get_temp_dir(), "empty")
        os.makedirs(empty)
        with self.assertRaisesRegex(Exception, "holds no run directory") as caught:
            testing_utils.run_main(evaluate.main, ["evaluate", f"--report={empty}", "--report_out=/tmp/x.md"])
        self.assertEqual(cli.message_and_code(caught.exception)[1], cli.EXIT_USAGE)
        out = os.path.join(self.get_temp_dir(), "never_written.md")
        # One fold of a model in two runs would count twice in Table 2: refused, naming both runs.
        gan = os.path.join(self.root, "crvae_gan")
        with self.assertRaisesRegex(Exception, "fold 0 of the crvae_gan runs appears in runs 'a' and 'b'") as caught:
            testing_utils.run_main(evaluate.main, ["evaluate", f"--report=a={gan},b={gan}", f"--report_out={out}"])
        self.assertEqual(cli.message_and_code(caught.exception)[1], cli.EXIT_USAGE)
        usage_errors = {
            "--report_out belongs to the report": [f"--report_out={out}"],
            "nothing to write": [f"--report={self.root}"],
            "must be a Markdown file": [f"--report={self.root}", f"--report_out={out[:-3]}.txt"],
            "drop --curves, --model_dir": [f"--report={self.root}", f"--report_out={out}", f"--model_dir={gan}"],
        }
        for message, flags in usage_errors.items():
            with self.assertRaisesRegex(Exception, message) as caught:
                testing_utils.run_main(evaluate.main, ["evaluate", *flags])
            self.assertEqual(cli.message_and_code(caught.exception)[1], cli.EXIT_USAGE)
        self.assertFalse(os.path.exists(out))

    def test_recipe_inference_and_new_runs_record_their_provenance(self):
        cases = {
            "mnist_vae": {"latent_head.kind": "fc"},
            "mnist_bcvae": {"latent_head.kind": "block_fc"},
            "mnist_crvae_inference": {
                "latent_head.kind": "channel_recurrent",
                "latent_head.recurrent_generation": False,
            },
            "mnist_crvae_generation": {
                "latent_head.kind": "channel_recurrent",
                "latent_head.recurrent_inference": False,
            },
            "mnist_crvae_iwae40": {"latent_head.kind": "channel_recurrent", "model.num_importance_samples": 40},
        }
        for recipe, bindings in cases.items():
            self.assertEqual(report_lib.infer_recipe({"dataset.name": "mnist", **bindings}, "VAE"), recipe)
        self.assertIsNone(report_lib.infer_recipe({"dataset.name": "celeba", "latent_head.kind": "fc"}, "VAE"))

        model_dir = os.path.join(self.get_temp_dir(), "new_run")
        model = types.SimpleNamespace(image_shape=(28, 28, 1), latent_dim=8, num_time_steps=1)
        info = runs.write_run_info(model_dir, model, max_steps=5, batch_size=2, steps_per_epoch=3)
        self.assertEqual(info, runs.read_run_info(model_dir))
        if os.path.exists(os.path.join(testing_utils.REPO, ".git")):
            self.assertRegex(info["git_commit"], r"^[0-9a-f]{40}(-dirty)?$")
        else:  # a copy of the tree: the commit only from the environment
            self.assertEqual(info["git_commit"], os.environ.get(runs.COMMIT_ENV) or None)
        self.assertRegex(info["started_utc"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$")
        self.assertEqual(info["hardware"]["cpu_count"], os.cpu_count())


if __name__ == "__main__":
    tf.test.main()
