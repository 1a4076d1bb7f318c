"""Math of the objective against independent NumPy/SciPy oracles on fixed tensors."""

import math

import numpy as np
from scipy import special
from scipy import stats
import tensorflow as tf

from crvae_tf.objectives import bounds


def _fixed(seed=0, batch=5, latent=24, pixels=(4, 4, 1)):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(batch, latent)).astype(np.float32),
        rng.normal(scale=0.7, size=(batch, latent)).astype(np.float32),
        (rng.random((batch,) + pixels) < 0.4).astype(np.float32),
        rng.normal(scale=2.0, size=(batch,) + pixels).astype(np.float32),
    )


class BoundsTest(tf.test.TestCase):
    def test_distortion_matches_numpy_bce_sum(self):
        _, _, x, logits = _fixed()
        p = special.expit(logits.astype(np.float64))
        oracle = -(x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=(1, 2, 3))
        self.assertAllClose(bounds.bernoulli_distortion(x, logits), oracle, rtol=1e-5)

    def test_kl_per_step_matches_closed_form_and_sums_to_total(self):
        loc, log_var, _, _ = _fixed()
        kl = 0.5 * (loc.astype(np.float64) ** 2 + np.exp(log_var) - log_var - 1.0)  # [B, D]
        steps = bounds.kl_per_time_step(loc, log_var, num_time_steps=3).numpy()
        self.assertEqual(steps.shape, (5, 3))
        self.assertAllClose(steps, kl.reshape(5, 3, 8).sum(-1), rtol=1e-5)  # contiguous slices
        self.assertAllClose(steps.sum(-1), kl.sum(-1), rtol=1e-5)

    def test_elbo_against_numpy(self):
        loc, log_var, x, logits = _fixed(seed=3)
        p = special.expit(logits.astype(np.float64))
        log_lik = (x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=(1, 2, 3))
        kl = (0.5 * (loc.astype(np.float64) ** 2 + np.exp(log_var) - log_var - 1.0)).sum(-1)
        elbo = -bounds.bernoulli_distortion(x, logits) - tf.reduce_sum(bounds.kl_per_time_step(loc, log_var, 4), -1)
        self.assertAllClose(elbo, log_lik - kl, rtol=1e-5)

    def test_weighted_rate(self):
        kl_steps = tf.constant([[1.0, 2.0, 3.0], [0.5, 0.0, 4.0]])
        self.assertAllClose(bounds.weighted_rate(kl_steps), [6.0, 4.5])
        self.assertAllClose(bounds.weighted_rate(kl_steps, 0.5, [1.0, 0.0, 2.0]), [3.5, 4.25])
        with self.assertRaisesRegex(ValueError, "time steps"):
            bounds.weighted_rate(kl_steps, 1.0, [1.0, 1.0])

    def test_kl_rejects_indivisible_time_steps(self):
        with self.assertRaisesRegex(ValueError, "not divisible"):
            bounds.kl_per_time_step(tf.zeros((2, 10)), tf.zeros((2, 10)), 3)

    def test_log_importance_weights_match_scipy(self):
        loc, log_var, x, _ = _fixed(seed=5, batch=3, latent=6)
        rng = np.random.default_rng(1)
        z = (loc + np.exp(0.5 * log_var) * rng.normal(size=(7, 3, 6))).astype(np.float32)
        logits = rng.normal(size=(7, 3, 4, 4, 1)).astype(np.float32)
        p = special.expit(logits.astype(np.float64))
        log_lik = (x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=(2, 3, 4))
        log_prior = stats.norm.logpdf(z).sum(-1)
        log_q = stats.norm.logpdf(z, loc, np.exp(0.5 * log_var)).sum(-1)
        log_w = bounds.log_importance_weights(x, logits, z, loc, log_var)
        self.assertEqual(log_w.shape, (7, 3))
        self.assertAllClose(log_w, log_lik + log_prior - log_q, rtol=1e-4)
        self.assertAllClose(
            bounds.iwae_bound(log_w), special.logsumexp(log_lik + log_prior - log_q, 0) - math.log(7), rtol=1e-4
        )

    def test_iwae_with_one_sample_is_the_log_weight_and_grows_with_jensen(self):
        log_w = tf.constant([[-3.0, -1.0], [-5.0, -2.0]])
        self.assertAllClose(bounds.iwae_bound(log_w[:1]), [-3.0, -1.0])
        self.assertAllGreaterEqual(bounds.iwae_bound(log_w) - tf.reduce_mean(log_w, 0), 0.0)

    def test_bits_per_dim(self):
        self.assertAllClose(bounds.nats_to_bits_per_dim(784 * math.log(2.0), 784), 1.0)

    def test_grouped_iwae_streams_over_any_chunking(self):
        # IWAE_5 over 20 samples = mean over 4 disjoint groups of 5 of their log-mean-exp (SciPy oracle), whatever
        # the chunks the samples arrive in (groups straddle chunk boundaries).
        log_w = np.random.default_rng(3).normal(-80.0, 4.0, size=(20, 3))
        oracle = np.mean(special.logsumexp(log_w.reshape(4, 5, 3), axis=1) - math.log(5), axis=0)
        for sizes in ((20,), (7, 7, 6), (1,) * 20, (3, 17)):
            grouped = bounds.GroupedLogMeanExp(5)
            start = 0
            for size in sizes:
                grouped.add(log_w[start : start + size])
                start += size
            self.assertAllClose(grouped.result(3), oracle, rtol=1e-12, msg=str(sizes))
        self.assertTrue(np.all(np.isnan(bounds.GroupedLogMeanExp(5).result(3))))  # no complete group yet
