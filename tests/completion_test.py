"""Image completion (paper Sec. 4.3, Eq. 5): the loss, the in-graph Adam, the masks and the explore mode.

Oracles: the loss against NumPy by hand; the Adam loop against the closed-form ridge minimiser of a linear
generator gen(z) = A z (minimise ||m (x - A z)||^2 + gamma/2 ||z||^2  =>  (2 A^T M A + gamma I) z = 2 A^T M x);
the prior term's sign through its gradient gamma * z.
"""

import hashlib
import json
import os
import shutil
import tempfile

from absl import app
import gin
import numpy as np
import tensorflow as tf

from crvae_tf import builders
from crvae_tf import cli
from crvae_tf import data
from crvae_tf import explore
from crvae_tf import runs
from crvae_tf.data import masks
from crvae_tf.exploration import completion_lib
from crvae_tf.models import completion
from crvae_tf.training import loop

import testing_utils


def _softplus(x):
    return np.logaddexp(0.0, x)


def _linear_problem(batch=3, dim=5, height=4, width=4, channels=2, seed=0):
    """A fixed linear generator gen(z) = A z reshaped to images, targets x, a mask with a few observed pixels."""
    rng = np.random.default_rng(seed)
    pixels = height * width * channels
    a = rng.normal(size=(pixels, dim)).astype(np.float32) / np.sqrt(dim)
    x = rng.normal(size=(batch, height, width, channels)).astype(np.float32)
    mask = (rng.uniform(size=(batch, height, width, 1)) < 0.5).astype(np.float32)
    mask[:, 0, 0, 0] = 1.0  # never all-missing

    def generate(z):
        return tf.reshape(tf.matmul(z, a, transpose_b=True), [-1, height, width, channels])

    return a, x, mask, generate


def _graph_complete(generate):
    """`completion.complete` for `generate` in one traced function (steps, learning rate, gamma as tensors)."""

    @tf.function
    def run(x, mask, z0, num_steps, learning_rate, gamma):
        return completion.complete(generate, x, mask, z0, num_steps, learning_rate=learning_rate, gamma=gamma)

    def call(x, mask, z0, num_steps, learning_rate, gamma):
        return run(x, mask, z0, tf.constant(num_steps), tf.constant(learning_rate), tf.constant(gamma))

    return call


def _ridge(a, x, mask, gamma):
    """argmin_z ||m (x - A z)||^2 + gamma/2 ||z||^2 per example: (2 A^T M A + gamma I)^-1 2 A^T M x."""
    out = []
    for xb, mb in zip(x, mask):
        m = np.broadcast_to(mb, xb.shape).reshape(-1).astype(np.float64)
        lhs = 2.0 * a.T.astype(np.float64) @ (m[:, None] * a) + gamma * np.eye(a.shape[1])
        out.append(np.linalg.solve(lhs, 2.0 * a.T.astype(np.float64) @ (m * xb.reshape(-1))))
    return np.stack(out)


class CompletionLossTest(tf.test.TestCase):
    def _inputs(self):
        rng = np.random.default_rng(1)
        x = rng.uniform(size=(2, 3, 3, 3)).astype(np.float32)
        gen = rng.uniform(size=(2, 3, 3, 3)).astype(np.float32)
        mask = np.zeros((2, 3, 3, 1), np.float32)
        mask[0, :, :2] = 1.0  # example 0: two observed columns
        mask[1, 1, 1] = 1.0  # example 1: one observed pixel
        z = rng.normal(size=(2, 4)).astype(np.float32)
        return x, gen, mask, z

    def test_matches_hand_computed_value(self):
        x, gen, mask, z = self._inputs()
        gamma = 0.7
        expected = []
        for b in range(2):
            error = 0.0
            for i in range(3):
                for j in range(3):
                    for c in range(3):
                        error += (mask[b, i, j, 0] * (x[b, i, j, c] - gen[b, i, j, c])) ** 2
            expected.append(error + gamma * 0.5 * float(np.sum(z[b] ** 2)))
        got = completion.completion_loss(x, mask, gen, z, gamma)
        self.assertEqual(got.shape, (2,))
        self.assertAllClose(got, expected, rtol=1e-5)
        # A per-channel mask [B, H, W, C] equal to the broadcast one gives the same value.
        full = np.broadcast_to(mask, x.shape)
        self.assertAllClose(completion.completion_loss(x, full, gen, z, gamma), expected, rtol=1e-5)

    def test_adversarial_term_is_log_one_minus_d(self):
        x, gen, mask, z = self._inputs()
        logits = np.array([[2.0], [-30.0]], np.float32)
        base = completion.completion_loss(x, mask, gen, z, 0.3).numpy()
        got = completion.completion_loss(x, mask, gen, z, 0.3, tau=0.5, fake_logits=logits).numpy()
        d = 1.0 / (1.0 + np.exp(-logits[:, 0].astype(np.float64)))
        self.assertAllClose(got - base, 0.5 * np.log(1.0 - d), rtol=1e-5)
        # Stable where 1 - D rounds to 0 in float32: l = 100 gives log(1 - D) = -softplus(100) = -100.
        big = completion.completion_loss(x, mask, gen, z, 0.3, tau=1.0, fake_logits=[100.0, 100.0]).numpy()
        self.assertAllClose(big - base, [-100.0, -100.0], rtol=1e-5)
        self.assertAllClose(_softplus(100.0), 100.0)

    def test_tau_without_logits_is_an_error(self):
        x, gen, mask, z = self._inputs()
        with self.assertRaisesRegex(ValueError, "tau=0.5.*discriminator"):
            completion.completion_loss(x, mask, gen, z, 1.0, tau=0.5)
        _, _, _, generate = _linear_problem()
        with self.assertRaisesRegex(ValueError, "tau=0.5 needs discriminator_logits"):
            completion.complete(generate, np.zeros((1, 4, 4, 2)), np.ones((1, 4, 4, 1)), np.zeros((1, 5)), 1, tau=0.5)

    def test_prior_term_sign(self):
        """The prior term is +gamma/2 ||z||^2 (the NEGATIVE log-density), not Eq. 5's printed +gamma log N."""
        x, gen, mask, _ = self._inputs()
        small = np.full((2, 4), 0.1, np.float32)
        large = np.full((2, 4), 3.0, np.float32)
        gamma = 2.0
        self.assertAllGreater(
            completion.completion_loss(x, mask, gen, large, gamma)
            - completion.completion_loss(x, mask, gen, small, gamma),
            0.0,
        )
        z = tf.constant(np.random.default_rng(3).normal(size=(2, 4)), tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = tf.reduce_sum(completion.completion_loss(x, mask, gen, z, gamma))
        # The masked error does not depend on z here (gen is fixed), so the gradient is the prior's: +gamma z.
        self.assertAllClose(tape.gradient(loss, z), gamma * z.numpy(), rtol=1e-6)


class CompleteTest(tf.test.TestCase):
    def test_converges_to_the_ridge_minimiser(self):
        a, x, mask, generate = _linear_problem()
        gamma = 0.5
        out = _graph_complete(generate)(x, mask, np.zeros((3, 5), np.float32), 600, 0.05, gamma)
        expected = _ridge(a, x, mask, gamma)
        self.assertAllClose(out["z"], expected, atol=2e-3)
        best = completion.completion_loss(x, mask, generate(expected.astype(np.float32)), expected, gamma)
        self.assertAllClose(out["loss"], best, atol=1e-4)
        self.assertAllGreater(out["initial_loss"] - out["loss"], 0.0)

    def test_gamma_pulls_z_to_the_prior(self):
        """Larger gamma, smaller ||z*||: the prior term attracts z to 0 (the printed sign would repel it)."""
        _, x, mask, generate = _linear_problem()
        z0 = np.zeros((3, 5), np.float32)
        run = _graph_complete(generate)
        norms = [float(tf.norm(run(x, mask, z0, 300, 0.05, g)["z"])) for g in (0.01, 10.0)]
        self.assertGreater(norms[0], 2.0 * norms[1])

    def test_output_is_x_on_observed_pixels_and_gen_elsewhere(self):
        _, x, mask, generate = _linear_problem()
        out = completion.complete(generate, x, mask, np.ones((3, 5), np.float32), 3)
        observed = np.broadcast_to(mask, x.shape) > 0
        self.assertAllEqual(out["images"].numpy()[observed], x[observed])  # exact, not close
        self.assertAllClose(out["images"].numpy()[~observed], out["generated"].numpy()[~observed])
        self.assertAllClose(out["generated"], generate(out["z"]))

    def test_zero_steps_keeps_z_init(self):
        _, x, mask, generate = _linear_problem()
        z0 = np.random.default_rng(4).normal(size=(3, 5)).astype(np.float32)
        out = completion.complete(generate, x, mask, z0, 0)
        self.assertAllEqual(out["z"], z0)
        self.assertAllClose(out["loss"], out["initial_loss"])

    def test_examples_are_independent(self):
        """Each image's z follows the gradient of its own loss: example 0 alone ends where it ends in a batch."""
        _, x, mask, generate = _linear_problem()
        z0 = np.zeros((3, 5), np.float32)
        batch = completion.complete(generate, x, mask, z0, 20, learning_rate=0.05)
        alone = completion.complete(generate, x[:1], mask[:1], z0[:1], 20, learning_rate=0.05)
        self.assertAllClose(batch["z"][:1], alone["z"], atol=1e-6)

    def test_first_step_is_adams(self):
        """Adam's first bias-corrected step moves each coordinate by lr * sign(g) (|g| >> epsilon)."""
        _, x, mask, generate = _linear_problem()
        z0 = np.zeros((3, 5), np.float32)
        z = tf.constant(z0)
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = tf.reduce_sum(completion.completion_loss(x, mask, generate(z), z, 1.0))
        g = tape.gradient(loss, z).numpy()
        out = completion.complete(generate, x, mask, z0, 1, learning_rate=0.01, gamma=1.0)
        self.assertAllClose(out["z"], -0.01 * np.sign(g), atol=1e-6)

    def test_adversarial_term_reaches_z(self):
        """With a discriminator, Adam's first step follows the gradient of the full loss, tau term included."""
        _, x, mask, generate = _linear_problem()
        w = np.random.default_rng(5).normal(size=(32, 1)).astype(np.float32)

        def logits(images):
            return tf.matmul(tf.reshape(images, [-1, 32]), w)

        z0 = np.full((3, 5), 0.3, np.float32)

        def gradient(tau):
            z = tf.constant(z0)
            with tf.GradientTape() as tape:
                tape.watch(z)
                generated = generate(z)
                loss = tf.reduce_sum(completion.completion_loss(x, mask, generated, z, 1.0, tau, logits(generated)))
            return tape.gradient(loss, z).numpy()

        self.assertTrue(np.any(np.sign(gradient(50.0)) != np.sign(gradient(0.0))))  # the term matters here
        out = completion.complete(generate, x, mask, z0, 1, 0.01, 1.0, tau=50.0, discriminator_logits=logits)
        self.assertAllClose(out["z"], z0 - 0.01 * np.sign(gradient(50.0)), atol=1e-6)

    def test_traces_with_dynamic_steps_and_batch(self):
        a, x, mask, generate = _linear_problem()
        calls = []

        @tf.function(
            input_signature=[
                tf.TensorSpec([None, 4, 4, 2], tf.float32),
                tf.TensorSpec([None, 4, 4, 1], tf.float32),
                tf.TensorSpec([], tf.int32),
                tf.TensorSpec([], tf.int32),
            ]
        )
        def serve(images, mask, num_steps, seed):
            calls.append(1)
            z0 = completion.initial_latents(None, images, "prior", seed, latent_dim=5)
            return completion.complete(generate, images, mask, z0, num_steps, learning_rate=0.05, gamma=0.5)

        long = serve(x, mask, tf.constant(600), tf.constant(1))
        self.assertAllClose(long["z"], _ridge(a, x, mask, 0.5), atol=2e-3)
        short = serve(x[:2], mask[:2], tf.constant(0), tf.constant(1))
        self.assertEqual(short["z"].shape, (2, 5))
        expected_z0 = completion.initial_latents(None, x[:2], "prior", 1, latent_dim=5)
        self.assertAllEqual(short["z"], expected_z0)  # 0 steps: z_0 from the seed, unchanged
        self.assertLen(calls, 1)  # one trace serves both batch sizes and step counts


class InitialLatentsTest(tf.test.TestCase):
    def test_inits(self):
        loc = tf.constant([[1.0, -2.0], [0.5, 3.0]])
        log_variance = tf.constant([[0.0, np.log(4.0)], [-20.0, -20.0]], tf.float32)
        seen = []

        def encode(images):
            seen.append(images)
            return loc, log_variance

        images = tf.zeros((2, 2, 2, 1))
        self.assertAllEqual(completion.initial_latents(encode, images, "posterior_mean", 0), loc)
        sample = completion.initial_latents(encode, images, "posterior_sample", 7)
        eps = completion.initial_latents(encode, images, "prior", 7)
        self.assertAllClose(sample, loc + tf.exp(0.5 * log_variance) * eps)
        self.assertAllEqual(eps, completion.initial_latents(encode, images, "prior", 7))  # stateless
        self.assertNotAllClose(eps, completion.initial_latents(encode, images, "prior", 8))
        self.assertAllEqual(eps, completion.initial_latents(None, images, "prior", 7, latent_dim=2))
        with self.assertRaisesRegex(ValueError, "init='mean' is not one of"):
            completion.initial_latents(encode, images, "mean", 0)

    def test_occlude(self):
        x = np.ones((1, 2, 2, 3), np.float32)
        m = np.array([[[[1.0], [0.0]], [[0.0], [1.0]]]], np.float32)
        fill = np.full((2, 2, 3), 0.25, np.float32)
        out = completion.occlude(x, m, fill).numpy()
        self.assertAllEqual(out[0, 0, 0], [1, 1, 1])
        self.assertAllEqual(out[0, 0, 1], [0.25, 0.25, 0.25])


class MetricsTest(tf.test.TestCase):
    def test_masked_psnr_and_l1_and_paired_gain(self):
        images = np.zeros((2, 4, 4, 3))
        mask = np.ones((4, 4, 1))
        mask[:, 2:] = 0.0
        outputs = images.copy()
        outputs[0, :, 2:] = 0.1  # mse 0.01 -> 20 dB
        outputs[1, :, 2:] = 0.01  # mse 1e-4 -> 40 dB
        outputs[:, :, :2] = 0.5  # observed pixels do not count
        got = completion_lib.masked_metrics(outputs, images, mask)
        self.assertAllClose([got["psnr"], got["l1"], got["mse"]], [30.0, 0.055, 0.00505])
        self.assertAllClose(got["per_image_psnr"], [20.0, 40.0])
        self.assertAllClose(got["psnr_sem"], 10.0)  # std(ddof=1) of (20, 40) = 14.14, / sqrt(2)
        fill = completion_lib.masked_metrics(np.full_like(images, 0.1), images, mask)  # 20 dB each
        gains = completion_lib.paired_gains({"completion": got, "mean_face_fill": fill, "reconstruction_fill": got})
        self.assertAllClose([gains["mean_face_fill"]["psnr_db"], gains["mean_face_fill"]["psnr_db_sem"]], [10.0, 10.0])
        self.assertAllClose(
            [gains["reconstruction_fill"]["psnr_db"], gains["reconstruction_fill"]["psnr_db_sem"]], [0, 0]
        )


class MasksTest(tf.test.TestCase):
    def test_right_half_is_exactly_half(self):
        for resolution in (8, 64, 128):
            mask = masks.named_mask("right_half", resolution)
            self.assertEqual(mask.shape, (resolution, resolution, 1))
            self.assertEqual(mask.sum(), resolution * resolution / 2)
            self.assertAllEqual(mask[:, : resolution // 2], np.ones((resolution, resolution // 2, 1)))
            self.assertAllEqual(mask[:, resolution // 2 :], np.zeros((resolution, resolution // 2, 1)))

    def test_eyes_and_mouth_boxes(self):
        """One box each, inside the image, eyes above the mouth, both centred left-right; they scale with R."""
        boxes = {}
        for resolution in (64, 128):
            for name in ("eyes", "mouth"):
                mask = masks.named_mask(name, resolution)
                rows, cols = np.nonzero(mask[..., 0] == 0)
                top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
                self.assertEqual(len(rows), (bottom - top) * (right - left))  # one solid box
                self.assertTrue(0 < top and bottom < resolution and 0 < left and right < resolution)
                self.assertLess(abs((left + right) / 2 - resolution / 2), 0.06 * resolution)
                boxes[resolution, name] = np.array([top, left, bottom, right])
            self.assertLess(boxes[resolution, "eyes"][2], boxes[resolution, "mouth"][0] + 1)
        self.assertEqual(tuple(boxes[64, "eyes"]), (25, 15, 36, 49))  # the docstring's numbers
        self.assertEqual(tuple(boxes[64, "mouth"]), (42, 19, 55, 45))
        self.assertAllClose(boxes[128, "eyes"] / 128, boxes[64, "eyes"] / 64, atol=2 / 64)

    def test_landmark_file_parsing_and_per_image_boxes(self):
        path = os.path.join(self.get_temp_dir(), masks.LANDMARKS_FILE)
        with open(path, "w") as f:
            f.write("2\nlefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x ")
            f.write("rightmouth_y\n000001.jpg    69  111  108  111   88  136   72  152  105  152\n")
            f.write("000002.jpg    59  101  98  101   78  126   62  142  95  142\n")
        landmarks = masks.parse_landmarks(path)
        self.assertEqual(sorted(landmarks), ["000001.jpg", "000002.jpg"])
        self.assertAllEqual(landmarks["000002.jpg"][3], [62, 142])
        got = masks.landmark_masks(landmarks, ["000001.png", "000002.jpg"], "eyes", 64)
        self.assertEqual(got.shape, (2, 64, 64, 1))
        self.assertAllEqual(got[0], masks.named_mask("eyes", 64))  # the template's landmarks: the fixed box
        # Landmarks 10 px up and left in 178x218 move the continuous box by 10 * 64 / 148 = 4.32 px. Template
        # box (continuous): top 30.92 - 0.3 d, left 23.57 - 0.45 d with d = 39 * 64 / 148 = 16.86.
        rows, cols = np.nonzero(got[1, ..., 0] == 0)
        d, shift = 39 * 64 / 148, 10 * 64 / 148
        self.assertEqual((rows.min(), cols.min()), (int(30.92 - 0.3 * d - shift), int(23.57 - 0.45 * d - shift)))
        # The 89x109 copy: the same face at half resolution gives the same boxes (within the crop's rounding).
        half = masks.landmark_masks(landmarks, ["000001.jpg"], "mouth", 64, source_shape=(109, 89))
        self.assertLessEqual(np.abs(half[0] - masks.named_mask("mouth", 64)).sum(), 2 * 14)
        with self.assertRaisesRegex(masks.MaskError, r"1 of the 2 images have no landmarks .*e.g. '000003.jpg'\."):
            masks.landmark_masks(landmarks, ["000001.jpg", "000003.jpg"], "eyes", 64)
        with self.assertRaisesRegex(masks.MaskError, r"'celeb_a/test\[0\]'.*tensorflow-datasets .*dataset.local_path"):
            masks.landmark_masks(landmarks, ["celeb_a/test[0]"], "eyes", 64)
        # Datasets without CelebA files, and regions without a landmark box, are refused with what to use instead.
        images = np.zeros((2, 28, 28, 1), np.float32)
        mnist = data.ImageSplits("mnist", "dynamic", images, images, images, "x")
        with self.assertRaisesRegex(masks.MaskError, r"aligned CelebA.*'mnist' and its images come from no files"):
            masks.dataset_landmark_masks(mnist, landmarks, "eyes")
        names = {split: ["001.A/a.jpg", "001.A/b.jpg"] for split in data.SPLIT_NAMES}
        birds = data.ImageSplits("birds", "none", images, images, images, "x", names=names)
        with self.assertRaisesRegex(masks.MaskError, "'birds' and its images have no face landmarks"):
            masks.dataset_landmark_masks(birds, landmarks, "mouth")
        with self.assertRaisesRegex(masks.MaskError, "'eyes', 'mouth'] only, not 'right_half'"):
            masks.dataset_landmark_masks(birds, landmarks, "right_half")
        with self.assertRaisesRegex(ValueError, r"names\['train'\] must have one entry per image \(2\)"):
            data.ImageSplits("celeba", "none", images, images, images, "x", names=dict(names, train=["a"]))
        with open(path, "a") as f:
            f.write("000004.jpg 1 2 3\n")
        with self.assertRaisesRegex(masks.MaskError, r":5: expected .*ten numbers"):
            masks.parse_landmarks(path)

    def test_user_png_round_trip_and_errors(self):
        tmp = self.get_temp_dir()
        mask = masks.named_mask("mouth", 64)
        path = os.path.join(tmp, "mouth.png")
        testing_utils.write_image(path, np.repeat(mask * 255, 3, axis=-1).astype(np.uint8), "png")
        name, loaded = masks.mask_from_spec(path, 64)
        self.assertEqual(name, "file_mouth")
        self.assertAllEqual(loaded, mask)
        # Any square size: 128 -> 64 nearest; 64 -> 128 nearest doubles each pixel.
        self.assertAllEqual(masks.load_mask_png(path, 128), np.repeat(np.repeat(mask, 2, 0), 2, 1))
        for pixels, error in (
            (np.zeros((64, 48, 1), np.uint8), "is 48x64 .*must be square"),
            (np.zeros((64, 64, 1), np.uint8), "no observed pixel"),
            (np.full((64, 64, 1), 255, np.uint8), "no missing pixel"),
        ):
            testing_utils.write_image(path, pixels, "png")
            with self.assertRaisesRegex(masks.MaskError, error):
                masks.load_mask_png(path, 64)
        with open(path, "wb") as f:
            f.write(b"not an image")
        with self.assertRaisesRegex(masks.MaskError, "not a readable image"):
            masks.load_mask_png(path, 64)
        with self.assertRaisesRegex(FileNotFoundError, "does not exist"):
            masks.mask_from_spec(os.path.join(tmp, "missing.png"), 64)
        with self.assertRaisesRegex(masks.MaskError, "'nose' is not one of"):
            masks.mask_from_spec("nose", 64)


class CompleteModeTest(testing_utils.GinTestCase):
    """`python -m crvae_tf.explore --mode=complete` on a 1-step tiny crVAE-GAN run of generated faces, in-process."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.root = tempfile.mkdtemp()
        faces = testing_utils.write_faces(os.path.join(cls.root, "faces"), 109, 89, range(1, 33))
        cls.model_dir = os.path.join(cls.root, "crvaegan")
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "celeba64.gin")],
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("channel_recurrent")
            + testing_utils.TINY_ADVERSARIAL_BINDINGS
            + [
                "train.max_steps = 1",
                "train.num_validation_images = 2",
                f"dataset.local_path = '{faces}'",
                f"dataset.cache_dir = '{os.path.join(cls.root, 'cache')}'",
                "dataset.validation_size = 6",
                "train.image_every_steps = 1000",
            ],
        )
        loop.train(cls.model_dir)
        cls.tiny_run = runs.load_run(cls.model_dir)
        gin.clear_config()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.root, ignore_errors=True)
        super().tearDownClass()

    def _explore(self, *args):
        argv = ["explore", f"--model_dir={self.model_dir}", "--mode=complete", *args]
        return json.loads(testing_utils.run_main(explore.main, argv).strip().splitlines()[-1])

    def test_optimisation_lowers_the_masked_error(self):
        run = self.tiny_run
        images = np.asarray(run.splits.validation[:4], np.float32) / 255.0
        mask = np.broadcast_to(masks.named_mask("right_half", 64), (4, 64, 64, 1)).astype(np.float32)
        build = completion_lib.completion_function(run.model, (64, 64, 3), use_discriminator=False)
        out = build("posterior_mean")(
            images, mask, images.mean(axis=0), 10, 0.05, 0.0, 0.0, tf.constant([0, 0], tf.int64)
        )
        # gamma = 0: the loss is the observed-pixel error alone; it falls for every image.
        self.assertAllLess(out["loss"] - out["initial_loss"], 0.0)
        self.assertAllClose(out["loss"], np.sum((mask * (images - out["generated"].numpy())) ** 2, axis=(1, 2, 3)))
        observed = np.broadcast_to(mask, images.shape) > 0
        self.assertAllEqual(out["images"].numpy()[observed], images[observed])
        self.assertAllClose(
            out["reconstruction"], run.model.generate(run.model.encode(run.model.to_model_range(out["occluded"]))[0])
        )

    def test_binary_writes_grid_and_metrics(self):
        # The eye box drawn as a user mask image (at 32x32: resized to 64 nearest), with the adversarial term.
        mask_path = os.path.join(self.root, "my-eyes.png")
        eyes = np.repeat(masks.named_mask("eyes", 64)[::2, ::2], 3, axis=-1)
        testing_utils.write_image(mask_path, (eyes * 255).astype(np.uint8), "png")
        summary = self._explore(f"--mask={mask_path}", "--num_images=5", "--completion_steps=3", "--tau=0.01")
        png, path = (
            os.path.join(self.model_dir, "explore", f"complete-file_my-eyes-step1.{ext}") for ext in ("png", "json")
        )
        self.assertEqual((summary["png"], summary["json"], summary["step"]), (png, path, 1))
        grid = tf.io.decode_png(open(png, "rb").read()).numpy()
        self.assertEqual(grid.shape, (4 * 65 + 1, 5 * 65 + 1, 3))  # 4 rows (orig/occluded/recon/completed) x 5
        with open(path) as f:
            saved = json.load(f)
        self.assertEqual(saved, summary)
        self.assertEqual((saved["settings"]["tau"], saved["settings"]["num_steps"]), (0.01, 3))
        self.assertEqual((saved["num_images"], saved["split"], saved["family"]), (5, "validation", "VAEGAN"))
        self.assertAlmostEqual(saved["missing_fraction"], float(1 - masks.load_mask_png(mask_path, 64).mean()))
        for fill in ("completion", "mean_face_fill", "reconstruction_fill"):
            self.assertTrue(np.isfinite(saved["metrics"][fill]["psnr"]), msg=fill)
            self.assertGreater(saved["metrics"][fill]["l1"], 0.0)
            self.assertLen(saved["metrics"][fill]["per_image_psnr"], 5)
        self.assertEqual(saved["split_indices"], [0, 5])
        self.assertEqual(set(saved["completion_gain_over"]), {"mean_face_fill", "reconstruction_fill"})
        tb = os.path.join(self.model_dir, "tb", "explore")
        found = set()
        for event_file in os.listdir(tb):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(tb, event_file)):
                found.update(value.tag for value in event.summary.value)
        self.assertContainsSubset(
            {"explore/complete-file_my-eyes", "explore/complete-file_my-eyes/psnr_completion"}, found
        )
        # The grid's second row is the occluded image: the mean training face inside the box.
        face = completion_lib.mean_face(self.tiny_run.splits.train)
        tile = grid[66:130, 1:65].astype(np.float32) / 255.0
        self.assertAllClose(tile[30, 30], face[30, 30], atol=1 / 255)

        # Usage errors, before any run is loaded.
        with self.assertRaisesRegex(app.UsageError, "'nose' is not one of"):
            self._explore("--mask=nose")
        with self.assertRaisesRegex(FileNotFoundError, "mask file .*absent.png does not exist"):
            self._explore(f"--mask={self.root}/absent.png")
        with self.assertRaisesRegex(app.UsageError, "--gamma=-1.0 must be >= 0"):
            self._explore("--gamma=-1")
        with self.assertRaisesRegex(app.UsageError, "--num_images: only for --mode=complete"):
            argv = ["explore", f"--model_dir={self.model_dir}", "--mode=empirical_prior", "--num_images=3"]
            testing_utils.run_main(explore.main, argv)

    def _write_landmarks(self, ids, name="landmarks.txt"):
        """A list_landmarks_align_celeba.txt for faces `ids`: the template moved by a per-id shift (178x218 px)."""
        path = os.path.join(self.root, name)
        shifts = {i: (8 * (i % 4) - 12, 6 * (i % 3) - 6) for i in ids}
        with open(path, "w") as f:
            f.write(f"{len(shifts)}\n" + " ".join(f"{p}_{a}" for p in masks.LANDMARK_NAMES for a in "xy") + "\n")
            for i, (dx, dy) in shifts.items():
                points = masks.CELEBA_LANDMARK_TEMPLATE + [dx, dy]
                f.write(f"{i:06d}.jpg " + " ".join(str(int(v)) for v in points.reshape(-1)) + "\n")
        return path

    def test_binary_per_image_landmark_masks(self):
        path = self._write_landmarks(range(1, 33))
        summary = self._explore("--mask=eyes", f"--landmarks={path}", "--num_images=6", "--completion_steps=1")
        names = list(self.tiny_run.splits.names["validation"])
        source = summary["mask_source"]
        self.assertEqual((summary["mask_name"], source["kind"], source["path"]), ("eyes_landmarks", "landmarks", path))
        with open(path, "rb") as f:
            self.assertEqual(source["sha256"], hashlib.sha256(f.read()).hexdigest())
        self.assertEqual(source["images"], names)
        # Each face's box is the box of its own landmarks in the 89x109 images' face window.
        parsed = masks.parse_landmarks(path)
        expected = completion_lib.mask_boxes(masks.landmark_masks(parsed, names, "eyes", 64, source_shape=(109, 89)))
        self.assertEqual(source["boxes"], expected)
        self.assertGreater(len({tuple(box) for box in source["boxes"]}), 1)  # different landmarks, different boxes
        # The grid's occluded row: exactly each face's own box holds the mean face (blue = the mean tag, not its own).
        grid = tf.io.decode_png(open(summary["png"], "rb").read()).numpy().astype(np.float32)
        tags = [int(name[:6]) % 250 for name in names]
        mean_tag = completion_lib.mean_face(self.tiny_run.splits.train)[..., 2].mean() * 255.0
        checked = set()
        for column, (box, tag) in enumerate(zip(source["boxes"], tags)):
            if abs(tag - mean_tag) < 4:
                continue
            original, occluded = (
                grid[1 + row * 65 : 65 + row * 65, 1 + column * 65 : 65 + column * 65, 2] for row in (0, 1)
            )
            changed = np.abs(occluded - original) > 2.0
            rows, cols = np.nonzero(changed)
            self.assertEqual([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], box, msg=names[column])
            self.assertEqual(changed.sum(), (box[2] - box[0]) * (box[3] - box[1]))
            checked.add(tuple(box))
        self.assertGreater(len(checked), 1)

        # User errors: landmarks with a mask without a landmark box, a missing file, faces the file lacks.
        with self.assertRaisesRegex(app.UsageError, "--landmarks .*--mask=eyes or --mask=mouth only, not --mask=right"):
            self._explore("--mask=right_half", f"--landmarks={path}")
        with self.assertRaisesRegex(FileNotFoundError, "--landmarks=.*absent.txt: no such file"):
            self._explore("--mask=mouth", f"--landmarks={self.root}/absent.txt")
        with self.assertRaisesRegex(app.UsageError, "--landmarks: only for --mode=complete"):
            argv = ["explore", f"--model_dir={self.model_dir}", "--mode=empirical_prior", f"--landmarks={path}"]
            testing_utils.run_main(explore.main, argv)
        # A CelebA cache written before names were recorded: one data error naming the folder to delete (exit 4).
        manifest_path = self.tiny_run.splits.manifest_path
        with open(manifest_path) as f:
            saved = f.read()
        try:
            with open(manifest_path, "w") as f:
                json.dump({k: v for k, v in json.loads(saved).items() if k != "names"}, f)
            with self.assertRaises(data.DataUnavailableError) as caught:
                self._explore("--mask=eyes", f"--landmarks={path}", "--num_images=2")
        finally:
            with open(manifest_path, "w") as f:
                f.write(saved)
        message, code = cli.message_and_code(caught.exception)
        self.assertEqual(code, cli.EXIT_DATA)
        self.assertIn(f"Delete that folder (rm -r {os.path.dirname(manifest_path)})", message)
        partial = self._write_landmarks([i for i in range(1, 33) if f"{i:06d}.jpg" not in names[1:3]], "partial.txt")
        with self.assertRaisesRegex(
            masks.MaskError, rf"2 of the 6 images have no landmarks .*'{names[1]}', '{names[2]}'"
        ):
            masks.dataset_landmark_masks(self.tiny_run.splits, masks.parse_landmarks(partial), "mouth", count=6)

    def test_tau_needs_the_adversarial_family(self):
        gin.parse_config(
            ["encoder.base_channels = 4", "decoder.base_channels = 4", "latent_head.kind = 'conv'"]
            + testing_utils.tiny_head_bindings("conv")
        )
        vae = builders.build_model(seed=0)
        gin.clear_config()
        with self.assertRaisesRegex(completion_lib.CompletionSettingsError, "--tau=0.1 .*VAE run.*no discriminator"):
            completion_lib.check_family(vae, 0.1, "runs/x")
        self.assertFalse(completion_lib.check_family(vae, 0.0))
