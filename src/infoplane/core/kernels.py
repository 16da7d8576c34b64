"""Gram matrices from squared distances: RBF/tensor kernel, label indicator, channel-wise product.

Convention (the paper's code): κ_σ(a, b) = exp(−‖a − b‖² / σ²), no factor 2. On flattened
activation tensors this is the tensor kernel; widths from rules stated for exp(−d²/(2s²)) convert
with σ = √2·s (see :mod:`infoplane.core.widths`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infoplane.core.distances import check_square_stack
from infoplane.errors import InputError

__all__ = [
    "check_distances",
    "gaussian_gram",
    "label_gram",
    "multivariate_gram",
]

# Kernel values below exp(-100) ≈ 3.7e-44 are set to exactly 0. Against a unit diagonal they are
# far below float64 resolution of any entropy, and the flush keeps subnormal numbers (10-100x
# slower on x86) out of the exponentials, the Hadamard products and the eigensolver. It also
# makes the paper's σ_Y = 0.1 kernel on one-hot labels (off-diagonal e^-200) exactly the class
# indicator, whose block structure the entropy code exploits.
EXP_FLOOR = -100.0


def exp_flushed(arg: np.ndarray) -> np.ndarray:
    """exp(arg) in place for arg <= 0, with exp(arg) = 0 exactly where arg < EXP_FLOOR."""
    below = arg < EXP_FLOOR
    np.maximum(arg, EXP_FLOOR, out=arg)
    np.exp(arg, out=arg)
    arg[below] = 0.0
    return arg


def check_widths(sigma: Any, batch_shape: tuple[int, ...], what: str = "sigma") -> np.ndarray:
    """Validate kernel widths: finite, > 0, broadcastable to ``batch_shape``; return float64."""
    try:
        s = np.asarray(sigma, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"{what} must be a positive number or an array of them, got {sigma!r}"
        ) from None
    if not np.isfinite(s).all() or (s <= 0).any():
        shown = s if s.size <= 10 else "an array with bad values"
        raise InputError(f"{what} must be finite and > 0, got {shown}")
    try:
        np.broadcast_shapes(s.shape, batch_shape)
    except ValueError:
        raise InputError(
            f"{what} has shape {s.shape}, which does not match the batch shape {batch_shape} "
            "of the distances; pass one width, or one per matrix"
        ) from None
    return s


def check_distances(d2: Any, what: str = "d2") -> np.ndarray:
    """A finite square stack of squared distances (..., N, N) with no negative entry, as float64."""
    d2 = check_square_stack(d2, what)
    if d2.size and d2.min() < 0:
        raise InputError(
            f"{what} has negative entries; squared distances must be >= 0 "
            "(compute them with infoplane.core.distances.squared_distances)"
        )
    return d2


def gaussian_gram(d2: Any, sigma: Any) -> np.ndarray:
    """RBF (tensor) kernel Gram matrix ``exp(−d2 / σ²)``.

    Parameters
    ----------
    d2 : array_like, shape (..., N, N)
        Squared distances (non-negative).
    sigma : float or array_like, shape (...)
        Width(s) in the paper's convention; one per matrix of the stack, or one for all.

    Returns
    -------
    numpy.ndarray, shape (..., N, N), float64
        Entries below exp(−100) ≈ 3.7e−44 are exactly 0 (see ``EXP_FLOOR``).
    """
    d2 = check_distances(d2)
    s = check_widths(sigma, d2.shape[:-2])
    scale = (-1.0 / s**2)[..., None, None]
    return exp_flushed(d2 * scale)


def label_gram(y: Any) -> np.ndarray:
    """Class-equality indicator kernel ``K[i, j] = 1 if y_i == y_j else 0``.

    This is what the paper's σ_Y = 0.1 RBF on one-hot labels gives; its entropy is the Shannon
    entropy of the class histogram.

    Parameters
    ----------
    y : array_like, shape (N,)
        Integer class labels.

    Returns
    -------
    numpy.ndarray, shape (N, N), float64
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise InputError(
            f"labels must be a 1-D array of class indices (N,), got shape {y.shape}; "
            "for one-hot labels pass y.argmax(axis=1)"
        )
    if y.dtype.kind not in "biu":
        raise InputError(f"labels must be integers (class indices), got dtype {y.dtype}")
    if y.shape[0] < 2:
        raise InputError(f"labels hold {y.shape[0]} sample(s); at least 2 are needed")
    return (y[:, None] == y[None, :]).astype(np.float64)


def multivariate_gram(d2_channels: Any, sigmas: Any) -> np.ndarray:
    """Channel-wise (multivariate) Gram matrix: Hadamard product of per-channel RBF Grams.

    ``Π_c exp(−d2_c / σ_c²) = exp(−Σ_c d2_c / σ_c²)``; computed in the second form (one exp).
    With one shared σ it equals the tensor kernel on the whole layer.

    Parameters
    ----------
    d2_channels : array_like, shape (C, N, N)
        Per-channel squared distances (:func:`infoplane.core.distances.channel_squared_distances`).
    sigmas : float or array_like, shape (C,)
        Per-channel widths, or one shared width.

    Returns
    -------
    numpy.ndarray, shape (N, N), float64
    """
    d2 = check_distances(d2_channels, "d2_channels")
    if d2.ndim != 3:
        raise InputError(f"d2_channels must have shape (C, N, N), got {d2.shape}")
    s = check_widths(sigmas, (d2.shape[0],), "sigmas")
    weights = np.broadcast_to(1.0 / s**2, (d2.shape[0],))
    out = np.tensordot(weights, d2, axes=1)
    out *= -1.0
    return exp_flushed(out)
