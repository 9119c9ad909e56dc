"""An exclusive, waiting, re-entrant lock on a local file (``fcntl.flock``), for the Pusher.

Two pushes to the same model directory, or two writers of one ``models.config``, must not interleave
(issue #15). ``flock`` is released by the kernel when its holder exits, however it exits, so a
killed pusher never leaves a lock that blocks the next one. The lock file is removed on release (so
the serving directory holds only what TF Serving and operators expect); a waiter that locked the
file just as it was removed notices that the path now names another file and tries again.

Re-entrant per thread: a push holding its model directory's lock may call helpers that take it too.
Another thread of the same process waits like another process does (``flock`` locks are per open
file, not per process).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from typing import Dict, Iterator, Tuple

_held: Dict[Tuple[str, int], int] = {}  # (lock path, thread id) -> nesting depth
_held_guard = threading.Lock()


class LockTimeout(TimeoutError):
    """The lock was still held by someone else after the timeout; the message names the holder."""


def holder(path: str) -> str:
    """What the current holder wrote into the lock file ('pid N on host H since T'), or ''."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def exclusive(path: str, timeout_s: float, what: str = "lock") -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing); wait up to `timeout_s` seconds for it.

    Raises `LockTimeout` naming `what`, the path and the holder if it is still held after that.
    """
    key = (os.path.abspath(path), threading.get_ident())
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return

    fd = _acquire(key[0], timeout_s, what)
    with _held_guard:
        _held[key] = 1
    try:
        yield
    finally:
        with _held_guard:
            del _held[key]
        try:
            os.unlink(key[0])  # before unlocking: nobody can lock this file afterwards and think it current
        except FileNotFoundError:
            pass
        os.close(fd)  # releases the lock


def _acquire(path: str, timeout_s: float, what: str) -> int:
    deadline = time.monotonic() + max(0.0, timeout_s)
    delay = 0.02
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                by = holder(path) or "another process"
                raise LockTimeout(f"{what} {path} is held by {by}; gave up after waiting {timeout_s:g} s "
                                  f"(wait for that process to finish, or stop it if it hangs)") from None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)
            continue
        except BaseException:
            os.close(fd)
            raise
        # The previous holder removes the file on release: if it did so between our open and our
        # flock, we hold a lock on a file nobody else will ever look at -- start again.
        try:
            current = os.stat(path)
            opened = os.fstat(fd)
            if (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
    return fd
