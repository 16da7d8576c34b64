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

__all__ = [
    "as_float64",
    "device",
    "exp_",
    "is_numpy",
    "namespace",
    "to_numpy",
    "zeros_like_on",
]


def namespace(*arrays: Any) -> Any:
    """The array-API namespace of ``arrays``; plain Python values and lists count as numpy.

    Mixing libraries (a numpy array with a torch tensor) is an error of the caller: move every
    input to one device first.
    """
    arrays = tuple(a for a in arrays if a is not None)
    if not arrays or all(_is_plain(a) for a in arrays):
        return array_namespace(np.empty(0))
    return array_namespace(*(a for a in arrays if not _is_plain(a)))


def _is_plain(a: Any) -> bool:
    return isinstance(a, (int, float, bool, list, tuple, np.generic))


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


def zeros_like_on(x: Any, shape: tuple[int, ...], xp: Any, dtype: Any = None) -> Any:
    """A zero array of ``shape`` on the device of ``x`` (float64 unless ``dtype``)."""
    return xp.zeros(shape, dtype=xp.float64 if dtype is None else dtype, device=device(x))


def to_numpy(x: Any) -> np.ndarray:
    """A numpy copy on the host of any array (a numpy array is returned as is)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # torch, on any device
        return x.detach().cpu().numpy()
    return np.asarray(x)
