"""Sample-quality metrics: Frechet distance and KID against SciPy / NumPy oracles, their invariances, IS, streaming
moments, and the feature-network paths (a random-initialised Keras conv net as proxy, a fabricated Inception
GraphDef with the real tensor names, the missing-file error)."""

import json
import os
import tempfile
import unittest

import keras
import numpy as np
from scipy import linalg
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf.evaluation import sample_quality as sq


def _fid_scipy(x, y):
    """The original FID code's formula: scipy.linalg.sqrtm of S1 S2 (full-rank covariances only)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)


def _fid_eigvals(x, y):
    """Oracle for any rank: Tr sqrt(S1^1/2 S2 S1^1/2) = sum sqrt(eigenvalues of S1 S2) (non-symmetric eig)."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    values = np.linalg.eigvals(s1 @ s2).real
    values = np.where(values > 1e-10 * np.abs(values).max(), values, 0.0)  # the null space's rounding noise -> 0
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(values))


def _fid(x, y):
    return sq.frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


def _mmd2_loops(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, by explicit loops."""
    m, d = x.shape
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


class FrechetDistanceTest(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
        self.y = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) + 0.5

    def test_matches_scipy_sqrtm_on_full_rank_features(self):
        expected = _fid_scipy(self.x, self.y)
        self.assertGreater(expected, 1.0)
        self.assertAlmostEqual(_fid(self.x, self.y), expected, delta=1e-8 * expected)

    def test_rank_deficient_matches_eigen_oracle(self):
        rng = np.random.default_rng(1)
        x, y = rng.normal(size=(10, 40)), rng.normal(size=(15, 40)) * 2.0 + 0.3  # N < d: both covariances singular
        self.assertLess(np.linalg.matrix_rank(np.cov(x, rowvar=False)), 40)
        expected = _fid_eigvals(x, y)
        self.assertAlmostEqual(_fid(x, y), expected, delta=1e-9 * expected)
        # Identical singular covariances: the trace terms cancel exactly, only the mean term remains.
        self.assertAlmostEqual(_fid(x, x + 1.5), 40 * 1.5**2, places=8)

    def test_invariances(self):
        self.assertAlmostEqual(_fid(self.x, self.x), 0.0, places=8)
        v = np.linspace(-1.0, 2.0, 12)
        self.assertAlmostEqual(
            _fid(self.x, self.y + v) - _fid(self.x, self.y),
            2 * np.dot(v, self.y.mean(0) - self.x.mean(0)) + np.dot(v, v),
            places=7,
        )
        self.assertAlmostEqual(_fid(self.x, self.x + v), np.dot(v, v), places=8)
        q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(12, 12)))
        self.assertAlmostEqual(_fid(self.x @ q, self.y @ q), _fid(self.x, self.y), places=7)

    def test_refuses_non_psd_and_mismatched_shapes(self):
        with self.assertRaisesRegex(ValueError, "not positive semi-definite"):
            sq.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
        with self.assertRaisesRegex(ValueError, "dimensions differ"):
            sq.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


class MomentsTest(unittest.TestCase):
    def test_streaming_equals_one_shot_and_round_trips(self):
        rng = np.random.default_rng(3)
        x = rng.normal(size=(103, 7)) * 3 + 10
        first, second = sq.FeatureMoments(7, "net", "abc", "pool"), sq.FeatureMoments(7, "net", "abc", "pool")
        for chunk in np.array_split(x[:60], 4):
            first.update(chunk)
        second.update(x[60:])
        first.merge(second)
        self.assertEqual(first.count, 103)
        np.testing.assert_allclose(first.mean(), x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(first.covariance(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-10)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "m.npz")
            first.save(path)
            loaded = sq.FeatureMoments.load(path)
            self.assertEqual(
                (loaded.count, loaded.network_name, loaded.network_sha256, loaded.layer), (103, "net", "abc", "pool")
            )
            np.testing.assert_array_equal(loaded.outer_sum, first.outer_sum)
            with np.load(path) as data:  # TTUR-compatible mu / sigma
                np.testing.assert_allclose(data["sigma"], np.cov(x, rowvar=False), rtol=1e-9, atol=1e-10)
        with self.assertRaisesRegex(ValueError, "cannot merge"):
            first.merge(sq.FeatureMoments(7, "other", "abc", "pool"))


class KidTest(unittest.TestCase):
    def test_matches_loops_on_small_sets(self):
        rng = np.random.default_rng(4)
        x, y = rng.normal(size=(15, 5)), rng.normal(size=(15, 5)) + 0.4
        self.assertAlmostEqual(sq.unbiased_mmd2(x, y), _mmd2_loops(x, y), places=10)
        # One subset of the whole (equal-size) sets is a permutation of them: the same statistic.
        kid = sq.kernel_inception_distance(x, y, num_subsets=1, subset_size=100)
        self.assertEqual(kid["subset_size"], 15)
        self.assertAlmostEqual(kid["mean"], _mmd2_loops(x, y), places=10)

    def test_mean_sem_over_subsets_and_distribution_sensitivity(self):
        rng = np.random.default_rng(5)
        x, y = rng.normal(size=(600, 8)), rng.normal(size=(600, 8))
        values = sq.kid_subset_values(x, y, 20, 100, seed=7)
        kid = sq.kernel_inception_distance(x, y, 20, 100, seed=7)
        self.assertAlmostEqual(kid["mean"], values.mean(), places=12)
        self.assertAlmostEqual(kid["sem"], values.std(ddof=1) / np.sqrt(20), places=12)
        self.assertLess(abs(kid["mean"]), 4 * kid["sem"] + 1e-3)
        shifted = sq.kernel_inception_distance(x, y + 1.0, 20, 100, seed=7)
        self.assertGreater(shifted["mean"], 0.5)
        self.assertGreater(shifted["mean"], 20 * shifted["sem"])


class InceptionScoreTest(unittest.TestCase):
    def test_uniform_and_balanced_one_hot(self):
        self.assertAlmostEqual(sq.inception_score(np.full((40, 8), 1 / 8), 4)["mean"], 1.0, places=12)
        score = sq.inception_score(np.tile(np.eye(8), (8, 1)), 8)  # 64 rows, 8 splits of one cycle each
        self.assertAlmostEqual(score["mean"], 8.0, places=10)
        self.assertAlmostEqual(score["std"], 0.0, places=10)
        # 80 rows in 4 splits of 20 = 2.5 cycles: p(y) is not uniform in a split, and the score drops below 8.
        self.assertLess(sq.inception_score(np.tile(np.eye(8), (10, 1)), 4)["mean"], 7.99)
        with self.assertRaisesRegex(ValueError, "not logits"):
            sq.inception_score(np.ones((10, 3)), 2)


def _tiny_conv_net():
    """Seeded through its initialisers (no global seed is touched)."""
    init = lambda seed: keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(6, 3, strides=2, activation="relu", kernel_initializer=init(0), name="conv")(inputs)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    probabilities = keras.layers.Dense(4, activation="softmax", kernel_initializer=init(1), name="probs")(features)
    return keras.Model(inputs, probabilities, name="tiny_proxy")


class ProxyPathTest(unittest.TestCase):
    def test_whole_path_with_a_random_conv_net(self):
        rng = np.random.default_rng(6)
        real = rng.uniform(size=(90, 12, 12, 1)).astype(np.float32)
        model = _tiny_conv_net()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "proxy.keras")
            model.save(path)
            network = sq.KerasFeatureNetwork(path, layer="pool", probabilities_layer="probs", batch_size=32)
            self.assertEqual(network.sha256, artifacts.file_sha256(path))

        def sample(num, seed):
            return {"images": np.random.default_rng(seed).uniform(size=(num, 12, 12, 1)).astype(np.float32) ** 2}

        fake = list(sq.sampled_images(sample, 70, batch_size=25, seed=3))
        self.assertEqual([len(b) for b in fake], [25, 25, 20])
        result = sq.sample_quality(
            (b for b in np.array_split(real, 4)),
            fake,
            network,
            kid_num_subsets=10,
            kid_subset_size=50,
            inception_score_splits=2,
        )
        json.dumps(result)  # the result is JSON as it is
        self.assertTrue(result["network"]["is_proxy"])
        self.assertEqual(result["network"]["sha256"], network.sha256)
        self.assertNotIn("fid", result)
        self.assertNotIn("kid_mean", result)
        self.assertEqual((result["num_real"], result["num_fake"], result["kid_subset_size"]), (90, 70, 50))
        # The streamed proxy_fid equals the distance of the features computed in one go.
        expected = _fid(model_features(model, real), model_features(model, np.concatenate(fake)))
        self.assertGreater(expected, 0.0)
        self.assertAlmostEqual(result["proxy_fid"], expected, delta=1e-6 * expected)
        self.assertGreater(result["proxy_kid_mean"], 0.0)
        self.assertIn("proxy_inception_score_mean", result)
        self.assertGreaterEqual(result["proxy_inception_score_mean"], 1.0)

    def test_saved_model_signature_and_in_memory_keras_model(self):
        class Net(tf.Module):
            def __init__(self):
                super().__init__()
                self.w = tf.Variable(np.random.default_rng(10).normal(size=(3, 5)).astype(np.float32))

            @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 3], tf.float32)])
            def features(self, pixels):
                pooled = tf.reduce_mean(pixels, axis=[1, 2]) @ self.w
                return {"embedding": pooled, "probs": tf.nn.softmax(pooled)}

        net = Net()
        images = np.random.default_rng(11).uniform(size=(9, 4, 4, 1)).astype(np.float32)
        x = tf.repeat(tf.image.resize(images, (6, 6)), 3, axis=-1) * 2.0 - 1.0  # what the network must be fed
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "featnet")
            tf.saved_model.save(net, path, signatures={"serving_default": net.features})
            with self.assertRaisesRegex(ValueError, r"outputs \['embedding', 'probs'\]: name one"):
                sq.SavedModelFeatureNetwork(path)
            network = sq.SavedModelFeatureNetwork(
                path,
                "embedding",
                probabilities_key="probs",
                input_size=(6, 6),
                input_range=(-1, 1),
                input_channels=3,
                batch_size=4,
            )
            self.assertEqual(network.sha256, artifacts.file_sha256(path))
        self.assertTrue(network.is_proxy and network.has_probabilities)
        self.assertEqual(network.layer, "serving_default/embedding")
        out = network.outputs(images)
        np.testing.assert_allclose(out["features"], net.features(x)["embedding"].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out["probabilities"], net.features(x)["probs"].numpy(), rtol=1e-5, atol=1e-6)
        model = _tiny_conv_net()
        in_memory = sq.KerasFeatureNetwork(model, layer="pool")
        self.assertEqual((in_memory.name, in_memory.input_size), ("tiny_proxy", (12, 12)))
        self.assertEqual(in_memory.sha256, sq.KerasFeatureNetwork(_tiny_conv_net(), layer="pool").sha256)
        model.get_layer("conv").kernel.assign(model.get_layer("conv").kernel * 2.0)
        self.assertNotEqual(in_memory.sha256, sq.KerasFeatureNetwork(model, layer="pool").sha256)

    def test_sampled_images_seeds_differ_per_batch_and_repeat(self):
        sample = lambda num, seed: np.full((num, 1, 1, 1), seed % 1000 / 1000.0, np.float32)
        first = np.concatenate(list(sq.sampled_images(sample, 6, 2, seed=1)))
        self.assertEqual(len(np.unique(first)), 3)
        np.testing.assert_array_equal(first, np.concatenate(list(sq.sampled_images(sample, 6, 2, seed=1))))

    def test_missing_files_name_what_to_supply(self):
        with self.assertRaisesRegex(
            sq.MissingFeatureNetworkError, "classify_image_graph_def.pb.*sample_quality.inception_path"
        ):
            sq.InceptionGraphDef("/nonexistent/classify_image_graph_def.pb")
        with self.assertRaisesRegex(sq.MissingFeatureNetworkError, "sample_quality.inception_path"):
            sq.InceptionGraphDef(None)
        with self.assertRaisesRegex(sq.MissingFeatureNetworkError, "InceptionV3 weights"):
            sq.keras_inception_v3("/nonexistent/inception_v3_notop.h5")

    def test_reservoir_keeps_a_seeded_subset_and_moments_keep_everything(self):
        rng = np.random.default_rng(9)
        images = rng.uniform(size=(50, 4, 4, 1)).astype(np.float32)

        class Flatten(sq.FeatureNetwork):
            name, sha256, layer, batch_size = "flatten", "0", "pixels", 8

            def _run(self, x):
                return {"features": tf.reshape(x, [x.shape[0], -1])}

        network = Flatten()
        first = sq.collect_features(images, network, kid_max_samples=10, seed=4)
        self.assertEqual(first.moments.count, 50)
        np.testing.assert_allclose(first.moments.mean(), images.reshape(50, -1).mean(0), rtol=1e-6)
        self.assertEqual(first.kid_features.shape, (10, 16))
        rows = {tuple(r) for r in images.reshape(50, -1)}
        self.assertTrue(all(tuple(r) in rows for r in first.kid_features))
        self.assertGreater(max(int(np.argmax((images.reshape(50, -1) == r).all(1))) for r in first.kid_features), 9)
        again = sq.collect_features(iter(np.array_split(images, 3)), network, kid_max_samples=10, seed=4)
        np.testing.assert_array_equal(again.kid_features, first.kid_features)
        capped = sq.collect_features(images, network, max_images=13)
        self.assertEqual(capped.moments.count, 13)


def model_features(model, images):
    pooled = keras.Model(model.inputs[0], model.get_layer("pool").output)
    return np.asarray(pooled(images), np.float64)


def _fabricated_inception_graph(path, kernel, weights, bias, size=8):
    """A GraphDef with the real graph's tensor names: DecodeJpeg/contents -> DecodeJpeg -> Cast -> ExpandDims ->
    ResizeBilinear -> Sub/Mul normalisation -> conv -> pool_3 [1, 1, 1, d] -> pool_3/_reshape [1, d] ->
    softmax/logits/MatMul -> softmax/logits (bias) -> softmax."""
    graph = tf.Graph()
    with graph.as_default():
        contents = tf.compat.v1.placeholder(tf.string, [], name="DecodeJpeg/contents")
        decoded = tf.raw_ops.DecodeJpeg(contents=contents, channels=3, name="DecodeJpeg")
        cast = tf.raw_ops.Cast(x=decoded, DstT=tf.float32, name="Cast")
        expand = tf.raw_ops.ExpandDims(input=cast, axis=tf.constant(0, name="ExpandDims/dim"), name="ExpandDims")
        resized = tf.raw_ops.ResizeBilinear(
            images=expand, size=tf.constant([size, size], name="ResizeBilinear/size"), name="ResizeBilinear"
        )
        sub = tf.raw_ops.Sub(x=resized, y=tf.constant(128.0, name="Sub/y"), name="Sub")
        mul = tf.raw_ops.Mul(x=sub, y=tf.constant(1 / 128.0, name="Mul/y"), name="Mul")
        conv = tf.raw_ops.Conv2D(
            input=mul,
            filter=tf.constant(kernel, name="conv/filter"),
            strides=[1, 1, 1, 1],
            padding="VALID",
            name="conv",
        )
        relu = tf.raw_ops.Relu(features=conv, name="conv/relu")
        k = size - kernel.shape[0] + 1
        pool = tf.raw_ops.AvgPool(value=relu, ksize=[1, k, k, 1], strides=[1, 1, 1, 1], padding="VALID", name="pool_3")
        reshape = tf.raw_ops.Reshape(
            tensor=pool, shape=tf.constant([1, kernel.shape[-1]], name="pool_3/_reshape/shape"), name="pool_3/_reshape"
        )
        matmul = tf.raw_ops.MatMul(
            a=reshape, b=tf.constant(weights, name="softmax/weights"), name="softmax/logits/MatMul"
        )
        logits = tf.raw_ops.BiasAdd(value=matmul, bias=tf.constant(bias, name="softmax/biases"), name="softmax/logits")
        tf.raw_ops.Softmax(logits=logits, name="softmax")
    with open(path, "wb") as f:
        f.write(graph.as_graph_def().SerializeToString())
    return {node.name for node in graph.as_graph_def().node}


class InceptionGraphDefLoaderTest(unittest.TestCase):
    def test_fabricated_graph_with_the_real_tensor_names(self):
        rng = np.random.default_rng(8)
        kernel = rng.normal(size=(3, 3, 3, 5)).astype(np.float32)
        weights = rng.normal(size=(5, 6)).astype(np.float32)
        bias = rng.normal(size=6).astype(np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, sq.INCEPTION_GRAPH_FILE)
            names = _fabricated_inception_graph(path, kernel, weights, bias)
            self.assertTrue({"ExpandDims", "pool_3", "softmax/logits/MatMul", "DecodeJpeg/contents"} <= names)
            network = sq.InceptionGraphDef(tmp, batch_size=3)  # a directory holding the file is accepted
            self.assertEqual(network.sha256, artifacts.file_sha256(path))
        images = rng.uniform(size=(7, 10, 10, 1)).astype(np.float32)  # grayscale: repeated to RGB; batches 3+3+1
        out = network.outputs(images)
        # Oracle: the same computation in eager TF on [0, 255] RGB pixels, logits without the bias (improved-gan).
        x = tf.repeat(tf.constant(images) * 255.0, 3, axis=-1)
        x = (tf.raw_ops.ResizeBilinear(images=x, size=[8, 8]) - 128.0) / 128.0
        h = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "VALID"))
        features = tf.reduce_mean(h, axis=[1, 2]).numpy()
        np.testing.assert_allclose(out["features"], features, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            out["probabilities"], tf.nn.softmax(features @ weights).numpy(), rtol=1e-5, atol=1e-6
        )
        result = sq.sample_quality(
            images, images[::-1] * 0.5, network, kid_num_subsets=3, kid_subset_size=5, inception_score_splits=1
        )
        self.assertFalse(result["network"]["is_proxy"])
        self.assertEqual(result["network"]["name"], sq.INCEPTION_NAME)
        self.assertIn("fid", result)
        self.assertIn("kid_mean", result)
        self.assertIn("inception_score_mean", result)
        self.assertNotIn("proxy_fid", result)

    def test_a_graph_without_the_tensor_names_is_refused(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "other.pb")
            graph = tf.Graph()
            with graph.as_default():
                tf.constant(1.0, name="c")
            with open(path, "wb") as f:
                f.write(graph.as_graph_def().SerializeToString())
            with self.assertRaisesRegex(ValueError, "no node 'ExpandDims'"):
                sq.InceptionGraphDef(path)


class KerasInceptionV3FileTest(unittest.TestCase):
    def test_top_is_read_from_the_file_in_both_formats(self):
        # The real InceptionV3 costs seconds to build; the detection is tested on two-layer models with the same
        # layer names ('predictions' in the legacy .h5 format, class names 'dense' in Keras 3's .weights.h5).
        import h5py
        from keras.src.legacy.saving import legacy_h5_format

        inputs = keras.Input((4,))
        pooled = keras.layers.Activation("relu", name="avg_pool")(inputs)
        top = keras.Model(inputs, keras.layers.Dense(3, name="predictions")(pooled))
        notop = keras.Model(inputs, pooled)
        with tempfile.TemporaryDirectory() as tmp:
            for model, expected in ((top, True), (notop, False)):
                path = os.path.join(tmp, f"{expected}.weights.h5")
                model.save_weights(path)
                self.assertEqual(sq.inception_v3_file_has_top(path), expected, msg=path)
                legacy = os.path.join(tmp, f"{expected}.h5")
                with h5py.File(legacy, "w") as f:
                    legacy_h5_format.save_weights_to_hdf5_group(f, model)
                self.assertEqual(sq.inception_v3_file_has_top(legacy), expected, msg=legacy)
            junk = os.path.join(tmp, "junk.h5")
            with open(junk, "wb") as f:
                f.write(b"not hdf5")
            with self.assertRaisesRegex(ValueError, "not an HDF5 weights file"):
                sq.keras_inception_v3(junk)


@unittest.skipUnless(
    os.environ.get("CRVAE_INCEPTION_GRAPH"), "set CRVAE_INCEPTION_GRAPH to classify_image_graph_def.pb"
)
class RealInceptionGraphTest(unittest.TestCase):
    """Opt-in: the genuine graph file imports and gives pool_3 features and 1008-way probabilities."""

    def test_real_graph(self):
        network = sq.InceptionGraphDef(os.environ["CRVAE_INCEPTION_GRAPH"], batch_size=4)
        out = network.outputs(np.random.default_rng(0).uniform(size=(5, 32, 32, 3)).astype(np.float32))
        self.assertEqual(out["features"].shape, (5, 2048))
        self.assertEqual(out["probabilities"].shape, (5, 1008))
        np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, rtol=1e-4)
        self.assertTrue(np.all(out["features"] >= 0))  # pool_3 averages ReLU outputs


if __name__ == "__main__":
    unittest.main()
