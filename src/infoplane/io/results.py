"""The estimates ``mi/<estimator>.zarr``: the one module that writes, reads and stacks them.

Layout (an xarray Dataset; entropies in bits). The variables depend on the preset's
``estimator`` (:mod:`infoplane.presets`); every result has ``I_XT, I_TY, H_T, H_XT, H_TY, sigma``
per (split, step, layer) and ``H_X, H_Y`` per (split, step), with ``I = H + H - joint H``.

``matrix`` (the default; the matrix-based Rényi estimator)::

    dims (split, step, layer):  I_XT, I_TY, H_T, H_XT, H_TY, sigma (width used), sigma_star
                                (per-step argmax before smoothing; NaN for other rules),
                                clipped_mass, boundary_hit; spectral_error (only when
                                some point took randomized spectra: the largest error bar,
                                in bits, of the layer's five entropies; 0 where exact, and
                                the attribute ``spectrum``, the JSON of the settings used)
    dims (split, step):         H_X, H_Y, sigma_x
    dims (split,):              n_samples

``binning`` (:mod:`infoplane.core.binning`; plug-in Shannon entropies of the binned patterns)::

    dims (split, step, layer):  I_XT (= H_T), I_TY, H_T, H_XT (= H_X), H_TY,
                                sigma (bin width), occupied (distinct bin patterns),
                                saturated (bool: every sample its own pattern, H_T = log2 N)
    dims (split, step):         H_X (distinct inputs), H_Y
    dims (split,):              n_samples

``kde`` (:mod:`infoplane.core.kde`; Kolchinsky-Tracey bounds for T + N(0, s² I))::

    dims (split, step, layer):  I_XT_upper, I_XT_lower (pairwise KL / Bhattacharyya bounds),
                                I_TY_upper, I_TY_lower (the same estimators of
                                H(T) - H(T|Y)), I_XT (= I_XT_upper), I_TY (= I_TY_upper),
                                H_T (= I_XT), H_XT (= H_X), H_TY (= H_T + H_Y - I_TY),
                                sigma (noise standard deviation s)
    dims (split, step):         H_X (distinct inputs), H_Y
    dims (split,):              n_samples

``matrix`` with an ``uncertainty`` (:mod:`infoplane.core.resample`; intervals from resampling
the probe samples of each point, given the point's widths)::

    dims (split, step, layer):  I_XT_lo, I_XT_hi, I_TY_lo, I_TY_hi, H_T_lo, H_T_hi, H_XT_lo,
                                H_XT_hi, H_TY_lo, H_TY_hi (bounds of the interval; NaN where
                                the plain value is NaN)
    dims (split, step):         H_X_lo, H_X_hi, H_Y_lo, H_Y_hi
    attributes:                 interval_level (e.g. 0.9), interval_resamples, interval_seed,
                                interval_method (subsample: subsets of 0.9 N distinct
                                samples, interval estimate ± z·sd)

The plain variables are the same, to the byte, with and without the intervals.

Common to all::

    coordinates:                split, step, epoch(step), layer
    attributes:                 estimator, preset (canonical JSON), source, store,
                                store_attrs_sha256 (the store's fingerprint), run, experiment,
                                seed, model, dataset, infoplane_version, units, nan_points (JSON
                                list of [split, step, layer, reason], when any),
                                smoothed_across_nan (JSON list of [split, step, layer] whose
                                smoothed width skipped an earlier NaN point of the layer)

A stacked, experiment-level file adds a leading ``run`` dimension and the attributes ``runs`` and
``sources``; it keeps the ``interval_*`` attributes (the runs share one preset).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from infoplane.errors import InputError, StoreError, describe_os_error
from infoplane.io.files import exclusive, replacing

#: Attributes of a result with per-point intervals, kept by :func:`stack_runs`.
INTERVAL_ATTRS = ("interval_level", "interval_resamples", "interval_seed", "interval_method")
#: The randomized spectra's settings (JSON) of a result that has ``spectral_error``. A preset
#: whose ``spectrum`` equals the defaults leaves it out of ``preset``; the result still says.
SPECTRUM_ATTR = "spectrum"


def build_result(
    *,
    layers: Sequence[str],
    splits: Mapping[str, tuple[np.ndarray, np.ndarray, int]],
    points: Sequence[tuple[str, int, Mapping[str, Any]]],
    attrs: Mapping[str, Any],
    provenance: Mapping[str, Any],
) -> Any:
    """The result Dataset of one run from its per-point values.

    Parameters
    ----------
    layers
        Layer names, input side first.
    splits
        ``split -> (steps, epochs, n_samples)``.
    points
        ``(split, step, values)``: a (L,) array per layer variable and a float per step
        variable; every point has the same keys (their order is the variables' order). A point
        that is absent is NaN (False for boolean variables).
    attrs
        Attributes of the estimate (``estimator``, ``preset``, ``source``, ``store``).
    provenance
        The run's provenance (``experiment``, ``run``, ...); values that are not numbers or
        strings are stored as JSON.
    """
    import xarray as xr

    from infoplane import __version__

    split_names = list(splits)
    steps = np.unique(np.concatenate([np.asarray(s[0]) for s in splits.values()]))
    epoch = np.full(len(steps), np.nan)
    for split_steps, epochs, _ in splits.values():
        epoch[np.searchsorted(steps, split_steps)] = epochs
    arrays: dict[str, np.ndarray] = {}
    for key, value in points[0][2].items():
        value = np.asarray(value)
        shape = (len(split_names), len(steps), *([len(layers)] if value.ndim else []))
        arrays[key] = np.zeros(shape, bool) if value.dtype == bool else np.full(shape, np.nan)
    for split, step, values in points:
        at = (split_names.index(split), int(np.searchsorted(steps, step)))
        for key, array in arrays.items():
            array[at] = values[key]
    data = {key: (("split", "step", "layer")[: array.ndim], array) for key, array in arrays.items()}
    data["n_samples"] = (("split",), np.array([splits[s][2] for s in split_names]))
    coords = {
        "split": np.array(split_names, dtype=object),
        "step": steps,
        "epoch": ("step", epoch),
        "layer": np.array(layers, dtype=object),
    }
    result_attrs = {**attrs, "infoplane_version": __version__, "units": "bits"}
    for key, value in provenance.items():
        if value is not None:
            result_attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
    return xr.Dataset(data, coords=coords, attrs=result_attrs)


def write_result(dataset: Any, out: str | Path) -> None:
    """Write a result (or stacked) Dataset to Zarr, replacing ``out`` only once it is complete.

    Holds the lock of ``out`` (:func:`infoplane.io.files.exclusive`): a concurrent writer of the
    same result fails with BusyError instead of mixing its files with these.
    """
    import warnings

    try:
        with exclusive(out), replacing(out) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr: consolidated metadata is outside the v3 spec
            dataset.to_zarr(str(tmp), mode="w", consolidated=True)
    except OSError as exc:
        raise StoreError(
            f"result {out}: "
            + describe_os_error(exc, f"{out} is unchanged (the old result, if any, is kept)")
        ) from None


def open_result(path: str | Path) -> Any:
    """A result file (one run or stacked runs) as an in-memory Dataset.

    Raises
    ------
    StoreError
        ``path`` does not exist, or is not a readable Zarr result.
    """
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise StoreError(f"result {path} does not exist; run `infoplane estimate` first")
    try:
        with xr.open_zarr(str(path)) as dataset:
            return dataset.load()
    except (OSError, ValueError, KeyError) as exc:
        raise StoreError(
            f"cannot read result {path}: {exc}; write it again with `infoplane estimate` "
            "(or `infoplane stack` for an experiment's stacked file)"
        ) from None


def stack_runs(sources: Sequence[Any], runs: Sequence[str] | None = None) -> Any:
    """Stack the results of several runs (same preset) on a new ``run`` dimension.

    Parameters
    ----------
    sources
        Result paths or Datasets.
    runs
        Names of the runs; default: each result's ``run`` attribute.

    Raises
    ------
    StoreError
        The results were made with different presets, belong to different experiments, have
        different layers, come from the same store twice, or run names repeat.
    """
    import xarray as xr

    datasets = [open_result(s) if isinstance(s, (str, Path)) else s for s in sources]
    if not datasets:
        raise InputError("stack_runs needs at least one result")
    if runs is None:
        runs = [str(d.attrs.get("run", f"run{i}")) for i, d in enumerate(datasets)]
    runs = list(runs)
    presets = {d.attrs.get("preset") for d in datasets}
    if len(presets) != 1:
        names = sorted({str(d.attrs.get("estimator")) for d in datasets})
        raise StoreError(
            f"cannot stack results of different estimator presets ({', '.join(names)}); "
            "stack the results of one preset at a time"
        )
    experiments = {d.attrs.get("experiment") for d in datasets}
    if len(experiments) > 1:
        raise StoreError(
            "cannot stack results of different experiments "
            f"({', '.join(sorted(map(str, experiments)))}); stack the runs of one experiment"
        )
    layer_sets = {tuple(map(str, d["layer"].values)) for d in datasets if "layer" in d.coords}
    if len(layer_sets) > 1:
        raise StoreError(
            "cannot stack results with different layers "
            f"({' | '.join(map(', '.join, sorted(layer_sets)))}); estimate every run from "
            "stores of the same model and capture settings"
        )
    seen: dict[str, int] = {}
    for k, d in enumerate(datasets):
        key = d.attrs.get("store_attrs_sha256") or ""
        if key and key in seen:
            raise StoreError(
                f"results {seen[key]} and {k} ({d.attrs.get('source')}) were estimated from the "
                f"same store (run {d.attrs.get('run')!r}): a run would be counted twice; pass "
                "each run's result once"
            )
        seen[key] = k
    if len(runs) != len(datasets) or len(set(runs)) != len(runs):
        raise StoreError(
            f"run names must be unique, one per result; got {runs} (pass --runs / runs=...)"
        )
    stacked = xr.concat(
        [d.drop_vars("epoch", errors="ignore") for d in datasets],
        dim=xr.DataArray(np.array(runs, dtype=object), dims="run", name="run"),
        join="outer",
        fill_value={"boundary_hit": False, "saturated": False},
        combine_attrs="drop",
        coords="minimal",
        compat="override",
    )
    # a step's epoch is the same in every run that captured it
    if all("epoch" in d.coords for d in datasets):
        epoch = np.full(stacked.sizes["step"], np.nan)
        for d in datasets:
            at = np.searchsorted(stacked["step"].values, d["step"].values)
            epoch[at] = np.where(np.isnan(epoch[at]), d["epoch"].values, epoch[at])
        stacked = stacked.assign_coords(epoch=("step", epoch))
    first = datasets[0].attrs
    stacked.attrs = {
        "estimator": first.get("estimator", ""),
        "preset": first.get("preset", ""),
        "runs": json.dumps(runs),
        "sources": json.dumps([str(d.attrs.get("source", "")) for d in datasets]),
        "infoplane_version": first.get("infoplane_version", ""),
        "units": "bits",
    }
    stacked.attrs.update({k: v for k, v in first.items() if k in (*INTERVAL_ATTRS, SPECTRUM_ATTR)})
    if len(experiments) == 1 and None not in experiments:
        stacked.attrs["experiment"] = experiments.pop()
    return stacked
