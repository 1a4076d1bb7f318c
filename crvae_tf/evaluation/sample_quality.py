"""Sample quality from feature statistics: Frechet distance (FID), kernel distance (KID), Inception Score.

Images (pixels in [0, 1], `[n, H, W, C]`) go through a user-supplied feature network (`FeatureNetwork`; nothing
is ever downloaded) and are compared in its feature space. All statistics are float64.

FID (Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash equilibrium"):
the Frechet distance between Gaussians fitted to the two feature sets,

    FID = ||mu_1 - mu_2||^2 + Tr S_1 + Tr S_2 - 2 Tr (S_1^{1/2} S_2 S_1^{1/2})^{1/2} .

The last trace is sum_i sqrt(lambda_i) over the eigenvalues of the symmetric PSD matrix S_1^{1/2} S_2 S_1^{1/2}
(it has the same eigenvalues as S_1 S_2, whose "sqrtm" the original code takes). Both square roots come from
symmetric eigendecompositions (`numpy.linalg.eigh`), never from an elementwise sqrt of a matrix and never from a
complex `scipy.linalg.sqrtm`, so rank-deficient covariances (fewer samples than feature dimensions, N < d) are
handled exactly. Eigenvalues of these PSD matrices within rounding of 0, |lambda| <= tol with
`tol = PSD_TOLERANCE_FACTOR * d * eps_float64 * max_i |lambda_i|` (= 100 d eps max|lambda|, about 4.5e-11
max|lambda| for d = 2048), are set to exactly 0: the null space of a rank-deficient covariance then adds nothing,
where sqrt(rounding noise ~1e-16) would add ~1e-8 per null direction. A more negative eigenvalue means the matrix
is not a covariance, and raises.
Cost at d = 2048: one `eigh` and two `eigvalsh` of 2048 x 2048, measured 51 s on 2 shared, busy CPU cores (eigh
alone 20 s there); KID with 10 subsets of 1000 took 2.6 s there, so the conventional 100 subsets take ~30 s.
Means and covariances are streamed (`FeatureMoments`: count, sum, sum of outer products, float64), so 50k samples
never sit in memory at once; the covariance is the unbiased one (divided by N - 1), as `numpy.cov`.

KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased estimate of the squared MMD with the cubic
polynomial kernel k(x, y) = (x.y / d + 1)^3, on `num_subsets` random subsets (without replacement, seeded) of m =
`subset_size` features of each set:

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2 ,

reported as the mean over subsets and its standard error std(ddof=1) / sqrt(num_subsets). Conventionally 100
subsets of 1000; when a set is smaller than `subset_size`, m = the smaller set's size (as the authors' code) and
the result records the m used. KID needs the features themselves, not moments: `collect_features` keeps a seeded
uniform reservoir of at most `kid_max_samples` feature rows per set (float32; 50,000 x 2048 is 400 MB).

Inception Score (Salimans et al. 2016, "Improved techniques for training GANs"): from class probabilities p(y|x),
IS = exp(E_x KL(p(y|x) || p(y))) with p(y) the mean of p(y|x) over the split, over `num_splits` contiguous splits
(10 conventionally), reported as mean and (population) std over splits, as the authors' code. Terms with
p(y|x) = 0 contribute 0 (the original code's log(0) would give NaN).

Naming. Only `InceptionGraphDef` (the TF Inception graph of FID/IS papers) yields results named "fid", "kid_*",
"inception_score_*". Every other network is a proxy: the same numbers are named "proxy_fid", "proxy_kid_*",
"proxy_inception_score_*" and are comparable only with numbers from the same network (same sha256). Every result
records the network's name, sha256 and `is_proxy`.

Feature networks:
  InceptionGraphDef      `classify_image_graph_def.pb` from inception-2015-12-05.tgz (TTUR `fid.py`, openai
                         improved-gan `inception_score/model.py`): pool_3 features (2048) and 1008-way softmax.
  KerasFeatureNetwork    any Keras model (object or .keras/.h5 file), a named layer's output as features: proxy.
  SavedModelFeatureNetwork  a SavedModel signature and output key: proxy.
  keras_inception_v3     a `keras.applications.InceptionV3` weights file (notop or with top): proxy ("proxy_fid"),
                         since its weights are not the FID graph's.
A missing file raises `MissingFeatureNetworkError`, which names what to supply (`sample_quality.inception_path`).

Verified and not. The tensor names and conventions of the Inception graph are taken from public code, not from the
file (which this project does not have): TTUR `fid.py` feeds float32 images `[n, H, W, 3]` with values in [0, 255]
at any size to 'ExpandDims:0' (after `import_graph_def`) and reads 'pool_3:0' (`[n, 1, 1, 2048]`); improved-gan
feeds 'ExpandDims:0' the same way and computes the logits as squeeze(pool_3) times the weight matrix that is input 1
of the op 'softmax/logits/MatMul' (no bias: the graph's own 'softmax/logits' path reshapes pool_3 to batch 1).
Both rely on the graph resizing to 299 x 299 itself (they feed unresized images), so this module feeds unresized
images too. Not verified without the file: that the graph imports and runs under TF 2.21 through
`tf.compat.v1.wrap_function` + `import_graph_def` with 'ExpandDims:0' remapped to a batched input (the loader is
tested on a fabricated GraphDef with the same tensor names, structure DecodeJpeg -> Cast -> ExpandDims -> resize ->
pool_3 -> softmax/logits/MatMul), that its features match published FID statistics, and the genuine file's sha256
(not pinned here; it is recorded in every result). An opt-in test runs the genuine file when the environment
variable CRVAE_INCEPTION_GRAPH names it. `keras_inception_v3` was checked by hand (Keras 3.15: randomly initialised
InceptionV3 weights saved as .weights.h5 with and without the top, and as a legacy notop .h5, load; notop features
equal the model's own output); the suite tests only its top detection and its errors (building InceptionV3 costs
seconds). A weights file of another architecture may load with Keras warnings only. The Frechet distance, KID and
IS are tested against SciPy / NumPy oracles.
"""

import dataclasses
import hashlib
import json
import os
from typing import Callable
from typing import Dict
from typing import Iterable
from typing import Optional
from typing import Sequence
from typing import Tuple
from typing import Union

import h5py
import keras
import numpy as np
from scipy import special
import tensorflow as tf

from crvae_tf import artifacts

PSD_TOLERANCE_FACTOR = 100.0
KID_NUM_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_NUM_SPLITS = 10

INCEPTION_GRAPH_FILE = "classify_image_graph_def.pb"
INCEPTION_INPUT_TENSOR = "ExpandDims:0"
INCEPTION_POOL3_TENSOR = "pool_3:0"
INCEPTION_LOGITS_MATMUL_OP = "softmax/logits/MatMul"
INCEPTION_NAME = "inception-2015-12-05/classify_image_graph_def.pb"
INCEPTION_HELP = (
    "FID/KID need the standard TF Inception graph `classify_image_graph_def.pb` (inside inception-2015-12-05.tgz, "
    "the file of TTUR and the original FID / Inception Score code); supply its path as "
    "`sample_quality.inception_path` (gin) or `inception_path=`. Nothing is downloaded. Without it, only a proxy "
    "network (a Keras model, a SavedModel or a keras.applications.InceptionV3 weights file) gives proxy_fid/proxy_kid."
)


class MissingFeatureNetworkError(FileNotFoundError):
    """A feature network's file is absent; the message names what to supply."""


# ----------------------------------------------------------------------------------------------------------------
# Streaming moments.


class FeatureMoments:
    """Streaming float64 count, sum and sum of outer products of feature rows `[n, d]`.

    `mean` and the unbiased `covariance` (divided by count - 1, as `numpy.cov`) come from these sums; `merge` adds
    another accumulator of the same network and layer. Metadata (network name, sha256, layer) travels with the
    sums and is checked by `merge`, `check_network` and `load`. Memory: d^2 float64 (32 MiB for d = 2048).
    """

    def __init__(self, dim: int, network_name: str = "", network_sha256: str = "", layer: str = ""):
        if int(dim) < 1:
            raise ValueError(f"feature dimension must be >= 1; got {dim}")
        self.dim = int(dim)
        self.network_name = str(network_name)
        self.network_sha256 = str(network_sha256)
        self.layer = str(layer)
        self.count = 0
        self.sum = np.zeros(self.dim, np.float64)
        self.outer_sum = np.zeros((self.dim, self.dim), np.float64)

    @classmethod
    def for_network(cls, network: "FeatureNetwork", dim: int) -> "FeatureMoments":
        return cls(dim, network.name, network.sha256, network.layer)

    def update(self, features) -> "FeatureMoments":
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features must be [n, {self.dim}]; got shape {features.shape}")
        if not np.all(np.isfinite(features)):
            raise ValueError("features contain NaN or Inf")
        self.count += features.shape[0]
        self.sum += features.sum(axis=0)
        self.outer_sum += features.T @ features
        return self

    def _metadata(self):
        return (self.dim, self.network_name, self.network_sha256, self.layer)

    def merge(self, other: "FeatureMoments") -> "FeatureMoments":
        """Adds `other`'s sums into this accumulator (same dimension, network and layer required)."""
        if self._metadata() != other._metadata():
            raise ValueError(
                f"cannot merge moments of different features: (dim, network, sha256, layer) {self._metadata()} "
                f"vs {other._metadata()}"
            )
        self.count += other.count
        self.sum += other.sum
        self.outer_sum += other.outer_sum
        return self

    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise ValueError("the mean needs at least 1 feature row; none was added")
        return self.sum / self.count

    def covariance(self) -> np.ndarray:
        """Unbiased covariance `[d, d]` (sum of outer products - n mu mu^T) / (n - 1), exactly symmetric."""
        if self.count < 2:
            raise ValueError(f"the covariance needs at least 2 feature rows; got {self.count}")
        mean = self.mean()
        cov = (self.outer_sum - self.count * np.outer(mean, mean)) / (self.count - 1)
        return 0.5 * (cov + cov.T)

    def check_network(self, network: "FeatureNetwork") -> None:
        """Raises if these moments were not computed with `network` (name, sha256, layer)."""
        ours = (self.network_name, self.network_sha256, self.layer)
        theirs = (network.name, network.sha256, network.layer)
        if ours != theirs:
            raise ValueError(f"moments computed with (network, sha256, layer) {ours}, not with {theirs}")

    def save(self, path: str) -> None:
        """Writes an .npz: count, sum, outer_sum, TTUR-style `mu` and `sigma` (when count >= 2), and `metadata`
        (JSON: network_name, network_sha256, layer, count, dim)."""
        metadata = dict(
            network_name=self.network_name,
            network_sha256=self.network_sha256,
            layer=self.layer,
            count=self.count,
            dim=self.dim,
        )
        arrays = dict(count=np.int64(self.count), sum=self.sum, outer_sum=self.outer_sum)
        if self.count >= 2:
            arrays.update(mu=self.mean(), sigma=self.covariance())
        with open(path, "wb") as f:
            np.savez(f, metadata=np.array(json.dumps(metadata)), **arrays)

    @classmethod
    def load(cls, path: str, network: Optional["FeatureNetwork"] = None) -> "FeatureMoments":
        """Reads `save`'s file; with `network`, also checks that the moments are this network's."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"no feature moments at {path}")
        with np.load(path, allow_pickle=False) as data:
            if "metadata" not in data or "outer_sum" not in data:
                raise ValueError(f"{path} is not a FeatureMoments file (no metadata / outer_sum arrays)")
            metadata = json.loads(str(data["metadata"]))
            moments = cls(metadata["dim"], metadata["network_name"], metadata["network_sha256"], metadata["layer"])
            moments.count = int(data["count"])
            moments.sum = np.array(data["sum"], np.float64)
            moments.outer_sum = np.array(data["outer_sum"], np.float64)
        if moments.count != metadata["count"]:
            raise ValueError(f"{path}: count {moments.count} disagrees with its metadata {metadata['count']}")
        if network is not None:
            moments.check_network(network)
        return moments


# ----------------------------------------------------------------------------------------------------------------
# The metrics.


def _psd_eigh(matrix: np.ndarray, what: str, vectors: bool = True) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Eigenvalues and eigenvectors of a symmetric PSD matrix, eigenvalues within the rounding tolerance of 0 (module
    docstring) set to exactly 0; raises if an eigenvalue is negative beyond the tolerance."""
    if vectors:
        values, vectors = np.linalg.eigh(matrix)
    else:
        values, vectors = np.linalg.eigvalsh(matrix), None  # about 3x cheaper than eigh
    scale = float(np.max(np.abs(values))) if values.size else 0.0
    tol = PSD_TOLERANCE_FACTOR * matrix.shape[0] * np.finfo(np.float64).eps * scale
    if values.size and values[0] < -tol:
        raise ValueError(
            f"{what} is not positive semi-definite: eigenvalue {values[0]:.6g} < -{tol:.3g} (tolerance "
            f"{PSD_TOLERANCE_FACTOR:g} * d * eps * max|eigenvalue|)"
        )
    return np.where(values > tol, values, 0.0), vectors


def _checked_gaussian(mu, sigma, name: str) -> Tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, np.float64)
    sigma = np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: mu must be [d] and sigma [d, d]; got {mu.shape} and {sigma.shape}")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise ValueError(f"{name}: mu / sigma contain NaN or Inf")
    return mu, 0.5 * (sigma + sigma.T)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr sqrt(sqrt(S1) S2 sqrt(S1)), float64, via symmetric eigh (module doc).

    The covariances are symmetrised ((S + S^T) / 2) and may be singular. The result is clipped at 0 from below
    (it is a squared distance; rounding can make it -1e-12 for identical inputs).
    """
    mu1, sigma1 = _checked_gaussian(mu1, sigma1, "first Gaussian")
    mu2, sigma2 = _checked_gaussian(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    values1, vectors1 = _psd_eigh(sigma1, "sigma1")
    sqrt_sigma1 = (vectors1 * np.sqrt(values1)) @ vectors1.T
    product = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    product_values, _ = _psd_eigh(0.5 * (product + product.T), "sqrt(sigma1) sigma2 sqrt(sigma1)", vectors=False)
    _psd_eigh(sigma2, "sigma2", vectors=False)
    trace_sqrt = float(np.sum(np.sqrt(product_values)))
    distance = float(np.sum(np.square(mu1 - mu2)) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)
    return max(distance, 0.0)


def frechet_distance_from_moments(first: FeatureMoments, second: FeatureMoments) -> float:
    """`frechet_distance` of two accumulators of the same features (network, sha256, layer checked)."""
    if first._metadata() != second._metadata():
        raise ValueError(
            f"moments of different features: (dim, network, sha256, layer) {first._metadata()} vs {second._metadata()}"
        )
    return frechet_distance(first.mean(), first.covariance(), second.mean(), second.covariance())


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def unbiased_mmd2(x, y) -> float:
    """Unbiased MMD^2 of two equal-size sets `[m, d]` with the cubic polynomial kernel (module docstring)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    m = x.shape[0]
    if x.shape != y.shape or m < 2:
        raise ValueError(f"unbiased MMD^2 needs two [m, d] sets with m >= 2 of one shape; got {x.shape}, {y.shape}")
    k_xx = _polynomial_kernel(x, x)
    k_yy = _polynomial_kernel(y, y)
    k_xy = _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.sum() / (m * m))


def kid_subset_values(
    real_features, fake_features, num_subsets: int = KID_NUM_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed=0
) -> np.ndarray:
    """`unbiased_mmd2` on each of `num_subsets` seeded random subsets (without replacement) of m = min(subset_size,
    len(real), len(fake)) rows of each set: float64 `[num_subsets]`."""
    real_features = np.asarray(real_features)
    fake_features = np.asarray(fake_features)
    if real_features.ndim != 2 or fake_features.ndim != 2 or real_features.shape[1] != fake_features.shape[1]:
        raise ValueError(f"KID needs [n, d] features of one d; got {real_features.shape}, {fake_features.shape}")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1; got {num_subsets}")
    m = min(int(subset_size), len(real_features), len(fake_features))
    if m < 2:
        raise ValueError(f"KID needs at least 2 feature rows per set; got {len(real_features)}, {len(fake_features)}")
    rng = np.random.default_rng(seed)
    values = np.empty(num_subsets, np.float64)
    for s in range(num_subsets):
        x = real_features[rng.choice(len(real_features), m, replace=False)]
        y = fake_features[rng.choice(len(fake_features), m, replace=False)]
        values[s] = unbiased_mmd2(x, y)
    return values


def kernel_inception_distance(
    real_features, fake_features, num_subsets: int = KID_NUM_SUBSETS, subset_size: int = KID_SUBSET_SIZE, seed=0
) -> Dict[str, float]:
    """KID: {'mean', 'sem' (std(ddof=1) / sqrt(num_subsets); 0 for one subset), 'subset_size' (the m used),
    'num_subsets', 'seed'}."""
    values = kid_subset_values(real_features, fake_features, num_subsets, subset_size, seed)
    sem = float(np.std(values, ddof=1) / np.sqrt(num_subsets)) if num_subsets > 1 else 0.0
    m = min(int(subset_size), len(real_features), len(fake_features))
    return dict(mean=float(values.mean()), sem=sem, subset_size=m, num_subsets=int(num_subsets), seed=int(seed))


def inception_score(probabilities, num_splits: int = IS_NUM_SPLITS) -> Dict[str, float]:
    """exp(E_x KL(p(y|x) || p(y))) per contiguous split: {'mean', 'std' (population, over splits), 'num_splits'}.

    Args:
      probabilities: `[n, classes]` rows of p(y|x) (non-negative; rows summing to 1 within 1e-3).
      num_splits: number of splits, n >= num_splits.
    """
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2 or len(p) < num_splits or num_splits < 1:
        raise ValueError(f"probabilities must be [n >= num_splits, classes]; got {p.shape}, {num_splits} splits")
    if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probabilities must be non-negative rows summing to 1 (softmax outputs, not logits)")
    scores = []
    for i in range(num_splits):
        part = p[i * len(p) // num_splits : (i + 1) * len(p) // num_splits]
        marginal = part.mean(axis=0, keepdims=True)
        kl = special.rel_entr(part, np.broadcast_to(marginal, part.shape)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return dict(mean=float(np.mean(scores)), std=float(np.std(scores)), num_splits=int(num_splits))


# ----------------------------------------------------------------------------------------------------------------
# Feature networks.


def _weights_sha256(model) -> str:
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
        digest.update(str((weight.path, value.shape, value.dtype.str)).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _require_file(path, what: str, help_text: str) -> str:
    if path is None or str(path) == "" or not os.path.exists(path):
        raise MissingFeatureNetworkError(f"{what} not found at {path!r}. {help_text}")
    return str(path)


class FeatureNetwork:
    """A feature extractor: images `[n, H, W, C]` in [0, 1] -> float64 features `[n, d]`, in batches.

    Attributes:
      name: what the network is (file name or model name); recorded in every result.
      sha256: of its file(s) (a directory: `artifacts.file_sha256`), or of its weights for an in-memory model.
      is_proxy: False only for the standard TF Inception graph: results are then "fid" / "kid", else "proxy_*".
      layer: the features' layer.
      input_size: (height, width) the images are resized to (bilinear) before the network, or None (as given).
      input_range: (low, high) the [0, 1] pixels are mapped to linearly.
      input_channels: 3 to repeat grayscale images to RGB, or None (as given).
      has_probabilities: whether `outputs` also returns class probabilities (for the Inception Score).
      batch_size: images per network call.
    """

    name: str = ""
    sha256: str = ""
    is_proxy: bool = True
    layer: str = ""
    input_size: Optional[Tuple[int, int]] = None
    input_range: Tuple[float, float] = (0.0, 1.0)
    input_channels: Optional[int] = None
    has_probabilities: bool = False
    batch_size: int = 64

    def info(self) -> Dict:
        return dict(
            name=self.name,
            sha256=self.sha256,
            is_proxy=bool(self.is_proxy),
            layer=self.layer,
            input_size=list(self.input_size) if self.input_size else None,
            input_range=list(self.input_range),
        )

    def metric_name(self, metric: str) -> str:
        """'fid' -> 'fid' for the Inception graph, 'proxy_fid' for any other network."""
        return f"proxy_{metric}" if self.is_proxy else metric

    def _run(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        """Preprocessed float32 images -> {'features': [n, ...], 'probabilities': [n, classes] (optional)}."""
        raise NotImplementedError(f"{type(self).__name__} must implement _run")

    def preprocess(self, images) -> tf.Tensor:
        """Checks pixels in [0, 1] `[n, H, W, C]`, then resizes, repeats channels and rescales (attributes)."""
        images = np.asarray(images, np.float32)
        if images.ndim != 4:
            raise ValueError(f"images must be [n, H, W, C]; got shape {images.shape}")
        if images.size and (not np.all(np.isfinite(images)) or images.min() < -1e-6 or images.max() > 1 + 1e-6):
            raise ValueError(
                f"images must be finite pixels in [0, 1]; got range [{images.min():.4g}, {images.max():.4g}]"
            )
        x = tf.convert_to_tensor(np.clip(images, 0.0, 1.0))
        if self.input_size is not None and tuple(x.shape[1:3]) != tuple(self.input_size):
            x = tf.image.resize(x, self.input_size, method="bilinear")
        if self.input_channels is not None and x.shape[-1] != self.input_channels:
            if x.shape[-1] != 1:
                raise ValueError(f"{self.name} needs {self.input_channels} channels or 1; got {x.shape[-1]}")
            x = tf.repeat(x, self.input_channels, axis=-1)
        low, high = self.input_range
        return low + x * (high - low)

    def outputs(self, images) -> Dict[str, np.ndarray]:
        """{'features': float64 [n, d], 'probabilities': float64 [n, classes] (when `has_probabilities`)}."""
        images = np.asarray(images)
        pieces: Dict[str, list] = {}
        for start in range(0, len(images), self.batch_size):
            result = self._run(self.preprocess(images[start : start + self.batch_size]))
            for key, value in result.items():
                value = np.asarray(value, np.float64)
                pieces.setdefault(key, []).append(value.reshape(value.shape[0], -1))
        if not pieces:
            raise ValueError("no images given")
        return {key: np.concatenate(value, axis=0) for key, value in pieces.items()}

    def __call__(self, images) -> np.ndarray:
        return self.outputs(images)["features"]


class InceptionGraphDef(FeatureNetwork):
    """The TF Inception graph of FID / IS papers (`classify_image_graph_def.pb`, inception-2015-12-05).

    Imported with `tf.compat.v1.wrap_function` + `tf.compat.v1.import_graph_def`, 'ExpandDims:0' remapped to a
    float32 `[n, H, W, 3]` input in [0, 255] (any size: the graph resizes to 299 x 299 itself); features are
    'pool_3:0' `[n, 2048]`; probabilities softmax(features @ W), W = input 1 of 'softmax/logits/MatMul' (1008
    classes, no bias, as improved-gan). What is and is not verified: module docstring.
    """

    is_proxy = False
    layer = "pool_3"
    input_range = (0.0, 255.0)
    input_channels = 3
    has_probabilities = True

    def __init__(self, path: Optional[str], batch_size: int = 50):
        path = _require_file(path, f"Inception graph ({INCEPTION_GRAPH_FILE})", INCEPTION_HELP)
        if os.path.isdir(path):
            path = _require_file(os.path.join(path, INCEPTION_GRAPH_FILE), "Inception graph", INCEPTION_HELP)
        self.path = path
        self.name = INCEPTION_NAME
        self.sha256 = artifacts.file_sha256(path)
        self.batch_size = int(batch_size)
        graph_def = tf.compat.v1.GraphDef()
        with open(path, "rb") as f:
            try:
                graph_def.ParseFromString(f.read())
            except Exception as error:  # protobuf's DecodeError
                raise ValueError(f"{path} is not a serialized GraphDef ({error}). {INCEPTION_HELP}") from error
        names = {node.name for node in graph_def.node}
        for required in (INCEPTION_INPUT_TENSOR, INCEPTION_POOL3_TENSOR, INCEPTION_LOGITS_MATMUL_OP):
            if required.split(":")[0] not in names:
                raise ValueError(
                    f"{path} has no node {required.split(':')[0]!r}: not the Inception graph. {INCEPTION_HELP}"
                )

        def imported(images):
            pool3, matmul = tf.compat.v1.import_graph_def(
                graph_def,
                input_map={INCEPTION_INPUT_TENSOR: images},
                return_elements=[INCEPTION_POOL3_TENSOR, INCEPTION_LOGITS_MATMUL_OP],
                name="inception",
            )
            features = tf.reshape(pool3, [tf.shape(pool3)[0], pool3.shape[-1]])
            logits = tf.matmul(features, matmul.inputs[1])
            return features, tf.nn.softmax(logits)

        # Only the subgraph from the batched input to the two outputs runs: the graph's own input path
        # (DecodeJpeg/contents placeholder -> DecodeJpeg -> Cast) is imported but never executed (tested).
        self._function = tf.compat.v1.wrap_function(imported, [tf.TensorSpec([None, None, None, 3], tf.float32)])

    def _run(self, images):
        features, probabilities = self._function(images)
        return {"features": features, "probabilities": probabilities}


class KerasFeatureNetwork(FeatureNetwork):
    """A Keras model (object, or a .keras / .h5 file) as a proxy feature network.

    Args:
      model: a `keras.Model` or a path to a saved model file (sha256 of the file; of the weights for an object).
      layer: the layer whose output is the features (flattened); None: the model's (first) output.
      probabilities_layer: optional layer with class probabilities (softmax), for a proxy Inception Score.
      input_size, input_range, input_channels, batch_size: `FeatureNetwork` attributes. With input_size None the
        model's own input height/width are used when they are fixed.
      name: recorded name; default the file name or the model's name.
    """

    def __init__(
        self,
        model: Union[str, "keras.Model"],
        layer: Optional[str] = None,
        probabilities_layer: Optional[str] = None,
        input_size: Optional[Tuple[int, int]] = None,
        input_range: Tuple[float, float] = (0.0, 1.0),
        input_channels: Optional[int] = None,
        batch_size: int = 64,
        name: Optional[str] = None,
    ):
        if isinstance(model, (str, os.PathLike)):
            path = _require_file(
                model, "Keras feature model", "Supply a saved Keras model file (.keras / .h5) of the proxy network."
            )
            self.sha256 = artifacts.file_sha256(path)
            model = keras.models.load_model(path, compile=False)
            self.name = name or os.path.basename(path)
        else:
            self.sha256 = _weights_sha256(model)
            self.name = name or model.name
        outputs = [model.get_layer(layer).output if layer else model.outputs[0]]
        if probabilities_layer:
            outputs.append(model.get_layer(probabilities_layer).output)
        self.layer = layer or "output"
        self.has_probabilities = bool(probabilities_layer)
        if len(model.inputs) != 1:
            raise ValueError(f"a feature network takes one image input; {self.name} has {len(model.inputs)}")
        self._model = keras.Model(model.inputs[0], outputs)
        shape = tuple(model.inputs[0].shape)
        if input_size is None and len(shape) == 4 and shape[1] is not None and shape[2] is not None:
            input_size = (int(shape[1]), int(shape[2]))
        self.input_size = tuple(input_size) if input_size else None
        if input_channels is None and len(shape) == 4 and shape[3] == 3:
            input_channels = 3
        self.input_channels = input_channels
        self.input_range = tuple(float(v) for v in input_range)
        self.batch_size = int(batch_size)

    def _run(self, images):
        result = self._model(images, training=False)
        result = result if isinstance(result, (list, tuple)) else [result]
        out = {"features": result[0]}
        if self.has_probabilities:
            out["probabilities"] = result[1]
        return out


class SavedModelFeatureNetwork(FeatureNetwork):
    """A SavedModel signature as a proxy feature network.

    Args:
      path: the SavedModel directory (its sha256: `artifacts.file_sha256` of the directory).
      output_key: the signature's output with the features; None when it has exactly one output.
      signature: the signature name.
      input_key: the signature's image input; None when it has exactly one input.
      probabilities_key: optional output with class probabilities.
      input_size, input_range, input_channels, batch_size, name: as `KerasFeatureNetwork`.
    """

    def __init__(
        self,
        path: str,
        output_key: Optional[str] = None,
        signature: str = "serving_default",
        input_key: Optional[str] = None,
        probabilities_key: Optional[str] = None,
        input_size: Optional[Tuple[int, int]] = None,
        input_range: Tuple[float, float] = (0.0, 1.0),
        input_channels: Optional[int] = None,
        batch_size: int = 64,
        name: Optional[str] = None,
    ):
        path = _require_file(path, "SavedModel feature network", "Supply the SavedModel directory of the network.")
        self.sha256 = artifacts.file_sha256(path)
        self._loaded = tf.saved_model.load(path)
        if signature not in self._loaded.signatures:
            raise ValueError(f"{path} has no signature {signature!r}; it has {sorted(self._loaded.signatures)}")
        self._signature = self._loaded.signatures[signature]
        inputs = sorted(self._signature.structured_input_signature[1])
        outputs = sorted(self._signature.structured_outputs)
        self._input_key = input_key or self._only(inputs, "input", path, signature)
        self._output_key = output_key or self._only(outputs, "output", path, signature)
        for key, available in ((self._input_key, inputs), (self._output_key, outputs)):
            if key not in available:
                raise ValueError(f"{path} signature {signature!r} has no {key!r}; it has {available}")
        if probabilities_key is not None and probabilities_key not in outputs:
            raise ValueError(f"{path} signature {signature!r} has no output {probabilities_key!r}; it has {outputs}")
        self._probabilities_key = probabilities_key
        self.has_probabilities = probabilities_key is not None
        self.name = name or f"{os.path.basename(os.path.normpath(path))}:{signature}"
        self.layer = f"{signature}/{self._output_key}"
        self.input_size = tuple(input_size) if input_size else None
        self.input_range = tuple(float(v) for v in input_range)
        self.input_channels = input_channels
        self.batch_size = int(batch_size)

    @staticmethod
    def _only(keys: Sequence[str], what: str, path: str, signature: str) -> str:
        if len(keys) != 1:
            raise ValueError(f"{path} signature {signature!r} has {what}s {list(keys)}: name one ({what}_key=)")
        return keys[0]

    def _run(self, images):
        result = self._signature(**{self._input_key: images})
        out = {"features": result[self._output_key]}
        if self._probabilities_key:
            out["probabilities"] = result[self._probabilities_key]
        return out


def inception_v3_file_has_top(path: str) -> bool:
    """Whether an InceptionV3 weights file holds the ImageNet top (its only Dense layer): a group 'predictions' in
    the legacy .h5 format (layer names), 'layers/dense' in Keras 3's .weights.h5 (class names). Keras 3 loads a
    file with the top into a notop model (and the reverse) with only a warning, so the variant is read from the file.
    """
    try:
        with h5py.File(path, "r") as f:
            names = []
            f.visit(names.append)
    except OSError as error:
        raise ValueError(f"{path} is not an HDF5 weights file (.h5 / .weights.h5): {error}") from error
    return any({"predictions", "dense"} & set(name.split("/")) for name in names)


def keras_inception_v3(weights_path: str, batch_size: int = 50) -> KerasFeatureNetwork:
    """A `keras.applications.InceptionV3` weights file (notop, or with the ImageNet top) -> proxy network.

    Features: the 2048-d global average pool ('avg_pool'); with the top, also the 1000-way 'predictions'. Input
    299 x 299 RGB in [-1, 1] (`inception_v3.preprocess_input`). A proxy: these weights are not the FID graph's.
    """
    path = _require_file(
        weights_path,
        "keras.applications.InceptionV3 weights file",
        "Supply an InceptionV3 weights file (e.g. inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5); "
        "nothing is downloaded. " + INCEPTION_HELP,
    )
    include_top = inception_v3_file_has_top(path)
    model = keras.applications.InceptionV3(
        include_top=include_top, weights=None, input_shape=(299, 299, 3), pooling=None if include_top else "avg"
    )
    try:
        model.load_weights(path)
    except (ValueError, KeyError) as error:
        raise ValueError(f"{path} is not an InceptionV3 weights file (include_top={include_top}): {error}") from error
    network = KerasFeatureNetwork(
        model,
        layer="avg_pool" if include_top else None,  # notop + pooling='avg': the pool is the output
        probabilities_layer="predictions" if include_top else None,
        input_size=(299, 299),
        input_range=(-1.0, 1.0),
        input_channels=3,
        batch_size=batch_size,
        name=f"keras.applications.InceptionV3:{os.path.basename(path)}",
    )
    network.sha256 = artifacts.file_sha256(path)
    network.layer = "avg_pool"
    return network


# ----------------------------------------------------------------------------------------------------------------
# Collecting features and the whole comparison.

ImageSource = Union[np.ndarray, Iterable]


def _image_batches(images: ImageSource, batch_size: int, max_images: Optional[int]):
    """Arrays `[n, H, W, C]` from an array (split in batches) or an iterable of arrays / {'images': array}."""
    if isinstance(images, (np.ndarray, tf.Tensor)):
        array = np.asarray(images)
        images = (array[start : start + batch_size] for start in range(0, len(array), batch_size))
    seen = 0
    for item in images:
        if isinstance(item, dict):
            if "images" not in item:
                raise ValueError(f"a dict batch needs an 'images' entry; got keys {sorted(item)}")
            item = item["images"]
        batch = np.asarray(item)
        if max_images is not None:
            batch = batch[: max(0, max_images - seen)]
        if len(batch):
            seen += len(batch)
            yield batch
        if max_images is not None and seen >= max_images:
            return


class _Reservoir:
    """Seeded uniform reservoir sample (algorithm R) of at most `capacity` feature rows, float32."""

    def __init__(self, capacity: int, seed):
        self.capacity = int(capacity)
        self.rng = np.random.default_rng(seed)
        self.rows: Optional[np.ndarray] = None
        self.seen = 0

    def update(self, features: np.ndarray):
        if self.capacity <= 0:
            return
        if self.rows is None:
            self.rows = np.empty((self.capacity, features.shape[1]), np.float32)
        for row in features:
            if self.seen < self.capacity:
                self.rows[self.seen] = row
            else:
                j = self.rng.integers(0, self.seen + 1)
                if j < self.capacity:
                    self.rows[j] = row
            self.seen += 1

    def sample(self) -> np.ndarray:
        if self.rows is None:
            return np.zeros((0, 0), np.float32)
        return self.rows[: min(self.seen, self.capacity)]


@dataclasses.dataclass
class CollectedFeatures:
    """One image set through one network: moments (FID), a reservoir of feature rows (KID; float32 `[<=cap, d]`),
    class probabilities (IS; float32 `[n, classes]` or None)."""

    moments: FeatureMoments
    kid_features: np.ndarray
    probabilities: Optional[np.ndarray]


def collect_features(
    images: ImageSource,
    network: FeatureNetwork,
    max_images: Optional[int] = None,
    kid_max_samples: int = 50_000,
    keep_probabilities: bool = False,
    seed=0,
) -> CollectedFeatures:
    """Streams `images` (an array, or an iterable of arrays / {'images': ...} batches, pixels in [0, 1]) through
    `network`: float64 moments of all features, a seeded reservoir of `kid_max_samples` rows, and (with
    `keep_probabilities` and a network that has them) every image's class probabilities."""
    moments = None
    reservoir = _Reservoir(kid_max_samples, seed)
    probabilities = []
    for batch in _image_batches(images, network.batch_size, max_images):
        out = network.outputs(batch)
        features = out["features"]
        if moments is None:
            moments = FeatureMoments.for_network(network, features.shape[1])
        moments.update(features)
        reservoir.update(features)
        if keep_probabilities and network.has_probabilities:
            probabilities.append(out["probabilities"].astype(np.float32))
    if moments is None:
        raise ValueError("no images to compute features of (empty image source)")
    return CollectedFeatures(
        moments=moments,
        kid_features=reservoir.sample(),
        probabilities=np.concatenate(probabilities) if probabilities else None,
    )


def sampled_images(sample: Callable, num: int, batch_size: int = 250, seed: int = 0):
    """Batches of `num` images from `sample(num, seed) -> images [num, H, W, C] in [0, 1]` (or {'images': ...}).

    Batch b is `sample(min(batch_size, left), batch_seed(seed, b))`, a seed derived from (seed, b) by
    `numpy.random.SeedSequence` (an int in [0, 2^62)), so batches never share a seed and the images depend only on
    (seed, batch_size). The exported SavedModel's `sample` signature fits as
    `lambda n, s: signature(num=tf.constant(n, tf.int32), seed=tf.constant(s, tf.int64))`.
    """
    if num < 1 or batch_size < 1:
        raise ValueError(f"num and batch_size must be >= 1; got {num}, {batch_size}")
    for b, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        out = sample(n, batch_seed(seed, b))
        images = np.asarray(out["images"] if isinstance(out, dict) else out)
        if images.ndim != 4 or len(images) != n:
            raise ValueError(f"sample({n}, ...) must return images [{n}, H, W, C]; got shape {images.shape}")
        yield images


def batch_seed(seed: int, batch: int) -> int:
    state = np.random.SeedSequence([int(seed), int(batch)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 30) ^ int(state[1])) & ((1 << 62) - 1)


def compare_features(
    real: CollectedFeatures,
    fake: CollectedFeatures,
    network: FeatureNetwork,
    kid_num_subsets: int = KID_NUM_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    is_num_splits: int = IS_NUM_SPLITS,
    seed=0,
) -> Dict:
    """The result dict of `sample_quality` from features already collected with `network`."""
    real.moments.check_network(network)
    fake.moments.check_network(network)
    result = dict(network=network.info(), num_real=int(real.moments.count), num_fake=int(fake.moments.count))
    result[network.metric_name("fid")] = frechet_distance_from_moments(real.moments, fake.moments)
    if len(real.kid_features) >= 2 and len(fake.kid_features) >= 2:
        kid = kernel_inception_distance(real.kid_features, fake.kid_features, kid_num_subsets, kid_subset_size, seed)
        result[network.metric_name("kid_mean")] = kid["mean"]
        result[network.metric_name("kid_sem")] = kid["sem"]
        result.update(
            kid_subset_size=kid["subset_size"],
            kid_num_subsets=kid["num_subsets"],
            kid_seed=kid["seed"],
            kid_num_real=len(real.kid_features),
            kid_num_fake=len(fake.kid_features),
        )
    if fake.probabilities is not None:
        score = inception_score(fake.probabilities, is_num_splits)
        result[network.metric_name("inception_score_mean")] = score["mean"]
        result[network.metric_name("inception_score_std")] = score["std"]
        result["inception_score_num_splits"] = score["num_splits"]
    return result


def sample_quality(
    real_images: ImageSource,
    fake_images: ImageSource,
    network: FeatureNetwork,
    max_real: Optional[int] = None,
    max_fake: Optional[int] = None,
    kid_num_subsets: int = KID_NUM_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    kid_max_samples: int = 50_000,
    inception_score_splits: Optional[int] = None,
    seed=0,
) -> Dict:
    """FID (or proxy_fid), KID mean / sem (or proxy_kid_*), optionally IS of the fake images, counts, network info.

    Args:
      real_images, fake_images: arrays `[n, H, W, C]` or iterables of such batches (or of {'images': ...}),
        pixels in [0, 1]; e.g. a dataset split and `sampled_images(sample, num)`.
      network: a `FeatureNetwork`; its `is_proxy` decides the metric names.
      max_real, max_fake: optional caps on the images used.
      kid_num_subsets, kid_subset_size: KID subsets (100 x 1000 conventional; m shrinks to the smaller set).
      kid_max_samples: feature rows kept per set for KID (seeded reservoir).
      inception_score_splits: with a network that has class probabilities, also the Inception Score of the fake
        images over this many splits (10 conventionally); None: no IS.
      seed: seeds the reservoirs and the KID subsets.

    Returns:
      {'fid' | 'proxy_fid', 'kid_mean' | 'proxy_kid_mean', 'kid_sem' | 'proxy_kid_sem', 'kid_subset_size',
       'kid_num_subsets', 'kid_seed', 'kid_num_real', 'kid_num_fake', 'num_real', 'num_fake',
       'network': {name, sha256, is_proxy, layer, input_size, input_range}[, 'inception_score_mean' |
       'proxy_inception_score_mean', ..._std, 'inception_score_num_splits']}.
    """
    keep = inception_score_splits is not None
    if keep and not network.has_probabilities:
        raise ValueError(f"{network.name} has no class probabilities: the Inception Score cannot be computed")
    real = collect_features(real_images, network, max_real, kid_max_samples, False, [int(seed), 0])
    fake = collect_features(fake_images, network, max_fake, kid_max_samples, keep, [int(seed), 1])
    return compare_features(
        real, fake, network, kid_num_subsets, kid_subset_size, inception_score_splits or IS_NUM_SPLITS, seed
    )
