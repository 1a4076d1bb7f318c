"""A quiet start for the binaries: TensorFlow's log level is set, and its start-up banners are held back, before
TensorFlow is imported. Standard library only: a binary imports this first and calls `quiet_tensorflow()`.

Unless the user set `TF_CPP_MIN_LOG_LEVEL` (then nothing changes), or asked for `--verbose` / `CRVAE_TF_VERBOSE=1`:
`TF_CPP_MIN_LOG_LEVEL=3`, which drops the C++ INFO/WARNING/ERROR lines such as "failed call to cuInit" on a machine
without a GPU (a real failure still raises a Python exception), and the lines TensorFlow's libraries write to
stderr while they load (oneDNN and CUDA banners, printed twice, before its logging is set up) are captured and
shown only if the import fails.
"""

import os
import sys
import tempfile

VERBOSE_ENV = "CRVAE_TF_VERBOSE"


def verbose_requested(argv=None) -> bool:
    """`--verbose` on the command line (before flags are parsed) or CRVAE_TF_VERBOSE set to anything but 0."""
    argv = sys.argv if argv is None else argv
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false", "False"):
        return True
    return any(arg in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for arg in argv[1:])


def use_bfc_cpu_allocator() -> None:
    """Makes TensorFlow keep freed CPU memory for reuse (its BFC allocator), unless the user set
    `TF_CPU_ALLOCATOR_USE_BFC` (`false` restores TensorFlow's default) or TensorFlow is imported already.

    TensorFlow's default CPU allocator hands every tensor to malloc; glibc serves large blocks (the decoder's
    activations: 147 MB per 30x30x64 map of a 640-row evaluation pass) with a fresh mmap each time, and the kernel
    zeroes the new pages on first touch, every pass, while the compute threads wait on each other's page faults.
    Measured on the 2 idle CPU cores, 2026-12-01 (`python -m crvae_tf.bench --nll --nll_samples=1000 --models=crvae`,
    float32, 16 images): 390.1 importance samples/s at a CPU utilization of 1.57-1.64 with the default allocator, in
    every one of 7 runs (folding on or off; 389.4 with 8 images), 482.6 at 1.94 with the BFC allocator, at the same
    peak memory (1.24-1.25 GB). Earlier the default allocator sometimes reached ~460 (session 13): how often the
    kernel's page handling gets in the way varies with the machine's state, the BFC allocator does not depend on it.
    Training steps at batch 128 are unchanged. (The PyTorch twin does the same with `mallopt`.)
    """
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


def quiet_tensorflow() -> None:
    """Imports TensorFlow quietly (module docstring); a no-op if it is imported already or the user chose a level.

    Also chooses TensorFlow's BFC CPU allocator first (`use_bfc_cpu_allocator`)."""
    use_bfc_cpu_allocator()
    if "tensorflow" in sys.modules or "TF_CPP_MIN_LOG_LEVEL" in os.environ or verbose_requested():
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401  (the import whose banners are held back)
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
