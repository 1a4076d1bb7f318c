"""One owner per directory: a lock file naming its holder (host, PID, start time, command), taken before anything
is written. Gin-free.

`DirectoryLock(folder, name, purpose)` takes an exclusive `flock` on `folder/name` and writes who holds it. The
kernel drops a `flock` when its process ends, however it ends (kill -9 included), so a lock file that names a holder
while nobody holds the `flock` is stale: its process is gone, and the lock is taken over with a log line. A live
holder makes `acquire` raise `LockedError`, whose message names that process. `release` removes the file.

`holder(folder, name)` tells a reader (evaluate, export) which live process holds a lock, without taking or
touching it: readers may run beside a trainer (a finished checkpoint is safe to read), never write its files.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import sys

from absl import logging


class LockedError(RuntimeError):
    """Another live process holds the directory's lock; the message names it."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def _process_start_ticks(pid: int):
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or None where unknown.

    Together with the PID it identifies a process: a reused PID has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def is_alive(info: dict) -> bool:
    """Whether the process a lock file names is still running (only decidable on this host; other hosts: True)."""
    if info.get("host") != socket.gethostname():
        return True
    pid = int(info.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    recorded, actual = info.get("process_start"), _process_start_ticks(pid)
    return recorded is None or actual is None or int(recorded) == actual


def describe(info: dict) -> str:
    """'python -m crvae_tf.train ... (pid 123 on host, started 2025-01-01T10:00:00+00:00)'."""
    command = info.get("command") or info.get("purpose", "a process")
    return f"{command} (pid {info.get('pid')} on {info.get('host')}, started {info.get('started')})"


def _read(path: str) -> dict:
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {"unreadable": text[:200]} if text.strip() else {}
    return info if isinstance(info, dict) else {}


def holder(folder: str, name: str):
    """The lock file's holder as a dict (host, pid, started, command, purpose) if that process is alive, else None.

    Reads only: a reader beside a trainer neither takes nor removes the trainer's lock."""
    info = _read(os.path.join(folder, name))
    if not info or "pid" not in info:
        return None
    return info if is_alive(info) else None


class DirectoryLock:
    """The exclusive lock of a directory (module docstring). A context manager; `acquire` / `release` by hand too."""

    def __init__(self, folder: str, name: str, purpose: str):
        self.folder, self.name, self.purpose = folder, name, purpose
        self.path = os.path.join(folder, name)
        self._fd = None

    def _info(self) -> dict:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start_ticks(os.getpid()),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "purpose": self.purpose,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)[:1000],
        }

    def acquire(self) -> "DirectoryLock":
        if self._fd is not None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask applies
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                info = _read(self.path)
                raise LockedError(
                    f"{self.folder} is in use: {describe(info)} holds {self.path}. Wait for it to finish or stop it "
                    f"(a {self.purpose} that is killed releases the lock by itself); to work on something else, use "
                    "another directory.",
                    info,
                ) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if same_file:
                break
            os.close(fd)  # the previous holder removed the file between our open and our flock: try again
        previous = _read(self.path)
        if previous.get("pid") == os.getpid() and previous.get("host") == socket.gethostname():
            previous = {}  # this process's own lock, released without removing the file
        if previous and "pid" in previous and is_alive(previous):
            # The file names a live process that holds no flock: a file system without flock, or a lock written by
            # hand. Refuse rather than share the directory.
            os.close(fd)
            raise LockedError(
                f"{self.folder} is in use: {describe(previous)} is named in {self.path} and still running.", previous
            )
        if previous:
            logging.warning("Took over the stale lock %s of %s: that process is gone.", self.path, describe(previous))
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self._info(), indent=1).encode("utf-8"), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding the flock: a waiting process retries on the new file
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
