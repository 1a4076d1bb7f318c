"""The VAE model: objective consistency, optimizer groups, and learning tests (deterministic, falls, overfits)."""

import os

import keras
import numpy as np
import tensorflow as tf

from crvae_tf import models
from crvae_tf.architectures import heads
from crvae_tf.architectures import networks
from crvae_tf.objectives import bounds

import testing_utils


def tiny_model(kind="channel_recurrent", seed=0, kl_weight=1.0, kl_step_weights=None, num_importance_samples=1):
    keras.utils.set_random_seed(seed)
    head_args = {
        "fc": dict(latent_dim=16),
        "conv": dict(latent_channels=8, num_time_steps=4),
        "block_fc": dict(latent_channels=8, num_time_steps=4),
        "channel_recurrent": dict(latent_channels=8, num_time_steps=4, hidden_units=16, loc_path="dense"),
    }[kind]
    model = models.VAE(
        networks.mnist_encoder(base_channels=4),
        heads.HEADS[kind]((4, 4, 32), **head_args),
        networks.mnist_decoder(base_channels=4),
        kl_weight=kl_weight,
        kl_step_weights=kl_step_weights,
        seed=seed,
        num_importance_samples=num_importance_samples,
    )
    model.build()
    return model


def adam_groups(model, lr=3e-3, **overrides):
    return {name: overrides.get(name, keras.optimizers.Adam(lr)) for name, v in model.variable_groups().items() if v}


def fixed_batch(n=8, seed=0):
    yy, xx = np.mgrid[:28, :28]
    rng = np.random.default_rng(seed)
    centers = rng.uniform(8, 20, (n, 2, 1, 1))
    blobs = ((yy - centers[:, 0]) ** 2 + (xx - centers[:, 1]) ** 2) < rng.uniform(12, 40, (n, 1, 1))
    return tf.constant(blobs[..., None].astype(np.float32))


class ModelTest(testing_utils.GinTestCase):
    def test_terms_are_consistent(self):
        model = tiny_model(kl_weight=0.5, kl_step_weights=[1.0, 2.0, 0.0, 1.0])
        terms = model.compute_terms(fixed_batch(), training=False)
        self.assertEqual(terms["kl_steps"].shape, (8, 4))
        self.assertAllClose(terms["rate"], tf.reduce_sum(terms["kl_steps"], -1))
        self.assertAllClose(terms["elbo"], -(terms["distortion"] + terms["rate"]))
        weighted = terms["kl_steps"] * [1.0, 2.0, 0.0, 1.0]
        self.assertAllClose(terms["loss"], terms["distortion"] + 0.5 * tf.reduce_sum(weighted, -1), rtol=1e-5)
        with self.assertRaisesRegex(ValueError, "one weight per time step"):
            tiny_model(kl_step_weights=[1.0])

    def test_every_variable_in_exactly_one_group(self):
        for kind in heads.HEADS:
            model = tiny_model(kind)
            grouped = [id(v) for vs in model.variable_groups().values() for v in vs]
            self.assertCountEqual(grouped, [id(v) for v in model.trainable_variables], msg=kind)

    def test_each_optimizer_changes_only_its_own_group(self):
        model = tiny_model()
        groups = model.variable_groups()
        # A zero learning rate for the latent head: its variables must not move while the others do.
        model.compile(optimizers=adam_groups(model, latent_head=keras.optimizers.SGD(0.0)))
        before = {name: [v.numpy().copy() for v in vs] for name, vs in groups.items()}
        model.train_step(fixed_batch())
        for name, variables in groups.items():
            moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before[name], variables)]
            if name == "latent_head":
                self.assertFalse(any(moved))
            else:
                self.assertTrue(all(moved), msg=name)
        self.assertEqual(int(model.group_optimizers["encoder"].iterations), 1)

    def test_gradient_clamp_is_applied_per_group(self):
        model = tiny_model()
        model.compile(
            optimizers={name: keras.optimizers.SGD(1.0) for name in adam_groups(model)},
            clip_values={"latent_head": 1e-3},
        )
        head_vars = model.variable_groups()["latent_head"]
        before = [v.numpy().copy() for v in head_vars]
        model.train_step(fixed_batch())
        change = max(np.abs(v.numpy() - b).max() for b, v in zip(before, head_vars))
        self.assertLessEqual(change, 1e-3 * 1.001)
        self.assertGreater(change, 0.0)

    def test_compile_rejects_missing_groups(self):
        model = tiny_model()
        with self.assertRaisesRegex(ValueError, "missing"):
            model.compile(optimizers={"encoder": keras.optimizers.Adam()})

    def _train(self, seed, steps):
        model = tiny_model(seed=seed)
        model.compile(optimizers=adam_groups(model))
        step = tf.function(model.train_step)
        batch = fixed_batch()
        losses = []
        for _ in range(steps):
            model.reset_metrics()
            logs = step(batch)
            losses.append(float(logs["loss"]))
        model.reset_metrics()
        return model, losses

    def test_loss_is_deterministic_falls_and_overfits_eight_images(self):
        model, losses = self._train(seed=3, steps=150)
        _, again = self._train(seed=3, steps=3)
        self.assertAllClose(losses[:3], again, rtol=1e-5)  # same seed, same losses
        self.assertLess(np.mean(losses[-10:]), 0.5 * np.mean(losses[:3]))
        # Overfit: the 8 training images are reconstructed almost exactly from their posterior means.
        recon = tf.sigmoid(model(fixed_batch(), training=False))
        error = float(tf.reduce_mean(tf.abs(recon - fixed_batch())))
        self.assertLess(error, 0.1)

    def test_fit_works_with_the_custom_train_step(self):
        model = tiny_model("fc")
        model.compile(optimizers=adam_groups(model))
        history = model.fit(tf.data.Dataset.from_tensors(fixed_batch()).repeat(3), epochs=1, verbose=0)
        self.assertIn("kl_step_1", history.history)
        self.assertIn("active_units", history.history)
        result = model.evaluate(tf.data.Dataset.from_tensors(fixed_batch()), verbose=0, return_dict=True)
        self.assertTrue(np.isfinite(result["elbo"]))

    def test_mixed_bfloat16_computes_in_bf16_and_reports_float32(self):
        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            model = tiny_model()
        finally:
            keras.config.set_dtype_policy("float32")
        self.assertEqual(model.encoder.layers[1].compute_dtype, "bfloat16")
        self.assertEqual(model.encoder.layers[1].kernel.dtype, "float32")
        model.compile(optimizers=adam_groups(model))
        logs = tf.function(model.train_step)(fixed_batch())
        self.assertEqual(logs["loss"].dtype, tf.float32)
        self.assertTrue(np.isfinite(float(logs["loss"])))
        loc, log_variance = model.encode(fixed_batch())
        self.assertEqual((loc.dtype, log_variance.dtype), (tf.float32, tf.float32))
        clone = models.VAE.from_config(model.get_config())
        clone.build()
        self.assertEqual(clone.decoder.layers[0].compute_dtype, "bfloat16")

    def test_iwae_objective_and_validation_bound(self):
        model = tiny_model(num_importance_samples=6)
        images = fixed_batch()
        # The IWAE_6 loss is -log mean_k w_k; check it against the log weights of the same noise.
        model.seed_generator.state.assign([7, 0])
        terms = model.compute_terms(images, training=True)
        model.seed_generator.state.assign([7, 0])
        log_w = model.log_importance_weights(images, 6, training=True).numpy().astype(np.float64)
        oracle = -(np.log(np.mean(np.exp(log_w - log_w.max(0)), 0)) + log_w.max(0))
        self.assertAllClose(terms["loss"], oracle, rtol=1e-4)
        self.assertAllLessEqual(terms["loss"] - (-log_w.mean(0)), 1e-3)  # IWAE >= ELBO, per image
        # test_step reports IWAE_5 on top of the ELBO terms; train_step does not.
        model.compile(optimizers=adam_groups(model))
        logs = model.test_step(images)
        self.assertIn("iwae_5", logs)
        self.assertNotIn("iwae_5", model.train_step(images))
        with self.assertRaisesRegex(ValueError, "no KL weight"):
            tiny_model(num_importance_samples=4, kl_weight=0.784)

    def test_model_only_checkpoint_holds_every_weight(self):
        for kind in heads.HEADS:
            with self.subTest(kind=kind):
                model, clone = tiny_model(kind, seed=1), tiny_model(kind, seed=2)
                path = tf.train.Checkpoint(model=model).save(os.path.join(self.get_temp_dir(), kind, "ckpt"))
                tf.train.Checkpoint(model=clone).restore(path).assert_consumed()
                self.assertLen(clone.weights, len(model.weights))
                for a, b in zip(model.weights, clone.weights):
                    self.assertAllEqual(a.numpy(), b.numpy(), msg=a.path)

    def test_model_config_round_trip(self):
        model = tiny_model(kl_weight=0.784)
        config = model.get_config()
        clone = models.VAE.from_config(config)
        clone.build()
        self.assertEqual(clone.kl_weight, 0.784)
        self.assertEqual(clone.count_params(), model.count_params())
        self.assertEqual(clone.latent_head.get_config(), model.latent_head.get_config())


class DiagnosticsTest(testing_utils.GinTestCase):
    """The training instruments: per parameter group and per time step, with their NumPy definitions."""

    def test_group_diagnostics_match_the_step_taken(self):
        model = tiny_model("channel_recurrent")
        model.compile(optimizers=adam_groups(model), clip_values={"latent_head": 5.0})
        images = tf.constant(fixed_batch(), tf.float32)
        groups = model.variable_groups()
        before = {name: [v.numpy().copy() for v in variables] for name, variables in groups.items()}
        logs = model.train_step(images)
        for name, variables in groups.items():
            after = [v.numpy() for v in variables]
            step = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(after, before[name])))
            old = np.sqrt(sum(np.sum(b**2) for b in before[name]))
            new = np.sqrt(sum(np.sum(a**2) for a in after))
            self.assertAllClose(float(logs[f"update_ratio_{name}"]), step / old, rtol=1e-3, msg=name)
            self.assertAllClose(float(logs[f"param_norm_{name}"]), new, rtol=1e-4, msg=name)
            self.assertGreater(float(logs[f"grad_norm_{name}"]), 0.0)
        # Validation reports no training diagnostics.
        self.assertFalse([key for key in model.test_step(images) if key.startswith(("grad_norm", "update_ratio"))])

    def test_active_units_per_time_step_sum_to_the_total(self):
        loc = np.zeros((6, 8), np.float32)
        loc[:, 0] = np.arange(6)  # step 1 (dims 0-3): one dimension varies
        loc[:, 5:7] = np.arange(12).reshape(6, 2)  # step 2 (dims 4-7): two vary
        self.assertAllEqual(bounds.active_units_per_step(loc, 2), [1.0, 2.0])
        self.assertEqual(float(bounds.active_units(loc)), 3.0)
