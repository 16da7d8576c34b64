"""The distance cache: squared distances of every (split, step, layer), the only activation pass.

Layout of ``distances.zarr`` (Zarr v3, one group per probe split, readable by xarray)::

    attrs: kind, store (source store path), store_attrs_sha256 (digest of the store's root
           attributes, checked when a cache is resumed), infoplane_version, layers, run,
           experiment, splits
    <split>/
      d2(step, layer, i, j)  float64   chunk (1, layers up to ~64 MiB, N, N), uncompressed
      d2_x(step, i, j)       float64   squared distances of the network inputs
      y(step, sample)        int64     labels of the probe samples
      nonfinite(step, layer) bool      the layer's activations held NaN/Inf (d2 is NaN)
      nonfinite_x(step)      bool
      done(step)             bool      set after the step's region is written
      dim(layer), dim_x      int64     feature dimensions (for Silverman/Scott widths)
      coords: step, epoch(step), layer
    widths/<split>-<key>/    optional: the result of an alignment width search run on these
      sigma_star(step, layer) float64, boundary_hit(step, layer) bool, step(step) int64;
      attrs: search (rule, grid, points, label kernel), layers, infoplane_version, failures

One task per (split, step) opens the store's Zarr arrays itself, reads exactly that step's chunks,
writes its own region of the pre-allocated cache and then sets ``done``. Every per-step array has
one chunk per step, so concurrent tasks never share a chunk. A rerun skips done steps.

The argmax widths σ* of an alignment search depend only on the distances, the labels and the
grid, so ``infoplane estimate`` keeps them under ``widths/`` (keyed by the search settings and the
package version) and a later preset with the same search (another α, another input width) skips
it. Each entry is written beside its final name and renamed into place, so concurrent estimates
never see half an entry; deleting ``widths/`` only costs the searches again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infoplane.errors import StoreError

log = logging.getLogger(__name__)

CACHE_KIND = "infoplane-distance-cache"
CACHE_SCHEMA_VERSION = 1
SPLITS = ("train", "test")


class NaNPointWarning(UserWarning):
    """Some (run, split, step, layer) points could not be estimated (NaN/Inf activations): NaN."""


@dataclass(frozen=True)
class SplitPlan:
    """Captured steps of one split and where they live in the store and in the cache."""

    split: str
    steps: np.ndarray  # captured steps, ascending
    epochs: np.ndarray
    store_index: np.ndarray  # positions on the store's step axis
    n_samples: int


@dataclass(frozen=True)
class StorePlan:
    """What the distance stage needs to know about an activation store (metadata only)."""

    path: str
    layers: list[str]
    layer_shapes: dict[str, tuple[int, ...]]
    input_shape: tuple[int, ...]
    splits: dict[str, SplitPlan]
    attrs: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""  # digest of the store's root attributes (its settings)

    @property
    def dims(self) -> dict[str, int]:
        return {name: int(np.prod(shape)) for name, shape in self.layer_shapes.items()}

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))


def _open_group(path: str | Path, mode: str = "r"):
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode)
    except Exception as exc:  # zarr raises several types for a missing or damaged group
        raise StoreError(f"cannot open Zarr group {path}: {exc}") from None


def read_store_plan(store: str | Path, splits: Sequence[str] | None = None) -> StorePlan:
    """Read an activation store's metadata: layers, shapes and captured steps per split.

    Raises
    ------
    StoreError
        The path is not an activation store, a split or layer is missing, or nothing is captured.
    """
    path = Path(store)
    if not path.exists():
        raise StoreError(f"activation store {path} does not exist")
    root = _open_group(path)
    attrs = dict(root.attrs)
    layers = attrs.get("layers")
    if not layers:
        raise StoreError(
            f"{path} is not an activation store: its attributes lack 'layers' "
            "(write it with infoplane.io.store.create_store)"
        )
    available = [name for name in SPLITS if name in root]
    wanted = list(splits) if splits else available
    missing = [name for name in wanted if name not in root]
    if missing or not wanted:
        raise StoreError(f"store {path} has no split group(s) {missing or list(SPLITS)}")
    plans: dict[str, SplitPlan] = {}
    layer_shapes: dict[str, tuple[int, ...]] = {}
    input_shape: tuple[int, ...] = ()
    for split in wanted:
        group = root[split]
        for name in ["x", "y", "step", "captured", *layers]:
            if name not in group:
                raise StoreError(
                    f"store {path}, split {split}: variable {name!r} is missing "
                    f"(layers listed in the store attributes: {', '.join(layers)})"
                )
        captured = np.asarray(group["captured"][...], dtype=bool)
        index = np.flatnonzero(captured)
        steps = np.asarray(group["step"][...], dtype=np.int64)
        epochs = (
            np.asarray(group["epoch"][...], dtype=np.float64)
            if "epoch" in group
            else np.full(steps.shape, np.nan)
        )
        order = np.argsort(steps[index], kind="stable")
        index = index[order]
        n_samples = int(group["y"].shape[1])
        plans[split] = SplitPlan(split, steps[index], epochs[index], index, n_samples)
        for name in layers:
            shape = tuple(int(s) for s in group[name].shape[2:])
            if layer_shapes.setdefault(name, shape) != shape:
                raise StoreError(f"store {path}: layer {name!r} has different shapes per split")
        input_shape = tuple(int(s) for s in group["x"].shape[2:])
    if not any(len(p.steps) for p in plans.values()):
        raise StoreError(
            f"store {path} has no captured step in split(s) {', '.join(wanted)}; "
            "run (or resume) training first"
        )
    keep = {k: attrs[k] for k in ("experiment", "run", "seed", "model", "dataset") if k in attrs}
    return StorePlan(
        str(path.resolve()), list(layers), layer_shapes, input_shape, plans, keep, _digest(attrs)
    )


def _digest(value: Any) -> str:
    """SHA-256 of the canonical JSON text of ``value``."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _distances_or_nan(values: np.ndarray) -> tuple[np.ndarray, bool]:
    """Squared distances of one step's samples; an all-NaN matrix when the values are not finite.

    A diverged run's NaN/Inf activations become a flagged NaN point, not an error, so the other
    layers and steps are still computed.
    """
    from infoplane.core.distances import squared_distances

    n = values.shape[0]
    if not np.isfinite(values).all():
        return np.full((n, n), np.nan), True
    return squared_distances(values), False


def _read_step(
    store: str, group: Any, name: str, row: int, split: str, step: int | None = None
) -> np.ndarray:
    """One step of one store variable, read from its own chunk(s).

    A missing chunk of a captured step or one that does not decode is a StoreError naming the
    split, step and variable (zarr alone would return fill values for a missing chunk).
    """
    import itertools
    import math

    array = group[name]
    where = f"store {store}, split {split}, step {step if step is not None else f'index {row}'}"
    chunks = array.chunks
    grid = [range(math.ceil(n / c)) for n, c in zip(array.shape[1:], chunks[1:], strict=True)]
    for rest in itertools.product(*grid):
        key = array.metadata.encode_chunk_key((row // chunks[0], *rest))
        if not (Path(store) / array.path / key).is_file():
            raise StoreError(
                f"{where}, variable {name!r}: chunk {key} "
                "is missing although the step is captured; recapture the step or restore the "
                "store (`infoplane store validate` lists every damaged chunk)"
            )
    try:
        return np.asarray(array[row])
    except Exception as exc:  # zarr raises several types for a truncated or corrupt chunk
        raise StoreError(
            f"{where}, variable {name!r}: the chunk cannot "
            f"be decoded ({type(exc).__name__}: {exc}); it is truncated or corrupt. Recapture "
            "the step or restore the store"
        ) from exc


def step_distances(
    store: str, split: str, store_index: int, layers: Sequence[str]
) -> dict[str, np.ndarray]:
    """Read one step of one split from the store and compute its squared distances.

    Opens the store's Zarr arrays directly and reads only this step's chunks.

    Returns
    -------
    dict
        ``d2`` (L, N, N), ``d2_x`` (N, N), ``y`` (N,), ``nonfinite`` (L,) and ``nonfinite_x`` ().
    """
    group = _open_group(store)[split]
    step = int(group["step"][store_index])
    d2 = []
    nonfinite = []
    for name in layers:
        matrix, bad = _distances_or_nan(_read_step(store, group, name, store_index, split, step))
        d2.append(matrix)
        nonfinite.append(bad)
    d2_x, bad_x = _distances_or_nan(_read_step(store, group, "x", store_index, split, step))
    return {
        "d2": np.stack(d2) if d2 else np.empty((0, *d2_x.shape)),
        "d2_x": d2_x,
        "y": np.asarray(_read_step(store, group, "y", store_index, split, step), dtype=np.int64),
        "nonfinite": np.asarray(nonfinite, dtype=bool),
        "nonfinite_x": np.asarray(bad_x),
    }


def channel_distances(store: str, split: str, store_index: int, layer: str) -> np.ndarray:
    """Per-channel squared distances (C, N, N) of one layer at one step (axis 0 of a sample).

    A layer of vectors (D,) is one channel. Raises InputError on NaN/Inf activations.
    """
    from infoplane.core.distances import channel_squared_distances, squared_distances

    values = _read_step(store, _open_group(store)[split], layer, store_index, split)
    if values.ndim == 2:
        return squared_distances(values)[None]
    return channel_squared_distances(values)


def write_step(
    store: str,
    cache: str,
    split: str,
    store_index: int,
    cache_index: int,
    layers: Sequence[str],
) -> list[str]:
    """Task: compute one (split, step) and write its region of the cache, then mark it done.

    Returns
    -------
    list of str
        Names of the layers (``"x"`` for the input) whose activations were not finite.
    """
    result = step_distances(store, split, store_index, layers)
    group = _open_group(cache, mode="r+")[split]
    group["d2"][cache_index] = result["d2"]
    group["d2_x"][cache_index] = result["d2_x"]
    group["y"][cache_index] = result["y"]
    group["nonfinite"][cache_index] = result["nonfinite"]
    group["nonfinite_x"][cache_index] = result["nonfinite_x"]
    # last: a step counts as cached only once every variable of it is on disk
    group["done"][cache_index] = True
    bad = [name for name, flag in zip(layers, result["nonfinite"], strict=True) if flag]
    return (["x"] if result["nonfinite_x"] else []) + bad


#: Target size of one d2 chunk: all layers of a step in one read at small N, a few at large N.
D2_CHUNK_BYTES = 64 * 2**20


def _split_template(plan: StorePlan, split: SplitPlan):
    import dask.array as da
    import xarray as xr

    n_steps, n_layers, n = len(split.steps), len(plan.layers), split.n_samples
    per_chunk = max(1, min(n_layers, D2_CHUNK_BYTES // (8 * n * n)))

    def lazy(shape, chunks, dtype):
        # never computed: to_zarr(compute=False) writes only the metadata of these arrays
        return da.zeros(shape, chunks=chunks, dtype=dtype)

    data = {
        "d2": (
            ("step", "layer", "i", "j"),
            lazy((n_steps, n_layers, n, n), (1, per_chunk, n, n), "f8"),
        ),
        "d2_x": (("step", "i", "j"), lazy((n_steps, n, n), (1, n, n), "f8")),
        "y": (("step", "sample"), lazy((n_steps, n), (1, n), "i8")),
        "nonfinite": (("step", "layer"), lazy((n_steps, n_layers), (1, n_layers), bool)),
        "nonfinite_x": (("step",), lazy((n_steps,), (1,), bool)),
        "done": (("step",), lazy((n_steps,), (1,), bool)),
        "dim": (("layer",), np.array([plan.dims[name] for name in plan.layers], dtype=np.int64)),
        "dim_x": ((), np.int64(plan.input_dim)),
    }
    coords = {
        "step": ("step", split.steps),
        "epoch": ("step", split.epochs),
        "layer": ("layer", np.array(plan.layers, dtype=object)),
    }
    attrs = {"split": split.split, "n_samples": split.n_samples}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _cache_attrs(plan: StorePlan) -> dict[str, Any]:
    from infoplane import __version__

    return {
        "kind": CACHE_KIND,
        "cache_schema_version": CACHE_SCHEMA_VERSION,
        "store": plan.path,
        "store_attrs_sha256": plan.fingerprint,
        "infoplane_version": __version__,
        "layers": list(plan.layers),
        "splits": list(plan.splits),
        **plan.attrs,
    }


def create_cache(path: str | Path, plan: StorePlan) -> None:
    """Pre-allocate an empty cache for ``plan`` (metadata only; every ``done`` is False).

    Built beside ``path`` and moved into place, so a killed creation leaves no half cache.
    """
    import zarr

    path = Path(path)
    tmp = path.with_name(path.name + ".creating")
    shutil.rmtree(tmp, ignore_errors=True)
    root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    root.attrs.update(_cache_attrs(plan))
    for split in plan.splits.values():
        template = _split_template(plan, split)
        # distances are full-entropy float64: compression would cost time and save little
        raw = {"compressors": None}
        template.to_zarr(
            str(tmp),
            group=split.split,
            mode="w",
            compute=False,
            consolidated=False,
            encoding={"d2": raw, "d2_x": raw},
        )
    # unwritten steps must read as missing, not as zero distances
    for split in plan.splits:
        group = zarr.open_group(str(tmp), mode="r+")[split]
        group["done"][...] = False
        group["nonfinite"][...] = False
        group["nonfinite_x"][...] = False
    # readers opening with xarray's defaults find consolidated metadata (no fallback warning);
    # tasks later write data only, so it never goes stale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr: consolidated metadata is outside the v3 spec
        zarr.consolidate_metadata(str(tmp))
    os.replace(tmp, path)


def open_cache_root(path: str | Path):
    """The cache's root Zarr group, checked to be a distance cache."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"distance cache {path} does not exist; run `infoplane distances` first")
    root = _open_group(path)
    if root.attrs.get("kind") != CACHE_KIND:
        raise StoreError(f"{path} is not a distance cache (attribute kind != {CACHE_KIND!r})")
    return root


def is_distance_cache(path: str | Path) -> bool:
    """Whether ``path`` is a distance cache (as opposed to an activation store)."""
    try:
        return _open_group(path).attrs.get("kind") == CACHE_KIND
    except StoreError:
        return False


def cache_done(path: str | Path, split: str) -> np.ndarray:
    """The ``done(step)`` flags of one split."""
    return np.asarray(open_cache_root(path)[split]["done"][...], dtype=bool)


def _check_compatible(path: Path, plan: StorePlan) -> None:
    """A cache can be resumed only for the same steps, layers and probe sizes."""
    root = open_cache_root(path)
    problems = []
    if list(root.attrs.get("layers", [])) != plan.layers:
        problems.append(f"layers {root.attrs.get('layers')} != store layers {plan.layers}")
    # a store trained again with other settings has the same steps but other activations
    if root.attrs.get("store_attrs_sha256", plan.fingerprint) != plan.fingerprint:
        problems.append(
            "the store's attributes (its run, seed and settings) differ from those the cache "
            "was computed from: it was trained again since"
        )
    for name, split in plan.splits.items():
        if name not in root:
            problems.append(f"split {name} missing")
            continue
        steps = np.asarray(root[name]["step"][...])
        if not np.array_equal(steps, split.steps):
            problems.append(f"split {name}: cached steps differ from the store's captured steps")
        if root[name]["y"].shape[1] != split.n_samples:
            problems.append(f"split {name}: probe size differs")
    if problems:
        raise StoreError(
            f"distance cache {path} does not match store {plan.path}: {'; '.join(problems)}. "
            "Delete it or rerun with --overwrite."
        )
    if root.attrs.get("store") != plan.path:
        log.info("resuming %s, written from %s", path, root.attrs.get("store"))


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
        A ``distributed.Client`` to run on; None starts one (see :mod:`infoplane.estimate.cluster`).

    Returns
    -------
    dict
        ``computed`` and ``skipped`` step counts and the ``nonfinite`` points
        ``(split, step, layer)``.
    """
    from infoplane.estimate.cluster import dask_client, run_tasks

    plan = read_store_plan(store, splits)
    out = Path(out)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if out.exists():
        _check_compatible(out, plan)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        create_cache(out, plan)

    calls, names = [], []
    skipped = 0
    for split in plan.splits.values():
        done = cache_done(out, split.split)
        for i, (step, index) in enumerate(zip(split.steps, split.store_index, strict=True)):
            if done[i]:
                skipped += 1
                continue
            calls.append((plan.path, str(out.resolve()), split.split, int(index), i, plan.layers))
            names.append(f"{split.split}-{step}")
    log.info("distances: %d steps to compute, %d already done", len(calls), skipped)
    if calls:
        if client is None:
            with dask_client(
                workers=workers, scheduler_address=scheduler_address, cluster_config=cluster_config
            ) as own:
                run_tasks(own, write_step, calls, label="distances", names=names)
        else:
            run_tasks(client, write_step, calls, label="distances", names=names)
    # from the cache, so that a resumed run still names the points of the earlier attempt
    nonfinite = nonfinite_points(out)
    if nonfinite:
        warn_nan_points(plan.attrs.get("run"), nonfinite, stage="distances")
    return {"computed": len(calls), "skipped": skipped, "nonfinite": nonfinite}


def nonfinite_points(path: str | Path) -> list[tuple[str, int, str]]:
    """``(split, step, layer)`` of every cached point with NaN/Inf activations ("x": input)."""
    root = open_cache_root(path)
    points = []
    for split in root.attrs.get("splits", SPLITS):
        group = root[split]
        steps = np.asarray(group["step"][...])
        layers = list(root.attrs["layers"])
        bad = np.asarray(group["nonfinite"][...], dtype=bool)
        bad_x = np.asarray(group["nonfinite_x"][...], dtype=bool)
        for t, step in enumerate(steps):
            names = (["x"] if bad_x[t] else []) + [
                n for n, b in zip(layers, bad[t], strict=True) if b
            ]
            points.extend((split, int(step), name) for name in names)
    return points


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
    log.warning(message)
    warnings.warn(message, NaNPointWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------
# alignment widths kept beside the distances

WIDTHS_GROUP = "widths"


@dataclass(frozen=True)
class AlignmentWidths:
    """The per-step argmax widths of one split, as an alignment search returned them."""

    sigma_star: np.ndarray  # (step, layer)
    boundary_hit: np.ndarray  # (step, layer) bool
    failures: list[tuple[int, str, str]]  # (step position, layer, reason)


def _widths_entry(cache: str | Path, split: str, search: Mapping[str, Any]) -> Path:
    from infoplane import __version__

    key = _digest({"search": dict(search), "version": __version__})[:16]
    return Path(cache) / WIDTHS_GROUP / f"{split}-{key}"


def read_cached_widths(
    cache: str | Path,
    split: str,
    search: Mapping[str, Any],
    steps: np.ndarray,
    layers: Sequence[str],
) -> AlignmentWidths | None:
    """The kept result of ``search`` on ``split``, or None when there is none for these steps."""
    import zarr

    from infoplane import __version__

    entry = _widths_entry(cache, split, search)
    if not (entry / "zarr.json").is_file():
        return None
    try:
        group = zarr.open_group(str(entry), mode="r", use_consolidated=False)
        attrs = dict(group.attrs)
        same = (
            attrs.get("search") == dict(search)
            and attrs.get("infoplane_version") == __version__
            and list(attrs.get("layers", [])) == list(layers)
            and np.array_equal(np.asarray(group["step"][...]), steps)
        )
        if not same:
            return None
        return AlignmentWidths(
            np.asarray(group["sigma_star"][...], dtype=np.float64),
            np.asarray(group["boundary_hit"][...], dtype=bool),
            [(int(k), str(layer), str(why)) for k, layer, why in attrs.get("failures", [])],
        )
    except Exception as exc:  # zarr raises several types for a damaged entry: search again
        log.warning("ignoring the kept widths %s, which cannot be read (%s)", entry, exc)
        return None


def write_cached_widths(
    cache: str | Path,
    split: str,
    search: Mapping[str, Any],
    steps: np.ndarray,
    layers: Sequence[str],
    widths: AlignmentWidths,
) -> None:
    """Keep the result of ``search`` on ``split`` for later presets; best effort.

    A cache that cannot be written (read-only, full disk) only costs the search next time, so
    the failure is logged, not raised. An entry that another estimate wrote meanwhile is kept.
    """
    import zarr

    from infoplane import __version__

    entry = _widths_entry(cache, split, search)
    tmp = entry.with_name(f"{entry.name}.writing-{uuid.uuid4().hex[:12]}")
    try:
        if not (entry.parent / "zarr.json").is_file():
            zarr.open_group(str(entry.parent), mode="a", zarr_format=3)
        shutil.rmtree(tmp, ignore_errors=True)
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        group.attrs.update(
            {
                "search": dict(search),
                "layers": list(layers),
                "infoplane_version": __version__,
                "failures": [[int(k), layer, why] for k, layer, why in widths.failures],
            }
        )
        for name, values in (
            ("step", np.asarray(steps, dtype=np.int64)),
            ("sigma_star", np.asarray(widths.sigma_star, dtype=np.float64)),
            ("boundary_hit", np.asarray(widths.boundary_hit, dtype=bool)),
        ):
            group.create_array(name, data=values, compressors=None)
        try:
            os.replace(tmp, entry)
        except OSError:
            if not entry.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another estimate kept the same search
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        log.warning(
            "could not keep the alignment widths in %s (%s); later presets search again",
            entry.parent,
            exc,
        )
