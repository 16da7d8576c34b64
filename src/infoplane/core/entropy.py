"""Matrix-based Rényi α-entropy (bits), joint entropy and mutual information of Gram matrices.

Conventions: A = K / tr(K); S_α(A) = log2(Σ λ_i^α) / (1 − α), with the α = 1 limit
−Σ λ_i log2 λ_i; joint entropy S(A, B) = S(A∘B / tr(A∘B)); I = S(A) + S(B) − S(A, B).

Eigenvalues come from the symmetric solver (``eigvalsh``) in float64, batched over stacks
(..., N, N). Rounding leaves tiny negative eigenvalues on PSD matrices; they are clipped to 0, the
rest is renormalised to unit sum, and the clipped mass (sum of |negative eigenvalues| of the
trace-normalised matrix) is returned as a diagnostic - never hidden behind abs(). Eigenvalues
below the solver's rounding level, N·eps·λ_max, count as 0. α = 2 needs no eigendecomposition:
S_2 = −log2 ‖A‖_F². The functions take numpy arrays or torch tensors (any device) and compute
with their array namespace (:mod:`infoplane.core.arrays`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.sparse import csgraph, csr_matrix

from infoplane.core.arrays import (
    as_float64,
    device,
    entr,
    frobenius_squared,
    multiply_into,
    namespace,
    to_numpy,
)
from infoplane.core.distances import check_square_stack
from infoplane.errors import InputError

__all__ = [
    "information_plane",
    "joint_entropy",
    "mutual_information",
    "renyi_entropy",
]

_LN2 = float(np.log(2.0))
# Relative asymmetry tolerated in a Gram matrix before it is rejected.
_SYMMETRY_RTOL = 1e-9
# Below this α the entropy is evaluated in the log1p/expm1 form (accurate near α = 1); above it
# Σ p^α can be tiny and the max-factored form is used.
_NEAR_ONE = 1.5
_EPS = float(np.finfo(np.float64).eps)
# Bytes of float64 matrices handed to one batched eigvalsh call: all of a step at moderate N
# (N = 100: 400 matrices), a few at a time from one reused buffer at large N.
_EIG_BATCH_BYTES = 32 * 2**20


# --------------------------------------------------------------------------------------------
# checks


def _check_alpha(alpha: Any) -> float:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise InputError(f"alpha must be a number > 0, got {alpha!r}") from None
    if not a > 0:  # also rejects NaN
        raise InputError(
            f"alpha must be > 0, got {alpha!r}; use alpha=1 for the Shannon (von Neumann) limit"
        )
    return a


def _check_gram(gram: Any, what: str) -> Any:
    """Finite, square, symmetric stack with positive trace, as float64 (same library, device)."""
    g = check_square_stack(gram, what)
    xp = namespace(g)
    gt = xp.matrix_transpose(g)
    if not bool(xp.all(g == gt)):  # exact symmetry is the rule; the tolerance is the fallback
        scale = max(1.0, float(xp.max(xp.abs(g))))
        if float(xp.max(xp.abs(g - gt))) > _SYMMETRY_RTOL * scale:
            raise InputError(f"{what} is not symmetric; a Gram matrix must equal its transpose")
    if bool(xp.any(xp.linalg.trace(g) <= 0)):
        raise InputError(
            f"{what} has a trace <= 0; a Gram matrix of a positive-definite kernel has a "
            "positive diagonal (check the kernel width and the inputs)"
        )
    return g


def _check_same_n(grams: Sequence[Any], what: str) -> None:
    sizes = {g.shape[-1] for g in grams}
    if len(sizes) > 1:
        raise InputError(
            f"{what} have different numbers of samples N {sorted(sizes)}; every matrix must be "
            "computed on the same probe samples"
        )


# --------------------------------------------------------------------------------------------
# spectra -> entropies


def _entropy_of_probabilities(p: Any, alpha: float) -> Any:
    """Rényi entropy in bits of probability vectors ``p`` (..., n) summing to 1."""
    xp = namespace(p)
    if alpha == 1.0:
        return xp.sum(entr(p, xp), axis=-1) / _LN2
    top = xp.max(p, axis=-1)
    if math.isinf(alpha):
        return -xp.log2(top)
    if alpha < _NEAR_ONE:
        # log Σ p^α = log1p(Σ p·expm1((α−1)·ln p)) as Σ p = 1: no cancellation as α → 1, where
        # the plain form loses digits in proportion to 1/|1 − α|.
        positive = p > 0
        log_p = xp.log(xp.where(positive, p, 1.0))
        terms = xp.where(positive, p * xp.expm1((alpha - 1.0) * log_p), 0.0)
        return xp.log1p(xp.sum(terms, axis=-1)) / ((1.0 - alpha) * _LN2)
    # Σ p^α = top^α · Σ (p/top)^α: the second sum is >= 1, so large α cannot underflow it.
    ratio_sum = xp.sum((p / top[..., None]) ** alpha, axis=-1)
    return (alpha * xp.log2(top) + xp.log2(ratio_sum)) / (1.0 - alpha)


def _entropy_of_spectrum(lam: Any, alpha: float) -> tuple[Any, Any]:
    """Entropies and clipped negative mass from eigenvalues (..., n) of unit-trace matrices."""
    xp = namespace(lam)
    clipped = -xp.sum(xp.minimum(lam, 0.0), axis=-1)
    # |λ| below the rounding level of eigvalsh (N·eps·λ_max) is indistinguishable from 0; without
    # this, the noise on a zero eigenvalue, ~1e-17, adds ~1e-8 bits to S_0.5 of a constant layer.
    noise = lam.shape[-1] * _EPS * xp.max(lam, axis=-1, keepdims=True)
    p = xp.where(lam > noise, lam, 0.0)
    p /= xp.sum(p, axis=-1, keepdims=True)
    return _entropy_of_probabilities(p, alpha), clipped


def _frobenius_entropy(a: Any) -> Any:
    """S_2 = −log2 tr(A²) = −log2 ‖A‖_F² for symmetric unit-trace A; no eigendecomposition."""
    xp = namespace(a)
    return -xp.log2(frobenius_squared(a, xp))


def _normalise(g: Any) -> Any:
    xp = namespace(g)
    return g / xp.linalg.trace(g)[..., None, None]


def _entropy_and_clipped(a: Any, alpha: float) -> tuple[Any, Any]:
    """Entropy of unit-trace symmetric matrices (..., N, N)."""
    xp = namespace(a)
    if alpha == 2.0:
        h = _frobenius_entropy(a)
        return h, xp.zeros_like(h)
    return _entropy_of_spectrum(xp.linalg.eigvalsh(a), alpha)


def _out(h: Any, clipped: Any, return_clipped: bool) -> Any:
    xp = namespace(h)
    h = as_float64(h, xp)
    return (h, as_float64(clipped, xp)) if return_clipped else h


# --------------------------------------------------------------------------------------------
# public API (numpy arrays or torch tensors; results of the same library, on the same device)


def renyi_entropy(gram: Any, alpha: float = 1.0, *, return_clipped: bool = False) -> Any:
    """Matrix-based Rényi α-entropy of Gram matrices, in bits.

    Parameters
    ----------
    gram : array_like or torch.Tensor, shape (..., N, N)
        Symmetric PSD Gram matrices; normalised by their trace inside. Any real dtype, any
        device; the result is a float64 array of the same library on the same device.
    alpha : float
        Order α > 0 (``1`` is the Shannon/von Neumann limit, ``numpy.inf`` the min-entropy).
    return_clipped : bool
        Also return the clipped negative-eigenvalue mass (0 on the α = 2 path, which needs no
        eigenvalues and clips nothing).

    Returns
    -------
    array, shape (...)
        Entropies in [0, log2 N]; with ``return_clipped`` a tuple ``(entropy, clipped_mass)``.
    """
    alpha = _check_alpha(alpha)
    g = _check_gram(gram, "gram")
    h, clipped = _entropy_and_clipped(_normalise(g), alpha)
    return _out(h, clipped, return_clipped)


def _hadamard(grams: Sequence[Any], what: str) -> Any:
    mats = [_check_gram(g, f"{what}[{i}]") for i, g in enumerate(grams)]
    if not mats:
        raise InputError(f"{what} is empty; pass at least one Gram matrix")
    _check_same_n(mats, what)
    try:
        shape = np.broadcast_shapes(*(tuple(m.shape) for m in mats))
    except ValueError:
        raise InputError(
            f"{what} have incompatible batch shapes {[tuple(m.shape) for m in mats]}"
        ) from None
    xp = namespace(*mats)
    prod = xp.asarray(xp.broadcast_to(mats[0], shape), copy=True)
    for m in mats[1:]:
        prod *= m
    return prod


def joint_entropy(grams: Sequence[Any], alpha: float = 1.0, *, return_clipped: bool = False) -> Any:
    """Joint entropy S_α(A_1, …, A_k) = S_α(A_1∘…∘A_k / tr(A_1∘…∘A_k)), in bits.

    Parameters
    ----------
    grams : sequence of array_like, each (..., N, N)
        Gram matrices of the variables (batch shapes broadcast).
    alpha : float
        Order α > 0.
    return_clipped : bool
        Also return the clipped negative-eigenvalue mass.

    Returns
    -------
    array, shape (...)
        float64, of the library and on the device of the inputs.
    """
    alpha = _check_alpha(alpha)
    prod = _hadamard(list(grams), "grams")
    xp = namespace(prod)
    if bool(xp.any(xp.linalg.trace(prod) <= 0)):
        raise InputError("the Hadamard product of grams has a trace <= 0")
    h, clipped = _entropy_and_clipped(_normalise(prod), alpha)
    return _out(h, clipped, return_clipped)


def mutual_information(gram_a: Any, gram_b: Any, alpha: float = 1.0) -> Any:
    """Mutual information I_α(A; B) = S(A) + S(B) − S(A, B), in bits.

    One batched eigendecomposition covers A, B and A∘B. Not clipped at 0: rounding can leave
    values of order 1e-15 below it.

    Parameters
    ----------
    gram_a, gram_b : array_like, shape (..., N, N)
        Gram matrices of the two variables (batch shapes broadcast).
    alpha : float
        Order α > 0.

    Returns
    -------
    array, shape (...)
        float64, of the library and on the device of the inputs.
    """
    alpha = _check_alpha(alpha)
    a = _check_gram(gram_a, "gram_a")
    b = _check_gram(gram_b, "gram_b")
    _check_same_n([a, b], "gram_a and gram_b")
    prod = _hadamard([a, b], "gram_a and gram_b")
    xp = namespace(prod)
    stack = xp.stack([xp.broadcast_to(_normalise(m), prod.shape) for m in (a, b, prod)])
    h, _ = _entropy_and_clipped(stack, alpha)
    return xp.asarray(h[0] + h[1] - h[2])


# --------------------------------------------------------------------------------------------
# information plane of one captured step


def _components(gram: Any) -> list[np.ndarray] | None:
    """Index sets of the blocks of a block-diagonal (up to permutation) Gram; None if one block.

    Exact zeros split the matrix - the label indicator kernel splits into classes, an identity
    input Gram into singletons - and every Hadamard product with it inherits the split, so its
    spectrum is the union of the spectra of much smaller blocks. The index sets are numpy
    arrays whatever the library of ``gram``: the graph search runs on the host, and only when
    row 0 (tested on the device) has a zero.
    """
    xp = namespace(gram)
    if bool(xp.all(gram[0] != 0)):  # sample 0 is linked to every sample: one block (dense)
        return None
    linked = to_numpy(gram != 0)
    count, labels = csgraph.connected_components(csr_matrix(linked), directed=False)
    if count == 1:
        return None
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds)


def _dense_spectra(fills: Sequence[Callable[[Any], float]], n: int, like: Any) -> Any:
    """Eigenvalues (M, n) of M unit-trace matrices, in as few batched eigvalsh calls as possible.

    ``fills[k](out)`` writes matrix k (not yet normalised) into ``out`` and returns its trace:
    the eigenvalues of K / tr K are those of K divided by tr K, which saves a pass per matrix.
    The arrays are of the library and on the device of ``like``.
    """
    xp, dev = namespace(like), device(like)
    lam = xp.empty((len(fills), n), dtype=xp.float64, device=dev)
    per_call = max(1, _EIG_BATCH_BYTES // (8 * n * n))
    buffer = xp.empty((min(per_call, len(fills)), n, n), dtype=xp.float64, device=dev)
    for start in range(0, len(fills), per_call):
        chunk = fills[start : start + per_call]
        stack = buffer[: len(chunk)]
        traces = [fill(stack[k]) for k, fill in enumerate(chunk)]
        traces = xp.asarray(traces, dtype=xp.float64, device=dev)
        lam[start : start + len(chunk)] = xp.linalg.eigvalsh(stack) / traces[:, None]
    return lam


def _block_spectra(factor: Any, layers: Any, blocks: list[np.ndarray]) -> Any:
    """Eigenvalues (L + 1, N) of F / tr F and every T_l∘F / tr(T_l∘F) for a block-split F.

    Blocks of equal size are decomposed in one batched call; 1×1 blocks are read off.
    ``blocks`` are numpy index arrays (:func:`_components`); the matrices may be of any library.
    """
    xp, dev = namespace(factor, layers), device(factor)
    diag_f = xp.linalg.diagonal(factor)
    traces = xp.concat([xp.reshape(xp.sum(diag_f), (1,)), xp.linalg.diagonal(layers) @ diag_f])
    by_size: dict[int, list[np.ndarray]] = {}
    for idx in blocks:
        by_size.setdefault(idx.size, []).append(idx)
    lam = xp.empty((layers.shape[0] + 1, factor.shape[-1]), dtype=xp.float64, device=dev)
    col = 0
    for size, group in sorted(by_size.items()):
        rows = xp.asarray(np.stack(group)[:, :, None], device=dev)  # (B, size, 1)
        cols = xp.permute_dims(rows, (0, 2, 1))  # (B, 1, size)
        sub_f = factor[rows, cols]  # (B, size, size)
        sub = xp.concat([sub_f[None], layers[:, rows, cols] * sub_f])  # (L + 1, B, s, s)
        vals = sub[..., 0, 0] if size == 1 else xp.linalg.eigvalsh(sub)
        vals = xp.reshape(vals, (sub.shape[0], -1))
        lam[:, col : col + vals.shape[1]] = vals
        col += vals.shape[1]
    return lam / traces[:, None]


def _copy_fill(m: Any) -> Callable[[Any], float]:
    def fill(out: Any) -> float:
        out[...] = m
        return float(namespace(m).linalg.trace(m))

    return fill


def _product_fill(a: Any, b: Any) -> Callable[[Any], float]:
    def fill(out: Any) -> float:
        xp = namespace(out)
        multiply_into(a, b, out, xp)
        return float(xp.linalg.trace(out))

    return fill


def _information_plane_spectra(x: Any, t: Any, y: Any, alpha: float) -> tuple[Any, Any]:
    """Entropies and clipped masses, ordered [T_1..T_L, X, X∘T_1.., Y, T_1∘Y..]."""
    n, count = x.shape[-1], t.shape[0]
    fills = [_copy_fill(t[i]) for i in range(count)]
    split = {}
    for key, factor in (("x", x), ("y", y)):
        blocks = _components(factor)
        if blocks is None:
            fills += [_copy_fill(factor)] + [_product_fill(t[i], factor) for i in range(count)]
        else:
            split[key] = _block_spectra(factor, t, blocks)
    dense = _dense_spectra(fills, n, x)
    parts, pos = [dense[:count]], count
    for key in ("x", "y"):
        if key in split:
            parts.append(split[key])
        else:
            parts.append(dense[pos : pos + count + 1])
            pos += count + 1
    return _entropy_of_spectrum(namespace(x).concat(parts), alpha)


def information_plane(
    gram_x: Any, gram_layers: Any, gram_y: Any, alpha: float = 1.0
) -> dict[str, Any]:
    """Every entropy and mutual information of one captured step.

    Parameters
    ----------
    gram_x : array_like or torch.Tensor, shape (N, N)
        Input Gram matrix (the three inputs of one library, on one device).
    gram_layers : array_like, shape (L, N, N)
        One Gram matrix per layer T (softmax included).
    gram_y : array_like, shape (N, N)
        Label Gram matrix.
    alpha : float
        Order α > 0.

    Returns
    -------
    dict of arrays
        float64, of the library and on the device of the inputs:
        ``H_X``, ``H_Y`` (shape ()), ``H_T``, ``H_XT``, ``H_TY``, ``I_XT``, ``I_TY`` and
        ``clipped_mass`` (shape (L,)); ``clipped_mass[l]`` is the largest clipped negative
        eigenvalue mass among the matrices used for layer l (X, Y, T_l, X∘T_l, T_l∘Y).

    Notes
    -----
    3L + 2 spectra are needed; the dense ones share one batched eigvalsh call (several, a few
    matrices each, when the stack would exceed 32 MiB, i.e. from N ≈ 300 for 16 layers). When
    X or Y is block-diagonal up to a permutation (the label indicator kernel; an identity input
    Gram) its products are decomposed per block, which is exact and far cheaper. α = 2 needs no
    eigendecomposition at all.
    """
    alpha = _check_alpha(alpha)
    x = _check_gram(gram_x, "gram_x")
    y = _check_gram(gram_y, "gram_y")
    t = _check_gram(gram_layers, "gram_layers")
    if x.ndim != 2 or y.ndim != 2:
        raise InputError(
            f"gram_x and gram_y must be single (N, N) matrices, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"gram_layers must have shape (L, N, N), got {tuple(t.shape)}")
    _check_same_n([x, t, y], "gram_x, gram_layers and gram_y")
    count = t.shape[0]
    xp = namespace(x, t, y)

    if alpha == 2.0:
        h = xp.concat(
            [
                _frobenius_entropy(_normalise(t)),
                _frobenius_entropy(_normalise(x))[None],
                _frobenius_entropy(_normalise(t * x)),
                _frobenius_entropy(_normalise(y))[None],
                _frobenius_entropy(_normalise(t * y)),
            ]
        )
        c = xp.zeros_like(h)
    else:
        h, c = _information_plane_spectra(x, t, y, alpha)
    h_t, h_x, h_xt = h[:count], h[count], h[count + 1 : 2 * count + 1]
    h_y, h_ty = h[2 * count + 1], h[2 * count + 2 :]
    c_t, c_x, c_xt = c[:count], c[count], c[count + 1 : 2 * count + 1]
    c_y, c_ty = c[2 * count + 1], c[2 * count + 2 :]
    c_xy = xp.broadcast_to(xp.maximum(c_x, c_y), (count,))
    clipped = xp.max(xp.stack([c_t, c_xt, c_ty, c_xy]), axis=0)
    return _plane(xp.asarray(h_x), xp.asarray(h_y), h_t, h_xt, h_ty, clipped)


def _plane(h_x: Any, h_y: Any, h_t: Any, h_xt: Any, h_ty: Any, clipped: Any) -> dict[str, Any]:
    """The result of :func:`information_plane` from its entropies."""
    return {
        "H_X": h_x,
        "H_Y": h_y,
        "H_T": h_t,
        "H_XT": h_xt,
        "H_TY": h_ty,
        "I_XT": h_x + h_t - h_xt,
        "I_TY": h_t + h_y - h_ty,
        "clipped_mass": clipped,
    }
