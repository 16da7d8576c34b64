"""Figures of information-plane results: the information plane, MI and kernel widths against
epoch, data-processing checks, the members of a sensitivity family and training curves.

Every figure is drawn on its own :class:`matplotlib.figure.Figure` (no pyplot state, the Agg
renderer) under a fixed style, and saved without a software or date stamp, so the same data give
the same bytes. Runs (seeds) are summarised by their mean; the spread across runs is shown as thin
per-run lines and ±1 standard-deviation error bars (information plane) or bands (curves).
Points whose H(X), H(T) or H(X,T) is degenerate (saturated at log2 N or collapsed at 0, see
:func:`infoplane.report.checks.degenerate_estimates`) are marked with × in the information-plane
and MI-against-epoch figures, with a legend entry; without such points the figures are as before.

Inputs follow the "Estimates" contract: an :class:`xarray.Dataset` with ``I_XT``, ``I_TY`` and
``sigma`` on (``split``, ``step``, ``layer``), ``H_X``, ``H_Y`` and ``sigma_x`` on (``split``,
``step``), a coordinate ``epoch`` on ``step`` and, for an experiment, a ``run`` dimension in
front. A single run's file (no ``run`` dimension) is treated as one run. Files are read with
:func:`infoplane.io.results.open_result`.

Results with per-point intervals (``<name>_lo``/``<name>_hi``, see
:mod:`infoplane.core.resample`) add them: grey crosses on the per-layer information planes and
dotted bound lines on the MI-against-epoch curves, both at the mean over runs of the per-run
bounds, and a note under the figure that says so. Without them the figures are unchanged.

This module only draws: what the figures show (runs, epochs, means and spreads across runs,
data-processing shares, training metrics) is computed by :mod:`infoplane.report.analysis`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infoplane.errors import InputError
from infoplane.io.files import replacing
from infoplane.io.results import open_result
from infoplane.report.analysis import (
    across_runs,
    as_runs,
    data_processing_share,
    data_processing_table,
    epochs,
    load_metrics,
    normalised_mi,
    require_variables,
    results_by_name,
    select_splits,
    split_values,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd
    import xarray as xr
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

#: File names :func:`plot_estimates` writes, in order.
ESTIMATE_FIGURES = (
    "information_plane.png",
    "information_plane_train.png",
    "information_plane_test.png",
    "mi_epoch.png",
    "widths.png",
    "data_processing.png",
)
#: Table of the data-processing shares written beside the figures.
DATA_PROCESSING_TABLE = "data_processing.csv"
#: File names :func:`plot_comparison` writes (one per split).
COMPARISON_FIGURES = {"train": "comparison_train.png", "test": "comparison_test.png"}
#: File names :func:`plot_family` writes (one per split).
FAMILY_FIGURES = {"train": "family_train.png", "test": "family_test.png"}
#: File name :func:`plot_training` writes by default.
TRAINING_FIGURE = "training.png"

#: Smallest range (bits) an information-plane axis shows.
MIN_SPAN_BITS = 0.05
BITS_XT = "I(X;T) [bits]"
BITS_TY = "I(T;Y) [bits]"
EPOCH_CMAP = "viridis"
_LAYER_CMAP = "plasma"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p")
# more layers than this (plus H(Y)) move the all-layer legend out of the panel
_INSIDE_LEGEND_MAX = 7
_STYLE: dict[str, Any] = {
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 11,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "grid.linewidth": 0.5,
    "savefig.dpi": 150,
    "svg.hashsalt": "infoplane",
    "pdf.fonttype": 42,
}
# Software/date entries make otherwise identical files differ between machines and days.
_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
    "svg": {"Creator": None, "Date": None},
}


# ---------------------------------------------------------------------------------------------
# Figure helpers


@contextlib.contextmanager
def _style() -> Iterator[None]:
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        yield


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` with deterministic metadata; the format follows the suffix (png, pdf, svg).

    The file is drawn under a scratch name and moved into place once complete.
    """
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with replacing(path) as tmp, _style():
        fig.savefig(tmp, format=fmt, metadata=_METADATA.get(fmt))
    return path


def _title(mi: xr.Dataset, what: str) -> str:
    experiment = mi.attrs.get("experiment")
    estimator = mi.attrs.get("estimator")
    parts = [p for p in (experiment, estimator) if p]
    n_runs = mi.sizes.get("run", 1)
    runs = f"{n_runs} run{'s' if n_runs != 1 else ''}"
    return f"{what} — {' / '.join(map(str, parts))} ({runs})" if parts else f"{what} ({runs})"


def _layer_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps[_LAYER_CMAP]
    # the yellow end of plasma is hard to see on white; stop short of it
    return [cmap(0.05 + 0.8 * i / max(n - 1, 1)) for i in range(n)]


def _epoch_norm(epoch: np.ndarray):
    import numpy as np
    from matplotlib.colors import Normalize

    finite = epoch[np.isfinite(epoch)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    return Normalize(vmin=low, vmax=high if high > low else low + 1.0)


def _trajectory(
    ax: Axes,
    x: np.ndarray,
    y: np.ndarray,
    epoch: np.ndarray,
    norm,
    *,
    marker: str = "o",
    filled: bool = True,
    runs: bool = True,
    error_bars: int = 8,
    size: float = 12.0,
) -> None:
    """Mean path of (x, y) over runs, coloured by epoch; per-run lines and error bars."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection

    cmap = colormaps[EPOCH_CMAP]
    n_runs = x.shape[0]
    if runs and n_runs > 1:
        for xr_, yr_ in zip(x, y, strict=True):
            ok = np.isfinite(xr_) & np.isfinite(yr_)
            ax.plot(xr_[ok], yr_[ok], color="0.55", lw=0.5, alpha=0.45, zorder=1)
    xm, xs, _ = across_runs(x)
    ym, ys, _ = across_runs(y)
    ok = np.isfinite(xm) & np.isfinite(ym)
    xm, ym, xs, ys, ep = xm[ok], ym[ok], xs[ok], ys[ok], epoch[ok]
    if xm.size == 0:
        return
    if xm.size > 1:
        points = np.column_stack([xm, ym])
        segments = np.stack([points[:-1], points[1:]], axis=1)
        lines = LineCollection(segments, cmap=cmap, norm=norm, linewidths=1.2, zorder=2)
        lines.set_array(0.5 * (ep[:-1] + ep[1:]))
        ax.add_collection(lines)
    if n_runs > 1 and error_bars:
        # spread evenly in epoch, not in index: captures are often dense early in training
        targets = np.linspace(ep.min(), ep.max(), min(error_bars, xm.size))
        picks = np.unique(np.abs(ep[None, :] - targets[:, None]).argmin(axis=1))
        for i in picks:  # one call per point: errorbar takes a single colour
            ax.errorbar(
                xm[i],
                ym[i],
                xerr=xs[i],
                yerr=ys[i],
                fmt="none",
                ecolor=cmap(norm(ep[i])),
                elinewidth=0.8,
                capsize=1.5,
                alpha=0.9,
                zorder=3,
            )
    if filled:
        ax.scatter(
            xm, ym, c=ep, cmap=cmap, norm=norm, s=size, marker=marker, edgecolors="none", zorder=4
        )
    else:
        ax.scatter(
            xm,
            ym,
            s=size,
            marker=marker,
            facecolors="none",
            edgecolors=cmap(norm(ep)),
            linewidths=0.8,
            zorder=4,
        )
    ax.autoscale_view()


def _min_span(ax: Axes, bits: float = MIN_SPAN_BITS) -> None:
    """Widen an axis whose range is below ``bits``, and write its ticks without an offset.

    A saturated layer (I(X;T) = H(X) to within rounding) would otherwise fill the panel with
    differences of 1e-5 bits.
    """
    for get, set_ in ((ax.get_xlim, ax.set_xlim), (ax.get_ylim, ax.set_ylim)):
        low, high = get()
        if high - low < bits:
            middle = 0.5 * (low + high)
            set_(middle - bits / 2, middle + bits / 2)
    ax.ticklabel_format(axis="both", style="plain", useOffset=False)


def _plain_log_axis(ax: Axes) -> None:
    """Log-scaled y axis with tick labels written as plain numbers (0.5, 2, 30)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    plain = FuncFormatter(lambda value, _pos: f"{value:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
    ax.yaxis.set_minor_formatter(plain)


def _epoch_colorbar(fig: Figure, axes, norm) -> None:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable

    mappable = ScalarMappable(norm=norm, cmap=colormaps[EPOCH_CMAP])
    fig.colorbar(mappable, ax=axes, label="epoch", shrink=0.9, aspect=30)


def _ip_labels(ax: Axes, *, xlabel: bool = True, ylabel: bool = True) -> None:
    if xlabel:
        ax.set_xlabel(BITS_XT)
    if ylabel:
        ax.set_ylabel(BITS_TY)


def _layer_marker(k: int) -> tuple[str, bool]:
    """Marker of layer ``k`` and whether it is filled (hollow markers after the first cycle)."""
    return _MARKERS[k % len(_MARKERS)], (k // len(_MARKERS)) % 2 == 0


def _overview_panel(ax: Axes, mi: xr.Dataset, split: str, epoch: np.ndarray, norm) -> list:
    """All layers' mean trajectories in one plane; markers tell the layers apart.

    Returns the legend handles (one marker per layer, then H(Y) and, where some point is
    degenerate, its × mark).
    """
    import numpy as np
    from matplotlib.lines import Line2D

    layers = [str(v) for v in mi["layer"].values]
    ixt = split_values(mi, "I_XT", split)
    ity = split_values(mi, "I_TY", split)
    degenerate = degenerate_mask(mi, split)
    handles = []
    marked = False
    for k, layer in enumerate(layers):
        marker, filled = _layer_marker(k)
        _trajectory(
            ax,
            ixt[..., k],
            ity[..., k],
            epoch,
            norm,
            marker=marker,
            filled=filled,
            runs=False,
            error_bars=0,
        )
        marked |= mark_degenerate_plane(ax, ixt[..., k], ity[..., k], degenerate[:, k])
        handles.append(
            Line2D(
                [],
                [],
                ls="none",
                marker=marker,
                color="0.25",
                markerfacecolor="0.25" if filled else "none",
                markersize=5,
                label=layer,
            )
        )
    if "H_Y" in mi:
        h_y = across_runs(split_values(mi, "H_Y", split))[0]
        if np.isfinite(h_y).any():
            ax.axhline(float(np.nanmean(h_y)), color="0.3", lw=0.8, ls="--", zorder=0)
            handles.append(Line2D([], [], color="0.3", lw=0.8, ls="--", label="H(Y)"))
    if marked:
        handles.append(_degenerate_handle())
    _min_span(ax)
    return handles


def _layer_legend(fig: Figure, ax: Axes, handles: list) -> None:
    """Layer legend inside the panel for a few layers, below the panels for many."""
    if len(handles) <= _INSIDE_LEGEND_MAX:
        ax.legend(handles=handles, loc="best", frameon=True, framealpha=0.85, fontsize=7)
    else:
        fig.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(handles), 9),
            fontsize=7,
            title="layers (all-layer panels)",
            title_fontsize=7,
        )


# ---------------------------------------------------------------------------------------------
# Degenerate points (infoplane.report.checks.degenerate_estimates) marked on the figures

#: Legend text and gid of the marks of degenerate points.
DEGENERATE_LABEL = "degenerate (H at log2 N or 0)"
DEGENERATE_GID = "degenerate"
_DEGENERATE_STYLE: dict[str, Any] = {"marker": "x", "s": 26, "color": "#c0392b", "zorder": 7}


def degenerate_mask(mi: xr.Dataset, split: str) -> np.ndarray:
    """(step, layer) bool: where some run's H(X), H(T) or H(X,T) is saturated or collapsed.

    The points are those of :func:`infoplane.report.checks.degenerate_estimates` (a degenerate
    H(X) marks every layer of its steps); all False when the result lacks the entropies.
    """
    import numpy as np

    from infoplane.report.checks import degenerate_estimates

    layers = [str(v) for v in mi["layer"].values]
    steps = [s.item() if hasattr(s, "item") else s for s in mi["step"].values]
    mask = np.zeros((len(steps), len(layers)), dtype=bool)
    needed = ("H_X", "H_T", "H_XT", "H_Y", "H_TY", "I_XT", "I_TY")
    if not all(name in mi for name in needed) or "n_samples" not in mi:
        return mask
    position = {step: i for i, step in enumerate(steps)}
    for entry in degenerate_estimates(mi):
        if entry.where.get("split") != split:
            continue
        columns = [layers.index(entry.where["layer"])] if "layer" in entry.where else slice(None)
        for step in entry.steps:
            mask[position[step], columns] = True
    return mask


def _degenerate_handle() -> Any:
    from matplotlib.lines import Line2D

    style = _DEGENERATE_STYLE
    return Line2D(
        [], [], ls="none", marker=style["marker"], color=style["color"], label=DEGENERATE_LABEL
    )


def mark_degenerate_plane(
    ax: Axes, x: np.ndarray, y: np.ndarray, mask: np.ndarray, *, size: float | None = None
) -> bool:
    """Mark with × the mean (over runs) points of one layer's path where ``mask`` (step,) holds.

    ``x`` and ``y`` are (run, step); returns whether anything was marked.
    """
    import numpy as np

    xm, ym = across_runs(x)[0], across_runs(y)[0]
    marked = mask & np.isfinite(xm) & np.isfinite(ym)
    if not marked.any():
        return False
    style = {**_DEGENERATE_STYLE, **({"s": size} if size is not None else {})}
    ax.scatter(xm[marked], ym[marked], linewidths=1.0, gid=DEGENERATE_GID, **style)
    return True


def mark_degenerate_curve(ax: Axes, epoch: np.ndarray, runs: np.ndarray, mask: np.ndarray) -> bool:
    """Mark with × the mean (over runs) of a curve against epoch where ``mask`` (step,) holds.

    ``runs`` is (run, step) in the order of ``epoch``; returns whether anything was marked.
    """
    import numpy as np

    mean = across_runs(runs)[0]
    marked = mask & np.isfinite(mean)
    if not marked.any():
        return False
    ax.scatter(epoch[marked], mean[marked], linewidths=1.0, gid=DEGENERATE_GID, **_DEGENERATE_STYLE)
    return True


# ---------------------------------------------------------------------------------------------
# Figures


def information_plane_overview(mi: xr.Dataset, *, splits: Sequence[str] | None = None) -> Figure:
    """All layers in one information plane per split, splits side by side, epoch as colour."""
    require_variables(mi, ["I_XT", "I_TY"])
    mi = as_runs(mi)
    splits = select_splits(mi, splits)
    epoch = epochs(mi)
    norm = _epoch_norm(epoch)
    with _style():
        fig = _new_figure(4.4 * len(splits) + 0.9, 4.0)
        axes = fig.subplots(1, len(splits), squeeze=False)[0]
        for ax, split in zip(axes, splits, strict=True):
            handles = _overview_panel(ax, mi, split, epoch, norm)
            ax.set_title(f"{split} probe")
            _ip_labels(ax)
            if len(handles) <= _INSIDE_LEGEND_MAX:
                _layer_legend(fig, ax, handles)
        if len(handles) > _INSIDE_LEGEND_MAX:
            _layer_legend(fig, axes[0], handles)
        _epoch_colorbar(fig, list(axes), norm)
        fig.suptitle(_title(mi, "Information plane, mean over runs"))
    return fig


def information_plane_layers(mi: xr.Dataset, split: str) -> Figure:
    """One panel per layer (mean ± spread over runs) and an overview panel, for one split.

    Degenerate points (:func:`degenerate_mask`) are marked with × and a legend entry.
    """
    require_variables(mi, ["I_XT", "I_TY"])
    mi = as_runs(mi)
    if split not in [str(s) for s in mi["split"].values]:
        raise InputError(
            f"split {split!r} is not in the estimates (splits: "
            f"{', '.join(map(str, mi['split'].values))})"
        )
    layers = [str(v) for v in mi["layer"].values]
    epoch = epochs(mi)
    norm = _epoch_norm(epoch)
    panels = len(layers) + 1
    ncols = min(5, math.ceil(math.sqrt(panels)))
    nrows = math.ceil(panels / ncols)
    ixt = split_values(mi, "I_XT", split)
    ity = split_values(mi, "I_TY", split)
    with _style():
        fig = _new_figure(3.0 * ncols + 0.9, 2.7 * nrows + 0.5)
        grid = fig.subplots(nrows, ncols, squeeze=False)
        axes = list(grid.ravel())
        handles = _overview_panel(axes[0], mi, split, epoch, norm)
        axes[0].set_title("all layers (means)")
        degenerate = degenerate_mask(mi, split)
        marked = False
        for k, layer in enumerate(layers):
            ax = axes[k + 1]
            _trajectory(ax, ixt[..., k], ity[..., k], epoch, norm)
            marked |= mark_degenerate_plane(ax, ixt[..., k], ity[..., k], degenerate[:, k])
            _interval_crosses(ax, mi, split, k)
            _min_span(ax)
            ax.set_title(f"layer {k + 1}: {layer}")
        if marked and not any(h.get_label() == DEGENERATE_LABEL for h in handles):
            handles.append(_degenerate_handle())
        _layer_legend(fig, axes[0], handles)
        for ax in axes[panels:]:
            ax.remove()
        for index, ax in enumerate(axes[:panels]):
            col = index % ncols
            last_in_col = index + ncols >= panels
            _ip_labels(ax, xlabel=last_in_col, ylabel=col == 0)
        _epoch_colorbar(fig, axes[:panels], norm)
        fig.suptitle(_title(mi, f"Information plane, {split} probe"))
        _interval_note(fig, mi, "grey crosses")
    return fig


def _per_layer_setup(
    mi: xr.Dataset, splits: Sequence[str] | None, variables: Sequence[str]
) -> tuple[xr.Dataset, list[str], list[str], list, np.ndarray, np.ndarray]:
    """What every per-layer figure against epoch starts from.

    Returns the result on a ``run`` dimension, its splits, layer names, one colour per layer, the
    epoch of every step and the step order by epoch.
    """
    import numpy as np

    require_variables(mi, variables)
    mi = as_runs(mi)
    layers = [str(v) for v in mi["layer"].values]
    epoch = epochs(mi)
    order = np.argsort(epoch, kind="stable")
    return mi, select_splits(mi, splits), layers, _layer_colors(len(layers)), epoch, order


def mi_epoch_figure(mi: xr.Dataset, *, splits: Sequence[str] | None = None) -> Figure:
    """I(X;T) and I(T;Y) of every layer against epoch (mean and ±1 std band over runs).

    Degenerate points (:func:`degenerate_mask`) are marked with × and a legend entry.
    """
    from matplotlib.lines import Line2D

    mi, splits, layers, colors, epoch, order = _per_layer_setup(mi, splits, ["I_XT", "I_TY"])
    rows = (("I_XT", BITS_XT, "H_X"), ("I_TY", BITS_TY, "H_Y"))
    marked = False
    with _style():
        fig = _new_figure(3.9 * len(splits) + 1.6, 5.6)
        axes = fig.subplots(2, len(splits), squeeze=False, sharex=True)
        for col, split in enumerate(splits):
            degenerate = degenerate_mask(mi, split)[order]
            for row, (var, label, bound) in enumerate(rows):
                ax = axes[row, col]
                values = split_values(mi, var, split)
                for k, color in enumerate(colors):
                    _band(ax, epoch[order], values[:, order, k], color)
                    marked |= mark_degenerate_curve(
                        ax, epoch[order], values[:, order, k], degenerate[:, k]
                    )
                    _interval_lines(ax, mi, var, split, k, epoch, order, color)
                if bound in mi:
                    mean = across_runs(split_values(mi, bound, split))[0][order]
                    ax.plot(epoch[order], mean, color="0.2", lw=0.9, ls="--", zorder=5)
                ax.set_ylabel(label)
                if row == 0:
                    ax.set_title(f"{split} probe")
                if row == 1:
                    ax.set_xlabel("epoch")
        handles = [
            Line2D([], [], color=c, lw=1.5, label=name)
            for c, name in zip(colors, layers, strict=True)
        ]
        handles.append(Line2D([], [], color="0.2", lw=0.9, ls="--", label="H(X), H(Y)"))
        if marked:
            handles.append(_degenerate_handle())
        fig.legend(handles=handles, loc="outside right upper", title="layer")
        fig.suptitle(_title(mi, "Mutual information against epoch"))
        _interval_note(fig, mi, "dotted lines")
    return fig


def _band(ax: Axes, x: np.ndarray, runs: np.ndarray, color, *, label: str | None = None) -> None:
    """Mean line and ±1 std band of ``runs`` (run, point) against ``x``."""
    import numpy as np

    mean, std, _ = across_runs(runs)
    ok = np.isfinite(mean)
    ax.plot(x[ok], mean[ok], color=color, lw=1.3, label=label, zorder=3)
    if runs.shape[0] > 1:
        ax.fill_between(
            x[ok], (mean - std)[ok], (mean + std)[ok], color=color, alpha=0.2, lw=0, zorder=2
        )


# ---------------------------------------------------------------------------------------------
# Per-point intervals (drawn only where a result has them)


def _mean_bounds(mi: xr.Dataset, var: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean over runs of the lower and upper interval bounds of ``var``; None without them."""
    if f"{var}_lo" not in mi or f"{var}_hi" not in mi:
        return None
    lo = across_runs(split_values(mi, f"{var}_lo", split))[0]
    hi = across_runs(split_values(mi, f"{var}_hi", split))[0]
    return lo, hi


def _interval_crosses(ax: Axes, mi: xr.Dataset, split: str, k: int) -> None:
    """Grey crosses spanning the mean interval of I(X;T) and I(T;Y) of layer ``k`` at each point."""
    import numpy as np

    x_bounds = _mean_bounds(mi, "I_XT", split)
    y_bounds = _mean_bounds(mi, "I_TY", split)
    if x_bounds is None or y_bounds is None:
        return
    (x_lo, x_hi), (y_lo, y_hi) = (b[..., k] for b in x_bounds), (b[..., k] for b in y_bounds)
    xm = across_runs(split_values(mi, "I_XT", split)[..., k])[0]
    ym = across_runs(split_values(mi, "I_TY", split)[..., k])[0]
    ok = np.isfinite(xm) & np.isfinite(ym) & np.isfinite(x_lo + x_hi + y_lo + y_hi)
    if not ok.any():
        return
    ax.errorbar(
        xm[ok],
        ym[ok],
        xerr=np.abs(np.stack([xm - x_lo, x_hi - xm]))[:, ok],
        yerr=np.abs(np.stack([ym - y_lo, y_hi - ym]))[:, ok],
        fmt="none",
        ecolor="0.6",
        elinewidth=0.5,
        alpha=0.6,
        zorder=1,
    )


def _interval_lines(
    ax: Axes,
    mi: xr.Dataset,
    var: str,
    split: str,
    k: int,
    epoch: np.ndarray,
    order: np.ndarray,
    color,
) -> None:
    """Dotted lines at the mean lower and upper interval bounds of ``var`` of layer ``k``."""
    import numpy as np

    bounds = _mean_bounds(mi, var, split)
    if bounds is None:
        return
    for bound in bounds:
        values = bound[order, k]
        ok = np.isfinite(values)
        ax.plot(epoch[order][ok], values[ok], color=color, lw=0.7, ls=":", zorder=2)


def _interval_note(fig: Figure, mi: xr.Dataset, drawn_as: str) -> None:
    """A line under the figure saying what the interval marks are, when there are any."""
    if "I_XT_lo" not in mi:
        return
    level = float(mi.attrs.get("interval_level", float("nan")))
    method = mi.attrs.get("interval_method", "?")
    resamples = mi.attrs.get("interval_resamples", "?")
    # a figure-level x label: the constrained layout keeps room for it under the panels
    fig.supxlabel(
        f"{drawn_as}: {level:.0%} interval per point ({method}, {resamples} resamples of the "
        "probe, given the widths), mean over runs of the per-run bounds",
        fontsize=6.5,
        color="0.35",
    )


def widths_figure(mi: xr.Dataset, *, splits: Sequence[str] | None = None) -> Figure:
    """Kernel widths σ of every layer (and σ_X of the input) against epoch, log scale.

    Steps at which the width search hit an end of its grid in any run are marked with ×.
    """
    import numpy as np
    from matplotlib.lines import Line2D

    mi, splits, layers, colors, epoch, order = _per_layer_setup(mi, splits, ["sigma"])
    hits_any = False
    with _style():
        fig = _new_figure(3.9 * len(splits) + 1.6, 3.6)
        axes = fig.subplots(1, len(splits), squeeze=False, sharey=True)[0]
        for ax, split in zip(axes, splits, strict=True):
            sigma = split_values(mi, "sigma", split)
            for k, color in enumerate(colors):
                _band(ax, epoch[order], sigma[:, order, k], color)
                if "boundary_hit" in mi:
                    hit = split_values(mi, "boundary_hit", split)[:, order, k]
                    hit = np.nan_to_num(hit, nan=0.0).astype(bool).any(axis=0)
                    if hit.any():
                        hits_any = True
                        mean = across_runs(sigma[:, order, k])[0]
                        ax.scatter(
                            epoch[order][hit], mean[hit], marker="x", s=16, color=color, zorder=6
                        )
            if "sigma_x" in mi:
                sx = across_runs(split_values(mi, "sigma_x", split))[0][order]
                ax.plot(epoch[order], sx, color="0.2", lw=0.9, ls="--", zorder=5)
            _plain_log_axis(ax)
            ax.set_xlabel("epoch")
            ax.set_title(f"{split} probe")
        axes[0].set_ylabel("kernel width σ (exp(−d²/σ²))")
        handles = [
            Line2D([], [], color=c, lw=1.5, label=name)
            for c, name in zip(colors, layers, strict=True)
        ]
        if "sigma_x" in mi:
            handles.append(Line2D([], [], color="0.2", lw=0.9, ls="--", label="σ_X (input)"))
        if hits_any:
            handles.append(
                Line2D([], [], ls="none", marker="x", color="0.2", label="grid edge hit")
            )
        fig.legend(handles=handles, loc="outside right upper", title="layer")
        fig.suptitle(_title(mi, "Kernel widths"))
    return fig


def data_processing_figure(
    mi: xr.Dataset, *, shares: xr.Dataset | None = None, tol: float = 1e-6
) -> Figure:
    """Bars: the share of points where the deeper layer of each pair has the lower MI."""
    import numpy as np

    shares = data_processing_share(mi, tol=tol) if shares is None else shares
    splits = [str(s) for s in shares["split"].values]
    pairs = [str(p) for p in shares["pair"].values]
    x = np.arange(len(pairs))
    width = 0.38
    panel_width = max(4.2, 0.55 * len(pairs) + 1.5)
    # many pairs (deep networks): splits one above the other instead of side by side
    stacked = len(pairs) > 7
    with _style():
        if stacked:
            fig = _new_figure(panel_width, 3.3 * len(splits) + 0.6)
            axes = fig.subplots(len(splits), 1, squeeze=False, sharey=True)[:, 0]
        else:
            fig = _new_figure(panel_width * len(splits), 3.9)
            axes = fig.subplots(1, len(splits), squeeze=False, sharey=True)[0]
        for ax, split in zip(axes, splits, strict=True):
            for offset, var, label, color in (
                (-width / 2, "I_XT", "I(X;T) deeper ≤ shallower", "#3b6fb6"),
                (width / 2, "I_TY", "I(T;Y) deeper ≤ shallower", "#d1762b"),
            ):
                values = shares[var].sel(split=split).values
                ax.bar(x + offset, np.nan_to_num(values, nan=0.0), width, label=label, color=color)
            ax.axvline(len(pairs) - 1.5, color="0.5", lw=0.6, ls=":")
            ax.set_xticks(x, pairs, rotation=45, ha="right", rotation_mode="anchor")
            ax.set_ylim(0, 1.05)
            ax.set_title(f"{split} probe")
            ax.grid(axis="x", visible=False)
        for ax in axes if stacked else axes[:1]:
            ax.set_ylabel("share of (run, step) points")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=2)
        fig.suptitle(_title(mi if "run" in mi.dims else as_runs(mi), "Data-processing check"))
    return fig


def _preset_colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def comparison_figure(
    results: Mapping[str, xr.Dataset], split: str = "train", *, normalise: bool = True
) -> Figure:
    """Several presets' estimates of the same runs, per layer: one colour per preset.

    Top row: the information plane of every layer (mean path over runs; an open circle marks the
    first capture, a filled square the last). Bottom row: I(X;T) against epoch (mean and ±1 std
    band over runs). With ``normalise`` (default) every MI is divided by the estimate's own H(X)
    or H(Y) (see :func:`infoplane.report.analysis.normalised_mi`), so that estimators of
    different scales share the axes. Presets that give bounds (``kde``) draw their lower bound
    dashed.

    Parameters
    ----------
    results
        ``preset name -> result`` (Datasets of the same runs; stacked or one run each).
    split
        The probe to show.
    normalise
        Divide by H(X) and H(Y); False plots bits.
    """
    import numpy as np
    from matplotlib.lines import Line2D

    if not results:
        raise InputError("nothing to compare: give the results of at least one preset")
    results = {name: as_runs(mi) for name, mi in results.items()}
    for name, mi in results.items():
        require_variables(mi, ["I_XT", "I_TY", "H_X", "H_Y"])
        if split not in [str(s) for s in mi["split"].values]:
            raise InputError(f"split {split!r} is not in the estimates of {name!r}")
    first = next(iter(results.values()))
    layers = [str(v) for v in first["layer"].values]
    for mi in results.values():
        present = {str(v) for v in mi["layer"].values}
        layers = [layer for layer in layers if layer in present]
    if not layers:
        raise InputError("the results to compare have no layer in common")
    colors = _preset_colors(len(results))
    unit = "/ H(X)" if normalise else "[bits]"
    with _style():
        fig = _new_figure(2.7 * len(layers) + 1.8, 5.6)
        axes = fig.subplots(2, len(layers), squeeze=False)
        for mi, color in zip(results.values(), colors, strict=True):
            epoch = epochs(mi)
            order = np.argsort(epoch, kind="stable")
            pairs = [("I_XT", "I_TY", "-")]
            if "I_XT_lower" in mi and "I_TY_lower" in mi:
                pairs.append(("I_XT_lower", "I_TY_lower", "--"))
            for x_var, y_var, style in pairs:
                x = normalised_mi(mi, x_var, split, layers, normalise=normalise)[:, order]
                y = normalised_mi(mi, y_var, split, layers, normalise=normalise)[:, order]
                for k in range(len(layers)):
                    xm, ym = across_runs(x[..., k])[0], across_runs(y[..., k])[0]
                    ok = np.isfinite(xm) & np.isfinite(ym)
                    ax = axes[0, k]
                    ax.plot(xm[ok], ym[ok], color=color, lw=1.1, ls=style, zorder=3)
                    if ok.any() and style == "-":
                        ends = np.flatnonzero(ok)[[0, -1]]
                        ax.scatter(xm[ends[0]], ym[ends[0]], s=22, facecolors="none",
                                   edgecolors=[color], zorder=4)  # fmt: skip
                        ax.scatter(xm[ends[1]], ym[ends[1]], s=18, marker="s", color=color,
                                   zorder=4)  # fmt: skip
                    ax_t = axes[1, k]
                    if style == "-":
                        _band(ax_t, epoch[order], x[..., k], color)
                    else:
                        ax_t.plot(epoch[order], xm, color=color, lw=1.0, ls=style, zorder=3)
        for k, layer in enumerate(layers):
            axes[0, k].set_title(f"layer {k + 1}: {layer}")
            axes[0, k].set_xlabel(f"I(X;T) {unit}")
            axes[1, k].set_xlabel("epoch")
            axes[1, k].set_xscale("symlog", linthresh=0.1, linscale=0.5)
            if normalise:
                axes[0, k].set_xlim(-0.03, 1.03)
                axes[0, k].set_ylim(-0.03, 1.03)
                axes[1, k].set_ylim(-0.03, 1.03)
        axes[0, 0].set_ylabel("I(T;Y) / H(Y)" if normalise else BITS_TY)
        axes[1, 0].set_ylabel(f"I(X;T) {unit}")
        handles = [
            Line2D([], [], color=c, lw=1.5, label=name)
            for c, name in zip(colors, results, strict=True)
        ]
        if any("I_XT_lower" in mi for mi in results.values()):
            handles.append(Line2D([], [], color="0.3", lw=1.0, ls="--", label="lower bound"))
        handles.append(
            Line2D([], [], ls="none", marker="o", mfc="none", color="0.3", label="first capture")
        )
        handles.append(Line2D([], [], ls="none", marker="s", color="0.3", label="last capture"))
        fig.legend(handles=handles, loc="outside right upper", title="preset")
        experiment = first.attrs.get("experiment")
        runs = first.sizes.get("run", 1)
        head = f"Estimators compared, {split} probe"
        fig.suptitle(
            f"{head} — {experiment} ({runs} run{'s' if runs != 1 else ''})" if experiment else head
        )
    return fig


def _member_means(
    results: Mapping[str, xr.Dataset], split: str, layers: Sequence[str], var: str
) -> np.ndarray:
    """(member, step, layer) mean over runs of ``var`` on one split, in bits."""
    import numpy as np

    return np.stack(
        [
            across_runs(normalised_mi(mi, var, split, layers, normalise=False))[0]
            for mi in results.values()
        ]
    )


def family_figure(
    results: Mapping[str, xr.Dataset], split: str = "train", *, family: str | None = None
) -> Figure:
    """The members of a sensitivity family, per layer: where their trajectories agree.

    Top row: the information plane of every layer; each member's mean path over runs (one
    colour per member) and, grey, the members' points of every captured step joined by a thin
    line, so that long joins show where the knob moves the estimate. Bottom row:
    I(X;T) against epoch, each member's mean and the grey band from the smallest to the largest.
    A conclusion that holds across the band survives the knob the family varies. Bits (the
    members share an estimator).

    Parameters
    ----------
    results
        ``member name -> result`` of the same runs and steps (stacked or one run each).
    split
        The probe to show.
    family
        The family's name, for the title.
    """
    import numpy as np
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if not results:
        raise InputError("a family figure needs the results of at least one member")
    results = {name: as_runs(mi) for name, mi in results.items()}
    first = next(iter(results.values()))
    for name, mi in results.items():
        require_variables(mi, ["I_XT", "I_TY"])
        if split not in [str(s) for s in mi["split"].values]:
            raise InputError(f"split {split!r} is not in the estimates of {name!r}")
        if not np.array_equal(mi["step"].values, first["step"].values):
            raise InputError(
                f"family members {next(iter(results))!r} and {name!r} have different steps; "
                "estimate every member from the same runs"
            )
    layers = [str(v) for v in first["layer"].values]
    epoch = epochs(first)
    order = np.argsort(epoch, kind="stable")
    x = _member_means(results, split, layers, "I_XT")[:, order]
    y = _member_means(results, split, layers, "I_TY")[:, order]
    colors = _preset_colors(len(results))
    with _style():
        fig = _new_figure(2.7 * len(layers) + 1.8, 5.6)
        axes = fig.subplots(2, len(layers), squeeze=False)
        for k, layer in enumerate(layers):
            ax, ax_t = axes[0, k], axes[1, k]
            with np.errstate(all="ignore"):
                x_lo, x_hi = np.nanmin(x[..., k], axis=0), np.nanmax(x[..., k], axis=0)
                y_lo = np.nanmin(y[..., k], axis=0)
            ok = np.isfinite(x_lo) & np.isfinite(y_lo)
            # the members at one step, joined: long segments where the knob matters
            joins = [
                np.column_stack([x[:, t, k], y[:, t, k]])[np.isfinite(x[:, t, k] + y[:, t, k])]
                for t in np.flatnonzero(ok)
            ]
            ax.add_collection(LineCollection(joins, colors="0.6", lw=0.6, alpha=0.5, zorder=1))
            ax_t.fill_between(
                epoch[order][ok], x_lo[ok], x_hi[ok], color="0.6", alpha=0.3, lw=0, zorder=1
            )
            for m, color in enumerate(colors):
                good = np.isfinite(x[m, :, k]) & np.isfinite(y[m, :, k])
                ax.plot(x[m, good, k], y[m, good, k], color=color, lw=1.0, zorder=3)
                ax_t.plot(epoch[order][good], x[m, good, k], color=color, lw=1.0, zorder=3)
            ax.autoscale_view()
            _min_span(ax)
            ax.set_title(f"layer {k + 1}: {layer}")
            ax.set_xlabel(BITS_XT)
            ax_t.set_xlabel("epoch")
            ax_t.set_xscale("symlog", linthresh=0.1, linscale=0.5)
        axes[0, 0].set_ylabel(BITS_TY)
        axes[1, 0].set_ylabel(BITS_XT)
        handles = [
            Line2D([], [], color=c, lw=1.5, label=name)
            for c, name in zip(colors, results, strict=True)
        ]
        handles.append(Line2D([], [], color="0.6", lw=0.8, label="one step, every member"))
        handles.append(Patch(facecolor="0.6", alpha=0.3, label="range over members"))
        fig.legend(handles=handles, loc="outside right upper", title="member")
        experiment = first.attrs.get("experiment")
        runs = first.sizes.get("run", 1)
        what = f"family {family}" if family else "Family"
        head = f"{what[0].upper()}{what[1:]}, {split} probe"
        where = f" — {experiment}" if experiment else ""
        fig.suptitle(f"{head}{where} ({runs} run{'s' if runs != 1 else ''})")
    return fig


def training_figure(metrics: pd.DataFrame, *, title: str | None = None) -> Figure:
    """Loss and accuracy against epoch, train and test, mean and ±1 std band over runs."""
    import numpy as np

    if metrics.empty:
        raise InputError("no training metrics to plot")
    split_colors = {"train": "#3b6fb6", "test": "#d1762b"}
    runs = sorted(metrics["run"].unique())
    with _style():
        fig = _new_figure(8.4, 3.4)
        axes = fig.subplots(1, 2, squeeze=False)[0]
        for ax, metric, label in (
            (axes[0], "loss", "cross-entropy loss"),
            (axes[1], "accuracy", "accuracy"),
        ):
            part = metrics[metrics["metric"] == metric]
            for split, color in split_colors.items():
                rows = part[part["split"] == split]
                if rows.empty:
                    continue
                table = rows.pivot_table(index="epoch", columns="run", values="value")
                table = table.reindex(columns=runs)
                _band(
                    ax,
                    table.index.to_numpy(dtype=float),
                    table.to_numpy(dtype=float).T,
                    color,
                    label=split,
                )
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            if metric == "accuracy":
                ax.set_ylim(0, 1.02)
            if metric == "loss" and not part.empty and np.nanmin(part["value"]) > 0:
                _plain_log_axis(ax)
            ax.legend(loc="best")
        n = len(runs)
        head = f"Training — {title}" if title else "Training"
        fig.suptitle(f"{head} ({n} run{'s' if n != 1 else ''})")
    return fig


# ---------------------------------------------------------------------------------------------
# Batch entry points (used by `infoplane plot`)


def _check_plottable(mi: xr.Dataset) -> None:
    """The dims and variables the figures read; InputError naming what is missing."""
    missing_dims = [d for d in ("split", "step", "layer") if d not in mi.dims]
    missing_vars = [v for v in ("I_XT", "I_TY", "H_X", "H_Y", "sigma") if v not in mi.data_vars]
    if missing_dims or missing_vars:
        what = [f"dimension(s) {', '.join(missing_dims)}"] if missing_dims else []
        what += [f"variable(s) {', '.join(missing_vars)}"] if missing_vars else []
        raise InputError(
            f"these estimates lack the {' and '.join(what)} that the figures read; plot a "
            "result as `infoplane estimate` or `infoplane stack` write it (a selection of one "
            "split keeps the dimension with ds.sel(split=['train']))"
        )


def plot_estimates(
    mi: xr.Dataset | str | os.PathLike, out_dir: str | os.PathLike, *, tol: float = 1e-6
) -> list[Path]:
    """Write every figure of :data:`ESTIMATE_FIGURES` and the data-processing table to ``out_dir``.

    The per-split information planes are written for ``train`` and ``test``; a split missing from
    the estimates raises :class:`InputError`.
    """
    if not hasattr(mi, "data_vars"):
        mi = open_result(mi)
    _check_plottable(mi)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shares = data_processing_share(mi, tol=tol)
    figures: Mapping[str, Any] = {
        "information_plane.png": lambda: information_plane_overview(mi),
        "information_plane_train.png": lambda: information_plane_layers(mi, "train"),
        "information_plane_test.png": lambda: information_plane_layers(mi, "test"),
        "mi_epoch.png": lambda: mi_epoch_figure(mi),
        "widths.png": lambda: widths_figure(mi),
        "data_processing.png": lambda: data_processing_figure(mi, shares=shares),
    }
    written = []
    for name, make in figures.items():
        written.append(save_figure(make(), out_dir / name))
    table_path = out_dir / DATA_PROCESSING_TABLE
    with replacing(table_path) as tmp:
        data_processing_table(shares).to_csv(tmp, index=False, float_format="%.6g")
    written.append(table_path)
    return written


def plot_comparison(
    sources: Sequence[xr.Dataset | str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    splits: Sequence[str] = ("train", "test"),
    normalise: bool = True,
) -> list[Path]:
    """Write :func:`comparison_figure` of the given results, one file per split.

    Each result is named by its ``estimator`` attribute (the preset name); the files are those of
    :data:`COMPARISON_FIGURES`.
    """
    results = results_by_name(sources)
    return _per_split(
        lambda split: comparison_figure(results, split, normalise=normalise),
        out_dir, splits, COMPARISON_FIGURES, "comparison",
    )  # fmt: skip


def plot_family(
    sources: Sequence[xr.Dataset | str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    family: str | None = None,
    splits: Sequence[str] = ("train", "test"),
) -> list[Path]:
    """Write :func:`family_figure` of a family's members, one file per split.

    Each result is named by its ``estimator`` attribute (the member's name); the files are those
    of :data:`FAMILY_FIGURES`.
    """
    results = results_by_name(sources)
    return _per_split(
        lambda split: family_figure(results, split, family=family),
        out_dir, splits, FAMILY_FIGURES, "family",
    )  # fmt: skip


def _per_split(
    draw: Callable[[str], Figure],
    out_dir: str | os.PathLike,
    splits: Sequence[str],
    names: Mapping[str, str],
    prefix: str,
) -> list[Path]:
    """Save ``draw(split)`` of every split to ``out_dir`` under ``names[split]``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        save_figure(draw(split), out_dir / names.get(split, f"{prefix}_{split}.png"))
        for split in splits
    ]


def plot_training(
    metrics_paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    title: str | None = None,
) -> Path:
    """Write the loss and accuracy curves of the runs whose ``metrics.csv`` are given."""
    return save_figure(training_figure(load_metrics(metrics_paths), title=title), out)
