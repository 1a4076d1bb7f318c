"""The gin surface: recipes build the documented models (pinned parameter counts), bad bindings fail clearly."""

import os

import gin
import keras

from crvae_tf import builders
from crvae_tf import layers
from crvae_tf import models
from crvae_tf import train_lib

import testing_utils

# Pinned parameter counts of the paper-size models (also in README.md).
PINNED = {
    "mnist_vae": (layers.FCHead, {"encoder": 9614080, "latent_head": 0, "decoder": 6679745, "total": 16293825}),
    "mnist_cvae": (layers.ConvHead, {"encoder": 1518464, "latent_head": 0, "decoder": 2629569, "total": 4148033}),
    "mnist_bcvae": (layers.BlockFCHead,
                    {"encoder": 1109824, "latent_head": 1053696, "decoder": 2485441, "total": 4648961}),
    "mnist_crvae_inference": (layers.ChannelRecurrentHead,
                              {"encoder": 5157632, "latent_head": 4396160, "decoder": 2630593, "total": 12184385}),
    "mnist_crvae_generation": (layers.ChannelRecurrentHead,
                               {"encoder": 5157632, "latent_head": 4002944, "decoder": 2630593, "total": 11791169}),
    "mnist_crvae": (layers.ChannelRecurrentHead,
                    {"encoder": 5157632, "latent_head": 7741696, "decoder": 2630593, "total": 15529921}),
}


def parse(recipe, bindings=()):
    gin.clear_config()
    train_lib.parse_gin([os.path.join(testing_utils.GIN_DIR, f"{recipe}.gin")], list(bindings), finalize=False)


class BuildersTest(testing_utils.GinTestCase):

    def test_recipes_build_the_pinned_models(self):
        for recipe, (head_cls, counts) in PINNED.items():
            with self.subTest(recipe=recipe):
                parse(recipe)
                model = builders.build_model(seed=0)
                self.assertIsInstance(model.latent_head, head_cls)
                self.assertEqual(model.latent_dim, 1024)
                self.assertEqual(models.parameter_counts(model), counts)
                self.assertEqual(model.kl_weight, 0.784)
                out = model.decode(keras.ops.zeros((2, 1024)))
                self.assertEqual(tuple(out.shape), (2, 28, 28, 1))

    def test_ablation_switches(self):
        parse("mnist_crvae_inference")
        head = builders.build_model(seed=0).latent_head
        self.assertTrue(head.recurrent_inference)
        self.assertFalse(head.recurrent_generation)
        parse("mnist_crvae_generation")
        head = builders.build_model(seed=0).latent_head
        self.assertFalse(head.recurrent_inference)
        self.assertTrue(head.recurrent_generation)

    def test_crvae_optimizers_follow_the_code(self):
        parse("mnist_crvae")
        model = builders.build_model(seed=0)
        optimizers, clips = builders.build_optimizers(model, steps_per_epoch=390)
        self.assertEqual(sorted(optimizers), ["decoder", "encoder", "latent_head"])
        self.assertAlmostEqual(builders.current_learning_rate(optimizers["encoder"]), 3e-3, places=8)
        self.assertAlmostEqual(builders.current_learning_rate(optimizers["latent_head"]), 3e-3 / 8, places=8)
        self.assertEqual(clips, {"latent_head": 5.0})
        schedule = optimizers["encoder"].learning_rate
        del schedule
        encoder_opt = optimizers["encoder"]
        self.assertAlmostEqual(float(encoder_opt._learning_rate(50 * 390)), 1.5e-3, places=8)  # halved at epoch 50
        self.assertAlmostEqual(float(encoder_opt._learning_rate(50 * 390 - 1)), 3e-3, places=8)

    def test_precision_binding(self):
        parse("mnist_crvae", ["encoder.base_channels = 4", "decoder.base_channels = 4",
                              "latent_head.latent_channels = 8", "latent_head.hidden_units = 8",
                              "model.precision = 'mixed_bfloat16'"])
        model = builders.build_model(seed=0)
        self.assertEqual(model.latent_head.inference_lstm.compute_dtype, "bfloat16")
        self.assertEqual(keras.config.dtype_policy().name, "float32")   # the global policy is restored
        parse("mnist_crvae", ["model.precision = 'float16'"])
        with self.assertRaisesRegex(ValueError, "model.precision"):
            builders.build_model(seed=0)

    def test_unused_head_arguments_are_rejected(self):
        parse("mnist_vae", ["latent_head.recurrent_inference = False"])
        with self.assertRaisesRegex(ValueError, "does not use"):
            builders.build_model(seed=0)

    def test_unknown_kind_and_groups(self):
        parse("mnist_vae", ["latent_head.kind = 'lstm'"])
        with self.assertRaisesRegex(ValueError, "is not one of"):
            builders.build_model(seed=0)
        parse("mnist_vae", ["optimizer.group_learning_rate_scale = {'generator': 0.5}"])
        model = builders.build_model(seed=0)
        with self.assertRaisesRegex(ValueError, "unknown groups"):
            builders.build_optimizers(model, steps_per_epoch=10)
