"""The one exception family of infoplane, and its warning about points left NaN.

Every error a user can cause derives from :class:`InfoplaneError`; messages name what was wrong
(run, split, step, layer where known) and how to fix it.
"""

from __future__ import annotations

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


class NaNPointWarning(UserWarning):
    """Some (run, split, step, layer) points could not be estimated (NaN/Inf activations): NaN."""


def warn_nan_points(
    run: str | None,
    points: Sequence[tuple[str, int, str]],
    *,
    stage: str,
    reason: str = "non-finite activations (NaN/Inf, a diverged run?)",
    limit: int = 20,
) -> None:
    """One warning (and log line) naming every (run, split, step, layer) point left NaN."""
    named = [f"(run {run}, split {s}, step {t}, layer {layer})" for s, t, layer in points]
    shown = ", ".join(named[:limit])
    if len(named) > limit:
        shown += f" and {len(named) - limit} more"
    message = (
        f"{stage}: {reason} at {shown}; these points are NaN in the results, "
        "the others are computed normally"
    )
    logging.getLogger("infoplane").warning(message)
    warnings.warn(message, NaNPointWarning, stacklevel=3)
