"""One run, one owner (issue #16): the run-directory lock, one configuration per run, clean command-line errors,
interrupts that checkpoint, umask-honouring files, stale temporary files, and finite-latent checks in the export.

The subprocess tests run the real binaries on the embedded sprites at tiny widths."""

import contextlib
import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from unittest import mock

from absl import flags
import gin
import numpy as np
import tensorflow as tf

from crvae_tf import builders
from crvae_tf import cli
from crvae_tf import evaluate as evaluate_binary
from crvae_tf import export as export_binary
from crvae_tf import locking
from crvae_tf import models
from crvae_tf import runs
from crvae_tf import train as train_binary
from crvae_tf.serving import export_lib
from crvae_tf.training import loop

import testing_utils

QUICKSTART = os.path.join(testing_utils.GIN_DIR, "quickstart.gin")
MNIST_CVAE = os.path.join(testing_utils.GIN_DIR, "mnist_cvae.gin")
# The quickstart recipe shrunk to a few-millisecond model on 64 generated sprites (8 steps per epoch at batch 8).
TINY = [
    "encoder.base_channels = 4",
    "decoder.base_channels = 4",
    "latent_head.latent_channels = 8",
    "latent_head.hidden_units = 16",
    "latent_head.lstm_jit_compile = False",  # as testing_utils.tiny_head_bindings
    "train.batch_size = 8",
    "train.num_image_samples = 4",
    "train.image_every_steps = 1000",
    "dataset.num_sprites = (64, 16, 16)",
]
ENV = dict(os.environ, PYTHONPATH=testing_utils.REPO)
ENV.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the binaries' own quiet start-up


def _train_command(model_dir, bindings, recipe=QUICKSTART):
    return [sys.executable, "-m", "crvae_tf.train", f"--gin_file={recipe}", f"--model_dir={model_dir}"] + [
        f"--gin_bindings={b}" for b in TINY + list(bindings)
    ]


def _run(command, timeout=240):
    return subprocess.run(
        command, env=ENV, capture_output=True, text=True, timeout=timeout, preexec_fn=lambda: os.umask(0o022)
    )


def _snapshot(folder):
    """relative path -> (size, mtime_ns, bytes for small files) of every file under `folder`."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            info = os.stat(path)
            content = open(path, "rb").read() if info.st_size < 100_000 else None
            found[os.path.relpath(path, folder)] = (info.st_size, info.st_mtime_ns, content)
    return found


class OneOwnerTest(testing_utils.GinTestCase):
    def interrupt_after_first_checkpoint(self, command, model_dir, signum, while_running=None):
        """Starts a trainer, waits for its first checkpoint, calls `while_running(process, log_path)`, sends
        `signum` and waits. Returns (exit status, the trainer's output, the interrupted step)."""
        log_path = os.path.join(self.get_temp_dir(), os.path.basename(model_dir) + ".log")
        checkpoints = os.path.join(model_dir, "checkpoints")
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, env=ENV, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.time() + 240
                while time.time() < deadline and process.poll() is None and not tf.train.latest_checkpoint(checkpoints):
                    time.sleep(0.2)
                self.assertIsNone(process.poll(), msg=open(log_path).read()[-3000:])
                if while_running is not None:
                    while_running(process, log_path)
                process.send_signal(signum)
                process.wait(timeout=120)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        output = open(log_path).read()
        self.assertEqual(process.returncode, 128 + signum, msg=output[-3000:])
        self.assertNotIn("Traceback", output)
        interrupted = int(output.split("interrupted at step ")[1].split(" ")[0])
        self.assertIn("rerun the same command to resume", output)
        # A checkpoint at the interrupted step, and the lock released.
        self.assertTrue(tf.train.latest_checkpoint(checkpoints).endswith(f"ckpt-{interrupted}"))
        self.assertFalse(os.path.exists(os.path.join(model_dir, runs.LOCK_FILE)))
        return process.returncode, output, interrupted

    def test_second_trainer_refused_interrupt_checkpoints_config_kept_resume_amended(self):
        model_dir = os.path.join(self.get_temp_dir(), "owned")
        first_command = _train_command(model_dir, ["train.max_steps = 100000", "train.checkpoint_every_steps = 2"])
        config_path = os.path.join(model_dir, "config.gin")
        config = {}

        def second_trainer_refused(first, log_path):
            config["bytes"] = open(config_path, "rb").read()
            # 1. A second trainer on the same directory refuses, naming the first; the first is unharmed.
            second = _run(first_command)
            self.assertEqual(second.returncode, cli.EXIT_BUSY, msg=second.stderr[-3000:])
            self.assertIn(f"pid {first.pid}", second.stderr)
            self.assertNotIn("Traceback", second.stderr)
            self.assertIsNone(first.poll(), msg="the first trainer died:\n" + open(log_path).read()[-3000:])
            self.assertEqual(open(config_path, "rb").read(), config["bytes"])

        # 2. SIGINT: the current step finishes, a checkpoint is written at it, exit 130.
        _, _, interrupted = self.interrupt_after_first_checkpoint(
            first_command, model_dir, signal.SIGINT, while_running=second_trainer_refused
        )
        config = config["bytes"]

        # 3. Another recipe on the run: refused before any file is touched.
        before = _snapshot(model_dir)
        other = _run(_train_command(model_dir, ["train.max_steps = 100000", "optimizer.learning_rate = 0.01"]))
        self.assertEqual(other.returncode, cli.EXIT_MISMATCH, msg=other.stderr[-3000:])
        self.assertIn("optimizer.learning_rate: 0.0003 (run) -> 0.01 (this command)", other.stderr)
        self.assertIn("new --model_dir", other.stderr)
        self.assertNotIn("Traceback", other.stderr)
        self.assertEqual(_snapshot(model_dir), before)

        # 4. The same command with only train.max_steps changed resumes from the interrupted step; recorded.
        target = interrupted + 2
        resumed = _run(_train_command(model_dir, [f"train.max_steps = {target}", "train.checkpoint_every_steps = 2"]))
        self.assertEqual(resumed.returncode, 0, msg=resumed.stderr[-3000:])
        self.assertIn(f"Resuming from step {interrupted}", resumed.stdout)
        self.assertIn(f"Finished at step {target}", resumed.stdout)
        self.assertEqual(open(os.path.join(model_dir, "config.gin"), "rb").read(), config)
        info = runs.read_run_info(model_dir)
        self.assertEqual(info["max_steps"], target)
        (amendment,) = info["amendments"]
        self.assertEqual(amendment["changes"], {"train.max_steps": ["100000", str(target)]})
        self.assertEqual(amendment["bindings"], [f"train.max_steps = {target}"])
        self.assertIn("time", amendment)
        # Evaluate / export read the run with the amendment applied.
        run = runs.load_run(model_dir)
        self.assertEqual(run.step, target)
        self.assertEqual(gin.query_parameter("train.max_steps"), target)

    def test_sigterm_checkpoints_the_interrupted_step_and_exits_143(self):
        model_dir = os.path.join(self.get_temp_dir(), "terminated")
        command = _train_command(model_dir, ["train.max_steps = 100000", "train.checkpoint_every_steps = 3"])
        status, _, interrupted = self.interrupt_after_first_checkpoint(command, model_dir, signal.SIGTERM)
        self.assertEqual(status, 143)
        self.assertEqual(runs.read_progress(model_dir)["step"], interrupted)

    def test_stale_lock_and_temp_files_taken_over_files_0644(self):
        model_dir = os.path.join(self.get_temp_dir(), "stale")
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        os.makedirs(os.path.join(model_dir, "checkpoints", "ckpt-7_temp"))
        with open(os.path.join(model_dir, runs.LOCK_FILE), "w") as f:
            json.dump({"host": os.uname().nodename, "pid": dead.pid, "started": "then", "command": "killed"}, f)
        with open(os.path.join(model_dir, ".tmp-abcdef"), "w") as f:
            f.write("half a file")
        result = _run(_train_command(model_dir, ["train.max_steps = 2"]))
        self.assertEqual(result.returncode, 0, msg=result.stderr[-3000:])
        self.assertIn(f"Took over the stale lock {os.path.join(model_dir, runs.LOCK_FILE)}", result.stderr)
        self.assertIn(f"pid {dead.pid}", result.stderr)
        self.assertIn("ckpt-7_temp, a checkpoint whose writing was interrupted", result.stderr)
        self.assertFalse(os.path.exists(os.path.join(model_dir, "checkpoints", "ckpt-7_temp")))
        self.assertFalse(os.path.exists(os.path.join(model_dir, ".tmp-abcdef")))
        # Quiet start-up: no banner, no cuInit line, no INFO lines; validation and summary printed.
        for noise in ("cuInit", "oneDNN", "I0000", "Sharding callback", "system_path_file_exists"):
            self.assertNotIn(noise, result.stderr + result.stdout)
        self.assertIn("Validation at step 2 (16 images", result.stdout)
        self.assertIn("Finished at step 2 (2 steps in", result.stdout)
        modes = {}
        for root, _, files in os.walk(model_dir):
            for name in files:
                path = os.path.join(root, name)
                modes[os.path.relpath(path, model_dir)] = stat.S_IMODE(os.stat(path).st_mode)
        for name in ("config.gin", "operative_config.gin", "run.json", "progress.json", "checkpoints/best/best.json"):
            self.assertIn(name, modes)
        self.assertTrue(any(name.startswith("images/") and name.endswith(".png") for name in modes))
        self.assertEqual({name: mode for name, mode in modes.items() if mode != 0o644}, {})


class CommandLineErrorsTest(testing_utils.GinTestCase):
    """Each error a user can cause: one message on stderr, a distinct exit status, no traceback, no usage text."""

    def test_train_errors_through_the_binary(self):
        root = self.get_temp_dir()
        unclosed = os.path.join(root, "unclosed.gin")
        with open(unclosed, "w") as f:
            f.write(f"include '{QUICKSTART}'\n\noptimizer.group_learning_rate_scale = {{'latent_head': 1.0\n")
        a_file = os.path.join(root, "a_file")
        open(a_file, "w").close()
        cases = [
            (["train.max_stepz = 3"], QUICKSTART, None, cli.EXIT_CONFIG, "Did you mean 'max_steps'?"),
            (["train.max_steps = 'abc'"], QUICKSTART, None, cli.EXIT_CONFIG, "train.max_steps = 'abc': expects int"),
            (["train.max_steps = 3"], unclosed, None, cli.EXIT_CONFIG, f"{unclosed}, line 3: this bracket"),
            (
                ["train.max_steps = 3", "dataset.local_path = '/nonexistent/mnist.npz'"],
                MNIST_CVAE,
                None,
                cli.EXIT_DATA,
                "/nonexistent/mnist.npz",
            ),
            (["train.max_steps = 3"], QUICKSTART, a_file, cli.EXIT_PATH, a_file),
        ]
        for bindings, recipe, model_dir, code, needle in cases:
            with self.subTest(bindings=bindings, recipe=recipe):
                stderr, status = self._in_process(
                    train_binary.main,
                    ["train", f"--gin_file={recipe}", f"--model_dir={model_dir or os.path.join(root, 'run')}"]
                    + [f"--gin_bindings={b}" for b in (TINY if recipe != MNIST_CVAE else []) + bindings],
                )
                self.assertEqual(status, code, msg=stderr)
                self.assertIn(needle, stderr)
                self.assertNotIn("Traceback", stderr)
                self.assertEqual(len(stderr.strip().splitlines()) < 12, True, msg=stderr)
        # The same through the real binary: a misspelled binding; nothing is written.
        result = _run(_train_command(os.path.join(root, "fresh"), ["train.max_stepz = 3"]))
        self.assertEqual(result.returncode, cli.EXIT_CONFIG, msg=result.stderr[-3000:])
        self.assertIn("Did you mean 'max_steps'?", result.stderr)
        self.assertNotIn("Traceback", result.stderr)
        self.assertFalse(os.path.exists(os.path.join(root, "fresh")))
        # --verbose, read by the binary from its own flags, adds the traceback; the exit status stays.
        result = _run(_train_command(os.path.join(root, "fresh"), ["train.max_stepz = 3"]) + ["--verbose"])
        self.assertEqual(result.returncode, cli.EXIT_CONFIG, msg=result.stderr[-3000:])
        self.assertIn("Traceback", result.stderr)
        self.assertIn("Did you mean 'max_steps'?", result.stderr)

    def test_nan_before_the_first_checkpoint_and_interrupt_messages(self):
        root = self.get_temp_dir()
        original = models.VAE.train_step

        def train_step(model, data):
            logs = dict(original(model, data))
            logs["loss"] = tf.constant(float("nan"))
            return logs

        with mock.patch.object(models.VAE, "train_step", train_step):
            stderr, status = self._in_process(
                train_binary.main,
                ["train", f"--gin_file={QUICKSTART}", f"--model_dir={os.path.join(root, 'nan')}"]
                + [f"--gin_bindings={b}" for b in TINY + ["train.max_steps = 3", "train.progress_bar = False"]],
            )
        self.assertEqual(status, cli.EXIT_NONFINITE, msg=stderr)
        self.assertIn("non-finite at step 1", stderr)
        self.assertIn("No checkpoint was written before it", stderr)
        self.assertNotIn("(None)", stderr)
        self.assertNotIn("Traceback", stderr)

    def test_export_and_evaluate_runtime_errors_print_no_usage(self):
        root = self.get_temp_dir()
        empty = os.path.join(root, "empty_run")
        os.makedirs(empty)
        stderr, status = self._in_process(
            export_binary.main, ["export", f"--model_dir={empty}", f"--export_dir={os.path.join(root, 'serving')}"]
        )
        self.assertEqual(status, cli.EXIT_PATH, msg=stderr)
        self.assertIn("operative_config.gin", stderr)
        self.assertNotIn("--overwrite", stderr)  # the flags' help
        self.assertNotIn("Traceback", stderr)
        with mock.patch.dict(os.environ, {"CRVAE_TF_VERBOSE": "1"}):
            verbose_stderr, verbose_status = self._in_process(
                export_binary.main, ["export", f"--model_dir={empty}", f"--export_dir={os.path.join(root, 'serving')}"]
            )
        self.assertEqual(verbose_status, cli.EXIT_PATH)
        self.assertIn("Traceback", verbose_stderr)
        adversarial = os.path.join(root, "adversarial_run")
        os.makedirs(adversarial)
        with open(os.path.join(adversarial, runs.RUN_FILE), "w") as f:
            json.dump({"format": runs.RUN_FORMAT, "family": "VAEGAN"}, f)
        stderr, status = self._in_process(evaluate_binary.main, ["evaluate", f"--model_dir={adversarial}"])
        self.assertEqual(status, cli.EXIT_UNSUPPORTED, msg=stderr)
        self.assertIn("VAEGAN run", stderr)
        self.assertNotIn("--num_importance_samples", stderr)
        self.assertNotIn("Traceback", stderr)
        stderr, status = self._in_process(evaluate_binary.main, ["evaluate", f"--model_dir={adversarial}", "--seed=-1"])
        self.assertEqual(status, cli.EXIT_USAGE, msg=stderr)
        self.assertIn("--seed=-1 must be in", stderr)
        self.assertLess(len(stderr.strip().splitlines()), 4, msg=stderr)

    def _in_process(self, main, argv):
        """(stderr, exit status) of a binary's `main` run as `cli.run` runs it, its flags parsed from `argv`."""
        gin.clear_config()
        flags.FLAGS.unparse_flags()
        flags.FLAGS(argv)
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                try:
                    cli.guarded(main)(argv[:1])
                    status = 0
                except SystemExit as exit:
                    status = exit.code
        finally:
            flags.FLAGS.unparse_flags()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return stderr.getvalue(), status


class LockTest(testing_utils.GinTestCase):
    def test_live_lock_refuses_and_names_the_holder_released_lock_is_free(self):
        folder = self.get_temp_dir()
        with locking.DirectoryLock(folder, "x.lock", "test"):
            holder = locking.holder(folder, "x.lock")
            self.assertEqual(holder["pid"], os.getpid())
            child = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    f"from crvae_tf import locking; locking.DirectoryLock({folder!r}, 'x.lock', 't').acquire()",
                ],
                env=ENV,
                capture_output=True,
                text=True,
            )
            self.assertNotEqual(child.returncode, 0)
            self.assertIn(f"pid {os.getpid()}", child.stderr)
        self.assertIsNone(locking.holder(folder, "x.lock"))
        self.assertFalse(os.path.exists(os.path.join(folder, "x.lock")))


class BudgetAndExportTest(testing_utils.GinTestCase):
    def test_validation_budget_and_nan_latents_refused_by_the_export(self):
        root = self.get_temp_dir()
        model_dir = os.path.join(root, "budget")
        runs.parse_gin(
            [QUICKSTART],
            TINY
            + [
                "dataset.num_sprites = (64, 40, 16)",
                "train.num_validation_images = 24",
                "train.max_steps = 2",
                "train.progress_bar = False",
            ],
            finalize=False,
        )
        self.assertEqual(builders.train_settings().num_validation_images, 24)
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            result = loop.train(model_dir)
        self.assertIn("Validation at step 2 (24 images", output.getvalue())
        self.assertEqual(result["validation_step"], 2)
        gin.clear_config()
        runs.parse_gin([QUICKSTART], [], finalize=False)
        self.assertEqual(builders.train_settings().num_validation_images, builders.DEFAULT_NUM_VALIDATION_IMAGES)

        export_dir = os.path.join(root, "serving")
        os.makedirs(os.path.join(export_dir, ".tmp-2-deadbeef", "variables"))
        exported = export_lib.export_model(result["model"], export_dir, 2)
        self.assertEqual(sorted(os.listdir(export_dir)), ["2"])  # the stale temporary folder and the lock are gone
        loaded = tf.saved_model.load(exported.path)
        z = np.zeros((2, result["model"].latent_dim), np.float32)
        self.assertEqual(loaded.signatures["serving_default"](z=tf.constant(z))["images"].shape[0], 2)
        z[1, 3] = np.nan
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "z must be finite"):
            loaded.signatures["serving_default"](z=tf.constant(z))
        z[1, 3] = np.inf
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "z must be finite"):
            loaded.signatures["serving_default"](z=tf.constant(z))
