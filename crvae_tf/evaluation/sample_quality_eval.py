"""Sample quality of what the project ships: a run's checkpoint or an exported SavedModel's `sample` signature,
compared with a dataset split in a feature network's space (`python -m crvae_tf.evaluate --metrics=fid,kid,...`).

    fake images: `sampled_images(sample, num_samples, sample_batch_size, seed)` (`sample_quality`): batch b is
                 `sample(n_b, batch_seed(seed, b))`, where `sample(n, s)` draws z = stateless_normal([n, D],
                 seed=[s, SAMPLE_SEED_SALT], alg='philox') and decodes it: the export's `sample` signature, or the
                 same op and the run's own generator (float32) for a run. The same checkpoint therefore gives the same
                 images either way (up to float rounding; tested).
    real images: the evaluated split of the run's own dataset (`dataset.*`, as trained: for MNIST the gray
                 images, not the binarized test set of `eval_dataset.*`, since the samples are Bernoulli means),
                 optionally `max_images` of them spread evenly over the split.
    metrics:     'fid' (Frechet distance of the feature Gaussians), 'kid' (unbiased MMD^2, mean and standard error
                 over subsets), 'is' (Inception Score of the samples), 'classifier_accuracy' (the network's accuracy
                 on the real split and its confidence / class balance on the samples:
                 `feature_classifier.classifier_statistics`); the math is in `sample_quality`. Only the TF
                 Inception graph gives 'fid' / 'kid_*' / 'inception_score_*'; every other network gives 'proxy_*'
                 names and `network.is_proxy: true`.

The real split's features (float64 moments, the KID reservoir and class probabilities) are cached in
`cache_dir/<key>.npz`, key = sha256 of (the real pixels' sha256, the network's sha256, layer and preprocessing, the
reservoir size and seed), so evaluating several checkpoints or runs on the same split computes them once. The
result JSON goes to
`OUT/eval/sample_quality-<split>-step<step>-s<num_samples>-<network sha256[:12]>[-n<max>][-seed<S>].json`
(`results.sample_quality_stem`), atomically; OUT is the run directory, or the export's base directory (the folder
of its numbered versions, which TF Serving ignores non-numeric entries of). Gin-free: the binary reads the settings
(`Settings`) from its `sample_quality.*` configurable.
"""

import dataclasses
import hashlib
import io
import json
import os
import time
from typing import Callable
from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf.evaluation import feature_classifier
from crvae_tf.evaluation import sample_quality as sq
from crvae_tf.evaluation.results import EVAL_DIR
from crvae_tf.evaluation.results import device_types
from crvae_tf.evaluation.results import provenance
from crvae_tf.evaluation.results import sample_quality_stem

METRICS = ("fid", "kid", "is", "classifier_accuracy")
FEATURE_NETWORKS = ("inception", "classifier", "keras", "saved_model", "keras_inception_v3")
# The second word of the stateless seed of z, as the export's `sample` signature (serving.endpoints.SAMPLE_SEED_SALT;
# the tests check they agree): a run and its export draw the same z for the same seed.
SAMPLE_SEED_SALT = 0
MAX_EXPORT_SAMPLE_NUM = 4096  # the `sample` signature's largest `num` (serving.endpoints.MAX_SAMPLE_NUM)
EXPORT_METADATA_FILE = os.path.join("assets.extra", "crvae_tf_metadata.json")
EXPORT_CONFIG_FILE = os.path.join("assets.extra", "operative_config.gin")
DEFAULT_CACHE_DIR = os.path.join("~", ".cache", "crvae_tf", "feature_moments")
CACHE_FORMAT = "crvae_tf.real_features/1"
REAL_RESERVOIR_SEED = (0, 0)  # the real rows kept for KID when there are more than kid_max_samples


@dataclasses.dataclass(frozen=True)
class Settings:
    """What `sample_quality.*` binds (one home each; the binary's gin configurable builds this).

    Attributes:
      feature_network: 'inception' (the TF Inception graph at `inception_path`: results named fid / kid),
        'classifier' (the project's own classifier, `python -m crvae_tf.train --gin_file=gin/feature_net/mnist.gin`,
        at `feature_network_path`), 'keras' (any Keras model file; `feature_layer`, `probabilities_layer`),
        'saved_model' (a SavedModel's serving_default; `feature_layer` / `probabilities_layer` name its outputs) or
        'keras_inception_v3' (an InceptionV3 weights file). All but 'inception' are proxies.
      inception_path: `classify_image_graph_def.pb` (or its folder); read only with feature_network='inception'.
      feature_network_path: the proxy network's file or folder.
      feature_layer, probabilities_layer: for 'keras' / 'saved_model' (None: the only output / no probabilities).
      num_samples: prior samples drawn.
      sample_batch_size: samples per `sample` call (<= 4096, the export's limit); with the seed, fixes the images.
      network_batch_size: images per feature-network call (speed only).
      kid_num_subsets, kid_subset_size, kid_max_samples: KID subsets (100 x 1000) and the feature rows kept per set.
      inception_score_splits: IS splits (10).
      confidence_threshold: a sample is "recognised" when the classifier's max probability reaches it.
      cache_dir: the real features' cache (None: ~/.cache/crvae_tf/feature_moments).
    """

    feature_network: str = "inception"
    inception_path: Optional[str] = None
    feature_network_path: Optional[str] = None
    feature_layer: Optional[str] = None
    probabilities_layer: Optional[str] = None
    num_samples: int = 10000
    sample_batch_size: int = 250
    network_batch_size: int = 100
    kid_num_subsets: int = sq.KID_NUM_SUBSETS
    kid_subset_size: int = sq.KID_SUBSET_SIZE
    kid_max_samples: int = 50_000
    inception_score_splits: int = sq.IS_NUM_SPLITS
    confidence_threshold: float = 0.9
    cache_dir: Optional[str] = None

    def __post_init__(self):
        if self.feature_network not in FEATURE_NETWORKS:
            raise ValueError(
                f"sample_quality.feature_network={self.feature_network!r} is not one of {list(FEATURE_NETWORKS)}."
            )
        if self.inception_path is not None and self.feature_network != "inception":
            raise ValueError(
                f"sample_quality.inception_path is read only with feature_network='inception', not "
                f"{self.feature_network!r}: unbind one of them."
            )
        for name in ("num_samples", "sample_batch_size", "network_batch_size", "kid_num_subsets", "kid_subset_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"sample_quality.{name}={value!r} must be a positive int.")
        if self.sample_batch_size > MAX_EXPORT_SAMPLE_NUM:
            raise ValueError(
                f"sample_quality.sample_batch_size={self.sample_batch_size} exceeds the export's `sample` limit "
                f"{MAX_EXPORT_SAMPLE_NUM}."
            )
        if not isinstance(self.kid_max_samples, int) or self.kid_max_samples < 2:
            raise ValueError(f"sample_quality.kid_max_samples={self.kid_max_samples!r} must be an int >= 2.")
        if not isinstance(self.inception_score_splits, int) or self.inception_score_splits < 1:
            raise ValueError(f"sample_quality.inception_score_splits={self.inception_score_splits!r} must be >= 1.")
        if not 0.0 < float(self.confidence_threshold) <= 1.0:
            raise ValueError(f"sample_quality.confidence_threshold={self.confidence_threshold!r} must be in (0, 1].")


def feature_network(settings: Settings) -> sq.FeatureNetwork:
    """The `FeatureNetwork` the settings name; a missing file raises `sq.MissingFeatureNetworkError` naming the
    binding to set."""
    kind, path, batch = settings.feature_network, settings.feature_network_path, settings.network_batch_size
    if kind == "inception":
        return sq.InceptionGraphDef(settings.inception_path, batch_size=batch)
    if not path:
        hint = (
            " Train the project's classifier with python -m crvae_tf.train "
            "--gin_file=gin/feature_net/mnist.gin (or sprites.gin) and pass its feature_net.keras."
            if kind == "classifier"
            else ""
        )
        raise sq.MissingFeatureNetworkError(
            f"sample_quality.feature_network={kind!r} needs sample_quality.feature_network_path (the network's "
            f"file or folder).{hint} Nothing is downloaded."
        )
    if kind == "classifier":
        return sq.KerasFeatureNetwork(
            path,
            layer=feature_classifier.FEATURES_LAYER,
            probabilities_layer=feature_classifier.PROBABILITIES_LAYER,
            batch_size=batch,
        )
    if kind == "keras":
        return sq.KerasFeatureNetwork(
            path, layer=settings.feature_layer, probabilities_layer=settings.probabilities_layer, batch_size=batch
        )
    if kind == "saved_model":
        return sq.SavedModelFeatureNetwork(
            path, output_key=settings.feature_layer, probabilities_key=settings.probabilities_layer, batch_size=batch
        )
    return sq.keras_inception_v3(path, batch_size=batch)


# ----------------------------------------------------------------------------------------------------------------
# What is sampled.


def run_sampler(model) -> Callable[[int, int], np.ndarray]:
    """`sample(num, seed) -> float32 [num, H, W, C]` in [0, 1] from a restored model (`model.generate`), with the
    export's z: stateless_normal([num, D], seed=[seed, SAMPLE_SEED_SALT], alg='philox')."""
    latent_dim = int(model.latent_dim)

    def generate(z):
        return tf.cast(model.generate(z), tf.float32)

    generate = tf.function(generate, input_signature=[tf.TensorSpec([None, latent_dim], tf.float32)], autograph=False)

    def sample(num: int, seed: int) -> np.ndarray:
        z = tf.random.stateless_normal(
            [int(num), latent_dim],
            seed=tf.constant([int(seed), SAMPLE_SEED_SALT], tf.int64),
            dtype=tf.float32,
            alg="philox",
        )
        return generate(z).numpy()

    return sample


def resolve_export(path: str) -> Tuple[str, str]:
    """(version folder, base folder) of an export: `path` is a version (holds saved_model.pb) or the base folder of
    numbered versions (the newest is taken)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--export_dir={path} is not a directory (paths are relative to {os.getcwd()}).")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path, os.path.dirname(os.path.abspath(path))
    versions = sorted(
        int(name) for name in os.listdir(path) if name.isdigit() and os.path.isdir(os.path.join(path, name))
    )
    if not versions:
        raise FileNotFoundError(
            f"{path} holds no SavedModel: neither saved_model.pb nor numbered version folders (write one with "
            "python -m crvae_tf.export --model_dir=RUN --export_dir=...)."
        )
    return os.path.join(path, str(versions[-1])), os.path.abspath(path)


def export_metadata(version_dir: str) -> Dict:
    path = os.path.join(version_dir, EXPORT_METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: {version_dir} was not written by python -m crvae_tf.export.")
    with open(path) as f:
        return json.load(f)


def export_sampler(version_dir: str) -> Callable[[int, int], np.ndarray]:
    """`sample(num, seed)` through the export's `sample` signature (num int32, seed int64 -> images)."""
    loaded = tf.saved_model.load(version_dir)
    if "sample" not in loaded.signatures:
        raise ValueError(f"{version_dir} has no `sample` signature; it has {sorted(loaded.signatures)}.")
    signature = loaded.signatures["sample"]

    def sample(num: int, seed: int) -> np.ndarray:
        return signature(num=tf.constant(int(num), tf.int32), seed=tf.constant(int(seed), tf.int64))["images"].numpy()

    sample.loaded = loaded  # keeps the SavedModel's resources alive as long as the sampler
    return sample


# ----------------------------------------------------------------------------------------------------------------
# The real split and its cached features.


def real_split(splits, split: str, max_images: Optional[int] = None):
    """(images `[N, H, W, C]` as stored (float32 [0, 1] or uint8), class labels `[N]` or None, row indices or None)
    of the evaluated split; `max_images` rows spread evenly (round(linspace(0, N - 1, max_images)))."""
    images = splits.split(split)
    try:
        labels = feature_classifier.class_labels(splits, split)
    except ValueError:
        labels = None
    subset = None
    if max_images is not None and max_images < len(images):
        subset = np.unique(np.round(np.linspace(0, len(images) - 1, max_images)).astype(np.int64))
        images = images[subset]
        labels = labels[subset] if labels is not None else None
    if len(images) < 2:
        raise ValueError(f"the {split} split of {splits.name!r} has {len(images)} images; FID needs at least 2.")
    return images, labels, subset


def pixels_sha256(images) -> str:
    """sha256 of the pixels as stored (dtype, shape, then row-major bytes, in blocks of 1,024 images)."""
    digest = hashlib.sha256(f"{np.asarray(images[:1]).dtype.str}{tuple(np.shape(images))}".encode())
    for start in range(0, len(images), 1024):
        digest.update(np.ascontiguousarray(images[start : start + 1024]).tobytes())
    return digest.hexdigest()


def _unit_batches(images, batch_size: int):
    """Batches of float32 pixels in [0, 1] (uint8 arrays divided by 255 one batch at a time)."""
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size])
        yield batch.astype(np.float32) / 255.0 if batch.dtype == np.uint8 else batch.astype(np.float32)


def cache_key(data_sha256: str, network: sq.FeatureNetwork, kid_max_samples: int, seed) -> Dict:
    """What the real features depend on (its sha256 names the cache file)."""
    return dict(
        format=CACHE_FORMAT,
        data_sha256=data_sha256,
        network=network.info(),
        input_channels=network.input_channels,
        kid_max_samples=int(kid_max_samples),
        reservoir_seed=[int(s) for s in np.atleast_1d(seed)],
    )


def _cache_path(cache_dir: str, key: Dict) -> str:
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return os.path.join(os.path.expanduser(cache_dir), name + ".npz")


def load_cached_features(path: str, key: Dict, network: sq.FeatureNetwork, need_probabilities: bool):
    """The cached `CollectedFeatures` at `path`, or None (absent, written for another key, unreadable, or without
    the probabilities asked for)."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            if json.loads(str(saved["key"])) != json.loads(json.dumps(key)):
                logging.warning("Ignoring %s: written for other real features.", path)
                return None
            if need_probabilities and "probabilities" not in saved.files:
                return None
            moments = sq.FeatureMoments(int(saved["outer_sum"].shape[0]), network.name, network.sha256, network.layer)
            moments.count = int(saved["count"])
            moments.sum = np.array(saved["sum"], np.float64)
            moments.outer_sum = np.array(saved["outer_sum"], np.float64)
            kid = np.array(saved["kid_features"], np.float32)
            probabilities = np.array(saved["probabilities"], np.float32) if "probabilities" in saved.files else None
    except Exception as error:  # a damaged or foreign file is recomputed, never trusted
        logging.warning("Ignoring unreadable %s (%s).", path, error)
        return None
    return sq.CollectedFeatures(moments=moments, kid_features=kid, probabilities=probabilities)


def save_cached_features(path: str, key: Dict, features: sq.CollectedFeatures) -> None:
    arrays = dict(
        key=np.array(json.dumps(key, sort_keys=True)),
        count=np.int64(features.moments.count),
        sum=features.moments.sum,
        outer_sum=features.moments.outer_sum,
        kid_features=features.kid_features,
    )
    if features.probabilities is not None:
        arrays["probabilities"] = features.probabilities
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    artifacts.atomic_write_bytes(path, buffer.getvalue())


def real_features(images, network: sq.FeatureNetwork, settings: Settings, data_sha256: str):
    """(CollectedFeatures of the real images, {'path', 'hit'}), from the cache when it holds them. The KID reservoir
    of the real rows is seeded by `REAL_RESERVOIR_SEED`, not by the samples' seed, so every seed reuses the entry."""
    reservoir_seed = list(REAL_RESERVOIR_SEED)
    key = cache_key(data_sha256, network, settings.kid_max_samples, reservoir_seed)
    path = _cache_path(settings.cache_dir or DEFAULT_CACHE_DIR, key)
    cached = load_cached_features(path, key, network, network.has_probabilities)
    if cached is not None:
        logging.info("Real features from the cache %s.", path)
        return cached, dict(path=path, hit=True)
    features = sq.collect_features(
        _unit_batches(images, max(network.batch_size, 1)),
        network,
        kid_max_samples=settings.kid_max_samples,
        keep_probabilities=network.has_probabilities,
        seed=reservoir_seed,
    )
    save_cached_features(path, key, features)
    return features, dict(path=path, hit=False)


# ----------------------------------------------------------------------------------------------------------------
# The evaluation.


def check_metrics(metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"sample-quality metrics must be among {list(METRICS)}; got {list(metrics)}")


def evaluate_samples(
    sample: Callable[[int, int], np.ndarray],
    splits,
    split: str,
    network: sq.FeatureNetwork,
    settings: Settings,
    metrics: Sequence[str],
    step: int,
    output_dir: str,
    source: Dict,
    seed: int = 0,
    max_images: Optional[int] = None,
) -> Dict:
    """Computes `metrics` of `settings.num_samples` samples against the real split; writes and returns the result.

    Args:
      sample: `sample(num, seed) -> [num, H, W, C]` in [0, 1] (`run_sampler` / `export_sampler`).
      splits: the `data.ImageSplits` the real images come from; `split`: 'test' or 'validation'.
      network: the feature network (`feature_network(settings)`).
      settings: `Settings`.
      metrics: a subset of `METRICS`.
      step: the checkpoint's training step (in the file name).
      output_dir: the result goes to `output_dir/eval/<sample_quality_stem>.json`.
      source: what was sampled ({'kind': 'run' | 'export', paths, checkpoint}); recorded.
      seed: the samples' seed (`sampled_images`), their KID reservoir's and the KID subsets'.
      max_images: cap on the real images (spread evenly over the split; recorded, and in the file name).

    Returns:
      The result dict: the metric values (`proxy_fid` / `fid`, `proxy_kid_mean`, `proxy_kid_sem`, IS, classifier
      statistics), `network` {name, sha256, is_proxy, layer, ...}, `num_real`, `num_fake`, `split`, `dataset`,
      `data_sha256`, `real_features_cache`, `step`, `source`, `seed`, settings and timings (`budget`).
    """
    start = time.perf_counter()
    metrics = list(dict.fromkeys(metrics))
    check_metrics(metrics)
    if ("is" in metrics or "classifier_accuracy" in metrics) and not network.has_probabilities:
        raise ValueError(
            f"--metrics={','.join(metrics)}: the feature network {network.name} has no class probabilities, so "
            "'is' and 'classifier_accuracy' cannot be computed (use feature_network='classifier', or name "
            "sample_quality.probabilities_layer)."
        )
    images, labels, _ = real_split(splits, split, max_images)
    if "classifier_accuracy" in metrics and labels is None:
        raise ValueError(
            f"classifier_accuracy needs class labels of the real {split} images; {splits.name!r} ({splits.source}) "
            "has none."
        )
    data_sha256 = pixels_sha256(images)
    real, cache = real_features(images, network, settings, data_sha256)
    real_seconds = time.perf_counter() - start
    logging.info("Sampling %d images (seed %d) for %s.", settings.num_samples, seed, ", ".join(metrics))
    sample_start = time.perf_counter()
    fake = sq.collect_features(
        sq.sampled_images(sample, settings.num_samples, settings.sample_batch_size, seed),
        network,
        kid_max_samples=settings.kid_max_samples,
        keep_probabilities=network.has_probabilities,
        seed=[int(seed), 1],
    )
    fake_seconds = time.perf_counter() - sample_start
    name = network.metric_name
    result = dict(metrics_computed=metrics, network=network.info(), num_real=int(real.moments.count))
    result["num_fake"] = int(fake.moments.count)
    metric_start = time.perf_counter()
    if "fid" in metrics:
        result[name("fid")] = sq.frechet_distance_from_moments(real.moments, fake.moments)
    if "kid" in metrics:
        kid = sq.kernel_inception_distance(
            real.kid_features, fake.kid_features, settings.kid_num_subsets, settings.kid_subset_size, seed
        )
        result[name("kid_mean")] = kid["mean"]
        result[name("kid_sem")] = kid["sem"]
        result.update(kid_subset_size=kid["subset_size"], kid_num_subsets=kid["num_subsets"], kid_seed=kid["seed"])
    if "is" in metrics:
        score = sq.inception_score(fake.probabilities, settings.inception_score_splits)
        result[name("inception_score_mean")] = score["mean"]
        result[name("inception_score_std")] = score["std"]
        result["inception_score_num_splits"] = score["num_splits"]
    if "classifier_accuracy" in metrics:
        result.update(
            feature_classifier.classifier_statistics(
                fake.probabilities, real.probabilities, labels, settings.confidence_threshold
            )
        )
    metric_seconds = time.perf_counter() - metric_start
    stem = sample_quality_stem(split, step, settings.num_samples, network.sha256, max_images, seed)
    path = os.path.join(os.path.abspath(output_dir), EVAL_DIR, stem + ".json")
    result.update(
        split=split,
        dataset=splits.name,
        dataset_source=splits.source,
        data_sha256=data_sha256,
        num_images_in_split=int(len(splits.split(split))),
        max_images=max_images,
        real_features_cache=cache,
        step=int(step),
        source=source,
        seed=int(seed),
        settings=dataclasses.asdict(settings),
        budget=dict(
            num_samples=int(settings.num_samples),
            num_real=int(real.moments.count),
            real_features_s=round(real_seconds, 3),
            sampling_and_features_s=round(fake_seconds, 3),
            metrics_s=round(metric_seconds, 3),
            wall_time_s=None,
            cpu_count=os.cpu_count(),
            devices=device_types(),
        ),
        result_path=path,
        **provenance(),
    )
    result["budget"]["wall_time_s"] = round(time.perf_counter() - start, 3)
    artifacts.atomic_write_text(path, json.dumps(result, indent=2, allow_nan=False) + "\n")
    logging.info("%s: %s", path, {k: v for k, v in result.items() if "fid" in k or "kid_mean" in k})
    return result
