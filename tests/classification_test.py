"""Table 2's path end to end on generated STL-10 files (issue #15): the reader -> training the semi-supervised VAE-GAN
recipe (shrunk) on fold 0 -> per-fold evaluation with checkpoint selection on validation accuracy (each fold through
`python -m crvae_tf.evaluate --metrics=classification`) -> the Table 2 line (mean and std over the folds) of the
report (`python -m crvae_tf.evaluate --report`). Fold 1's run reuses fold 0's weights under fold 1's config, so the
test trains once. And scripts/stl10_table2.sh's commands (a stand-in interpreter records them)."""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

from absl import app
import gin
import numpy as np
import stl10_testing

from crvae_tf import evaluate
from crvae_tf import runs
from crvae_tf.training import loop

import testing_utils

RECIPE = os.path.join(testing_utils.GIN_DIR, "stl10_vae_gan.gin")


class Table2PathTest(testing_utils.GinTestCase):
    def test_reader_training_per_fold_evaluation_and_table_line(self):
        root = self.get_temp_dir()
        folder = stl10_testing.write_colour_folder(os.path.join(root, "stl10_binary"), fold_size=10)
        model_dir = os.path.join(root, "fold0")
        bindings = (
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("fc")
            + testing_utils.TINY_ADVERSARIAL_BINDINGS
            + [
                f"dataset.local_path = '{folder}'",
                "dataset.fold = 0",
                "dataset.resolution = 64",
                "dataset.labeled_batch_size = 4",
                "train.max_steps = 2",
                "train.checkpoint_every_steps = 1",
                "train.validation_every_steps = 2",
                "train.image_every_steps = 1000",
            ]
        )
        runs.parse_gin([RECIPE], bindings)
        try:
            result = loop.train(model_dir)
        finally:
            gin.clear_config()
        self.assertIn("classification_accuracy", result["train"])
        # Fold 1's run: fold 0's weights under fold 1's config (its own labeled fold, validation split and file
        # names), so the test trains once; the evaluation and the table treat it as any run of fold 1.
        model_dirs = [model_dir, os.path.join(root, "fold1")]
        shutil.copytree(model_dir, model_dirs[1])
        for name in ("config.gin", "operative_config.gin"):
            path = os.path.join(model_dirs[1], name)
            with open(path) as f:
                text = f.read()
            self.assertIn("dataset.fold = 0", text)
            with open(path, "w") as f:
                f.write(text.replace("dataset.fold = 0", "dataset.fold = 1"))

        # Each fold through `evaluate --metrics=classification` (checkpoint selection on validation accuracy).
        per_fold = []
        for model_dir in model_dirs:
            argv = ["evaluate", f"--model_dir={model_dir}", "--metrics=classification"]
            per_fold.append(json.loads(testing_utils.run_main(evaluate.main, argv).splitlines()[-1]))
        self.assertEqual([(r["metric"], r["fold"]) for r in per_fold], [("classification", 0), ("classification", 1)])
        for result in per_fold:
            self.assertTrue(os.path.basename(result["path"]).startswith(f"classification-fold{result['fold']}-step"))
            with open(result["path"]) as f:
                self.assertEqual(json.load(f)["test_accuracy"], result["test_accuracy"])
            self.assertEqual(set(result["validation_by_step"]), {"1", "2"})  # both kept checkpoints compared
            self.assertEqual(result["validation_accuracy"], max(result["validation_by_step"].values()))
            self.assertEqual((result["num_test"], result["num_validation"]), (40, 50))

        # The Table 2 line: the report pools the folds of the model (mean and sample std, %), the paper's beside it.
        out = os.path.join(root, "table2.md")
        report = ["evaluate", f"--report={root}", f"--report_out={out}"]
        summary = json.loads(testing_utils.run_main(evaluate.main, report).splitlines()[-1])
        self.assertEqual(summary["runs"], ["fold0", "fold1"])
        percent = 100 * np.array([r["test_accuracy"] for r in per_fold])
        expected = (
            f"| Standard VAE (74.91) | fold0, fold1 | {np.mean(percent):.2f} ± {np.std(percent, ddof=1):.2f} | "
            f"2: 0 {percent[0]:.2f}, 1 {percent[1]:.2f} |"
        )
        with open(out) as f:
            table = f.read()
        self.assertIn(expected, table)
        # The same fold twice is refused (it would count twice); a missing run directory is a path error.
        with self.assertRaisesRegex(app.UsageError, "fold 0 of the vae_gan runs appears in runs 'a' and 'b'"):
            twice = [f"--report=a={model_dirs[0]},b={model_dirs[0]}", f"--report_out={out}"]
            testing_utils.run_main(evaluate.main, ["evaluate", *twice])
        with open(out) as f:
            self.assertEqual(f.read(), table)
        with self.assertRaises(NotADirectoryError):
            missing = os.path.join(root, "none")
            testing_utils.run_main(evaluate.main, ["evaluate", f"--model_dir={missing}", "--metrics=classification"])


class Table2ScriptTest(unittest.TestCase):
    def test_the_script_trains_every_fold_evaluates_the_new_ones_and_writes_the_report(self):
        """scripts/stl10_table2.sh with a stand-in interpreter that records its commands: a fold that already has
        its classification result is not evaluated again; the report (Table 2) comes last."""
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root)
        log = os.path.join(root, "commands.log")
        fake_python = os.path.join(root, "python")
        with open(fake_python, "w") as f:
            f.write(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
        os.chmod(fake_python, 0o755)
        os.makedirs(os.path.join(root, "runs", "fold1", "eval"))
        open(os.path.join(root, "runs", "fold1", "eval", "classification-fold1-step7.json"), "w").close()
        runs_root = os.path.join(root, "runs")
        subprocess.run(
            [os.path.join(testing_utils.REPO, "scripts", "stl10_table2.sh"), RECIPE, "/data/stl10", runs_root],
            env=dict(os.environ, PY=fake_python, FOLDS="0 1", BINDINGS="train.max_steps=2"),
            check=True,
            capture_output=True,
            timeout=60,
        )
        with open(log) as f:
            commands = f.read().splitlines()
        train = (
            f"-m crvae_tf.train --gin_file={RECIPE} --model_dir={runs_root}/fold{{k}} "
            "--gin_bindings=dataset.local_path='/data/stl10' --gin_bindings=dataset.fold={k} "
            "--gin_bindings=train.max_steps=2"
        )
        self.assertEqual(
            commands,
            [
                train.format(k=0),
                f"-m crvae_tf.evaluate --model_dir={runs_root}/fold0 --metrics=classification",
                train.format(k=1),
                f"-m crvae_tf.evaluate --report={runs_root} --report_out={runs_root}/table2.md",
            ],
        )


if __name__ == "__main__":
    import tensorflow as tf

    tf.test.main()
