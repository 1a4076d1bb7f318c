"""The NLL evaluation: a tiny trained crVAE run scored on a fake static binarized MNIST; files, bounds, determinism."""

import contextlib
import glob
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from unittest import mock

from absl import app
from absl import flags
import gin
import numpy as np
import tensorflow as tf

from crvae_tf import data as data_lib
from crvae_tf import evaluate as evaluate_binary
from crvae_tf import runs
from crvae_tf.evaluation import likelihood as eval_lib
from crvae_tf.evaluation import results
from crvae_tf.training import loop

import testing_utils

K = 20  # importance samples: a multiple of 5, so IWAE_5 uses every sample
BATCH = 8  # 21 test images: batches of 8, 8, 5
NUM_TEST = 21


def write_fake_binarized_mnist(path, flip_pixel=None):
    """The fake static test set of these tests: returns its test images as uint8 0/1 `[N, 28, 28, 1]`."""
    bits = testing_utils.write_fake_binarized_mnist(path, num_test=NUM_TEST, flip_pixel=flip_pixel)
    return bits["test"].reshape(-1, 28, 28, 1)


class EvalLibTest(testing_utils.GinTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="eval_lib_test-")
        mnist = testing_utils.write_fake_mnist(os.path.join(cls.tmp, "mnist.npz"))
        cls.binarized = os.path.join(cls.tmp, "binarized_mnist.npz")
        cls.test_bits = write_fake_binarized_mnist(cls.binarized)
        cls.run_dir = os.path.join(cls.tmp, "run")
        gin.clear_config()
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "mnist_crvae.gin")],
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("channel_recurrent")
            + [
                f"dataset.local_path = '{mnist}'",
                "dataset.validation_size = 40",
                "train.max_steps = 4",
                "train.validation_every_steps = 2",
            ],
            finalize=False,
        )
        loop.train(cls.run_dir)  # checkpoints at steps 2 and 4, validations (and 'best') at 2 and 4
        gin.clear_config()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    def fresh_run(self):
        """A copy of the trained run without any evaluation outputs, so each test sees only its own."""
        model_dir = os.path.join(self.get_temp_dir(), self.id().rsplit(".", 1)[1])
        shutil.copytree(self.run_dir, model_dir, ignore=shutil.ignore_patterns("eval", "eval_*"))
        return model_dir

    def evaluate(self, model_dir=None, data=None, extra_bindings=(), **kwargs):
        kwargs = {"num_importance_samples": K, "batch_size": BATCH, "chunk_size": 3, **kwargs}
        return eval_lib.evaluate(
            model_dir or self.run_dir,
            gin_bindings=[f"eval_dataset.local_path = '{data or self.binarized}'", *extra_bindings],
            **kwargs,
        )

    @staticmethod
    def per_image(result):
        with np.load(result["per_image_path"]) as arrays:
            return {key: arrays[key] for key in arrays.files}

    def test_result_files_and_every_image(self):
        model_dir = self.fresh_run()
        result = self.evaluate(model_dir)
        path = results.result_path(model_dir, "test", 4, K)
        self.assertEqual(result["result_path"], os.path.abspath(path))
        self.assertTrue(path.endswith(os.path.join("eval", f"test-step4-k{K}.json")))
        with open(path) as f:
            self.assertEqual(json.load(f), result)
        self.assertEmpty(glob.glob(os.path.join(model_dir, "eval", "*.partial.npz")))
        # Every image, the last batch of 5 included; the exact pixels are the static test set's.
        self.assertEqual(result["num_images"], NUM_TEST)
        self.assertEqual(result["num_images_in_split"], NUM_TEST)
        self.assertIsNone(result["max_images"])
        self.assertEqual(result["data_sha256"], hashlib.sha256(self.test_bits.tobytes()).hexdigest())
        self.assertEqual(
            (result["split"], result["dataset"], result["binarization"], result["dataset_role"]),
            ("test", "binarized_mnist", "static", "eval_dataset"),
        )
        self.assertIn(self.binarized, result["source"])
        self.assertEqual((result["step"], result["num_importance_samples"], result["seed"]), (4, K, 0))
        self.assertEqual(result["precision"], "float32")
        self.assertGreater(result["importance_samples_per_s"], 0)
        # Per image: ELBO <= IWAE_5 <= IWAE_K (Jensen over the same samples; 5 divides K).
        arrays = self.per_image(result)
        for key in ("log_likelihood", "elbo", "iwae_5"):
            self.assertEqual(arrays[key].shape, (NUM_TEST,))
            self.assertEqual(arrays[key].dtype, np.float64)
            self.assertTrue(np.all(np.isfinite(arrays[key])), msg=key)
        self.assertAllGreaterEqual(arrays["log_likelihood"] - arrays["iwae_5"], -1e-9)
        self.assertAllGreaterEqual(arrays["iwae_5"] - arrays["elbo"], -1e-9)
        self.assertGreater(np.mean(arrays["log_likelihood"] - arrays["elbo"]), 0.0)
        self.assertAllClose(result["nll"], -np.mean(arrays["log_likelihood"]), rtol=0, atol=1e-9)
        self.assertAllClose(result["nll_stderr"], np.std(arrays["log_likelihood"], ddof=1) / math.sqrt(NUM_TEST))
        self.assertGreater(result["nll_stderr"], 0.0)
        self.assertGreaterEqual(-result["nll"], result["iwae_5"])
        self.assertGreaterEqual(result["iwae_5"], result["elbo"])
        self.assertAllClose(result["nll_bits_per_dim"], result["nll"] / (784 * math.log(2)))
        # TensorBoard scalars at the checkpoint's step.
        tags = {}
        for event_file in glob.glob(os.path.join(model_dir, "tb", "eval_test", "events.*")):
            for event in tf.compat.v1.train.summary_iterator(event_file):
                for value in event.summary.value:
                    tags[value.tag] = (event.step, float(tf.make_ndarray(value.tensor)))
        for key in ("nll", "nll_stderr", "elbo", "iwae_5"):
            self.assertEqual(tags[f"{key}/k{K}"][0], 4)
            self.assertAllClose(tags[f"{key}/k{K}"][1], result[key], rtol=1e-6)

    def test_same_command_same_numbers_and_chunking_only_changes_rounding(self):
        first, second = self.evaluate(), self.evaluate()
        for key in ("nll", "nll_stderr", "elbo", "iwae_5", "data_sha256"):
            self.assertEqual(first[key], second[key], msg=key)
        # The noise of (image i, sample k) depends on (seed, i, k) only: one chunk of K and batches of 5 give the
        # same estimates up to float32 rounding of differently sized matmuls.
        other = self.evaluate(chunk_size=K, batch_size=5)
        self.assertEqual(other["chunk_size"], K)
        for key in ("log_likelihood", "elbo", "iwae_5"):
            self.assertAllClose(self.per_image(other)[key], self.per_image(first)[key], rtol=1e-6, atol=1e-3)
        self.assertNotEqual(self.evaluate(seed=1)["nll"], first["nll"])

    def test_one_sample_estimate_is_the_elbo(self):
        result = self.evaluate(num_importance_samples=1, max_images=5)
        arrays = self.per_image(result)
        self.assertAllEqual(arrays["log_likelihood"], arrays["elbo"])
        self.assertIsNone(result["iwae_5"])
        self.assertAllClose(result["nll"], -result["elbo"], rtol=0, atol=1e-12)

    def test_data_hash_and_cap_are_recorded(self):
        full = self.evaluate()
        full_log_likelihood = self.per_image(full)["log_likelihood"]  # the next call rewrites the same file
        changed = os.path.join(self.get_temp_dir(), "binarized_mnist.npz")
        write_fake_binarized_mnist(changed, flip_pixel=(3, 400))
        self.assertNotEqual(self.evaluate(data=changed)["data_sha256"], full["data_sha256"])
        capped = self.evaluate(max_images=10)
        self.assertEqual(
            (capped["num_images"], capped["max_images"], capped["num_images_in_split"]), (10, 10, NUM_TEST)
        )
        # The cap takes images spread evenly over the split (the static test set is sorted by digit).
        subset = np.round(np.linspace(0, NUM_TEST - 1, 10)).astype(int)
        self.assertEqual(capped["data_sha256"], hashlib.sha256(self.test_bits[subset].tobytes()).hexdigest())
        self.assertTrue(capped["result_path"].endswith(f"test-step4-k{K}-n10.json"))
        self.assertTrue(os.path.exists(full["result_path"]))  # a capped run never replaces a full one
        self.assertAllClose(self.per_image(capped)["log_likelihood"], full_log_likelihood[subset], rtol=1e-6, atol=1e-3)

    def test_validation_split_is_the_runs_own(self):
        result = self.evaluate(split="validation", num_importance_samples=5)
        self.assertEqual(
            (result["dataset"], result["binarization"], result["dataset_role"], result["num_images"]),
            ("mnist", "dynamic", "run_dataset", 40),
        )
        self.assertTrue(result["result_path"].endswith("validation-step4-k5.json"))
        self.assertTrue(np.isfinite(result["nll"]))

    def test_without_eval_dataset_the_runs_own_test_split(self):
        result = self.evaluate(num_importance_samples=5, extra_bindings=["eval_dataset.name = None"])
        self.assertEqual(
            (result["dataset"], result["binarization"], result["dataset_role"], result["num_images"]),
            ("mnist", "dynamic", "run_dataset", 60),
        )
        # A recipe's eval_dataset never scores a model on images of another kind (e.g. the sprites quickstart).
        with self.assertRaisesRegex(ValueError, "eval_dataset.name=None"):
            self.evaluate(extra_bindings=["dataset.name = 'sprites'", "dataset.local_path = None"])

    def test_sprites_results_carry_the_shape_accuracy_of_the_evaluated_images(self):
        sprites = [
            "dataset.name = 'sprites'",
            "dataset.local_path = None",
            "dataset.validation_size = None",
            "eval_dataset.name = None",
            "dataset.num_sprites = (8, 8, 12)",
            "dataset.sprite_radius = 12.0",
        ]
        result = self.evaluate(
            model_dir=self.fresh_run(), num_importance_samples=2, max_images=7, extra_bindings=sprites
        )
        self.assertEqual((result["dataset"], result["num_images"]), ("sprites", 7))
        # The confusion's rows are the true shapes of exactly the 7 images evaluated (spread over the 12).
        indices = np.unique(np.round(np.linspace(0, 11, 7)).astype(np.int64))
        seed = gin.query_parameter("train.seed")  # the run's seed draws its sprites (load_run leaves its config)
        _, factors = data_lib.generate_sprites(12, [seed, 2], radius=12.0)
        confusion = np.array(result["shape_confusion"])
        np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(factors["shape"][indices], minlength=4))
        self.assertAlmostEqual(result["shape_accuracy"], np.trace(confusion) / 7)
        self.assertEqual(result["shape_names"], list(data_lib.SPRITE_SHAPES))
        self.assertNotIn("shape_accuracy", self.evaluate(num_importance_samples=2, max_images=3))

    def test_checkpoint_selection_and_clear_errors(self):
        self.assertEqual(self.evaluate(checkpoint=2, max_images=4)["step"], 2)
        with open(os.path.join(self.run_dir, "checkpoints", "best", "best.json")) as f:
            best_step = json.load(f)["step"]
        best = self.evaluate(checkpoint="best", max_images=4)
        self.assertEqual(best["step"], best_step)
        self.assertIn(os.path.join("checkpoints", "best"), best["checkpoint_path"])
        with self.assertRaisesRegex(FileNotFoundError, r"no checkpoint for step 3; kept steps: \[2, 4\]"):
            self.evaluate(checkpoint=3)
        with self.assertRaisesRegex(ValueError, "split='train' is not one of"):
            self.evaluate(split="train")
        with self.assertRaisesRegex(ValueError, "num_importance_samples=0 must be a positive int"):
            self.evaluate(num_importance_samples=0)
        with self.assertRaisesRegex(data_lib.DataUnavailableError, "the binding is eval_dataset.local_path"):
            self.evaluate(data=os.path.join(self.tmp, "missing.npz"))

    def test_sampler_log_weights_match_the_densities(self):
        run = runs.load_run(self.run_dir, gin_bindings=[f"eval_dataset.local_path = '{self.binarized}'"])
        sampler = eval_lib.ImportanceSampler(run.model, K, chunk_size=4, seed=3)
        images = tf.constant(self.test_bits[:6], tf.float32)
        image_ids, sample_ids = tf.range(10, 16, dtype=tf.int64), tf.range(7, 11, dtype=tf.int64)
        loc, log_variance = run.model.encode(images)
        weights = sampler._log_weights(images, loc, log_variance, image_ids, sample_ids).numpy()  # [4, 6]
        eps = sampler.noise(image_ids, sample_ids).numpy()
        self.assertAllClose(
            eps[1, 2], tf.random.stateless_normal([run.model.latent_dim], seed=[3 * 2**32 + 12, 8], alg="philox")
        )
        z = loc.numpy() + np.exp(0.5 * log_variance.numpy()) * eps
        logits = run.model.decode(z.reshape(-1, run.model.latent_dim)).numpy().reshape((4, 6, -1)).astype(np.float64)
        x = self.test_bits[:6].reshape(1, 6, -1)
        log_px_z = np.sum(x * logits - np.logaddexp(0.0, logits), axis=-1)
        log_pz = -0.5 * np.sum(z**2 + math.log(2 * math.pi), axis=-1)
        log_qz = -0.5 * np.sum(eps**2 + log_variance.numpy() + math.log(2 * math.pi), axis=-1)
        self.assertAllClose(weights, log_px_z + log_pz - log_qz, rtol=1e-5, atol=1e-2)
        # One trace each for every batch and chunk size (the last, smaller batch and chunk included).
        batches = [images[:4], images[4:]]
        estimates = sampler.estimate(batches)
        self.assertEqual(estimates.log_likelihood.shape, (6,))
        self.assertEqual(sampler._log_weights.experimental_get_tracing_count(), 1)
        self.assertEqual(sampler._encode.experimental_get_tracing_count(), 1)

    def test_interrupted_evaluation_resumes_with_identical_numbers(self):
        expected = self.evaluate()
        model_dir = self.fresh_run()
        original_save = results.Partial.save

        def save_then_die(partial, *args):
            original_save(partial, *args)
            raise KeyboardInterrupt("killed after the first batch")

        with mock.patch.object(results.Partial, "save", save_then_die):
            with self.assertRaises(KeyboardInterrupt):
                self.evaluate(model_dir)
        self.assertLen(glob.glob(os.path.join(model_dir, "eval", "*.partial.npz")), 1)
        resumed = self.evaluate(model_dir)
        self.assertEqual(resumed["resumed_images"], BATCH)
        for key in ("nll", "elbo", "iwae_5", "data_sha256"):
            self.assertEqual(resumed[key], expected[key], msg=key)
        self.assertEmpty(glob.glob(os.path.join(model_dir, "eval", "*.partial.npz")))

    def test_polling_evaluates_each_checkpoint_once(self):
        model_dir = self.fresh_run()
        kwargs = dict(
            num_importance_samples=5,
            batch_size=BATCH,
            max_images=8,
            gin_bindings=[f"eval_dataset.local_path = '{self.binarized}'"],
        )
        printed = []
        results = eval_lib.evaluate_new_checkpoints(
            model_dir, poll_seconds=0.01, timeout=0, on_result=printed.append, **kwargs
        )
        self.assertEqual([r["step"] for r in results], [2, 4])
        self.assertEqual(printed, results)
        self.assertEqual(eval_lib.evaluate_new_checkpoints(model_dir, poll_seconds=0.01, timeout=0, **kwargs), [])

    def test_binary_prints_the_result_as_its_last_line(self):
        model_dir = self.fresh_run()
        argv = [
            "evaluate",
            f"--model_dir={model_dir}",
            "--checkpoint=2",
            "--num_importance_samples=5",
            "--max_images=9",
            f"--batch_size={BATCH}",
            f"--gin_bindings=eval_dataset.local_path = '{self.binarized}'",
        ]
        try:
            flags.FLAGS.unparse_flags()
            flags.FLAGS(argv)
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                evaluate_binary.main(["evaluate"])
            result = json.loads(output.getvalue().strip().splitlines()[-1])
            for key in ("nll", "nll_stderr", "num_importance_samples", "split", "step", "data_sha256"):
                self.assertIn(key, result)
            self.assertEqual(
                (result["step"], result["num_importance_samples"], result["split"], result["num_images"]),
                (2, 5, "test", 9),
            )
            with open(result["result_path"]) as f:
                self.assertEqual(json.load(f), result)
            # Flag errors are UsageErrors; a missing checkpoint is a path error (crvae_tf.cli: exit 5, no usage text).
            for bad, error, message in (
                ("--checkpoint=last", app.UsageError, "--checkpoint"),
                ("--num_importance_samples=0", app.UsageError, "--num_imp"),
                ("--max_images=0", app.UsageError, "--max_images"),
                ("--checkpoint=3", FileNotFoundError, "no checkpoint for step 3"),
            ):
                flags.FLAGS.unparse_flags()
                flags.FLAGS(argv + [bad])
                with self.assertRaisesRegex(error, message):
                    evaluate_binary.main(["evaluate"])
        finally:
            flags.FLAGS.unparse_flags()


if __name__ == "__main__":
    tf.test.main()
