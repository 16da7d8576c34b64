"""Intervals of one point's matrix estimates from resampling its probe samples: pure numpy.

The plain estimate of a (split, step) point uses the N probe samples once. Resampling the rows
and columns of its Gram matrices (the same widths: the interval is for the probe sample, given
the widths the point chose) gives an interval for every quantity: ``H_X``, ``H_Y`` and, per
layer, ``H_T``, ``H_XT``, ``H_TY``, ``I_XT``, ``I_TY``.

The matrix estimate depends on N itself (H <= log2 N; the spectrum of K/N changes with N), so
what an interval must contain is the mean of the same estimate over fresh probes of the same N.
Two methods:

``subsample`` (the default; the delete-d jackknife)
    B subsets of m = ``fraction``·N distinct samples (0.9 N by default), drawn without
    replacement. Their spread, rescaled by m / (N − m), estimates the variance of the size-N
    estimate (for the mean of N numbers it is exact); the interval is ``estimate ± z·sd``, z the
    normal quantile of the level. Only the spread of the subsets is used, so that their own
    estimates are biased (they are of size m, not N) does not matter. Subsets close to N matter
    near saturation: half-size subsets (m = N/2) sit closer to their own ceiling log2 m, spread
    less, and their 90 % intervals of the joint entropies held the truth in only 78-80 % of
    draws, against 87-93 % with m = 0.9 N.
``bootstrap``
    B resamples of N samples with replacement and the basic (reverse-percentile) interval
    ``[2·estimate − q_hi, 2·estimate − q_lo]``. A duplicated sample is a duplicated row of the
    Gram (the same as weights count/N), which lowers every entropy; the basic interval reflects
    that shift, but its spread is still that of the shifted estimates.

``benchmarks/coverage_intervals.py`` measures how often each method's interval contains the
mean over fresh probes, per quantity, on a synthetic pool and on MNIST; its tables are quoted in
``docs/uncertainty.md``. They are why ``subsample`` with m = 0.9 N is the method: the bootstrap's
basic intervals held the truth in 0-75 % of draws. Where it fails: H(Y) of balanced classes
(and I(T;Y) of a layer that carries little of Y), whose fluctuation is of second order, gets an
interval that is too wide (96-98 % coverage).

Every point draws from its own generator, seeded by the preset's seed mixed with the split and
the step (:func:`point_rng`), so its intervals do not depend on the order the points run in.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special

from infoplane.core.entropy import information_plane
from infoplane.core.kernels import gaussian_gram, label_gram, multivariate_gram
from infoplane.core.plane import rule_width
from infoplane.errors import InputError

__all__ = [
    "INTERVAL_LAYER_KEYS",
    "INTERVAL_STEP_KEYS",
    "METHODS",
    "interval_bounds",
    "interval_keys",
    "plane_intervals",
    "point_rng",
    "resample_indices",
    "resampled_plane",
    "step_intervals",
]

#: The methods of :func:`plane_intervals`.
METHODS = ("subsample", "bootstrap")
#: Per-layer quantities that get an interval (arrays (L,)).
INTERVAL_LAYER_KEYS = ("I_XT", "I_TY", "H_T", "H_XT", "H_TY")
#: Per-point quantities that get an interval (floats).
INTERVAL_STEP_KEYS = ("H_X", "H_Y")
#: Share of the N samples in one subset of the ``subsample`` method.
DEFAULT_FRACTION = 0.9


def interval_keys() -> tuple[str, ...]:
    """``<name>_lo`` and ``<name>_hi`` of every quantity, layer quantities first."""
    return tuple(
        f"{name}_{end}" for name in INTERVAL_LAYER_KEYS + INTERVAL_STEP_KEYS for end in ("lo", "hi")
    )


def point_rng(seed: int, split: str, step: int) -> np.random.Generator:
    """The generator of one (split, step) point: the same for the same seed, split and step."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(step)])


def subset_size(n: int, fraction: float = DEFAULT_FRACTION) -> int:
    """Samples in one subset of ``n``: ``fraction``·n rounded, kept within [2, n − 1]."""
    return int(min(n - 1, max(2, round(fraction * n))))


def resample_indices(
    n: int,
    resamples: int,
    rng: np.random.Generator,
    *,
    method: str = "subsample",
    fraction: float = DEFAULT_FRACTION,
) -> np.ndarray:
    """Sample indices of every resample: (B, m) distinct ones (subsample) or (B, n) with repeats."""
    if method not in METHODS:
        raise InputError(f"unknown resampling method {method!r}; use one of {', '.join(METHODS)}")
    if n < 3:
        raise InputError(f"resampling needs at least 3 samples, got {n}")
    if method == "bootstrap":
        return rng.integers(0, n, size=(resamples, n))
    m = subset_size(n, fraction)
    return np.stack([rng.choice(n, size=m, replace=False) for _ in range(resamples)])


def resampled_plane(
    gram_x: np.ndarray,
    gram_layers: np.ndarray,
    gram_y: np.ndarray,
    alpha: float,
    indices: np.ndarray,
) -> dict[str, np.ndarray]:
    """Every quantity of :func:`infoplane.core.entropy.information_plane` on every resample.

    Returns
    -------
    dict
        ``H_X``, ``H_Y`` (B,) and the layer quantities (B, L); NaN for a resample whose matrices
        are unusable.
    """
    count = gram_layers.shape[0]
    out = {key: np.full(len(indices), np.nan) for key in INTERVAL_STEP_KEYS}
    out.update({key: np.full((len(indices), count), np.nan) for key in INTERVAL_LAYER_KEYS})
    for b, rows in enumerate(indices):
        at = np.ix_(rows, rows)
        try:
            plane = information_plane(
                gram_x[at], gram_layers[:, rows[:, None], rows], gram_y[at], alpha
            )
        except InputError:
            continue
        for key in out:
            out[key][b] = plane[key]
    return out


def interval_bounds(
    estimate: Any,
    resampled: np.ndarray,
    *,
    level: float,
    method: str,
    n: int,
    fraction: float = DEFAULT_FRACTION,
) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the ``level`` interval of ``estimate`` from its resamples.

    Parameters
    ----------
    estimate
        The plain estimate, shape (...).
    resampled
        Its resampled values, shape (B, ...); NaN resamples are left out.
    level
        Coverage in (0, 1), e.g. 0.9.
    method, n, fraction
        How the resamples were drawn (see :func:`resample_indices`).

    Returns
    -------
    (lo, hi)
        Arrays of the shape of ``estimate``; NaN where fewer than two resamples are finite.
    """
    estimate = np.asarray(estimate, dtype=np.float64)
    resampled = np.asarray(resampled, dtype=np.float64)
    finite = np.isfinite(resampled).sum(axis=0)
    usable = finite >= 2
    safe = np.where(np.isfinite(resampled), resampled, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        if method == "bootstrap":
            tail = (1.0 - level) / 2.0
            q_lo, q_hi = (
                np.nanquantile(safe, [tail, 1.0 - tail], axis=0)
                if usable.any()
                else (np.full(estimate.shape, np.nan),) * 2
            )
            lo, hi = 2.0 * estimate - q_hi, 2.0 * estimate - q_lo
        else:
            m = subset_size(n, fraction)
            spread = np.nanvar(safe, axis=0, ddof=1) if usable.any() else np.nan
            sd = np.sqrt(m / (n - m) * spread)
            z = special.ndtri(0.5 + level / 2.0)
            lo, hi = estimate - z * sd, estimate + z * sd
    lo = np.where(usable & np.isfinite(estimate), lo, np.nan)
    hi = np.where(usable & np.isfinite(estimate), hi, np.nan)
    return lo, hi


def plane_intervals(
    gram_x: np.ndarray,
    gram_layers: np.ndarray,
    gram_y: np.ndarray,
    alpha: float,
    estimate: Mapping[str, Any],
    *,
    resamples: int,
    level: float,
    rng: np.random.Generator,
    method: str = "subsample",
    fraction: float = DEFAULT_FRACTION,
) -> dict[str, np.ndarray]:
    """``<name>_lo``/``<name>_hi`` of every quantity of one point from its Gram matrices.

    Parameters
    ----------
    gram_x, gram_layers, gram_y
        The point's Grams (N, N), (L, N, N), (N, N), built with the widths of its estimate.
    estimate
        The plain estimate: ``H_X``, ``H_Y`` and the (L,) layer quantities (the centres of the
        intervals of the methods that need them).
    resamples, level, rng, method, fraction
        See :func:`resample_indices` and :func:`interval_bounds`.
    """
    n = gram_x.shape[-1]
    indices = resample_indices(n, resamples, rng, method=method, fraction=fraction)
    values = resampled_plane(gram_x, gram_layers, gram_y, alpha, indices)
    out: dict[str, np.ndarray] = {}
    for key, resampled in values.items():
        lo, hi = interval_bounds(
            estimate[key], resampled, level=level, method=method, n=n, fraction=fraction
        )
        out[f"{key}_lo"], out[f"{key}_hi"] = lo, hi
    return out


def _layer_gram(
    point: Mapping[str, np.ndarray],
    preset: Mapping[str, Any],
    i: int,
    sigma: float,
    dim: int,
    channel_d2: Any,
) -> np.ndarray:
    """Gram of layer ``i`` with the width its plain estimate used."""
    if preset["kernel"] != "multivariate":
        return gaussian_gram(point["d2"][i], sigma)
    d2c = channel_d2(i)
    widths = rule_width(preset["channel_width"], d2c, dim // d2c.shape[0])
    return multivariate_gram(d2c, widths)


def step_intervals(
    point: Mapping[str, np.ndarray],
    preset: Mapping[str, Any],
    plain: Mapping[str, Any],
    *,
    split: str,
    step: int,
    dims: Sequence[int],
    channel_d2: Any = None,
) -> dict[str, Any]:
    """The intervals of one point's plain estimate ``plain`` (of :func:`estimate_step`).

    The Grams are rebuilt with the widths ``plain`` used (``sigma_x``, ``sigma``; for the
    multivariate kernel the per-channel rule again, which is deterministic); a layer whose plain
    estimate is NaN has NaN bounds. ``preset["uncertainty"]`` gives ``resamples``, ``level``,
    ``seed`` and ``method``; the generator is :func:`point_rng` of ``(seed, split, step)``.

    Returns
    -------
    dict
        :func:`interval_keys`: (L,) arrays for the layer quantities, floats for ``H_X``/``H_Y``.
    """
    spec = preset["uncertainty"]
    count = len(dims)
    out: dict[str, Any] = {}
    for key in INTERVAL_LAYER_KEYS:
        out[f"{key}_lo"], out[f"{key}_hi"] = np.full(count, np.nan), np.full(count, np.nan)
    for key in INTERVAL_STEP_KEYS:
        out[f"{key}_lo"] = out[f"{key}_hi"] = np.nan
    if bool(point["nonfinite_x"]) or not np.isfinite(plain["sigma_x"]):
        return out
    gram_x = gaussian_gram(point["d2_x"], plain["sigma_x"])
    gram_y = label_gram(point["y"])
    good = [i for i in range(count) if np.isfinite(plain["H_T"][i])]
    grams = [_layer_gram(point, preset, i, plain["sigma"][i], dims[i], channel_d2) for i in good]
    # H_X and H_Y come with the layers; with no estimable layer, a constant stand-in carries them
    stack = np.stack(grams) if grams else np.ones((1, *gram_x.shape))
    estimate = {key: plain[key] for key in INTERVAL_STEP_KEYS}
    estimate.update({key: np.asarray(plain[key])[good] for key in INTERVAL_LAYER_KEYS})
    if not grams:
        estimate.update({key: np.full(1, np.nan) for key in INTERVAL_LAYER_KEYS})
    found = plane_intervals(
        gram_x, stack, gram_y, preset["alpha"], estimate,
        resamples=spec["resamples"], level=spec["level"],
        rng=point_rng(spec["seed"], split, step), method=spec["method"],
    )  # fmt: skip
    for key in INTERVAL_STEP_KEYS:
        out[f"{key}_lo"], out[f"{key}_hi"] = float(found[f"{key}_lo"]), float(found[f"{key}_hi"])
    for key in INTERVAL_LAYER_KEYS:
        for end in ("lo", "hi"):
            out[f"{key}_{end}"][good] = found[f"{key}_{end}"][: len(good)]
    return out
