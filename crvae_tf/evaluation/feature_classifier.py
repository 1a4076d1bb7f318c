"""The project's own offline feature network: a small conv-net classifier of MNIST digits or sprite shapes.

FID / KID need a feature network, and the standard one (the TF Inception graph) cannot be downloaded on an offline
machine; for 28 x 28 grayscale images it is also a poor judge. Like TF-GAN's `mnist_frechet_distance` /
`mnist_score` (a frozen MNIST classifier beside `tensorflow_gan/examples/mnist/util.py`), this module trains a
small classifier once (seeded) and uses it as a *proxy* feature network (`sample_quality.KerasFeatureNetwork`):

    features      = the penultimate layer 'features' (ReLU, `feature_dim` units): proxy FID / KID
    probabilities = the softmax layer 'probabilities' over the classes: proxy Inception Score (the "MNIST score")
                    and the classifier statistics of samples (`classifier_statistics`)

Architecture (`build_classifier`), for images `[batch, H, W, C]` in [0, 1]:
    conv 3x3 (widths[0]) ReLU -> max-pool 2 -> conv 3x3 (widths[1]) ReLU -> max-pool 2 -> flatten
    -> dense `feature_dim` ReLU ('features') -> dense `num_classes` softmax ('probabilities')
trained with Adam on the sparse categorical cross-entropy (mean over the batch), one seeded permutation of the
training images per epoch. Optionally (`blur_sigma_range`) a seeded random `blur_fraction` of each epoch's training
images is blurred, x' = G_sigma * x (a Gaussian kernel of standard deviation sigma ~ U(blur_sigma_range) pixels over
height and width, zero outside the image; `blur`), so that the network also names the shapes of blurred images, as a
VAE's Bernoulli means are: without it, the sprites classifier (test accuracy 1.0) named the shape of only 81.5% of
the quickstart run's reconstructions of 1,000 test sprites, and called 38.5% of them hearts (23.5% are).
Numbers from this network are comparable only with numbers from the same file (its sha256
is in every result). Classes: MNIST's digit labels (`ImageSplits.labels`), or the sprites' shape factor
(`ImageSplits.factors[split]['shape']`, 4 shapes). Gin-free: the recipe's hyperparameters are `feature_net.*`
bindings (`builders.feature_net_settings`) of the training binary's feature-network job, `train_and_save`:

    python -m crvae_tf.train --gin_file=gin/feature_net/mnist.gin --model_dir=runs/feature_net_mnist \
        --gin_bindings="dataset.local_path='../shared/data/mnist/mnist.npz'"
    python -m crvae_tf.train --gin_file=gin/feature_net/sprites.gin --model_dir=runs/feature_net_sprites

(the recipes bind `job.kind = 'feature_net'`). It writes MODEL_DIR/feature_net.keras (layer 'features' = proxy FID /
KID features, layer 'probabilities' = softmax) and MODEL_DIR/feature_net.json (test and validation accuracy, per-epoch
log, training seconds, the file's sha256, the config), each atomically, and never replaces an existing
feature_net.keras (its sha256 identifies the numbers computed with it); the binary's last line of stdout is that JSON
(without the config).
"""

import io
import json
import os
import tempfile
import time
from typing import Dict
from typing import Optional
from typing import Sequence
from typing import Tuple

from absl import logging
import keras
import numpy as np
from scipy import ndimage

from crvae_tf import artifacts
from crvae_tf.evaluation.results import device_types
from crvae_tf.evaluation.results import provenance

FEATURES_LAYER = "features"
PROBABILITIES_LAYER = "probabilities"
MODEL_FILE = "feature_net.keras"
INFO_FILE = "feature_net.json"


def class_labels(splits, split: str) -> np.ndarray:
    """int64 `[num_images]` class labels of a split: MNIST digits (`splits.labels`) or the sprites' shape index.

    Raises:
      ValueError: the dataset has neither (e.g. MNIST read from tfds, whose reader keeps no labels).
    """
    if splits.labels is not None and splits.labels.get(split) is not None:
        return np.asarray(splits.labels[split], np.int64)
    if splits.factors is not None and splits.factors.get(split) is not None and "shape" in splits.factors[split]:
        return np.asarray(splits.factors[split]["shape"], np.int64)
    raise ValueError(
        f"the {splits.name!r} dataset ({splits.source}) has no class labels for its {split} split: the classifier "
        "needs MNIST read from a keras-layout mnist.npz with labels (dataset.local_path) or the sprites."
    )


def build_classifier(
    image_shape: Sequence[int],
    num_classes: int,
    widths: Sequence[int] = (32, 64),
    feature_dim: int = 128,
    seed: int = 0,
) -> keras.Model:
    """The classifier of the module docstring, float32, with seeded initialisers (same seed, same weights)."""
    if len(widths) != 2 or min(widths) < 1 or feature_dim < 1 or num_classes < 2:
        raise ValueError(
            f"widths must be two positive ints, feature_dim >= 1 and num_classes >= 2; got {widths}, {feature_dim}, "
            f"{num_classes}"
        )

    def init(offset):
        return keras.initializers.GlorotUniform(seed=int(seed) * 16 + offset)

    inputs = keras.Input(tuple(int(d) for d in image_shape), name="images")
    x = keras.layers.Conv2D(int(widths[0]), 3, padding="same", activation="relu", kernel_initializer=init(0))(inputs)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Conv2D(int(widths[1]), 3, padding="same", activation="relu", kernel_initializer=init(1))(x)
    x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    features = keras.layers.Dense(int(feature_dim), activation="relu", kernel_initializer=init(2), name=FEATURES_LAYER)(
        x
    )
    probabilities = keras.layers.Dense(
        int(num_classes), activation="softmax", kernel_initializer=init(3), name=PROBABILITIES_LAYER
    )(features)
    return keras.Model(inputs, probabilities, name="feature_classifier")


def accuracy(model: keras.Model, images: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Fraction of `images` `[n, H, W, C]` whose arg-max class is `labels` `[n]`."""
    probabilities = model.predict(np.asarray(images, np.float32), batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=1) == np.asarray(labels)))


def blur(images: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """Each image `[n, H, W, C]` convolved with a 2-d Gaussian of standard deviation `sigmas[i]` pixels (height and
    width only; zero outside the image; sigma 0 leaves the image unchanged)."""
    out = np.array(images, np.float32, copy=True)
    for i, sigma in enumerate(np.asarray(sigmas, np.float64)):
        if sigma > 0:
            out[i] = ndimage.gaussian_filter(out[i], sigma=(sigma, sigma, 0.0), mode="constant", cval=0.0)
    return out


def train_classifier(
    model: keras.Model,
    images: np.ndarray,
    labels: np.ndarray,
    num_epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int = 0,
    validation=None,
    log=print,
    blur_sigma_range: Optional[Tuple[float, float]] = None,
    blur_fraction: float = 0.5,
) -> Dict:
    """Adam on the mean cross-entropy, `num_epochs` passes over seeded permutations of (images, labels).

    Args:
      model: `build_classifier`'s model (compiled here).
      images: float32 `[n, H, W, C]` in [0, 1]; labels: int `[n]`.
      num_epochs, batch_size, learning_rate: the recipe's `feature_net.*`.
      seed: the permutation of epoch e is `default_rng([seed, e]).permutation(n)`; its blurred images and their
        sigmas are drawn from `default_rng([seed, e, 1])`.
      validation: optional (images, labels) scored after every epoch.
      log: called with one line per epoch.
      blur_sigma_range: None (no blur), or (low, high): blur a `blur_fraction` of each epoch's images (`blur`) with
        sigma ~ U(low, high) pixels.

    Returns:
      {'epochs': [{'epoch', 'loss', 'train_accuracy', 'validation_accuracy', 'seconds'}], 'train_seconds'}.
    """
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    images = np.asarray(images, np.float32)
    labels = np.asarray(labels, np.int64)
    history, total = [], 0.0
    if blur_sigma_range is not None:
        low, high = (float(v) for v in blur_sigma_range)
        if not 0.0 <= low <= high or not 0.0 <= blur_fraction <= 1.0:
            raise ValueError(
                f"blur_sigma_range must be 0 <= low <= high and blur_fraction in [0, 1]; got "
                f"{blur_sigma_range}, {blur_fraction}"
            )
    for epoch in range(int(num_epochs)):
        order = np.random.default_rng([int(seed), epoch]).permutation(len(images))
        start = time.perf_counter()
        epoch_images = images[order]
        if blur_sigma_range is not None:
            rng = np.random.default_rng([int(seed), epoch, 1])
            sigmas = np.where(rng.uniform(size=len(images)) < blur_fraction, rng.uniform(low, high, len(images)), 0.0)
            epoch_images = blur(epoch_images, sigmas)
        fit = model.fit(epoch_images, labels[order], batch_size=int(batch_size), epochs=1, shuffle=False, verbose=0)
        seconds = time.perf_counter() - start
        total += seconds
        row = dict(
            epoch=epoch + 1,
            loss=float(fit.history["loss"][-1]),
            train_accuracy=float(fit.history["accuracy"][-1]),
            seconds=round(seconds, 2),
        )
        if validation is not None:
            row["validation_accuracy"] = accuracy(model, *validation)
        history.append(row)
        log(json.dumps(row))
    return dict(epochs=history, train_seconds=round(total, 2))


def save(model: keras.Model, folder: str, info: Dict) -> Dict:
    """Writes `folder/feature_net.keras` and `folder/feature_net.json` (`info` + the model file's path and sha256),
    each atomically; returns the JSON written."""
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=artifacts.TMP_PREFIX, suffix=".keras", dir=folder)
    os.close(fd)
    path = os.path.join(folder, MODEL_FILE)
    try:
        model.save(tmp)
        with open(tmp, "rb") as f:
            payload = f.read()
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    artifacts.atomic_write_bytes(path, payload)
    info = dict(
        info,
        model_path=os.path.abspath(path),
        sha256=artifacts.file_sha256(path),
        features_layer=FEATURES_LAYER,
        probabilities_layer=PROBABILITIES_LAYER,
    )
    buffer = io.StringIO()
    json.dump(info, buffer, indent=2, allow_nan=False)
    artifacts.atomic_write_text(os.path.join(folder, INFO_FILE), buffer.getvalue() + "\n")
    return info


def refuse_existing(model_dir: str) -> None:
    """Raises FileExistsError when `model_dir` already holds a feature_net.keras (never replaced)."""
    path = os.path.join(model_dir, MODEL_FILE)
    if os.path.exists(path):
        raise FileExistsError(
            f"{path} exists: a trained feature network is never replaced (numbers computed with it carry its "
            "sha256). Delete it or choose another --model_dir."
        )


def train_and_save(model_dir: str, settings: Dict, splits, config: str = "") -> Dict:
    """Trains the classifier of `settings` on `splits` and saves it into `model_dir` (`save`; module docstring).

    Args:
      model_dir: the output folder; one that holds a feature_net.keras is refused (`refuse_existing`).
      settings: `builders.feature_net_settings()` (num_epochs, batch_size, learning_rate, widths, feature_dim, seed,
        max_train_images, blur_sigma_range, blur_fraction).
      splits: the gray `data.ImageSplits` (MNIST-family, 28x28) whose labels `class_labels` gives.
      config: the gin config text recorded in feature_net.json (provenance).

    Returns:
      feature_net.json's content.

    Raises:
      FileExistsError: `model_dir` holds a feature_net.keras.
      ValueError: an RGB dataset, or one without class labels.
    """
    start = time.perf_counter()
    refuse_existing(model_dir)
    if splits.train.dtype == np.uint8:
        raise ValueError(f"the feature network takes the 28x28 MNIST-family images; dataset {splits.name!r} is RGB.")
    labels = {split: class_labels(splits, split) for split in ("train", "validation", "test")}
    images = {split: np.asarray(splits.split(split), np.float32) for split in ("train", "validation", "test")}
    if settings["max_train_images"] is not None:
        images["train"] = images["train"][: settings["max_train_images"]]
        labels["train"] = labels["train"][: settings["max_train_images"]]
    num_classes = int(max(int(np.max(labels[s])) for s in labels if len(labels[s])) + 1)
    model = build_classifier(
        splits.image_shape, num_classes, settings["widths"], settings["feature_dim"], settings["seed"]
    )
    logging.info(
        "Training the %s classifier (%d classes) on %d images; validating on %d, testing on %d.",
        splits.name,
        num_classes,
        len(images["train"]),
        len(images["validation"]),
        len(images["test"]),
    )
    validation = (images["validation"], labels["validation"]) if len(images["validation"]) else None
    history = train_classifier(
        model,
        images["train"],
        labels["train"],
        settings["num_epochs"],
        settings["batch_size"],
        settings["learning_rate"],
        settings["seed"],
        validation=validation,
        log=logging.info,
        blur_sigma_range=settings["blur_sigma_range"],
        blur_fraction=settings["blur_fraction"],
    )
    info = dict(
        dataset=splits.name,
        source=splits.source,
        num_classes=num_classes,
        image_shape=[int(d) for d in splits.image_shape],
        num_train=int(len(images["train"])),
        num_test=int(len(images["test"])),
        test_accuracy=accuracy(model, images["test"], labels["test"]),
        validation_accuracy=(accuracy(model, *validation) if validation is not None else None),
        settings=settings,
        epochs=history["epochs"],
        train_seconds=history["train_seconds"],
        wall_time_s=None,
        hardware=dict(cpu_count=os.cpu_count(), devices=device_types()),
        config=config,
        **provenance(),
    )
    info["wall_time_s"] = round(time.perf_counter() - start, 2)
    return save(model, model_dir, info)


def class_fractions(classes: np.ndarray, num_classes: int) -> np.ndarray:
    """float64 `[num_classes]`: the fraction of `classes` `[n]` (ints) equal to each class."""
    classes = np.asarray(classes, np.int64)
    return np.bincount(classes, minlength=int(num_classes))[: int(num_classes)] / max(len(classes), 1)


def classifier_statistics(
    fake_probabilities: np.ndarray,
    real_probabilities: np.ndarray,
    real_labels: Optional[np.ndarray],
    confidence_threshold: float = 0.9,
) -> Dict:
    """What a classifier says about unlabelled samples, beside its accuracy on the labelled real images.

    A prior sample has no label, so its "accuracy" is not defined; reported instead, with p = p(y|x) `[n, classes]`:
      real_accuracy              mean_i [argmax p(real_i) = label_i] (the yardstick: the network on real images)
      sample_confidence          mean_i max_y p(y | fake_i)
      sample_confident_fraction  mean_i [max_y p(y | fake_i) >= confidence_threshold]: recognisable samples
      real_confident_fraction    the same for the real images
      sample_class_fractions     fraction of samples per arg-max class `[classes]`
      real_class_fractions       fraction of real images per label (per arg-max class without labels)
      sample_class_tv            total variation 0.5 sum_y |sample_class_fractions - real_class_fractions|
    """
    fake = np.asarray(fake_probabilities, np.float64)
    real = np.asarray(real_probabilities, np.float64)
    if fake.ndim != 2 or real.ndim != 2 or fake.shape[1] != real.shape[1]:
        raise ValueError(f"probabilities must be [n, classes] of one class count; got {fake.shape}, {real.shape}")
    if not 0.0 < confidence_threshold <= 1.0:
        raise ValueError(f"confidence_threshold must be in (0, 1]; got {confidence_threshold}")
    classes = fake.shape[1]
    real_predicted = np.argmax(real, axis=1)
    fake_fractions = class_fractions(np.argmax(fake, axis=1), classes)
    real_fractions = class_fractions(real_predicted if real_labels is None else real_labels, classes)
    result = dict(
        classifier_real_accuracy=None,
        classifier_sample_confidence=float(np.mean(np.max(fake, axis=1))),
        classifier_sample_confident_fraction=float(np.mean(np.max(fake, axis=1) >= confidence_threshold)),
        classifier_real_confident_fraction=float(np.mean(np.max(real, axis=1) >= confidence_threshold)),
        classifier_confidence_threshold=float(confidence_threshold),
        classifier_sample_class_fractions=[float(v) for v in fake_fractions],
        classifier_real_class_fractions=[float(v) for v in real_fractions],
        classifier_sample_class_tv=float(0.5 * np.sum(np.abs(fake_fractions - real_fractions))),
    )
    if real_labels is not None:
        labels = np.asarray(real_labels)
        if labels.shape != (len(real),):
            raise ValueError(f"real_labels must be [{len(real)}]; got {labels.shape}")
        result["classifier_real_accuracy"] = float(np.mean(real_predicted == labels))
    return result
