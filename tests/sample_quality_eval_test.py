"""Sample quality through the evaluation binary (python -m crvae_tf.evaluate --metrics=fid,kid,is,classifier_accuracy)
on a tiny sprites run and its export, with a seeded random-initialised feature network and a fabricated Inception
graph; the real-feature cache; the errors; and the feature-network job of the training binary (python -m
crvae_tf.train with gin/feature_net/*.gin: job.kind = 'feature_net')."""

import json
import os
import shutil
import tempfile
from unittest import mock

from absl import app
import gin
import keras
import numpy as np
from sample_quality_test import _fabricated_inception_graph
from sample_quality_test import _fid_eigvals
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf import builders
from crvae_tf import cli
from crvae_tf import data as data_lib
from crvae_tf import evaluate as evaluate_binary
from crvae_tf import runs
from crvae_tf import train as train_binary
from crvae_tf.evaluation import feature_classifier
from crvae_tf.evaluation import sample_quality as sq
from crvae_tf.evaluation import sample_quality_eval
from crvae_tf.serving import endpoints
from crvae_tf.serving import export_lib
from crvae_tf.training import loop

import testing_utils

NUM_SPRITES = (64, 16, 32)  # train, validation, test
NUM_SAMPLES = 24  # sampled in batches of 10, 10, 4
STEP = 2


class SampleQualityBinaryTest(testing_utils.GinTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmp = tempfile.mkdtemp(prefix="sample_quality_eval_test-")
        cls.run_dir = os.path.join(cls.tmp, "run")
        gin.clear_config()
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "quickstart.gin")],
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("channel_recurrent")
            + [f"dataset.num_sprites = {NUM_SPRITES}", f"train.max_steps = {STEP}", "train.validation_every_steps = 2"],
            finalize=False,
        )
        loop.train(cls.run_dir)
        gin.clear_config()
        cls.export_base = os.path.join(cls.tmp, "export")
        export_lib.export_run(cls.run_dir, cls.export_base)
        gin.clear_config()
        # A seeded, random-initialised classifier of the 4 sprite shapes as the proxy feature network (16 features).
        model = feature_classifier.build_classifier((28, 28, 1), 4, widths=(4, 8), feature_dim=16, seed=3)
        cls.network_path = feature_classifier.save(model, os.path.join(cls.tmp, "feature_net"), {})["model_path"]
        cls.features = keras.Model(model.inputs[0], model.get_layer(feature_classifier.FEATURES_LAYER).output)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)
        super().tearDownClass()

    def bindings(self, cache_dir, network="classifier", path=None):
        path = path or self.network_path
        key = "inception_path" if network == "inception" else "feature_network_path"
        return [
            f"--gin_bindings=sample_quality.feature_network = '{network}'",
            f"--gin_bindings=sample_quality.{key} = '{path}'",
            f"--gin_bindings=sample_quality.num_samples = {NUM_SAMPLES}",
            "--gin_bindings=sample_quality.sample_batch_size = 10",
            "--gin_bindings=sample_quality.kid_num_subsets = 5",
            "--gin_bindings=sample_quality.kid_subset_size = 8",
            "--gin_bindings=sample_quality.inception_score_splits = 2",
            f"--gin_bindings=sample_quality.cache_dir = '{cache_dir}'",
        ]

    def evaluate(self, where, extra):
        lines = testing_utils.run_main(evaluate_binary.main, ["evaluate", where, *extra]).strip().splitlines()
        return [json.loads(line) for line in lines]

    def test_run_and_export_proxy_numbers_match_an_oracle_and_each_other(self):
        cache = os.path.join(self.get_temp_dir(), "cache_run_export")
        metrics = "--metrics=fid,kid,is,classifier_accuracy"
        printed = self.evaluate(f"--model_dir={self.run_dir}", [metrics, f"--checkpoint={STEP}", *self.bindings(cache)])
        self.assertLen(printed, 1)  # four metrics, one shared computation, printed once
        result = printed[0]
        for key in ("proxy_fid", "proxy_kid_mean", "proxy_kid_sem", "proxy_inception_score_mean"):
            self.assertIn(key, result)
        for key in ("fid", "kid_mean", "kid_sem", "inception_score_mean"):
            self.assertNotIn(key, result)  # only the Inception graph's numbers are named FID / KID
        self.assertTrue(result["network"]["is_proxy"])
        self.assertEqual(result["network"]["sha256"], artifacts.file_sha256(self.network_path))
        self.assertEqual((result["num_real"], result["num_fake"], result["step"]), (NUM_SPRITES[2], NUM_SAMPLES, STEP))
        self.assertEqual((result["source"]["kind"], result["source"]["precision"]), ("run", "float32"))
        self.assertFalse(result["real_features_cache"]["hit"])
        stem = f"sample_quality-test-step{STEP}-s{NUM_SAMPLES}-{result['network']['sha256'][:12]}"
        self.assertEqual(result["result_path"], os.path.join(os.path.abspath(self.run_dir), "eval", stem + ".json"))
        with open(result["result_path"]) as f:
            self.assertEqual(json.load(f), result)

        # Oracle: the run's test sprites and its decoded z (the export's draw, seeds of `sampled_images`) through the
        # feature layer, and the Frechet distance from the eigenvalues of S1 S2 (NumPy; dead ReLU units: S singular).
        run = runs.load_run(self.run_dir, STEP, ["model.precision = 'float32'"])
        real = np.asarray(self.features(run.splits.test), np.float64)
        fake = []
        for b, n in enumerate((10, 10, 4)):
            seed = sq.batch_seed(0, b)
            z = tf.random.stateless_normal([n, run.model.latent_dim], seed=[seed, 0], alg="philox")
            fake.append(np.asarray(self.features(run.model.generate(z)), np.float64))
        fake = np.concatenate(fake)
        self.assertAllClose(result["proxy_fid"], _fid_eigvals(real, fake), rtol=1e-4)
        labels = run.splits.factors["test"]["shape"]
        predicted = np.argmax(keras.models.load_model(self.network_path).predict(run.splits.test, verbose=0), axis=1)
        self.assertAllClose(result["classifier_real_accuracy"], np.mean(predicted == labels))

        # The export's `sample` signature gives the same images, hence the same numbers; the real features come from
        # the cache the run's evaluation wrote; the result goes beside the export's versions.
        gin.clear_config()
        exported = self.evaluate(f"--export_dir={self.export_base}", [metrics, *self.bindings(cache)])[-1]
        self.assertTrue(exported["real_features_cache"]["hit"])
        self.assertEqual((exported["source"]["kind"], exported["source"]["precision"]), ("export", "float32"))
        self.assertEqual(exported["step"], STEP)
        self.assertEqual(exported["data_sha256"], result["data_sha256"])
        for key in ("proxy_fid", "proxy_kid_mean", "proxy_inception_score_mean", "classifier_sample_confidence"):
            self.assertAllClose(exported[key], result[key], rtol=1e-4, msg=key)
        self.assertEqual(
            exported["result_path"], os.path.join(os.path.abspath(self.export_base), "eval", stem + ".json")
        )
        self.assertTrue(os.path.isfile(exported["result_path"]))

    def test_user_supplied_inception_graph_gives_fid_and_kid(self):
        cache = os.path.join(self.get_temp_dir(), "cache_inception")
        rng = np.random.default_rng(5)
        graph = os.path.join(self.get_temp_dir(), sq.INCEPTION_GRAPH_FILE)
        _fabricated_inception_graph(
            graph,
            rng.normal(size=(3, 3, 3, 6)).astype(np.float32),
            rng.normal(size=(6, 5)).astype(np.float32),
            rng.normal(size=5).astype(np.float32),
        )
        result = self.evaluate(
            f"--export_dir={os.path.join(self.export_base, str(STEP))}",
            ["--metrics=fid,kid", "--max_images=20", *self.bindings(cache, network="inception", path=graph)],
        )[-1]
        self.assertFalse(result["network"]["is_proxy"])
        self.assertEqual(result["network"]["sha256"], artifacts.file_sha256(graph))
        self.assertEqual(result["network"]["name"], sq.INCEPTION_NAME)
        self.assertGreater(result["fid"], 0.0)
        self.assertIn("kid_mean", result)
        self.assertNotIn("proxy_fid", result)
        self.assertNotIn("inception_score_mean", result)  # not asked for
        self.assertEqual((result["num_real"], result["max_images"]), (20, 20))
        self.assertTrue(result["result_path"].endswith("-n20.json"))

    def test_missing_inception_file_and_usage_errors(self):
        export = f"--export_dir={self.export_base}"
        with self.assertRaises(sq.MissingFeatureNetworkError) as caught:
            testing_utils.run_main(evaluate_binary.main, ["evaluate", export, "--metrics=fid"])
        message, code = cli.message_and_code(caught.exception)
        self.assertEqual(code, cli.EXIT_PATH)
        self.assertIn("sample_quality.inception_path", message)
        self.assertIn(sq.INCEPTION_GRAPH_FILE, message)
        gin.clear_config()
        with self.assertRaisesRegex(sq.MissingFeatureNetworkError, "feature_network_path"):
            testing_utils.run_main(
                evaluate_binary.main,
                ["evaluate", export, "--metrics=kid", "--gin_bindings=sample_quality.feature_network='classifier'"],
            )
        for argv, pattern in (
            ([export, "--metrics=nll"], "need the run"),
            ([export, f"--model_dir={self.run_dir}", "--metrics=fid"], "one of --model_dir"),
            ([f"--model_dir={self.run_dir}", "--metrics=fid,bogus"], "unknown"),
            ([export, "--metrics=fid", "--checkpoint=2"], "--checkpoint"),
        ):
            with self.subTest(argv=argv), self.assertRaisesRegex(app.UsageError, pattern):
                testing_utils.run_main(evaluate_binary.main, ["evaluate", *argv])
        with self.assertRaisesRegex(ValueError, "inception_path is read only"):
            sample_quality_eval.Settings(feature_network="classifier", inception_path="x.pb")

    def test_the_binary_draws_z_as_the_export_does(self):
        self.assertEqual(sample_quality_eval.SAMPLE_SEED_SALT, endpoints.SAMPLE_SEED_SALT)
        self.assertEqual(sample_quality_eval.MAX_EXPORT_SAMPLE_NUM, endpoints.MAX_SAMPLE_NUM)


class RealFeatureCacheTest(testing_utils.GinTestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        images = {s: rng.uniform(size=(n, 28, 28, 1)).astype(np.float32) for s, n in (("train", 4), ("test", 30))}
        self.splits = data_lib.ImageSplits(
            "fake", "none", images["train"], images["train"], images["test"], "generated:test"
        )
        model = feature_classifier.build_classifier((28, 28, 1), 3, widths=(2, 4), feature_dim=5, seed=1)
        self.network = sq.KerasFeatureNetwork(model, layer=feature_classifier.FEATURES_LAYER)
        self.settings = sample_quality_eval.Settings(
            feature_network="keras",
            num_samples=12,
            kid_num_subsets=3,
            kid_subset_size=6,
            cache_dir=os.path.join(self.get_temp_dir(), "cache"),
        )

    def evaluate(self, max_images=None, seed=0):
        def sample(num, seed):
            return np.random.default_rng(seed).uniform(size=(num, 28, 28, 1)).astype(np.float32)

        return sample_quality_eval.evaluate_samples(
            sample,
            self.splits,
            "test",
            self.network,
            self.settings,
            ["fid", "kid"],
            step=7,
            output_dir=self.get_temp_dir(),
            source={"kind": "test"},
            max_images=max_images,
            seed=seed,
        )

    def test_the_real_features_are_computed_once_per_data_and_network(self):
        first = self.evaluate()
        self.assertFalse(first["real_features_cache"]["hit"])
        collect = sq.collect_features
        with mock.patch.object(sq, "collect_features", side_effect=collect) as counted:
            second = self.evaluate()
        self.assertEqual(counted.call_count, 1)  # the samples only
        self.assertTrue(second["real_features_cache"]["hit"])
        self.assertEqual(second["real_features_cache"]["path"], first["real_features_cache"]["path"])
        for key in ("proxy_fid", "proxy_kid_mean", "proxy_kid_sem"):
            self.assertEqual(second[key], first[key])
        capped = self.evaluate(max_images=20)  # other real pixels: another entry
        self.assertFalse(capped["real_features_cache"]["hit"])
        self.assertNotEqual(capped["data_sha256"], first["data_sha256"])
        self.assertTrue(first["result_path"].endswith("-step7-s12-" + self.network.sha256[:12] + ".json"))
        reseeded = self.evaluate(seed=2)  # other samples: their own file; the same real features
        self.assertTrue(reseeded["result_path"].endswith("-seed2.json"))
        self.assertTrue(reseeded["real_features_cache"]["hit"])
        self.assertNotEqual(reseeded["proxy_fid"], first["proxy_fid"])
        with open(first["real_features_cache"]["path"], "wb") as f:
            f.write(b"not an npz")  # a damaged entry is recomputed, not trusted
        again = self.evaluate()
        self.assertFalse(again["real_features_cache"]["hit"])
        self.assertEqual(again["proxy_fid"], first["proxy_fid"])
        with self.assertRaisesRegex(ValueError, "no class probabilities"):
            sample_quality_eval.evaluate_samples(
                None, self.splits, "test", self.network, self.settings, ["is"], 7, self.get_temp_dir(), {}
            )


class ClassifierStatisticsTest(tf.test.TestCase):
    def test_against_hand_computed_values(self):
        fake = np.array([[0.95, 0.05, 0.0], [0.2, 0.7, 0.1], [0.1, 0.0, 0.9], [0.5, 0.4, 0.1]])
        real = np.array([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1]])
        stats = feature_classifier.classifier_statistics(fake, real, np.array([0, 1, 2, 2]), 0.9)
        self.assertAllClose(stats["classifier_real_accuracy"], 0.75)  # the last real image is labelled 2, seen as 1
        self.assertAllClose(stats["classifier_sample_confidence"], (0.95 + 0.7 + 0.9 + 0.5) / 4)
        self.assertAllClose(stats["classifier_sample_confident_fraction"], 0.5)
        self.assertAllClose(stats["classifier_real_confident_fraction"], 0.5)
        self.assertAllClose(stats["classifier_sample_class_fractions"], [0.5, 0.25, 0.25])
        self.assertAllClose(stats["classifier_real_class_fractions"], [0.25, 0.25, 0.5])
        self.assertAllClose(stats["classifier_sample_class_tv"], 0.25)

    def test_blur_is_a_normalised_gaussian_away_from_the_border(self):
        images = np.zeros((3, 15, 15, 1), np.float32)
        images[:, 7, 7, 0] = 1.0  # a point in the middle: its blur is the kernel itself
        out = feature_classifier.blur(images, np.array([0.0, 1.0, 2.0]))
        self.assertAllEqual(out[0], images[0])  # sigma 0: unchanged
        grid = np.arange(15) - 7.0
        for i, sigma in ((1, 1.0), (2, 2.0)):
            kernel = np.exp(-0.5 * (grid[:, None] ** 2 + grid[None, :] ** 2) / sigma**2)
            self.assertAllClose(out[i, :, :, 0], kernel / kernel.sum(), atol=2e-3)
            self.assertAllClose(out[i].sum(), 1.0, atol=1e-3)


class TrainFeatureNetTest(testing_utils.GinTestCase):
    def test_trains_saves_and_never_replaces_the_sprites_classifier(self):
        model_dir = os.path.join(self.get_temp_dir(), "feature_net")
        argv = [
            "train",
            f"--gin_file={os.path.join(testing_utils.GIN_DIR, 'feature_net', 'sprites.gin')}",
            f"--model_dir={model_dir}",
            "--gin_bindings=dataset.num_sprites = (256, 32, 64)",
            "--gin_bindings=feature_net.num_epochs = 2",
            "--gin_bindings=feature_net.widths = (4, 8)",
            "--gin_bindings=feature_net.feature_dim = 8",
            "--gin_bindings=feature_net.batch_size = 32",
            "--gin_bindings=feature_net.learning_rate = 0.003",
            "--gin_bindings=feature_net.blur_sigma_range = (0.5, 2.0)",
        ]
        info = json.loads(testing_utils.run_main(train_binary.main, argv).strip().splitlines()[-1])
        path = os.path.join(model_dir, feature_classifier.MODEL_FILE)
        self.assertEqual(info["sha256"], artifacts.file_sha256(path))
        self.assertEqual((info["dataset"], info["num_classes"], info["num_train"]), ("sprites", 4, 256))
        self.assertEqual(info["settings"]["blur_sigma_range"], [0.5, 2.0])
        self.assertLess(info["epochs"][1]["loss"], info["epochs"][0]["loss"])  # it learns
        with open(os.path.join(model_dir, feature_classifier.INFO_FILE)) as f:
            self.assertEqual(json.load(f)["test_accuracy"], info["test_accuracy"])
        # The stated test accuracy, recomputed from the saved file on the same generated test sprites.
        splits = data_lib.load_image_splits(
            "sprites",
            seed=0,
            num_sprites=(256, 32, 64),
            sprite_radius=12.0,
            sprite_scale=(0.75, 1.0),
            sprite_rotation=(-45.0, 45.0),
        )
        predicted = np.argmax(keras.models.load_model(path).predict(splits.test, verbose=0), axis=1)
        self.assertAllClose(info["test_accuracy"], np.mean(predicted == splits.factors["test"]["shape"]))
        gin.clear_config()
        with open(path, "rb") as f:
            saved = f.read()
        with self.assertRaisesRegex(FileExistsError, "never replaced") as caught:
            testing_utils.run_main(train_binary.main, argv)
        self.assertEqual(cli.message_and_code(caught.exception)[1], cli.EXIT_PATH)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), saved)
        gin.clear_config()
        # A job kind that does not exist: one configuration error naming the kinds (before any data is read).
        with self.assertRaises(ValueError) as caught:
            testing_utils.run_main(train_binary.main, [*argv, "--gin_bindings=job.kind = 'classifier'"])
        message, code = cli.message_and_code(caught.exception)
        self.assertEqual(code, cli.EXIT_CONFIG)
        self.assertIn("job.kind='classifier' is not a job; the kinds are 'model', 'feature_net'.", message)
        self.assertEqual(tuple(train_binary.JOBS), builders.JOB_KINDS)


if __name__ == "__main__":
    tf.test.main()
