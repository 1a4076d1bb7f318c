"""The empirical MVN prior (paper Sec. 3, Fig. 2(h)) and the explore binary that fits it to a run.

Oracles: `np.mean` / `np.cov` per channel, a known per-channel MVN (large-N recovery), and
`scipy.stats.multivariate_normal` for the log density. End to end: a 2-step tiny cVAE run, then
`python -m crvae_tf.explore --mode=empirical_prior` in-process, twice (the second reuses the saved prior).
"""

import json
import os

from absl import app
import gin
import numpy as np
from scipy import stats
import tensorflow as tf

from crvae_tf import builders
from crvae_tf import data as data_lib
from crvae_tf import explore
from crvae_tf import runs
from crvae_tf.architectures import blocks
from crvae_tf.exploration import empirical_prior
from crvae_tf.exploration import explore_lib
from crvae_tf.training import loop

import testing_utils

EmpiricalPrior = empirical_prior.EmpiricalPrior
SHAPE = (3, 2, 3)  # C x H x W: 3 channels of 6 spatial positions
CHANNELS, PIXELS = SHAPE[0], SHAPE[1] * SHAPE[2]
DIM = CHANNELS * PIXELS


def _known_mvn(seed=0):
    """Per-channel ground truth: means [C, P] and correlated covariances W W^T + 0.1 I, [C, P, P]."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 2.0, (CHANNELS, PIXELS))
    w = rng.normal(size=(CHANNELS, PIXELS, PIXELS))
    covariances = np.einsum("cij,ckj->cik", w, w) + 0.1 * np.eye(PIXELS)
    return means, covariances


def _sample_known(num, seed=1):
    """[num, C*P] flat channel-major latents, channel k ~ N(means[k], covariances[k])."""
    means, covariances = _known_mvn()
    rng = np.random.default_rng(seed)
    channels = [rng.multivariate_normal(m, s, size=num) for m, s in zip(means, covariances)]
    return np.stack(channels, axis=1).reshape(num, DIM)


def _tiny_model(kind):
    gin.clear_config()
    gin.parse_config(
        ["encoder.base_channels = 4", "decoder.base_channels = 4", f"latent_head.kind = '{kind}'"]
        + testing_utils.tiny_head_bindings(kind)
    )
    return builders.build_model(seed=0)


class EstimatorTest(testing_utils.GinTestCase):
    def test_matches_numpy_mean_and_unbiased_covariance(self):
        z = np.random.default_rng(0).normal(3.0, 1.5, (40, DIM))
        prior = EmpiricalPrior.from_latents(z, SHAPE)
        per_channel = z.reshape(40, CHANNELS, PIXELS)
        for k in range(CHANNELS):
            self.assertAllClose(prior.mean[k], np.mean(per_channel[:, k], axis=0), rtol=1e-12, atol=1e-12)
            self.assertAllClose(prior.covariance[k], np.cov(per_channel[:, k], rowvar=False), rtol=1e-10, atol=1e-12)
        self.assertEqual(prior.num_images, 40)
        self.assertEqual(prior.mean.dtype, np.float64)

    def test_recovers_a_known_correlated_mvn(self):
        means, covariances = _known_mvn()
        prior = EmpiricalPrior.from_latents(_sample_known(40000), SHAPE)
        scale = np.sqrt(np.einsum("cii->ci", covariances))  # per-dimension std
        self.assertAllClose(prior.mean, means, atol=float(4 * scale.max() / np.sqrt(40000)))
        # Relative to sqrt(Sigma_ii Sigma_jj): the sampling error of a covariance is ~ 1/sqrt(N).
        normaliser = scale[:, :, None] * scale[:, None, :]
        self.assertAllClose(prior.covariance / normaliser, covariances / normaliser, atol=0.03)
        self.assertEqual(prior.get_config()["jitter_max"], 0.0)

    def test_streaming_over_batches_equals_one_shot(self):
        z = _sample_known(257) + 1e4  # a large offset: the shifted sums must not lose precision
        one_shot = EmpiricalPrior.from_latents(z, SHAPE)
        bounds = [0, 1, 8, 100, 101, 257]
        streamed = EmpiricalPrior.from_latents((z[a:b] for a, b in zip(bounds[:-1], bounds[1:])), SHAPE)
        self.assertEqual(streamed.num_images, 257)
        self.assertAllClose(streamed.mean, one_shot.mean, rtol=1e-13, atol=0)
        self.assertAllClose(streamed.covariance, one_shot.covariance, rtol=1e-9, atol=1e-9)
        per_channel = (z - 1e4).reshape(257, CHANNELS, PIXELS)
        for k in range(CHANNELS):
            self.assertAllClose(streamed.covariance[k], np.cov(per_channel[:, k], rowvar=False), rtol=1e-8, atol=1e-8)

    def test_channel_k_is_the_models_channel_k(self):
        """Flat latents are `blocks.nhwc_to_flat` of NHWC codes: channel k of the prior is NHWC channel k."""
        rng = np.random.default_rng(2)
        nhwc = rng.normal(size=(30, SHAPE[1], SHAPE[2], CHANNELS)) + np.arange(CHANNELS) * 10.0
        prior = EmpiricalPrior.from_latents(np.asarray(blocks.nhwc_to_flat(nhwc)), SHAPE)
        for k in range(CHANNELS):
            plane = nhwc[..., k].reshape(30, PIXELS)  # (h, w) row-major
            self.assertAllClose(prior.mean[k], plane.mean(axis=0))
            self.assertAllClose(prior.covariance[k], np.cov(plane, rowvar=False))

    def test_sampler_reproduces_mean_and_covariance(self):
        means, covariances = _known_mvn()
        prior = EmpiricalPrior(means, covariances, SHAPE, num_images=1000)
        self.assertAllClose(np.einsum("cij,ckj->cik", prior.cholesky, prior.cholesky), covariances)
        self.assertAllClose(prior.cholesky, np.tril(prior.cholesky))
        z = prior.sample(100000, seed=5, dtype=np.float64).reshape(100000, CHANNELS, PIXELS)
        scale = np.sqrt(np.einsum("cii->ci", covariances))
        normaliser = scale[:, :, None] * scale[:, None, :]
        for k in range(CHANNELS):
            self.assertAllClose(z[:, k].mean(axis=0), means[k], atol=float(4 * scale.max() / np.sqrt(1e5)))
            self.assertAllClose(
                np.cov(z[:, k], rowvar=False) / normaliser[k], covariances[k] / normaliser[k], atol=0.02
            )

    def test_same_seed_same_samples(self):
        prior = EmpiricalPrior.from_latents(_sample_known(100), SHAPE)
        first, again, other = prior.sample(8, seed=3), prior.sample(8, seed=3), prior.sample(8, seed=4)
        self.assertEqual(first.shape, (8, DIM))
        self.assertEqual(first.dtype, np.float32)
        np.testing.assert_array_equal(first, again)
        self.assertFalse(np.allclose(first, other))
        # Paired noise: a sample is A eps + mu for the standard-normal latents of the same seed.
        eps = empirical_prior.standard_normal_latents(8, DIM, seed=3)
        np.testing.assert_array_equal(first, prior.transform(eps).astype(np.float32))
        np.testing.assert_array_equal(eps, empirical_prior.standard_normal_latents(8, DIM, seed=3))
        with self.assertRaisesRegex(ValueError, "non-negative int"):
            prior.sample(2, seed=-1)

    def test_log_prob_matches_scipy(self):
        prior = EmpiricalPrior.from_latents(_sample_known(200), SHAPE)
        z = _sample_known(12, seed=9).reshape(3, 4, DIM)
        expected = np.zeros((3, 4))
        for k in range(CHANNELS):
            mvn = stats.multivariate_normal(prior.mean[k], prior.covariance[k])
            expected += mvn.logpdf(z.reshape(3, 4, CHANNELS, PIXELS)[..., k, :])
        log_prob = prior.log_prob(z)
        self.assertEqual(log_prob.shape, (3, 4))
        self.assertEqual(log_prob.dtype, np.float64)
        self.assertAllClose(log_prob, expected, rtol=1e-10, atol=1e-10)
        self.assertAllClose(prior.log_prob(z[0, 0]), expected[0, 0], rtol=1e-10)

    def test_save_load_round_trip_is_exact(self):
        prior = EmpiricalPrior.from_latents(_sample_known(50), SHAPE, step=7, seed=3, split="train", source="ckpt-7")
        path = empirical_prior.prior_path(os.path.join(self.get_temp_dir(), "run"), 7)
        self.assertTrue(path.endswith(os.path.join("run", "empirical_prior", "step7.npz")))
        prior.save(path)
        self.assertEqual(os.listdir(os.path.dirname(path)), ["step7.npz"])  # no temp file left behind
        loaded = EmpiricalPrior.load(path)
        for name in ("mean", "covariance", "cholesky", "jitter"):
            np.testing.assert_array_equal(getattr(loaded, name), getattr(prior, name))
        self.assertEqual(loaded.get_config(), prior.get_config())
        self.assertEqual(loaded.get_config()["num_images"], 50)
        self.assertEqual(loaded.get_config()["latent_shape"], list(SHAPE))
        self.assertEqual((loaded.step, loaded.seed, loaded.split), (7, 3, "train"))
        np.testing.assert_array_equal(loaded.sample(4, seed=1), prior.sample(4, seed=1))
        with self.assertRaisesRegex(FileNotFoundError, "crvae_tf.explore"):
            EmpiricalPrior.load(os.path.join(self.get_temp_dir(), "missing.npz"))

    def test_singular_covariance_gets_a_reported_jitter(self):
        # N = 4 images for 6 spatial positions: every Sigma_k has rank <= 3.
        prior = EmpiricalPrior.from_latents(_sample_known(4), SHAPE)
        config = prior.get_config()
        self.assertGreater(config["jitter_max"], 0.0)
        self.assertEqual(config["jittered_channels"], CHANNELS)
        for k in range(CHANNELS):
            self.assertLessEqual(prior.jitter[k], 1e-6 * np.mean(np.diag(prior.covariance[k])))
            self.assertAllClose(
                prior.cholesky[k] @ prior.cholesky[k].T, prior.covariance[k] + prior.jitter[k] * np.eye(PIXELS)
            )
        self.assertTrue(np.all(np.isfinite(prior.log_prob(prior.sample(3, seed=0)))))

    def test_bad_inputs_give_clear_errors(self):
        with self.assertRaisesRegex(ValueError, "at least 2"):
            EmpiricalPrior.from_latents(_sample_known(1), SHAPE)
        with self.assertRaisesRegex(ValueError, r"channel-major flattening of 3x2x3"):
            EmpiricalPrior.from_latents(np.zeros((5, DIM + 1)), SHAPE)
        with self.assertRaisesRegex(FloatingPointError, "NaN"):
            EmpiricalPrior.from_latents(np.full((5, DIM), np.nan), SHAPE)


class ModelTest(testing_utils.GinTestCase):
    def test_fc_head_is_rejected(self):
        model = _tiny_model("fc")
        with self.assertRaisesRegex(ValueError, r"convolutional latent.*FCHead.*latent_head.kind='fc'"):
            empirical_prior.latent_shape_of(model)
        with self.assertRaisesRegex(ValueError, "mnist_cvae.gin"):
            EmpiricalPrior.fit(model, np.zeros((4, 28, 28, 1), np.float32), seed=0)

    def test_fit_draws_one_posterior_sample_per_image_whatever_the_batching(self):
        model = _tiny_model("conv")
        self.assertEqual(empirical_prior.latent_shape_of(model), (8, 4, 4))
        images = (np.random.default_rng(0).uniform(size=(20, 28, 28, 1)) < 0.3).astype(np.float32)
        prior = EmpiricalPrior.fit(model, images, seed=4, batch_size=7, step=3)
        self.assertEqual((prior.num_images, prior.seed, prior.step, prior.latent_shape), (20, 4, 3, (8, 4, 4)))
        # The oracle: z = loc + exp(log_variance / 2) eps, eps from the documented stream, in image order.
        loc, log_variance = (np.asarray(t, np.float64) for t in model.encode(images, training=False))
        eps = np.random.default_rng([4, 101]).standard_normal(loc.shape)
        expected = EmpiricalPrior.from_latents(loc + np.exp(0.5 * log_variance) * eps, (8, 4, 4))
        self.assertAllClose(prior.mean, expected.mean, rtol=1e-5, atol=1e-5)
        self.assertAllClose(prior.covariance, expected.covariance, rtol=1e-4, atol=1e-5)
        # Batching and the input type (array, dataset of (image, label) pairs) do not change the result.
        dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(20))).batch(6)
        again = EmpiricalPrior.fit(model, dataset, seed=4)
        self.assertAllClose(again.covariance, prior.covariance, rtol=1e-5, atol=1e-6)
        first = EmpiricalPrior.fit(model, dataset, seed=4, max_images=9)
        self.assertEqual(first.num_images, 9)
        self.assertAllClose(first.mean, EmpiricalPrior.fit(model, images[:9], seed=4).mean, atol=1e-6)

    def test_pixels_are_mapped_to_the_models_input_range(self):
        """The adversarial family encodes [-1, 1] pixels: fit maps its [0, 1] images there first."""
        model = _tiny_model("conv")

        class SignedInputs:  # the same network behind an adversarial-style input range
            input_range = (-1.0, 1.0)
            latent_head, latent_dim = model.latent_head, model.latent_dim

            def encode(self, x, training=False):
                return model.encode(x, training=training)

        images = (np.random.default_rng(1).uniform(size=(6, 28, 28, 1)) < 0.3).astype(np.float32)
        signed = EmpiricalPrior.fit(SignedInputs(), images, seed=2)
        self.assertAllClose(signed.mean, EmpiricalPrior.fit(model, 2.0 * images - 1.0, seed=2).mean, atol=1e-6)
        self.assertGreater(np.abs(signed.mean - EmpiricalPrior.fit(model, images, seed=2).mean).max(), 1e-4)


class ExploreBinaryTest(testing_utils.GinTestCase):
    """`python -m crvae_tf.explore --mode=empirical_prior` on a 2-step tiny cVAE run, in-process."""

    def _explore(self, *args):
        return testing_utils.run_main(explore.main, ["explore", *args])

    def test_fit_save_render_and_reuse(self):
        tmp = self.get_temp_dir()
        mnist = testing_utils.write_fake_mnist(os.path.join(tmp, "mnist.npz"))
        model_dir = os.path.join(tmp, "cvae")
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "mnist_cvae.gin")],
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("conv")
            + ["train.max_steps = 2", f"dataset.local_path = '{mnist}'", "dataset.validation_size = 40"],
            finalize=False,
        )
        loop.train(model_dir)
        gin.clear_config()
        stdout = self._explore(
            f"--model_dir={model_dir}", "--mode=empirical_prior", "--num_samples=6", "--max_images=50", "--seed=1"
        )
        summary = json.loads(stdout.strip().splitlines()[-1])
        prior_file = os.path.join(model_dir, "empirical_prior", "step2.npz")
        pngs = [
            os.path.join(model_dir, "explore", f"{kind}-step2.png") for kind in ("empirical_prior", "standard_prior")
        ]
        self.assertEqual(
            (summary["step"], summary["num_images"], summary["prior"], summary["reused_prior"]),
            (2, 50, prior_file, False),
        )
        self.assertEqual([summary["empirical_prior_png"], summary["standard_prior_png"]], pngs)
        self.assertEqual(summary["latent_shape"], [8, 4, 4])
        for png in pngs:
            grid = tf.io.decode_png(open(png, "rb").read()).numpy()
            self.assertEqual(grid.shape, (2 * 29 + 1, 3 * 29 + 1, 1))  # 6 samples: 3 columns x 2 rows
        # Saved with the model: fitted on the TRAINING split, binarized as the evaluation pipeline, run seed.
        prior = EmpiricalPrior.load(prior_file)
        self.assertEqual((prior.step, prior.split, prior.num_images, prior.seed), (2, "train", 50, 1208))
        run = runs.load_run(model_dir)
        oracle = EmpiricalPrior.fit(
            run.model,
            data_lib.make_dataset(
                run.splits.train[:50],
                batch_size=explore_lib.FIT_BATCH_SIZE,
                binarization=run.splits.binarization,
                seed=run.seed,
                training=False,
            ),
            seed=run.seed,
        )
        np.testing.assert_array_equal(prior.mean, oracle.mean)
        np.testing.assert_array_equal(prior.covariance, oracle.covariance)

        # Second call: the saved prior is reused (file untouched), the grids are identical.
        written = {path: open(path, "rb").read() for path in pngs + [prior_file]}
        os.utime(prior_file, (0, 0))
        summary = json.loads(
            self._explore(
                f"--model_dir={model_dir}", "--num_samples=6", "--max_images=50", "--seed=1", "--checkpoint=2"
            )
            .strip()
            .splitlines()[-1]
        )
        self.assertTrue(summary["reused_prior"])
        self.assertEqual(os.stat(prior_file).st_mtime, 0)
        for path, payload in written.items():
            self.assertEqual(open(path, "rb").read(), payload, msg=path)

        with self.assertRaisesRegex(
            app.UsageError,
            r"--mode='time_steps'.*"
            r"\['empirical_prior', 'progressive', 'interpolate', 'style', 'manifold', 'complete', 'disentangle'\]",
        ):
            self._explore(f"--model_dir={model_dir}", "--mode=time_steps")
        with self.assertRaisesRegex(FileNotFoundError, r"no checkpoint for step 7; kept steps: \[2\]"):
            self._explore(f"--model_dir={model_dir}", "--checkpoint=7")
