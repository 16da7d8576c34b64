"""The capture schedule: the training steps at which activations are recorded, known up front.

A step counts completed training iterations (optimizer updates): step 0 is the untrained network,
step ``iterations_per_epoch * e`` the end of epoch ``e``. The whole schedule is fixed before
training starts, so the activation store can be laid out once and a resumed run writes exactly the
steps an uninterrupted run would.

Kinds (``capture.schedule.kind`` in config.yaml):

- ``epoch``: the end of every epoch;
- ``every``: every ``every`` iterations, and the last step of training;
- ``log``: ``points`` steps log-spaced between 1 and the last step (rounded; coinciding steps are
  merged, so early on there may be fewer than ``points``);
- ``list``: exactly the steps in ``steps``.

Every kind also captures step 0. ``first_epoch_every: k`` adds every k-th step of the first epoch,
where the network changes fastest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from infoplane.errors import ConfigError

SCHEDULE_KINDS = ("epoch", "every", "log", "list")
_KEY = "capture.schedule"


def iterations_per_epoch(n_train: int, batch_size: int) -> int:
    """Mini-batches per epoch; the last, smaller batch of an epoch is kept."""
    if n_train < 1 or batch_size < 1:
        raise ConfigError(
            f"need at least one training sample and a batch size >= 1 "
            f"(got {n_train} samples, batch size {batch_size})"
        )
    return math.ceil(n_train / batch_size)


def _positive(schedule: Mapping, key: str, minimum: int = 1) -> int:
    value = schedule.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{_KEY}.{key}: expected an integer >= {minimum} with kind: {schedule.get('kind')}, "
            f"got {value!r}"
        )
    return value


def capture_steps(schedule: Mapping, *, iterations_per_epoch: int, epochs: int) -> np.ndarray:
    """The sorted, unique training steps at which activations are captured.

    Parameters
    ----------
    schedule
        ``capture.schedule`` of an experiment: ``kind`` and its parameter (``every``, ``points``
        or ``steps``), optionally ``first_epoch_every``.
    iterations_per_epoch, epochs
        Length of training; the last step is ``iterations_per_epoch * epochs``.

    Returns
    -------
    np.ndarray
        int64 steps, strictly increasing, starting at 0.

    Raises
    ------
    ConfigError
        Unknown kind, a missing or invalid parameter, or listed steps beyond the end of training.
    """
    if iterations_per_epoch < 1 or epochs < 1:
        raise ConfigError(
            f"training must have at least one iteration per epoch and one epoch "
            f"(got {iterations_per_epoch} iterations x {epochs} epochs)"
        )
    total = iterations_per_epoch * epochs
    kind = schedule.get("kind", "epoch")
    if kind == "epoch":
        steps = np.arange(0, total + 1, iterations_per_epoch)
    elif kind == "every":
        every = _positive(schedule, "every")
        steps = np.append(np.arange(0, total + 1, every), total)
    elif kind == "log":
        points = _positive(schedule, "points", minimum=2)
        steps = np.rint(np.geomspace(1, total, points)).astype(np.int64)
    elif kind == "list":
        listed = schedule.get("steps")
        if not listed or not all(isinstance(s, int) and not isinstance(s, bool) for s in listed):
            raise ConfigError(
                f"{_KEY}.steps: expected a non-empty list of integers, got {listed!r}"
            )
        steps = np.asarray(listed, dtype=np.int64)
        outside = steps[(steps < 0) | (steps > total)]
        if outside.size:
            raise ConfigError(
                f"{_KEY}.steps: step(s) {', '.join(map(str, outside.tolist()))} outside training; "
                f"allowed 0..{total} ({epochs} epochs x {iterations_per_epoch} iterations)"
            )
    else:
        raise ConfigError(
            f"{_KEY}.kind: {kind!r} is not allowed; allowed values: {', '.join(SCHEDULE_KINDS)}"
        )
    dense = schedule.get("first_epoch_every")
    if dense is not None:
        dense = _positive(schedule, "first_epoch_every")
        steps = np.concatenate([steps, np.arange(0, iterations_per_epoch + 1, dense)])
    return np.unique(np.concatenate([[0], steps]).astype(np.int64))


def epochs_of(steps: np.ndarray, iterations_per_epoch: int) -> np.ndarray:
    """Training steps as float epochs (``step / iterations_per_epoch``)."""
    if iterations_per_epoch < 1:
        raise ConfigError(f"iterations per epoch must be >= 1, got {iterations_per_epoch}")
    return np.asarray(steps, dtype=np.float64) / iterations_per_epoch
