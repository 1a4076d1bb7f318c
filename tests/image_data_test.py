"""RGB datasets: CelebA folder / tfds, Birds composite (CUB, Birdsnap, NABirds, tfds), cache, validation, pipeline.

Every test writes its own tiny image folders into a temp dir; nothing reads ../shared/data or the network.
"""

import json
import os
import shutil
from unittest import mock

import gin
import numpy as np
import tensorflow as tf

from crvae_tf import builders
from crvae_tf import data
from crvae_tf.data import image_cache
from crvae_tf.data import image_files
from crvae_tf.data import masks

import testing_utils


def _tags(images):
    """The identity tag (blue channel, exact for PNG sources) of each uint8 [N, R, R, 3] image."""
    return sorted(int(round(float(image[..., 2].mean()))) for image in np.asarray(images))


def _assert_names_match_rows(test, splits, retagged=None):
    """Each row's identity tag (blue = id % 250, exact for PNG; `retagged`: file name -> another tag) is the id in
    its recorded file name, in row order."""
    retagged = retagged or {}
    test.assertIsNotNone(splits.names)
    for split in data.SPLIT_NAMES:
        images = np.asarray(splits.split(split))
        test.assertLen(splits.names[split], len(images))
        tags = [int(round(float(image[..., 2].mean()))) for image in images]
        expected = [retagged.get(name, int(os.path.splitext(name)[0]) % 250) for name in splits.names[split]]
        test.assertEqual(tags, expected, msg=split)


def _manifest(splits):
    with open(splits.manifest_path) as f:
        return json.load(f)


class CelebaFolderTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.cache = os.path.join(self.get_temp_dir(), "cache")

    def load(self, folder, **kwargs):
        kwargs.setdefault("resolution", 64)
        kwargs.setdefault("cache_dir", self.cache)
        return data.load_image_splits("celeba", local_path=folder, **kwargs)

    def assert_face_crop(self, images, resolution):
        images = np.asarray(images).astype(np.float32)
        # The whole output lies inside the face window (green), border pixels aside.
        self.assertGreater(images[:, 1:-1, 1:-1, 1].min(), 200.0)
        # The red marker's centre lands at its place in the window.
        red = images[..., 0] > 160
        rows, cols = np.nonzero(red.any(axis=0))
        self.assertNear(rows.mean() / resolution, testing_utils.FACE_MARK[0] + testing_utils.FACE_MARK[2] / 2, 0.03)
        self.assertNear(cols.mean() / resolution, testing_utils.FACE_MARK[1] + testing_utils.FACE_MARK[3] / 2, 0.03)

    def test_face_crop_scales_with_the_image_size(self):
        self.assertEqual(image_files.celeba_crop_window(218, 178, image_files.CELEBA_FACE_CROP), (40, 15, 148, 148))
        self.assertEqual(image_files.celeba_crop_window(109, 89, image_files.CELEBA_FACE_CROP), (20, 8, 74, 74))
        for height, width, resolution in ((109, 89, 64), (218, 178, 128), (109, 89, 128)):
            with self.subTest(size=(height, width), resolution=resolution):
                folder = testing_utils.write_faces(
                    os.path.join(self.get_temp_dir(), f"faces{height}"), height, width, range(1, 7)
                )
                splits = self.load(folder, resolution=resolution, validation_size=1)
                self.assertEqual(splits.train.dtype, np.uint8)
                self.assertIsInstance(splits.train, np.memmap)
                self.assertEqual(splits.image_shape, (resolution, resolution, 3))
                self.assertEqual(splits.pixel_format, "uint8 [0, 255]")
                self.assertEqual((splits.binarization, splits.flip), ("none", True))
                for split in data.SPLIT_NAMES:
                    self.assert_face_crop(splits.split(split), resolution)
                window = _manifest(splits)["crop_windows"][f"{height}x{width}"]
                self.assertEqual(window["rows"][1] - window["rows"][0], round(148 * height / 218))
        # crop='none' keeps the whole image: the black margins around the face window come back.
        whole = self.load(folder, crop="none", validation_size=1)
        self.assertLess(np.asarray(whole.train)[..., 1].min(), 30)
        with self.assertRaisesRegex(ValueError, "dataset.crop"):
            self.load(folder, crop=(40, 15, 148, 999))

    def test_partition_file_assigns_the_splits(self):
        root = os.path.join(self.get_temp_dir(), "celeba")
        testing_utils.write_faces(os.path.join(root, "img_align_celeba"), 109, 89, range(1, 11), fmt="png")
        partition = {1: 0, 2: 0, 3: 0, 4: 0, 5: 1, 6: 1, 7: 2, 8: 2, 9: 2, 11: 0}  # 10 unlisted, 11 not on disk.
        os.makedirs(os.path.join(root, "Eval"))
        with open(os.path.join(root, "Eval", "list_eval_partition.txt"), "w") as f:
            f.writelines(f"{i:06d}.png {p}\n" for i, p in partition.items())
        splits = self.load(root)  # The parent works too: img_align_celeba/ is found inside it.
        self.assertEqual(_tags(splits.train), [1, 2, 3, 4])
        self.assertEqual(list(splits.names["validation"]), ["000005.png", "000006.png"])
        self.assertEqual(_tags(splits.validation), [5, 6])
        self.assertEqual(_tags(splits.test), [7, 8, 9])
        source = _manifest(splits)["sources"][0]
        self.assertEqual((source["listed"], source["missing"]), (10, 1))
        self.assertIn("not in list_eval_partition.txt were ignored", " ".join(source["notes"]))

    def test_official_id_ranges_without_a_partition_file(self):
        ids = [1, 2, 162770, 162771, 182637, 182638, 202599]
        folder = testing_utils.write_faces(os.path.join(self.get_temp_dir(), "ids"), 109, 89, ids, fmt="png")
        splits = self.load(folder)
        self.assertEqual(_tags(splits.train), sorted(i % 250 for i in (1, 2, 162770)))
        self.assertEqual(_tags(splits.validation), sorted(i % 250 for i in (162771, 182637)))
        self.assertEqual(_tags(splits.test), sorted(i % 250 for i in (182638, 202599)))
        self.assertIn("official CelebA id ranges", splits.source)

    def test_partial_copy_falls_back_to_a_disjoint_seeded_holdout(self):
        folder = testing_utils.write_faces(
            os.path.join(self.get_temp_dir(), "partial"), 109, 89, range(1, 21), fmt="png"
        )
        splits = self.load(folder, validation_size=3, seed=4)
        self.assertEqual((len(splits.train), len(splits.validation), len(splits.test)), (14, 3, 3))
        tags = [set(_tags(splits.split(s))) for s in data.SPLIT_NAMES]
        self.assertEqual(set.union(*tags), set(range(1, 21)))
        self.assertFalse(tags[0] & tags[1] or tags[0] & tags[2] or tags[1] & tags[2])
        self.assertIn("seeded hold-out", splits.source)
        self.assertIn("partial copy", splits.source)
        self.assertIn("seeded hold-out", _manifest(splits)["split_rule"])
        again = self.load(folder, validation_size=3, seed=4)
        self.assertEqual(_tags(again.validation), _tags(splits.validation))
        other = self.load(folder, validation_size=3, seed=5)
        self.assertNotEqual(other.manifest_path, splits.manifest_path)
        self.assertNotEqual(_tags(other.validation) + _tags(other.test), _tags(splits.validation) + _tags(splits.test))
        fraction = self.load(folder, validation_size=0.1, seed=4)  # 10% of 20 = 2 each.
        self.assertEqual((len(fraction.validation), len(fraction.test)), (2, 2))
        with self.assertRaisesRegex(ValueError, "dataset.validation_size"):
            self.load(folder, validation_size=10)

    def test_cache_is_reused_and_a_changed_source_invalidates_it(self):
        folder = testing_utils.write_faces(os.path.join(self.get_temp_dir(), "cached"), 109, 89, range(1, 9), fmt="png")
        first = self.load(folder, validation_size=1)
        # The seeded hold-out shuffles the pool: each row's name is still the file it came from.
        _assert_names_match_rows(self, first)
        self.assertEqual(sorted(sum((list(first.names[s]) for s in data.SPLIT_NAMES), [])), sorted(os.listdir(folder)))
        with mock.patch.object(image_cache, "decode_image_file", side_effect=AssertionError("decoded again")):
            second = self.load(folder, validation_size=1)
        self.assertEqual(second.manifest_path, first.manifest_path)
        self.assertAllEqual(second.train, first.train)
        self.assertEqual(second.names, first.names)  # the names survive the reuse
        testing_utils.write_image(
            os.path.join(folder, "000003.png"), testing_utils.fake_face(109, 89, 77), "png"
        )  # Changed content.
        decode = mock.Mock(side_effect=image_files.decode_image_file)
        with mock.patch.object(image_cache, "decode_image_file", decode):
            third = self.load(folder, validation_size=1)
        self.assertEqual(decode.call_count, 8)
        self.assertNotEqual(third.manifest_path, first.manifest_path)
        self.assertIn(77, _tags(np.concatenate([third.train, third.validation, third.test])))
        # Files are complete .npy arrays, no temporaries are left behind.
        cache_folder = os.path.dirname(third.manifest_path)
        self.assertEqual(
            sorted(os.listdir(cache_folder)), ["manifest.json", "names.json", "test.npy", "train.npy", "validation.npy"]
        )
        _assert_names_match_rows(self, third, retagged={"000003.png": 77})

    def test_cache_without_names_still_loads_and_refuses_landmarks_only(self):
        """A cache written before names were recorded is reused (names None); only landmark masks refuse it."""
        folder = testing_utils.write_faces(os.path.join(self.get_temp_dir(), "old"), 109, 89, range(1, 9), fmt="png")
        fresh = self.load(folder, validation_size=1)
        cache_folder = os.path.dirname(fresh.manifest_path)
        landmarks = {f"{i:06d}.jpg": masks.CELEBA_LANDMARK_TEMPLATE for i in range(1, 9)}
        self.assertEqual(masks.dataset_landmark_masks(fresh, landmarks, "eyes").shape, (1, 64, 64, 1))
        # Turn it into an old-format cache: no names.json, a manifest without "names".
        manifest = _manifest(fresh)
        del manifest["names"]
        with open(fresh.manifest_path, "w") as f:
            json.dump(manifest, f)
        os.unlink(os.path.join(cache_folder, image_cache.NAMES_FILE))
        with mock.patch.object(image_cache, "decode_image_file", side_effect=AssertionError("decoded again")):
            old = self.load(folder, validation_size=1)
        self.assertIsNone(old.names)
        self.assertEqual(old.manifest_path, fresh.manifest_path)
        self.assertAllEqual(old.validation, fresh.validation)
        with self.assertRaisesRegex(
            data.DataUnavailableError,
            rf"per-image landmark mask .*written before .*Delete that folder \(rm -r {cache_folder}\)",
        ):
            masks.dataset_landmark_masks(old, landmarks, "eyes")
        # Deleting the folder, as the message says, rebuilds it with the names.
        shutil.rmtree(cache_folder)
        rebuilt = self.load(folder, validation_size=1)
        self.assertEqual(rebuilt.names, fresh.names)
        # A manifest that names names.json while the file is damaged is a damaged cache: rebuilt.
        with open(os.path.join(cache_folder, image_cache.NAMES_FILE), "w") as f:
            f.write('{"train": ["000001.png"]')
        decode = mock.Mock(side_effect=image_files.decode_image_file)
        with mock.patch.object(image_cache, "decode_image_file", decode):
            again = self.load(folder, validation_size=1)
        self.assertEqual(decode.call_count, 8)
        self.assertEqual(again.names, fresh.names)

    def write_corrupt(self, folder):
        good = testing_utils.write_faces(folder, 109, 89, range(1, 21), fmt="png")
        payload = tf.io.encode_jpeg(testing_utils.fake_face(109, 89, 21)).numpy()
        with open(os.path.join(good, "000021.jpg"), "wb") as f:
            f.write(payload[: len(payload) // 3])  # Truncated JPEG.
        with open(os.path.join(good, "000022.jpg"), "wb") as f:
            f.write(b"<!DOCTYPE html><html><body>Google Drive - Virus scan warning</body></html>")
        open(os.path.join(good, "000023.jpg"), "wb").close()  # Zero bytes.
        testing_utils.write_image(os.path.join(good, "000024.jpg"), np.full((109, 89, 3), 128, np.uint8))  # Blank.
        return good

    def test_corrupt_images_are_reported_and_skipped(self):
        folder = self.write_corrupt(os.path.join(self.get_temp_dir(), "corrupt"))
        with self.assertLogs(image_cache._logger, "WARNING") as logs:
            splits = self.load(folder, validation_size=2, max_corrupt_fraction=0.2)
        self.assertTrue(any("4 of 24 celeba images were rejected" in line for line in logs.output), logs.output)
        self.assertEqual(len(splits.train) + len(splits.validation) + len(splits.test), 20)
        self.assertEqual(set(_tags(np.concatenate([splits.train, splits.validation, splits.test]))), set(range(1, 21)))
        _assert_names_match_rows(self, splits)  # the rejected files have no row and no name
        self.assertEqual(
            sorted(sum((list(splits.names[s]) for s in data.SPLIT_NAMES), [])), [f"{i:06d}.png" for i in range(1, 21)]
        )
        rejected = {os.path.basename(r["image"]): r["reason"] for r in _manifest(splits)["rejected"]}
        self.assertEqual(sorted(rejected), ["000021.jpg", "000022.jpg", "000023.jpg", "000024.jpg"])
        self.assertIn("undecodable", rejected["000021.jpg"])
        self.assertIn("HTML", rejected["000022.jpg"])
        self.assertIn("empty file", rejected["000023.jpg"])
        self.assertIn("blank", rejected["000024.jpg"])
        self.assertIn("4 rejected", splits.source)

    def test_too_many_corrupt_images_raise_with_the_list(self):
        folder = self.write_corrupt(os.path.join(self.get_temp_dir(), "corrupt"))
        with self.assertRaisesRegex(data.DataUnavailableError, r"4 of the 24 .*rejected.json.*max_corrupt_fraction"):
            self.load(folder, validation_size=2)
        reports = [
            os.path.join(root, name)
            for root, _, names in os.walk(self.cache)
            for name in names
            if name == "rejected.json"
        ]
        self.assertLen(reports, 1)
        with open(reports[0]) as f:
            self.assertLen(json.load(f), 4)

    def test_missing_data_names_the_files_and_the_binding(self):
        missing = os.path.join(self.get_temp_dir(), "nowhere")
        with self.assertRaisesRegex(data.DataUnavailableError, r"dataset.local_path.*000001.jpg"):
            self.load(missing)
        empty = os.path.join(self.get_temp_dir(), "empty")
        os.makedirs(empty)
        with self.assertRaisesRegex(data.DataUnavailableError, r"no .jpg/.jpeg/.png images.*000001.jpg"):
            self.load(empty)
        with self.assertRaisesRegex(ValueError, "dataset.resolution"):
            data.load_image_splits("celeba", local_path=empty)
        with self.assertRaisesRegex(ValueError, "dataset.resolution only apply to the RGB datasets"):
            data.load_image_splits("mnist", resolution=64)
        # tfds celeb_a that is not prepared: never downloaded, the error lists the three ways to provide it.
        with self.assertRaisesRegex(
            data.DataUnavailableError, r"dataset.local_path.*dataset.manual_dir.*img_align_celeba.zip.*dataset.data_dir"
        ):
            data.load_image_splits("celeba", resolution=64, data_dir=self.get_temp_dir(), download=True)
        with self.assertRaisesRegex(data.DataUnavailableError, r"dataset.manual_dir=.* lacks .*identity_CelebA.txt"):
            data.load_image_splits("celeba", resolution=64, data_dir=self.get_temp_dir(), manual_dir=empty)


class CelebaTfdsTest(tf.test.TestCase):
    def test_mock_celeb_a_is_face_cropped(self):
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        cache = os.path.join(self.get_temp_dir(), "cache")
        with tfds.testing.mock_data(num_examples=5):
            splits = data.load_image_splits("celeba", resolution=64, download=False, cache_dir=cache)
            raw = next(iter(tfds.builder("celeb_a").as_dataset(split="validation").take(1)))["image"]
        self.assertEqual((len(splits.train), len(splits.validation), len(splits.test)), (5, 5, 5))
        self.assertIn("celeba=tfds:celeb_a:2.1.0", splits.source)
        self.assertEqual(list(splits.names["validation"]), [f"celeb_a/validation[{i}]" for i in range(5)])
        expected = tf.image.resize(tf.cast(raw[40:188, 15:163], tf.float32), [64, 64], antialias=True)
        self.assertAllClose(splits.validation[0].astype(np.float32), expected, atol=0.51)


class BirdsTest(tf.test.TestCase):
    def setUp(self):
        super().setUp()
        self.cache = os.path.join(self.get_temp_dir(), "cache")

    def load(self, **kwargs):
        kwargs.setdefault("resolution", 64)
        kwargs.setdefault("cache_dir", self.cache)
        kwargs.setdefault("validation_size", 1)
        return data.load_image_splits("birds", **kwargs)

    def test_cub_folder_crops_square_rois(self):
        boxes = {
            "001.A/a.jpg": (60, 80, (10, 20, 30, 30), True),  # Square box: the ROI is the box.
            "001.A/b.jpg": (100, 120, (20, 40, 60, 20), True),  # Wide box: the square adds rows above / below.
            "002.B/c.jpg": (50, 70, (55, 2, 12, 12), False),  # At the right edge: shifted inside.
            "002.B/d.jpg": (30, 50, (5, 10, 40, 12), True),  # Wider than the image is tall: edge rows.
        }
        entries = [
            (rel, testing_utils.fake_bird(h, w, box, 10 * i), box, train)
            for i, (rel, (h, w, box, train)) in enumerate(boxes.items(), 1)
        ]
        entries.append(("003.C/missing.jpg", None, (0, 0, 5, 5), True))
        root = testing_utils.write_cub_style(os.path.join(self.get_temp_dir(), "CUB_200_2011"), entries)
        splits = self.load(cub_path=os.path.dirname(root))  # The parent of CUB_200_2011/ works too.
        everything = np.concatenate([splits.train, splits.validation, splits.test]).astype(np.float32)
        by_tag = {int(round(image[..., 2].mean())): image for image in everything}
        self.assertEqual(sorted(by_tag), [10, 20, 30, 40])
        self.assertGreater(by_tag[10][1:-1, 1:-1, 1].min(), 200)  # All box.
        green_rows = by_tag[20][:, 32, 1] > 128  # 20 of 60 rows are box.
        self.assertNear(green_rows.mean(), 20 / 60, 0.04)
        self.assertNear(np.nonzero(green_rows)[0].mean(), 31.5, 1.0)  # ... centred.
        self.assertGreater(by_tag[30][1:-1, 1:-1, 1].min(), 200)  # Shifted, still all box.
        # 40 x 40 square in a 30-row image: rows -4..-1 and 30..35 repeat rows 0 and 29 (the green ramp).
        self.assertAllEqual(by_tag[40][0], by_tag[40][5])
        self.assertAllEqual(by_tag[40][-1], by_tag[40][-9])
        self.assertNotAllEqual(by_tag[40][8], by_tag[40][0])
        self.assertNear((by_tag[40][:, 32, 1] > 128).mean(), 12 / 40, 0.04)
        self.assertEqual(image_files.square_box_window(50, 70, (55, 2, 12, 12)), (2, 55, 12, 12))
        self.assertEqual(image_files.square_box_window(120, 100, (20, 40, 60, 20)), (20, 20, 60, 60))
        self.assertEqual(image_files.square_box_window(30, 50, (5, 10, 40, 12)), (-4, 5, 40, 40))
        self.assertEqual(_tags(splits.test), [30])
        self.assertEqual(list(splits.names["test"]), ["002.B/c.jpg"])  # relative to CUB_200_2011/images/
        source = _manifest(splits)["sources"][0]
        self.assertEqual((source["listed"], source["present"], source["missing"]), (5, 4, 1))
        self.assertEqual(_manifest(splits)["total"], 4)
        self.assertIn("total 4 images vs the paper's 106474", splits.source)

    def test_composite_of_cub_birdsnap_and_nabirds_counts_each_source(self):
        box = (4, 6, 20, 16)
        cub = testing_utils.write_cub_style(
            os.path.join(self.get_temp_dir(), "cub", "CUB_200_2011"),
            [(f"001.A/{i}.jpg", testing_utils.fake_bird(40, 36, box, 10 + i), box, i < 3) for i in range(4)],
        )
        nabirds = testing_utils.write_cub_style(
            os.path.join(self.get_temp_dir(), "nabirds"),
            [(f"0817/{i}.jpg", testing_utils.fake_bird(30, 50, box, 60 + i), box, i != 0) for i in range(5)],
            ids_are_uuids=True,
        )
        birdsnap = os.path.join(self.get_temp_dir(), "birdsnap")
        os.makedirs(os.path.join(birdsnap, "download", "images", "Blue_Jay"))
        header = ["url", "md5", "path", "species_id", "bb_x1", "bb_y1", "bb_x2", "bb_y2", "back_x", "back_y"]
        rows = []
        for i in range(6):
            relative = f"Blue_Jay/{i}.jpg"
            rows.append([f"http://x/{i}.jpg", "0" * 32, relative, "1", "4", "6", "24", "22", "5", "5"])
            if i != 5:  # The last one could not be fetched.
                testing_utils.write_image(
                    os.path.join(birdsnap, "download", "images", relative),
                    testing_utils.fake_bird(32, 32, box, 120 + i),
                    "png",
                )
        with open(os.path.join(birdsnap, "images.txt"), "w") as f:
            f.write("\n".join("\t".join(row) for row in [header] + rows) + "\n")
        with open(os.path.join(birdsnap, "test_images.txt"), "w") as f:
            f.write("path\nBlue_Jay/1.jpg\nBlue_Jay/5.jpg\n")

        splits = self.load(cub_path=cub, birdsnap_path=birdsnap, nabirds_path=nabirds, validation_size=2, seed=3)
        manifest = _manifest(splits)
        used = {s["name"]: s["used"] for s in manifest["sources"]}
        self.assertEqual({name: u["test"] for name, u in used.items()}, {"cub": 1, "birdsnap": 1, "nabirds": 1})
        self.assertEqual(
            {name: u["train"] + u["validation"] for name, u in used.items()}, {"cub": 3, "birdsnap": 4, "nabirds": 4}
        )
        self.assertEqual([s["missing"] for s in manifest["sources"]], [0, 1, 0])
        self.assertEqual((len(splits.train), len(splits.validation), len(splits.test)), (9, 2, 3))
        self.assertEqual((manifest["total"], manifest["paper_total"]), (14, 106474))
        self.assertEqual(_tags(splits.test), [13, 60, 121])
        train_tags = set(range(10, 13)) | {61, 62, 63, 64} | {120, 122, 123, 124}
        self.assertEqual(set(_tags(splits.train)) | set(_tags(splits.validation)), train_tags)
        for name in ("cub=folder:", "birdsnap=folder:", "nabirds=folder:", "total 14 images vs the paper's 106474"):
            self.assertIn(name, splits.source)
        # Every ROI is the green box made square (16 of 20 rows green), whatever the source.
        for image in np.concatenate([splits.train, splits.test]).astype(np.float32):
            self.assertNear((image[:, 32, 1] > 128).mean(), 16 / 20, 0.04)

    def test_tfds_caltech_birds2011_through_mock_data(self):
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

        box = (10, 5, 20, 20)  # x, y, w, h in a 40 x 50 (height x width) image.
        normalized = np.array([5 / 40, 10 / 50, 25 / 40, 30 / 50], np.float32)

        def as_dataset(self, split, **kwargs):
            del self, kwargs
            count = 3 if split == "train" else 2
            images = np.stack([testing_utils.fake_bird(40, 50, box, 20 * i + (split == "test")) for i in range(count)])
            return tf.data.Dataset.from_tensor_slices({"image": images, "bbox": np.tile(normalized, (count, 1))})

        with tfds.testing.mock_data(as_dataset_fn=as_dataset):
            splits = self.load(cub_path="tfds", download=False)
        self.assertEqual((len(splits.train), len(splits.validation), len(splits.test)), (2, 1, 2))
        self.assertIn("cub=tfds:caltech_birds2011", splits.source)
        self.assertEqual(_tags(splits.test), [1, 21])
        for image in np.concatenate([splits.train, splits.validation, splits.test]).astype(np.float32):
            self.assertGreater(image[1:-1, 1:-1, 1].min(), 200)

    def test_missing_sources_name_the_bindings(self):
        with self.assertRaisesRegex(
            data.DataUnavailableError, r"dataset.cub_path.*dataset.birdsnap_path.*dataset.nabirds_path"
        ):
            self.load()
        empty = os.path.join(self.get_temp_dir(), "empty")
        os.makedirs(empty)
        with self.assertRaisesRegex(
            data.DataUnavailableError, r"dataset.cub_path=.*images.txt, bounding_boxes.txt, train_test_split.txt"
        ):
            self.load(cub_path=empty)
        with self.assertRaisesRegex(data.DataUnavailableError, r"dataset.nabirds_path=.*nabirds/images.txt"):
            self.load(nabirds_path=empty)
        with self.assertRaisesRegex(data.DataUnavailableError, r"dataset.birdsnap_path=.*birdsnap/images.txt"):
            self.load(birdsnap_path=empty)
        absent = testing_utils.write_cub_style(
            os.path.join(self.get_temp_dir(), "absent"), [("a/1.jpg", None, (0, 0, 4, 4), True)]
        )
        with self.assertRaisesRegex(data.DataUnavailableError, r"dataset.cub_path: none of the 1 images"):
            self.load(cub_path=absent)
        with self.assertRaisesRegex(ValueError, "unset dataset.local_path"):
            self.load(local_path=empty)


class PipelineTest(tf.test.TestCase):
    """make_dataset over uint8 memory maps ('none' binarization, flips)."""

    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        path = os.path.join(self.get_temp_dir(), "images.npy")
        images = rng.integers(0, 256, (21, 8, 8, 3), dtype=np.uint8)
        images[:, 0, 0, 0] = np.arange(21)  # Identity in a corner pixel... flipped images keep it at [0, 7].
        images[:, 0, 7, 0] = np.arange(21)
        np.save(path, images)
        self.images = np.load(path, mmap_mode="r")
        self.raw = images

    def batches(self, **kwargs):
        kwargs = dict(dict(batch_size=4, binarization="none", seed=5, training=True, epoch=1), **kwargs)
        return [b.numpy() for b in data.make_dataset(self.images, **kwargs)]

    def test_shapes_range_and_flips_keyed_by_seed_epoch_batch(self):
        full = self.batches()
        self.assertLen(full, 5)
        flipped = []
        for batch in full:
            self.assertEqual(batch.shape, (4, 8, 8, 3))
            self.assertEqual(batch.dtype, np.float32)
            self.assertAllInRange(batch, 0.0, 1.0)
            for image in batch:
                original = self.raw[int(round(image[0, 0, 0] * 255))].astype(np.float32) / 255.0
                is_flipped = not np.array_equal(image, original)
                if is_flipped:
                    self.assertAllEqual(image, original[:, ::-1])
                flipped.append(is_flipped)
        self.assertTrue(any(flipped) and not all(flipped))
        for a, b in zip(full, self.batches()):
            self.assertAllEqual(a, b)
        tail = self.batches(skip_batches=2)
        self.assertLen(tail, 3)
        for a, b in zip(full[2:], tail):
            self.assertAllEqual(a, b)
        no_flip = self.batches(flip=False)
        order = np.random.default_rng([5, 1]).permutation(21)[:20].reshape(5, 4)
        for batch, indices in zip(no_flip, order):
            self.assertAllEqual(batch, self.raw[indices].astype(np.float32) / 255.0)
        self.assertNotAllEqual(np.stack(full), np.stack(self.batches(epoch=2)))

    def test_evaluation_covers_every_image_once_unflipped(self):
        batches = self.batches(training=False, flip=True)
        self.assertEqual([len(b) for b in batches], [4, 4, 4, 4, 4, 1])
        self.assertAllEqual(np.concatenate(batches), self.raw.astype(np.float32) / 255.0)
        floats = self.raw[:5].astype(np.float32) / 255.0
        passed = [
            b.numpy() for b in data.make_dataset(floats, batch_size=5, binarization="none", seed=0, training=False)
        ]
        self.assertAllEqual(passed[0], floats)
        with self.assertRaisesRegex(ValueError, "binarization='none' takes uint8"):
            data.make_dataset(self.raw.astype(np.int32), batch_size=2, binarization="none", seed=0, training=True)


class GinSurfaceTest(testing_utils.GinTestCase):
    def test_build_dataset_bindings_reach_the_celeba_loader(self):
        folder = testing_utils.write_faces(os.path.join(self.get_temp_dir(), "faces"), 109, 89, range(1, 7), fmt="png")
        gin.parse_config(
            [
                "dataset.name = 'celeba'",
                f"dataset.local_path = '{folder}'",
                "dataset.resolution = 64",
                f"dataset.cache_dir = '{self.get_temp_dir()}/cache'",
                "dataset.validation_size = 1",
                "dataset.flip = False",
            ]
        )
        splits = builders.build_dataset(seed=2)
        self.assertEqual((splits.name, splits.image_shape, splits.flip), ("celeba", (64, 64, 3), False))
        self.assertEqual((len(splits.train), len(splits.validation), len(splits.test)), (4, 1, 1))
        self.assertIn("seed=2", splits.source)
