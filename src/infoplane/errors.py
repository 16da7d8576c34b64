"""The one exception family of infoplane, and its warning about points left NaN.

Every error a user can cause derives from :class:`InfoplaneError`; messages name what was wrong
(run, split, step, layer where known) and how to fix it.
"""

from __future__ import annotations

import errno
import logging
import warnings
from collections.abc import Sequence


class InfoplaneError(Exception):
    """Base class of every error infoplane raises on purpose."""


class ConfigError(InfoplaneError, ValueError):
    """A configuration key or value is invalid."""


class InputError(InfoplaneError, ValueError):
    """Arrays handed to a function are unusable (shape, N < 2, NaN/Inf, bad width, ...)."""


class StoreError(InfoplaneError):
    """An activation store, distance cache or result file breaks its contract or is corrupt."""


class DataError(InfoplaneError):
    """A dataset could not be found, downloaded or verified."""


class TrainingError(InfoplaneError):
    """Training failed (diverged loss, a capture hook misbehaved, ...)."""


class BusyError(InfoplaneError):
    """Another process is writing the same output (it holds the output's lock)."""


def describe_os_error(exc: OSError, kept: str = "finished work is kept") -> str:
    """A user's message for an OSError of the disk: which file, why, what is kept, what to do."""
    where = exc.filename if exc.filename is not None else "a file"
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    why = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = "the disk is full (or over quota): free space, then run the command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "the file or its folder is not writable: fix the permissions or choose another path"
    else:
        fix = "check the path and the disk, then run the command again"
    return f"cannot write or read {where} ({why}); {fix}; {kept}"


class NaNPointWarning(UserWarning):
    """Some (run, split, step, layer) points could not be estimated (NaN/Inf activations): NaN."""


def warn_nan_points(
    run: str | None,
    points: Sequence[tuple[str, int, str]],
    *,
    stage: str,
    reason: str = "non-finite activations (NaN/Inf, a diverged run?)",
    limit: int = 20,
    consequence: str = "these points are NaN in the results",
) -> None:
    """One warning (and log line) naming every (run, split, step, layer) point left NaN."""
    named = [f"(run {run}, split {s}, step {t}, layer {layer})" for s, t, layer in points]
    shown = ", ".join(named[:limit])
    if len(named) > limit:
        shown += f" and {len(named) - limit} more"
    message = f"{stage}: {reason} at {shown}; {consequence}, the others are computed normally"
    logging.getLogger("infoplane").warning(message)
    warnings.warn(message, NaNPointWarning, stacklevel=3)
