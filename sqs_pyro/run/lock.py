"""
One writer per run directory: an advisory lock file ``.lock`` held with
``flock`` for as long as a command writes the directory.

A second writer fails at once with :class:`~sqs_pyro.errors.RunDirBusyError`
naming the holder (pid, host, command, start time). The kernel releases the
lock when its process dies (``kill -9`` included), so a stale ``.lock`` left by
a dead process is simply taken over. Read-only commands (``evaluate``,
``report``, ``plot``) take no lock and write nothing to the directory.

Example::

    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with RunDirLock(d, "compress"):
    ...     try:
    ...         RunDirLock(d, "compress").acquire()
    ...     except RunDirBusyError as e:
    ...         print("busy")
    busy
"""

import datetime
import json
import os
import socket

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

from ..errors import InputFileError, RunDirBusyError

__all__ = ["LOCK_NAME", "RunDirLock", "RunDirBusyError"]

LOCK_NAME = ".lock"


def _holder(path):
    try:
        with open(path) as f:
            info = json.loads(f.read() or "{}")
    except (OSError, ValueError):
        info = {}
    return info if isinstance(info, dict) else {}


class RunDirLock:
    """Exclusive lock on a run directory (created if missing). A context manager; re-entrant per object."""

    def __init__(self, directory, command=""):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_NAME)
        self.command = command
        self._fd = None

    def acquire(self):
        if self._fd is not None:
            return self
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise InputFileError(f"run directory {self.directory} is a file, not a directory: choose another --out")
        os.makedirs(self.directory, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                h = _holder(self.path)
                raise RunDirBusyError(
                    f"run directory {self.directory} is in use by pid {h.get('pid', '?')} on host "
                    f"{h.get('host', '?')} ({h.get('command') or 'a command'} since {h.get('since', '?')}); "
                    "wait for it to finish or stop it, then run again"
                ) from None
            try:  # the holder may have removed the file between our open and flock: lock the current one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def release(self):
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)  # closing releases the flock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
