"""Contracts and learning tests of the adversarial family (`crvae_tf.models.vae_gan`) on tiny hand-made networks.

The networks here are a few layers each (16x16x3 images) so that every test runs in seconds; the full-size
networks are covered by tests/networks_test.py and the recipe smoke runs by tests/adversarial_train_test.py.
"""

import keras
import numpy as np
import tensorflow as tf

from crvae_tf import models
from crvae_tf.architectures import blocks
from crvae_tf.objectives import losses

import testing_utils

IMAGE_SHAPE = testing_utils.TINY_RGB_SHAPE
BATCH = 8
tiny_parts = testing_utils.tiny_adversarial_parts


def make_model(kind="channel_recurrent", learning_rates=None, **kwargs):
    with_q = bool(kwargs.get("mutual_information_weight"))
    model = models.VAEGAN(*tiny_parts(kind, with_q), image_shape=IMAGE_SHAPE, seed=3, **kwargs)
    model.build()
    rates = learning_rates or {}
    optimizers = {
        name: keras.optimizers.Adam(rates.get(name, 1e-3), name=f"{name}_adam")
        for name, variables in model.variable_groups().items()
        if variables
    }
    model.compile(optimizers=optimizers)
    return model


def images(seed=0, batch=BATCH):
    return tf.constant(np.random.default_rng(seed).uniform(0, 1, (batch,) + IMAGE_SHAPE), tf.float32)


def snapshot(model):
    return {name: [v.numpy().copy() for v in variables] for name, variables in model.variable_groups().items()}


def changed(before, after):
    return {name for name in before if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name]))}


CRVAE_GAN = dict(
    kl_weight=1e-4,
    kl_step_weights=[3.0, 2.0],
    adversarial_weight=0.1,
    mutual_information_weight=0.5,
    mutual_information_step_weights=[0.1, 1.5],
)


class GroupIsolationTest(tf.test.TestCase):
    """Each optimizer moves only its own variables; the discriminator loss never reaches the generator side."""

    def test_each_optimizer_changes_only_its_own_variables(self):
        groups = ("encoder", "latent_head", "decoder", "discriminator_trunk", "discriminator", "q_head")
        for only in groups:
            with self.subTest(group=only):
                rates = {name: (1e-2 if name == only else 0.0) for name in groups}
                model = make_model(learning_rates=rates, discriminator_accuracy_threshold=1.0, **CRVAE_GAN)
                before = snapshot(model)
                model.train_step(images())
                self.assertEqual(changed(before, snapshot(model)), {only})

    def test_discriminator_loss_does_not_reach_generator_groups(self):
        # With beta = kappa = 0 the generator side sees only reconstruction + KL: its update must equal the
        # update of the same model whose discriminator never trains.
        updates = []
        for threshold in (1.0, 1e-9):  # discriminator steps on every batch / never
            model = make_model(kl_weight=1e-2, adversarial_weight=0.0, discriminator_accuracy_threshold=threshold)
            before = snapshot(model)
            model.train_step(images())
            after = snapshot(model)
            updates.append(
                {
                    name: [b - a for a, b in zip(before[name], after[name])]
                    for name in ("encoder", "latent_head", "decoder")
                }
            )
        for name in updates[0]:
            for first, second in zip(updates[0][name], updates[1][name]):
                self.assertAllClose(first, second, atol=1e-7)

    def test_baseline_encoder_sees_no_adversarial_gradient(self):
        def encoder_update(beta, flag):
            model = make_model(kind="fc", kl_weight=1e-2, adversarial_weight=beta, encoder_adversarial_gradient=flag)
            before = snapshot(model)["encoder"]
            model.train_step(images())
            return [b - a for a, b in zip(before, snapshot(model)["encoder"])]

        for first, second in zip(encoder_update(0.0, False), encoder_update(5.0, False)):
            self.assertAllClose(first, second, atol=1e-7)
        differences = [np.abs(a - b).max() for a, b in zip(encoder_update(0.0, True), encoder_update(5.0, True))]
        self.assertGreater(max(differences), 1e-6)


class SkipRuleTest(tf.test.TestCase):
    """The discriminator step is skipped exactly when its batch accuracy exceeds the threshold."""

    def _oracle_model(self, threshold):
        """A discriminator that is always right: the decoder outputs -1 everywhere (zero kernel, bias -20 ->
        tanh = -1); the trunk averages each 3x3x3 patch (kernel 1/27) and clips at 0, so an all-(+1) real
        image has positive features and a generated all-(-1) image has zero features; the head's logit is
        10/64 * sum(features): positive for real images (label 1), exactly 0 -> predicted 0 for fakes."""
        model = make_model(kind="fc", discriminator_accuracy_threshold=threshold)
        deconv = model.decoder.layers[0]
        deconv.kernel.assign(tf.zeros_like(deconv.kernel))
        deconv.bias.assign(tf.fill(deconv.bias.shape, -20.0))
        trunk_conv = model.discriminator_trunk.layers[0]
        trunk_conv.kernel.assign(tf.fill(trunk_conv.kernel.shape, 1.0 / 27.0))
        trunk_conv.bias.assign(tf.zeros_like(trunk_conv.bias))
        dense = model.discriminator.layers[-1]
        dense.kernel.assign(tf.fill(dense.kernel.shape, 10.0 / 64.0))
        dense.bias.assign(tf.zeros_like(dense.bias))
        return model

    def test_discriminator_batch_composition(self):
        real, rec, prior = (tf.fill([8, 2, 2, 1], v) for v in (1.0, 2.0, 3.0))
        real = real * tf.reshape(tf.range(8, dtype=tf.float32), [8, 1, 1, 1])
        batch, labels, kind = losses.discriminator_batch(real, rec, prior)
        self.assertAllEqual(batch[:, 0, 0, 0], [0, 2, 4, 6, 2, 2, 3, 3])  # half real, 1/4 rec., 1/4 prior
        self.assertAllEqual(labels, [1, 1, 1, 1, 0, 0, 0, 0])
        self.assertAllEqual(kind, [0, 0, 0, 0, 1, 1, 2, 2])

    def test_perfect_discriminator_is_skipped(self):
        for threshold, expect_update in ((0.9, False), (1.0, True)):
            with self.subTest(threshold=threshold):
                model = self._oracle_model(threshold)
                head_before = [v.numpy().copy() for v in model.discriminator.trainable_variables]
                logs = model.train_step(tf.ones([BATCH] + list(IMAGE_SHAPE)))  # real = +1 after the [-1, 1] map
                self.assertAllClose(logs["discriminator_batch_accuracy"], 1.0)
                self.assertAllClose(logs["discriminator_skip_rate"], 0.0 if expect_update else 1.0)
                iterations = int(model.group_optimizers["discriminator"].iterations.numpy())
                self.assertEqual(iterations, 1 if expect_update else 0)
                moved = any(
                    not np.array_equal(a, b.numpy())
                    for a, b in zip(head_before, model.discriminator.trainable_variables)
                )
                self.assertEqual(moved, expect_update)

    def test_accuracy_metrics_per_kind(self):
        model = make_model(kind="fc")
        logs = model.train_step(images())
        for name in ("real", "reconstruction", "prior"):
            # Accuracy over B/2 real or B/4 fake examples of the batch: a multiple of 1 / count.
            count = BATCH // 2 if name == "real" else BATCH // 4
            value = float(logs[f"discriminator_accuracy_{name}"])
            self.assertAllClose(value * count, round(value * count), atol=1e-5)
            self.assertBetween(value, 0.0, 1.0)
        # Overall accuracy = 1/2 real + 1/4 reconstruction + 1/4 prior.
        expected = (
            0.5 * float(logs["discriminator_accuracy_real"])
            + 0.25 * float(logs["discriminator_accuracy_reconstruction"])
            + 0.25 * float(logs["discriminator_accuracy_prior"])
        )
        self.assertAllClose(float(logs["discriminator_accuracy"]), expected, atol=1e-6)


class LossTermsTest(tf.test.TestCase):
    def test_reconstruction_normalization(self):
        x = tf.zeros([2, 16, 16, 3])
        y = tf.concat([tf.fill([1, 16, 16, 3], 0.5), tf.fill([1, 16, 16, 3], 1.0)], 0)
        per_pixel = make_model(kind="fc").reconstruction_error(x, y)
        per_image = make_model(kind="fc", reconstruction_normalization="per_image").reconstruction_error(x, y)
        self.assertAllClose(per_pixel, [0.25, 1.0])
        self.assertAllClose(per_image, [0.25 * 768, 768.0])

    def test_adversarial_losses_match_numpy(self):
        logits = np.array([[-3.0], [0.0], [2.5]], np.float32)
        d = 1 / (1 + np.exp(-logits[:, 0]))
        nonsat = make_model(kind="fc").adversarial_term(tf.constant(logits))
        minimax = make_model(kind="fc", adversarial_loss="minimax").adversarial_term(tf.constant(logits))
        self.assertAllClose(nonsat, -np.log(d), rtol=1e-5)
        self.assertAllClose(minimax, np.log(1 - d), rtol=1e-5)

    def test_mutual_information_step_weights(self):
        model = make_model(**CRVAE_GAN)  # T = 2 steps of 32 dims, weights 0.1 and 1.5
        u = np.zeros((1, 64), np.float32)
        q = np.concatenate([np.full((1, 32), 1.0), np.full((1, 32), 2.0)], 1).astype(np.float32)
        weighted = model.mutual_information_term(tf.constant(q), tf.constant(u))
        unweighted = model.mutual_information_term(tf.constant(q), tf.constant(u), weighted=False)
        self.assertAllClose(weighted, [(0.1 * 1.0 + 1.5 * 4.0) / 2])
        self.assertAllClose(unweighted, [(1.0 + 4.0) / 2])

    @staticmethod
    def _decoder_update(**kwargs):
        model = make_model(kind="channel_recurrent", kl_weight=1e-2, **kwargs)
        before = snapshot(model)["decoder"]
        model.train_step(images())
        return np.concatenate([(b - a).ravel() for a, b in zip(before, snapshot(model)["decoder"])])

    def test_legacy_swap_exchanges_the_prior_weights(self):
        # The defect swaps beta and kappa on the prior-sample pass: with beta == kappa it changes nothing (the
        # same update to the bit), with beta != kappa it changes the decoder's update.
        same = dict(adversarial_weight=0.5, mutual_information_weight=0.5, mutual_information_step_weights=[1.0, 2.0])
        self.assertAllEqual(
            self._decoder_update(**same), self._decoder_update(legacy_swapped_prior_weights=True, **same)
        )
        other = dict(same, mutual_information_weight=0.05)
        fixed = self._decoder_update(**other)
        legacy = self._decoder_update(legacy_swapped_prior_weights=True, **other)
        self.assertGreater(np.abs(fixed - legacy).max(), 1e-7)

    def test_legacy_unweighted_prior_mutual_information(self):
        # The defect drops the per-step MI weights on the prior-sample pass: with all weights 1 it changes
        # nothing, with other weights it changes the update.
        ones = dict(adversarial_weight=0.5, mutual_information_weight=0.5, mutual_information_step_weights=[1.0, 1.0])
        self.assertAllEqual(
            self._decoder_update(**ones),
            self._decoder_update(legacy_unweighted_prior_mutual_information=True, **ones),
        )
        weighted = dict(ones, mutual_information_step_weights=[0.1, 1.5])
        fixed = self._decoder_update(**weighted)
        legacy = self._decoder_update(legacy_unweighted_prior_mutual_information=True, **weighted)
        self.assertGreater(np.abs(fixed - legacy).max(), 1e-7)

    def test_bad_arguments_name_the_fix(self):
        with self.assertRaisesRegex(ValueError, "mutual_information_weight"):
            models.VAEGAN(*tiny_parts("fc", with_q=False), image_shape=IMAGE_SHAPE, mutual_information_weight=0.1)
        with self.assertRaisesRegex(ValueError, "kl_step_weights has 3 entries"):
            models.VAEGAN(*tiny_parts(), image_shape=IMAGE_SHAPE, kl_step_weights=[1, 1, 1])
        with self.assertRaisesRegex(ValueError, "adversarial_loss"):
            models.VAEGAN(*tiny_parts(), image_shape=IMAGE_SHAPE, adversarial_loss="wasserstein")


class GeneratorBatchTest(tf.test.TestCase):
    """`generator_batch`: 'separate' (the code: two decoder passes, two BatchNorm updates) or 'joint' (one pass over
    [z; z_p]: one update with the mixture's statistics)."""

    def make(self, generator_batch):
        # The FC head's generation is per example (no BatchNorm), so the decoder's BatchNorm input is known.
        encoder, head, _, trunk, disc, _ = tiny_parts("fc", with_q=False)
        decoder = keras.Sequential(
            [
                keras.Input((4, 4, 8)),
                keras.layers.Conv2DTranspose(3, 4, strides=4, name="deconv"),
                blocks.BatchNorm(momentum=0.9, epsilon=1e-6, name="bn"),
                keras.layers.Activation("tanh"),
            ],
            name="decoder",
        )
        model = models.VAEGAN(
            encoder, head, decoder, trunk, disc, image_shape=IMAGE_SHAPE, seed=3, generator_batch=generator_batch
        )
        model.build()
        return model

    def test_moving_statistics_follow_one_mixture_update_or_two_updates(self):
        x = images(1) * 2.0 - 1.0
        for generator_batch in ("separate", "joint"):
            model = self.make(generator_batch)
            bn, deconv = model.decoder.get_layer("bn"), model.decoder.get_layer("deconv")
            bn.moving_mean.assign(np.linspace(-1.0, 1.0, 3).astype(np.float32))
            # Batch means far from 0, and different for posterior and prior samples, so the test can tell.
            deconv.bias.assign([0.5, 1.0, -2.0])
            deconv.kernel.assign(deconv.kernel * 20.0)
            before = bn.moving_mean.numpy().astype(np.float64)
            out = model._forward(x, training=True)
            features = model.latent_head.generate(tf.concat([out["z"], out["z_prior"]], 0), training=False)
            pre = deconv(features).numpy().astype(np.float64)
            posterior_mean, prior_mean = pre[:BATCH].mean(axis=(0, 1, 2)), pre[BATCH:].mean(axis=(0, 1, 2))
            one_update = 0.9 * before + 0.1 * pre.mean(axis=(0, 1, 2))
            two_updates = 0.9 * (0.9 * before + 0.1 * posterior_mean) + 0.1 * prior_mean
            self.assertGreater(np.abs(one_update - two_updates).max(), 0.01)  # the two rules are distinguishable
            expected = one_update if generator_batch == "joint" else two_updates
            np.testing.assert_allclose(bn.moving_mean.numpy(), expected, rtol=1e-4, atol=1e-5, err_msg=generator_batch)

    def test_evaluation_outputs_do_not_depend_on_it(self):
        x = images(2) * 2.0 - 1.0
        separate, joint = self.make("separate"), self.make("joint")
        joint.set_weights(separate.get_weights())
        a, b = separate._forward(x, training=False), joint._forward(x, training=False)
        for key in ("reconstructions", "prior_samples"):
            np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
        with self.assertRaisesRegex(ValueError, "model.generator_batch"):
            self.make("interleaved")


class WarmupScheduleTest(tf.test.TestCase):
    def test_code_warmup(self):
        schedule = models.WarmupSchedule(1e-3, ((10, 0.02), (30, 0.2)))
        values = [float(schedule(tf.constant(step, tf.int64))) for step in (0, 9, 10, 29, 30, 500)]
        self.assertAllClose(values, [2e-5, 2e-5, 2e-4, 2e-4, 1e-3, 1e-3])
        restored = models.WarmupSchedule.from_config(schedule.get_config())
        self.assertAllClose(float(restored(tf.constant(12, tf.int64))), 2e-4)

    def test_wraps_decay(self):
        decay = keras.optimizers.schedules.ExponentialDecay(1e-3, 100, 0.5, staircase=True)
        schedule = models.WarmupSchedule(decay, ((10, 0.1),))
        self.assertAllClose(float(schedule(tf.constant(5, tf.int64))), 1e-4)
        self.assertAllClose(float(schedule(tf.constant(150, tf.int64))), 5e-4)
        restored = models.WarmupSchedule.from_config(schedule.get_config())
        self.assertAllClose(float(restored(tf.constant(150, tf.int64))), 5e-4)


class LearningTest(tf.test.TestCase):
    def test_reconstruction_falls_with_every_term_on(self):
        model = make_model(learning_rates={name: 3e-3 for name in models.VAEGAN.GROUPS}, **CRVAE_GAN)
        step = tf.function(model.train_step)
        # Flat colour images: learnable by the tiny networks within a few dozen steps.
        colours = np.random.default_rng(1).uniform(0, 1, (BATCH, 1, 1, 3)).astype(np.float32)
        data = tf.constant(np.broadcast_to(colours, (BATCH,) + IMAGE_SHAPE))
        first = None
        accuracies = []
        for i in range(100):
            logs = step(data)
            if i == 0:
                first = float(logs["reconstruction"])
            accuracies.append(float(logs["discriminator_batch_accuracy"]))
            model.reset_metrics()
        self.assertLess(float(logs["reconstruction"]), 0.7 * first)
        self.assertTrue(all(np.isfinite(accuracies)))

    def test_serialization_round_trip(self):
        model = make_model(**CRVAE_GAN)
        config = model.get_config()
        clone = models.VAEGAN.from_config(config)
        clone.build()
        for key in ("kl_step_weights", "mutual_information_step_weights", "adversarial_weight"):
            self.assertEqual(getattr(clone, key), getattr(model, key))
        self.assertEqual(clone.count_params(), model.count_params())


if __name__ == "__main__":
    tf.test.main()
