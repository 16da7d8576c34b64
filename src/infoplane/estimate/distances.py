"""The distance stage: fill (or resume) a distance cache from an activation store, on Dask.

One task per (split, step) reads exactly that step's chunks through the store's reader, computes
the squared distances of every layer and of the inputs (:mod:`infoplane.core.distances`), and
writes its own region of the pre-allocated cache (:mod:`infoplane.io.cache`).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infoplane.core.distances import (
    channel_squared_distances,
    squared_distances,
    squared_distances_or_nan,
)
from infoplane.errors import StoreError, warn_nan_points
from infoplane.estimate.cluster import client_or, run_tasks
from infoplane.io import cache
from infoplane.io.files import exclusive
from infoplane.io.store import StoreReader, read_store_plan

log = logging.getLogger(__name__)


def step_distances(
    store: str | Path, split: str, row: int, layers: Sequence[str]
) -> dict[str, np.ndarray]:
    """Read one step of one split from the store and compute its squared distances.

    Returns
    -------
    dict
        The arrays of :data:`infoplane.io.cache.STEP_VARIABLES`: ``d2`` (L, N, N), ``d2_x``
        (N, N), ``y`` (N,), ``nonfinite`` (L,) and ``nonfinite_x`` ().
    """
    reader = StoreReader(store)
    d2, nonfinite = [], []
    for name in layers:
        matrix, bad = squared_distances_or_nan(reader.read(split, name, row))
        d2.append(matrix)
        nonfinite.append(bad)
    d2_x, bad_x = squared_distances_or_nan(reader.read(split, "x", row))
    y = np.asarray(reader.read(split, "y", row), dtype=np.int64)
    if y.size and int(y.min()) < 0:
        negative = sorted(set(y[y < 0].tolist()))[:5]
        raise StoreError(
            f"{reader.where(split, 'y', reader.steps(split), [row])}: negative label(s) "
            f"{negative}; labels are class numbers 0, 1, ...: fix the labels the store was "
            "written with (`infoplane store validate` lists every such step)"
        )
    return {
        "d2": np.stack(d2) if d2 else np.empty((0, *d2_x.shape)),
        "d2_x": d2_x,
        "y": y,
        "nonfinite": np.asarray(nonfinite, dtype=bool),
        "nonfinite_x": np.asarray(bad_x),
    }


def channel_distances(store: str | Path, split: str, row: int, layer: str) -> np.ndarray:
    """Per-channel squared distances (C, N, N) of one layer at one step (axis 0 of a sample).

    A layer of vectors (D,) is one channel. Raises InputError on NaN/Inf activations.
    """
    values = StoreReader(store).read(split, layer, row)
    if values.ndim == 2:
        return squared_distances(values)[None]
    return channel_squared_distances(values)


def step_activations(
    store: str | Path, split: str, row: int, layers: Sequence[str]
) -> dict[str, Any]:
    """One step's activations as stored: ``layers`` (one (N, ...) array per layer), ``x``, ``y``.

    For estimators that work on the activations themselves (binning), not on distances.
    """
    reader = StoreReader(store)
    return {
        "layers": [np.asarray(reader.read(split, name, row)) for name in layers],
        "x": np.asarray(reader.read(split, "x", row)),
        "y": np.asarray(reader.read(split, "y", row), dtype=np.int64),
    }


def distances_task(
    store: str, out: str, split: str, row: int, index: int, layers: Sequence[str]
) -> list[str]:
    """Task: compute one (split, step) and write its region of the cache, then mark it done.

    Returns
    -------
    list of str
        Names of the layers (``"x"`` for the input) whose activations were not finite.
    """
    values = step_distances(store, split, row, layers)
    cache.write_step(out, split, index, values)
    bad = [name for name, flag in zip(layers, values["nonfinite"], strict=True) if flag]
    return (["x"] if values["nonfinite_x"] else []) + bad


def compute_distances(
    store: str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
    client: Any = None,
    workers: int | None = None,
    scheduler_address: str | None = None,
    cluster_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fill (or resume) the distance cache ``out`` from the activation store ``store``.

    Parameters
    ----------
    store, out
        Activation store and cache paths.
    splits
        Splits to cache (default: every split of the store).
    overwrite
        Start afresh even if ``out`` holds a compatible, partly done cache.
    client
        A ``distributed.Client`` to run on; None starts one from ``workers``/
        ``scheduler_address``/``cluster_config`` (see :mod:`infoplane.estimate.cluster`).

    Returns
    -------
    dict
        ``computed`` and ``skipped`` step counts and the ``nonfinite`` points
        ``(split, step, layer)``.
    """
    # a second writer of the same cache fails here, before it touches it
    with exclusive(out):
        return _compute_distances(
            store, Path(out), splits=splits, overwrite=overwrite, client=client, workers=workers,
            scheduler_address=scheduler_address, cluster_config=cluster_config,
        )  # fmt: skip


def _compute_distances(
    store: str | Path,
    out: Path,
    *,
    splits: Sequence[str] | None,
    overwrite: bool,
    client: Any,
    workers: int | None,
    scheduler_address: str | None,
    cluster_config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """:func:`compute_distances` with the lock of ``out`` held."""
    plan = read_store_plan(store, splits)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if out.exists():
        cache.check_compatible(out, plan)
    else:
        cache.create_cache(out, plan)

    calls, names = [], []
    skipped = 0
    for split in plan.splits.values():
        done = cache.cache_done(out, split.split)
        for i, (step, row) in enumerate(zip(split.steps, split.rows, strict=True)):
            if done[i]:
                skipped += 1
                continue
            calls.append((plan.path, str(out.resolve()), split.split, int(row), i, plan.layers))
            names.append(f"{split.split}-{step}")
    log.info("distances: %d steps to compute, %d already done", len(calls), skipped)
    if calls:
        cluster = {
            "workers": workers,
            "scheduler_address": scheduler_address,
            "cluster_config": cluster_config,
        }
        with client_or(client, **cluster) as active:
            run_tasks(active, distances_task, calls, label="distances", names=names)
    # from the cache, so that a resumed run still names the points of the earlier attempt
    nonfinite = cache.nonfinite_points(out)
    if nonfinite:
        warn_nan_points(plan.attrs.get("run"), nonfinite, stage="distances")
    return {"computed": len(calls), "skipped": skipped, "nonfinite": nonfinite}
