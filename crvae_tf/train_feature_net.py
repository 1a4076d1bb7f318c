r"""Trains the project's offline feature network (a small MNIST-digit or sprite-shape classifier) for sample quality.

    python -m crvae_tf.train_feature_net --gin_file=gin/feature_net/mnist.gin --model_dir=runs/feature_net_mnist \
        --gin_bindings="dataset.local_path='../shared/data/mnist/mnist.npz'"
    python -m crvae_tf.train_feature_net --gin_file=gin/feature_net/sprites.gin --model_dir=runs/feature_net_sprites

Writes MODEL_DIR/feature_net.keras (the classifier: layer 'features' = proxy FID / KID features, layer
'probabilities' = softmax) and MODEL_DIR/feature_net.json (test and validation accuracy, per-epoch log, training
seconds, the file's sha256, the config), each atomically; the last line of stdout is that JSON. Use it with

    python -m crvae_tf.evaluate --model_dir=RUN --metrics=fid,kid,is,classifier_accuracy \
        --gin_bindings="sample_quality.feature_network='classifier'" \
        --gin_bindings="sample_quality.feature_network_path='runs/feature_net_mnist/feature_net.keras'"

The images come from `dataset.*` (as in crvae_tf.train); the classifier's hyperparameters are `feature_net.*`
(below). Flags: --gin_file, --gin_bindings, --model_dir, --verbose. An existing feature_net.keras is never replaced
(its sha256 identifies the numbers computed with it). Errors: one line on stderr, exit statuses of `crvae_tf.cli`.
The network and its training: `crvae_tf.evaluation.feature_classifier`.
"""
# ruff: noqa: E402  (as the other binaries: TF's log level is set before TensorFlow is imported)

from crvae_tf import startup

startup.quiet_tensorflow()

import datetime
import json
import os
import time

from absl import app
from absl import flags
from absl import logging
import gin
import keras
import numpy as np
import tensorflow as tf

from crvae_tf import builders
from crvae_tf import cli
from crvae_tf import runs
from crvae_tf.evaluation import feature_classifier

VERBOSE = flags.DEFINE_boolean("verbose", False, cli.VERBOSE_HELP, allow_override=True)
# --gin_file, --gin_bindings and --model_dir mean what they mean in crvae_tf.train; allow_override lets the binaries
# be imported into one process (the tests), whichever comes first.
GIN_FILES = flags.DEFINE_multi_string(
    "gin_file", [], "Gin recipe file(s), e.g. gin/feature_net/mnist.gin.", allow_override=True
)
BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings",
    [],
    "Gin bindings that override the files, e.g. \"dataset.local_path='/data/mnist.npz'\".",
    allow_override=True,
)
MODEL_DIR = flags.DEFINE_string(
    "model_dir", None, "Output folder for feature_net.keras and feature_net.json.", allow_override=True
)


@gin.configurable("feature_net")
def feature_net_settings(
    num_epochs: int = 3,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    widths=(32, 64),
    feature_dim: int = 128,
    seed: int = 0,
    max_train_images=None,
    blur_sigma_range=None,
    blur_fraction: float = 0.5,
) -> dict:
    """The classifier recipe (`feature_classifier`).

    Args:
      num_epochs: passes over the training split.
      batch_size: images per Adam step.
      learning_rate: Adam's learning rate.
      widths: the two conv layers' channels.
      feature_dim: units of the 'features' layer (the proxy FID's feature dimension).
      seed: weight initialisation, epoch permutations, and the dataset's hold-out / sprite generation
        (`dataset.*`'s seed, as `train.seed` in crvae_tf.train).
      max_train_images: None, or train on the first N training images only (tests).
      blur_sigma_range: None, or (low, high): a seeded `blur_fraction` of each epoch's training images is blurred
        with a Gaussian of standard deviation ~ U(low, high) pixels (`feature_classifier.train_classifier`), so the
        network also names the shapes of blurred images (a VAE's samples).
      blur_fraction: the fraction of each epoch's images blurred when blur_sigma_range is set.
    """
    for name, value in (("num_epochs", num_epochs), ("batch_size", batch_size), ("feature_dim", feature_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"feature_net.{name}={value!r} must be a positive int.")
    if max_train_images is not None and (not isinstance(max_train_images, int) or max_train_images < 2):
        raise ValueError(f"feature_net.max_train_images={max_train_images!r} must be None or an int >= 2.")
    if not learning_rate > 0:
        raise ValueError(f"feature_net.learning_rate={learning_rate!r} must be > 0.")
    return dict(
        num_epochs=num_epochs,
        batch_size=batch_size,
        learning_rate=float(learning_rate),
        widths=[int(w) for w in widths],
        feature_dim=feature_dim,
        seed=int(seed),
        max_train_images=max_train_images,
        blur_sigma_range=None if blur_sigma_range is None else [float(v) for v in blur_sigma_range],
        blur_fraction=float(blur_fraction),
    )


def train(model_dir: str) -> dict:
    """Trains and saves the classifier configured by the parsed gin config; returns feature_net.json's content."""
    start = time.perf_counter()
    path = os.path.join(model_dir, feature_classifier.MODEL_FILE)
    if os.path.exists(path):
        raise FileExistsError(
            f"{path} exists: a trained feature network is never replaced (numbers computed with it carry its "
            "sha256). Delete it or choose another --model_dir."
        )
    settings = feature_net_settings()
    splits = builders.build_dataset(seed=settings["seed"])
    if splits.train.dtype == np.uint8:
        raise ValueError(f"the feature network takes the 28x28 MNIST-family images; dataset {splits.name!r} is RGB.")
    labels = {split: feature_classifier.class_labels(splits, split) for split in ("train", "validation", "test")}
    images = {split: np.asarray(splits.split(split), np.float32) for split in ("train", "validation", "test")}
    if settings["max_train_images"] is not None:
        images["train"] = images["train"][: settings["max_train_images"]]
        labels["train"] = labels["train"][: settings["max_train_images"]]
    num_classes = int(max(int(np.max(labels[s])) for s in labels if len(labels[s])) + 1)
    model = feature_classifier.build_classifier(
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
    history = feature_classifier.train_classifier(
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
        test_accuracy=feature_classifier.accuracy(model, images["test"], labels["test"]),
        validation_accuracy=(feature_classifier.accuracy(model, *validation) if validation is not None else None),
        settings=settings,
        epochs=history["epochs"],
        train_seconds=history["train_seconds"],
        wall_time_s=None,
        hardware=dict(
            cpu_count=os.cpu_count(),
            devices=sorted({d.device_type for d in tf.config.list_physical_devices()}),
        ),
        config=gin.config_str(),
        finished_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        tensorflow=tf.__version__,
        keras=keras.__version__,
    )
    info["wall_time_s"] = round(time.perf_counter() - start, 2)
    return feature_classifier.save(model, model_dir, info)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}. Use --gin_file/--gin_bindings/--model_dir.")
    if not MODEL_DIR.value:
        raise app.UsageError("--model_dir is required: the folder for feature_net.keras and feature_net.json.")
    for path in GIN_FILES.value:
        if not os.path.isfile(path):
            raise app.UsageError(f"--gin_file={path} is not a file (paths are relative to {os.getcwd()}).")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)  # one line per epoch
    runs.parse_gin(GIN_FILES.value, BINDINGS.value)
    info = train(MODEL_DIR.value)
    print(json.dumps({k: v for k, v in info.items() if k != "config"}), flush=True)


if __name__ == "__main__":
    cli.run(main, flags.FLAGS, lambda: cli.LoggingOptions(VERBOSE.value, bool(flags.FLAGS["verbosity"].present)))
