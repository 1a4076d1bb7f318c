"""`models.FusedAdam` (TensorFlow's fused Adam kernel) against a NumPy Adam oracle and Keras' Adam: same updates,
same slots and checkpoint keys, learning-rate schedules honoured."""

import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from crvae_tf import models


def numpy_adam(theta, gradients, rates, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
    """Kingma & Ba (2015), Algorithm 1, in float64: the parameters after one step per gradient (epsilon added to
    sqrt(v) before the bias correction, as Keras and TensorFlow do)."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t, (g, rate) in enumerate(zip(gradients, rates), start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        m_hat, v_hat = m / (1 - beta_1**t), v / (1 - beta_2**t)
        theta = theta - rate * m_hat / (np.sqrt(v_hat) + epsilon / np.sqrt(1 - beta_2**t))  # eps as Keras places it
    return theta


class FusedAdamTest(tf.test.TestCase):
    def test_matches_numpy_oracle_and_keras_adam_under_a_schedule(self):
        rng = np.random.default_rng(0)
        shapes = [(3, 4), (5,)]
        start = [rng.normal(size=s) for s in shapes]
        gradients = [[rng.normal(size=s) for s in shapes] for _ in range(6)]
        schedule = keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=2, decay_rate=0.5, staircase=True)
        rates = [0.01 * 0.5 ** (step // 2) for step in range(6)]
        results = {}
        for cls in (models.FusedAdam, keras.optimizers.Adam):
            variables = [keras.Variable(x.astype(np.float32)) for x in start]
            optimizer = cls(schedule, epsilon=1e-7)
            optimizer.build(variables)

            @tf.function
            def step(g):
                optimizer.apply(g, variables)  # noqa: B023  (called within this iteration)

            for g in gradients:
                step([tf.constant(x, tf.float32) for x in g])
            results[cls.__name__] = [v.numpy() for v in variables]
            self.assertEqual(int(optimizer.iterations.numpy()), 6)
        for i, x in enumerate(start):
            oracle = numpy_adam(x, [g[i] for g in gradients], rates, epsilon=1e-7)
            self.assertAllClose(results["FusedAdam"][i], oracle, atol=2e-6, rtol=1e-5)
            self.assertAllClose(results["FusedAdam"][i], results["Adam"][i], atol=1e-6, rtol=1e-6)
            self.assertGreater(float(np.max(np.abs(results["FusedAdam"][i] - x))), 1e-3)  # it did move

    def test_step_scalars_are_built_once_per_apply_and_dtype(self):
        """The bias-correction powers are shared by every variable of an `apply` (one pair per dtype), not rebuilt
        per variable; each variable still gets its own fused kernel."""
        variables = [keras.Variable(np.ones((i + 1, 3), np.float32)) for i in range(5)]
        variables.append(keras.Variable(np.ones((2,), np.float64)))
        optimizer = models.FusedAdam(1e-3)
        optimizer.build(variables)
        graph = (
            tf.function(lambda grads: optimizer.apply(grads, variables))
            .get_concrete_function([tf.TensorSpec(v.shape, v.dtype) for v in variables])
            .graph
        )
        types = [op.type for op in graph.get_operations()]
        self.assertEqual(types.count("ResourceApplyAdam"), 6)
        self.assertEqual(types.count("Pow"), 4)  # beta_1^t and beta_2^t, for float32 and for float64
        self.assertIsNone(optimizer._step_scalars)  # nothing kept past the apply

    def test_same_slots_and_checkpoint_keys_as_keras_adam(self):
        keys = {}
        for cls in (models.FusedAdam, keras.optimizers.Adam):
            variable = keras.Variable(np.ones((2, 2), np.float32))
            optimizer = cls(1e-3, name="encoder_adam")
            optimizer.build([variable])
            keys[cls.__name__] = sorted(name for name, _ in tf.train.list_variables(self._save(optimizer)))
        self.assertEqual(keys["FusedAdam"], keys["Adam"])
        self.assertIn("FusedAdam", keras.saving.get_registered_name(models.FusedAdam))

    def _save(self, optimizer):
        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        return tf.train.Checkpoint(optimizer=optimizer).write(os.path.join(folder, "ckpt"))
