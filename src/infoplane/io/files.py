"""File mechanics every writer shares: exclusive output locks, atomic replacement, canonical JSON.

Every product of infoplane (a store, a cache, a result, a figure, a checkpoint) is built under a
unique scratch name beside its final path and moved into place only once complete, so a reader
sees either the old complete file or the new complete one, and a killed writer leaves no half
product behind under the final name.

Every writer of a store, cache or result also holds :func:`exclusive` on its output while it
works: an ``flock`` on the hidden file ``.<name>.lock`` beside the output. Of two concurrent
writers the second fails at once with :class:`~infoplane.errors.BusyError`. The operating system
releases the lock when its holder exits or is killed, so a lock file left behind by a killed
process is never stale: it is free to take (and harmless to delete).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from infoplane.errors import BusyError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks (documented)
    fcntl = None  # type: ignore[assignment]


def scratch_path(path: str | os.PathLike, tag: str = "writing") -> Path:
    """A unique hidden name beside ``path`` (same folder, hence same file system)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{tag}")


def remove(path: str | os.PathLike) -> None:
    """Delete a file or a folder tree; nothing when it does not exist."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the output ``path``: ``.<name>.lock`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


# Locks this process holds: path -> (file descriptor, depth). A writer that calls another writer
# on the same output (estimate, then write_result) takes the lock once.
_held_locks: dict[Path, list[int]] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, *, what: str = "writing") -> Iterator[Path]:
    """Hold the exclusive lock of the output ``path`` for the block; yields the lock file.

    Raises
    ------
    BusyError
        Another process holds the lock: it is writing ``path`` now. The message names the lock
        file and the holder (pid and host, as the holder wrote them).

    The lock is an ``flock`` on ``.<name>.lock`` beside ``path``: the operating system releases
    it when the holder exits, however it ends (a killed process included), so no lock is ever
    left stale. Re-entrant within one process. Without ``fcntl`` (not POSIX) nothing is locked.
    """
    path = Path(path)
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    key = lock.parent.resolve() / lock.name
    with _held_guard:
        held = _held_locks.get(key)
        if held is not None:
            held[1] += 1
    if held is not None:
        try:
            yield lock
        finally:
            with _held_guard:
                held[1] -= 1
        return
    if fcntl is None:  # pragma: no cover
        yield lock
        return
    fd = _acquire(path, lock, what)
    try:
        info = f"pid {os.getpid()} on host {socket.gethostname()}, since {time.ctime()}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        with _held_guard:
            _held_locks[key] = [fd, 1]
        try:
            yield lock
        finally:
            with _held_guard:
                _held_locks.pop(key, None)
            # removed while still held: a process that opened it meanwhile sees another file
            # at the path once it has the lock, and starts over (see _acquire)
            with contextlib.suppress(OSError):
                lock.unlink()
    finally:
        os.close(fd)  # releases the flock


def _acquire(path: Path, lock: Path, what: str) -> int:
    """Open ``lock`` and take its flock without waiting; the descriptor, or BusyError."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(fd)
                raise
            try:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            except OSError:
                holder = "unknown"
            os.close(fd)
            raise BusyError(
                f"another process is {what} {path} (it holds the lock {lock}: {holder}); "
                "wait for it to finish, or stop it, then run this command again. The lock is "
                "released by the operating system when its holder exits or is killed, so it "
                "cannot be stale: if no such process runs here, the holder is on another "
                "machine sharing this folder"
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the holder removed the file before we locked it: take the new one


@contextlib.contextmanager
def replacing(
    path: str | os.PathLike, *, tag: str = "writing", keep_existing: bool = False
) -> Iterator[Path]:
    """Yield a scratch path to build ``path`` in; move it into place when the block succeeds.

    Parameters
    ----------
    path
        The final file or folder. Its parent folder is created.
    tag
        Suffix of the scratch name (what is being done: ``writing``, ``creating``).
    keep_existing
        When ``path`` exists at the end (another writer finished first), keep it and drop the
        scratch copy instead of replacing it.

    The scratch path is removed when the block raises. A file replaces a file atomically. A
    folder replaces an existing folder in two renames (folders cannot be swapped atomically): the
    old one is moved aside under a scratch name, the new one into place, then the old one is
    deleted; when the second rename fails the old one is moved back.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_path(path, tag)
    try:
        yield tmp
        if keep_existing and path.exists():
            return
        aside = None
        if path.is_dir() and not path.is_symlink() and tmp.is_dir():
            aside = scratch_path(path, "old")
            os.replace(path, aside)
        try:
            os.replace(tmp, path)
        except OSError:
            if aside is not None and not path.exists():
                os.replace(aside, path)
                aside = None
            if not (keep_existing and path.exists()):
                raise
        finally:
            if aside is not None:
                remove(aside)
    finally:
        remove(tmp)


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a synced scratch file and an atomic rename."""
    with replacing(path, tag="tmp") as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def canonical_json(value: Any) -> str:
    """The JSON text of ``value`` with sorted keys: equal mappings give equal text."""
    return json.dumps(value, sort_keys=True, default=str)


def digest(value: Any) -> str:
    """SHA-256 (hex) of the canonical JSON text of ``value``."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()
