"""Training runs of the adversarial recipes at tiny widths: mock tfds CelebA, a generated face folder, TensorBoard
contents, a known-good short run, resume, and the collapse / evaluation guards."""

import glob
import os

import gin
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from crvae_tf import builders
from crvae_tf import runs
from crvae_tf.evaluation import likelihood as eval_lib
from crvae_tf.training import loop
from crvae_tf.training import monitors

import testing_utils

CELEBA64 = os.path.join(testing_utils.GIN_DIR, "celeba64.gin")


def scalars(event_dir):
    """tag -> {step: value} of every scalar in a TensorBoard event folder."""
    values = {}
    for path in sorted(glob.glob(os.path.join(event_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def tags(event_dir):
    found = set()
    for path in glob.glob(os.path.join(event_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            found.update(value.tag for value in event.summary.value)
    return found


class AdversarialTrainingTest(testing_utils.GinTestCase):
    def setUp(self):
        super().setUp()
        root = self.get_temp_dir()
        self.faces = os.path.join(root, "faces")
        if not os.path.isdir(self.faces):
            testing_utils.write_faces(self.faces, 109, 89, range(1, 41))
        self.cache = os.path.join(root, "cache")

    def train(self, model_dir, max_steps, extra=(), recipe=CELEBA64, kind="channel_recurrent", local=True):
        bindings = (
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings(kind)
            + testing_utils.TINY_ADVERSARIAL_BINDINGS
            + [
                f"train.max_steps = {max_steps}",
                f"dataset.cache_dir = '{self.cache}'",
                "dataset.validation_size = 8",
                "train.image_every_steps = 1000",
            ]
        )
        if local:
            bindings.append(f"dataset.local_path = '{self.faces}'")
        runs.parse_gin([recipe], bindings + list(extra))
        try:
            return loop.train(model_dir)
        finally:
            gin.clear_config()

    def test_mock_tfds_celeb_a_trains(self):
        model_dir = os.path.join(self.get_temp_dir(), "mock")
        with tfds.testing.mock_data(num_examples=24):
            result = self.train(model_dir, 2, local=False)
        self.assertEqual(result["step"], 2)
        self.assertTrue(np.isfinite(result["train"]["loss"]))

    def test_known_good_short_run(self):
        """A short crVAE-GAN run (MI term on) on generated faces: reconstruction falls, the discriminator neither
        wins nor loses outright, and TensorBoard has every adversarial scalar and the image grids."""
        model_dir = os.path.join(self.get_temp_dir(), "good")
        result = self.train(
            model_dir,
            24,
            extra=[
                "model.mutual_information_weight = 0.02",
                "optimizer.learning_rate = 1e-3",
                "train.image_every_steps = 24",
            ],
        )
        self.assertEqual(result["step"], 24)
        train = scalars(os.path.join(model_dir, "tb", "train"))
        accuracy = np.mean(list(train["discriminator/accuracy"].values()))
        self.assertBetween(accuracy, 0.05, 0.95)
        reconstruction = [train["reconstruction"][s] for s in sorted(train["reconstruction"])]
        self.assertLess(np.mean(reconstruction[-4:]), np.mean(reconstruction[:4]))
        for tag in (
            "discriminator/loss_real",
            "discriminator/loss_reconstruction",
            "discriminator/loss_prior",
            "discriminator/accuracy",
            "discriminator/accuracy_real",
            "discriminator/skip_rate",
            "generator/adversarial",
            "kl/step_1",
            "kl/step_8",
            "reconstruction",
            "mutual_information",
            "learning_rate/discriminator",
            "learning_rate/q_head",
        ):
            self.assertIn(tag, train, msg=tag)
        self.assertTrue({"inputs", "reconstructions", "prior_samples"} <= tags(os.path.join(model_dir, "tb", "train")))
        validation = scalars(os.path.join(model_dir, "tb", "validation"))
        self.assertIn("discriminator/accuracy_prior", validation)
        self.assertTrue(os.path.isfile(os.path.join(model_dir, "checkpoints", "best", "best.json")))
        pngs = glob.glob(os.path.join(model_dir, "images", "prior_samples-*.png"))
        self.assertLen(pngs, 2)  # step 0 and step 24

    def test_resume_matches_a_straight_run(self):
        straight = os.path.join(self.get_temp_dir(), "straight")
        resumed = os.path.join(self.get_temp_dir(), "resumed")
        self.train(straight, 4, kind="fc", recipe=os.path.join(testing_utils.GIN_DIR, "celeba64_vaegan.gin"))
        self.train(resumed, 2, kind="fc", recipe=os.path.join(testing_utils.GIN_DIR, "celeba64_vaegan.gin"))
        self.train(resumed, 4, kind="fc", recipe=os.path.join(testing_utils.GIN_DIR, "celeba64_vaegan.gin"))
        first = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(straight, "checkpoints")))
        second = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(resumed, "checkpoints")))
        names = [name for name in first.get_variable_to_shape_map() if "model/" in name or "optimizer" in name]
        self.assertGreater(len(names), 20)
        for name in names:
            self.assertAllClose(first.get_tensor(name), second.get_tensor(name), atol=1e-6, msg=name)

    def test_evaluate_rejects_an_adversarial_run(self):
        model_dir = os.path.join(self.get_temp_dir(), "eval")
        self.train(model_dir, 1, kind="fc", recipe=os.path.join(testing_utils.GIN_DIR, "celeba64_vaegan.gin"))
        with self.assertRaisesRegex(ValueError, "defines no likelihood"):
            eval_lib.evaluate(model_dir, num_importance_samples=2)


class RecipeBenchmarkTest(testing_utils.GinTestCase):
    def test_bench_recipe_times_the_adversarial_step(self):
        from crvae_tf import bench

        bindings = (
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("channel_recurrent")
            + testing_utils.TINY_ADVERSARIAL_BINDINGS
        )
        result = bench.bench_recipe(
            os.path.join(testing_utils.GIN_DIR, "birds128.gin"), steps=2, warmup=1, batch_size=4, bindings=bindings
        )
        self.assertEqual(result["image_shape"], [128, 128, 3])
        self.assertEqual(result["batch_size"], 4)
        self.assertGreater(result["step_s_median"], 0.0)
        self.assertGreater(result["params"]["discriminator"], 0)
        # What it ran on, and the recipe's whole schedule (birds128.gin: 450,000 steps) at the measured step time.
        self.assertFalse(result["jit_compile"])
        self.assertRegex(result["device"], r"^(CPU: \d+ cores|GPU: .+)$")
        self.assertEqual(result["schedule_steps"], 450000)
        # step_s_median is rounded to 1 ms: the hours agree within 450,000 * 0.5 ms.
        self.assertAllClose(result["schedule_step_hours"], 450000 * result["step_s_median"] / 3600, atol=0.07)
        self.assertGreater(result["schedule_step_hours"], 0.0)

    def test_the_timed_step_honours_train_jit_compile_as_the_loop_does(self):
        """The benchmark times the loop's step: with `train.jit_compile=True` its function must be XLA-compiled
        (checked on the traced function's attributes, without paying for an XLA compile of the model)."""
        from crvae_tf import bench

        for jit_compile in (False, True):
            gin.clear_config()
            runs.parse_gin(
                [os.path.join(testing_utils.GIN_DIR, "mnist_vae.gin")],
                testing_utils.TINY_BINDINGS + [f"train.jit_compile = {jit_compile}"],
                finalize=False,
            )
            model = builders.build_model(image_shape=(28, 28, 1), seed=0)
            optimizers, clips = builders.build_optimizers(model, steps_per_epoch=10)
            model.compile(optimizers=optimizers, clip_values=clips)
            step, settings = bench._loop_step(model)
            self.assertEqual(settings.jit_compile, jit_compile)
            function_def = step.get_concrete_function(tf.zeros([8, 28, 28, 1])).function_def
            compiled = "_XlaMustCompile" in function_def.attr and function_def.attr["_XlaMustCompile"].b
            self.assertEqual(compiled, jit_compile)
            self.assertEqual(bench.schedule_fields(0.5), {"schedule_steps": 78000, "schedule_step_hours": 10.83})
        # A config without a usable schedule still benchmarks: the schedule fields are None.
        for binding in ("train.max_steps = None", "train.max_steps = 'long'"):
            gin.clear_config()
            gin.parse_config([binding])
            self.assertEqual(bench.schedule_fields(0.5), {"schedule_steps": None, "schedule_step_hours": None})
        gin.clear_config()
        self.assertEqual(bench.schedule_fields(0.5), {"schedule_steps": None, "schedule_step_hours": None})


class CollapseMonitorTest(tf.test.TestCase):
    def test_stops_after_patience_pinned_steps_only(self):
        monitor = monitors.CollapseMonitor(3)
        self.assertEqual([monitor.update(a) for a in (1.0, 1.0, 0.75, 1.0, 1.0)], [False] * 5)
        self.assertTrue(monitor.update(1.0))
        self.assertIn("wins outright", monitor.describe(10))
        losing = monitors.CollapseMonitor(2)
        self.assertEqual([losing.update(a) for a in (0.0, 0.0)], [False, True])
        self.assertIn("loses outright", losing.describe(2))
        disabled = monitors.CollapseMonitor(None)
        self.assertFalse(any(disabled.update(1.0) for _ in range(10)))


if __name__ == "__main__":
    tf.test.main()
