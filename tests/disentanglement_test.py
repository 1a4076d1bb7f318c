"""Per-time-step disentanglement (issue #14 B1): `crvae_tf.evaluation.disentanglement` (group MIG / SAP / DCI from
held-out linear probes), `crvae_tf.evaluation.disentanglement_lib` and `python -m crvae_tf.explore --mode=disentangle`.

Oracles: hand-built codes whose answer is known (time step 3 is exactly factor 1, time step 1 a noisy copy of
factor 0 whose R^2 is known in closed form and from NumPy least squares, time step 4 the angle, time step 2 noise);
the same code under an orthogonal mixing of all dimensions (the same linear information, entangled); group
reordering; the sprites renderer for the shapes' rotational symmetries; Eastwood & Williams' and Chen et al.'s
formulas written out with NumPy logs. End to end: a 2-step tiny VAE on the sprites (gin/quickstart_vae.gin) and the
binary, in-process.
"""

import json
import os

from absl import app
import gin
import numpy as np
import tensorflow as tf

from crvae_tf import cli
from crvae_tf import explore
from crvae_tf import runs
from crvae_tf.data import SPRITE_SHAPES
from crvae_tf.data import render_sprites
from crvae_tf.evaluation import disentanglement
from crvae_tf.evaluation import disentanglement_lib
from crvae_tf.training import loop

import testing_utils

KINDS = ["continuous", "discrete", "angle"]
NAMES = ["size", "kind", "angle"]
NOISE = 0.5  # std of the noise added to time step 1's copy of factor 0 (std 1)
STEPS, DIMS = 4, 3  # T = 4 time steps of 3 dimensions


def _factors(num, rng):
    return np.stack([rng.standard_normal(num), rng.integers(0, 3, num), rng.uniform(-np.pi, np.pi, num)], axis=1)


def _known_code(factors, rng):
    """`[N, T=4, 3]`: step 1 = factor 0 + noise (one dim), step 2 = noise, step 3 = factor 1 exactly (one-hot), step
    4 = (cos, sin) of factor 2; the other dims are small independent noise."""
    code = 0.05 * rng.standard_normal((len(factors), STEPS, DIMS))
    code[:, 0, 0] = factors[:, 0] + NOISE * rng.standard_normal(len(factors))
    code[:, 1] = rng.standard_normal((len(factors), DIMS))
    code[:, 2] = np.eye(3)[factors[:, 1].astype(int)]
    code[:, 3, 0], code[:, 3, 1] = np.cos(factors[:, 2]), np.sin(factors[:, 2])
    return code


class KnownCodeTest(tf.test.TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        rng = np.random.default_rng(0)
        cls.f_train, cls.f_test = _factors(600, rng), _factors(300, rng)
        cls.z_train, cls.z_test = _known_code(cls.f_train, rng), _known_code(cls.f_test, rng)
        cls.result = disentanglement.evaluate_groups(
            cls.z_train, cls.f_train, cls.z_test, cls.f_test, KINDS, factor_names=NAMES
        )

    def test_each_factor_is_found_at_its_time_step(self):
        result = self.result
        self.assertEqual(result["dominant_time_step"]["explained"], {"size": 1, "kind": 3, "angle": 4})
        self.assertEqual(result["dominant_time_step"]["importance"], {"size": 1, "kind": 3, "angle": 4})
        explained = np.asarray(result["matrices"]["explained"])
        self.assertGreater(explained[2, 1], 0.95)  # step 3 is exactly factor 1
        self.assertGreater(explained[3, 2], 0.95)
        off_diagonal = explained.copy()
        off_diagonal[[0, 2, 3], [0, 1, 2]] = 0.0
        self.assertLess(off_diagonal.max(), 0.05)
        # Step 1 is factor 0 plus noise: R^2 = 1 / (1 + NOISE^2) = 0.8 in closed form; NumPy least squares on the
        # raw step-1 codes (no whitening, no penalty) gives the held-out value of this sample.
        design = lambda z: np.concatenate([z[:, 0], np.ones((len(z), 1))], axis=1)  # noqa: E731
        weights = np.linalg.lstsq(design(self.z_train), self.f_train[:, 0], rcond=None)[0]
        residual = self.f_test[:, 0] - design(self.z_test) @ weights
        oracle = 1.0 - np.sum(residual**2) / np.sum((self.f_test[:, 0] - self.f_test[:, 0].mean()) ** 2)
        self.assertAllClose(explained[0, 0], oracle, atol=0.01)
        self.assertAllClose(explained[0, 0], 1.0 / (1.0 + NOISE**2), atol=0.06)
        metrics = result["metrics"]
        self.assertGreater(metrics["dci_disentanglement"], 0.9)
        self.assertGreater(metrics["dci_completeness"], 0.9)
        self.assertGreater(metrics["sap"], 0.7)
        self.assertGreater(metrics["mig"], 0.4)
        self.assertGreater(metrics["per_factor"]["mig"][1], 0.9)  # the exact copy: I(z_3; v_1) = H(v_1)
        # The information of a discrete factor is bounded by its entropy.
        information = np.asarray(result["matrices"]["information"])
        self.assertTrue(np.all(information <= np.asarray(result["entropy"])[None] + 1e-9))
        self.assertAllClose(result["entropy"][1], np.log(3.0), atol=0.02)

    def test_an_entangled_code_scores_lower(self):
        # An orthogonal mixing of all 12 dimensions keeps the linear information (the probe on all of z) and spreads
        # every factor over every time step.
        mixing = np.linalg.qr(np.random.default_rng(1).standard_normal((STEPS * DIMS, STEPS * DIMS)))[0]
        mixed = [(z.reshape(len(z), -1) @ mixing).reshape(z.shape) for z in (self.z_train, self.z_test)]
        entangled = disentanglement.evaluate_groups(mixed[0], self.f_train, mixed[1], self.f_test, KINDS)
        before, after = self.result["metrics"], entangled["metrics"]
        for key in ("mig", "sap", "dci_disentanglement", "dci_completeness"):
            self.assertLess(after[key], before[key] - 0.3, msg=key)
        self.assertAllClose(after["dci_informativeness"], before["dci_informativeness"], atol=0.03)

    def test_reordering_the_groups_reorders_the_rows(self):
        order = [2, 0, 3, 1]
        flat = lambda z: z[:, order].reshape(len(z), -1)  # noqa: E731
        slices = [(DIMS * t, DIMS * (t + 1)) for t in range(STEPS)]
        reordered = disentanglement.evaluate_groups(
            flat(self.z_train), self.f_train, flat(self.z_test), self.f_test, KINDS, slices, factor_names=NAMES
        )
        for key, matrix in self.result["matrices"].items():
            self.assertAllClose(np.asarray(reordered["matrices"][key]), np.asarray(matrix)[order], atol=1e-6, msg=key)
        for key in ("mig", "sap", "dci_disentanglement", "dci_completeness", "dci_informativeness"):
            self.assertAllClose(reordered["metrics"][key], self.result["metrics"][key], atol=1e-6, msg=key)
        self.assertEqual(reordered["dominant_time_step"]["explained"], {"size": 2, "kind": 1, "angle": 3})


class _IdentityModel:
    """A duck-typed model whose image is its latent: generate(z) = z as a 1 x D image, encode(x) = (x, 0)."""

    input_range = (0.0, 1.0)

    def generate(self, z):
        return tf.reshape(z, [-1, 1, z.shape[1], 1])

    def encode(self, images, training=False):
        flat = tf.reshape(images, [tf.shape(images)[0], -1])
        return flat, tf.zeros_like(flat)


class InterventionTest(tf.test.TestCase):
    def test_redrawing_a_time_step_moves_its_factor_only(self):
        rng = np.random.default_rng(3)
        f_train, f_test = _factors(600, rng), _factors(200, rng)
        z_train, z_test = (_known_code(f, rng).reshape(len(f), -1) for f in (f_train, f_test))
        slices = [(DIMS * t, DIMS * (t + 1)) for t in range(STEPS)]
        probes = disentanglement.FactorProbes(z_train, f_train, KINDS, slices)
        predicted = probes.predict(z_test)
        self.assertEqual(np.mean(predicted[:, 1] == f_test[:, 1]), 1.0)  # step 3 is the class exactly
        self.assertLess(np.mean(np.abs(np.angle(np.exp(1j * (predicted[:, 2] - f_test[:, 2]))))), 0.1)
        scales = f_test.std(axis=0)
        matrix = disentanglement_lib.intervention_matrix(
            _IdentityModel(), z_test, slices, probes, KINDS, scales, "mean", seed=0
        )
        self.assertEqual(disentanglement.dominant_groups(matrix), [1, 3, 4])
        self.assertGreater(min(matrix[0, 0], matrix[2, 1], matrix[3, 2]), 0.3)
        self.assertLess(matrix[1].max(), 0.05)  # step 2 is noise that no probe reads
        # The effects: the total-variation distance of class distributions, a continuous change in units of the
        # scale, an angle's wrapped change over pi.
        effects = disentanglement.intervention_effects(
            [[[1.0, 0.0], [0.5, 0.5]], [1.0, 2.0], [3.0, -3.0]],
            [[[0.0, 1.0], [0.4, 0.6]], [2.0, 2.0], [-3.0, 3.0]],
            ["discrete", "continuous", "angle"],
            [1.0, 2.0, 1.0],
        )
        self.assertAllClose(effects, [(1.0 + 0.1) / 2, 0.25, (2 * np.pi - 6.0) / np.pi])


class FormulaTest(tf.test.TestCase):
    def test_dci_mig_and_sap_formulas(self):
        self.assertAllClose([disentanglement.dci(np.eye(3))[k] for k in ("disentanglement", "completeness")], [1, 1])
        uniform = disentanglement.dci(np.ones((4, 3)))
        self.assertAllClose([uniform["disentanglement"], uniform["completeness"]], [0.0, 0.0], atol=1e-12)
        importance = np.array([[0.6, 0.2], [0.1, 0.0], [0.0, 0.3]])
        p_rows = importance / importance.sum(1, keepdims=True)
        d_rows = [1 + sum(p * np.log(p) for p in row if p > 0) / np.log(2) for row in p_rows]
        p_cols = importance / importance.sum(0, keepdims=True)
        c_cols = [1 + sum(p * np.log(p) for p in col if p > 0) / np.log(3) for col in p_cols.T]
        values = disentanglement.dci(importance)
        self.assertAllClose(values["disentanglement"], np.dot(importance.sum(1) / importance.sum(), d_rows))
        self.assertAllClose(values["completeness"], np.dot(importance.sum(0) / importance.sum(), c_cols))
        information = np.array([[0.9, 0.1], [0.3, 0.5], [0.2, 0.45]])
        mean, per_factor = disentanglement.mig(information, [1.2, 0.0])  # a constant factor scores 0
        self.assertAllClose(per_factor, [(0.9 - 0.3) / 1.2, 0.0])
        self.assertAllClose(mean, 0.25)
        self.assertAllClose(disentanglement.sap(information)[1], [0.6, 0.05])
        with self.assertRaisesRegex(ValueError, "T >= 2 groups"):
            disentanglement.sap(np.ones((1, 3)))


class RotationSymmetryTest(tf.test.TestCase):
    def test_the_renderer_has_the_symmetries_the_factor_reduces_by(self):
        rotation = np.float32(0.3)
        for index, name in enumerate(SPRITE_SHAPES):
            order = disentanglement_lib.SHAPE_SYMMETRY_ORDERS[name]
            turns = [rotation, rotation + 2 * np.pi / order, rotation + np.pi / (2 * order)]
            if order == 1:
                turns[1] = rotation + np.pi  # the heart: half a turn is a different image
            factors = {
                "shape": np.full(3, index),
                "scale": np.full(3, 1.0, np.float32),
                "rotation": np.array(turns, np.float32),
                "x": np.full(3, 0.5, np.float32),
                "y": np.full(3, 0.5, np.float32),
            }
            images = render_sprites(factors, 12.0)
            same, other = np.abs(images[1] - images[0]).mean(), np.abs(images[2] - images[0]).mean()
            if order > 1:
                self.assertLess(same, 0.01, msg=f"{name} turned by 2 pi / {order}")
            else:
                self.assertGreater(same, 0.05, msg=name)
            self.assertGreater(other, 0.03, msg=f"{name} turned by pi / {2 * order}")
        table, names, kinds = disentanglement_lib.sprite_factor_table(
            {**factors, "shape": np.zeros(3, np.int64), "rotation": np.array([0.3, 0.3 + np.pi / 2, -0.3 + np.pi])}
        )
        self.assertEqual((names[2], kinds[2]), ("rotation_mod_symmetry", "angle"))
        self.assertAllClose(table[:, 2], [1.2, 1.2, disentanglement.symmetry_reduced_angle(np.pi - 0.3, 4)])

    def test_a_code_of_the_image_explains_the_reduced_rotation_only(self):
        # Squares at every orientation: an encoder can know (cos 4 theta, sin 4 theta) at most.
        rng = np.random.default_rng(2)
        theta = rng.uniform(0, 2 * np.pi, 600)
        code = np.stack([np.cos(4 * theta), np.sin(4 * theta)], axis=1)[:, None, :].repeat(2, axis=1)
        code[:, 1] = rng.standard_normal((600, 2))
        factors = np.stack([theta, disentanglement.symmetry_reduced_angle(theta, 4)], axis=1)
        result = disentanglement.evaluate_groups(code[:400], factors[:400], code[400:], factors[400:], ["angle"] * 2)
        explained = np.asarray(result["matrices"]["explained"])
        self.assertLess(explained[0, 0], 0.05)  # the raw rotation: not identifiable
        self.assertGreater(explained[0, 1], 0.95)  # modulo the square's symmetry: exact


class AttributesTest(tf.test.TestCase):
    def test_attributes_are_matched_by_file_name(self):
        path = os.path.join(self.get_temp_dir(), "attr.npz")
        attr = np.array([[1, -1], [-1, -1], [1, 1]], np.int8)
        np.savez(path, attr=attr, filenames=np.array(["000001.jpg", "000002.jpg", "000003.jpg"]), attr_names=["A", "B"])
        by_stem, values, names = disentanglement_lib.load_attributes(path)
        self.assertEqual(names, ["A", "B"])
        self.assertAllEqual(values, (attr > 0).astype(np.int8))
        indices, rows = disentanglement_lib.attribute_rows(["000003.png", "000009.jpg", "000001.jpg"], by_stem, "x")
        self.assertAllEqual(indices, [0, 2])
        self.assertAllEqual(rows, [2, 0])
        with self.assertRaisesRegex(disentanglement_lib.NoFactorsError, "no recorded file names"):
            disentanglement_lib.attribute_rows(None, by_stem, "train")


class ExploreDisentangleTest(testing_utils.GinTestCase):
    """`python -m crvae_tf.explore --mode=disentangle` on a 2-step tiny VAE trained on 64 sprites, in-process."""

    def test_the_mode_writes_the_tables_heat_map_and_factor_grid(self):
        tmp = self.get_temp_dir()
        model_dir = os.path.join(tmp, "sprites_vae")
        runs.parse_gin(
            [os.path.join(testing_utils.GIN_DIR, "quickstart_vae.gin")],
            testing_utils.TINY_BINDINGS
            + testing_utils.tiny_head_bindings("fc")
            + ["train.max_steps = 2", "dataset.num_sprites = (64, 48, 8)", "train.num_validation_images = 8"]
            + ["train.image_every_steps = 100"],
            finalize=False,
        )
        loop.train(model_dir)
        gin.clear_config()
        argv = ["explore", f"--model_dir={model_dir}", "--mode=disentangle", "--num_images=40"]
        summary = json.loads(testing_utils.run_main(explore.main, argv).strip().splitlines()[-1])
        stem = os.path.join(model_dir, "explore", "disentangle-step2")
        self.assertEqual(
            (summary["json"], summary["markdown"], summary["png"]), (stem + ".json", stem + ".md", stem + ".png")
        )
        self.assertEqual(summary["factor_names"], ["shape", "scale", "rotation_mod_symmetry", "x", "y"])
        self.assertEqual((summary["num_time_steps"], summary["time_steps_are"]), (8, "channel slices"))
        self.assertEqual((summary["num_train"], summary["num_test"]), (40, 40))
        self.assertEqual(summary["step_slices"][2], [4, 6])  # latent 16: 8 slices of 2
        for matrix in ("explained", "sap_score", "information", "importance", "intervention"):
            self.assertEqual(np.shape(summary["matrices"][matrix]), (8, 5), msg=matrix)
        with open(stem + ".json") as f:
            self.assertEqual(json.load(f)["metrics"], summary["metrics"])
        with open(stem + ".md") as f:
            self.assertIn("| time step | shape | scale | rotation_mod_symmetry | x | y |", f.read())
        heat_map = tf.io.decode_png(open(stem + ".png", "rb").read()).numpy()
        self.assertEqual(heat_map.shape[-1], 3)
        grid = tf.io.decode_png(open(summary["factor_grid_png"], "rb").read()).numpy()
        self.assertEqual(grid.shape, (10 * 29 + 1, 8 * 29 + 1, 1))  # 5 factors x (truth, reconstruction), 8 points
        events = os.listdir(os.path.join(model_dir, "tb", "explore"))
        self.assertTrue(events and all(name.startswith("events.out.tfevents") for name in events))
        # A sprites run has no file names for --attributes; flags of other modes are refused.
        attributes = os.path.join(tmp, "attr.npz")
        np.savez(attributes, attr=np.ones((1, 1), np.int8), filenames=np.array(["000001.jpg"]), attr_names=["A"])
        with self.assertRaisesRegex(cli.UnsupportedRunError, "no recorded file names"):
            testing_utils.run_main(explore.main, argv + [f"--attributes={attributes}"])
        with self.assertRaisesRegex(app.UsageError, "--mask: not used by --mode=disentangle"):
            testing_utils.run_main(explore.main, argv + ["--mask=eyes"])
        with self.assertRaisesRegex(app.UsageError, "--num_images=1 must be an integer >= 2"):
            testing_utils.run_main(explore.main, argv[:-1] + ["--num_images=1"])
        with self.assertRaisesRegex(app.UsageError, "--attributes applies to --mode=disentangle only"):
            testing_utils.run_main(explore.main, argv[:2] + ["--mode=style", f"--attributes={attributes}"])


if __name__ == "__main__":
    tf.test.main()
