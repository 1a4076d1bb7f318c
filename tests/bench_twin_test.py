"""`python -m crvae_tf.bench --twin=...`: the side-by-side ratios against the PyTorch twin. The twin here is a stand-in
script that records its arguments (the real one needs torch); our side's subprocess is replaced by canned results, so
the test checks the contract: which commands run, with matching budgets, in alternating order, and the ratios."""

import json
import os
import shutil
import sys
import tempfile
import unittest
from unittest import mock

from absl import app

from crvae_tf import bench

import testing_utils

FAKE_TWIN = """
import json, sys
with open(sys.argv[0] + ".log", "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
mode = sys.argv[1]
rate = 100.0 if "--bf16" not in sys.argv else 200.0
print("diagnostics go to stderr", file=sys.stderr)
print(json.dumps({"importance_samples_per_s": 400.0} if mode == "nll" else {"img_per_s": rate,
                  "achieved_gflops": rate * 1.76}))
"""
PEAKS = {"float32": 200.0, "bfloat16": 400.0}

OURS = {
    "train_float32": {"img_per_s": 80.0, "gflop_per_s": 140.8, "cpu_utilization": 1.95},
    # our process kept to one of two cores
    "train_mixed_bfloat16": {"img_per_s": 190.0, "gflop_per_s": 334.4, "cpu_utilization": 1.0},
    "nll": {"samples_per_s": 440.0},
}


class TwinRatioTest(unittest.TestCase):
    def setUp(self):
        self.folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)
        self.twin = os.path.join(self.folder, "torch_twin.py")
        with open(self.twin, "w") as f:
            f.write(FAKE_TWIN)
        self.ours_commands = []
        self.real_last_json = bench._last_json

    def _last_json(self, command, what):
        if command[1] == self.twin:
            return self.real_last_json(command, what)  # the stand-in twin runs for real
        self.ours_commands.append(command)
        name = "nll" if "--nll" in command else "train_float32"
        if any("mixed_bfloat16" in part for part in command):
            name = "train_mixed_bfloat16"
        return OURS[name]

    def test_ratios_budgets_and_order(self):
        argv = ["bench", f"--twin={self.twin}", f"--twin_python={sys.executable}", "--twin_rounds=2", "--steps=7"]
        argv += ["--warmup=2", "--batch_size=64", "--nll_samples=500", "--nll_images=8"]
        with mock.patch.object(bench, "_last_json", side_effect=self._last_json):
            with mock.patch.object(bench.os, "cpu_count", return_value=2):
                with mock.patch.object(bench, "matmul_peak_gflop_per_s", side_effect=PEAKS.get) as peak:
                    stdout = testing_utils.run_main(bench.main, argv)
        self.assertEqual([c.args for c in peak.call_args_list], [("float32",), ("bfloat16",)])  # once each, first
        rows = [json.loads(line) for line in stdout.strip().splitlines()]
        self.assertEqual(rows.pop(0)["matmul_peak_gflop_per_s"], PEAKS)
        summaries = {r["comparison"]: r for r in rows[6:]}
        rows = rows[:6]
        self.assertEqual([r["comparison"] for r in rows], ["train_float32", "train_mixed_bfloat16", "nll"] * 2)
        self.assertEqual(list(summaries), ["train_float32", "train_mixed_bfloat16", "nll"])
        self.assertTrue(all(r["summary"] for r in summaries.values()))
        self.assertEqual(summaries["nll"]["rounds"], 2)
        self.assertEqual(summaries["nll"]["rounds_used"], 2)
        self.assertAlmostEqual(summaries["nll"]["ratio_geomean"], 1.1)
        self.assertTrue(summaries["nll"]["order_balanced"])
        # Every bfloat16 round was flagged (one core used): none enters the summary.
        self.assertEqual(summaries["train_mixed_bfloat16"]["rounds_used"], 0)
        self.assertIsNone(summaries["train_mixed_bfloat16"]["ratio_geomean"])
        # Each training row: both sides' GFLOP/s over the peak of its precision; the NLL row has none.
        self.assertAlmostEqual(summaries["train_float32"]["ours_fraction_of_peak_mean"], 0.704)  # 140.8 / 200
        self.assertAlmostEqual(summaries["train_float32"]["twin_fraction_of_peak_mean"], 0.88)  # 176 / 200
        self.assertNotIn("ours_fraction_of_peak_mean", summaries["nll"])
        by_name = {r["comparison"]: r for r in rows[:3]}
        self.assertAlmostEqual(by_name["train_mixed_bfloat16"]["ours_fraction_of_peak"], 0.836)  # 334.4 / 400
        self.assertAlmostEqual(by_name["train_mixed_bfloat16"]["twin_fraction_of_peak"], 0.88)  # 352 / 400
        self.assertAlmostEqual(by_name["train_float32"]["twin_gflop_per_s"], 176.0)
        self.assertNotIn("ours_fraction_of_peak", by_name["nll"])
        self.assertAlmostEqual(by_name["train_float32"]["ratio"], 0.8)
        self.assertAlmostEqual(by_name["train_mixed_bfloat16"]["ratio"], 0.95)
        self.assertAlmostEqual(by_name["nll"]["ratio"], 1.1)
        self.assertEqual([r["first"] for r in rows], ["twin"] * 3 + ["ours"] * 3)
        for row in rows:  # 2 cores (patched): a process that used 1.0 of them gets a warning, 1.95 none
            self.assertEqual(row["ours_cpu_utilization"], OURS[row["comparison"]].get("cpu_utilization"))
            self.assertEqual("warning" in row, row["comparison"] == "train_mixed_bfloat16", row)
        with open(self.twin + ".log") as f:
            twin_args = [json.loads(line) for line in f]
        self.assertEqual(len(twin_args), 6)
        train, bf16, nll = twin_args[:3]
        self.assertEqual(train[:4], ["train", "--model", "crvae", "--fast"])
        self.assertIn("--bf16", bf16)
        self.assertNotIn("--bf16", train)
        # The twin drops 3 warm-up steps itself: 7 timed steps on both sides, the same batch, K and images.
        self.assertEqual(train[train.index("--steps") + 1], "10")
        self.assertEqual(train[train.index("--batch") + 1], "64")
        self.assertEqual((nll[nll.index("--k") + 1], nll[nll.index("--images") + 1]), ("500", "8"))
        ours_train, ours_bf16, ours_nll = self.ours_commands[:3]
        for flag in ("--steps=7", "--warmup=2", "--batch_size=64", "--models=crvae"):
            self.assertIn(flag, ours_train)
        self.assertIn("--gin_bindings=model.precision='mixed_bfloat16'", ours_bf16)
        self.assertTrue({"--nll", "--nll_samples=500", "--nll_images=8"} <= set(ours_nll))

    def test_summaries_take_the_geometric_mean_of_unflagged_rounds_by_order(self):
        rows = [
            {"comparison": "a", "ratio": 0.9, "first": "twin"},
            {"comparison": "a", "ratio": 1.1, "first": "ours"},
            {"comparison": "a", "ratio": 0.5, "first": "twin", "warning": "scheduler"},
            {"comparison": "a", "ratio": 1.0, "first": "twin"},
            {"comparison": "b", "ratio": 2.0, "first": "twin"},
        ]
        a, b = bench.twin_summaries(rows)
        self.assertEqual((a["rounds"], a["rounds_used"]), (4, 3))
        self.assertAlmostEqual(a["ratio_geomean"], round((0.9 * 1.1 * 1.0) ** (1 / 3), 3))
        self.assertEqual((a["ratio_min"], a["ratio_max"]), (0.9, 1.1))
        self.assertAlmostEqual(a["ratio_geomean_twin_first"], round((0.9 * 1.0) ** 0.5, 3))
        self.assertAlmostEqual(a["ratio_geomean_ours_first"], 1.1)
        self.assertFalse(a["order_balanced"])  # two twin-first rounds used, one ours-first
        self.assertEqual((b["comparison"], b["ratio_geomean"], b["ratio_geomean_ours_first"]), ("b", 2.0, None))

    def test_matmul_peak_is_two_n_cubed_over_the_best_time(self):
        clock = iter([0.0, 0.5, 1.0, 1.25, 2.0, 2.4])  # three timed products: 0.5 s, 0.25 s, 0.4 s
        with mock.patch.object(bench.time, "perf_counter", side_effect=lambda: next(clock)):
            peak = bench.matmul_peak_gflop_per_s("float32", side=1000, repeats=3)
        self.assertEqual(peak, 8.0)  # 2 * 1000^3 / 0.25 s
        self.assertGreater(bench.matmul_peak_gflop_per_s("bfloat16", side=64, repeats=2), 0.0)  # really runs

    def test_usage_errors(self):
        with self.assertRaisesRegex(app.UsageError, "--twin_python"):
            testing_utils.run_main(bench.main, ["bench", f"--twin={self.twin}"])
        with self.assertRaisesRegex(app.UsageError, "is not a file"):
            testing_utils.run_main(bench.main, ["bench", "--twin=/nonexistent.py", f"--twin_python={sys.executable}"])

    def test_a_failing_side_names_its_command(self):
        with open(self.twin, "w") as f:
            f.write("import sys\nprint('torch missing', file=sys.stderr)\nsys.exit(3)\n")
        with self.assertRaisesRegex(RuntimeError, r"twin side of train_float32 failed \(exit 3\).*torch missing"):
            testing_utils.run_main(bench.main, ["bench", f"--twin={self.twin}", f"--twin_python={sys.executable}"])


if __name__ == "__main__":
    unittest.main()
