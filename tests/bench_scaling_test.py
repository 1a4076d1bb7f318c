"""`python -m crvae_tf.bench --scaling`: images/s of training on R devices (MirroredStrategy) over one device at the
same global batch. The contract (which child processes run, with which flags, and the row's arithmetic) with the
children replaced by canned JSON; one real run of the replicated child on a tiny crVAE over 2 logical CPU devices."""

import json
import math
import os
import sys
import unittest
from unittest import mock

from absl import app

from crvae_tf import bench
from crvae_tf import runs

import testing_utils

# Canned child results: (one device, R devices) per device kind.
ONE = {"img_per_s": 100.0, "cpu_utilization": 1.9}
REPLICATED_CPU = {
    "img_per_s": 90.0,
    "cpu_utilization": 1.2,  # below 90% of the 2 (patched) cores: the row gets a warning
    "device_kind": "logical CPU devices on 2 cores",
    "gpus_available": 0,
    "devices": ["/cpu:0", "/cpu:1", "/cpu:2", "/cpu:3"],
    "batch_size": 64,
    "precision": "float32",
    "steps": 3,
}
REPLICATED_GPU = dict(REPLICATED_CPU, img_per_s=300.0, cpu_utilization=1.95, device_kind="GPU", gpus_available=4)

# The crVAE recipe shrunk to milliseconds per step (testing_utils.TINY_BINDINGS' widths, the tiny latent head).
TINY_CRVAE = ["encoder.base_channels = 4", "decoder.base_channels = 4"] + testing_utils.tiny_head_bindings(
    "channel_recurrent"
)


class ScalingContractTest(unittest.TestCase):
    def setUp(self):
        self.commands = []

    def _fake(self, replicated):
        def last_json(command, what):
            self.commands.append(command)
            side = [part for part in command if part.startswith("--scaling_side=")]
            self.assertEqual(len(side), 1, command)
            self.assertIn(side[0].split("=")[1], what)
            return replicated if side[0] == "--scaling_side=replicated" else ONE

        return last_json

    def _run(self, replicated, extra=()):
        argv = ["bench", "--scaling", "--models=crvae,vae", "--steps=3", "--warmup=1", "--batch_size=64"]
        argv += ["--scaling_replicas=4", "--gin_bindings=latent_head.hidden_units = 16", *extra]
        argv += [f"--gin_dir={testing_utils.GIN_DIR}"]
        with mock.patch.object(bench, "_last_json", side_effect=self._fake(replicated)):
            with mock.patch.object(bench.os, "cpu_count", return_value=2):
                stdout = testing_utils.run_main(bench.main, argv)
        return [json.loads(line) for line in stdout.strip().splitlines()]

    def test_flags_reach_both_children_of_each_variant(self):
        rows = self._run(REPLICATED_CPU)
        self.assertEqual([r["model"] for r in rows], ["crvae", "vae"])
        sides = [next(p for p in c if p.startswith("--scaling_side=")) for c in self.commands]
        self.assertEqual(sides, ["--scaling_side=one", "--scaling_side=replicated"] * 2)
        for command, model in zip(self.commands, ["crvae", "crvae", "vae", "vae"]):
            self.assertEqual(command[:3], [sys.executable, "-m", "crvae_tf.bench"])
            for flag in ("--scaling", "--scaling_replicas=4", "--steps=3", "--warmup=1", "--batch_size=64"):
                self.assertIn(flag, command)
            self.assertIn(f"--models={model}", command)
            self.assertIn("--gin_bindings=latent_head.hidden_units = 16", command)
            self.assertIn(f"--gin_dir={testing_utils.GIN_DIR}", command)

    def test_efficiency_on_logical_cpu_devices(self):
        row = self._run(REPLICATED_CPU)[0]
        self.assertEqual((row["img_per_s_1"], row["img_per_s_R"], row["replicas"]), (100.0, 90.0, 4))
        self.assertAlmostEqual(row["scaling_efficiency"], 0.9)
        self.assertNotIn("per_device_efficiency", row)  # logical devices share the cores
        self.assertEqual(row["device_kind"], "logical CPU devices on 2 cores")
        self.assertEqual((row["cpu_utilization_1"], row["cpu_utilization_R"]), (1.9, 1.2))
        self.assertIn("replicated side used 1.2 of 2 cores", row["warning"])
        self.assertNotIn("one-device", row["warning"])

    def test_efficiency_on_gpus(self):
        row = self._run(REPLICATED_GPU)[0]
        self.assertAlmostEqual(row["scaling_efficiency"], 3.0)
        self.assertAlmostEqual(row["per_device_efficiency"], 0.75)
        self.assertEqual((row["device_kind"], row["gpus_available"]), ("GPU", 4))
        self.assertNotIn("warning", row)

    def test_device_kind(self):
        self.assertEqual(bench.scaling_device_kind(0, 2, 2), "logical CPU devices on 2 cores")
        self.assertEqual(bench.scaling_device_kind(1, 2, 16), "logical CPU devices on 16 cores")
        self.assertEqual(bench.scaling_device_kind(2, 2, 16), "GPU")
        self.assertEqual(bench.scaling_device_kind(8, 4, 16), "GPU")

    def test_usage_errors(self):
        cases = [
            (["--scaling_replicas=1"], r"--scaling_replicas=1 must be at least 2"),
            (["--batch_size=7"], r"--batch_size=7 must be a positive multiple of --scaling_replicas=2"),
            (["--steps=0"], r"--steps must be positive"),
            (["--nll"], r"--nll and --scaling are separate modes"),
        ]
        for extra, message in cases:
            with self.subTest(extra=extra):
                with mock.patch.object(bench, "_last_json", side_effect=AssertionError("no child may start")):
                    with self.assertRaisesRegex(app.UsageError, message):
                        testing_utils.run_main(bench.main, ["bench", "--scaling", *extra])

    def test_bad_bindings_fail_before_any_child(self):
        argv = [
            "bench",
            "--scaling",
            f"--gin_dir={testing_utils.GIN_DIR}",
            "--gin_bindings=latent_head.hiden_units = 1",
        ]
        with mock.patch.object(bench, "_last_json", side_effect=AssertionError("no child may start")):
            with self.assertRaisesRegex(runs.ConfigError, "hiden_units"):
                testing_utils.run_main(bench.main, argv)


class ScalingChildTest(unittest.TestCase):
    def test_replicated_child_trains_on_two_logical_cpus(self):
        """The real replicated child (a fresh process) on a tiny crVAE; the one-device side canned."""
        real_last_json = bench._last_json
        children = []

        def last_json(command, what):
            if "--scaling_side=one" in command:
                return ONE
            children.append(real_last_json(command, what))
            return children[-1]

        argv = ["bench", "--scaling", "--models=crvae", "--batch_size=8", "--steps=2", "--warmup=1"]
        argv += [f"--gin_dir={testing_utils.GIN_DIR}"] + [f"--gin_bindings={b}" for b in TINY_CRVAE]
        with mock.patch.object(bench, "_last_json", side_effect=last_json):
            with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}):
                stdout = testing_utils.run_main(bench.main, argv)
        (child,) = children
        self.assertEqual((child["replicas"], child["per_replica_batch_size"]), (2, 4))
        self.assertEqual(child["devices"], ["/cpu:0", "/cpu:1"])
        self.assertGreater(child["synchronized_layers"], 0)  # the recipe's synchronized batch statistics
        row = json.loads(stdout.strip().splitlines()[-1])
        self.assertTrue(math.isfinite(row["img_per_s_R"]) and row["img_per_s_R"] > 0, row)
        self.assertAlmostEqual(row["scaling_efficiency"], round(row["img_per_s_R"] / ONE["img_per_s"], 3))
        self.assertEqual(row["device_kind"], f"logical CPU devices on {os.cpu_count()} cores")
        self.assertEqual(row["gpus_available"], 0)


if __name__ == "__main__":
    unittest.main()
