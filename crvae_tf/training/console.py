"""What the trainer prints: one progress line, messages that never break it, readable validation results and a final
summary. Gin-free.

On a terminal the progress line is redrawn in place (at most once a second); written to a file or a pipe it becomes
one line every `file_interval` seconds, so a log stays readable. A message (a validation result, "Resuming from ...")
first ends the progress line, then prints on its own line.
"""

import shutil
import sys
import time

# The scalars shown on the progress line, in this order, when the model reports them.
PROGRESS_KEYS = (
    "loss",
    "distortion",
    "rate",
    "active_units",
    "reconstruction",
    "discriminator_accuracy",
    "discriminator_skip_rate",
)
# The scalars of a validation line and of the summary, in this order (per-step and per-group ones are left to
# TensorBoard).
RESULT_KEYS = ("elbo", "iwae_5") + tuple(key for key in PROGRESS_KEYS if key != "discriminator_skip_rate")


def format_number(value) -> str:
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.2f}"


def format_metrics(metrics: dict, keys=RESULT_KEYS) -> str:
    """'elbo -120.31, iwae_5 -118.20, rate 20.10' for the `keys` present (iwae_<k> for any k)."""
    shown = [k for k in keys if k in metrics]
    shown += [k for k in sorted(metrics) if k.startswith("iwae_") and k not in shown]
    return ", ".join(f"{key} {format_number(metrics[key])}" for key in shown)


def format_seconds(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


class Console:
    """The trainer's stdout (module docstring)."""

    def __init__(self, max_steps: int, progress: bool = True, stream=None, file_interval: float = 30.0):
        self.stream = stream if stream is not None else sys.stdout
        self.max_steps, self.progress_enabled = int(max_steps), bool(progress)
        isatty = getattr(self.stream, "isatty", None)
        self.dynamic = bool(isatty and isatty())
        self.interval = 1.0 if self.dynamic else float(file_interval)
        self.line_open = False
        self.last_draw = 0.0
        self.start_step = None
        self.start_time = None

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _draw(self, text: str) -> None:
        if self.dynamic:
            width = max(shutil.get_terminal_size((120, 24)).columns - 1, 20)
            self._write("\r" + text[:width].ljust(width))
            self.line_open = True
        else:
            self._write(text + "\n")
        self.last_draw = time.time()

    def message(self, text: str) -> None:
        """Prints `text` on lines of its own (ending the progress line first)."""
        if self.line_open:
            self._write("\n")
            self.line_open = False
        self._write(text + "\n")

    def progress(self, step: int, logs: dict) -> None:
        """The progress line after `step`: step, the `PROGRESS_KEYS` scalars, seconds per step and time left."""
        if not self.progress_enabled:
            return
        now = time.time()
        if self.start_step is None:  # timed from the end of the first step (which traces the graph)
            self.start_step, self.start_time = step, now
        if step < self.max_steps and now - self.last_draw < self.interval:
            return
        text = f"step {step}/{self.max_steps}  {format_metrics(logs, PROGRESS_KEYS)}"
        if step > self.start_step:
            per_step = (now - self.start_time) / (step - self.start_step)
            text += f"  ({per_step:.2f} s/step, {format_seconds(per_step * (self.max_steps - step))} left)"
        self._draw(text)

    def validation_progress(self, step: int, done: int, total: int) -> None:
        """The progress line during a validation pass (terminals only; a log gets the result line)."""
        if self.progress_enabled and self.dynamic and (done == total or time.time() - self.last_draw >= 1.0):
            self._draw(f"step {step}/{self.max_steps}  validating: batch {done}/{total}")

    def close(self) -> None:
        if self.line_open:
            self._write("\n")
            self.line_open = False


def validation_line(step: int, result: dict, num_images: int, seconds: float, best: bool) -> str:
    """'Validation at step 400 (1024 images, 12.3 s): elbo -82.50, iwae_5 -68.60, ... (new best)'."""
    mark = " (new best)" if best else ""
    return f"Validation at step {step} ({num_images} images, {format_seconds(seconds)}): {format_metrics(result)}{mark}"


def summary(result: dict) -> str:
    """The final summary of `training.loop.train`'s result, a few readable lines."""
    step, initial = result["step"], result["initial_step"]
    sitting = f"steps {initial}-{step}" if initial else f"{step} steps"
    lines = [f"Finished at step {step} ({sitting} in {format_seconds(result.get('seconds', 0.0))})."]
    if result.get("train"):
        lines.append(f"  train (last logged steps): {format_metrics(result['train'])}")
    validation = result.get("validation_step")
    if result.get("validation"):
        lines.append(f"  validation (step {validation}): {format_metrics(result['validation'])}")
    best = result.get("best")
    if best:
        lines.append(f"  best checkpoint: step {best['step']}, {best['metric']} {format_number(best['value'])}")
    if result.get("checkpoint"):
        lines.append(f"  latest checkpoint: {result['checkpoint']}")
    return "\n".join(lines)
