"""The disentangling views (paper Sec. 4.4, Fig. 5, S2, S4, S5, Eq. S1): `crvae_tf.models.latent_steps`,
`crvae_tf.exploration.views` and `python -m crvae_tf.explore --mode=progressive|interpolate|style|manifold`.

Oracles: the heads' own code for where time step t sits in z (the crVAE's LSTMs are causal, so changing slice t
alone leaves the generation output of steps < t bit-identical and moves step t; the bcVAE's blocks are independent);
exact equalities for the bookkeeping of each view (which slices change, which stay fixed, shared draws, endpoints);
Eq. S1 written out with cos / sin for the manifold; the evaluation pipeline (`data.make_dataset(training=False)`) for
the validation images. End to end: a 2-step tiny crVAE run and the four modes of the binary, in-process.
"""

import json
import os
import types

from absl import app
import gin
import numpy as np
import tensorflow as tf

from crvae_tf import builders
from crvae_tf import data as data_lib
from crvae_tf import explore
from crvae_tf import models
from crvae_tf import runs
from crvae_tf.architectures import blocks
from crvae_tf.exploration import views
from crvae_tf.models import latent_steps
from crvae_tf.training import loop

import testing_utils

KINDS = ("fc", "conv", "block_fc", "channel_recurrent")
SLICES = latent_steps.step_slices([8, 2, 3], 4)  # D = 48, T = 4: 12 units (2 channels of 2 x 3) per step


def _changed(a, b):
    """Boolean mask of the entries that differ."""
    return np.asarray(a) != np.asarray(b)


def assert_only_step_differs(test, a, b, slices, t):
    """a and b `[..., D]` differ in every entry of slice t (1-based) and nowhere else."""
    start, stop = slices[t - 1]
    diff = _changed(a, b)
    test.assertFalse(diff[..., :start].any(), msg=f"slices before step {t} changed")
    test.assertFalse(diff[..., stop:].any(), msg=f"slices after step {t} changed")
    test.assertTrue(diff[..., start:stop].all(), msg=f"step {t} did not change everywhere")


def _fake_model(latent_dim, head_steps=None, latent_shape=None):
    head = None
    if head_steps is not None:
        head = types.SimpleNamespace(num_time_steps=head_steps, latent_shape=latent_shape or (latent_dim,))
    return types.SimpleNamespace(latent_dim=latent_dim, latent_head=head)


def _tiny_model(kind, extra=()):
    gin.clear_config()
    gin.parse_config(
        ["encoder.base_channels = 4", "decoder.base_channels = 4", f"latent_head.kind = '{kind}'"]
        + testing_utils.tiny_head_bindings(kind)
        + list(extra)
    )
    model = builders.build_model(seed=0)
    gin.clear_config()
    return model


def _fake_splits(num_validation=12, shape=(28, 28, 1), binarization="dynamic", seed=0):
    rng = np.random.default_rng(seed)
    images = lambda n: rng.uniform(0, 1, (n,) + shape).astype(np.float32)
    return data_lib.ImageSplits(
        name="mnist",
        binarization=binarization,
        train=images(4),
        validation=images(num_validation),
        test=images(4),
        source="test",
    )


def _tiny_vae_gan(seed=0):
    """A hand-made 16x16 RGB crVAE-GAN (T = 2, latent 4x4x4): pixels in [-1, 1] inside, tanh decoder."""
    parts = testing_utils.tiny_adversarial_parts(with_q=False, seed=seed)
    model = models.VAEGAN(*parts, image_shape=testing_utils.TINY_RGB_SHAPE, seed=seed)
    model.build()
    return model


class StepSlicesTest(testing_utils.GinTestCase):
    def test_slices_are_contiguous_blocks_of_whole_channels(self):
        self.assertEqual(latent_steps.step_slices([16], 8), [(2 * t, 2 * t + 2) for t in range(8)])
        self.assertEqual(SLICES, [(0, 12), (12, 24), (24, 36), (36, 48)])
        # For a conv latent [C, h, w], slice t of the flat z is channels [t C/T, (t+1) C/T) at every position,
        # both for the heads' NHWC view (flat_to_nhwc) and for their channel-block view (to_channel_blocks).
        z = np.zeros((1, 48), np.float32)
        for t, (start, stop) in enumerate(SLICES, 1):
            bumped = z.copy()
            bumped[0, start:stop] = 1.0
            nhwc = np.asarray(blocks.flat_to_nhwc(bumped, 8, 2, 3))
            self.assertTrue(np.all(nhwc[..., 2 * (t - 1) : 2 * t] == 1.0))
            self.assertEqual(nhwc.sum(), stop - start)
            channel_blocks = np.asarray(blocks.to_channel_blocks(nhwc, 4))  # [1, T, 12]
            self.assertTrue(np.all(channel_blocks[0, t - 1] == 1.0))
            self.assertEqual(channel_blocks.sum(), 12)

    def test_not_divisible_is_a_clear_error(self):
        with self.assertRaisesRegex(ValueError, r"latent_dim 10 .*not divisible by num_time_steps=4"):
            latent_steps.step_slices([10], 4)
        with self.assertRaisesRegex(ValueError, r"latent channel count 6 .*\[6, 4, 4\].*choose a T that divides 6"):
            latent_steps.step_slices([6, 4, 4], 4)

    def test_time_steps_of_heads_without_steps(self):
        self.assertEqual(latent_steps.time_steps(_fake_model(1024, 8, (64, 4, 4))), 8)  # crVAE / bcVAE: own T
        self.assertEqual(latent_steps.time_steps(_fake_model(48, 4, (8, 2, 3))), 4)
        self.assertEqual(latent_steps.time_steps(_fake_model(1024, 1)), latent_steps.DEFAULT_NUM_TIME_STEPS)
        with self.assertLogs(level="WARNING") as logs:
            self.assertEqual(latent_steps.time_steps(_fake_model(60, 1, (12, 5, 1))), 6)  # 12 channels: 6 <= 8
        self.assertIn("12 channels are not divisible by 8", "\n".join(logs.output))
        self.assertEqual(latent_steps.time_steps(_fake_model(20, 1)), 5)
        no_head = types.SimpleNamespace(latent_dim=7)
        self.assertEqual(latent_steps.time_steps(no_head), 7)
        self.assertEqual(latent_steps.model_step_slices(no_head), [(t, t + 1) for t in range(7)])
        with self.assertRaisesRegex(ValueError, "latent head has T=8 time steps"):
            latent_steps.model_step_slices(_fake_model(1024, 8, (64, 4, 4)), 4)


class ConstructionsTest(testing_utils.GinTestCase):
    def test_progressive_adds_one_step_per_column(self):
        latents = latent_steps.progressive_latents(3, SLICES, seed=1)
        self.assertEqual((latents.shape, latents.dtype), ((3, 5, 48), np.float32))
        np.testing.assert_array_equal(latents[:, 0], 0.0)
        for t in range(1, 5):
            assert_only_step_differs(self, latents[:, t], latents[:, t - 1], SLICES, t)
            np.testing.assert_array_equal(latents[:, t, : SLICES[t - 1][1]], latents[:, -1, : SLICES[t - 1][1]])
        np.testing.assert_array_equal(latents, latent_steps.progressive_latents(3, SLICES, seed=1))
        self.assertFalse(np.array_equal(latents, latent_steps.progressive_latents(3, SLICES, seed=2)))

    def test_interpolation_moves_one_step_to_a_shared_target(self):
        base = latent_steps.prior_latents(3, 48, seed=0)
        latents = latent_steps.interpolation_latents(base, SLICES, time_step=2, num_points=5, seed=4)
        target = latent_steps.interpolation_target(SLICES, 2, seed=4)
        self.assertEqual(latents.shape, (3, 5, 48))
        np.testing.assert_array_equal(latents[:, 0], base)  # the start is the sample itself
        np.testing.assert_array_equal(latents[:, -1, 12:24], np.broadcast_to(target, (3, 12)))  # one z~_t, all rows
        for p in range(1, 5):
            assert_only_step_differs(self, latents[:, p], base, SLICES, 2)
            alpha = p / 4
            self.assertAllClose(latents[:, p, 12:24], (1 - alpha) * base[:, 12:24] + alpha * target, atol=1e-6)
        given = latent_steps.interpolation_latents(base, SLICES, 2, 5, seed=99, target=target)
        np.testing.assert_array_equal(given, latents)  # `target` overrides the seed's z~_t
        every = latent_steps.interpolation_latents_every_step(base, SLICES, 5, seed=4)
        self.assertEqual(every.shape, (3, 4, 5, 48))
        np.testing.assert_array_equal(every[:, 1], latents)
        self.assertFalse(np.array_equal(every[:, 0, -1, :12], every[:, 1, -1, 12:24]))  # each t its own z~_t

    def test_style_redraws_only_one_step(self):
        base = latent_steps.prior_latents(2, 48, seed=0)
        latents = latent_steps.style_latents(base, SLICES, time_step=3, num_samples=6, seed=2)
        self.assertEqual(latents.shape, (2, 6, 48))
        for s in range(6):
            assert_only_step_differs(self, latents[:, s], base, SLICES, 3)
        np.testing.assert_array_equal(latents[0, :, 24:36], latents[1, :, 24:36])  # draw s shared by the rows
        np.testing.assert_array_equal(latents[0, :, 24:36], latent_steps.style_draws(SLICES, 3, 6, seed=2))
        self.assertEqual(len(np.unique(latents[0, :, 24])), 6)  # six different draws
        every = latent_steps.style_latents_every_step(base, SLICES, 6, seed=2)
        self.assertEqual(every.shape, (2, 4, 6, 48))
        np.testing.assert_array_equal(every[:, 2], latents)

    def test_manifold_is_equation_s1(self):
        corners = latent_steps.prior_latents(4, 48, seed=3)
        grid = latent_steps.manifold_latents(corners, 5, 4)
        self.assertEqual(grid.shape, (5, 4, 48))
        for (i, j), k in {(0, 0): 0, (0, 3): 1, (4, 0): 2, (4, 3): 3}.items():
            np.testing.assert_array_equal(grid[i, j], corners[k])
        z1, z2, z3, z4 = corners.astype(np.float64)
        for i in range(5):
            for j in range(4):
                phi, psi = np.pi / 2 * i / 4, np.pi / 2 * j / 3
                expected = np.cos(phi) * (np.cos(psi) * z1 + np.sin(psi) * z2) + np.sin(phi) * (
                    np.cos(psi) * z3 + np.sin(psi) * z4
                )
                self.assertAllClose(grid[i, j], expected, atol=1e-6)
        linear = latent_steps.manifold_latents(corners, 3, 3, weights="linear")
        self.assertAllClose(linear[1, 1], corners.mean(axis=0), atol=1e-6)
        self.assertAllClose(linear[0, 1], (corners[0] + corners[1]) / 2, atol=1e-6)

    def test_bad_arguments_are_clear_errors(self):
        base = np.zeros((2, 48), np.float32)
        with self.assertRaisesRegex(ValueError, r"time_step=5 must be an int in 1..4"):
            latent_steps.style_latents(base, SLICES, 5, 2, seed=0)
        with self.assertRaisesRegex(ValueError, r"time_step=0 must be an int in 1..4"):
            latent_steps.interpolation_latents(base, SLICES, 0, 2, seed=0)
        with self.assertRaisesRegex(ValueError, "num_points=1 must be an int >= 2"):
            latent_steps.interpolation_latents(base, SLICES, 1, 1, seed=0)
        with self.assertRaisesRegex(ValueError, r"base must be \[num, 48\]"):
            latent_steps.style_latents(np.zeros((2, 47)), SLICES, 1, 2, seed=0)
        with self.assertRaisesRegex(ValueError, "seed=-1 must be a non-negative int"):
            latent_steps.progressive_latents(2, SLICES, seed=-1)
        with self.assertRaisesRegex(ValueError, "not time-step slices: pass step_slices"):
            latent_steps.style_latents(base, [(0, 12), (12, 48)], 1, 2, seed=0)
        with self.assertRaisesRegex(ValueError, r"corners must be \[4, latent_dim\]"):
            latent_steps.manifold_latents(np.zeros((3, 48)), 3, 3)


class HeadsTest(testing_utils.GinTestCase):
    """Slice t of z is time step t of each head's own code; the views' bookkeeping on every head kind."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.models = {kind: _tiny_model(kind) for kind in KINDS}

    def test_time_steps_and_slices_per_head(self):
        expected = {"fc": (8, 2), "conv": (8, 16), "block_fc": (8, 16), "channel_recurrent": (8, 16)}
        for kind, (steps, size) in expected.items():
            slices = latent_steps.model_step_slices(self.models[kind])
            self.assertEqual(len(slices), steps, msg=kind)
            self.assertEqual({stop - start for start, stop in slices}, {size}, msg=kind)
        conv_t1 = _tiny_model("conv", ["latent_head.num_time_steps = 1"])  # no time steps: 8 channel slices
        self.assertEqual(conv_t1.latent_head.num_time_steps, 1)
        self.assertEqual(latent_steps.model_step_slices(conv_t1), latent_steps.model_step_slices(self.models["conv"]))

    def test_crvae_slice_t_is_lstm_step_t(self):
        head = self.models["channel_recurrent"].latent_head
        slices = latent_steps.model_step_slices(self.models["channel_recurrent"])
        z = latent_steps.prior_latents(2, head.latent_dim, seed=0)
        u = np.asarray(head.transform(z))
        for t in (1, 4, 8):
            start, stop = slices[t - 1]
            bumped = z.copy()
            bumped[:, start:stop] += 1.0
            moved = _changed(np.asarray(head.transform(bumped)), u)
            self.assertFalse(moved[:, :start].any(), msg=f"generation steps before {t} moved")
            self.assertTrue(moved[:, start:stop].any(axis=1).all(), msg=f"generation step {t} did not move")
        # Inference: encoder-feature channel block t feeds LSTM step t, whose log-variance is slice t.
        features = np.random.default_rng(1).normal(size=(2,) + head.feature_shape).astype(np.float32)
        _, log_variance = (np.asarray(x) for x in head.infer(features))
        per_block = head.feature_shape[-1] // head.num_time_steps
        for t in (2, 7):
            start, stop = slices[t - 1]
            bumped = features.copy()
            bumped[..., (t - 1) * per_block : t * per_block] += 1.0
            moved = _changed(np.asarray(head.infer(bumped)[1]), log_variance)
            self.assertFalse(moved[:, :start].any(), msg=f"log-variance before step {t} moved")
            self.assertTrue(moved[:, start:stop].any(axis=1).all(), msg=f"log-variance of step {t} did not move")

    def test_bcvae_slice_t_is_block_t(self):
        head = self.models["block_fc"].latent_head
        slices = latent_steps.model_step_slices(self.models["block_fc"])
        z = latent_steps.prior_latents(2, head.latent_dim, seed=0)
        out = np.asarray(head.generate(z))  # [B, H, W, C_feat]
        per_block = head.feature_shape[-1] // head.num_time_steps
        for t in (1, 5):
            start, stop = slices[t - 1]
            bumped = z.copy()
            bumped[:, start:stop] += 1.0
            moved = _changed(np.asarray(head.generate(bumped)), out)
            block = slice((t - 1) * per_block, t * per_block)
            self.assertTrue(moved[..., block].any())
            moved[..., block] = False
            self.assertFalse(moved.any(), msg=f"generation outside feature block {t} moved")

    def _check_view(self, model, run, slices):
        steps = len(slices)
        progressive, _ = views.view_latents(run, "progressive", num_samples=2, seed=1)
        self.assertEqual(progressive.shape, (2, steps + 1, model.latent_dim))
        np.testing.assert_array_equal(progressive[:, 0], 0.0)
        for t in range(1, steps + 1):
            assert_only_step_differs(self, progressive[:, t], progressive[:, t - 1], slices, t)

        for source in views.SOURCES:
            grid, details = views.view_latents(
                run, "interpolate", time_step=2, num_samples=3, num_points=4, source=source
            )
            self.assertEqual(grid.shape, (3, 4, model.latent_dim))
            for p in range(1, 4):
                assert_only_step_differs(self, grid[:, p], grid[:, 0], slices, 2)
            np.testing.assert_array_equal(grid[0, -1, slice(*slices[1])], grid[2, -1, slice(*slices[1])])
            if source == "posterior":
                self.assertEqual(details["image_indices"], [0, 1, 2])
                loc, _ = views.posterior(model, views.evaluation_images(run.splits, [0, 1, 2], run.seed))
                np.testing.assert_array_equal(grid[:, 0], loc)

        every, details = views.view_latents(run, "style", num_samples=2, num_points=3)
        self.assertEqual((every.shape, details["time_step"]), ((2 * steps, 4, model.latent_dim), "all"))
        for row in range(2 * steps):
            sample, t = divmod(row, steps)
            np.testing.assert_array_equal(every[row, 0], every[sample * steps, 0])  # column 0: the sample itself
            for s in range(1, 4):
                assert_only_step_differs(self, every[row, s], every[row, 0], slices, t + 1)

        manifold, details = views.view_latents(run, "manifold", num_points=3, seed=5, image_indices=[4, 0, 3, 2])
        images = views.evaluation_images(run.splits, [4, 0, 3, 2], run.seed)
        corners = views.posterior_samples(model, images, seed=5)
        for (i, j), k in {(0, 0): 0, (0, 2): 1, (2, 0): 2, (2, 2): 3}.items():
            np.testing.assert_array_equal(manifold[i, j], corners[k])
        self.assertAllClose(manifold, latent_steps.manifold_latents(corners, 3, 3))
        self.assertFalse(np.array_equal(corners[0], views.posterior(model, images)[0][0]))  # a sample, not the mean

    def test_views_bookkeeping_on_every_head(self):
        splits = _fake_splits()
        for kind in KINDS:
            with self.subTest(kind=kind):
                model = self.models[kind]
                run = runs.Run(model, step=0, checkpoint_path=None, seed=3, splits=splits)
                self._check_view(model, run, latent_steps.model_step_slices(model))
                _, details = views.view_latents(run, "progressive", num_samples=1)
                steps = kind in ("block_fc", "channel_recurrent")
                self.assertEqual(details["time_steps_are"], "the head's time steps" if steps else "channel slices")

    def test_adversarial_family_renders_every_view_in_model_range(self):
        model = _tiny_vae_gan()
        self.assertEqual(model.input_range, (-1.0, 1.0))
        splits = _fake_splits(num_validation=5, shape=(16, 16, 3), binarization="none")
        run = runs.Run(model, step=7, checkpoint_path="ckpt-7", seed=0, splits=splits)
        images = views.evaluation_images(splits, [0, 1], run.seed)
        loc, _ = views.posterior(model, images)
        np.testing.assert_array_equal(loc, np.asarray(model.encode(images * 2.0 - 1.0)[0]))  # [0, 1] -> [-1, 1]
        self._check_view(model, run, [(0, 32), (32, 64)])
        model_dir = self.get_temp_dir()
        for mode, options, (rows, cols) in (
            ("progressive", {"num_samples": 2}, (2, 3)),
            ("interpolate", {"time_step": 1, "num_samples": 2, "num_points": 3, "source": "posterior"}, (2, 3)),
            ("style", {"num_samples": 1, "num_points": 2}, (2, 3)),
            ("manifold", {"num_points": 2}, (2, 2)),
        ):
            summary = views.render_view(run, model_dir, mode, **options)
            self.assertEqual((summary["rows"], summary["columns"], summary["family"]), (rows, cols, "VAEGAN"))
            grid = tf.io.decode_png(open(summary["png"], "rb").read()).numpy()
            self.assertEqual(grid.shape, views.image_grid_size(rows, cols, 16, 16) + (3,))
            json.dumps(summary)

    def test_argument_errors_name_the_flag(self):
        run = runs.Run(self.models["conv"], step=0, checkpoint_path=None, seed=0, splits=_fake_splits(num_validation=3))
        cases = (
            ("interpolate", {"time_step": 9}, r"--time_step=9 is out of range: .*T=8"),
            ("interpolate", {"num_points": 1, "time_step": 1}, "--num_points=1 must be an integer >= 2"),
            ("manifold", {}, "needs 4 validation images; .* has 3"),
            ("manifold", {"image_indices": [0, 1, 2, 5]}, r"--image_indices \[5\] are out of range"),
            ("style", {"image_indices": [0]}, "--image_indices needs --source=posterior"),
            ("progressive", {"time_step": 2}, "--time_step does not apply to --mode=progressive"),
            ("style", {"num_samples": 600, "num_points": 8}, "more than 4096"),
        )
        for mode, options, message in cases:
            with self.subTest(mode=mode, options=options):
                with self.assertRaisesRegex(views.ViewArgumentError, message):
                    views.view_latents(run, mode, **options)

    def test_evaluation_images_are_the_evaluation_pipelines(self):
        splits = _fake_splits(num_validation=300)
        indices = [290, 3, 257, 3]
        pipeline = np.concatenate(
            list(
                data_lib.make_dataset(
                    splits.validation, batch_size=views.IMAGE_BATCH_SIZE, binarization="dynamic", seed=4, training=False
                )
            )
        )
        np.testing.assert_array_equal(views.evaluation_images(splits, indices, seed=4), pipeline[indices])
        self.assertTrue(set(np.unique(pipeline)) <= {0.0, 1.0})


class ExploreBinaryTest(testing_utils.GinTestCase):
    """The four view modes of `python -m crvae_tf.explore` on a 2-step tiny cVAE run, in-process (a cVAE: its
    training traces in half the time of a crVAE's; the crVAE's slices are checked in `HeadsTest`, and time step t of
    the cVAE is channel slice t, the path the baselines take)."""

    def _explore(self, *args):
        return json.loads(testing_utils.run_main(explore.main, ["explore", *args]).strip().splitlines()[-1])

    def test_every_view_mode_on_a_trained_run(self):
        tmp = self.get_temp_dir()
        mnist = testing_utils.write_fake_mnist(os.path.join(tmp, "mnist.npz"), num_train=100, num_test=20)
        model_dir = os.path.join(tmp, "cvae")
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "mnist_cvae.gin")],
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("conv")
            + ["train.max_steps = 2", f"dataset.local_path = '{mnist}'", "dataset.validation_size = 16"]
            + ["train.image_every_steps = 100", "train.num_validation_images = 8"],
            finalize=False,
        )
        loop.train(model_dir)
        gin.clear_config()
        tile = 29  # 28 x 28 images, 1 px padding
        expected = {
            "progressive": ([], 3, 9, "progressive-seed0-step2"),
            "interpolate": (
                ["--time_step=3", "--num_points=5", "--source=posterior"],
                3,
                5,
                "interpolate-posterior-t3-seed0-step2",
            ),
            "style": (["--num_points=2"], 2 * 8, 3, "style-prior-all-seed0-step2"),
            "manifold": (["--num_points=4", "--image_indices=1,2,3,4"], 4, 4, "manifold-seed0-step2"),
        }
        for mode, (args, rows, cols, stem) in expected.items():
            num = [] if mode in ("style", "manifold") else ["--num_samples=3"]
            summary = self._explore(f"--model_dir={model_dir}", f"--mode={mode}", *num, *args)
            png = os.path.join(model_dir, "explore", f"{stem}.png")
            self.assertEqual((summary["mode"], summary["step"], summary["png"]), (mode, 2, png))
            self.assertEqual((summary["rows"], summary["columns"]), (rows, cols))
            self.assertEqual((summary["num_time_steps"], summary["time_steps_are"]), (8, "channel slices"))
            self.assertEqual(summary["step_slices"][2], [32, 48])
            grid = tf.io.decode_png(open(png, "rb").read()).numpy()
            self.assertEqual(grid.shape, (rows * tile + 1, cols * tile + 1, 1), msg=mode)
        self.assertEqual(summary["image_indices"], [1, 2, 3, 4])
        inputs = tf.io.decode_png(open(summary["inputs_png"], "rb").read()).numpy()
        self.assertEqual(inputs.shape, (tile + 1, 4 * tile + 1, 1))
        events = os.listdir(os.path.join(model_dir, "tb", "explore"))
        self.assertTrue(events and all(name.startswith("events.out.tfevents") for name in events))
        with self.assertRaisesRegex(app.UsageError, r"--time_step=9 is out of range.*T=8 channel slices"):
            self._explore(f"--model_dir={model_dir}", "--mode=style", "--time_step=9")
        with self.assertRaisesRegex(app.UsageError, r"--source.*only for the views"):
            self._explore(f"--model_dir={model_dir}", "--mode=empirical_prior", "--source=posterior")
