"""One job per run directory: a lock file naming its holder.

``RUN_DIR/.pgolf.lock`` is created with ``O_CREAT | O_EXCL`` (so exactly one process creates it)
and holds the holder's pid, host and start time as JSON; the holder also keeps an exclusive
``fcntl.flock`` on it while it runs. A second process finds the file and refuses, naming the
holder, unless the lock is stale: written on this host, its ``flock`` free and its pid no longer
running. A stale lock is taken over with a warning.
A lock written on another host is never taken over (its pid means nothing here): the message
says to delete the file once that job is known to be gone.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

LOCK_NAME = ".pgolf.lock"


class RunDirBusy(RuntimeError):
    """Another live process holds the run directory's lock; the message names it."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunDirLock:
    """``with RunDirLock(run_dir):`` holds ``run_dir``'s lock (creating the folder) for the block."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a checker may hold it for an instant
        except OSError:  # no flock on this filesystem: the pid check still applies
            pass
        holder = {"pid": os.getpid(), "host": os.uname().nodename,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.write(fd, (json.dumps(holder) + "\n").encode())
        os.fsync(fd)
        self._fd = fd
        return True

    def _holder(self) -> dict[str, Any]:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except (OSError, json.JSONDecodeError):
            holder = {}
        return holder if isinstance(holder, dict) else {}

    def _is_stale(self, holder: dict[str, Any]) -> bool:
        """A lock of this host whose ``flock`` nobody holds and whose pid no longer runs."""
        if holder.get("host") != os.uname().nodename:
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:  # no flock on this filesystem: the pid decides
            pass
        finally:
            os.close(fd)
        pid = holder.get("pid")
        if not isinstance(pid, int):  # being written right now, or long abandoned half-written
            return time.time() - self.path.stat().st_mtime > 10
        return not _pid_alive(pid)

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunDirBusy` naming the live holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                return
            holder = self._holder()
            if not self._is_stale(holder):
                who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
                       if holder else "an unknown process")
                raise RunDirBusy(f"run directory {self.path.parent} is in use by {who} (lock file {self.path}); "
                                 "wait for it, use another --run-dir, or delete the lock file if that job is gone")
            warnings.warn(f"taking over the stale lock {self.path} of pid {holder.get('pid')} "
                          f"(started {holder.get('started')}), which no longer runs", stacklevel=2)
            self.path.unlink(missing_ok=True)
        raise RunDirBusy(f"could not take the lock {self.path}: other processes keep creating it")

    def release(self) -> None:
        """Drop the lock and delete the file (only if this process holds it)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunDirLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
