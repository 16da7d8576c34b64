"""One numerical core for every array library: numpy on the CPU, torch on the CPU or a GPU.

The core's functions take the namespace of their inputs (:func:`namespace`, the array API
standard through ``array-api-compat``) and compute with it, so a torch CUDA tensor is computed on
its GPU and a numpy array as before, by the same code. The array API leaves out a few things the
core needs for speed or memory (in-place exponentials, writing into a given buffer, a host copy);
they are here, one small function each. Nothing here imports torch: torch arrays bring their own
namespace.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from array_api_compat import array_namespace, device, is_numpy_namespace, is_torch_namespace
from scipy import special

from infoplane.errors import InputError

__all__ = [
    "as_float64",
    "clip_below_",
    "device",
    "dtype_kind",
    "entr",
    "exp_",
    "fill_diagonal_",
    "frobenius_squared",
    "is_numpy",
    "multiply_into",
    "namespace",
    "rows_per_block",
    "symmetric_product",
    "to_numpy",
]

# Elements of one row block of an N×N pass (1 MiB of float64): it stays in cache while every
# operation of the pass runs over it, so the matrix crosses the memory bus once.
_BLOCK_ELEMENTS = 1 << 17


def namespace(*arrays: Any) -> Any:
    """The array-API namespace of ``arrays``; plain Python values and lists count as numpy.

    Mixing libraries (a numpy array with a torch tensor) is an error of the caller: move every
    input to one device first.
    """
    arrays = tuple(a for a in arrays if a is not None)
    if not arrays or all(_is_plain(a) for a in arrays):
        return array_namespace(np.empty(0))
    try:
        return array_namespace(*(a for a in arrays if not _is_plain(a)))
    except TypeError:
        kinds = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in arrays})
        raise InputError(
            f"the inputs mix array libraries ({', '.join(kinds)}); convert them to one library "
            "and device first (all numpy, or all torch tensors on one device)"
        ) from None


def _is_plain(a: Any) -> bool:
    return isinstance(a, (int, float, bool, str, list, tuple, np.generic))


def is_numpy(xp: Any) -> bool:
    """Whether ``xp`` is numpy's namespace (the CPU path, where numpy's own ``out=`` is used)."""
    return is_numpy_namespace(xp)


def as_float64(x: Any, xp: Any) -> Any:
    """``x`` as a float64 array of ``xp`` on its device (no copy when it already is one)."""
    if is_numpy(xp):
        return np.asarray(x, dtype=np.float64)
    return xp.asarray(x, dtype=xp.float64)


def exp_(x: Any, xp: Any) -> Any:
    """exp(x) in place (numpy ``out=``, torch ``exp_``); returns ``x``."""
    if is_numpy(xp):
        return np.exp(x, out=x)
    if is_torch_namespace(xp):
        return x.exp_()
    return xp.exp(x)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy copy on the host of any array (a numpy array is returned as is)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch, on any device
        return x.detach().cpu().numpy()
    return np.asarray(x)


def dtype_kind(x: Any, xp: Any) -> str:
    """numpy's one-letter kind of the dtype of ``x``: ``b``, ``i``, ``u``, ``f``, ``c`` or ``O``."""
    if is_numpy(xp):
        return x.dtype.kind
    for kind, name in (
        ("b", "bool"),
        ("i", "signed integer"),
        ("u", "unsigned integer"),
        ("f", "real floating"),
        ("c", "complex floating"),
    ):
        if xp.isdtype(x.dtype, name):
            return kind
    return "O"


def clip_below_(x: Any, floor: float, xp: Any) -> Any:
    """max(x, floor) in place (numpy ``out=``, torch ``clamp_``); returns ``x``."""
    if is_numpy(xp):
        return np.maximum(x, floor, out=x)
    if is_torch_namespace(xp):
        return x.clamp_(min=floor)
    x[...] = xp.clip(x, min=floor)
    return x


def multiply_into(a: Any, b: Any, out: Any, xp: Any) -> Any:
    """``out[...] = a * b`` without an ``a * b`` temporary; returns ``out``."""
    if is_numpy(xp):
        return np.multiply(a, b, out=out)
    out[...] = a
    out *= b
    return out


def fill_diagonal_(a: Any, value: float, xp: Any) -> Any:
    """Set the diagonal of the square matrix ``a`` to ``value`` in place; returns ``a``."""
    if is_numpy(xp):
        np.fill_diagonal(a, value)
        return a
    if is_torch_namespace(xp):
        return a.fill_diagonal_(value)
    i = xp.arange(a.shape[0], device=device(a))
    a[i, i] = value
    return a


def symmetric_product(a: Any, xp: Any, out: Any = None) -> Any:
    """The exactly symmetric matrix ``a @ aᵀ`` (written into ``out`` on numpy when given).

    numpy hands ``a @ a.T`` to BLAS SYRK, which computes one triangle and mirrors it; other
    libraries compute a general product, which is symmetrised by averaging with its transpose.
    """
    if is_numpy(xp):
        return np.matmul(a, a.T, out=out)
    p = a @ xp.matrix_transpose(a)
    p = p + xp.matrix_transpose(p)  # (p + pᵀ)ᵢⱼ and (p + pᵀ)ⱼᵢ are the same sum
    p *= 0.5
    return p


def frobenius_squared(a: Any, xp: Any) -> Any:
    """Σᵢⱼ a[..., i, j]² per matrix of a stack (numpy: ``einsum``, no ``a * a`` temporary)."""
    if is_numpy(xp):
        return np.einsum("...ij,...ij->...", a, a)
    return xp.sum(a * a, axis=(-2, -1))


def entr(p: Any, xp: Any) -> Any:
    """−p·ln p elementwise, 0 at p = 0 (scipy's ``special.entr`` on numpy)."""
    if is_numpy(xp):
        return special.entr(p)
    positive = p > 0
    return xp.where(positive, -p * xp.log(xp.where(positive, p, 1.0)), 0.0)


def rows_per_block(rows: int, cols: int, xp: Any) -> int:
    """Rows of a (rows, cols) matrix to process at once in a fused pass.

    On numpy a block that fits in cache (several operations run over it before it is written
    back); elsewhere all rows, as a GPU pays for every kernel launch and has the bandwidth.
    """
    if is_numpy(xp):
        return max(1, min(rows, _BLOCK_ELEMENTS // max(cols, 1)))
    return max(rows, 1)
