"""The gin surface: recipes build the documented models (pinned parameter counts), bad bindings fail clearly."""

import os

import gin
import keras
import numpy as np

from crvae_tf import builders
from crvae_tf import data
from crvae_tf import models
from crvae_tf import runs
from crvae_tf.architectures import blocks
from crvae_tf.architectures import heads

import testing_utils

# Pinned parameter counts of the paper-size models (also in README.md).
PINNED = {
    "mnist_vae": (heads.FCHead, {"encoder": 9614080, "latent_head": 0, "decoder": 6679745, "total": 16293825}),
    "mnist_cvae": (heads.ConvHead, {"encoder": 1518464, "latent_head": 0, "decoder": 2629569, "total": 4148033}),
    "mnist_bcvae": (
        heads.BlockFCHead,
        {"encoder": 1109824, "latent_head": 1053696, "decoder": 2485441, "total": 4648961},
    ),
    "mnist_crvae_inference": (
        heads.ChannelRecurrentHead,
        {"encoder": 5157632, "latent_head": 4396160, "decoder": 2630593, "total": 12184385},
    ),
    "mnist_crvae_generation": (
        heads.ChannelRecurrentHead,
        # + 1,024 for the generation BatchNorm (gamma, beta over 512 LSTM units; docs/crvae_collapse.md)
        {"encoder": 5157632, "latent_head": 4003968, "decoder": 2630593, "total": 11792193},
    ),
    "mnist_crvae": (
        heads.ChannelRecurrentHead,
        {"encoder": 5157632, "latent_head": 7742720, "decoder": 2630593, "total": 15530945},
    ),
}


# Adversarial recipes (paper presets: no Q head; the code presets' kappa = 0.02 adds a 1,202,560-parameter Q head).
_CRVAE_GAN_64 = {
    "encoder": 2699936,
    "latent_head": 7742720,
    "decoder": 2549635,
    "discriminator_trunk": 1619328,
    "discriminator": 4708953,
    "q_head": 0,
    "total": 19320572,
}
_CRVAE_GAN_128 = {
    "encoder": 2751232,
    "latent_head": 7742720,
    "decoder": 2553891,
    "discriminator_trunk": 1721792,
    "discriminator": 4708953,
    "q_head": 0,
    "total": 19478588,
}
_VAE_GAN_64 = {
    "encoder": 10942048,
    "latent_head": 0,
    "decoder": 6598787,
    "discriminator_trunk": 553792,
    "discriminator": 4708953,
    "q_head": 0,
    "total": 22803580,
}
_VAE_GAN_128 = {
    "encoder": 10993344,
    "latent_head": 0,
    "decoder": 6603043,
    "discriminator_trunk": 579424,
    "discriminator": 4708953,
    "q_head": 0,
    "total": 22884764,
}
PINNED_ADVERSARIAL = {
    "celeba64": (64, heads.ChannelRecurrentHead, _CRVAE_GAN_64),
    "celeba64_vaegan": (64, heads.FCHead, _VAE_GAN_64),
    "celeba128": (128, heads.ChannelRecurrentHead, _CRVAE_GAN_128),
    "celeba128_vaegan": (128, heads.FCHead, _VAE_GAN_128),
    "birds128": (128, heads.ChannelRecurrentHead, _CRVAE_GAN_128),
    "birds128_vaegan": (128, heads.FCHead, _VAE_GAN_128),
}


@gin.register
def tiny_test_source(seed, **arguments):
    """A user's own source: any images as an ImageSplits."""
    images = np.zeros((4, 28, 28, 1), np.float32)
    size = arguments.get("validation_size", 1)
    return data.ImageSplits(
        "mnist",
        "dynamic",
        images,
        images[:size],
        images,
        f"tiny_test_source(seed={seed}, arguments={sorted(arguments)})",
    )


def parse(recipe, bindings=()):
    gin.clear_config()
    runs.parse_gin([os.path.join(testing_utils.GIN_DIR, f"{recipe}.gin")], list(bindings), finalize=False)


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

    def test_adversarial_recipes_build_the_pinned_models(self):
        for recipe, (resolution, head_cls, counts) in PINNED_ADVERSARIAL.items():
            with self.subTest(recipe=recipe):
                parse(recipe)
                model = builders.build_model(image_shape=(resolution, resolution, 3), seed=0)
                self.assertIsInstance(model.latent_head, head_cls)
                self.assertEqual(models.parameter_counts(model), counts)
        parse("celeba64", ["model.mutual_information_weight = 0.02"])
        model = builders.build_model(image_shape=(64, 64, 3), seed=0)
        self.assertEqual(models.parameter_counts(model)["q_head"], 1202560)

    def test_adversarial_optimizers_follow_the_code(self):
        parse(
            "celeba64",
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("channel_recurrent")
            + testing_utils.TINY_ADVERSARIAL_BINDINGS
            + ["model.mutual_information_weight = 0.02"],
        )
        model = builders.build_model(image_shape=(64, 64, 3), seed=0)
        optimizers, clips = builders.build_optimizers(model, steps_per_epoch=100)
        self.assertEqual(sorted(optimizers), sorted(builders.models.VAEGAN.GROUPS))
        self.assertEqual(clips, {"latent_head": 5.0})
        rates = {name: builders.current_learning_rate(opt) for name, opt in optimizers.items()}
        self.assertAllClose(rates["encoder"], 3e-4)  # the code's released rate (App. H: 3e-3, the paper preset)
        self.assertAllClose(rates["latent_head"], 3e-4 / 8)  # LR / T
        self.assertAllClose(rates["discriminator_trunk"], 3e-4 / 2)  # LR / 2
        self.assertAllClose(rates["discriminator"], 3e-4 / 50)  # adam_gan warm-up, first 10 steps
        runs.parse_gin([os.path.join(testing_utils.GIN_DIR, "presets", "paper_crvae_gan64.gin")], [], finalize=False)
        optimizers, _ = builders.build_optimizers(model, steps_per_epoch=100)
        self.assertAllClose(builders.current_learning_rate(optimizers["encoder"]), 3e-3)

    def test_adversarial_model_trains_in_mixed_bfloat16(self):
        parse(
            "celeba128",
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("channel_recurrent")
            + testing_utils.TINY_ADVERSARIAL_BINDINGS
            + ["model.mutual_information_weight = 0.02", "model.precision = 'mixed_bfloat16'"],
        )
        model = builders.build_model(image_shape=(128, 128, 3), seed=0)
        optimizers, clips = builders.build_optimizers(model, steps_per_epoch=10)
        model.compile(optimizers=optimizers, clip_values=clips)
        self.assertEqual(model.decoder.dtype_policy.name, "mixed_bfloat16")
        logs = model.train_step(keras.random.uniform((8, 128, 128, 3), seed=1))
        for key in ("loss", "discriminator_loss", "mutual_information", "generator_adversarial"):
            self.assertEqual(logs[key].dtype, "float32")
            self.assertTrue(bool(keras.ops.isfinite(logs[key])), msg=key)
        self.assertEqual(model.generate(keras.random.normal((2, model.latent_dim), seed=2)).dtype, "float32")

    def test_adversarial_arguments_need_the_adversarial_family(self):
        parse("mnist_vae", ["model.adversarial_weight = 0.1"])
        with self.assertRaisesRegex(
            ValueError, r"model.\['adversarial_weight'\] do not apply to model.family='vae'; .*model.family = 'vae_gan'"
        ):
            builders.build_model(image_shape=(28, 28, 1))
        parse("celeba64")
        with self.assertRaisesRegex(ValueError, "RGB images"):
            builders.build_model(image_shape=(28, 28, 1))
        with self.assertRaisesRegex(ValueError, "No network for images of shape"):
            builders.build_model(image_shape=(96, 96, 3))

    def test_reference_selectors_equal_their_string_aliases(self):
        """`latent_head.head_fn = @<kind>_head` and `model.family = @<family>` build what the strings build."""
        built = {}
        for selectors in (
            ["latent_head.kind = 'channel_recurrent'", "model.family = 'vae_gan'"],
            ["latent_head.kind = None", "latent_head.head_fn = @channel_recurrent_head", "model.family = @vae_gan"],
        ):
            parse("celeba64", selectors)
            model = builders.build_model(image_shape=(64, 64, 3), seed=0)
            built[len(selectors)] = model
        string, reference = built[2], built[3]
        self.assertIsInstance(reference, models.VAEGAN)
        self.assertIsInstance(reference.latent_head, heads.ChannelRecurrentHead)
        # The same variables (Keras numbers the second model's unnamed seed generators, so compare shapes).
        self.assertEqual([tuple(v.shape) for v in reference.variables], [tuple(v.shape) for v in string.variables])
        self.assertEqual(models.parameter_counts(reference), models.parameter_counts(string))

    def test_dataset_sources_by_reference_and_your_own(self):
        """`dataset.source = @sprites_source` is `dataset.name = 'sprites'`; a registered function of one's own
        receives the seed and the bound dataset.* arguments."""
        parse("quickstart", ["dataset.source = @sprites_source"])
        by_reference = builders.build_dataset(seed=2)
        parse("quickstart")
        by_name = builders.build_dataset(seed=2)
        self.assertEqual(by_reference.source, by_name.source)
        np.testing.assert_array_equal(by_reference.validation, by_name.validation)
        parse("quickstart", ["dataset.source = @tiny_test_source", "dataset.validation_size = 3"])
        splits = builders.build_dataset(seed=5)
        # Every bound dataset.* argument reaches it, the quickstart's sprite style included; unbound ones do not.
        self.assertEqual(
            splits.source,
            "tiny_test_source(seed=5, arguments="
            "['sprite_radius', 'sprite_rotation', 'sprite_scale', 'validation_size'])",
        )
        self.assertEqual(len(splits.validation), 3)

    def test_head_selector_arguments_come_from_the_head_signatures(self):
        self.assertEqual(builders.head_arguments(heads.FCHead), {"latent_dim", "num_time_steps"})
        self.assertEqual(
            builders.head_arguments(heads.ChannelRecurrentHead),
            {
                "latent_channels",
                "num_time_steps",
                "loc_path",
                "hidden_units",
                "num_layers",
                "recurrent_inference",
                "recurrent_generation",
                "inference_batchnorm",
                "generation_batchnorm",
                "lstm_jit_compile",
            },
        )
        parse(
            "mnist_vae", ["latent_head.kind = None", "latent_head.head_fn = @fc_head", "latent_head.hidden_units = 4"]
        )
        with self.assertRaisesRegex(ValueError, r"latent_head.head_fn=fc_head does not use \['hidden_units'\]"):
            builders.build_model(seed=0)
        parse("mnist_vae", ["latent_head.head_fn = @fc_head"])
        with self.assertRaisesRegex(ValueError, "Set exactly one of latent_head.kind"):
            builders.build_model(seed=0)

    def test_ablation_switches(self):
        parse("mnist_crvae_inference")
        head = builders.build_model(seed=0).latent_head
        self.assertTrue(head.recurrent_inference)
        self.assertFalse(head.recurrent_generation)
        parse("mnist_crvae_generation")
        head = builders.build_model(seed=0).latent_head
        self.assertFalse(head.recurrent_inference)
        self.assertTrue(head.recurrent_generation)

    def test_crvae_optimizers(self):
        """The recipe: lr 3e-4 for every group (docs/crvae_collapse.md); the paper preset: the code's 3e-3, head / T."""
        parse("mnist_crvae")
        model = builders.build_model(seed=0)
        self.assertTrue(model.latent_head.generation_batchnorm)
        optimizers, clips = builders.build_optimizers(model, steps_per_epoch=390)
        self.assertEqual(sorted(optimizers), ["decoder", "encoder", "latent_head"])
        for name in optimizers:
            self.assertAlmostEqual(builders.current_learning_rate(optimizers[name]), 3e-4, places=10)
        self.assertEqual(clips, {"latent_head": 5.0})
        encoder_opt = optimizers["encoder"]
        self.assertAlmostEqual(float(encoder_opt._learning_rate(50 * 390)), 1.5e-4, places=10)  # halved at epoch 50
        self.assertAlmostEqual(float(encoder_opt._learning_rate(50 * 390 - 1)), 3e-4, places=10)
        gin.clear_config()
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, name) for name in ("mnist_crvae.gin", "presets/paper_crvae.gin")],
            [],
            finalize=False,
        )
        model = builders.build_model(seed=0)
        self.assertFalse(model.latent_head.generation_batchnorm)
        optimizers, _ = builders.build_optimizers(model, steps_per_epoch=390)
        self.assertAlmostEqual(builders.current_learning_rate(optimizers["encoder"]), 3e-3, places=8)
        self.assertAlmostEqual(builders.current_learning_rate(optimizers["latent_head"]), 3e-3 / 8, places=8)

    def test_precision_binding(self):
        parse(
            "mnist_crvae",
            [
                "encoder.base_channels = 4",
                "decoder.base_channels = 4",
                "latent_head.latent_channels = 8",
                "latent_head.hidden_units = 8",
                "model.precision = 'mixed_bfloat16'",
            ],
        )
        model = builders.build_model(seed=0)
        self.assertEqual(model.latent_head.inference_lstm.compute_dtype, "bfloat16")
        self.assertEqual(keras.config.dtype_policy().name, "float32")  # the global policy is restored
        parse("mnist_crvae", ["model.precision = 'float16'"])
        with self.assertRaisesRegex(ValueError, "model.precision"):
            builders.build_model(seed=0)

    def test_filter_gradient_binding_reaches_every_convolution(self):
        """`encoder.filter_gradient` / `decoder.filter_gradient` reach every `blocks.Conv2D` / `Conv2DTranspose` of the
        MNIST and RGB networks; the default 'auto' fires in bfloat16 on exactly the small-map layers; bad values give
        one clear error naming the binding."""
        tiny = ["encoder.base_channels = 4", "decoder.base_channels = 4", "latent_head.latent_channels = 8"]
        tiny += ["latent_head.hidden_units = 8"]

        def convolutions(model):
            kinds = (blocks.Conv2D, blocks.Conv2DTranspose)
            return [layer for net in (model.encoder, model.decoder) for layer in net.layers if isinstance(layer, kinds)]

        parse("mnist_crvae", tiny + ["encoder.filter_gradient = 'native'", "decoder.filter_gradient = 'forward_conv'"])
        model = builders.build_model(seed=0)
        self.assertLen(convolutions(model), 6 + 5)  # the encoder's 6 convolutions, the decoder's 3 + 2 transposed
        self.assertEqual(
            {layer.filter_gradient for layer in model.encoder.layers if hasattr(layer, "filter_gradient")}, {"native"}
        )
        self.assertEqual(
            {layer.filter_gradient for layer in model.decoder.layers if hasattr(layer, "filter_gradient")},
            {"forward_conv"},
        )

        # The paper's widths in bfloat16: 'auto' = the encoder's conv4-6, the decoder's deconv1, conv1, deconv2.
        parse("mnist_crvae", ["model.precision = 'mixed_bfloat16'"])
        model = builders.build_model(seed=0)
        chosen = []
        for net in (model.encoder, model.decoder):
            shape = net.input_shape
            for layer in net.layers:
                if isinstance(layer, (blocks.Conv2D, blocks.Conv2DTranspose)) and layer.forward_filter_gradient(shape):
                    chosen.append(layer.name)
                shape = layer.compute_output_shape(shape)
        self.assertEqual(
            chosen, ["conv4_conv", "conv5_conv", "conv6_conv", "deconv1_deconv", "conv1_conv", "deconv2_deconv"]
        )

        # RGB networks: 'auto' by default too (the CelebA-64 crVAE-GAN's bfloat16 step was faster with it).
        parse("celeba64", tiny + ["model.precision = 'mixed_bfloat16'", "encoder.filter_gradient = 'native'"])
        model = builders.build_model(image_shape=(64, 64, 3), seed=0)
        self.assertEqual(
            {layer.filter_gradient for layer in model.encoder.layers if hasattr(layer, "filter_gradient")}, {"native"}
        )
        self.assertEqual(
            {layer.filter_gradient for layer in model.decoder.layers if hasattr(layer, "filter_gradient")}, {"auto"}
        )
        for scope in ("encoder", "decoder"):
            parse("mnist_crvae", tiny + [f"{scope}.filter_gradient = 'fast'"])
            with self.assertRaisesRegex(ValueError, f"{scope}.filter_gradient='fast' is not one of"):
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
