"""Torch twins of the numerical core: the same functions on torch tensors (GPU when present).

Each takes and returns float64 tensors on the input's device and follows its numpy original in
:mod:`infoplane.core` exactly (conventions, checks, errors); tests hold every twin against it.
torch is imported by the functions, so importing this module is light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from infoplane.core.distances import _MIN_BLOCK, _block_features, _nonfinite_message
from infoplane.core.entropy import _LN2, _NEAR_ONE, _SYMMETRY_RTOL, _check_alpha, _plane
from infoplane.core.kernels import EXP_FLOOR
from infoplane.errors import InputError

if TYPE_CHECKING:
    import torch

__all__ = [
    "gaussian_gram_torch",
    "information_plane_torch",
    "joint_entropy_torch",
    "mutual_information_torch",
    "renyi_entropy_torch",
    "squared_distances_torch",
]


def squared_distances_torch(x: torch.Tensor, *, block_size: int | None = None) -> torch.Tensor:
    """Torch twin of :func:`squared_distances`: float64 result on ``x.device``.

    Parameters
    ----------
    x : torch.Tensor, shape (N, ...)
        Samples along axis 0, any real dtype, on any device.
    block_size : int, optional
        Features per float64 block.

    Returns
    -------
    torch.Tensor, shape (N, N), float64
    """
    import torch

    if x.ndim == 0:
        raise InputError("x must have a leading sample axis, got a scalar")
    if x.is_complex() or x.dtype == torch.bool:
        raise InputError(f"x must hold real numbers, got dtype {x.dtype}")
    n = x.shape[0]
    if n < 2:
        raise InputError(f"x has {n} sample(s) along axis 0; distances need at least 2 samples")
    flat = x.reshape(n, -1)
    d = flat.shape[1]
    gram = torch.zeros((n, n), dtype=torch.float64, device=x.device)
    if d:
        # Larger default blocks than on the numpy path: fewer kernel launches on a GPU.
        default = max(_MIN_BLOCK, (1 << 22) // n)
        block = _block_features(n, d, block_size if block_size is not None else default)
        for start in range(0, d, block):
            part = flat[:, start : start + block].to(torch.float64)
            part = part - part[0]  # out of place: x itself may already be float64
            gram.addmm_(part, part.T)
    sq = torch.diagonal(gram).clone()
    if not bool(torch.isfinite(sq).all()):
        bad = (~torch.isfinite(flat).all(dim=1)).nonzero().flatten().cpu().numpy()
        raise InputError(_nonfinite_message(bad, n, "x"))
    d2 = sq[:, None] + sq[None, :] - 2.0 * gram
    d2 = torch.triu(d2, 1)
    d2 = d2 + d2.T
    return d2.clamp_(min=0.0)


def gaussian_gram_torch(d2: torch.Tensor, sigma: Any) -> torch.Tensor:
    """Torch twin of :func:`gaussian_gram` (float64, on ``d2.device``)."""
    import torch

    if d2.ndim < 2 or d2.shape[-1] != d2.shape[-2] or d2.shape[-1] < 2:
        raise InputError(f"d2 must be a stack of square matrices (..., N, N), got {d2.shape}")
    s = torch.as_tensor(sigma, dtype=torch.float64, device=d2.device)
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise InputError(f"sigma must be finite and > 0, got {sigma!r}")
    arg = d2.to(torch.float64) * (-1.0 / s**2)[..., None, None]
    out = torch.exp(arg.clamp(min=EXP_FLOOR))
    return out.masked_fill_(arg < EXP_FLOOR, 0.0)


def _check_gram_torch(gram: torch.Tensor, what: str) -> torch.Tensor:
    import torch

    if not isinstance(gram, torch.Tensor):
        raise InputError(f"{what} must be a torch.Tensor, got {type(gram).__name__}")
    if gram.is_complex() or gram.dtype == torch.bool:
        raise InputError(f"{what} must hold real numbers, got dtype {gram.dtype}")
    if gram.ndim < 2 or gram.shape[-1] != gram.shape[-2]:
        raise InputError(
            f"{what} must be a stack of square matrices (..., N, N), got {tuple(gram.shape)}"
        )
    if gram.shape[-1] < 2:
        raise InputError(
            f"{what} is {gram.shape[-1]}×{gram.shape[-1]}; at least 2 samples are needed"
        )
    g = gram.to(torch.float64)
    if not bool(torch.isfinite(g).all()):
        raise InputError(f"{what} contains NaN or Inf; recompute it from finite data")
    scale = max(1.0, float(g.abs().max()))
    if float((g - g.transpose(-1, -2)).abs().max()) > _SYMMETRY_RTOL * scale:
        raise InputError(f"{what} is not symmetric; a Gram matrix must equal its transpose")
    if bool((torch.diagonal(g, dim1=-2, dim2=-1).sum(-1) <= 0).any()):
        raise InputError(f"{what} has a trace <= 0; a Gram matrix has a positive diagonal")
    return g


def _normalise_torch(g: torch.Tensor) -> torch.Tensor:
    import torch

    return g / torch.diagonal(g, dim1=-2, dim2=-1).sum(-1)[..., None, None]


def _entropy_torch(a: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    if alpha == 2.0:
        h = -torch.log2((a * a).sum(dim=(-2, -1)))
        return h, torch.zeros_like(h)
    lam = torch.linalg.eigvalsh(a)
    clipped = -lam.clamp(max=0.0).sum(-1)
    noise = lam.shape[-1] * torch.finfo(torch.float64).eps * lam.max(dim=-1, keepdim=True).values
    p = torch.where(lam > noise, lam, torch.zeros_like(lam))
    p = p / p.sum(-1, keepdim=True)
    if alpha == 1.0:
        return torch.special.entr(p).sum(-1) / _LN2, clipped
    top = p.max(dim=-1).values
    if np.isinf(alpha):
        return -torch.log2(top), clipped
    if alpha < _NEAR_ONE:  # see _entropy_of_probabilities
        positive = p > 0
        log_p = torch.log(torch.where(positive, p, torch.ones_like(p)))
        terms = torch.where(positive, p * torch.expm1((alpha - 1.0) * log_p), torch.zeros_like(p))
        return torch.log1p(terms.sum(-1)) / ((1.0 - alpha) * _LN2), clipped
    ratio_sum = ((p / top[..., None]) ** alpha).sum(-1)
    return (alpha * torch.log2(top) + torch.log2(ratio_sum)) / (1.0 - alpha), clipped


def renyi_entropy_torch(
    gram: torch.Tensor, alpha: float = 1.0, *, return_clipped: bool = False
) -> Any:
    """Torch twin of :func:`renyi_entropy` (float64, on ``gram.device``)."""
    alpha = _check_alpha(alpha)
    g = _check_gram_torch(gram, "gram")
    h, clipped = _entropy_torch(_normalise_torch(g), alpha)
    return (h, clipped) if return_clipped else h


def joint_entropy_torch(
    grams: Sequence[torch.Tensor], alpha: float = 1.0, *, return_clipped: bool = False
) -> Any:
    """Torch twin of :func:`joint_entropy`."""
    alpha = _check_alpha(alpha)
    mats = [_check_gram_torch(g, f"grams[{i}]") for i, g in enumerate(grams)]
    if not mats:
        raise InputError("grams is empty; pass at least one Gram matrix")
    if len({m.shape[-1] for m in mats}) > 1:
        raise InputError("grams have different numbers of samples N")
    prod = mats[0]
    for m in mats[1:]:
        prod = prod * m
    h, clipped = _entropy_torch(_normalise_torch(prod), alpha)
    return (h, clipped) if return_clipped else h


def mutual_information_torch(
    gram_a: torch.Tensor, gram_b: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """Torch twin of :func:`mutual_information` (one batched eigvalsh call)."""
    import torch

    alpha = _check_alpha(alpha)
    a = _check_gram_torch(gram_a, "gram_a")
    b = _check_gram_torch(gram_b, "gram_b")
    if a.shape[-1] != b.shape[-1]:
        raise InputError("gram_a and gram_b have different numbers of samples N")
    a, b = torch.broadcast_tensors(a, b)
    stack = torch.stack([_normalise_torch(m) for m in (a, b, a * b)])
    h, _ = _entropy_torch(stack, alpha)
    return h[0] + h[1] - h[2]


def information_plane_torch(
    gram_x: torch.Tensor, gram_layers: torch.Tensor, gram_y: torch.Tensor, alpha: float = 1.0
) -> dict[str, torch.Tensor]:
    """Torch twin of :func:`information_plane`: all 3L + 2 spectra in one batched eigvalsh call.

    Returns the same keys as :func:`information_plane`, as float64 tensors on the input device.
    """
    import torch

    alpha = _check_alpha(alpha)
    x = _check_gram_torch(gram_x, "gram_x")
    y = _check_gram_torch(gram_y, "gram_y")
    t = _check_gram_torch(gram_layers, "gram_layers")
    if x.ndim != 2 or y.ndim != 2:
        raise InputError("gram_x and gram_y must be single (N, N) matrices")
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"gram_layers must have shape (L, N, N), got {tuple(t.shape)}")
    if len({x.shape[-1], y.shape[-1], t.shape[-1]}) > 1:
        raise InputError("gram_x, gram_layers and gram_y have different numbers of samples N")
    count = t.shape[0]
    stack = torch.cat([x[None], y[None], t, x * t, t * y])
    h, c = _entropy_torch(_normalise_torch(stack), alpha)
    h_x, h_y = h[0], h[1]
    h_t, h_xt, h_ty = h[2 : 2 + count], h[2 + count : 2 + 2 * count], h[2 + 2 * count :]
    c_t, c_xt, c_ty = c[2 : 2 + count], c[2 + count : 2 + 2 * count], c[2 + 2 * count :]
    clipped = torch.maximum(torch.stack([c_t, c_xt, c_ty]).max(0).values, torch.maximum(c[0], c[1]))
    return _plane(h_x, h_y, h_t, h_xt, h_ty, clipped)
