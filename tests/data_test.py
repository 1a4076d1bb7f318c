"""Data contracts: loaders (local files, tfds mock, sprites), splits, binarization, resumable pipelines."""

import os

import numpy as np
import tensorflow as tf

from crvae_tf import data

import testing_utils


class SpritesTest(tf.test.TestCase):
    def test_deterministic_ranged_and_factored(self):
        images, factors = data.generate_sprites(64, seed=3)
        again, _ = data.generate_sprites(64, seed=3)
        other, _ = data.generate_sprites(64, seed=4)
        self.assertEqual(images.shape, (64, 28, 28, 1))
        self.assertEqual(images.dtype, np.float32)
        self.assertAllEqual(images, again)
        self.assertNotAllClose(images, other)
        self.assertAllInRange(images, 0.0, 1.0)
        self.assertEqual(sorted(factors), ["rotation", "scale", "shape", "x", "y"])
        self.assertAllInSet(factors["shape"], range(len(data.SPRITE_SHAPES)))
        self.assertAllInRange(factors["scale"], 0.5, 1.0)
        # Every image shows a shape whose area grows with its scale (anti-aliased ink, never empty).
        ink = images.sum(axis=(1, 2, 3))
        self.assertAllGreater(ink, 5.0)
        squares = factors["shape"] == 0
        self.assertGreater(np.corrcoef(factors["scale"][squares], ink[squares])[0, 1], 0.9)

    def test_shape_position_follows_the_factors(self):
        images, factors = data.generate_sprites(32, seed=1)
        yy, xx = np.mgrid[:28, :28]
        mass = images[..., 0].sum(axis=(1, 2))
        centre_x = (images[..., 0] * xx).sum(axis=(1, 2)) / mass
        self.assertGreater(np.corrcoef(centre_x, factors["x"])[0, 1], 0.95)

    def test_splits_are_disjoint_streams(self):
        splits = data.load_image_splits("sprites", num_sprites=(32, 8, 8), seed=0)
        self.assertEqual(splits.binarization, "dynamic")
        train = {image.tobytes() for image in splits.train}
        for name in ("validation", "test"):
            self.assertFalse(train & {image.tobytes() for image in splits.split(name)}, msg=name)

    def test_style_sets_size_scale_and_rotation_ranges(self):
        images, factors = data.generate_sprites(
            200, seed=2, radius=12.0, scale_range=(0.75, 1.0), rotation_range=(-45.0, 45.0)
        )
        self.assertAllInRange(factors["scale"], 0.75, 1.0)
        self.assertAllInRange(factors["rotation"], -np.pi / 4, np.pi / 4)
        small, _ = data.generate_sprites(200, seed=2)
        # Same shapes and normalised poses, larger radius: more ink in every image, by about (12/9)^2 on
        # average; every pixel of ink lies within the radius of the centre r + (28 - 2r) * x.
        ink = images.sum(axis=(1, 2, 3))
        self.assertGreater(ink.mean() / small.sum(axis=(1, 2, 3)).mean(), 1.4)
        yy, xx = np.mgrid[:28, :28] + 0.5
        cx = 12.0 + 4.0 * factors["x"][:, None, None]
        cy = 12.0 + 4.0 * factors["y"][:, None, None]
        outside = np.hypot(xx - cx, yy - cy) > 12.0 * factors["scale"][:, None, None] + 1.0
        self.assertAllEqual(images[..., 0][outside], np.zeros(outside.sum()))
        # render_sprites reproduces the images from their factors.
        np.testing.assert_array_equal(data.render_sprites(factors, radius=12.0), images)

    def test_style_is_a_dataset_option_checked_with_its_binding_name(self):
        splits = data.load_image_splits("sprites", num_sprites=(4, 2, 2), seed=0, sprite_rotation=(10.0, 20.0))
        self.assertAllInRange(splits.factors["train"]["rotation"], np.deg2rad(10.0), np.deg2rad(20.0))
        self.assertIn("rotation_range=(10.0, 20.0)", splits.source)
        for kwargs, binding in (
            (dict(sprite_radius=20.0), "dataset.sprite_radius=20.0"),
            (dict(sprite_scale=(0.0, 1.0)), r"dataset.sprite_scale=\(0.0, 1.0\)"),
            (dict(sprite_rotation=(90.0, 0.0)), r"dataset.sprite_rotation=\(90.0, 0.0\)"),
        ):
            with self.assertRaisesRegex(ValueError, binding):
                data.load_image_splits("sprites", num_sprites=(4, 2, 2), **kwargs)
        with self.assertRaisesRegex(ValueError, "dataset.sprite_radius only apply to dataset.name='sprites'"):
            data.load_image_splits("mnist", local_path="/nonexistent.npz", sprite_radius=11.0)

    def test_sprites_reject_a_local_path(self):
        with self.assertRaisesRegex(ValueError, "generated in code"):
            data.load_image_splits("sprites", local_path="/tmp/x.npz")


class LocalFilesTest(tf.test.TestCase):
    def test_keras_mnist_validation_is_held_out_from_train(self):
        path = testing_utils.write_fake_mnist(
            os.path.join(self.get_temp_dir(), "mnist.npz"), num_train=100, num_test=20
        )
        raw = np.load(path)
        splits = data.load_image_splits("mnist", local_path=path, validation_size=30, seed=5)
        self.assertEqual((len(splits.train), len(splits.validation), len(splits.test)), (70, 30, 20))
        self.assertAllInRange(splits.train, 0.0, 1.0)
        # Train + validation is a permutation of the training file; the test split is the test file.
        pool = np.concatenate([splits.train, splits.validation])
        self.assertAllClose(
            np.sort((pool[..., 0] * 255).round().reshape(100, -1), axis=0),
            np.sort(raw["x_train"].reshape(100, -1).astype(np.float32), axis=0),
        )
        self.assertAllClose(splits.test[..., 0] * 255, raw["x_test"], atol=1e-3)
        train = {image.tobytes() for image in splits.train}
        validation = {image.tobytes() for image in splits.validation}
        test = {image.tobytes() for image in splits.test}
        self.assertFalse(train & validation)
        self.assertFalse((train | validation) & test)
        # A folder holding mnist.npz works too, and the hold-out is a function of the seed.
        same = data.load_image_splits("mnist", local_path=self.get_temp_dir(), validation_size=30, seed=5)
        self.assertAllEqual(same.validation, splits.validation)

    def test_packed_binarized_mnist_loads_the_stored_bits(self):
        path = os.path.join(self.get_temp_dir(), "binarized_mnist.npz")
        bits = testing_utils.write_fake_binarized_mnist(path)
        splits = data.load_image_splits("binarized_mnist", local_path=path)
        self.assertEqual(splits.binarization, "static")
        for split, key in (("train", "train"), ("validation", "valid"), ("test", "test")):
            self.assertAllEqual(splits.split(split).reshape(-1, 784), bits[key].astype(np.float32))

    def test_missing_and_wrong_files_say_what_to_set(self):
        with self.assertRaisesRegex(data.DataUnavailableError, "dataset.local_path"):
            data.load_image_splits("mnist", local_path=os.path.join(self.get_temp_dir(), "nope.npz"))
        with self.assertRaisesRegex(data.DataUnavailableError, "without 'mnist.npz'"):
            data.load_image_splits("mnist", local_path=self.get_temp_dir())
        packed = os.path.join(self.get_temp_dir(), "binarized_mnist.npz")
        testing_utils.write_fake_binarized_mnist(packed)
        with self.assertRaisesRegex(data.DataUnavailableError, "dataset.name='binarized_mnist'"):
            data.load_image_splits("mnist", local_path=packed)
        garbage = os.path.join(self.get_temp_dir(), "garbage.npz")
        with open(garbage, "wb") as f:
            f.write(b"not a zip")
        with self.assertRaisesRegex(data.DataUnavailableError, "Could not read"):
            data.load_image_splits("binarized_mnist", local_path=garbage)
        with self.assertRaisesRegex(ValueError, "Unknown dataset name"):
            data.load_image_splits("cifar")

    def test_validation_size_is_checked(self):
        path = testing_utils.write_fake_mnist(os.path.join(self.get_temp_dir(), "mnist.npz"), num_train=50)
        with self.assertRaisesRegex(ValueError, "dataset.validation_size"):
            data.load_image_splits("mnist", local_path=path, validation_size=50)


class TfdsTest(tf.test.TestCase):
    def test_tfds_mnist_through_mock_data(self):
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        with tfds.testing.mock_data(num_examples=24):
            splits = data.load_image_splits("mnist", validation_size=4, download=False)
        self.assertEqual(splits.source.split(" ")[0], "tfds:mnist")
        self.assertEqual((len(splits.train), len(splits.validation), len(splits.test)), (20, 4, 24))
        self.assertAllInRange(splits.train, 0.0, 1.0)

    def test_offline_tfds_error_names_the_local_binding(self):
        with self.assertRaisesRegex(data.DataUnavailableError, r"dataset.local_path='/path/to/mnist.npz'"):
            data.load_image_splits("mnist", data_dir=self.get_temp_dir(), download=False)
        with self.assertRaisesRegex(data.DataUnavailableError, "binarized_mnist.npz"):
            data.load_image_splits("binarized_mnist", data_dir=self.get_temp_dir(), download=False)


class PipelineTest(tf.test.TestCase):
    def test_binarize_is_an_unbiased_bernoulli_draw(self):
        p = np.linspace(0.0, 1.0, 11, dtype=np.float32)
        images = np.tile(p, (20000, 1))
        bits = data.binarize(images, tf.constant([1, 2], tf.int64)).numpy()
        self.assertAllInSet(bits, [0.0, 1.0])
        self.assertAllClose(bits.mean(0), p, atol=0.015)
        self.assertAllEqual(bits, data.binarize(images, tf.constant([1, 2], tf.int64)))

    def test_resumed_epoch_continues_exactly(self):
        images, _ = data.generate_sprites(40, seed=0)
        kwargs = dict(batch_size=8, binarization="dynamic", seed=7, training=True, epoch=2)
        full = [b.numpy() for b in data.make_dataset(images, **kwargs)]
        self.assertLen(full, 5)
        tail = [b.numpy() for b in data.make_dataset(images, skip_batches=3, **kwargs)]
        self.assertLen(tail, 2)
        for a, b in zip(full[3:], tail):
            self.assertAllEqual(a, b)
        # A new epoch is a new order and new noise.
        other = next(iter(data.make_dataset(images, **dict(kwargs, epoch=3)))).numpy()
        self.assertNotAllClose(full[0], other)
        with self.assertRaisesRegex(ValueError, "skip_batches"):
            data.make_dataset(images, skip_batches=6, **kwargs)

    def test_evaluation_covers_every_image_once_with_fixed_noise(self):
        images = np.tile(np.arange(11, dtype=np.float32)[:, None, None, None] / 10.0, (1, 2, 2, 1))
        batches = [
            b.numpy() for b in data.make_dataset(images, batch_size=4, binarization="static", seed=0, training=False)
        ]
        self.assertEqual([len(b) for b in batches], [4, 4, 3])
        self.assertAllEqual(np.concatenate(batches), images)
        first = [
            b.numpy() for b in data.make_dataset(images, batch_size=4, binarization="dynamic", seed=0, training=False)
        ]
        second = [
            b.numpy() for b in data.make_dataset(images, batch_size=4, binarization="dynamic", seed=0, training=False)
        ]
        for a, b in zip(first, second):
            self.assertAllEqual(a, b)

    def test_every_pipeline_runs_without_autotuning(self):
        """`pipeline.finish`: autotuning off (its thread stalls iterator destruction), a fixed prefetch; the sharded
        (multi-worker) and uint8 passthrough variants too."""
        images, _ = data.generate_sprites(40, seed=0)
        variants = {
            "train": dict(binarization="dynamic", training=True),
            "eval": dict(binarization="static", training=False),
            "sharded": dict(binarization="dynamic", training=True, shard=(1, 2)),
            "passthrough": dict(binarization="none", training=True),
        }
        for name, kwargs in variants.items():
            with self.subTest(name):
                source = (images * 255).astype(np.uint8) if name == "passthrough" else images
                dataset = data.make_dataset(source, batch_size=8, seed=0, **kwargs)
                self.assertIs(dataset.options().autotune.enabled, False)
                self.assertLen(list(dataset), 5)

    def test_bad_arguments(self):
        images = np.zeros((4, 2, 2, 1), np.float32)
        with self.assertRaisesRegex(ValueError, "train.batch_size"):
            data.make_dataset(images, batch_size=0, binarization="static", seed=0, training=True)
        with self.assertRaisesRegex(ValueError, "binarization"):
            data.make_dataset(images, batch_size=2, binarization="random", seed=0, training=True)
        with self.assertRaisesRegex(ValueError, "divide uint8"):
            data.make_dataset(images.astype(np.uint8), batch_size=2, binarization="static", seed=0, training=True)
        with self.assertRaisesRegex(ValueError, "exceeds"):
            data.steps_per_epoch(4, 8)


class LabelsAndFactorsTest(testing_utils.GinTestCase):
    def test_sprites_keep_their_ground_truth_factors_per_split(self):
        splits = data.load_image_splits("sprites", seed=4, num_sprites=(6, 3, 2))
        for split, n in (("train", 6), ("validation", 3), ("test", 2)):
            factors = splits.factors[split]
            self.assertEqual(sorted(factors), ["rotation", "scale", "shape", "x", "y"])
            self.assertTrue(all(len(v) == n for v in factors.values()))
        # The factors are the ones the images were rendered from.
        images, factors = data.generate_sprites(6, [4, 0])
        np.testing.assert_array_equal(splits.train, images)
        np.testing.assert_array_equal(splits.factors["train"]["shape"], factors["shape"])

    def test_mnist_file_labels_follow_the_validation_hold_out(self):
        path = testing_utils.write_fake_mnist(os.path.join(self.get_temp_dir(), "mnist.npz"), num_train=50, num_test=7)
        splits = data.load_image_splits("mnist", local_path=path, validation_size=10, seed=2)
        with np.load(path) as raw:
            permutation = np.random.default_rng(2).permutation(50)
            np.testing.assert_array_equal(splits.labels["validation"], raw["y_train"][permutation[40:]])
            np.testing.assert_array_equal(splits.labels["test"], raw["y_test"])
        self.assertEqual(len(splits.labels["train"]), 40)

    def test_labels_must_match_the_split_sizes(self):
        images = np.zeros((3, 28, 28, 1), np.float32)
        with self.assertRaisesRegex(ValueError, r"labels\['train'\] must have one entry per image \(3\)"):
            data.ImageSplits("mnist", "dynamic", images, images, images, "x", labels={"train": np.zeros(2)})
