"""The trainer: every recipe parses and trains 2 steps; outputs exist; resume continues exactly."""

import contextlib
import glob
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from unittest import mock

from absl import flags
import gin
import numpy as np
import stl10_testing
import tensorflow as tf

from crvae_tf import models
from crvae_tf import runs
from crvae_tf import train as train_binary
from crvae_tf.training import loop
from crvae_tf.training import monitors

import testing_utils

RECIPES = sorted(os.path.basename(p) for p in glob.glob(os.path.join(testing_utils.GIN_DIR, "*.gin")))
KIND = {
    "mnist_vae.gin": "fc",
    "quickstart_vae.gin": "fc",
    "mnist_cvae.gin": "conv",
    "mnist_bcvae.gin": "block_fc",
    "celeba64_vaegan.gin": "fc",
    "celeba128_vaegan.gin": "fc",
    "birds128_vaegan.gin": "fc",
    "stl10_vae_gan.gin": "fc",
}
# Recipe-specific overrides that keep the smoke run tiny.
TINY_OVERRIDES = {"mnist_crvae_iwae40.gin": ["model.num_importance_samples = 3"]}


def _kind(recipe):
    return KIND.get(recipe, "channel_recurrent")


class _RecipeData(testing_utils.GinTestCase):
    """Fake MNIST, faces and CUB, and the bindings that shrink any recipe to a seconds-long run."""

    def setUp(self):
        super().setUp()
        root = self.get_temp_dir()
        self.mnist = testing_utils.write_fake_mnist(os.path.join(root, "mnist.npz"))
        self.faces = os.path.join(root, "faces")
        if not os.path.isdir(self.faces):
            testing_utils.write_faces(self.faces, 109, 89, range(1, 25))
        self.cub = os.path.join(root, "CUB_200_2011")
        if not os.path.isdir(self.cub):
            testing_utils.write_fake_cub(self.cub, 24)
        self.cache = os.path.join(root, "cache")
        self.stl10 = os.path.join(root, "stl10_binary")
        if not os.path.isdir(self.stl10):
            stl10_testing.write_position_folder(self.stl10)

    def _bindings(self, recipe, max_steps=2):
        bindings = (
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings(_kind(recipe))
            + [f"train.max_steps = {max_steps}"]
        )
        if recipe.startswith("mnist"):
            bindings += [f"dataset.local_path = '{self.mnist}'", "dataset.validation_size = 40"]
        elif recipe.startswith(("celeba", "birds")):
            bindings += testing_utils.TINY_ADVERSARIAL_BINDINGS + [
                f"dataset.cache_dir = '{self.cache}'",
                "dataset.validation_size = 4",
            ]
            bindings.append(
                f"dataset.local_path = '{self.faces}'"
                if recipe.startswith("celeba")
                else f"dataset.cub_path = '{self.cub}'"
            )
        elif recipe.startswith("stl10"):
            bindings += testing_utils.TINY_ADVERSARIAL_BINDINGS + [
                f"dataset.local_path = '{self.stl10}'",
                "dataset.labeled_batch_size = 4",
            ]
        return bindings + TINY_OVERRIDES.get(recipe, [])


class RecipesTest(_RecipeData):
    def test_every_recipe_is_listed(self):
        self.assertIn("quickstart.gin", RECIPES)
        for name in ("vae", "cvae", "bcvae", "crvae_inference", "crvae_generation", "crvae", "crvae_iwae40"):
            self.assertIn(f"mnist_{name}.gin", RECIPES)

    def test_every_recipe_header_is_a_recipe(self):
        for recipe in RECIPES:
            with open(os.path.join(testing_utils.GIN_DIR, recipe)) as f:
                header = f.read().split("\n\n")[0]
            for word in ("Command:", "Hardware:", "Wall time:", "Target:"):
                self.assertIn(word, header, msg=f"{recipe} header lacks {word}")

    def test_every_recipe_trains_two_steps_through_the_binary(self):
        """`python -m crvae_tf.train` for every recipe, run in-process (its flags parsed, then `main`)."""
        for recipe in RECIPES:
            with self.subTest(recipe=recipe):
                gin.clear_config()
                model_dir = os.path.join(self.get_temp_dir(), recipe)
                argv = [
                    "train",
                    f"--gin_file={os.path.join(testing_utils.GIN_DIR, recipe)}",
                    f"--model_dir={model_dir}",
                ] + [f"--gin_bindings={b}" for b in self._bindings(recipe)]
                flags.FLAGS.unparse_flags()
                flags.FLAGS(argv)
                output = io.StringIO()
                with contextlib.redirect_stdout(output):
                    train_binary.main(["train"])
                self.assertIn("Finished at step 2 (", output.getvalue())
                loss = float(re.search(r"train \(last logged steps\): .*\bloss ([^,\s]+)", output.getvalue()).group(1))
                self.assertTrue(np.isfinite(loss))
                self.assertTrue(os.path.exists(os.path.join(model_dir, "operative_config.gin")))
                self.assertTrue(tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("-2"))
        flags.FLAGS.unparse_flags()

    def test_outputs_of_a_run(self):
        model_dir = os.path.join(self.get_temp_dir(), "run")
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "mnist_crvae.gin")],
            self._bindings("mnist_crvae.gin", max_steps=4),
            finalize=False,
        )
        loop.train(model_dir)
        operative = open(os.path.join(model_dir, "operative_config.gin")).read()
        self.assertIn("latent_head.kind = 'channel_recurrent'", operative)
        self.assertIn("train.max_steps = 4", operative)
        self.assertTrue(os.path.exists(os.path.join(model_dir, "config.gin")))
        for kind in ("inputs", "reconstructions", "prior_samples", "progressive"):
            for step in (0, 2, 4):
                self.assertTrue(os.path.exists(os.path.join(model_dir, "images", f"{kind}-{step:08d}.png")))
        tags = set()
        for event_file in glob.glob(os.path.join(model_dir, "tb", "*", "events.*")):
            for event in tf.compat.v1.train.summary_iterator(event_file):
                for value in event.summary.value:
                    tags.add(value.tag)
        for tag in (
            "loss",
            "distortion",
            "rate",
            "elbo",
            "active_units",
            "kl/step_1",
            "kl/step_8",
            "learning_rate/encoder",
            "learning_rate/latent_head",
            "inputs",
            "reconstructions",
            "prior_samples",
            "gin/operative_config",
            # The collapse instruments (issue: the crVAE must learn): per group, per time step.
            "grad_norm/encoder",
            "grad_norm/latent_head",
            "grad_norm/decoder",
            "param_norm/latent_head",
            "update_ratio/decoder",
            "active_units/step_1",
            "active_units/step_8",
            "posterior/log_variance_step_1",
            "posterior/log_variance_step_8",
            "posterior/loc_step_8",
            "progressive",
        ):
            self.assertIn(tag, tags)
        self.assertNotIn("grad_norm/discriminator", tags)  # the VAE family has no such group

    def test_resume_matches_a_straight_run(self):
        recipe = [os.path.join(testing_utils.GIN_DIR, "mnist_crvae.gin")]
        straight = os.path.join(self.get_temp_dir(), "straight")
        runs.parse_gin(recipe, self._bindings("mnist_crvae.gin", max_steps=6), finalize=False)
        expected = loop.train(straight)

        resumed = os.path.join(self.get_temp_dir(), "resumed")
        gin.clear_config()
        runs.parse_gin(recipe, self._bindings("mnist_crvae.gin", max_steps=3), finalize=False)
        first = loop.train(resumed)
        self.assertEqual(first["step"], 3)
        gin.clear_config()
        runs.parse_gin(recipe, self._bindings("mnist_crvae.gin", max_steps=6), finalize=False)
        second = loop.train(resumed)
        self.assertEqual(second["step"], 6)
        self.assertEqual(second["initial_step"], 3)
        self.assertTrue(second["checkpoint"].endswith("ckpt-6"))
        self.assertAllClose(second["train"]["loss"], expected["train"]["loss"], rtol=1e-4)
        self.assertAllClose(second["validation"]["elbo"], expected["validation"]["elbo"], rtol=1e-4)
        # Optimizer state and the step counter were restored from the checkpoint.
        reader = tf.train.load_checkpoint(second["checkpoint"])
        names = reader.get_variable_to_shape_map()
        iterations = [n for n in names if "encoder_optimizer" in n and "iterations" in n]
        self.assertTrue(iterations)
        self.assertEqual(int(reader.get_tensor(iterations[0])), 6)
        self.assertEqual(int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")), 6)

    def test_best_checkpoint_and_load_run(self):
        model_dir = os.path.join(self.get_temp_dir(), "selected")
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "mnist_crvae.gin")],
            self._bindings("mnist_crvae.gin", max_steps=4) + ["train.validation_every_steps = 2"],
            finalize=False,
        )
        result = loop.train(model_dir)
        best = json.load(open(os.path.join(model_dir, "checkpoints", "best", "best.json")))
        self.assertIn(best["step"], (2, 4))
        self.assertEqual((best["metric"], best["split"]), ("iwae_5", "validation"))
        self.assertIn("iwae_5", result["validation"])
        # load_run rebuilds the model from the saved config and restores exactly the weights trained in memory.
        run = runs.load_run(model_dir, checkpoint="latest")
        self.assertEqual(run.step, 4)
        # Every weight and BatchNorm statistic (the noise streams are training state, not restored for evaluation).
        weights = lambda m: [v for v in m.variables if not v.path.endswith("seed_generator_state")]
        trained = weights(result["model"])
        self.assertEqual([v.path for v in weights(run.model)], [v.path for v in trained])
        for restored, original in zip(weights(run.model), trained):
            self.assertAllEqual(restored.numpy(), original.numpy(), msg=original.path)
        self.assertEqual(runs.load_run(model_dir, checkpoint="best").step, best["step"])
        self.assertEqual(runs.load_run(model_dir, checkpoint=2).step, 2)
        with self.assertRaisesRegex(FileNotFoundError, "kept steps"):
            runs.resolve_checkpoint(model_dir, 3)
        with self.assertRaisesRegex(ValueError, "'latest', 'best' or a step"):
            runs.resolve_checkpoint(model_dir, "first")
        with self.assertRaisesRegex(FileNotFoundError, "not a crvae_tf run directory"):
            runs.load_run(self.get_temp_dir())

    def test_time_based_checkpoints(self):
        model_dir = os.path.join(self.get_temp_dir(), "timed")
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "mnist_vae.gin")],
            self._bindings("mnist_vae.gin", max_steps=3)
            + ["train.checkpoint_every_steps = 1000", "train.checkpoint_every_secs = 1e-9"],
            finalize=False,
        )
        loop.train(model_dir)
        state = tf.train.get_checkpoint_state(os.path.join(model_dir, "checkpoints"))
        self.assertEqual([int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths], [1, 2, 3])

    def test_bad_bindings_give_clear_errors(self):
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "mnist_vae.gin")],
            self._bindings("mnist_vae.gin") + ["latent_head.hidden_units = 8"],
            finalize=False,
        )
        with self.assertRaisesRegex(ValueError, "does not use"):
            loop.train(os.path.join(self.get_temp_dir(), "bad"))


class KillAndResumeTest(testing_utils.GinTestCase):
    """SIGKILL the training binary after its first checkpoint; the same command continues from it."""

    def test_sigkill_then_rerun_continues(self):
        tmp = self.get_temp_dir()
        mnist = testing_utils.write_fake_mnist(os.path.join(tmp, "mnist.npz"))
        model_dir = os.path.join(tmp, "killed")
        command = [
            sys.executable,
            "-m",
            "crvae_tf.train",
            "--gin_file",
            os.path.join(testing_utils.GIN_DIR, "mnist_crvae.gin"),
            "--model_dir",
            model_dir,
        ]
        bindings = (
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("channel_recurrent")
            + [f"dataset.local_path = '{mnist}'", "dataset.validation_size = 40", "train.image_every_steps = 1000"]
        )
        env = dict(os.environ, PYTHONPATH=testing_utils.REPO)
        log_path = os.path.join(tmp, "first_run.log")
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                command + [f"--gin_bindings={b}" for b in bindings + ["train.max_steps=100000"]],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            checkpoints = os.path.join(model_dir, "checkpoints")
            deadline = time.time() + 240
            while time.time() < deadline and process.poll() is None and not tf.train.latest_checkpoint(checkpoints):
                time.sleep(0.2)
            exited = process.poll()
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.assertIsNone(exited, msg="the first run exited before it was killed:\n" + open(log_path).read()[-3000:])
        latest = tf.train.latest_checkpoint(checkpoints)
        self.assertIsNotNone(latest, msg="no checkpoint within 240 s:\n" + open(log_path).read()[-3000:])
        killed_at = int(latest.rsplit("-", 1)[1])
        self.assertGreaterEqual(killed_at, 2)
        target = killed_at + 2
        rerun = subprocess.run(
            command + [f"--gin_bindings={b}" for b in bindings + [f"train.max_steps={target}"]],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(rerun.returncode, 0, msg=rerun.stderr[-3000:])
        self.assertIn(f"Resuming from step {killed_at}", rerun.stdout)
        self.assertIn(f"Finished at step {target}", rerun.stdout)
        self.assertTrue(tf.train.latest_checkpoint(checkpoints).endswith(f"ckpt-{target}"))


class GuardsTest(_RecipeData):
    """The loop's stops (README "Output directory"): stop, keep the last good checkpoint, save the batch."""

    def _poisoned(self, cls, key, value, from_step):
        """Patches `cls.train_step` so that `logs[key]` becomes `value` from optimizer step `from_step` on."""
        original = cls.train_step

        def train_step(model, data):
            logs = dict(original(model, data))
            step = model.group_optimizers["decoder"].iterations
            logs[key] = tf.where(step >= from_step, tf.constant(value, tf.float32), tf.cast(logs[key], tf.float32))
            return logs

        return mock.patch.object(cls, "train_step", train_step)

    def test_non_finite_loss_stops_keeps_the_checkpoint_and_saves_the_batch(self):
        model_dir = os.path.join(self.get_temp_dir(), "nan_run")
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "mnist_vae.gin")],
            self._bindings("mnist_vae.gin", max_steps=6) + ["train.checkpoint_every_secs = None"],
            finalize=False,
        )
        with self._poisoned(models.VAE, "loss", float("nan"), from_step=3):
            with self.assertRaisesRegex(monitors.NonFiniteLossError, r"step 3 .*ckpt-2.*nonfinite_batch-00000003"):
                loop.train(model_dir)
        batch = np.load(os.path.join(model_dir, "nonfinite_batch-00000003.npy"))
        self.assertEqual(batch.shape, (8, 28, 28, 1))
        self.assertEqual(runs.kept_steps(model_dir), [2])  # nothing saved after the last good checkpoint

    def test_discriminator_collapse_stops_with_the_batch_saved(self):
        model_dir = os.path.join(self.get_temp_dir(), "collapse_run")
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "celeba64.gin")],
            self._bindings("celeba64.gin", max_steps=6)
            + ["train.checkpoint_every_secs = None", "train.discriminator_collapse_steps = 2"],
            finalize=False,
        )
        with self._poisoned(models.VAEGAN, "discriminator_batch_accuracy", 1.0, from_step=2):
            with self.assertRaisesRegex(monitors.DiscriminatorCollapseError, r"1 for 2 consecutive steps \(step 3\)"):
                loop.train(model_dir)
        self.assertEqual(np.load(os.path.join(model_dir, "collapse_batch-00000003.npy")).shape, (8, 64, 64, 3))
        self.assertEqual(runs.kept_steps(model_dir), [2])
