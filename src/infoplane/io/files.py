"""File mechanics every writer shares: atomic replacement and canonical JSON.

Every product of infoplane (a store, a cache, a result, a figure, a checkpoint) is built under a
unique scratch name beside its final path and moved into place only once complete, so a reader
sees either the old complete file or the new complete one, and a killed writer leaves no half
product behind under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


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

    The scratch path is removed when the block raises. A folder replaces an existing folder
    (removed first: folders cannot be swapped atomically); a file replaces a file atomically.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = scratch_path(path, tag)
    try:
        yield tmp
        if keep_existing and path.exists():
            return
        if path.is_dir() and tmp.is_dir():
            shutil.rmtree(path)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (keep_existing and path.exists()):
                raise
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
