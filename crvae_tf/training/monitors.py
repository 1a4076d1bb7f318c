"""Monitors that stop a training run with a message that says what to change: non-finite losses, a
discriminator whose batch accuracy is pinned at 0 or 1, and interrupts (SIGINT / SIGTERM). Gin-free.
"""

import io
import os
import signal
import threading

import numpy as np

from crvae_tf import artifacts


class DiscriminatorCollapseError(RuntimeError):
    """The discriminator's batch accuracy stayed pinned at 0 or 1; the message says what to change."""


class NonFiniteLossError(FloatingPointError):
    """Raised when a training loss becomes NaN or Inf."""


class TrainingInterrupted(Exception):
    """Training stopped on SIGINT / SIGTERM after the current step, with a checkpoint at that step."""

    def __init__(self, message: str, step: int, signum: int):
        super().__init__(message)
        self.step, self.signum = step, signum


class InterruptGuard:
    """Turns SIGINT and SIGTERM into a request to stop (`requested`), so the loop finishes the current step and
    writes a checkpoint; a second SIGINT stops at once (KeyboardInterrupt). A context manager; handlers are only
    installed in the main thread (elsewhere signals stay as they are)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None
        self._previous = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False


def _kept(latest) -> str:
    """How a stop message refers to the checkpoint it keeps."""
    if latest is None:
        return "No checkpoint was written before it (rerunning the command starts the run again from step 0)"
    return f"The last good checkpoint ({latest}) was kept"


class CollapseMonitor:
    """Counts consecutive steps whose discriminator batch accuracy is exactly 0 or exactly 1.

    `update(accuracy)` returns True once `patience` consecutive steps were pinned (None or 0: never).
    """

    def __init__(self, patience):
        self.patience = int(patience) if patience else 0
        self.pinned = 0
        self.value = None

    def update(self, accuracy: float) -> bool:
        self.pinned = self.pinned + 1 if accuracy in (0.0, 1.0) else 0
        self.value = accuracy
        return bool(self.patience) and self.pinned >= self.patience

    def reset(self) -> None:
        """An unpinned step: the count starts over (`training.execution` for the steps inside a call)."""
        self.pinned = 0

    def describe(self, step: int) -> str:
        verdict = "wins" if self.value == 1.0 else "loses"
        return (
            f"The discriminator's batch accuracy has been {self.value:.0f} for {self.pinned} consecutive steps "
            f"(step {step}): it {verdict} outright and the generator gets no useful signal."
        )


def _npy_bytes(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class TrainingGuard:
    """Stops training on a non-finite loss (`NonFiniteLossError`) or a collapsed discriminator
    (`DiscriminatorCollapseError`), after saving the offending batch as `<what>_batch-<step>.npy` in the run
    directory; the last good checkpoint is left as it is, so rerunning resumes from it."""

    LOSS_KEYS = ("loss", "discriminator_loss")

    def __init__(self, model_dir: str, collapse_patience, latest_checkpoint):
        self.model_dir = model_dir
        self.collapse = CollapseMonitor(collapse_patience)
        self.latest_checkpoint = latest_checkpoint  # () -> path of the last checkpoint (or None)

    def save_batch(self, batch, what: str, step: int) -> str:
        path = os.path.join(self.model_dir, f"{what}_batch-{step:08d}.npy")
        if isinstance(batch, (tuple, list)):  # (pool, labeled, labels) of data.stl10.TrainingPool: its real images
            batch = batch[0]
        artifacts.atomic_write_bytes(path, _npy_bytes(np.asarray(batch)))
        return path

    def check(self, step: int, logs: dict, batch) -> None:
        nonfinite = {k: float(logs[k]) for k in self.LOSS_KEYS if k in logs and not np.isfinite(float(logs[k]))}
        if nonfinite:
            bad = self.save_batch(batch, "nonfinite", step)
            raise NonFiniteLossError(
                f"The training loss became non-finite at step {step} ({nonfinite}). "
                f"{_kept(self.latest_checkpoint())} and the offending batch saved to {bad}. "
                "Lower optimizer.learning_rate or set optimizer.group_gradient_clip (in a new --model_dir: "
                "a run keeps its configuration)."
            )
        if "discriminator_batch_accuracy" in logs and self.collapse.update(float(logs["discriminator_batch_accuracy"])):
            bad = self.save_batch(batch, "collapse", step)
            raise DiscriminatorCollapseError(
                f"{self.collapse.describe(step)} {_kept(self.latest_checkpoint())} "
                f"and the last batch saved to {bad}. Adjust model.adversarial_weight, "
                "model.discriminator_accuracy_threshold or the discriminator learning rate "
                "(optimizer.group_learning_rate_scale), or raise train.discriminator_collapse_steps."
            )
