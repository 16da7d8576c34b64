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

The math of a point is :mod:`infoplane.core.plane` (pure); the tasks here only read a point's
arrays through :mod:`infoplane.io.cache` or :mod:`infoplane.io.store` and call it. The result
``mi/<name>.zarr`` is laid out in :mod:`infoplane.io.results`. Points that cannot be estimated
(NaN/Inf activations) are NaN and named in a warning and in ``attrs["nan_points"]``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infoplane.core import binning, kde
from infoplane.core.plane import LAYER_KEYS, STEP_KEYS, estimate_step, search_step
from infoplane.core.resample import interval_keys, step_intervals
from infoplane.core.spectra import randomized_at
from infoplane.core.widths import smooth_along_steps
from infoplane.errors import ConfigError, StoreError, warn_nan_points
from infoplane.estimate.cluster import client_or, run_batched
from infoplane.estimate.devices import array_mover, check_device
from infoplane.estimate.distances import channel_distances, load_point, step_activations
from infoplane.io import cache
from infoplane.io.cache import AlignmentWidths
from infoplane.io.files import exclusive
from infoplane.io.results import INTERVAL_ATTRS, SPECTRUM_ATTR, build_result, write_result
from infoplane.io.store import PROVENANCE_KEYS, SPLITS, read_store_plan
from infoplane.presets import (
    estimator_of,
    needs_activations,
    preset_to_json,
    spectrum_of,
    uncertainty_of,
    validate_preset,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Where estimation tasks read distances: a distance cache or an activation store."""

    kind: str  # "cache" | "store"
    path: str
    store: str | None  # activation store, when the preset or the source needs it
    layers: tuple[str, ...]
    dims: tuple[int, ...]
    dim_x: int
    # per split, the store row of every cached step (when the store is read beside a cache)
    store_rows: Mapping[str, tuple[int, ...]] | None = None


@dataclass(frozen=True)
class SplitSteps:
    """The steps of one split to estimate, with their positions in the source and in the store."""

    split: str
    steps: np.ndarray
    epochs: np.ndarray
    index: np.ndarray  # position on the source's step axis
    store_index: np.ndarray | None  # position on the store's step axis (when the store is read)
    n_samples: int


def _store_rows(
    store: str | Path, split_steps: Mapping[str, SplitSteps], cache_path: str | Path
) -> dict[str, np.ndarray]:
    """Positions of the cached steps on the store's step axis; every one must be captured.

    The store must be the one the cache was computed from (:func:`cache.check_store`).
    """
    plan = read_store_plan(store, list(split_steps))
    rows = {}
    for name, split in split_steps.items():
        position = {
            int(s): int(r)
            for s, r in zip(plan.splits[name].steps, plan.splits[name].rows, strict=True)
        }
        lost = [int(s) for s in split.steps if int(s) not in position]
        if lost:
            raise StoreError(
                f"store {plan.path}, split {name}: cached steps {lost[:10]} are not captured"
            )
        rows[name] = np.array([position[int(s)] for s in split.steps], dtype=np.int64)
    cache.check_store(cache_path, plan, rows)
    return rows


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
    if not cache.is_distance_cache(source):
        plan = read_store_plan(source, splits)
        steps = {
            name: SplitSteps(name, p.steps, p.epochs, p.rows, p.rows, p.n_samples)
            for name, p in plan.splits.items()
        }
        dims = tuple(plan.dims[name] for name in plan.layers)
        src = Source("store", plan.path, plan.path, tuple(plan.layers), dims, plan.input_dim)
        return src, steps, {**plan.attrs, "store_attrs_sha256": plan.fingerprint}

    cached = cache.read_cache_plan(source, splits)
    steps = {
        name: SplitSteps(name, s.steps, s.epochs, np.arange(len(s.steps)), None, s.n_samples)
        for name, s in cached.splits.items()
    }
    store_path = None
    rows: dict[str, np.ndarray] = {}
    # a cache that recomputes some distances reads them from the store at estimate time
    if needs_store or "recompute" in cache.storage_of(source).values():
        store_path = Path(store) if store is not None else Path(cached.store)
        if not store_path.exists():
            raise StoreError(
                f"this estimator reads the activations, but the store {store_path} recorded in "
                f"{source} does not exist; pass --store STORE"
            )
        rows = _store_rows(store_path, steps, source)
        steps = {
            name: SplitSteps(s.split, s.steps, s.epochs, s.index, rows[name], s.n_samples)
            for name, s in steps.items()
        }
        store_path = str(store_path.resolve())
    src = Source(
        "cache", cached.path, store_path, cached.layers, cached.dims, cached.dim_x,
        {name: tuple(int(r) for r in found) for name, found in rows.items()} or None,
    )  # fmt: skip
    return src, steps, dict(cached.attrs)


# ---------------------------------------------------------------------------------------------
# tasks (run on the workers; arguments and results are small)


def load_step(
    source: Source, split: str, index: int, *, layers: bool = True, inputs: bool = True
) -> dict[str, Any]:
    """One step's distances: ``d2``, ``d2_x``, ``y``, ``nonfinite``, ``nonfinite_x``.

    ``d2`` is a :class:`~infoplane.estimate.distances.PointDistances`: ``d2[i]`` reads (or
    recomputes from the store) layer ``i``'s (N, N) matrix when asked, so one layer's matrix is
    held at a time. ``layers=False`` leaves it out: presets that build their layer Grams from
    the activations do not need it; ``inputs=False`` leaves out ``d2_x`` (the width search).
    """
    rows = source.store_rows.get(split) if source.store_rows else None
    return load_point(
        source.kind, source.path, source.store, split, index,
        index if source.kind == "store" else (rows[index] if rows else None),
        source.layers, with_layers=layers, with_inputs=inputs,
    )  # fmt: skip


def search_widths_task(source: Source, split: str, index: int, rule: Mapping) -> dict[str, Any]:
    """Task: the alignment argmax σ* of every layer at one (split, step)."""
    data = load_step(source, split, index, inputs=False)
    return search_step(
        data["d2"], data["y"], data["nonfinite"], source.layers,
        grid=rule["grid"], points=rule["points"],
    )  # fmt: skip


def estimate_step_task(
    source: Source,
    split: str,
    index: int,
    store_index: int | None,
    preset: Mapping[str, Any],
    sigma: np.ndarray | None = None,
    step: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Task: entropies, MI and diagnostics of every layer at one (split, step).

    ``sigma`` (L,) gives the layer widths (smoothed alignment); None computes them here.
    ``step`` (the captured step) seeds the point's randomized spectra, with its split. The
    preset's estimator picks the math: :mod:`infoplane.core.plane` (matrix),
    :mod:`infoplane.core.binning` (from the activations) or :mod:`infoplane.core.kde` (from the
    distances). A preset with an ``uncertainty`` adds the intervals of
    :func:`infoplane.core.resample.step_intervals`, seeded by ``step`` (the training step).
    ``device`` (:mod:`infoplane.estimate.devices`, resolved on the worker) is where the matrix
    estimator's Grams and spectra are computed; the other estimators and the intervals run on
    the CPU.
    """
    estimator = estimator_of(preset)
    if estimator == "binning":
        values = step_activations(source.store, split, store_index, source.layers)
        return binning.binning_step(
            values["layers"], values["x"], values["y"], bins=preset["bins"],
            value_range=preset["range"], layers=source.layers,
        )  # fmt: skip
    if estimator == "kde":
        data = load_step(source, split, index)
        return kde.kde_step(data, variance=preset["noise_variance"], layers=source.layers)
    multivariate = preset["kernel"] == "multivariate"
    data = load_step(source, split, index, layers=not multivariate)

    def channel_d2(i: int) -> np.ndarray:
        return channel_distances(source.store, split, store_index, source.layers[i])

    spectrum = spectrum_of(preset)
    plain = estimate_step(
        data, preset, layers=source.layers, dims=source.dims, dim_x=source.dim_x, sigma=sigma,
        channel_d2=channel_d2 if multivariate else None, spectrum=spectrum,
        seed=(spectrum["seed"], SPLITS.index(split), step), to_device=array_mover(device),
    )  # fmt: skip
    if uncertainty_of(preset) is None:
        return plain
    bounds = step_intervals(
        data, preset, plain, split=split, step=step, dims=source.dims,
        channel_d2=channel_d2 if multivariate else None,
    )  # fmt: skip
    return {**plain, **bounds}


# ---------------------------------------------------------------------------------------------
# client side


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
            cache.read_cached_widths(src.path, split.split, search, split.steps, src.layers)
            if keep
            else None
        )
        if kept is not None:
            log.info("split %s: alignment widths kept in %s reused", split.split, src.path)
            found[split.split] = kept
    todo = [(split, k) for split, k in where if split not in found]
    calls = [(src, split, int(split_steps[split].index[k]), rule) for split, k in todo]
    results = (
        run_batched(
            client, search_widths_task, calls, label="widths", names=_names(split_steps, todo)
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
            cache.write_cached_widths(src.path, split_name, search, steps, src.layers, widths)
    return {**found, **searched}


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
    device: str = "auto",
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
    device
        Where the Grams and spectra of the matrix estimator are computed (see
        :mod:`infoplane.estimate.devices`): ``auto`` (a GPU when the worker has one, else
        numpy on the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``torch-cpu``. Resolved on each
        worker; results agree across devices to rounding.

    Returns
    -------
    xarray.Dataset
        The result, in memory.
    """
    preset = validate_preset(preset, name)
    device = check_device(device)
    # the lock of ``out`` is held from the start: a second estimate to the same result fails
    # before it computes anything
    with exclusive(out) if out is not None else contextlib.nullcontext():
        return _estimate(
            source, preset, name=name, out=out, store=store, splits=splits, client=client,
            workers=workers, scheduler_address=scheduler_address,
            cluster_config=cluster_config, keep_widths=keep_widths, device=device,
        )  # fmt: skip


def _estimate(
    source: str | Path,
    preset: Mapping[str, Any],
    *,
    name: str,
    out: str | Path | None,
    store: str | Path | None,
    splits: Sequence[str] | None,
    client: Any,
    workers: int | None,
    scheduler_address: str | None,
    cluster_config: Mapping[str, Any] | None,
    keep_widths: bool,
    device: str,
) -> Any:
    """:func:`estimate` with the lock of ``out`` held."""
    src, split_steps, attrs = plan_source(
        source, store=store, splits=splits, needs_store=needs_activations(preset)
    )
    _check_intervals_at_size(preset, name, split_steps)
    rule = preset.get("layer_width", {})
    # the search runs as a pass of its own when the widths are smoothed along steps, or when
    # they can be kept in (or taken from) a distance cache for later presets
    two_pass = rule.get("rule") == "alignment" and (
        rule.get("smoothing", 0.0) > 0 or (keep_widths and src.kind == "cache")
    )
    if two_pass and src.kind == "store":
        log.warning(
            "estimating from the activation store: the distances are computed twice (width "
            "search, then entropies); `infoplane distances` caches them for every later preset"
        )
    cluster = {
        "workers": workers,
        "scheduler_address": scheduler_address,
        "cluster_config": cluster_config,
    }
    # every (split, step) point, in the order of the tasks of both passes
    where = [(s.split, k) for s in split_steps.values() for k in range(len(s.steps))]
    failures: list[tuple[str, int, str, str]] = []
    with client_or(client, **cluster) as active:
        widths: dict[str, AlignmentWidths] | None = None
        if two_pass:
            widths = _search_widths(active, src, split_steps, where, rule, preset, keep=keep_widths)
            for split_name, found in widths.items():
                steps = split_steps[split_name].steps
                failures += [
                    (split_name, int(steps[k]), lay, why) for k, lay, why in found.failures
                ]
        sigmas = None if widths is None else _layer_widths(widths, split_steps, rule)
        calls = [
            (src, split, int(at.index[k]), _at(at.store_index, k), preset, sigma,
             int(at.steps[k]), device)
            for split, k in where
            for at, sigma in [(split_steps[split], _at(sigmas, split, k))]
        ]  # fmt: skip
        results = run_batched(
            active, estimate_step_task, calls, label="estimate", names=_names(split_steps, where)
        )

    for (split_name, k), result in zip(where, results, strict=True):
        step = int(split_steps[split_name].steps[k])
        failures += [(split_name, step, layer, why) for layer, why in result["failures"]]
        if widths is not None:
            result["sigma_star"] = widths[split_name].sigma_star[k]
            result["boundary_hit"] = widths[split_name].boundary_hit[k]
    dataset = _assemble(src, split_steps, where, results, preset, name, attrs)
    _name_failures(dataset, failures, run=attrs.get("run"), stage=f"estimate {name}")
    if widths is not None and rule.get("smoothing", 0.0) > 0:
        _flag_smoothed_across_nan(dataset, widths, split_steps, src.layers, run=attrs.get("run"))
    if out is not None:
        write_result(dataset, out)
    return dataset


def keep_alignment_widths(
    cache_path: str | Path,
    *,
    grid: str,
    points: int,
    label_kernel: str = "indicator",
    splits: Sequence[str] | None = None,
    client: Any = None,
    workers: int | None = None,
    scheduler_address: str | None = None,
    cluster_config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one alignment width search on a distance cache and keep its widths there.

    The search every preset with this grid, number of points and label kernel runs (whatever
    its α, input width, smoothing or width scale), done once ahead of them: the members of a
    sensitivity family then reuse it instead of each searching. Widths already kept are left as
    they are.

    Returns
    -------
    dict
        ``search`` (the mapping the widths are kept under) and, per split, its number of steps.
    """
    if not cache.is_distance_cache(cache_path):
        raise StoreError(
            f"{cache_path} is not a distance cache: kept widths live in one; run "
            "`infoplane distances` first"
        )
    rule = {"grid": grid, "points": int(points)}
    src, split_steps, _ = plan_source(cache_path, splits=splits)
    where = [(s.split, k) for s in split_steps.values() for k in range(len(s.steps))]
    cluster = {
        "workers": workers,
        "scheduler_address": scheduler_address,
        "cluster_config": cluster_config,
    }
    with client_or(client, **cluster) as active:
        preset = {"label_kernel": label_kernel}
        _search_widths(active, src, split_steps, where, rule, preset, keep=True)
    return {
        "search": {"rule": "alignment", **rule, "label_kernel": label_kernel},
        "steps": {name: len(s.steps) for name, s in split_steps.items()},
    }


def _check_intervals_at_size(
    preset: Mapping[str, Any], name: str, split_steps: Mapping[str, SplitSteps]
) -> None:
    """Refuse resampling intervals where the spectra are randomized.

    The intervals come from exact spectra of every resample (:mod:`infoplane.core.resample`):
    above the spectrum threshold that is ``resamples`` exact eigendecompositions of every
    matrix, hours per point, and the randomized estimate's own error would blur them.
    """
    if estimator_of(preset) != "matrix" or uncertainty_of(preset) is None:
        return
    spectrum = spectrum_of(preset)
    large = {
        s.split: s.n_samples
        for s in split_steps.values()
        if randomized_at(spectrum, s.n_samples, preset["alpha"])
    }
    if large:
        sizes = ", ".join(f"{split} N = {n}" for split, n in large.items())
        raise ConfigError(
            f"estimator preset {name!r}: uncertainty intervals need exact spectra, but the "
            f"spectra of {sizes} are randomized (spectrum.method {spectrum['method']}, threshold "
            f"{spectrum['threshold']}); use resamples: 0 there (its randomized estimates carry "
            "error bars, spectral_error), or spectrum: {method: exact} if the time is affordable"
        )


def _at(values: Any, *keys: Any) -> Any:
    """``values[k0][k1]...`` as a plain value, or None when ``values`` is None."""
    for key in keys:
        if values is None:
            return None
        values = values[key]
    return int(values) if isinstance(values, np.integer) else values


def _layer_widths(
    widths: Mapping[str, AlignmentWidths],
    split_steps: Mapping[str, SplitSteps],
    rule: Mapping[str, Any],
) -> dict[str, np.ndarray]:
    """The (step, layer) widths the entropies use: σ*, smoothed along steps when asked for."""
    if not rule.get("smoothing", 0.0) > 0:
        return {split: found.sigma_star for split, found in widths.items()}
    per_iteration = rule.get("smoothing_per", "iteration") == "iteration"
    return {
        split: smooth_along_steps(
            found.sigma_star,
            rule["smoothing"],
            split_steps[split].steps if per_iteration else None,
        )
        for split, found in widths.items()
    }


def _flag_smoothed_across_nan(
    dataset: Any,
    widths: Mapping[str, AlignmentWidths],
    split_steps: Mapping[str, SplitSteps],
    layers: Sequence[str],
    *,
    run: Any,
) -> None:
    """Flag the smoothed widths that average across a NaN point of their layer.

    The smoothing skips a NaN point (it neither restarts nor poisons the average), so every
    later step of that split and layer has a width that differs from the one an estimable point
    would have given. Those (split, step, layer) are listed in ``attrs["smoothed_across_nan"]``
    and named in a warning; their values are kept.
    """
    flagged = []
    for split, found in widths.items():
        steps = split_steps[split].steps
        for k, layer in enumerate(layers):
            bad = ~np.isfinite(found.sigma_star[:, k])
            if not bad.any():
                continue
            after = np.arange(len(steps)) > np.flatnonzero(bad)[0]
            flagged += [(split, int(steps[t]), layer) for t in np.flatnonzero(after & ~bad)]
    if not flagged:
        return
    dataset.attrs["smoothed_across_nan"] = json.dumps([list(p) for p in flagged])
    warn_nan_points(
        run,
        flagged,
        stage="estimate",
        reason="the smoothed width averages across an earlier NaN point of the layer",
        consequence="these points are computed with it and listed in attrs['smoothed_across_nan']",
    )


def _name_failures(
    dataset: Any, failures: Sequence[tuple[str, int, str, str]], *, run: Any, stage: str
) -> None:
    """Record the NaN points in the result's attributes and warn once per reason."""
    points = sorted(set(failures))
    if not points:
        return
    dataset.attrs["nan_points"] = json.dumps([list(p) for p in points])
    for why in sorted({p[3] for p in points}):
        warn_nan_points(
            run, [(s, t, layer) for s, t, layer, w in points if w == why], stage=stage, reason=why
        )


def result_keys(preset: Mapping[str, Any], *, randomized: bool = False) -> tuple[str, ...]:
    """The variables of a result made with ``preset``, in the order they are stored.

    ``randomized``: some point took randomized spectra, whose error bars the result holds as
    ``spectral_error``.
    """
    estimator = estimator_of(preset)
    if estimator == "binning":
        return binning.LAYER_KEYS + binning.STEP_KEYS
    if estimator == "kde":
        return kde.LAYER_KEYS + kde.STEP_KEYS
    keys = LAYER_KEYS + (("spectral_error",) if randomized else ()) + STEP_KEYS
    if uncertainty_of(preset) is not None:
        return keys + interval_keys()
    return keys


def _interval_attrs(preset: Mapping[str, Any]) -> dict[str, Any]:
    """The ``interval_*`` attributes of a result with intervals (none without)."""
    spec = uncertainty_of(preset)
    if spec is None:
        return {}
    return {name: spec[name.removeprefix("interval_")] for name in INTERVAL_ATTRS}


def _assemble(
    src: Source,
    split_steps: Mapping[str, SplitSteps],
    where: Sequence[tuple[str, int]],
    results: Sequence[Mapping[str, Any]],
    preset: Mapping[str, Any],
    name: str,
    attrs: Mapping[str, Any],
) -> Any:
    """The result Dataset (see :mod:`infoplane.io.results`) of every point's task result."""
    randomized = any(r.get("randomized", False) for r in results)
    keys = result_keys(preset, randomized=randomized)
    # the settings behind the error bars, even where the preset's mapping leaves them out
    spectrum = (
        {SPECTRUM_ATTR: json.dumps(spectrum_of(preset), sort_keys=True)} if randomized else {}
    )
    points = [
        (split, int(split_steps[split].steps[k]), {key: result[key] for key in keys})
        for (split, k), result in zip(where, results, strict=True)
    ]
    return build_result(
        layers=src.layers,
        splits={s.split: (s.steps, s.epochs, s.n_samples) for s in split_steps.values()},
        points=points,
        attrs={
            "estimator": name,
            "preset": preset_to_json(preset),
            "source": src.path,
            "store": src.store or attrs.get("store") or "",
            "store_attrs_sha256": attrs.get("store_attrs_sha256") or "",
            **_interval_attrs(preset),
            **spectrum,
        },
        provenance={key: attrs.get(key) for key in PROVENANCE_KEYS},
    )
