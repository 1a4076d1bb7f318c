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


def quiet_tensorflow() -> None:
    """Imports TensorFlow quietly (module docstring); a no-op if it is imported already or the user chose a level."""
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
