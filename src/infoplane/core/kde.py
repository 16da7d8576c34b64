"""Pairwise-distance bounds on the MI of a layer with Gaussian noise (Kolchinsky & Tracey, 2017).

The layer's output is ``T + ε`` with ``ε ~ N(0, s² I)``: over the N probe samples (each of weight
1/N) it is a mixture of N Gaussians centred on the ``t_i``. Kolchinsky & Tracey bound the entropy
of such a mixture with a pairwise divergence ``D`` between its components,

    H(T + ε) ≈ H(ε) − (1/N) Σ_i ln (1/N) Σ_j exp(−D(p_i ‖ p_j)),

an **upper** bound with the Kullback-Leibler divergence, ``D = d²_ij / (2 s²)``, and a **lower**
bound with the Bhattacharyya distance, ``D = d²_ij / (8 s²)`` (``d²_ij = ‖t_i − t_j‖²``). With
``H(T + ε | X) = H(ε)`` the noise entropy cancels:

- ``I(X;T) = −(1/N) Σ_i log2 (1/N) Σ_j exp(−D_ij)`` (a bound in both cases, in bits, between 0 and
  ``log2 N``);
- ``I(T;Y) = I(X;T) − Σ_c p_c I_c``, where ``I_c`` is the same sum over the samples of class c
  alone: the estimate of ``H(T + ε) − H(T + ε | Y)`` used by Saxe et al. (ICLR 2018). A difference
  of two bounds, it is an estimate, not a bound, and its "upper" value need not exceed its
  "lower" one.

Everything works from the squared distances, so the cached ``d2`` of a layer suffices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import logsumexp

from infoplane.core.binning import plugin_entropy
from infoplane.errors import InputError

__all__ = [
    "DIVERGENCE_SCALE",
    "LAYER_KEYS",
    "STEP_KEYS",
    "distinct_labels",
    "kde_step",
    "pairwise_mi",
    "pairwise_mi_labels",
]

#: ``D_ij = d²_ij / (scale · s²)`` of the two bounds.
DIVERGENCE_SCALE = {"upper": 2.0, "lower": 8.0}

#: Per-layer outputs of :func:`kde_step`. ``I_XT``/``I_TY`` (and the entropies H_T, H_XT, H_TY
#: that add up to them) are the upper bound's; ``sigma`` is the noise standard deviation s.
LAYER_KEYS = (
    "I_XT",
    "I_TY",
    "H_T",
    "H_XT",
    "H_TY",
    "sigma",
    "I_XT_upper",
    "I_XT_lower",
    "I_TY_upper",
    "I_TY_lower",
)
#: Per-point outputs of :func:`kde_step`.
STEP_KEYS = ("H_X", "H_Y")

_LN2 = np.log(2.0)


def pairwise_mi(d2: np.ndarray, variance: float, bound: str = "upper") -> np.ndarray:
    """``I(X;T)`` in bits of ``T + N(0, variance·I)`` from squared distances, per matrix.

    Parameters
    ----------
    d2
        (..., N, N) squared distances between the probe samples' activations.
    variance
        Noise variance s² > 0 (per unit).
    bound
        ``"upper"`` (Kullback-Leibler) or ``"lower"`` (Bhattacharyya).

    Returns
    -------
    numpy.ndarray
        (...) ``−(1/N) Σ_i log2 (1/N) Σ_j exp(−d²_ij / (c s²))``, c = 2 (upper) or 8 (lower).
    """
    if bound not in DIVERGENCE_SCALE:
        raise InputError(f"bound must be 'upper' or 'lower', got {bound!r}")
    if not variance > 0:
        raise InputError(f"the noise variance must be > 0, got {variance!r}")
    d2 = np.asarray(d2, dtype=np.float64)
    n = d2.shape[-1]
    if n == 0:
        return np.zeros(d2.shape[:-2])
    exponent = -np.maximum(d2, 0.0) / (DIVERGENCE_SCALE[bound] * variance)
    inner = logsumexp(exponent, axis=-1) - np.log(n)  # ln (1/N) Σ_j exp(−D_ij), in [−ln N, 0]
    return np.clip(-inner.mean(axis=-1) / _LN2, 0.0, np.log2(n))


def pairwise_mi_labels(
    d2: np.ndarray, y: np.ndarray, variance: float, bound: str = "upper"
) -> np.ndarray:
    """``I(T;Y)`` in bits: :func:`pairwise_mi` minus its class-weighted mean within each class.

    Parameters
    ----------
    d2
        (..., N, N) squared distances.
    y
        (N,) labels.
    variance, bound
        As in :func:`pairwise_mi`.
    """
    d2 = np.asarray(d2, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    total = pairwise_mi(d2, variance, bound)
    conditional = np.zeros_like(total)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        block = d2[..., members[:, None], members[None, :]]
        conditional += len(members) / len(y) * pairwise_mi(block, variance, bound)
    return total - conditional


def distinct_labels(d2: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """Labels of the samples that coincide (``d²_ij <= tol``): the first such sample's index.

    Parameters
    ----------
    d2
        (N, N) squared distances (zero diagonal).
    tol
        Largest squared distance counted as equal.
    """
    d2 = np.asarray(d2)
    same = d2 <= tol
    np.fill_diagonal(same, True)
    return np.argmax(same, axis=1).astype(np.int64)


def kde_step(
    point: Mapping[str, np.ndarray],
    *,
    variance: float,
    layers: Sequence[str],
) -> dict[str, Any]:
    """Both bounds on ``I(X;T)`` and ``I(T;Y)`` of every layer of one (split, step) point.

    Parameters
    ----------
    point
        ``d2`` (L, N, N), ``d2_x`` (N, N), ``y`` (N,), ``nonfinite`` (L,), ``nonfinite_x``.
    variance
        Noise variance s².
    layers
        Layer names (for ``failures``).

    Returns
    -------
    dict
        :data:`LAYER_KEYS` as (L,) arrays, :data:`STEP_KEYS` as floats, ``failures``. ``H_X``
        is the plug-in entropy of the distinct inputs (``log2 N`` when all differ), ``H_Y`` that
        of the labels; ``H_T = I_XT``, ``H_XT = H_X`` and ``H_TY = H_T + H_Y − I_TY``, so that
        ``I = H + H − joint H`` holds for the stored values as for the other estimators.
    """
    n_layers = len(layers)
    out: dict[str, Any] = {key: np.full(n_layers, np.nan) for key in LAYER_KEYS}
    y = np.asarray(point["y"]).reshape(-1)
    out["H_Y"] = plugin_entropy(y)
    out["H_X"] = np.nan
    failures: list[tuple[str, str]] = []
    if not bool(point["nonfinite_x"]):
        d2_x = np.asarray(point["d2_x"], dtype=np.float64)
        scale = float(np.max(d2_x)) if d2_x.size else 0.0
        out["H_X"] = plugin_entropy(distinct_labels(d2_x, 1e-12 * scale))
    good = [i for i in range(n_layers) if not point["nonfinite"][i]]
    failures += [(layers[i], "non-finite activations") for i in range(n_layers) if i not in good]
    if good:
        d2 = np.asarray(point["d2"], dtype=np.float64)[good]
        for bound in ("upper", "lower"):
            out[f"I_XT_{bound}"][good] = pairwise_mi(d2, variance, bound)
            out[f"I_TY_{bound}"][good] = pairwise_mi_labels(d2, y, variance, bound)
        out["I_XT"][good] = out["I_XT_upper"][good]
        out["I_TY"][good] = out["I_TY_upper"][good]
        out["H_T"][good] = out["I_XT"][good]
        out["H_XT"][good] = out["H_X"]
        out["H_TY"][good] = out["H_T"][good] + out["H_Y"] - out["I_TY"][good]
        out["sigma"][good] = np.sqrt(variance)
    out["failures"] = failures
    return out
