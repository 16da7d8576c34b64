"""Summaries of information-plane results that test the paper's claims.

Pure functions on the estimates (an ``mi/<preset>.zarr`` as an :class:`xarray.Dataset`, per run
or stacked on ``run``) and on training metrics:

- :func:`moving_average` / :func:`smooth` — a centred moving average over captured steps;
- :func:`phase_summary` and :func:`compression_table` — per run and layer, the rise of a smoothed
  curve from step 0 to its peak (fitting) and the drop from the peak to the final value
  (compression), summarised across runs against their spread; :func:`paired_difference`
  compares two such summaries run by run (train against test probe);
- :func:`best_step` and :func:`early_stopping` — the step of best smoothed test accuracy;
- :func:`compression_onset` — the step of the peak of smoothed I(X;T) of the last hidden layers;
- :func:`data_processing_summary` — the share of (run, step, layer pair) points obeying the
  data-processing order, pooled over the pairs of :func:`infoplane.report.plots.data_processing_share`;
- :func:`saturation` — entropies as a fraction of their ceiling log2 N.

Smoothing is over the index of the captured steps, not over iterations: capture schedules are
often denser early in training, and a window in captures keeps the same number of points in
every average. The peak of a curve is taken after smoothing, so that one noisy capture does not
make a peak.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from infoplane.errors import InputError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    import xarray as xr

__all__ = [
    "accuracy_from_probs",
    "best_step",
    "compression_onset",
    "compression_table",
    "data_processing_summary",
    "early_stopping",
    "hidden_layers",
    "metrics_array",
    "moving_average",
    "paired_difference",
    "phase_summary",
    "saturation",
    "smooth",
]


def moving_average(values: np.ndarray, window: int, *, axis: int = -1) -> np.ndarray:
    """Centred moving average along ``axis``; the window shrinks symmetrically at the ends.

    Parameters
    ----------
    values
        Any array; NaN entries are left out of the averages that cover them (a window holding
        only NaN gives NaN).
    window
        Odd number of points (1 returns the values unchanged, as float).

    Returns
    -------
    np.ndarray
        float64, the shape of ``values``. At position i the average covers
        ``i - h .. i + h`` with ``h = min((window - 1) // 2, i, n - 1 - i)``, so the first and
        last points are kept as they are and no end is pulled towards its neighbours more than
        the other.
    """
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise InputError(f"moving average: window must be a positive odd integer, got {window!r}")
    if window % 2 == 0:
        raise InputError(
            f"moving average: window must be odd (centred), got {window}; use {window + 1}"
        )
    data = np.moveaxis(np.asarray(values, dtype=np.float64), axis, -1)
    n = data.shape[-1]
    half = (window - 1) // 2
    finite = np.isfinite(data)
    # cumulative sums with a leading zero: the sum over [a, b] is c[b + 1] - c[a]
    zeros = np.zeros((*data.shape[:-1], 1))
    csum = np.concatenate([zeros, np.cumsum(np.where(finite, data, 0.0), axis=-1)], axis=-1)
    ccount = np.concatenate([zeros, np.cumsum(finite, axis=-1)], axis=-1)
    i = np.arange(n)
    h = np.minimum(half, np.minimum(i, n - 1 - i))
    lo, hi = i - h, i + h + 1
    total = csum[..., hi] - csum[..., lo]
    count = ccount[..., hi] - ccount[..., lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return np.moveaxis(out, -1, axis)


def smooth(data: xr.DataArray, window: int, *, dim: str = "step") -> xr.DataArray:
    """:func:`moving_average` of a DataArray along ``dim`` (coordinates and attributes kept)."""
    if dim not in data.dims:
        raise InputError(f"cannot smooth along {dim!r}: the array has dims {data.dims}")
    values = moving_average(data.values, window, axis=data.get_axis_num(dim))
    return data.copy(data=values)


def _as_runs(mi: xr.Dataset) -> xr.Dataset:
    from infoplane.report.plots import as_runs

    return as_runs(mi)


def _epoch_of(data: xr.Dataset | xr.DataArray) -> np.ndarray:
    """Epoch of every step: the ``epoch`` coordinate, else the step itself."""
    if "epoch" in data.coords:
        epoch = data["epoch"]
        if "run" in epoch.dims:
            epoch = epoch.mean("run", skipna=True)
        return np.asarray(epoch.values, dtype=np.float64)
    return np.asarray(data["step"].values, dtype=np.float64)


def hidden_layers(mi: xr.Dataset, *, last: int | None = None) -> list[str]:
    """Layers other than ``softmax``, input side first; with ``last`` only the deepest ones."""
    layers = [str(v) for v in mi["layer"].values if str(v) != "softmax"]
    if last is not None:
        if last < 1:
            raise InputError(f"hidden_layers: last must be >= 1, got {last}")
        layers = layers[-last:]
    return layers


def phase_summary(
    mi: xr.Dataset, *, var: str = "I_XT", split: str = "train", window: int = 3
) -> xr.Dataset:
    """Fitting rise and compression drop of a smoothed curve, per run and layer.

    For each (run, layer) the curve ``var`` on ``split`` is smoothed along the steps
    (:func:`smooth`); then

    - ``start``, ``peak``, ``final``: the smoothed value at the first step, its maximum and its
      value at the last step;
    - ``rise = peak - start`` (the fitting phase) and ``drop = peak - final`` (the compression
      phase, 0 when the curve ends at its maximum);
    - ``peak_step``, ``peak_epoch``: where the maximum is (the first one on ties).

    Runs whose curve is NaN at every step give NaN.

    Returns
    -------
    xarray.Dataset
        The variables above on (``run``, ``layer``).
    """
    import xarray as xr

    mi = _as_runs(mi)
    if var not in mi:
        raise InputError(f"estimates have no variable {var!r} (variables: {list(mi.data_vars)})")
    if split not in [str(s) for s in mi["split"].values]:
        raise InputError(
            f"split {split!r} not in the estimates (splits: {[str(s) for s in mi['split'].values]})"
        )
    curve = smooth(mi[var].sel(split=split), window).transpose("run", "layer", "step")
    values = curve.values
    steps = np.asarray(mi["step"].values)
    epochs = _epoch_of(mi)
    valid = np.isfinite(values)
    any_valid = valid.any(axis=-1)
    filled = np.where(valid, values, -np.inf)
    peak_index = np.argmax(filled, axis=-1)
    # first and last captured (non-NaN) value of each curve
    first_index = np.argmax(valid, axis=-1)
    last_index = values.shape[-1] - 1 - np.argmax(valid[..., ::-1], axis=-1)
    peak, start, final = (
        np.where(any_valid, np.take_along_axis(values, index[..., None], -1)[..., 0], np.nan)
        for index in (peak_index, first_index, last_index)
    )
    peak_step = np.where(any_valid, steps[peak_index], -1)
    peak_epoch = np.where(any_valid, epochs[peak_index], np.nan)
    dims = ("run", "layer")
    return xr.Dataset(
        {
            "start": (dims, start),
            "peak": (dims, peak),
            "final": (dims, final),
            "rise": (dims, peak - start),
            "drop": (dims, peak - final),
            "peak_step": (dims, peak_step.astype(np.int64)),
            "peak_epoch": (dims, peak_epoch),
        },
        coords={"run": curve["run"].values, "layer": curve["layer"].values},
        attrs={"var": var, "split": split, "window": int(window)},
    )


def compression_table(
    summary: xr.Dataset, *, significance: float = 2.0, atol: float = 1e-6
) -> pd.DataFrame:
    """One row per layer: the mean drop against its spread across runs.

    Parameters
    ----------
    summary
        The output of :func:`phase_summary`.
    significance
        A layer compresses clearly when ``mean_drop > significance * std_drop``.
    atol
        Drops and spreads up to ``atol`` bits count as 0: a saturated estimator (every value at
        log2 N) varies by rounding only, and a ratio of rounding errors means nothing.

    Returns
    -------
    pandas.DataFrame
        Columns ``layer``, ``runs``, ``mean_rise``, ``mean_peak_epoch``, ``mean_drop``,
        ``std_drop`` (sample standard deviation across runs, ddof 1; NaN for one run),
        ``drop_over_std`` (NaN for one run) and ``compresses`` (bool; False for one run).
    """
    import pandas as pd

    rows = []
    for layer in summary["layer"].values:
        part = summary.sel(layer=layer)
        drop = np.asarray(part["drop"].values, dtype=np.float64)
        drop = drop[np.isfinite(drop)]
        drop = np.where(np.abs(drop) <= atol, 0.0, drop)
        mean = float(drop.mean()) if drop.size else np.nan
        std = float(drop.std(ddof=1)) if drop.size > 1 else np.nan
        # with fewer than two runs there is no spread to compare against
        if not np.isfinite(std):
            ratio = np.nan
        elif std > atol:
            ratio = mean / std
        else:
            ratio = np.inf if mean > atol else np.nan
        rows.append(
            {
                "layer": str(layer),
                "runs": int(drop.size),
                "mean_rise": float(np.nanmean(part["rise"].values)) if drop.size else np.nan,
                "mean_peak_epoch": float(np.nanmean(part["peak_epoch"].values))
                if drop.size
                else np.nan,
                "mean_drop": mean,
                "std_drop": std,
                "drop_over_std": ratio,
                "compresses": bool(np.isfinite(std) and mean > atol and mean > significance * std),
            }
        )
    return pd.DataFrame(rows)


def paired_difference(
    first: xr.Dataset, second: xr.Dataset, *, var: str = "drop", atol: float = 1e-6
) -> pd.DataFrame:
    """Per layer, ``first[var] - second[var]`` paired by run: mean, std across runs and ratio.

    ``first`` and ``second`` are :func:`phase_summary` outputs of the same runs (e.g. the train
    and the test probe). Pairing by run removes what the two share (the network of each seed),
    so the spread is that of the difference itself. Differences up to ``atol`` bits count as 0
    (see :func:`compression_table`).

    Returns
    -------
    pandas.DataFrame
        Columns ``layer``, ``runs``, ``mean_diff``, ``std_diff`` (ddof 1) and
        ``diff_over_std`` (NaN with fewer than two runs or no spread).
    """
    import pandas as pd

    missing = sorted(set(map(str, first["run"].values)) ^ set(map(str, second["run"].values)))
    if missing:
        raise InputError(f"paired difference: runs {missing} are not in both summaries")
    diff = (first[var] - second[var].sel(run=first["run"], layer=first["layer"])).transpose(
        "layer", "run"
    )
    rows = []
    for layer, values in zip(diff["layer"].values, diff.values, strict=True):
        values = values[np.isfinite(values)]
        values = np.where(np.abs(values) <= atol, 0.0, values)
        mean = float(values.mean()) if values.size else np.nan
        std = float(values.std(ddof=1)) if values.size > 1 else np.nan
        ratio = mean / std if np.isfinite(std) and std > atol else np.nan
        rows.append(
            {
                "layer": str(layer),
                "runs": int(values.size),
                "mean_diff": mean,
                "std_diff": std,
                "diff_over_std": ratio,
            }
        )
    return pd.DataFrame(rows)


def best_step(data: xr.DataArray, *, window: int = 1, dim: str = "step") -> xr.DataArray:
    """Coordinate value of ``dim`` where the smoothed ``data`` is largest (first on ties).

    ``data`` may carry other dimensions (e.g. ``run``); the result has them. All-NaN slices give
    NaN.
    """
    smoothed = smooth(data, window, dim=dim)
    values = np.moveaxis(smoothed.values, smoothed.get_axis_num(dim), -1)
    valid = np.isfinite(values)
    index = np.argmax(np.where(valid, values, -np.inf), axis=-1)
    coord = np.asarray(data[dim].values, dtype=np.float64)
    best = np.where(valid.any(axis=-1), coord[index], np.nan)
    other = [d for d in smoothed.dims if d != dim]
    return smoothed.isel({dim: 0}, drop=True).transpose(*other).copy(data=best)


def metrics_array(
    table: pd.DataFrame, *, split: str = "test", metric: str = "accuracy"
) -> xr.DataArray:
    """A metric of :func:`infoplane.report.plots.load_metrics` as a DataArray on (``run``, ``epoch``)."""
    import xarray as xr

    needed = {"run", "epoch", "split", "metric", "value"}
    if not needed <= set(table.columns):
        raise InputError(
            f"metrics table needs columns {sorted(needed)}, got {list(table.columns)}; "
            "read metrics.csv files with infoplane.report.plots.load_metrics"
        )
    rows = table[(table["split"] == split) & (table["metric"] == metric)]
    if rows.empty:
        raise InputError(f"metrics table has no {split} {metric}")
    wide = rows.pivot_table(index="run", columns="epoch", values="value", aggfunc="mean")
    return xr.DataArray(
        wide.to_numpy(dtype=np.float64),
        dims=("run", "epoch"),
        coords={"run": [str(r) for r in wide.index], "epoch": wide.columns.to_numpy(float)},
        name=f"{split}_{metric}",
    )


def early_stopping(accuracy: xr.DataArray, *, window: int = 1, dim: str = "epoch") -> xr.DataArray:
    """Where training would stop early: the argmax of smoothed test accuracy along ``dim``."""
    return best_step(accuracy, window=window, dim=dim)


def accuracy_from_probs(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Share of samples whose most probable class is the label.

    ``probs`` (..., sample, class), ``labels`` (..., sample) -> (...).
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.shape[:-1] != labels.shape:
        raise InputError(
            f"accuracy: probabilities {probs.shape} and labels {labels.shape} do not match; "
            "expected (..., sample, class) and (..., sample)"
        )
    return np.mean(np.argmax(probs, axis=-1) == labels, axis=-1)


def compression_onset(
    mi: xr.Dataset,
    *,
    layers: Sequence[str] | None = None,
    split: str = "train",
    window: int = 3,
) -> xr.Dataset:
    """Onset of compression per run: the earliest peak of smoothed I(X;T) among ``layers``.

    Parameters
    ----------
    layers
        Layers whose peaks count; default the last two hidden layers (:func:`hidden_layers`).

    Returns
    -------
    xarray.Dataset
        ``onset_step`` and ``onset_epoch`` on ``run`` (the earliest peak among the layers, so that
        a claim "X comes before the onset" is tested against the earliest compression), and
        ``peak_step``/``peak_epoch`` on (``run``, ``layer``).
    """
    import xarray as xr

    mi = _as_runs(mi)
    chosen = list(layers) if layers is not None else hidden_layers(mi, last=2)
    known = [str(v) for v in mi["layer"].values]
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise InputError(f"compression onset: unknown layer(s) {unknown}; layers: {known}")
    summary = phase_summary(mi.sel(layer=chosen), var="I_XT", split=split, window=window)
    peak_epoch = summary["peak_epoch"]
    first = peak_epoch.argmin("layer", skipna=True) if peak_epoch.notnull().any() else None
    if first is None:
        onset_step = xr.full_like(summary["peak_step"].isel(layer=0, drop=True), -1)
        onset_epoch = xr.full_like(peak_epoch.isel(layer=0, drop=True), np.nan)
    else:
        onset_step = summary["peak_step"].isel(layer=first)
        onset_epoch = peak_epoch.isel(layer=first)
    return xr.Dataset(
        {
            "onset_step": onset_step.drop_vars("layer", errors="ignore"),
            "onset_epoch": onset_epoch.drop_vars("layer", errors="ignore"),
            "peak_step": summary["peak_step"],
            "peak_epoch": summary["peak_epoch"],
        },
        attrs={"split": split, "window": int(window), "layers": chosen},
    )


def data_processing_summary(mi: xr.Dataset, *, tol: float = 1e-6) -> pd.DataFrame:
    """Share of (run, step, layer pair) points obeying the data-processing order, per split.

    Uses :func:`infoplane.report.plots.data_processing_share` for the per-pair shares and pools them
    over the consecutive pairs (``chain`` left out), weighting each pair by its points.

    Returns
    -------
    pandas.DataFrame
        One row per split: ``share_XT``, ``share_TY`` (pooled shares), ``points_XT``,
        ``points_TY``, ``chain_XT``, ``chain_TY`` (share of (run, step) at which the whole chain
        of layers is ordered).
    """
    import pandas as pd

    from infoplane.report.plots import data_processing_share

    shares = data_processing_share(mi, tol=tol)
    pairs = [p for p in shares["pair"].values if str(p) != "chain"]
    rows = []
    for split in shares["split"].values:
        row: dict[str, Any] = {"split": str(split)}
        for var, key in (("I_XT", "XT"), ("I_TY", "TY")):
            part = shares.sel(split=split, pair=pairs)
            counts = part[f"n_{key}"].values.astype(np.float64)
            share = np.nan_to_num(part[var].values)
            total = counts.sum()
            row[f"share_{key}"] = float((share * counts).sum() / total) if total else np.nan
            row[f"points_{key}"] = int(total)
            row[f"chain_{key}"] = float(shares[var].sel(split=split, pair="chain").values)
        rows.append(row)
    return pd.DataFrame(rows)


def saturation(mi: xr.Dataset, *, var: str = "H_T") -> xr.DataArray:
    """An entropy as a fraction of its ceiling ``log2 N`` (N the probe size of each split)."""
    mi = _as_runs(mi)
    if var not in mi:
        raise InputError(f"estimates have no variable {var!r}")
    if "n_samples" not in mi:
        raise InputError("estimates record no n_samples; re-estimate with `infoplane estimate`")
    n = mi["n_samples"]
    if "run" in n.dims:
        n = n.max("run")
    return mi[var] / np.log2(n.astype(np.float64))
