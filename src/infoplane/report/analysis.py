"""Summaries of information-plane results that test the paper's claims, and the data helpers the
figures draw from.

Pure functions on the estimates (an ``mi/<preset>.zarr`` as an :class:`xarray.Dataset`, per run
or stacked on ``run``, read with :func:`infoplane.io.results.open_result`) and on training
metrics (the runs' ``metrics.csv``, read with :func:`load_metrics`):

- :func:`as_runs`, :func:`epochs`, :func:`select_splits`, :func:`split_values` and
  :func:`across_runs` — the estimates with a ``run`` dimension, the epoch of every step, the
  values of one split and their mean and spread across runs;
- :func:`moving_average` / :func:`smooth` — a centred moving average over captured steps;
- :func:`phase_summary` and :func:`compression_table` — per run and layer, the rise of a smoothed
  curve from step 0 to its peak (fitting) and the drop from the peak to the final value
  (compression), summarised across runs against their spread; :func:`paired_difference`
  compares two such summaries run by run (train against test probe);
- :func:`phase_metrics`, :func:`phase_table` and :func:`phase_verdicts` — per layer and split,
  the fitting (rise of I(T;Y)) and compression (drop of I(X;T) after its maximum) amounts and
  their onsets, with confidence intervals across seeds (a t-interval, widened by the resampling
  bounds ``I_XT_lo``/``I_XT_hi``, ``I_TY_lo``/``I_TY_hi`` when the result holds them), and the
  verdict over several presets (a family's members): compression significant under every one,
  some or none;
- :func:`best_step` and :func:`early_stopping` — the step of best smoothed test accuracy;
- :func:`compression_onset` — the step of the peak of smoothed I(X;T) of the last hidden layers;
- :func:`data_processing_share` — per pair of consecutive layers, the share of points at which
  the deeper layer carries no more information; :func:`data_processing_table` lays it out as
  a table and :func:`data_processing_summary` pools it over the pairs;
- :func:`saturation` — entropies as a fraction of their ceiling log2 N.

Smoothing is over the index of the captured steps, not over iterations: capture schedules are
often denser early in training, and a window in captures keeps the same number of points in
every average. The peak of a curve is taken after smoothing, so that one noisy capture does not
make a peak.

Nothing here draws: :mod:`infoplane.report.plots` draws from these functions, never the other
way round, and this module imports no matplotlib.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infoplane.errors import InputError, StoreError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd
    import xarray as xr

__all__ = [
    "accuracy_from_probs",
    "across_runs",
    "as_runs",
    "best_step",
    "compression_onset",
    "compression_table",
    "data_processing_share",
    "data_processing_summary",
    "data_processing_table",
    "early_stopping",
    "epochs",
    "hidden_layers",
    "load_metrics",
    "mean_interval",
    "metrics_array",
    "moving_average",
    "paired_difference",
    "phase_metrics",
    "phase_summary",
    "phase_table",
    "phase_verdicts",
    "require_variables",
    "results_by_name",
    "saturation",
    "select_splits",
    "smooth",
    "split_values",
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


def as_runs(mi: xr.Dataset) -> xr.Dataset:
    """The estimates with a leading ``run`` dimension (a single run's file gets ``run=[name]``)."""
    if "run" in mi.dims:
        return mi
    name = str(mi.attrs.get("run", "run"))
    return mi.expand_dims(run=[name])


def epochs(data: xr.Dataset | xr.DataArray) -> np.ndarray:
    """Epoch of every step, as float64: the ``epoch`` coordinate (or variable), else the step.

    Where ``epoch`` varies by run (runs that disagree or miss steps) the mean over runs is taken.
    """
    if "epoch" in data.coords:
        epoch = data.coords["epoch"]
    elif "epoch" in getattr(data, "data_vars", ()):
        epoch = data["epoch"]
    else:
        return np.asarray(data["step"].values, dtype=np.float64)
    if "run" in epoch.dims:
        epoch = epoch.mean("run", skipna=True)
    return np.asarray(epoch.values, dtype=np.float64)


def require_variables(mi: xr.Dataset, names: Sequence[str]) -> None:
    """Raise :class:`StoreError` unless the estimates hold every variable in ``names``."""
    missing = [n for n in names if n not in mi.variables]
    if missing:
        raise StoreError(
            f"estimates lack variable(s) {', '.join(missing)}; expected an mi/<preset>.zarr "
            "written by `infoplane estimate` or `infoplane stack`"
        )


def select_splits(mi: xr.Dataset, splits: Sequence[str] | None = None) -> list[str]:
    """The names of ``splits`` (default: every split of the estimates), each checked present."""
    present = [str(s) for s in mi["split"].values]
    if splits is None:
        return present
    missing = [s for s in splits if s not in present]
    if missing:
        raise InputError(
            f"split(s) {', '.join(missing)} not in the estimates (splits: {', '.join(present)})"
        )
    return list(splits)


def split_values(mi: xr.Dataset, var: str, split: str) -> np.ndarray:
    """Values of ``var`` on one split as float, on (run, step, layer) or (run, step)."""
    da = mi[var].sel(split=split)
    order = [d for d in ("run", "step", "layer") if d in da.dims]
    return np.asarray(da.transpose(*order).values, dtype=float)


def across_runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard deviation (ddof 0) and count of the finite values along axis 0 (runs).

    NaN entries are left out; where a point has no finite value, mean and std are NaN.
    """
    data = np.asarray(values, dtype=float)
    finite = np.isfinite(data)
    count = finite.sum(axis=0)
    safe = np.maximum(count, 1)
    mean = np.where(count > 0, np.where(finite, data, 0.0).sum(axis=0) / safe, np.nan)
    dev = np.where(finite, data - np.where(np.isfinite(mean), mean, 0.0), 0.0)
    std = np.where(count > 0, np.sqrt((dev**2).sum(axis=0) / safe), np.nan)
    return mean, std, count


#: The entropy each MI is normalised by in a comparison of estimators.
NORMALISER = {
    "I_XT": "H_X",
    "I_TY": "H_Y",
    "I_XT_upper": "H_X",
    "I_XT_lower": "H_X",
    "I_TY_upper": "H_Y",
    "I_TY_lower": "H_Y",
}


def normalised_mi(
    mi: xr.Dataset, var: str, split: str, layers: Sequence[str], *, normalise: bool = True
) -> np.ndarray:
    """``var`` of ``layers`` on one split as (run, step, layer), divided by its own H(X) or H(Y).

    Estimators differ in scale (the matrix estimator's H(X) depends on the input kernel's width,
    binning's and KDE's is log2 N for distinct inputs); dividing every point by the estimate's own
    ``H_X`` (for I(X;T)) or ``H_Y`` (for I(T;Y)) puts them on [0, 1]. ``normalise=False`` returns
    bits.
    """
    mi = as_runs(mi)
    values = np.asarray(
        mi[var].sel(split=split, layer=list(layers)).transpose("run", "step", "layer").values,
        dtype=float,
    )
    if not normalise:
        return values
    scale = split_values(mi, NORMALISER[var], split)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(scale > 0, values / scale, np.nan)


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

    mi = as_runs(mi)
    if var not in mi:
        raise InputError(f"estimates have no variable {var!r} (variables: {list(mi.data_vars)})")
    if split not in [str(s) for s in mi["split"].values]:
        raise InputError(
            f"split {split!r} not in the estimates (splits: {[str(s) for s in mi['split'].values]})"
        )
    curve = smooth(mi[var].sel(split=split), window).transpose("run", "layer", "step")
    values = curve.values
    steps = np.asarray(mi["step"].values)
    epoch = epochs(mi)
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
    peak_epoch = np.where(any_valid, epoch[peak_index], np.nan)
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


def load_metrics(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Training metrics of several runs as one long table.

    Each file is a run's ``metrics.csv``; the run is named by its folder (``seed0``). Columns
    ``<split>_<metric>`` (e.g. ``train_loss``, ``test_accuracy``) and a long layout with a
    ``split`` column are both read.

    Returns
    -------
    pandas.DataFrame
        Columns ``run``, ``epoch``, ``split``, ``metric``, ``value``.
    """
    import pandas as pd

    frames = []
    for path in paths:
        path = Path(path)
        try:
            table = pd.read_csv(path)
        except FileNotFoundError:
            raise InputError(f"metrics file {path} does not exist") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise InputError(f"metrics file {path} is not a readable CSV table: {exc}") from None
        frames.append(_long_metrics(table, run=path.parent.name, source=str(path)))
    if not frames:
        raise InputError("no metrics files given")
    return pd.concat(frames, ignore_index=True)


def _long_metrics(table: pd.DataFrame, *, run: str, source: str) -> pd.DataFrame:
    import pandas as pd

    if "epoch" not in table.columns:
        raise InputError(f"metrics file {source} has no 'epoch' column (columns: {list(table)})")
    if "split" in table.columns:
        value_cols = [c for c in ("loss", "accuracy") if c in table.columns]
        long = table.melt(
            id_vars=["epoch", "split"], value_vars=value_cols, var_name="metric", value_name="value"
        )
    else:
        records = []
        for column in table.columns:
            split, _, metric = str(column).partition("_")
            if split in ("train", "test") and metric in ("loss", "accuracy"):
                part = pd.DataFrame(
                    {"epoch": table["epoch"], "split": split, "metric": metric}
                ).assign(value=table[column].to_numpy())
                records.append(part)
        if not records:
            raise InputError(
                f"metrics file {source} has no loss/accuracy columns; expected e.g. "
                f"train_loss, test_accuracy (columns: {list(table)})"
            )
        long = pd.concat(records, ignore_index=True)
    long = long.dropna(subset=["value"])
    long.insert(0, "run", run)
    return long[["run", "epoch", "split", "metric", "value"]]


def metrics_array(
    table: pd.DataFrame, *, split: str = "test", metric: str = "accuracy"
) -> xr.DataArray:
    """A metric of :func:`load_metrics`' table as a DataArray on (``run``, ``epoch``)."""
    import xarray as xr

    needed = {"run", "epoch", "split", "metric", "value"}
    if not needed <= set(table.columns):
        raise InputError(
            f"metrics table needs columns {sorted(needed)}, got {list(table.columns)}; "
            "read metrics.csv files with infoplane.report.analysis.load_metrics"
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

    mi = as_runs(mi)
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


def data_processing_share(mi: xr.Dataset, *, tol: float = 1e-6) -> xr.Dataset:
    """Share of points at which a deeper layer carries no more information than the one before.

    For every pair of consecutive layers (T_l, T_l+1) in recorded order and every (run, step),
    the point obeys the data-processing inequality for I(X;T) when
    I(X;T_l+1) <= I(X;T_l) + ``tol``, and likewise for I(T;Y). Points where either value is NaN
    are left out. The last ``pair``, ``chain``, counts points at which every pair obeys it.

    Returns
    -------
    xarray.Dataset
        ``I_XT`` and ``I_TY`` (shares in [0, 1], NaN where no point counts) and ``n_XT``,
        ``n_TY`` (points counted), on (``split``, ``pair``).
    """
    import xarray as xr

    require_variables(mi, ["I_XT", "I_TY"])
    mi = as_runs(mi)
    layers = [str(v) for v in mi["layer"].values]
    pairs = [f"{a} → {b}" for a, b in itertools.pairwise(layers)] + ["chain"]
    splits = [str(s) for s in mi["split"].values]
    out: dict[str, tuple] = {}
    for var in ("I_XT", "I_TY"):
        shares = np.full((len(splits), len(pairs)), np.nan)
        counts = np.zeros((len(splits), len(pairs)), dtype=np.int64)
        for i, split in enumerate(splits):
            data = mi[var].sel(split=split).transpose("run", "step", "layer").values
            shallow, deep = data[..., :-1], data[..., 1:]
            valid = np.isfinite(shallow) & np.isfinite(deep)
            with np.errstate(invalid="ignore"):
                obeys = valid & (deep <= shallow + tol)
            counts[i, :-1] = valid.sum(axis=(0, 1))
            good = obeys.sum(axis=(0, 1))
            chain_valid = valid.all(axis=-1) if len(layers) > 1 else np.zeros(data.shape[:2], bool)
            counts[i, -1] = chain_valid.sum()
            chain_good = (obeys.all(axis=-1) & chain_valid).sum()
            with np.errstate(invalid="ignore", divide="ignore"):
                shares[i, :-1] = np.where(counts[i, :-1] > 0, good / counts[i, :-1], np.nan)
                shares[i, -1] = chain_good / counts[i, -1] if counts[i, -1] else np.nan
        out[var] = (("split", "pair"), shares)
        out[f"n_{var[2:]}"] = (("split", "pair"), counts)
    return xr.Dataset(
        out,
        coords={"split": splits, "pair": pairs},
        attrs={"tol_bits": tol, "layers": layers},
    )


def data_processing_table(shares: xr.Dataset) -> pd.DataFrame:
    """:func:`data_processing_share` as a table: one row per (split, pair).

    Columns ``split``, ``pair``, ``I_XT``, ``I_TY``, ``n_XT``, ``n_TY``.
    """
    table = shares.to_dataframe().reset_index()
    return table[["split", "pair", "I_XT", "I_TY", "n_XT", "n_TY"]]


def data_processing_summary(mi: xr.Dataset, *, tol: float = 1e-6) -> pd.DataFrame:
    """Share of (run, step, layer pair) points obeying the data-processing order, per split.

    Uses :func:`data_processing_share` for the per-pair shares and pools them over the
    consecutive pairs (``chain`` left out), weighting each pair by its points.

    Returns
    -------
    pandas.DataFrame
        One row per split: ``share_XT``, ``share_TY`` (pooled shares), ``points_XT``,
        ``points_TY``, ``chain_XT``, ``chain_TY`` (share of (run, step) at which the whole chain
        of layers is ordered).
    """
    import pandas as pd

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
    mi = as_runs(mi)
    if var not in mi:
        raise InputError(f"estimates have no variable {var!r}")
    if "n_samples" not in mi:
        raise InputError("estimates record no n_samples; re-estimate with `infoplane estimate`")
    n = mi["n_samples"]
    if "run" in n.dims:
        n = n.max("run")
    return mi[var] / np.log2(n.astype(np.float64))


# ---------------------------------------------------------------------------------------------
# phase metrics with confidence intervals and a verdict

#: Confidence level of the phase intervals (and the level assumed for resampling bounds whose
#: result records no ``interval_level``).
PHASE_LEVEL = 0.9
#: The fitting phase starts where the smoothed I(T;Y) has made this share of its rise.
FITTING_ONSET_SHARE = 0.1
# a rise up to this many bits is rounding (the moving average sums), not a rise
_FLAT_BITS = 1e-9
#: Columns of :func:`phase_table`, in order.
PHASE_COLUMNS = (
    "split",
    "layer",
    "runs",
    "resampled",
    "fitting",
    "fitting_lo",
    "fitting_hi",
    "fitting_onset_epoch",
    "compression",
    "compression_lo",
    "compression_hi",
    "compression_onset_epoch",
    "significant",
)
#: Verdicts of :func:`phase_verdicts`: compression significant under every member, some, none.
VERDICTS = ("every", "some", "none")


def _first_reaching(values: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    """Index of the first finite entry along the last axis at or above ``threshold`` (-1: none)."""
    with np.errstate(invalid="ignore"):
        reached = np.isfinite(values) & (values >= threshold[..., None])
    return np.where(reached.any(axis=-1), np.argmax(reached, axis=-1), -1)


def _bound_spread(mi: xr.Dataset, var: str, split: str, window: int) -> np.ndarray | None:
    """Standard error per (run, layer, step) of smoothed ``var`` from its resampling bounds.

    The bounds ``<var>_lo``/``<var>_hi`` are read as a central interval of the result's
    ``interval_level`` (default :data:`PHASE_LEVEL`) of a normal estimate; None without them.
    """
    from scipy.stats import norm

    lo, hi = f"{var}_lo", f"{var}_hi"
    if lo not in mi or hi not in mi:
        return None
    level = float(mi.attrs.get("interval_level", PHASE_LEVEL))
    z = float(norm.ppf(0.5 + level / 2))
    width = smooth(mi[hi].sel(split=split) - mi[lo].sel(split=split), window)
    return np.asarray(width.transpose("run", "layer", "step").values, dtype=float) / (2 * z)


def phase_metrics(
    mi: xr.Dataset,
    *,
    split: str = "train",
    window: int = 3,
    onset_share: float = FITTING_ONSET_SHARE,
) -> xr.Dataset:
    """Fitting and compression of every (run, layer) on one split, with their onsets.

    - ``fitting``: the rise of smoothed I(T;Y) from the first step to its maximum (the ``rise``
      of :func:`phase_summary` on ``I_TY``); ``fitting_onset_step``/``_epoch``: the first step at
      which it has made ``onset_share`` of that rise (-1 / NaN for a curve that never rises);
    - ``compression``: the drop of smoothed I(X;T) from its maximum to the last step (the
      ``drop`` of :func:`phase_summary` on ``I_XT``); ``compression_onset_step``/``_epoch``:
      where that maximum is;
    - ``fitting_se``, ``compression_se``: the resampling standard error of each amount, from the
      bounds ``I_TY_lo``/``I_TY_hi`` and ``I_XT_lo``/``I_XT_hi`` when the result holds them
      (the two smoothed points of an amount taken as independent: √(se_a² + se_b²)), else NaN.

    Returns
    -------
    xarray.Dataset
        The variables above on (``run``, ``layer``); attrs ``split``, ``window``,
        ``resampled`` (whether both pairs of bounds were there; each amount uses its own pair).
    """
    import xarray as xr

    mi = as_runs(mi)
    require_variables(mi, ["I_XT", "I_TY"])
    if not 0.0 < onset_share <= 1.0:
        raise InputError(f"phase metrics: onset_share must lie in (0, 1], got {onset_share!r}")
    fit = phase_summary(mi, var="I_TY", split=split, window=window)
    comp = phase_summary(mi, var="I_XT", split=split, window=window)
    steps = np.asarray(mi["step"].values)
    epoch = epochs(mi)
    curve = smooth(mi["I_TY"].sel(split=split), window).transpose("run", "layer", "step").values
    start = fit["start"].values
    onset = _first_reaching(curve, start + onset_share * fit["rise"].values)
    with np.errstate(invalid="ignore"):  # a curve that never rises has no onset
        found = (onset >= 0) & (fit["rise"].values > _FLAT_BITS)
    dims = ("run", "layer")
    out = {
        "fitting": (dims, fit["rise"].values),
        "fitting_onset_step": (dims, np.where(found, steps[onset], -1).astype(np.int64)),
        "fitting_onset_epoch": (dims, np.where(found, epoch[onset], np.nan)),
        "compression": (dims, comp["drop"].values),
        "compression_onset_step": (dims, comp["peak_step"].values),
        "compression_onset_epoch": (dims, comp["peak_epoch"].values),
    }
    resampled = True
    for name, var, ends in (
        ("fitting_se", "I_TY", ("first", "peak")),
        ("compression_se", "I_XT", ("peak", "last")),
    ):
        spread = _bound_spread(mi, var, split, window)
        if spread is None:
            resampled = False
            out[name] = (dims, np.full(start.shape, np.nan))
            continue
        index = _end_indices(mi, var, split, window)
        parts = [np.take_along_axis(spread, index[end][..., None], -1)[..., 0] for end in ends]
        out[name] = (dims, np.sqrt(parts[0] ** 2 + parts[1] ** 2))
    return xr.Dataset(
        out,
        coords={"run": fit["run"].values, "layer": fit["layer"].values},
        attrs={"split": split, "window": int(window), "resampled": resampled},
    )


def _end_indices(mi: xr.Dataset, var: str, split: str, window: int) -> dict[str, np.ndarray]:
    """Step positions of the first, peak and last finite smoothed values, per (run, layer)."""
    values = smooth(mi[var].sel(split=split), window).transpose("run", "layer", "step").values
    valid = np.isfinite(values)
    return {
        "first": np.argmax(valid, axis=-1),
        "peak": np.argmax(np.where(valid, values, -np.inf), axis=-1),
        "last": values.shape[-1] - 1 - np.argmax(valid[..., ::-1], axis=-1),
    }


def mean_interval(
    values: np.ndarray, se: np.ndarray | None = None, *, level: float = PHASE_LEVEL
) -> tuple[float, float, float]:
    """Mean of per-run amounts and its two-sided ``level`` confidence interval.

    The variance of the mean is the between-run one, s²/n (a Student t interval with n - 1
    degrees of freedom), plus, when the runs carry resampling standard errors ``se``, their
    share Σ se_r² / n². With one run only the resampling part remains (a normal interval); with
    one run and no ``se`` the interval is (NaN, NaN). NaN runs are left out.
    """
    from scipy.stats import norm, t

    data = np.asarray(values, dtype=float)
    errors = None if se is None else np.asarray(se, dtype=float)
    keep = np.isfinite(data)
    if errors is not None:
        keep &= np.isfinite(errors)
        if not keep.any() and np.isfinite(data).any():  # no bounds at all: seeds alone
            errors, keep = None, np.isfinite(data)
    data = data[keep]
    n = data.size
    if n == 0:
        return np.nan, np.nan, np.nan
    mean = float(data.mean())
    variance = data.var(ddof=1) / n if n > 1 else 0.0
    if errors is not None:
        variance += float((errors[keep] ** 2).sum()) / n**2
    if n == 1 and errors is None:
        return mean, np.nan, np.nan
    q = 0.5 + level / 2
    factor = float(t.ppf(q, n - 1)) if n > 1 else float(norm.ppf(q))
    half = factor * float(np.sqrt(variance))
    return mean, mean - half, mean + half


def phase_table(
    mi: xr.Dataset,
    *,
    splits: Sequence[str] | None = None,
    window: int = 3,
    level: float = PHASE_LEVEL,
    atol: float = 1e-6,
) -> pd.DataFrame:
    """Per split and layer: fitting and compression across runs, with ``level`` intervals.

    Built on :func:`phase_metrics` and :func:`mean_interval`: ``fitting``/``compression`` are
    the means over runs, ``*_lo``/``*_hi`` the interval (seeds, and the resampling bounds when
    the result holds them; ``resampled`` says so for the compression), ``*_onset_epoch`` the
    mean onsets. Compression is
    ``significant`` where its interval lies above ``atol`` bits (a saturated estimator varies by
    rounding only).

    Returns
    -------
    pandas.DataFrame
        The columns of :data:`PHASE_COLUMNS`.
    """
    import pandas as pd

    mi = as_runs(mi)
    rows = []
    for split in select_splits(mi, splits):
        metrics = phase_metrics(mi, split=split, window=window)
        for layer in metrics["layer"].values:
            part = metrics.sel(layer=layer)
            row: dict[str, Any] = {
                "split": split,
                "layer": str(layer),
                "runs": int(np.isfinite(part["compression"].values).sum()),
                "resampled": bool(np.isfinite(part["compression_se"].values).any()),
            }
            for amount in ("fitting", "compression"):
                # runs without bounds (all NaN) fall back to the seeds alone
                se = part[f"{amount}_se"].values
                mean, lo, hi = mean_interval(part[amount].values, se, level=level)
                row[amount], row[f"{amount}_lo"], row[f"{amount}_hi"] = mean, lo, hi
                onset = part[f"{amount}_onset_epoch"].values
                row[f"{amount}_onset_epoch"] = (
                    float(np.nanmean(onset)) if np.isfinite(onset).any() else np.nan
                )
            row["significant"] = bool(
                np.isfinite(row["compression_lo"]) and row["compression_lo"] > atol
            )
            rows.append(row)
    return pd.DataFrame(rows, columns=list(PHASE_COLUMNS))


def results_by_name(sources: Sequence[Any]) -> dict[str, xr.Dataset]:
    """Results (Datasets or paths of ``mi/<preset>.zarr``) by their ``estimator`` attribute, the
    preset's name; two results of one name raise :class:`InputError`."""
    from infoplane.io.results import open_result

    results: dict[str, Any] = {}
    for source in sources:
        mi = source if hasattr(source, "data_vars") else open_result(source)
        name = str(mi.attrs.get("estimator") or f"result {len(results) + 1}")
        if name in results:
            raise InputError(f"two results given are both named {name!r}")
        results[name] = mi
    return results


def phase_verdicts(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per split and layer, whether compression is significant under every preset, some or none.

    Parameters
    ----------
    tables
        ``preset name -> phase_table`` (the members of a family, or an experiment's presets).

    Returns
    -------
    pandas.DataFrame
        Every row of the tables with a leading ``preset`` column, and per (split, layer)
        ``significant_under`` (how many presets find it significant, of ``presets``) and
        ``verdict`` (one of :data:`VERDICTS`). A layer some preset lacks counts as not
        significant under it.
    """
    import pandas as pd

    if not tables:
        raise InputError("phase verdicts: give the phase table of at least one preset")
    long = pd.concat(
        [table.assign(preset=name) for name, table in tables.items()], ignore_index=True
    )
    long = long[["preset", *PHASE_COLUMNS]]
    counts = long.groupby(["split", "layer"], sort=False)["significant"].sum().astype(int)
    total = len(tables)
    verdict = counts.map(lambda k: "every" if k == total else ("some" if k > 0 else "none"))
    keys = pd.MultiIndex.from_frame(long[["split", "layer"]])
    long["significant_under"] = counts.reindex(keys).to_numpy()
    long["presets"] = total
    long["verdict"] = verdict.reindex(keys).to_numpy()
    return long
