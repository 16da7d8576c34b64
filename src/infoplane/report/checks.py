"""Invariants every estimate must satisfy, checked point by point.

For every (split, step, layer) — and run, for stacked results — with N the probe size of the split:

- ``0 <= S <= log2 N`` for H_X, H_Y, H_T, H_XT, H_TY;
- ``max(S(A), S(B)) <= S(A, B) <= S(A) + S(B)`` for (X, T) and (T, Y);
- ``0 <= I(X;T) <= min(S(X), S(T))`` and ``0 <= I(T;Y) <= min(S(T), S(Y))``;
- ``I = S(A) + S(B) - S(A, B)`` (the stored MI agrees with the stored entropies).

Subadditivity (``S(A, B) <= S(A) + S(B)``, hence ``I >= 0``) is a theorem for α <= 1 only: for
α > 1 the matrix-based joint entropy can exceed the sum of its marginals (small counterexamples
exist), so those two bounds are checked only when the result's preset has α <= 1.

Each estimator adds the invariants of its own (the preset recorded in the result says which):

- ``binning``: ``I(X;T) = H(T)`` (a deterministic network: ``H(X, T) = H(X)``), and a layer
  flagged ``saturated`` (every sample its own bin pattern) has ``H(T) = log2 N``;
- ``kde``: ``I_XT_upper >= I_XT_lower`` (the Kullback-Leibler bound is never below the
  Bhattacharyya one) and ``I_XT = I_XT_upper``. Its ``I(T;Y)`` is a difference of two bounds,
  an estimate that may be slightly negative; ``I_TY >= 0`` and ``H_TY <= H_T + H_Y`` are not
  checked for it.

Comparisons allow an absolute tolerance in bits; where a result holds randomized spectra
(``spectral_error``, :mod:`infoplane.core.spectra`), a point's error bar is added to the tolerance
of its bounds (not to ``I = H + H - joint H``, which holds exactly by construction), and
:func:`imprecise_estimates` lists the points whose error bar exceeds the preset's
``spectrum.tolerance``. NaN points are not violations; they are listed separately.

A result with per-point intervals (``<name>_lo``/``<name>_hi``, :mod:`infoplane.core.resample`)
must have ``lo <= value <= hi`` for every quantity that has them, and bounds wherever the value
is finite.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infoplane.errors import StoreError
from infoplane.presets import spectrum_of

DEFAULT_TOLERANCE = 1e-6
_ENTROPIES = ("H_X", "H_Y", "H_T", "H_XT", "H_TY")
_REQUIRED = ("I_XT", "I_TY", *_ENTROPIES)


@dataclass(frozen=True)
class Violation:
    """One point breaking one invariant."""

    invariant: str
    where: dict[str, Any]  # split, step, layer (and run) of the point
    value: float
    bound: float

    def __str__(self) -> str:
        place = ", ".join(f"{key} {value}" for key, value in self.where.items())
        return f"{place}: {self.invariant} violated ({self.value:.6g} vs bound {self.bound:.6g})"


def _n_samples(result: Any) -> Any:
    """N per split as a DataArray on ``split`` (NaN where unknown)."""
    import xarray as xr

    if "n_samples" in result:
        return result["n_samples"].astype(float)
    recorded = result.attrs.get("n_samples")
    if isinstance(recorded, str):
        recorded = json.loads(recorded)
    if isinstance(recorded, dict):
        values = [float(recorded.get(str(s), np.nan)) for s in result["split"].values]
        return xr.DataArray(values, dims="split", coords={"split": result["split"]})
    raise StoreError(
        "the result records no probe size (variable n_samples(split) or attribute n_samples); "
        "the bound S <= log2 N cannot be checked - re-estimate it with `infoplane estimate`"
    )


def _points(mask: Any, value: Any, bound: Any, invariant: str) -> Iterator[Violation]:
    import xarray as xr

    value, bound = xr.broadcast(value, bound)
    mask, value, bound = xr.broadcast(mask, value, bound)
    dims = mask.dims
    for position in np.argwhere(mask.values):
        where = {dim: _plain(mask[dim].values[i]) for dim, i in zip(dims, position, strict=True)}
        index = tuple(position)
        yield Violation(invariant, where, float(value.values[index]), float(bound.values[index]))


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else str(value)


def check_result(result: Any, *, tolerance: float = DEFAULT_TOLERANCE) -> list[Violation]:
    """Every point of a result that breaks an invariant (see the module docstring).

    Parameters
    ----------
    result
        A result Dataset (or path), per run or stacked on ``run``.
    tolerance
        Absolute slack in bits.
    """
    import xarray as xr

    ds = _as_dataset(result)
    tol = float(tolerance)
    preset = _preset(ds)
    estimator = preset.get("estimator", "matrix")
    subadditive = float(preset.get("alpha", 1.0)) <= 1.0
    # kde: I(T;Y) is a difference of two bounds, not a Shannon MI
    subadditive_ty = subadditive and estimator != "kde"
    log2n = np.log2(_n_samples(ds))
    hx, hy, ht, hxt, hty = (ds[name] for name in _ENTROPIES)
    # randomized spectra: a bound holds up to the point's error bar (3 bars for an MI, which
    # combines three entropies)
    bar = ds["spectral_error"].fillna(0.0) if "spectral_error" in ds else xr.zeros_like(ht)
    point_tol, step_tol = tol + bar, tol + bar.max("layer")
    joint_tol, sum_tol = tol + 2 * bar, tol + 3 * bar
    checks = []
    for name in _ENTROPIES:
        slack = point_tol if "layer" in ds[name].dims else step_tol
        checks.append((ds[name] < -slack, ds[name], 0.0, f"{name} >= 0"))
        checks.append((ds[name] > log2n + slack, ds[name], log2n, f"{name} <= log2 N"))
    for joint, a, b, label in ((hxt, hx, ht, "XT"), (hty, ht, hy, "TY")):
        low = np.maximum(a, b)
        checks.append((joint < low - joint_tol, joint, low, f"H_{label} >= max of its marginals"))
        if subadditive if label == "XT" else subadditive_ty:
            checks.append((joint > a + b + sum_tol, joint, a + b, f"H_{label} <= sum of marginals"))
    for mi, a, b, joint, label in (
        (ds["I_XT"], hx, ht, hxt, "I_XT"),
        (ds["I_TY"], ht, hy, hty, "I_TY"),
    ):
        top = np.minimum(a, b)
        if subadditive if label == "I_XT" else subadditive_ty:
            checks.append((mi < -sum_tol, mi, 0.0, f"{label} >= 0"))
        checks.append((mi > top + sum_tol, mi, top, f"{label} <= min of the entropies"))
        identity = a + b - joint
        checks.append((abs(mi - identity) > tol, mi, identity, f"{label} = H + H - joint H"))
    checks += _estimator_checks(ds, estimator, log2n, tol)
    checks += _interval_checks(ds, tol)
    violations = []
    for mask, value, bound, invariant in checks:
        bound = bound if isinstance(bound, xr.DataArray) else xr.zeros_like(value) + bound
        violations.extend(_points(mask.fillna(False).astype(bool), value, bound, invariant))
    return violations


def _estimator_checks(ds: Any, estimator: str, log2n: Any, tol: float) -> list:
    """The invariants of one estimator (see the module docstring)."""
    checks = []
    if estimator == "binning":
        mi, ht = ds["I_XT"], ds["H_T"]
        checks.append((abs(mi - ht) > tol, mi, ht, "binning: I_XT = H_T"))
        if "saturated" in ds:
            flagged = ds["saturated"].fillna(False).astype(bool)
            off = flagged & (abs(ht - log2n) > tol)
            checks.append((off, ht, log2n + 0 * ht, "binning: saturated means H_T = log2 N"))
    if estimator == "kde" and "I_XT_upper" in ds and "I_XT_lower" in ds:
        upper, lower = ds["I_XT_upper"], ds["I_XT_lower"]
        checks.append((upper < lower - tol, upper, lower, "kde: I_XT_upper >= I_XT_lower"))
        checks.append((abs(ds["I_XT"] - upper) > tol, ds["I_XT"], upper, "kde: I_XT = upper"))
    return checks


def _interval_checks(ds: Any, tol: float) -> list:
    """For every quantity with interval bounds in ``ds``: ``lo <= value <= hi``, and both bounds
    present wherever the value is (NaN bounds on a finite value: too few usable resamples)."""
    checks = []
    for name in _REQUIRED:
        if f"{name}_lo" not in ds or f"{name}_hi" not in ds:
            continue
        value, lo, hi = ds[name], ds[f"{name}_lo"], ds[f"{name}_hi"]
        checks.append((lo > value + tol, value, lo, f"{name} >= {name}_lo"))
        checks.append((hi < value - tol, value, hi, f"{name} <= {name}_hi"))
        missing = value.notnull() & (lo.isnull() | hi.isnull())
        checks.append((missing, value, lo, f"{name} has interval bounds"))
    return checks


#: Degenerate estimates are flagged within this many bits of log2 N (saturated) or of 0
#: (collapsed).
DEGENERATE_BITS = 1e-2
#: What a degenerate estimate of each entropy means and how to fix it: (saturated, collapsed).
_REMEDIES = {
    "H_X": (
        "the input kernel is too narrow for the inputs, every sample its own cluster (inputs "
        "spanning 0-255 with sigma_X = 8, say): scale the inputs to [0, 1] (dataset normalize: "
        "unit) or use input_width: {rule: median}",
        "the input kernel is so wide that all inputs look alike: use a smaller input_width "
        "sigma or input_width: {rule: median}",
    ),
    "H_T": (
        "the layer kernel is too narrow for the activations, every sample its own cluster: use "
        "a wider layer_width (a larger sigma, or rule: alignment / median)",
        "the layer kernel is so wide, or the layer so constant, that all samples look alike: "
        "use a narrower layer_width, or check the layer is not dead",
    ),
}
_REMEDIES["H_XT"] = (
    "the joint Gram K_X∘K_T is nearly diagonal, so I(X;T) = H(X) + H(T) - log2 N says little: "
    "widen the input or the layer kernel (a larger input_width or layer_width sigma)",
    "the joint Gram is nearly constant: narrow the input and layer kernels",
)


@dataclass(frozen=True)
class Degenerate:
    """A run of points whose entropy sits at log2 N (saturated) or at 0 (collapsed)."""

    quantity: str  # H_X, H_T or H_XT
    kind: str  # "saturated" | "collapsed"
    where: dict[str, Any]  # split (and run, layer) of the points
    steps: list[Any]
    remedy: str

    def __str__(self) -> str:
        place = ", ".join(f"{key} {value}" for key, value in self.where.items())
        shown = ", ".join(map(str, self.steps[:5])) + (" ..." if len(self.steps) > 5 else "")
        bound = "log2 N" if self.kind == "saturated" else "0 bits"
        return (
            f"{place}: {self.quantity} is {self.kind} (within {DEGENERATE_BITS:g} bits of "
            f"{bound}) at {len(self.steps)} step(s) ({shown}); {self.remedy}"
        )


def degenerate_estimates(result: Any, *, bits: float = DEGENERATE_BITS) -> list[Degenerate]:
    """Where H(X), H(T) or H(X,T) is saturated (>= log2 N - bits) or collapsed (<= bits).

    Such estimates break no invariant, but say nothing of the network: the kernel is too narrow
    (every sample its own cluster) or too wide. One entry per quantity, kind, split, run and
    layer, listing its steps and the remedy.
    """
    ds = _as_dataset(result)
    log2n = np.log2(_n_samples(ds))
    found = []
    # randomized spectra: within the point's error bar of the bound counts as at it
    bar = ds["spectral_error"].fillna(0.0) if "spectral_error" in ds else 0.0
    for name in ("H_X", "H_T", "H_XT"):
        values = ds[name]
        slack = bits + (bar if "layer" in values.dims or np.isscalar(bar) else bar.max("layer"))
        for kind, mask in (
            ("saturated", values >= log2n - slack),
            ("collapsed", values <= slack),
        ):
            mask = mask.fillna(False).astype(bool)
            groups = [d for d in ("run", "split", "layer") if d in mask.dims]
            mask = mask.transpose(*groups, "step")
            remedy = _REMEDIES[name][0 if kind == "saturated" else 1]
            for position in np.argwhere(mask.values.any(axis=-1)):
                index = tuple(position)
                where = {d: _plain(mask[d].values[i]) for d, i in zip(groups, index, strict=True)}
                steps = [_plain(s) for s in mask["step"].values[mask.values[index]]]
                found.append(Degenerate(name, kind, where, steps, remedy))
    return found


@dataclass(frozen=True)
class Imprecise:
    """A run of points whose randomized spectra have an error bar above the preset's tolerance."""

    where: dict[str, Any]  # split (and run, layer) of the points
    steps: list[Any]
    largest: float  # the largest error bar among them, bits
    tolerance: float

    def __str__(self) -> str:
        place = ", ".join(f"{key} {value}" for key, value in self.where.items())
        shown = ", ".join(map(str, self.steps[:5])) + (" ..." if len(self.steps) > 5 else "")
        return (
            f"{place}: randomized spectra with error bars up to {self.largest:.3g} bits, above "
            f"the preset's spectrum.tolerance {self.tolerance:g}, at {len(self.steps)} step(s) "
            f"({shown}); raise spectrum probes (the error falls as 1/sqrt(probes)) or rank, or "
            "use spectrum: {method: exact}"
        )


def imprecise_estimates(result: Any) -> list[Imprecise]:
    """Points whose ``spectral_error`` exceeds the preset's ``spectrum.tolerance``.

    One entry per split, run and layer, listing its steps; none for results made with exact
    spectra only (no ``spectral_error`` variable).
    """
    ds = _as_dataset(result)
    if "spectral_error" not in ds:
        return []
    limit = float(spectrum_of(_preset(ds))["tolerance"])
    bars = ds["spectral_error"]
    mask = (bars > limit).fillna(False).astype(bool)
    groups = [d for d in ("run", "split", "layer") if d in mask.dims]
    mask, bars = mask.transpose(*groups, "step"), bars.transpose(*groups, "step")
    found = []
    for position in np.argwhere(mask.values.any(axis=-1)):
        index = tuple(position)
        where = {d: _plain(mask[d].values[i]) for d, i in zip(groups, index, strict=True)}
        hit = mask.values[index]
        steps = [_plain(s) for s in mask["step"].values[hit]]
        found.append(Imprecise(where, steps, float(bars.values[index][hit].max()), limit))
    return found


def _preset(result: Any) -> dict[str, Any]:
    """The result's preset mapping (empty when the result does not record one)."""
    preset = result.attrs.get("preset") or {}
    if isinstance(preset, str):
        preset = json.loads(preset)
    return dict(preset)


def nan_points(result: Any) -> list[dict[str, Any]]:
    """The points (split, step, layer; run when stacked) where any estimate is NaN."""
    ds = _as_dataset(result)
    missing = None
    for name in _REQUIRED:
        isnan = ds[name].isnull()
        missing = isnan if missing is None else (missing | isnan)
    missing = missing.transpose(
        *[d for d in ("run", "split", "step", "layer") if d in missing.dims]
    )
    return [
        {dim: _plain(missing[dim].values[i]) for dim, i in zip(missing.dims, p, strict=True)}
        for p in np.argwhere(missing.values)
    ]


def _as_dataset(result: Any) -> Any:
    if isinstance(result, (str, Path)):
        from infoplane.io.results import open_result

        result = open_result(result)
    lacking = [name for name in _REQUIRED if name not in result]
    if lacking:
        raise StoreError(f"not an infoplane result: variables {lacking} are missing")
    return result
