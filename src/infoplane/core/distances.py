"""Squared Euclidean (Frobenius) distances between samples, by the Gram identity.

``d2[i, j] = ‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩`` on the flattened samples: one symmetric rank-k update
(GEMM/SYRK) per block of features, never an ``N × N × D`` intermediate. Blocks are cast to float64
(and shifted by sample 0, which removes most of the cancellation of the identity) in a reusable
buffer, so the memory is O(N² + N·block) whatever the width of the layer. The first block's
product is the accumulator (no pass to add it to zeros), and on numpy the finish (norms, −2·Gram,
clip) runs row block by row block in cache: one pass over the N×N result.

The functions take numpy arrays or torch tensors (any device) and return float64 arrays of the
same library on the same device, by one code path (:mod:`infoplane.core.arrays`).

This module also holds the input checks shared by the numerical core.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from infoplane.core.arrays import (
    as_float64,
    clip_below_,
    device,
    dtype_kind,
    fill_diagonal_,
    namespace,
    rows_per_block,
    symmetric_product,
    to_numpy,
)
from infoplane.errors import InputError

__all__ = [
    "channel_squared_distances",
    "check_square_stack",
    "pack_upper",
    "squared_distances",
    "unpack_upper",
]

# Features per block, the largest of: 4096 (at large N each pass over the N×N accumulator is
# paid for by enough arithmetic; measured best at N = 1000), 2 MiB of float64 (tiny N), and
# ~50 MFLOP per BLAS call capped at 8 MiB (at small N the cost of waking the BLAS threads stays
# small). N = 100 gives 5000 features (4 MB), N = 1000 gives 4096 (33 MB).
_BLOCK_ELEMENTS = 1 << 18
_MIN_BLOCK = 4096
_BLOCK_FLOPS = 5e7
_MAX_BLOCK_ELEMENTS = 1 << 20  # 8 MiB: the cap of the last rule


def _block_features(n: int, d: int, block_size: int | None) -> int:
    if block_size is not None:
        if int(block_size) < 1:
            raise InputError(f"block_size must be a positive integer, got {block_size!r}")
        return min(int(block_size), max(d, 1))
    by_flops = min(int(_BLOCK_FLOPS / n**2), _MAX_BLOCK_ELEMENTS // n)
    return min(max(d, 1), max(_MIN_BLOCK, _BLOCK_ELEMENTS // n, by_flops))


def _flatten_samples(x: Any, xp: Any, what: str = "x") -> Any:
    """Validate ``x`` of shape (N, ...) and return an (N, D) view of it."""
    if x.ndim == 0:
        raise InputError(f"{what} must have a leading sample axis, got a scalar")
    if dtype_kind(x, xp) not in "biuf":
        raise InputError(f"{what} must hold real numbers, got dtype {x.dtype}")
    n = x.shape[0]
    if n < 2:
        raise InputError(
            f"{what} has {n} sample(s) along axis 0; distances need at least 2 samples"
        )
    return xp.reshape(x, (n, -1))


def _nonfinite_message(bad: np.ndarray, n: int, what: str) -> str:
    """Message naming the samples ``bad`` (indices) that hold NaN or Inf."""
    shown = ", ".join(str(int(i)) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
    if bad.size == 0:  # finite entries whose squares overflow float64
        return f"{what} has entries too large to square in float64 (|x| > 1e150); rescale it"
    return (
        f"{what} contains NaN or Inf in sample(s) {shown} ({bad.size} of {n}); "
        "the activations are not usable (a diverged run?) - check the run that produced them"
    )


def _finish(gram: Any, xp: Any) -> Any:
    """Turn an exactly symmetric Gram matrix into squared distances, in place.

    ``(‖x_i‖² + ‖x_j‖²) − 2⟨x_i, x_j⟩``: the outer sum of the norms is formed first (exactly
    symmetric) so that the result is exactly symmetric too; rounding negatives are clipped and
    the diagonal is set to 0. One row block at a time, every operation on it while it is in
    cache: one pass over the matrix instead of one per operation.
    """
    n = gram.shape[0]
    sq = xp.asarray(xp.linalg.diagonal(gram), copy=True)
    rows = rows_per_block(n, n, xp)
    for r0 in range(0, n, rows):
        part = gram[r0 : r0 + rows]
        part *= -2.0
        part += sq[r0 : r0 + rows, None] + sq[None, :]
        clip_below_(part, 0.0, xp)
    return fill_diagonal_(gram, 0.0, xp)


def _gram_of_samples(flat: Any, xp: Any, block_size: int | None) -> Any:
    """The float64 Gram matrix of the samples shifted by sample 0, exactly symmetric.

    Σ over feature blocks b of (b − b₀)(b − b₀)ᵀ, one symmetric product per block.
    """
    n, d = flat.shape
    dev = device(flat)
    if not d:
        return xp.zeros((n, n), dtype=xp.float64, device=dev)
    block = _block_features(n, d, block_size)
    buf = xp.empty((n, block), dtype=xp.float64, device=dev)
    gram = xp.empty((n, n), dtype=xp.float64, device=dev)
    product = None
    for start in range(0, d, block):
        part = buf[:, : min(block, d - start)]
        part[...] = flat[:, start : start + block]
        # Subtracting sample 0 leaves the distances unchanged but shrinks the norms the
        # identity subtracts from each other (less cancellation), at the cost of one pass over
        # a block that is in cache anyway.
        part -= xp.asarray(part[0], copy=True)
        if start == 0:  # the first product is the sum so far (0 + p = p): no pass to add it
            gram = symmetric_product(part, xp, out=gram)
        else:
            if product is None:
                product = xp.empty((n, n), dtype=xp.float64, device=dev)
            gram += symmetric_product(part, xp, out=product)
    return gram


def squared_distances(x: Any, *, block_size: int | None = None) -> Any:
    """Squared Euclidean distances between the flattened samples of ``x``.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (N, ...)
        Samples along axis 0; any trailing shape (a conv map ``C × H × W`` is flattened, which makes
        the distance the Frobenius distance between activation tensors). Any real dtype; a
        torch tensor is computed on its device.
    block_size : int, optional
        Features per block of the float64 accumulation (memory N·block·8 bytes); the default
        is 4096 or more, chosen for speed.

    Returns
    -------
    array, shape (N, N), float64
        Of the library and on the device of ``x``. Symmetric, zero diagonal, non-negative.

    Raises
    ------
    InputError
        For fewer than 2 samples, non-numeric input, or NaN/Inf entries.
    """
    xp = namespace(x)
    flat = _flatten_samples(xp.asarray(x), xp)
    # NaN/Inf are detected once, on the diagonal of the result, instead of by a separate pass.
    with np.errstate(invalid="ignore", over="ignore"):
        gram = _gram_of_samples(flat, xp, block_size)
    if not bool(xp.all(xp.isfinite(xp.linalg.diagonal(gram)))):  # NaN/Inf reach the row's norm
        bad = xp.nonzero(~xp.all(xp.isfinite(flat), axis=1))[0]
        raise InputError(_nonfinite_message(to_numpy(bad), flat.shape[0], "x"))
    return _finish(gram, xp)


def squared_distances_or_nan(x: Any) -> tuple[Any, bool]:
    """Squared distances of one step's samples, or an all-NaN matrix when they are not finite.

    A diverged run's NaN/Inf activations become a flagged NaN point, not an error, so the other
    layers and steps are still computed.

    Returns
    -------
    (d2, nonfinite)
        ``d2`` of the library and on the device of ``x``.
    """
    xp = namespace(x)
    x = xp.asarray(x)
    if not bool(xp.all(xp.isfinite(x))):
        n = x.shape[0]
        return xp.full((n, n), float("nan"), dtype=xp.float64, device=device(x)), True
    return squared_distances(x), False


def channel_squared_distances(x: Any, *, block_size: int | None = None) -> Any:
    """Per-channel squared distances for the multivariate (channel-wise) kernel.

    Parameters
    ----------
    x : array_like or torch.Tensor, shape (N, C, ...)
        Samples along axis 0, channels along axis 1.
    block_size : int, optional
        As for :func:`squared_distances`.

    Returns
    -------
    array, shape (C, N, N), float64
        Of the library and on the device of ``x``. ``out[c]`` are the squared distances of
        channel ``c``; their sum over ``c`` equals :func:`squared_distances` of ``x``.
    """
    xp = namespace(x)
    x = xp.asarray(x)
    if x.ndim < 2:
        raise InputError(
            f"x must have shape (N, C, ...) for channel distances, got {tuple(x.shape)}"
        )
    return xp.stack([squared_distances(x[:, c], block_size=block_size) for c in range(x.shape[1])])


def check_square_stack(a: Any, what: str, *, min_n: int = 2) -> Any:
    """Validate a stack of square matrices (..., N, N) and return it as float64.

    Raises :class:`InputError` naming ``what`` when the array is not a finite, real stack of
    square matrices with at least ``min_n`` rows. The result is of the library and on the
    device of ``a`` (no copy when ``a`` already is float64).
    """
    xp = namespace(a)
    a = xp.asarray(a)
    _check_square_shape(a, xp, what, min_n=min_n)
    a = as_float64(a, xp)
    if _has_nonfinite(a, xp):
        raise _nonfinite_stack_error(what)
    return a


def _check_square_shape(a: Any, xp: Any, what: str, *, min_n: int = 2) -> None:
    """The dtype and shape checks of :func:`check_square_stack` (no pass over the values)."""
    if dtype_kind(a, xp) not in "biuf":
        raise InputError(f"{what} must hold real numbers, got dtype {a.dtype}")
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise InputError(
            f"{what} must be a stack of square matrices (..., N, N), got {tuple(a.shape)}"
        )
    if a.shape[-1] < min_n:
        raise InputError(
            f"{what} is {a.shape[-1]}×{a.shape[-1]}; at least {min_n} samples are needed"
        )


def _has_nonfinite(a: Any, xp: Any) -> bool:
    """Whether the float64 array ``a`` holds NaN or ±Inf."""
    # A sum is one pass without a temporary; NaN and ±Inf reach it (as may a finite overflow,
    # which the exact test then clears).
    return not bool(xp.isfinite(xp.sum(a))) and not bool(xp.all(xp.isfinite(a)))


def _nonfinite_stack_error(what: str) -> InputError:
    """The error for a stack of matrices ``what`` that holds NaN or Inf."""
    return InputError(
        f"{what} contains NaN or Inf; it was computed from unusable activations "
        "(a diverged run?) - recompute it from finite data"
    )


def pack_upper(d2: Any, dtype: Any = np.float32) -> np.ndarray:
    """The N(N−1)/2 entries above the diagonal of a symmetric matrix, row after row, as ``dtype``.

    The compact form of a squared-distance matrix (the diagonal is 0, the lower triangle its
    mirror): a quarter of the float64 matrix in float32. :func:`unpack_upper` inverts it.
    """
    m = np.asarray(d2)
    n = m.shape[-1]
    out = np.empty(n * (n - 1) // 2, dtype=dtype)
    at = 0
    for i in range(n - 1):
        out[at : at + n - 1 - i] = m[i, i + 1 :]
        at += n - 1 - i
    return out


def unpack_upper(packed: Any, n: int) -> np.ndarray:
    """The symmetric (N, N) float64 matrix with zero diagonal of :func:`pack_upper`'s entries."""
    v = np.asarray(packed)
    if v.shape != (n * (n - 1) // 2,):
        raise InputError(f"a packed upper triangle of {n} samples has {n * (n - 1) // 2} entries")
    out = np.zeros((n, n))
    at = 0
    for i in range(n - 1):
        out[i, i + 1 :] = v[at : at + n - 1 - i]
        at += n - 1 - i
    block = 512  # mirror block by block: no second N×N array
    for b0 in range(0, n, block):
        b1 = min(b0 + block, n)
        out[b0:b1, :b0] = out[:b0, b0:b1].T
        out[b0:b1, b0:b1] += np.triu(out[b0:b1, b0:b1], 1).T
    return out
