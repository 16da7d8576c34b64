"""Discrete mutual information of binned activations (Shwartz-Ziv & Tishby, 2017): pure numpy.

Every unit of a layer is cut into ``bins`` equal-width intervals on a range, either a fixed one
(``[-1, 1]`` for tanh, as Shwartz-Ziv & Tishby) or the layer's own observed ``[min, max]`` at that
point (the adaptive bins of Saxe et al. for ReLU). Values outside a fixed range fall into the edge
bins. A sample's binned pattern (one bin index per unit) is its discrete state ``T``; the
entropies are the plug-in estimates over the N probe samples, in bits:

- ``H(T)``, ``H(T, Y)``, and ``H(X)`` of the distinct input rows;
- ``I(X;T) = H(X) + H(T) - H(X, T) = H(T)``, because a deterministic network makes ``T`` a
  function of ``X`` (``H(X, T) = H(X)``);
- ``I(T;Y) = H(T) + H(Y) - H(T, Y) = H(T) - H(T|Y)``.

The usual caveat: when every sample falls into a bin pattern of its own, ``H(T) = log2 N`` and
``I(X;T)`` is saturated (it says nothing about the network). :func:`binning_step` reports the
number of occupied patterns and a ``saturated`` flag per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from infoplane.errors import InputError

__all__ = [
    "LAYER_KEYS",
    "STEP_KEYS",
    "bin_activations",
    "binning_step",
    "plugin_entropy",
    "row_labels",
]

#: Per-layer outputs of :func:`binning_step` (arrays (L,)). ``sigma`` is the bin width used.
LAYER_KEYS = ("I_XT", "I_TY", "H_T", "H_XT", "H_TY", "sigma", "occupied", "saturated")
#: Per-point outputs of :func:`binning_step` (floats).
STEP_KEYS = ("H_X", "H_Y")


def row_labels(values: np.ndarray) -> np.ndarray:
    """An integer label per row of ``values`` (N, ...): equal rows get equal labels.

    Parameters
    ----------
    values
        Array whose first axis indexes the samples; the other axes are flattened.

    Returns
    -------
    numpy.ndarray
        (N,) int64 labels in ``0 .. n_distinct - 1``.
    """
    rows = np.ascontiguousarray(np.asarray(values).reshape(len(values), -1))
    if rows.shape[1] == 0:
        return np.zeros(len(rows), dtype=np.int64)
    _, labels = np.unique(rows, axis=0, return_inverse=True)
    return labels.reshape(-1).astype(np.int64)


def plugin_entropy(*labels: np.ndarray) -> float:
    """Plug-in (maximum-likelihood) Shannon entropy, in bits, of the joint of ``labels``.

    Parameters
    ----------
    *labels
        One or more (N,) arrays of discrete labels; several give their joint entropy.

    Returns
    -------
    float
        ``-sum_k p_k log2 p_k`` over the distinct label tuples, ``p_k`` their frequencies.
    """
    joint = np.stack([np.asarray(a).reshape(-1) for a in labels], axis=1)
    _, counts = np.unique(joint, axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(max(0.0, -np.sum(p * np.log2(p))))


def bin_activations(
    values: np.ndarray, bins: int, value_range: Sequence[float] | str
) -> tuple[np.ndarray, float]:
    """Bin index of every unit of every sample.

    Parameters
    ----------
    values
        (N, ...) activations of one layer at one point (finite).
    bins
        Number of equal-width bins (>= 1).
    value_range
        ``(low, high)`` with ``low < high`` (values outside fall into the edge bins), or
        ``"layer"``: the observed ``[min, max]`` of ``values``.

    Returns
    -------
    indices : numpy.ndarray
        (N, D) int64 bin indices in ``0 .. bins - 1`` (D the units per sample).
    width : float
        The bin width used (0 for a constant layer under ``"layer"``: one bin).
    """
    x = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    if not np.all(np.isfinite(x)):
        raise InputError("binning needs finite activations")
    if isinstance(value_range, str):
        if value_range != "layer":
            raise InputError(f"value_range must be (low, high) or 'layer', got {value_range!r}")
        low = float(x.min()) if x.size else 0.0
        high = float(x.max()) if x.size else 0.0
    else:
        low, high = (float(v) for v in value_range)
        if not low < high:
            raise InputError(f"a bin range needs low < high, got {value_range!r}")
    if high <= low:  # a constant layer: every value in one bin
        return np.zeros(x.shape, dtype=np.int64), 0.0
    width = (high - low) / bins
    indices = np.floor((x - low) / width).astype(np.int64)
    return np.clip(indices, 0, bins - 1), width


def binning_step(
    activations: Sequence[np.ndarray | None],
    x: np.ndarray,
    y: np.ndarray,
    *,
    bins: int,
    value_range: Sequence[float] | str,
    layers: Sequence[str],
) -> dict[str, Any]:
    """Binned entropies and MI of every layer of one (split, step) point.

    Parameters
    ----------
    activations
        One (N, ...) array per layer; None (or non-finite values) marks a layer that cannot be
        estimated (its values are NaN and it is named in ``failures``).
    x
        (N, ...) network inputs of the probe (their distinct rows give ``H(X)``).
    y
        (N,) labels.
    bins, value_range
        See :func:`bin_activations`.
    layers
        Layer names (for ``failures``).

    Returns
    -------
    dict
        :data:`LAYER_KEYS` as (L,) arrays, :data:`STEP_KEYS` as floats, ``failures`` as
        ``[(layer, reason)]``.
    """
    n_layers = len(layers)
    out: dict[str, Any] = {key: np.full(n_layers, np.nan) for key in LAYER_KEYS}
    out["saturated"] = np.zeros(n_layers, dtype=bool)
    y_labels = np.asarray(y).reshape(-1)
    x_labels = row_labels(x)
    n = len(y_labels)
    out["H_X"] = plugin_entropy(x_labels)
    out["H_Y"] = plugin_entropy(y_labels)
    failures: list[tuple[str, str]] = []
    for i, (layer, values) in enumerate(zip(layers, activations, strict=True)):
        if values is None or not np.all(np.isfinite(values)):
            failures.append((layer, "non-finite activations"))
            continue
        indices, width = bin_activations(values, bins, value_range)
        t_labels = row_labels(indices)
        h_t = plugin_entropy(t_labels)
        h_ty = plugin_entropy(t_labels, y_labels)
        occupied = int(t_labels.max()) + 1 if n else 0
        out["H_T"][i] = h_t
        out["H_XT"][i] = plugin_entropy(x_labels, t_labels)
        out["H_TY"][i] = h_ty
        out["I_XT"][i] = out["H_X"] + h_t - out["H_XT"][i]
        out["I_TY"][i] = h_t + out["H_Y"] - h_ty
        out["sigma"][i] = width
        out["occupied"][i] = occupied
        out["saturated"][i] = occupied == n
    out["failures"] = failures
    return out
