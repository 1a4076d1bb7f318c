"""The crVAE recipe's settings keep the early training away from the collapse (docs/crvae_collapse.md).

Full recipe widths (the mechanism needs them: the 4096-input mean path, the 2-layer LSTM(512) generation path), a
few steps on fake digits. Two signatures of the collapse are checked, each on the recipe and, to show the check can
fail, on the authors' settings (gin/presets/paper_crvae.gin), which exhibit both:
  * the decoder is blind to z at initialisation: u = transform(z) barely varies across the batch;
  * the rate spikes to thousands of nats in the first Adam steps (lr 0.003 on the mean path).
"""

import os

import gin
import keras
import numpy as np
import tensorflow as tf

from crvae_tf import builders
from crvae_tf import data
from crvae_tf import runs

import testing_utils

STEPS = 4
BATCH = 16


class EarlyCollapseTest(testing_utils.GinTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.mnist = testing_utils.write_fake_mnist(
            os.path.join(tf.compat.v1.test.get_temp_dir(), "collapse_mnist.npz"), num_train=200, num_test=20
        )

    def _first_steps(self, presets):
        gin.clear_config()
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "mnist_crvae.gin")] + presets,
            [f"dataset.local_path = '{self.mnist}'", "dataset.validation_size = 20"],
            finalize=False,
        )
        keras.utils.set_random_seed(0)
        splits = builders.build_dataset(seed=0)
        model = builders.build_model(image_shape=splits.image_shape, seed=0)
        optimizers, clips = builders.build_optimizers(model, steps_per_epoch=390)
        model.compile(optimizers=optimizers, clip_values=clips)
        z = tf.constant(np.random.default_rng(1).standard_normal((BATCH, model.latent_dim)), tf.float32)
        u_spread = float(tf.reduce_mean(tf.math.reduce_std(model.latent_head.transform(z, training=True), axis=0)))
        train_step = tf.function(model.train_step)
        rates, distortions = [], []
        dataset = data.make_dataset(splits.train, batch_size=BATCH, binarization="dynamic", seed=0, training=True)
        for batch in dataset.take(STEPS):
            logs = train_step(batch)
            rates.append(float(logs["rate"]))
            distortions.append(float(logs["distortion"]))
            model.reset_metrics()
        return u_spread, np.array(rates), np.array(distortions)

    def test_recipe_sees_z_and_has_no_rate_spike(self):
        u_spread, rates, distortions = self._first_steps([])
        self.assertGreater(u_spread, 0.2)  # measured 0.51: the generation BatchNorm passes z on
        self.assertLess(rates.max(), 300.0)  # measured 81-105 nats
        self.assertLess(distortions[-1], distortions[0])

    def test_authors_settings_show_both_signatures(self):
        u_spread, rates, _ = self._first_steps([os.path.join(testing_utils.GIN_DIR, "presets", "paper_crvae.gin")])
        self.assertLess(u_spread, 0.05)  # measured 0.016
        self.assertGreater(rates.max(), 1000.0)  # measured 3,597 nats at step 2
