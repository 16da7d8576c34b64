"""The one exception family of infoplane.

Every error a user can cause derives from :class:`InfoplaneError`; messages name what was wrong
(run, split, step, layer where known) and how to fix it.
"""

from __future__ import annotations


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
