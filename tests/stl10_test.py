"""STL-10 reader and the semi-supervised protocol (issue #15): the byte layout on small generated files, the size, label
and fold checks, the tfds source without folds, the training pool's pipeline, the class loss against a NumPy oracle,
and a learning test of the semi-supervised discriminator on a 10-colour problem."""

import os

import keras
import numpy as np
import stl10_testing
import tensorflow as tf

from crvae_tf import data
from crvae_tf import models
from crvae_tf.architectures import networks
from crvae_tf.data import stl10
from crvae_tf.evaluation import classification
from crvae_tf.objectives import losses
from crvae_tf.training import monitors

import testing_utils


class ReaderTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.root = stl10_testing.write_position_folder(os.path.join(self.get_temp_dir(), "stl10_binary"))

    def test_byte_layout_labels_folds_and_memory_map(self):
        arrays = stl10.read_stl10_folder(os.path.dirname(self.root))  # the parent folder is found too
        self.assertAllEqual(arrays.train_images, stl10_testing.position_images(20, 0))
        self.assertAllEqual(arrays.test_images, stl10_testing.position_images(10, 100))
        self.assertAllEqual(np.asarray(arrays.unlabeled), stl10_testing.position_images(30, 200))
        self.assertIsInstance(arrays.unlabeled.base, np.memmap)  # a view of the map, not a loaded copy
        self.assertAllEqual(arrays.train_labels, np.arange(20) % 10)  # the files' 1..10 minus 1
        self.assertEqual(arrays.folds.shape, (10, 2))
        with open(os.path.join(self.root, "fold_indices.txt")) as f:
            self.assertAllEqual(arrays.folds[3], [int(t) for t in f.readlines()[3].split()])

    def test_fold_splits_and_evaluation_view(self):
        splits = data.load_image_splits("stl10", local_path=self.root, fold=3, resolution=96)
        folds = stl10.read_stl10_folder(self.root).folds
        train = stl10_testing.position_images(20, 0)
        self.assertEqual(len(splits.train), 32)  # 30 unlabeled + the 2 images of fold 3
        self.assertAllEqual(splits.labels["train"][:30], np.full(30, -1))
        self.assertAllEqual(splits.labels["train"][30:], folds[3] % 10)
        outside = np.setdiff1d(np.arange(20), folds[3])
        self.assertAllEqual(splits.labels["validation"], outside % 10)
        # At R = 96 the evaluation view is the image itself (the whole-image box, no resampling).
        self.assertAllEqual(splits.validation, train[outside])
        self.assertAllEqual(splits.train[30:], train[folds[3]])
        self.assertAllEqual(splits.train[:2], stl10_testing.position_images(2, 200))
        self.assertAllEqual(splits.test, stl10_testing.position_images(10, 100))
        self.assertEqual(data.load_image_splits("stl10", local_path=self.root, fold=0).image_shape, (64, 64, 3))

    def test_missing_files_named_with_the_binding(self):
        os.remove(os.path.join(self.root, "unlabeled_X.bin"))
        os.remove(os.path.join(self.root, "fold_indices.txt"))
        with self.assertRaisesRegex(
            data.DataUnavailableError, r"\['unlabeled_X.bin', 'fold_indices.txt'\].*local_path"
        ):
            stl10.read_stl10_folder(self.root)

    def test_size_label_and_fold_checks(self):
        def broken(name, content, pattern):
            root = stl10_testing.write_position_folder(os.path.join(self.get_temp_dir(), name))
            path, payload = content(root)
            with open(path, "wb") as f:
                f.write(payload)
            with self.assertRaisesRegex(data.DataUnavailableError, pattern):
                stl10.read_stl10_folder(root)

        truncated = lambda r: (os.path.join(r, "test_X.bin"), bytes(27648 * 2 + 5))  # noqa: E731
        broken("truncated", truncated, "not a positive multiple of 27,648")
        broken("labels", lambda r: (os.path.join(r, "train_y.bin"), bytes([1] * 19)), "19 labels for 20 images")
        broken("range", lambda r: (os.path.join(r, "test_y.bin"), bytes([11] * 10)), r"outside 1\.\.10")
        lines = lambda rows: "\n".join(rows).encode()  # noqa: E731
        folds = lambda r, rows: (os.path.join(r, "fold_indices.txt"), lines(rows))  # noqa: E731
        broken("nine", lambda r: folds(r, ["0 1"] * 9), "9 non-empty lines")
        broken("repeat", lambda r: folds(r, ["0 1"] * 9 + ["4 4"]), "fold 9 repeats")
        broken("range2", lambda r: folds(r, ["0 1"] * 9 + ["0 20"]), r"outside \[0, 20\)")
        broken("sizes", lambda r: folds(r, ["0 1"] * 9 + ["0 1 2"]), "different sizes")

    def test_fold_arguments(self):
        with self.assertRaisesRegex(ValueError, "0..9"):
            data.load_image_splits("stl10", local_path=self.root, fold=10)
        with self.assertRaisesRegex(ValueError, "only"):
            data.load_image_splits("sprites", fold=1)
        with self.assertRaisesRegex(ValueError, "validation_size.*fold=None only"):
            data.load_image_splits("stl10", local_path=self.root, fold=1, validation_size=5)
        splits = data.load_image_splits("stl10", local_path=self.root, validation_size=5, seed=3)
        self.assertEqual((len(splits.validation), len(splits.train)), (5, 45))  # no fold: 15 labeled + 30

    def test_tfds_source_has_no_folds(self):
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        cache = self.get_temp_dir()
        with tfds.testing.mock_data(num_examples=12):
            with self.assertRaisesRegex(data.DataUnavailableError, "shuffled.*fold_indices.txt.*dataset.local_path"):
                data.load_image_splits("stl10", fold=2, cache_dir=cache)
            splits = data.load_image_splits("stl10", cache_dir=cache, validation_size=3, resolution=32)
        self.assertEqual((len(splits.train), len(splits.validation), len(splits.test)), (21, 3, 12))
        self.assertEqual(splits.image_shape, (32, 32, 3))
        self.assertIn("tfds:stl10", splits.source)


class PoolPipelineTest(tf.test.TestCase):
    def test_batches_follow_the_rows_and_resume(self):
        # Flat images whose value is the row's id: crops and flips keep it, so every batch row names its source row.
        rows = np.arange(40)
        pool = stl10.TrainingPool(
            [np.broadcast_to(rows[:, None, None, None].astype(np.uint8), (40, 96, 96, 3))],
            np.where(rows >= 30, rows % 10, -1),
            resolution=16,
            labeled_batch_size=4,
        )
        make = lambda **kw: list(  # noqa: E731
            data.make_dataset(pool, batch_size=8, binarization="none", seed=5, training=True, **kw)
        )
        epoch = make()
        self.assertLen(epoch, 5)
        pool_rows = np.concatenate([np.round(b[0].numpy()[:, 0, 0, 0] * 255) for b in epoch]).astype(int)
        self.assertAllEqual(np.sort(pool_rows), rows)  # every pool row once per epoch
        labeled_rows = np.concatenate([np.round(b[1].numpy()[:, 0, 0, 0] * 255) for b in epoch]).astype(int)
        self.assertTrue(np.all(labeled_rows >= 30))
        self.assertAllEqual(np.sort(labeled_rows[:10]), np.arange(30, 40))  # each labeled row once per cycle
        self.assertAllEqual(np.concatenate([b[2].numpy() for b in epoch]), labeled_rows % 10)  # labels match
        self.assertAllClose(make(skip_batches=3)[0][0], epoch[3][0])  # a resume continues the same epoch
        self.assertNotAllClose(make(epoch=1)[0][0], epoch[0][0])
        shards = [make(shard=(w, 2))[2] for w in (0, 1)]  # multi-worker: each worker's rows of the global batch
        for part in range(3):
            self.assertAllClose(tf.concat([shards[0][part], shards[1][part]], 0), epoch[2][part])
        evaluation = list(data.make_dataset(pool, batch_size=16, binarization="none", seed=5, training=False))
        self.assertEqual([b.shape[0] for b in evaluation], [16, 16, 8])
        for training in (True, False):  # pipeline.finish: no autotuning thread to stall the iterators' destruction
            dataset = data.make_dataset(pool, batch_size=8, binarization="none", seed=5, training=training)
            self.assertIs(dataset.options().autotune.enabled, False)

    def test_a_pool_batch_is_saved_on_a_nonfinite_loss(self):
        guard = monitors.TrainingGuard(self.get_temp_dir(), None, lambda: None)
        pool = np.full((2, 4, 4, 3), 0.5, np.float32)
        path = guard.save_batch((pool, np.zeros((3, 4, 4, 3), np.float32), np.arange(3)), "nonfinite", 7)
        self.assertAllEqual(np.load(path), pool)  # the real images of the (pool, labeled, labels) batch

    def test_crop_boxes(self):
        boxes = stl10.random_crop_boxes(tf.constant(500), 2 / 3, tf.constant([1, 2], tf.int64)).numpy()
        side = boxes[:, 2] - boxes[:, 0]
        self.assertAllClose(side, boxes[:, 3] - boxes[:, 1], atol=1e-6)  # square
        self.assertTrue(np.all((side >= 2 / 3 - 1e-6) & (side <= 1 + 1e-6)))
        self.assertTrue(np.all((boxes >= -1e-6) & (boxes <= 1 + 1e-6)))
        self.assertGreater(side.std(), 0.05)


class ClassificationLossTest(tf.test.TestCase):
    def test_against_numpy(self):
        rng = np.random.default_rng(0)
        logits, labels = rng.normal(size=(7, 10)) * 3, rng.integers(0, 10, 7)
        log_softmax = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
        self.assertAllClose(losses.classification_loss(logits, labels), -log_softmax[np.arange(7), labels], atol=1e-5)
        self.assertAllEqual(losses.classification_correct(logits, labels), np.argmax(logits, 1) == labels)
        result = classification.accuracy(logits, labels)
        self.assertAlmostEqual(result["accuracy"], np.mean(np.argmax(logits, 1) == labels))


class SemiSupervisedLearningTest(tf.test.TestCase):
    """The path from the files to the accuracy learns: a 10-colour problem (chance 10%) in the STL-10 binary layout,
    read at 16x16 with 30 labeled images (fold 0), trained through the pool's pipeline (crops, flips, labeled stream),
    scored on the test split."""

    def test_learns_ten_colours(self):
        folder = stl10_testing.write_colour_folder(
            os.path.join(self.get_temp_dir(), "colours"), num_train=60, num_test=100, num_unlabeled=40, fold_size=30
        )
        splits = data.load_image_splits("stl10", local_path=folder, fold=0, resolution=16, labeled_batch_size=30)
        encoder, head, decoder, trunk, disc, _ = testing_utils.tiny_adversarial_parts("fc", with_q=False)
        class_head = networks.class_head((4, 4, 4), num_classes=10, dropout_rate=0.1, seed=0)
        model = models.SemiSupervisedVAEGAN(
            encoder, head, decoder, trunk, disc, class_head=class_head, image_shape=(16, 16, 3), seed=0
        )
        model.build()
        model.compile({name: keras.optimizers.Adam(0.01) for name in model.GROUPS if name != "q_head"})
        self.assertIs(model._second_fakes({"reconstructions": 1, "prior_samples": 2}), 1)  # reconstructions only
        step = tf.function(model.train_step)
        for epoch in range(8):  # 7 steps of 10 pool + 30 labeled images per epoch
            for batch in data.make_dataset(
                splits.train, batch_size=10, binarization="none", seed=0, training=True, epoch=epoch
            ):
                logs = step(batch)
        self.assertIn("classification_loss", logs)
        result = classification.accuracy(classification.class_logits(model, splits.test), splits.labels["test"])
        self.assertGreater(result["accuracy"], 0.6, result)
        with self.assertRaisesRegex(ValueError, "without labels"):
            model.train_step(tf.constant(splits.test[:4] / 255.0, tf.float32))


if __name__ == "__main__":
    tf.test.main()
