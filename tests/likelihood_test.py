"""Chunked importance-sampled log-likelihood against a linear-Gaussian model whose log p(x) is closed-form.

Oracle model: z ~ N(0, I_d), x | z ~ N(W z + b, sigma^2 I_D), so p(x) = N(x; b, W W^T + sigma^2 I) (SciPy), and the
posterior is N(Sigma W^T (x - b) / sigma^2, Sigma) with Sigma = (I + W^T W / sigma^2)^-1. Log weights are computed
in NumPy; log-mean-exps are checked against `scipy.special.logsumexp`.
"""

import functools
import math

import numpy as np
from scipy import special
from scipy import stats
import tensorflow as tf

from crvae_tf.objectives import bounds

LATENT, OBS, SIGMA, BATCH = 2, 3, 0.5, 6
KS = (1, 10, 100, 1000)


def _linear_gaussian(seed=0):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(OBS, LATENT)), rng.normal(size=OBS)
    x = rng.normal(size=(BATCH, LATENT)) @ w.T + b + SIGMA * rng.normal(size=(BATCH, OBS))
    log_px = stats.multivariate_normal(b, w @ w.T + SIGMA**2 * np.eye(OBS)).logpdf(x)
    post_cov = np.linalg.inv(np.eye(LATENT) + w.T @ w / SIGMA**2)
    post_mean = (x - b) @ w @ post_cov / SIGMA**2
    return w, b, x, log_px, post_mean, post_cov


def _log_weights_fn(w, b, x, q_mean, q_chol, seed):
    """n -> [n, batch] log p(x, z) - log q(z|x) for z = q_mean + eps @ q_chol^T, eps ~ N(0, I), batch = len(x)."""
    rng = np.random.default_rng(seed)

    def fn(n):
        eps = rng.normal(size=(n,) + q_mean.shape)
        z = q_mean + eps @ q_chol.T
        log_q = stats.norm.logpdf(eps).sum(-1) - np.log(np.diag(q_chol)).sum()
        log_joint = stats.norm.logpdf(x, z @ w.T + b, SIGMA).sum(-1) + stats.norm.logpdf(z).sum(-1)
        return log_joint - log_q

    return fn


@functools.cache
def _imperfect_proposal_estimates(repeats=1000):
    """log p(x) `[batch]` and {k: (IWAE_k, ELBO_k)} `[repeats, batch]`, k in KS, from independent draws of
    q(z|x) = N(posterior mean + posterior std, 1.5 * diag(posterior covariance)), a strictly worse proposal."""
    w, b, x, log_px, post_mean, post_cov = _linear_gaussian()
    shifted_mean = post_mean + np.sqrt(np.diag(post_cov))
    x_rep, mean_rep = np.tile(x, (repeats, 1)), np.tile(shifted_mean, (repeats, 1))  # image i at rows i + BATCH*r
    chol = np.diag(np.sqrt(1.5 * np.diag(post_cov)))
    estimates = {}
    for k in KS:
        est = bounds.importance_sampled_log_likelihood(
            _log_weights_fn(w, b, x_rep, mean_rep, chol, seed=k), k, chunk_size=256
        )
        estimates[k] = (est.log_likelihood.numpy().reshape(repeats, BATCH), est.elbo.numpy().reshape(repeats, BATCH))
    return log_px, estimates


class LikelihoodTest(tf.test.TestCase):
    def test_elbo_below_iwae_below_log_likelihood(self):
        log_px, estimates = _imperfect_proposal_estimates()
        for k in KS:
            iwae, elbo = estimates[k]
            self.assertEqual(iwae.dtype, np.float64)
            self.assertAllGreaterEqual(iwae - elbo, -1e-12)  # Jensen, for every draw; equal at k = 1
        self.assertAllClose(estimates[1][0], estimates[1][1], rtol=0, atol=1e-12)
        # In expectation both bounds are strict, for each image, by many standard errors (about 8 and 38 here).
        iwae, elbo = estimates[10]
        iwae_se, elbo_se = iwae.std(0) / math.sqrt(len(iwae)), elbo.std(0) / math.sqrt(len(elbo))
        self.assertAllGreater(log_px - iwae.mean(0) - 4 * iwae_se, 0.0)
        self.assertAllGreater(iwae.mean(0) - elbo.mean(0) - 4 * np.hypot(iwae_se, elbo_se), 0.0)

    def test_iwae_gap_shrinks_monotonically_in_k(self):
        log_px, estimates = _imperfect_proposal_estimates()
        gaps = np.array([(log_px - estimates[k][0]).mean() for k in KS])  # about KL(q||p) = 0.94, then ~chi2/2k
        self.assertTrue(np.all(np.diff(gaps) < 0), msg=f"gaps {gaps}")
        self.assertGreater(gaps[0], 0.5)
        self.assertLess(gaps[-1], gaps[0] / 100)

    def test_chunking_does_not_change_the_estimate(self):
        num_samples = 1000
        log_w = np.random.default_rng(0).normal(loc=-50.0, scale=3.0, size=(num_samples, 4))
        oracle_ll = special.logsumexp(log_w, axis=0) - math.log(num_samples)
        for chunk_size in (num_samples, 2 * num_samples, 64, 7, 1):
            with self.subTest(chunk_size=chunk_size):
                sizes = []

                def fn(n, sizes=sizes):
                    start = sum(sizes)
                    sizes.append(n)
                    return tf.constant(log_w[start : start + n])

                est = bounds.importance_sampled_log_likelihood(fn, num_samples, chunk_size)
                full, rest = divmod(num_samples, chunk_size)
                self.assertEqual(sizes, [chunk_size] * full + ([rest] if rest else []))
                self.assertAllClose(est.log_likelihood, oracle_ll, rtol=0, atol=1e-10)
                self.assertAllClose(est.elbo, log_w.mean(0), rtol=0, atol=1e-10)
                self.assertAllClose(est.log_likelihood, bounds.iwae_bound(log_w), rtol=0, atol=1e-10)

    def test_exact_posterior_proposal_has_zero_variance(self):
        w, b, x, log_px, post_mean, post_cov = _linear_gaussian(seed=1)
        fn = _log_weights_fn(w, b, x, post_mean, np.linalg.cholesky(post_cov), seed=2)
        for k in (1, 10, 100, 1000):
            with self.subTest(k=k):
                est = bounds.importance_sampled_log_likelihood(fn, k, chunk_size=64)
                self.assertAllClose(est.log_likelihood, log_px, rtol=0, atol=1e-9)
                self.assertAllClose(est.elbo, log_px, rtol=0, atol=1e-9)

    def test_streaming_log_mean_exp_is_stable_at_extreme_scales(self):
        rng = np.random.default_rng(3)
        low, high = -1e4 + rng.normal(size=(60, 1)), 1e3 + rng.normal(size=(60, 1))
        # Columns: all low, all high, the max jumping up mid-stream, and down mid-stream.
        log_w = np.concatenate(
            [low, high, np.concatenate([low[:30], high[30:]]), np.concatenate([high[:30], low[30:]])], axis=1
        )
        est = bounds.streaming_log_mean_exp(log_w[i : i + 7] for i in range(0, 60, 7))
        self.assertAllClose(est.log_likelihood, special.logsumexp(log_w, axis=0) - math.log(60), rtol=1e-14, atol=0)
        self.assertAllClose(est.elbo, log_w.mean(0), rtol=1e-14, atol=0)
        self.assertAllClose(est.log_likelihood[0], np.log(np.exp(log_w[:, 0] + 1e4).mean()) - 1e4, rtol=1e-14)

    def test_minus_inf_weights(self):
        finite = np.random.default_rng(4).normal(loc=-700.0, size=(5, 3))
        leading_inf = [np.full((4, 3), -np.inf), finite[:2], finite[2:]]
        all_w = np.concatenate(leading_inf)
        est = bounds.streaming_log_mean_exp(leading_inf)
        self.assertAllClose(est.log_likelihood, special.logsumexp(all_w, axis=0) - math.log(9), rtol=1e-14)
        self.assertAllEqual(est.elbo, np.full(3, -np.inf))
        # A later chunk with some -inf entries, and a stream that is -inf throughout.
        partial = finite.copy()
        partial[3:, 0] = -np.inf
        est = bounds.streaming_log_mean_exp([partial[:3], partial[3:]])
        self.assertAllClose(est.log_likelihood, special.logsumexp(partial, axis=0) - math.log(5), rtol=1e-14)
        est = bounds.importance_sampled_log_likelihood(lambda n: np.full((n, 3), -np.inf), 10, 4)
        self.assertAllEqual(est.log_likelihood, np.full(3, -np.inf))
        self.assertAllEqual(est.elbo, np.full(3, -np.inf))

    def test_arguments_are_validated(self):
        fn = lambda n: tf.zeros([n, 2])  # noqa: E731
        for kwargs in (
            {"num_samples": 0, "chunk_size": 4},
            {"num_samples": 10, "chunk_size": 0},
            {"num_samples": -3, "chunk_size": 4},
        ):
            with self.subTest(**kwargs), self.assertRaisesRegex(ValueError, "must be >= 1"):
                bounds.importance_sampled_log_likelihood(fn, **kwargs)
        with self.assertRaisesRegex(ValueError, r"expected \[4, batch\]"):
            bounds.importance_sampled_log_likelihood(lambda n: tf.zeros([n + 1, 2]), 10, 4)
        with self.assertRaisesRegex(ValueError, "empty"):
            bounds.streaming_log_mean_exp([])


if __name__ == "__main__":
    tf.test.main()
