"""Gram matrices from squared distances: RBF/tensor kernel, label indicator, channel-wise product.

Convention (the paper's code): κ_σ(a, b) = exp(−‖a − b‖² / σ²), no factor 2. On flattened
activation tensors this is the tensor kernel; widths from rules stated for exp(−d²/(2s²)) convert
with σ = √2·s (see :mod:`infoplane.core.widths`).

Distances and labels may be numpy arrays or torch tensors (any device); the Grams are float64
arrays of the same library on the same device. Widths are a handful of numbers, checked on the
host.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from infoplane.core.arrays import (
    as_float64,
    clip_below_,
    device,
    dtype_kind,
    exp_,
    multiply_into,
    namespace,
    rows_per_block,
    to_numpy,
)
from infoplane.core.distances import (
    _check_square_shape,
    _has_nonfinite,
    _nonfinite_stack_error,
    check_square_stack,
)
from infoplane.errors import InputError

__all__ = [
    "check_distances",
    "check_widths",
    "exp_flushed",
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


def exp_flushed(arg: Any) -> Any:
    """exp(arg) in place for arg <= 0, with exp(arg) = 0 exactly where arg < EXP_FLOOR."""
    xp = namespace(arg)
    below = arg < EXP_FLOOR
    clip_below_(arg, EXP_FLOOR, xp)
    exp_(arg, xp)
    arg[below] = 0.0
    return arg


def check_widths(sigma: Any, batch_shape: tuple[int, ...], what: str = "sigma") -> np.ndarray:
    """Validate kernel widths: finite, > 0, broadcastable to ``batch_shape``.

    ``sigma`` is a number, a numpy array or a tensor of any library and device; the widths are a
    handful of numbers, so they are checked, and returned, as a float64 numpy array.
    """
    try:
        s = np.asarray(to_numpy(sigma), np.float64)
    except (TypeError, ValueError):
        raise InputError(
            f"{what} must be a positive number or an array of them, got {sigma!r}"
        ) from None
    if not np.isfinite(s).all() or (s <= 0).any():
        shown = s if s.size <= 10 else "an array with bad values"
        raise InputError(f"{what} must be finite and > 0, got {shown}")
    try:
        np.broadcast_shapes(s.shape, tuple(batch_shape))
    except ValueError:
        raise InputError(
            f"{what} has shape {s.shape}, which does not match the batch shape "
            f"{tuple(batch_shape)} of the distances; pass one width, or one per matrix"
        ) from None
    return s


def _negative_distances_error(what: str) -> InputError:
    return InputError(
        f"{what} has negative entries; squared distances must be >= 0 "
        "(compute them with infoplane.core.distances.squared_distances)"
    )


def check_distances(d2: Any, what: str = "d2") -> Any:
    """A finite square stack of squared distances (..., N, N) with no negative entry, as float64.

    Of the library and on the device of ``d2``.
    """
    d2 = check_square_stack(d2, what)
    xp = namespace(d2)
    if math.prod(d2.shape) and bool(xp.min(d2) < 0):
        raise _negative_distances_error(what)
    return d2


def gaussian_gram(d2: Any, sigma: Any) -> Any:
    """RBF (tensor) kernel Gram matrix ``exp(−d2 / σ²)``.

    Parameters
    ----------
    d2 : array_like or torch.Tensor, shape (..., N, N)
        Squared distances (non-negative), of any real dtype, on any device.
    sigma : float or array_like, shape (...)
        Width(s) in the paper's convention; one per matrix of the stack, or one for all.

    Returns
    -------
    array, shape (..., N, N), float64
        Of the library and on the device of ``d2``. Entries below exp(−100) ≈ 3.7e−44 are
        exactly 0 (see ``EXP_FLOOR``).

    Notes
    -----
    The checks of :func:`check_distances`, the scaling and the exponential run over one block
    of rows at a time (on numpy one that fits in cache), so the matrices cross the memory bus
    once: read ``d2``, write the result.
    """
    xp = namespace(d2)
    d2 = xp.asarray(d2)
    _check_square_shape(d2, xp, "d2")
    batch, n = tuple(d2.shape[:-2]), d2.shape[-1]
    s = check_widths(sigma, batch)
    # One factor per row of the stack seen as (M·N, N) rows; the same float64 factor as the
    # whole-matrix product d2 * scale, so the same bits.
    scale = np.array(np.broadcast_to((-1.0 / s**2)[..., None, None], (*batch, n, 1)).reshape(-1, 1))
    scale = xp.asarray(scale, device=device(d2))
    rows_of = xp.reshape(d2, (-1, n))
    out = xp.empty(rows_of.shape, dtype=xp.float64, device=device(d2))
    step = rows_per_block(rows_of.shape[0], n, xp)
    negative = False
    for r0 in range(0, rows_of.shape[0], step):
        block = as_float64(rows_of[r0 : r0 + step], xp)
        if _has_nonfinite(block, xp):
            raise _nonfinite_stack_error("d2")
        negative = negative or bool(xp.min(block) < 0)
        target = out[r0 : r0 + step]
        exp_flushed(multiply_into(block, scale[r0 : r0 + step], target, xp))
    if negative:
        raise _negative_distances_error("d2")
    return xp.reshape(out, tuple(d2.shape))


def label_gram(y: Any) -> Any:
    """Class-equality indicator kernel ``K[i, j] = 1 if y_i == y_j else 0``.

    This is what the paper's σ_Y = 0.1 RBF on one-hot labels gives; its entropy is the Shannon
    entropy of the class histogram.

    Parameters
    ----------
    y : array_like or torch.Tensor, shape (N,)
        Integer class labels.

    Returns
    -------
    array, shape (N, N), float64
        Of the library and on the device of ``y``.
    """
    xp = namespace(y)
    y = xp.asarray(y)
    if y.ndim != 1:
        raise InputError(
            f"labels must be a 1-D array of class indices (N,), got shape {tuple(y.shape)}; "
            "for one-hot labels pass y.argmax(axis=1)"
        )
    if dtype_kind(y, xp) not in "biu":
        raise InputError(f"labels must be integers (class indices), got dtype {y.dtype}")
    if y.shape[0] < 2:
        raise InputError(f"labels hold {y.shape[0]} sample(s); at least 2 are needed")
    return xp.astype(y[:, None] == y[None, :], xp.float64)


def multivariate_gram(d2_channels: Any, sigmas: Any) -> Any:
    """Channel-wise (multivariate) Gram matrix: Hadamard product of per-channel RBF Grams.

    ``Π_c exp(−d2_c / σ_c²) = exp(−Σ_c d2_c / σ_c²)``; computed in the second form (one exp).
    With one shared σ it equals the tensor kernel on the whole layer.

    Parameters
    ----------
    d2_channels : array_like or torch.Tensor, shape (C, N, N)
        Per-channel squared distances (:func:`infoplane.core.distances.channel_squared_distances`).
    sigmas : float or array_like, shape (C,)
        Per-channel widths, or one shared width.

    Returns
    -------
    array, shape (N, N), float64
        Of the library and on the device of ``d2_channels``.
    """
    d2 = check_distances(d2_channels, "d2_channels")
    xp = namespace(d2)
    if d2.ndim != 3:
        raise InputError(f"d2_channels must have shape (C, N, N), got {tuple(d2.shape)}")
    s = check_widths(sigmas, (d2.shape[0],), "sigmas")
    weights = xp.asarray(np.array(np.broadcast_to(1.0 / s**2, (d2.shape[0],))), device=device(d2))
    out = xp.tensordot(weights, d2, axes=1)
    out *= -1.0
    return exp_flushed(out)
