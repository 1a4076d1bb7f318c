"""Learning curves read back from a run's events, against epochs and cumulative training time, and the figure."""

import json
import os
import subprocess
import sys

import numpy as np

from crvae_tf import runs
from crvae_tf.evaluation import learning_curves
from crvae_tf.training import loop

import testing_utils


class LearningCurvesTest(testing_utils.GinTestCase):
    def test_curve_of_a_resumed_run_and_the_figure(self):
        model_dir = os.path.join(self.get_temp_dir(), "run")
        bindings = testing_utils.TINY_BINDINGS + testing_utils.tiny_head_bindings("channel_recurrent")
        bindings += ["train.validation_every_steps = 2", "train.num_validation_images = 16"]
        for max_steps in (4, 6):  # two sittings
            runs.parse_gin([os.path.join(testing_utils.GIN_DIR, "quickstart.gin")], bindings, finalize=False)
            runs.parse_gin([], [f"train.max_steps = {max_steps}"], finalize=False)
            loop.train(model_dir)
        curve = learning_curves.learning_curve(model_dir, "iwae_5")
        self.assertEqual(curve["steps"].tolist(), [2, 4, 6])
        # 8192 training sprites at batch 8: 1024 steps per epoch.
        np.testing.assert_allclose(curve["epochs"], [2 / 1024, 4 / 1024, 6 / 1024])
        self.assertTrue(np.all(np.diff(curve["train_seconds"]) > 0))  # time adds up across the two sittings
        self.assertEqual(runs.read_progress(model_dir)["step"], 6)
        self.assertGreater(runs.read_progress(model_dir)["train_seconds"], curve["train_seconds"][1])
        self.assertTrue(np.all(curve["values"] < 0))  # IWAE-5 in nats: a log-likelihood bound

        out = os.path.join(self.get_temp_dir(), "curves.png")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "crvae_tf.evaluate",
                f"--curves=A={model_dir},B={model_dir}",
                f"--curves_out={out}",
            ],
            cwd=testing_utils.REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(result.returncode, 0, msg=result.stderr[-2000:])
        rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
        self.assertEqual([row.get("run") for row in rows[:2]], ["A", "B"])
        self.assertEqual(rows[0]["last_step"], 6)
        self.assertAlmostEqual(rows[0]["last_value"], round(float(curve["values"][-1]), 3), places=3)
        with open(out, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")

    def test_missing_metric_is_a_clear_error(self):
        model_dir = os.path.join(self.get_temp_dir(), "empty")
        os.makedirs(model_dir)
        with self.assertRaisesRegex(ValueError, "no run.json"):
            learning_curves.learning_curve(model_dir, "iwae_5")
