"""Atomic publication of SavedModel versions in TF Serving's layout (`export_dir/<version>/`): written to
`export_dir/.tmp-<version>-<hex>/`, renamed into place only when complete (an atomic swap when overwriting).
TF Serving only loads all-digit folder names, so it never sees a half-written version.
"""

import ctypes
import os
import shutil
import uuid

import tensorflow as tf

TMP_PREFIX = ".tmp-"


# ---------------------------------------------------------------------------------------------------- writing


def _is_version_name(name: str) -> bool:
    return name.isdigit()


def versions(export_dir: str) -> list:
    """The published versions under `export_dir` (all-digit folder names, as TF Serving sees them), ascending."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(export_dir)
        if _is_version_name(name) and os.path.isdir(os.path.join(export_dir, name))
    )


_RENAME_EXCHANGE = 2


def _exchange(a: str, b: str) -> bool:
    """Atomically swaps two paths (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def publish(tmp: str, final: str, overwrite: bool) -> None:
    """Renames the finished `tmp` folder to `final`; with `overwrite`, swaps it with an existing `final`."""
    if not os.path.exists(final):
        os.rename(tmp, final)  # fails (ENOTEMPTY) if another export published `final` meanwhile
        return
    if not overwrite:
        raise FileExistsError(
            f"{final} already exists. Pass --overwrite to replace it (a server that already "
            "loaded this version keeps serving the old one), or export another checkpoint."
        )
    if _exchange(tmp, final):  # `final` is now the new export and `tmp` the old one
        shutil.rmtree(tmp)
        return
    aside = os.path.join(os.path.dirname(final), f"{TMP_PREFIX}old-{os.path.basename(final)}-{uuid.uuid4().hex}")
    os.rename(final, aside)
    os.rename(tmp, final)
    shutil.rmtree(aside)


def save(module: tf.Module, path: str) -> None:
    """Writes the SavedModel (the step the interruption test breaks)."""
    tf.saved_model.save(
        module,
        path,
        signatures=module.serving_signatures,
        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False),
    )
