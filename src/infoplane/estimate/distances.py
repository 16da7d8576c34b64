"""The distance stage: fill (or resume) a distance cache from an activation store, on Dask.

One task per (split, step) reads exactly that step's chunks through the store's reader, computes
the squared distances of every layer and of the inputs (:mod:`infoplane.core.distances`), and
writes its own region of the pre-allocated cache (:mod:`infoplane.io.cache`), one chunk of
layers at a time (at large N one layer's N×N matrix is held at a time).

How each layer's distances are kept is chosen per layer by :func:`choose_storage` (the
experiment's ``distances: {store: ...}``; ``auto`` by default): ``full`` float64 as before,
``float32`` (the upper triangle in float32, a quarter of the bytes) or ``recompute`` (nothing
kept; an estimate computes them again from the activation store). :class:`PointDistances` gives
an estimate a point's layer distances one layer at a time, read or recomputed on demand.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infoplane.core.distances import (
    channel_squared_distances,
    pack_upper,
    squared_distances,
    squared_distances_or_nan,
    unpack_upper,
)
from infoplane.errors import InputError, StoreError, warn_nan_points
from infoplane.estimate.cluster import client_or, run_tasks
from infoplane.io import cache
from infoplane.io.files import exclusive
from infoplane.io.store import StoreReader, read_store_plan

log = logging.getLogger(__name__)


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


#: Storage modes of the experiment's ``distances: {store: ...}``.
STORAGE_MODES = ("auto", *cache.STORAGE_FORMS)
#: ``auto`` keeps every matrix of up to this many samples full (float64, as before): 32 MiB.
AUTO_FULL_MAX_N = 2048
# The cost model of ``auto`` above AUTO_FULL_MAX_N, per entry of an N×N matrix, measured on
# the 2-core development machine with one BLAS thread (benchmarks/bench_large_inputs.py prints
# them again): computing distances from activations costs _FORM_NS (the N² passes of the Gram
# identity) plus 2·D flops at _GEMM_FLOPS (SYRK computes half of the products, hence the high
# rate); a float32 matrix costs 2 bytes read (half of the pairs, 4 bytes each) at
# _READ_BYTES_PER_S plus _UNPACK_NS to rebuild the matrix, and 2 bytes kept on disk, counted as
# _KEPT_BYTE_S seconds each (writing it once, and the space); an estimate reads a matrix _READS
# times (width search, entropies). With these, layers up to about 200 features are recomputed.
_FORM_NS = 15.0
_GEMM_FLOPS = 100e9
_READ_BYTES_PER_S = 1e9
_UNPACK_NS = 12.0
_KEPT_BYTE_S = 5e-9
_READS = 2


def storage_costs(n: int, dim: int) -> dict[str, float]:
    """Modelled seconds of keeping one (N, N) matrix of ``dim``-feature samples, per form.

    See the constants above; ``full`` is modelled too, as 8 bytes read and kept per entry.
    """
    entries = float(n) * n
    read = {
        "full": entries * 8 / _READ_BYTES_PER_S,
        "float32": entries * (2 / _READ_BYTES_PER_S + _UNPACK_NS * 1e-9),
        "recompute": entries * (_FORM_NS * 1e-9 + 2.0 * dim / _GEMM_FLOPS)
        + n * dim * 4 / _READ_BYTES_PER_S,
    }
    kept = {"full": 8 * entries, "float32": 2 * entries, "recompute": 0.0}
    return {form: _READS * read[form] + kept[form] * _KEPT_BYTE_S for form in read}


def choose_storage(n: int, dims: Mapping[str, int], mode: str = "auto") -> dict[str, str]:
    """The storage form of every layer (and ``"x"``) of a probe of ``n`` samples.

    Parameters
    ----------
    n
        Probe size N.
    dims
        Features per sample of every layer and of ``"x"``.
    mode
        One of :data:`STORAGE_MODES`: a form for every matrix, or ``auto``: ``full`` up to
        :data:`AUTO_FULL_MAX_N` samples (the cache and every estimate exactly as before), above
        it the cheapest of ``float32`` and ``recompute`` by :func:`storage_costs`.
    """
    if mode not in STORAGE_MODES:
        raise InputError(f"distances store {mode!r} is not one of {', '.join(STORAGE_MODES)}")
    if mode != "auto":
        return {name: mode for name in dims}
    if n <= AUTO_FULL_MAX_N:
        return {name: "full" for name in dims}
    chosen = {}
    for name, dim in dims.items():
        costs = storage_costs(n, dim)
        chosen[name] = min(("float32", "recompute"), key=costs.__getitem__)
    return chosen


def _kept(d2: np.ndarray, form: str) -> np.ndarray | None:
    """``d2`` in its storage form (None when recomputed)."""
    if form == "full":
        return d2
    if form == "float32":
        return pack_upper(d2)
    return None


def _finite(values: Any) -> bool:
    return bool(np.isfinite(np.asarray(values)).all())


def distances_task(
    store: str, out: str, split: str, row: int, index: int, layers: Sequence[str]
) -> list[str]:
    """Task: compute one (split, step) and write its region of the cache, then mark it done.

    The layers are computed and written one chunk of layers at a time (a chunk holds every
    layer at small N, one layer at large N); a recomputed layer is only checked for NaN/Inf.

    Returns
    -------
    list of str
        Names of the layers (``"x"`` for the input) whose activations were not finite.
    """
    storage = cache.storage_of(out)
    reader = StoreReader(store)
    per_chunk = cache.layers_per_chunk(out, split)
    nonfinite = []
    for first in range(0, len(layers), per_chunk):
        block = []
        for name in layers[first : first + per_chunk]:
            values = reader.read(split, name, row)
            if storage[name] == "recompute":
                nonfinite.append(not _finite(values))
                block.append(None)
                continue
            matrix, bad = squared_distances_or_nan(values)
            nonfinite.append(bad)
            block.append(_kept(matrix, storage[name]))
        names = layers[first : first + per_chunk]
        cache.write_layers(out, split, index, first, block, [storage[n] for n in names])
        del block
    x = reader.read(split, "x", row)
    if storage["x"] == "recompute":
        d2_x, bad_x = None, not _finite(x)
    else:
        matrix, bad_x = squared_distances_or_nan(x)
        d2_x = _kept(matrix, storage["x"])
    values = {
        "d2_x": d2_x,
        "y": _labels(reader, split, row),
        "nonfinite": np.asarray(nonfinite, dtype=bool),
        "nonfinite_x": np.asarray(bad_x),
    }
    cache.write_step(out, split, index, values, storage)
    bad = [name for name, flag in zip(layers, values["nonfinite"], strict=True) if flag]
    return (["x"] if values["nonfinite_x"] else []) + bad


class PointDistances:
    """The layer distances of one point, one (N, N) float64 matrix per layer, on demand.

    ``point_d2[i]`` reads layer ``i`` from the distance cache (unpacking a float32 layer) or
    computes it from the activation store (a recomputed layer, or a store source); nothing is
    held between two reads, so a large point never holds all its layers' matrices at once.
    ``numpy.asarray(point_d2)`` stacks every layer (for estimators that want them all).
    """

    def __init__(
        self,
        layers: Sequence[str],
        *,
        cache_path: str | None = None,
        store: str | None = None,
        split: str,
        index: int,
        row: int | None,
    ) -> None:
        self.layers = tuple(layers)
        self.cache_path, self.store, self.split = cache_path, store, split
        self.index, self.row = index, row
        self.storage = (
            cache.storage_of(cache_path)
            if cache_path is not None
            else {name: "recompute" for name in layers}
        )

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: Any) -> np.ndarray:
        i = int(i)
        name = self.layers[i]
        form = self.storage.get(name, "full")
        if form == "recompute":
            if self.store is None or self.row is None:
                raise StoreError(
                    f"the distances of layer {name!r} are recomputed from the activation "
                    "store, which is not known here; pass --store STORE"
                )
            values = StoreReader(self.store).read(self.split, name, self.row)
            return squared_distances_or_nan(values)[0]
        stored = cache.read_layer(self.cache_path, self.split, self.index, i)
        return stored if form == "full" else unpack_upper(stored, _samples(stored))

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        stack = np.stack([self[i] for i in range(len(self))])
        return stack if dtype is None else stack.astype(dtype)


def _samples(packed: np.ndarray) -> int:
    """N of a packed upper triangle of N(N−1)/2 entries."""
    return round((1 + math.sqrt(1 + 8 * packed.size)) / 2)


def _labels(reader: StoreReader, split: str, row: int) -> np.ndarray:
    y = np.asarray(reader.read(split, "y", row), dtype=np.int64)
    if y.size and int(y.min()) < 0:
        negative = sorted(set(y[y < 0].tolist()))[:5]
        raise StoreError(
            f"{reader.where(split, 'y', reader.steps(split), [row])}: negative label(s) "
            f"{negative}; labels are class numbers 0, 1, ...: fix the labels the store was "
            "written with (`infoplane store validate` lists every such step)"
        )
    return y


def load_point(
    source_kind: str,
    path: str,
    store: str | None,
    split: str,
    index: int,
    row: int | None,
    layers: Sequence[str],
    *,
    with_layers: bool = True,
    with_inputs: bool = True,
) -> dict[str, Any]:
    """One point's arrays with ``d2`` a :class:`PointDistances` (read one layer at a time).

    ``source_kind`` is ``"cache"`` (``path`` a distance cache; ``store`` and the store ``row``
    are needed only for recomputed matrices) or ``"store"`` (``path`` the activation store,
    ``row`` = ``index``). The flags come from the cache, or from a finiteness check of the
    activations; ``d2_x`` is always an (N, N) float64 matrix, left out (with the cache's
    ``d2_x`` not read) when ``with_inputs`` is False: the width search does not need it.
    """
    if source_kind == "store":
        reader = StoreReader(path)
        nonfinite = np.array([not _finite(reader.read(split, n, index)) for n in layers], bool)
        x = reader.read(split, "x", index)
        data: dict[str, Any] = {
            "y": _labels(reader, split, index), "nonfinite": nonfinite,
            "nonfinite_x": np.asarray(not _finite(x)),
        }  # fmt: skip
        if with_inputs:
            data["d2_x"] = squared_distances_or_nan(x)[0]
        if with_layers:
            data["d2"] = PointDistances(layers, store=path, split=split, index=index, row=index)
        return data
    data = cache.read_step(path, split, index, layers=False, inputs=with_inputs)
    if not with_inputs:
        return _with_layers(data, with_layers, layers, path, store, split, index, row)
    if "d2_x_f32" in data:
        packed = data.pop("d2_x_f32")
        data["d2_x"] = unpack_upper(packed, data["y"].size)
    elif "d2_x" not in data:
        if store is None or row is None:
            raise StoreError(
                f"distance cache {path} recomputes the input distances from the activation "
                "store, which is not known here; pass --store STORE"
            )
        data["d2_x"] = squared_distances_or_nan(StoreReader(store).read(split, "x", row))[0]
    return _with_layers(data, with_layers, layers, path, store, split, index, row)


def _with_layers(
    data: dict[str, Any],
    with_layers: bool,
    layers: Sequence[str],
    path: str,
    store: str | None,
    split: str,
    index: int,
    row: int | None,
) -> dict[str, Any]:
    """``data`` with the lazy layer distances of a cached point under ``d2`` (when asked)."""
    if with_layers:
        data["d2"] = PointDistances(
            layers, cache_path=path, store=store, split=split, index=index, row=row
        )
    return data


def compute_distances(
    store: str | Path,
    out: str | Path,
    *,
    splits: Sequence[str] | None = None,
    overwrite: bool = False,
    storage: str = "auto",
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
    storage
        How distances are kept, one of :data:`STORAGE_MODES` (see :func:`choose_storage`);
        a resumed cache must have been created with the same choice.
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
            store, Path(out), splits=splits, overwrite=overwrite, storage=storage,
            client=client, workers=workers,
            scheduler_address=scheduler_address, cluster_config=cluster_config,
        )  # fmt: skip


def _compute_distances(
    store: str | Path,
    out: Path,
    *,
    splits: Sequence[str] | None,
    overwrite: bool,
    storage: str,
    client: Any,
    workers: int | None,
    scheduler_address: str | None,
    cluster_config: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """:func:`compute_distances` with the lock of ``out`` held."""
    plan = read_store_plan(store, splits)
    n = max((s.n_samples for s in plan.splits.values()), default=0)
    forms = choose_storage(n, {**plan.dims, "x": plan.input_dim}, storage)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if out.exists():
        cache.check_compatible(out, plan)
        kept = cache.storage_of(out)
        if kept != forms:
            raise StoreError(
                f"distance cache {out} keeps its distances as {kept}, but distances store "
                f"{storage!r} chooses {forms} for this store; rerun with --overwrite to "
                "recompute it, or with the setting it was created with"
            )
    else:
        cache.create_cache(out, plan, forms)
    log.info("distances: storage %s", forms)

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
