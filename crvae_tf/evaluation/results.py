"""Where evaluation results live and how they are written: the result paths and names, the JSON summary of an
estimate, and the per-batch partial file that lets an interrupted evaluation resume with identical numbers.
Gin-free.

    DIR/eval/<split>-step<step>-k<K>[-n<max_images>].json          the result
    DIR/eval/<split>-step<step>-k<K>[-n<max_images>].npz           per-image arrays
    DIR/eval/<split>-step<step>-k<K>[-n<max_images>].partial.npz   progress of an unfinished evaluation
    DIR/eval/sample_quality-<split>-step<step>-s<num_samples>-<network sha256[:12]>[-n<max_images>][-seed<S>].json
                                                                    FID / KID / IS (`sample_quality_stem`)
"""

import datetime
import io
import json
import math
import os
from typing import NamedTuple
from typing import Optional

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from crvae_tf import artifacts
from crvae_tf.objectives import bounds

EVAL_DIR = "eval"


class Estimates(NamedTuple):
    """Per-image estimates of a set of images, in nats per image, from K importance samples each.

    Attributes:
      log_likelihood: float64 `[N]`, IWAE_K = log (1/K) sum_k exp(w_k), the estimate of log p(x).
      elbo: float64 `[N]`, (1/K) sum_k w_k from the same samples.
      iwae_5: float64 `[N]`, the mean of IWAE_5 over the floor(K/5) disjoint groups of 5 of the same samples;
        NaN when K < 5.
      data_sha256: SHA-256 (hex) of the evaluated binary pixels as uint8 0/1 in `[N, H, W, C]` row-major order.
      seconds: wall time of the estimation (batches skipped by a resume excluded).
      num_estimated: images estimated in this call (N minus those restored from a partial file).
    """

    log_likelihood: np.ndarray
    elbo: np.ndarray
    iwae_5: np.ndarray
    data_sha256: str
    seconds: float
    num_estimated: int


def summarize(estimates: Estimates, num_pixels: int) -> dict:
    """Means over the N images and their standard errors, in nats per image.

    nll = -(1/N) sum_i log p^(x_i) (positive), nll_stderr = std_i(log p^(x_i)) / sqrt(N) (ddof 1; None for N = 1);
    elbo and iwae_5 are the means of the per-image bounds on log p(x) (negative), with their stderrs the same way.
    """
    n = len(estimates.log_likelihood)

    def mean_and_stderr(values):
        mean = float(np.mean(values))
        stderr = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else None
        return mean, stderr

    log_likelihood, log_likelihood_stderr = mean_and_stderr(estimates.log_likelihood)
    elbo, elbo_stderr = mean_and_stderr(estimates.elbo)
    if np.all(np.isnan(estimates.iwae_5)):
        iwae, iwae_stderr = None, None
    else:
        iwae, iwae_stderr = mean_and_stderr(estimates.iwae_5)
    return {
        "nll": -log_likelihood,
        "nll_stderr": log_likelihood_stderr,
        "nll_bits_per_dim": float(bounds.nats_to_bits_per_dim(-log_likelihood, num_pixels)),
        "elbo": elbo,
        "elbo_stderr": elbo_stderr,
        "iwae_5": iwae,
        "iwae_5_stderr": iwae_stderr,
    }


def result_stem(split: str, step: int, num_importance_samples: int, max_images: Optional[int] = None) -> str:
    """`<split>-step<step>-k<K>`, plus `-n<max_images>` for a capped evaluation (never mistaken for a full one)."""
    stem = f"{split}-step{int(step)}-k{int(num_importance_samples)}"
    return stem if max_images is None else f"{stem}-n{int(max_images)}"


def result_path(
    model_dir: str, split: str, step: int, num_importance_samples: int, max_images: Optional[int] = None
) -> str:
    """Where `evaluate` writes its JSON result."""
    return os.path.join(model_dir, EVAL_DIR, result_stem(split, step, num_importance_samples, max_images) + ".json")


def sample_quality_stem(
    split: str, step: int, num_samples: int, network_sha256: str, max_images: Optional[int] = None, seed: int = 0
) -> str:
    """`sample_quality-<split>-step<step>-s<num_samples>-<first 12 hex of the feature network's sha256>`, plus
    `-n<max_images>` when the real split was capped and `-seed<seed>` for a seed other than 0: one file per
    (checkpoint, sample count, network, cap, seed)."""
    stem = f"sample_quality-{split}-step{int(step)}-s{int(num_samples)}-{network_sha256[:12]}"
    stem = stem if max_images is None else f"{stem}-n{int(max_images)}"
    return stem if int(seed) == 0 else f"{stem}-seed{int(seed)}"


class Partial:
    """The per-batch progress of an evaluation, written atomically after each batch, so a rerun resumes."""

    def __init__(self, path: str, metadata: dict):
        self.path = path
        self.metadata = json.dumps(metadata, sort_keys=True)

    def load(self):
        """(log_likelihood, elbo, iwae_5, batch_hashes) of the finished batches, or None."""
        if not os.path.isfile(self.path):
            return None
        try:
            with np.load(self.path, allow_pickle=False) as saved:
                if str(saved["metadata"]) != self.metadata:
                    logging.warning("Ignoring %s: it was written by an evaluation with other settings.", self.path)
                    return None
                restored = (saved["log_likelihood"], saved["elbo"], saved["iwae_5"], [str(h) for h in saved["hashes"]])
        except Exception as error:  # A foreign or damaged file is never trusted.
            logging.warning("Ignoring unreadable %s (%s).", self.path, error)
            return None
        logging.info(
            "Resuming from %s: %d batches (%d images) already evaluated.", self.path, len(restored[3]), len(restored[0])
        )
        return restored

    def save(self, batch_index, arrays, batch_hashes):
        del batch_index
        buffer = io.BytesIO()
        np.savez(buffer, metadata=np.array(self.metadata), hashes=np.array(batch_hashes), **arrays)
        artifacts.atomic_write_bytes(self.path, buffer.getvalue())

    def remove(self):
        if os.path.exists(self.path):
            os.remove(self.path)


def provenance() -> dict:
    """When and with what a result was computed: `finished_utc` (now, ISO 8601) and the TensorFlow / Keras versions."""
    return {
        "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def device_types() -> list:
    """The kinds of device TensorFlow sees here, sorted (e.g. ['CPU'] or ['CPU', 'GPU'])."""
    return sorted({d.device_type for d in tf.config.list_physical_devices()})
