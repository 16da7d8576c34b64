"""Estimates: widths, Gram matrices, entropies and MI for every (split, step, layer), on Dask.

The work is split so that only tiny arrays travel and the step axis stays parallel:

1. width search (alignment rule only; a pass of its own when the widths are smoothed or kept):
   for every (split, step), read that step's distances and return the argmax width σ* of every
   layer. σ* depends only on the distances, the labels and the grid, so from a distance cache the
   widths are kept there and a later preset with the same search reuses them (``keep_widths``;
   see :mod:`infoplane.io.cache`);
2. smoothing (on the client, cheap): σ_t = w σ_{t-1} + (1 - w) σ*_t along the captured steps of
   each split and layer, with w = β^(iterations since the previous capture) by default (the
   paper's per-iteration average) or w = β per capture (``smoothing_per: capture``);
3. entropies: for every (split, step), build the Gram matrices and return H, I and diagnostics
   per layer.

Steps are cheap (tens of milliseconds), so consecutive steps travel to the workers in batches
(about two per worker thread and round).

Both task kinds read either the distance cache (the fast path; the activation store is never
opened for a preset that needs only distances) or, without a cache, the activation store itself
(distances are then computed on the fly and not kept, in each pass that needs them: twice for a
smoothed alignment rule, so run ``infoplane distances`` first when estimating more than once).

The result ``mi/<name>.zarr`` holds, on dims (split, step, layer): ``I_XT, I_TY, H_T, H_XT, H_TY,
sigma`` (width used), ``sigma_star`` (per-step argmax before smoothing; NaN for other rules),
``clipped_mass``, ``boundary_hit``; on (split, step): ``H_X, H_Y, sigma_x``; ``n_samples(split)``;
coordinate ``epoch(step)``; attributes ``preset`` (JSON), ``estimator``, ``source``, ``store``,
``run``, ``experiment``, ``infoplane_version``. Entropies are in bits. Points that cannot be
estimated (NaN/Inf activations) are NaN and named in a warning and in ``attrs["nan_points"]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infoplane.errors import ConfigError, InputError, StoreError
from infoplane.io.cache import (
    SPLITS,
    AlignmentWidths,
    is_distance_cache,
    open_cache_root,
    read_cached_widths,
    read_store_plan,
    step_distances,
    warn_nan_points,
    write_cached_widths,
)
from infoplane.io.results import write_result
from infoplane.presets import needs_activations, preset_to_json, validate_preset

log = logging.getLogger(__name__)

LAYER_VARIABLES = (
    "I_XT",
    "I_TY",
    "H_T",
    "H_XT",
    "H_TY",
    "sigma",
    "sigma_star",
    "clipped_mass",
    "boundary_hit",
)
STEP_VARIABLES = ("H_X", "H_Y", "sigma_x")
# per-layer outputs of infoplane.core.entropy.information_plane
_PLANE_LAYER_KEYS = ("I_XT", "I_TY", "H_T", "H_XT", "H_TY", "clipped_mass")


@dataclass(frozen=True)
class Source:
    """Where estimation tasks read distances: a distance cache or an activation store."""

    kind: str  # "cache" | "store"
    path: str
    store: str | None  # activation store, when the preset or the source needs it
    layers: tuple[str, ...]
    dims: tuple[int, ...]
    dim_x: int


@dataclass(frozen=True)
class SplitSteps:
    """The steps of one split to estimate, with their positions in the source and in the store."""

    split: str
    steps: np.ndarray
    epochs: np.ndarray
    index: np.ndarray  # position on the source's step axis
    store_index: np.ndarray | None  # position on the store's step axis (when the store is read)
    n_samples: int


def plan_source(
    source: str | Path,
    *,
    store: str | Path | None = None,
    splits: Sequence[str] | None = None,
    needs_store: bool = False,
) -> tuple[Source, dict[str, SplitSteps], dict[str, Any]]:
    """Describe what to estimate from ``source`` (a distance cache or an activation store).

    A distance cache is used without touching the activation store unless ``needs_store``; the
    store is then ``store`` or the one recorded in the cache's attributes.

    Raises
    ------
    StoreError
        A cached step is not done yet, or a needed store is missing.
    """
    source = Path(source)
    if not source.exists():
        raise StoreError(f"{source} does not exist (expected a distance cache or a store)")
    if not is_distance_cache(source):
        plan = read_store_plan(source, splits)
        steps = {
            name: SplitSteps(name, p.steps, p.epochs, p.store_index, p.store_index, p.n_samples)
            for name, p in plan.splits.items()
        }
        dims = tuple(plan.dims[name] for name in plan.layers)
        src = Source("store", plan.path, plan.path, tuple(plan.layers), dims, plan.input_dim)
        return src, steps, dict(plan.attrs)

    root = open_cache_root(source)
    attrs = dict(root.attrs)
    wanted = list(splits) if splits else [s for s in attrs.get("splits", SPLITS) if s in root]
    steps: dict[str, SplitSteps] = {}
    layers = tuple(attrs["layers"])
    dims: tuple[int, ...] = ()
    dim_x = 0
    for name in wanted:
        if name not in root:
            raise StoreError(f"distance cache {source} has no split {name!r}")
        group = root[name]
        done = np.asarray(group["done"][...], dtype=bool)
        step = np.asarray(group["step"][...], dtype=np.int64)
        if not done.all():
            missing = ", ".join(map(str, step[~done][:10]))
            raise StoreError(
                f"distance cache {source}, split {name}: steps {missing} are not computed yet; "
                f"rerun `infoplane distances {attrs.get('store', 'STORE')} --out {source}` "
                "to complete it"
            )
        epochs = np.asarray(group["epoch"][...], dtype=np.float64)
        n = int(group["y"].shape[1])
        steps[name] = SplitSteps(name, step, epochs, np.arange(len(step)), None, n)
        dims = tuple(int(d) for d in group["dim"][...])
        dim_x = int(group["dim_x"][...])
    store_path = None
    if needs_store:
        store_path = Path(store) if store is not None else Path(attrs.get("store", ""))
        if not store_path.exists():
            raise StoreError(
                f"this estimator reads the activations, but the store {store_path} recorded in "
                f"{source} does not exist; pass --store STORE"
            )
        plan = read_store_plan(store_path, wanted)
        for name, split in steps.items():
            position = {
                int(s): int(i)
                for s, i in zip(plan.splits[name].steps, plan.splits[name].store_index, strict=True)
            }
            lost = [int(s) for s in split.steps if int(s) not in position]
            if lost:
                raise StoreError(
                    f"store {store_path}, split {name}: cached steps {lost[:10]} are not captured"
                )
            store_index = np.array([position[int(s)] for s in split.steps], dtype=np.int64)
            steps[name] = SplitSteps(
                name, split.steps, split.epochs, split.index, store_index, split.n_samples
            )
        store_path = plan.path
    src = Source("cache", str(source.resolve()), store_path, layers, dims, dim_x)
    keep = {k: attrs[k] for k in ("experiment", "run", "seed", "model", "dataset") if k in attrs}
    keep["store"] = attrs.get("store")
    return src, steps, keep


# ---------------------------------------------------------------------------------------------
# tasks (run on the workers; arguments and results are small)


# Per-process handles of the cache's arrays: opening them costs as much as reading a step.
_CACHE_VARIABLES = ("d2", "d2_x", "y", "nonfinite", "nonfinite_x")
_open_arrays: dict[tuple[str, str], tuple[tuple[int, ...], dict[str, Any]]] = {}


def _cache_arrays(path: str, split: str) -> dict[str, Any]:
    """The cache's per-step arrays of ``split``, opened once per process.

    Reopened when the split's or ``d2``'s metadata file changes (a recreated cache).
    """
    import zarr

    group_path = Path(path) / split
    token = tuple(
        value
        for meta in (group_path / "zarr.json", group_path / "d2" / "zarr.json")
        for stat in [meta.stat()]
        for value in (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    )
    held = _open_arrays.get((path, split))
    if held is not None and held[0] == token:
        return held[1]
    # the split group itself: cheaper than the root's consolidated metadata
    group = zarr.open_group(str(group_path), mode="r", use_consolidated=False)
    arrays = {name: group[name] for name in _CACHE_VARIABLES}
    if len(_open_arrays) >= 32:
        _open_arrays.clear()
    _open_arrays[(path, split)] = (token, arrays)
    return arrays


def _read_rows(arrays: Mapping[str, Any], names: Sequence[str], index: int) -> list[np.ndarray]:
    """Row ``index`` of each named array, read concurrently on zarr's event loop."""
    import asyncio

    from zarr.core.sync import sync

    async def rows() -> list[Any]:
        return await asyncio.gather(*(arrays[n].async_array.getitem(index) for n in names))

    return [np.asarray(row) for row in sync(rows())]


def load_step(
    source: Source, split: str, index: int, *, layers: bool = True
) -> dict[str, np.ndarray]:
    """One step's distances: ``d2`` (L, N, N), ``d2_x``, ``y``, ``nonfinite``, ``nonfinite_x``.

    ``layers=False`` skips the cached layer distances (``d2`` is then absent): presets that build
    their layer Grams from the activations do not need them.
    """
    if source.kind == "store":
        return step_distances(source.path, split, index, source.layers)
    names = _CACHE_VARIABLES if layers else _CACHE_VARIABLES[1:]
    rows = _read_rows(_cache_arrays(source.path, split), names, index)
    data = dict(zip(names, rows, strict=True))
    data["nonfinite"] = data["nonfinite"].astype(bool, copy=False)
    data["nonfinite_x"] = data["nonfinite_x"].astype(bool, copy=False)
    return data


def rule_width(rule: Mapping[str, Any], d2: np.ndarray, dim: int) -> Any:
    """Width σ (kernel exp(-d²/σ²)) of a non-search rule: fixed, silverman, scott or median.

    ``d2`` is one (N, N) matrix (a float is returned) or a stack (..., N, N) (an array (...)).
    """
    from infoplane.core.widths import median_width, scott_width, silverman_width

    kind = rule["rule"]
    if kind == "fixed":
        return float(rule["sigma"])
    if kind == "silverman":
        return silverman_width(d2, dim)
    if kind == "scott":
        return scott_width(d2, dim)
    if kind == "median":
        return median_width(d2)
    raise ConfigError(f"width rule {kind!r} has no closed form (use the alignment search)")


def select_widths_task(source: Source, split: str, index: int, rule: Mapping) -> dict[str, Any]:
    """Task: the alignment argmax σ* of every layer at one (split, step)."""
    from infoplane.core.kernels import label_gram
    from infoplane.core.widths import alignment_width, select_width

    data = load_step(source, split, index)
    sigma = np.full(len(source.layers), np.nan)
    hit = np.zeros(len(source.layers), dtype=bool)
    bad = data["nonfinite"]
    failures = [(source.layers[i], "non-finite activations") for i in np.flatnonzero(bad)]
    finite = np.flatnonzero(~bad)
    gram_y = label_gram(data["y"])
    if finite.size:
        try:  # one vectorised search over the stack of layers
            sigma[finite], hit[finite] = alignment_width(
                data["d2"][finite], gram_y, grid=rule["grid"], points=rule["points"]
            )
        except InputError:
            for i in finite:  # isolate the failing layer(s)
                try:
                    sigma[i], hit[i] = select_width(
                        data["d2"][i],
                        "alignment",
                        gram_y=gram_y,
                        grid=rule["grid"],
                        points=rule["points"],
                    )
                except InputError as exc:
                    failures.append((source.layers[i], str(exc)))
    return {"sigma_star": sigma, "boundary_hit": hit, "failures": failures}


def _layer_grams(
    source: Source,
    split: str,
    store_index: int | None,
    preset: Mapping[str, Any],
    data: Mapping[str, np.ndarray],
    gram_y: np.ndarray,
    sigma: np.ndarray | None,
    out: dict[str, np.ndarray],
    failures: list[tuple[str, str]],
) -> dict[int, np.ndarray]:
    """Gram matrix of every estimable layer; fills ``sigma``/``sigma_star``/``boundary_hit``."""
    from infoplane.core.kernels import gaussian_gram, multivariate_gram
    from infoplane.core.widths import select_width

    grams: dict[int, np.ndarray] = {}
    for i, layer in enumerate(source.layers):
        if data["nonfinite"][i]:
            failures.append((layer, "non-finite activations"))
            continue
        try:
            if preset["kernel"] == "multivariate":
                from infoplane.io.cache import channel_distances

                d2c = channel_distances(source.store, split, store_index, layer)
                dim = source.dims[i] // d2c.shape[0]
                # the rules take a stack of matrices: one width per channel in one call
                widths = rule_width(preset["channel_width"], d2c, dim)
                sigmas = np.broadcast_to(np.asarray(widths, dtype=np.float64), d2c.shape[:1])
                grams[i] = multivariate_gram(d2c, sigmas)
                # the one shared width giving the same kernel when channels contribute equally
                out["sigma"][i] = float(np.mean(sigmas**-2.0) ** -0.5)
                continue
            rule = preset["layer_width"]
            if sigma is not None:
                out["sigma"][i] = sigma[i]
            elif rule["rule"] == "alignment":
                value, hit = select_width(
                    data["d2"][i],
                    "alignment",
                    gram_y=gram_y,
                    grid=rule["grid"],
                    points=rule["points"],
                )
                out["sigma"][i] = out["sigma_star"][i] = value
                out["boundary_hit"][i] = hit
            else:
                out["sigma"][i] = rule_width(rule, data["d2"][i], source.dims[i])
            if not np.isfinite(out["sigma"][i]):
                failures.append((layer, "no width (width search failed at this point)"))
                continue
            grams[i] = gaussian_gram(data["d2"][i], out["sigma"][i])
        except InputError as exc:
            failures.append((layer, str(exc)))
    return grams


def estimate_step_task(
    source: Source,
    split: str,
    index: int,
    store_index: int | None,
    preset: Mapping[str, Any],
    sigma: np.ndarray | None = None,
) -> dict[str, Any]:
    """Task: entropies, MI and diagnostics of every layer at one (split, step).

    ``sigma`` (L,) gives the layer widths (smoothed alignment); None computes them here.
    """
    from infoplane.core.entropy import renyi_entropy
    from infoplane.core.kernels import gaussian_gram, label_gram

    n_layers = len(source.layers)
    data = load_step(source, split, index, layers=preset["kernel"] != "multivariate")
    out: dict[str, Any] = {name: np.full(n_layers, np.nan) for name in LAYER_VARIABLES}
    out["boundary_hit"] = np.zeros(n_layers, dtype=bool)
    failures: list[tuple[str, str]] = []
    alpha = preset["alpha"]
    gram_y = label_gram(data["y"])
    out["H_X"] = out["sigma_x"] = np.nan
    if bool(data["nonfinite_x"]):
        out["H_Y"] = float(renyi_entropy(gram_y, alpha))
        out["failures"] = [(layer, "non-finite network inputs") for layer in source.layers]
        return out
    out["sigma_x"] = rule_width(preset["input_width"], data["d2_x"], source.dim_x)
    gram_x = gaussian_gram(data["d2_x"], out["sigma_x"])
    grams = _layer_grams(source, split, store_index, preset, data, gram_y, sigma, out, failures)
    plane = _information_plane(gram_x, grams, gram_y, alpha, source.layers, failures)
    # H_X and H_Y from the same computation as the MI when there is one, so I = H + H - H holds
    out["H_X"] = plane.pop("H_X", None)
    out["H_Y"] = plane.pop("H_Y", None)
    if out["H_X"] is None:
        out["H_X"] = float(renyi_entropy(gram_x, alpha))
        out["H_Y"] = float(renyi_entropy(gram_y, alpha))
    for i, values in plane.items():
        for key in _PLANE_LAYER_KEYS:
            out[key][i] = values[key]
    out["failures"] = failures
    return out


def _information_plane(
    gram_x: np.ndarray,
    grams: Mapping[int, np.ndarray],
    gram_y: np.ndarray,
    alpha: float,
    layers: Sequence[str],
    failures: list[tuple[str, str]],
) -> dict[Any, Any]:
    """Per-layer results ``{layer index: {key: value}}`` plus ``H_X``/``H_Y`` when computed.

    All layers go through one batched call; if it fails, layers are retried one at a time so a
    single bad layer costs only its own point.
    """
    from infoplane.core.entropy import information_plane

    order = sorted(grams)
    if not order:
        return {}
    try:
        batches = [
            (order, information_plane(gram_x, np.stack([grams[i] for i in order]), gram_y, alpha))
        ]
    except InputError:
        batches = []
        for i in order:
            try:
                batches.append(([i], information_plane(gram_x, grams[i][None], gram_y, alpha)))
            except InputError as exc:
                failures.append((layers[i], str(exc)))
    plane: dict[Any, Any] = {}
    for members, result in batches:
        plane["H_X"], plane["H_Y"] = float(result["H_X"]), float(result["H_Y"])
        for k, i in enumerate(members):
            plane[i] = {key: float(np.asarray(result[key])[k]) for key in _PLANE_LAYER_KEYS}
    return plane


# ---------------------------------------------------------------------------------------------
# client side


@contextlib.contextmanager
def _client_or(client: Any, **cluster: Any) -> Iterator[Any]:
    if client is not None:
        yield client
        return
    from infoplane.estimate.cluster import dask_client

    with dask_client(**cluster) as own:
        yield own


# tasks per worker thread in each round: a step costs only tens of milliseconds, so one task per
# step would spend as much time in dispatch and result transfer as in the work itself
_TASKS_PER_THREAD = 2


def run_batch(fn: Any, calls: Sequence[tuple]) -> list[Any]:
    """Task: ``fn(*args)`` for every ``args`` in ``calls``, in order, in one worker call."""
    return [fn(*args) for args in calls]


def _batch_size(client: Any, n_calls: int) -> int:
    """Calls per task: about ``_TASKS_PER_THREAD`` tasks per worker thread; 1 without workers."""
    try:
        threads = sum(client.nthreads().values())
    except Exception:  # an unusual client (no scheduler query): keep one call per task
        threads = 0
    if threads <= 0:
        return 1
    return max(1, -(-n_calls // (_TASKS_PER_THREAD * threads)))


def _run_batched(
    client: Any, fn: Any, calls: Sequence[tuple], *, label: str, names: Sequence[str]
) -> list[Any]:
    """:func:`infoplane.estimate.cluster.run_tasks` over batches of consecutive calls; results per call."""
    from infoplane.estimate.cluster import run_tasks

    size = _batch_size(client, len(calls))
    if size == 1:
        return run_tasks(client, fn, calls, label=label, names=names)
    starts = range(0, len(calls), size)
    batches = [(fn, list(calls[a : a + size])) for a in starts]
    batch_names = [
        names[a]
        if len(calls[a : a + size]) == 1
        else f"{names[a]}..{names[min(a + size, len(calls)) - 1]}"
        for a in starts
    ]
    results = run_tasks(client, run_batch, batches, label=label, names=batch_names)
    return [value for batch in results for value in batch]


def _names(split_steps: Mapping[str, SplitSteps], points: Sequence[tuple[str, int]]) -> list[str]:
    """Task names ``<split>-<step>`` of (split, step position) points."""
    return [f"{split}-{split_steps[split].steps[k]}" for split, k in points]


def _search_widths(
    client: Any,
    src: Source,
    split_steps: Mapping[str, SplitSteps],
    where: Sequence[tuple[str, int]],
    rule: Mapping[str, Any],
    preset: Mapping[str, Any],
    *,
    keep: bool,
) -> dict[str, AlignmentWidths]:
    """The argmax widths σ* of every split: kept in the distance cache, or searched on Dask."""
    search = {
        "rule": "alignment",
        "grid": rule["grid"],
        "points": rule["points"],
        "label_kernel": preset["label_kernel"],
    }
    keep = keep and src.kind == "cache"
    found: dict[str, AlignmentWidths] = {}
    for split in split_steps.values():
        kept = (
            read_cached_widths(src.path, split.split, search, split.steps, src.layers)
            if keep
            else None
        )
        if kept is not None:
            log.info("split %s: alignment widths kept in %s reused", split.split, src.path)
            found[split.split] = kept
    todo = [(split, k) for split, k in where if split not in found]
    calls = [(src, split, int(split_steps[split].index[k]), rule) for split, k in todo]
    results = (
        _run_batched(
            client, select_widths_task, calls, label="widths", names=_names(split_steps, todo)
        )
        if calls
        else []
    )
    searched: dict[str, AlignmentWidths] = {}
    for split_name in dict.fromkeys(split for split, _ in todo):
        shape = (len(split_steps[split_name].steps), len(src.layers))
        searched[split_name] = AlignmentWidths(np.full(shape, np.nan), np.zeros(shape, bool), [])
    for (split_name, k), result in zip(todo, results, strict=True):
        searched[split_name].sigma_star[k] = result["sigma_star"]
        searched[split_name].boundary_hit[k] = result["boundary_hit"]
        searched[split_name].failures.extend((k, layer, why) for layer, why in result["failures"])
    if keep:
        for split_name, widths in searched.items():
            steps = split_steps[split_name].steps
            write_cached_widths(src.path, split_name, search, steps, src.layers, widths)
    return {**found, **searched}


def smooth_along_steps(
    sigma_star: np.ndarray, beta: float, steps: np.ndarray | None = None
) -> np.ndarray:
    """Smooth (S, L) widths along steps, per layer, skipping NaN points.

    With ``steps`` (training iterations) β applies per iteration (see
    :func:`infoplane.core.widths.smooth_widths`); without, per captured step. A NaN point (not
    estimable) neither resets nor poisons the average of the later steps.
    """
    from infoplane.core.widths import smooth_widths

    smoothed = np.full(sigma_star.shape, np.nan)
    for layer in range(sigma_star.shape[1]):
        finite = np.isfinite(sigma_star[:, layer])
        if finite.any():
            smoothed[finite, layer] = smooth_widths(
                sigma_star[finite, layer], beta, steps=None if steps is None else steps[finite]
            )
    return smoothed


def estimate(
    source: str | Path,
    preset: Mapping[str, Any],
    *,
    name: str,
    out: str | Path | None = None,
    store: str | Path | None = None,
    splits: Sequence[str] | None = None,
    client: Any = None,
    workers: int | None = None,
    scheduler_address: str | None = None,
    cluster_config: Mapping[str, Any] | None = None,
    keep_widths: bool = True,
) -> Any:
    """Estimate the information plane of one run with one preset.

    Parameters
    ----------
    source
        A distance cache (fast) or an activation store (distances computed on the fly).
    preset
        An estimator preset (validated here; see :func:`infoplane.presets.resolve_preset`).
    name
        The preset's name (stored in the result's attributes).
    out
        Where to write the result (Zarr); None only returns it.
    store
        The activation store, for presets that read activations from a cache source when the
        store recorded in the cache has moved.
    client
        A ``distributed.Client``; None starts a cluster from ``workers``/``scheduler_address``/
        ``cluster_config`` (see :mod:`infoplane.estimate.cluster`) and closes it afterwards.
    keep_widths
        With a distance cache and the alignment rule: reuse the argmax widths of an
        earlier estimate with the same search (grid, points, label kernel), kept in the cache,
        and keep this search's widths for later ones. False searches again and keeps nothing.

    Returns
    -------
    xarray.Dataset
        The result, in memory.
    """
    preset = validate_preset(preset, name)
    src, split_steps, attrs = plan_source(
        source, store=store, splits=splits, needs_store=needs_activations(preset)
    )
    run = attrs.get("run")
    rule = preset.get("layer_width", {})
    # the search runs as a pass of its own when the widths are smoothed along steps, or when
    # they can be kept in (or taken from) a distance cache for later presets
    smoothed = rule.get("smoothing", 0.0) > 0
    two_pass = rule.get("rule") == "alignment" and (
        smoothed or (keep_widths and src.kind == "cache")
    )
    if two_pass and src.kind == "store":
        log.warning(
            "estimating from the activation store: the distances are computed twice (width "
            "search, then entropies); `infoplane distances` caches them for every later preset"
        )
    failures: set[tuple[str, int, str, str]] = set()
    cluster = {
        "workers": workers,
        "scheduler_address": scheduler_address,
        "cluster_config": cluster_config,
    }
    # every (split, step) point, in the order of the tasks of both passes
    where = [(s.split, k) for s in split_steps.values() for k in range(len(s.steps))]
    with _client_or(client, **cluster) as active:
        widths: dict[str, AlignmentWidths] = {}
        sigmas: dict[str, np.ndarray] = {}
        if two_pass:
            widths = _search_widths(active, src, split_steps, where, rule, preset, keep=keep_widths)
            per_iteration = rule.get("smoothing_per", "iteration") == "iteration"
            for split_name, found in widths.items():
                steps = split_steps[split_name].steps
                failures.update(
                    (split_name, int(steps[k]), layer, why) for k, layer, why in found.failures
                )
                sigmas[split_name] = (
                    smooth_along_steps(
                        found.sigma_star, rule["smoothing"], steps if per_iteration else None
                    )
                    if smoothed
                    else found.sigma_star
                )
        calls = []
        for split, k in where:
            at = split_steps[split]
            store_index = None if at.store_index is None else int(at.store_index[k])
            sigma = sigmas[split][k] if two_pass else None
            calls.append((src, split, int(at.index[k]), store_index, preset, sigma))
        results = _run_batched(
            active, estimate_step_task, calls, label="estimate", names=_names(split_steps, where)
        )

    for (split_name, k), result in zip(where, results, strict=True):
        step = int(split_steps[split_name].steps[k])
        failures.update((split_name, step, layer, why) for layer, why in result["failures"])
        if two_pass:
            result["sigma_star"] = widths[split_name].sigma_star[k]
            result["boundary_hit"] = widths[split_name].boundary_hit[k]
    dataset = _assemble(src, split_steps, where, results, preset, name, attrs)
    points = sorted(failures)
    if points:
        dataset.attrs["nan_points"] = json.dumps([list(p) for p in points])
        for why in sorted({p[3] for p in points}):
            warn_nan_points(
                run,
                [(s, t, layer) for s, t, layer, w in points if w == why],
                stage=f"estimate {name}",
                reason=why,
            )
    if out is not None:
        write_result(dataset, out)
    return dataset


def _assemble(
    src: Source,
    split_steps: Mapping[str, SplitSteps],
    where: Sequence[tuple[str, int]],
    results: Sequence[Mapping[str, Any]],
    preset: Mapping[str, Any],
    name: str,
    attrs: Mapping[str, Any],
):
    import xarray as xr

    from infoplane import __version__

    split_names = list(split_steps)
    steps = np.unique(np.concatenate([s.steps for s in split_steps.values()]))
    epoch = np.full(len(steps), np.nan)
    for split in split_steps.values():
        epoch[np.searchsorted(steps, split.steps)] = split.epochs
    shape3 = (len(split_names), len(steps), len(src.layers))
    layer_arrays = {key: np.full(shape3, np.nan) for key in LAYER_VARIABLES}
    layer_arrays["boundary_hit"] = np.zeros(shape3, dtype=bool)
    step_arrays = {key: np.full(shape3[:2], np.nan) for key in STEP_VARIABLES}
    for (split_name, k), result in zip(where, results, strict=True):
        s = split_names.index(split_name)
        t = int(np.searchsorted(steps, split_steps[split_name].steps[k]))
        for key in LAYER_VARIABLES:
            layer_arrays[key][s, t] = result[key]
        for key in STEP_VARIABLES:
            step_arrays[key][s, t] = result[key]
    dims3, dims2 = ("split", "step", "layer"), ("split", "step")
    data = {key: (dims3, value) for key, value in layer_arrays.items()}
    data.update({key: (dims2, value) for key, value in step_arrays.items()})
    data["n_samples"] = (("split",), np.array([split_steps[s].n_samples for s in split_names]))
    coords = {
        "split": np.array(split_names, dtype=object),
        "step": steps,
        "epoch": ("step", epoch),
        "layer": np.array(src.layers, dtype=object),
    }
    result_attrs = {
        "estimator": name,
        "preset": preset_to_json(preset),
        "source": src.path,
        "store": src.store or attrs.get("store") or "",
        "infoplane_version": __version__,
        "units": "bits",
    }
    for key in ("experiment", "run", "seed", "model", "dataset"):
        if attrs.get(key) is not None:
            value = attrs[key]
            result_attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
    return xr.Dataset(data, coords=coords, attrs=result_attrs)
