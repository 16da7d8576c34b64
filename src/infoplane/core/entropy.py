"""Matrix-based Rényi α-entropy (bits), joint entropy and mutual information of Gram matrices.

Conventions: A = K / tr(K); S_α(A) = log2(Σ λ_i^α) / (1 − α), with the α = 1 limit
−Σ λ_i log2 λ_i; joint entropy S(A, B) = S(A∘B / tr(A∘B)); I = S(A) + S(B) − S(A, B).

Eigenvalues come from the symmetric solver (``eigvalsh``) in float64, batched over stacks
(..., N, N). Rounding leaves tiny negative eigenvalues on PSD matrices; they are clipped to 0, the
rest is renormalised to unit sum, and the clipped mass (sum of |negative eigenvalues| of the
trace-normalised matrix) is returned as a diagnostic - never hidden behind abs(). Eigenvalues
below the solver's rounding level, N·eps·λ_max, count as 0. α = 2 needs no eigendecomposition:
S_2 = −log2 ‖A‖_F².
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import special
from scipy.sparse import csgraph, csr_matrix

from infoplane.core.distances import check_square_stack
from infoplane.errors import InputError

__all__ = [
    "information_plane",
    "joint_entropy",
    "mutual_information",
    "renyi_entropy",
]

_LN2 = np.log(2.0)
# Relative asymmetry tolerated in a Gram matrix before it is rejected.
_SYMMETRY_RTOL = 1e-9
# Below this α the entropy is evaluated in the log1p/expm1 form (accurate near α = 1); above it
# Σ p^α can be tiny and the max-factored form is used.
_NEAR_ONE = 1.5
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


def _check_gram(gram: Any, what: str) -> np.ndarray:
    """Finite, square, symmetric stack with positive trace, as float64."""
    g = check_square_stack(gram, what)
    gt = np.swapaxes(g, -1, -2)
    if not np.array_equal(g, gt):  # exact symmetry is the rule; the tolerance is the fallback
        scale = max(1.0, float(np.abs(g).max()))
        if np.abs(g - gt).max() > _SYMMETRY_RTOL * scale:
            raise InputError(f"{what} is not symmetric; a Gram matrix must equal its transpose")
    tr = np.trace(g, axis1=-2, axis2=-1)
    if (tr <= 0).any():
        raise InputError(
            f"{what} has a trace <= 0; a Gram matrix of a positive-definite kernel has a "
            "positive diagonal (check the kernel width and the inputs)"
        )
    return g


def _check_same_n(grams: Sequence[np.ndarray], what: str) -> None:
    sizes = {g.shape[-1] for g in grams}
    if len(sizes) > 1:
        raise InputError(
            f"{what} have different numbers of samples N {sorted(sizes)}; every matrix must be "
            "computed on the same probe samples"
        )


# --------------------------------------------------------------------------------------------
# spectra -> entropies (numpy)


def _entropy_of_probabilities(p: np.ndarray, alpha: float) -> np.ndarray:
    """Rényi entropy in bits of probability vectors ``p`` (..., n) summing to 1."""
    if alpha == 1.0:
        return special.entr(p).sum(axis=-1) / _LN2
    top = p.max(axis=-1)
    if np.isinf(alpha):
        return -np.log2(top)
    if alpha < _NEAR_ONE:
        # log Σ p^α = log1p(Σ p·expm1((α−1)·ln p)) as Σ p = 1: no cancellation as α → 1, where
        # the plain form loses digits in proportion to 1/|1 − α|.
        positive = p > 0
        log_p = np.log(np.where(positive, p, 1.0))
        terms = np.where(positive, p * np.expm1((alpha - 1.0) * log_p), 0.0)
        return np.log1p(terms.sum(axis=-1)) / ((1.0 - alpha) * _LN2)
    # Σ p^α = top^α · Σ (p/top)^α: the second sum is >= 1, so large α cannot underflow it.
    ratio_sum = ((p / top[..., None]) ** alpha).sum(axis=-1)
    return (alpha * np.log2(top) + np.log2(ratio_sum)) / (1.0 - alpha)


def _entropy_of_spectrum(lam: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Entropies and clipped negative mass from eigenvalues (..., n) of unit-trace matrices."""
    clipped = -np.minimum(lam, 0.0).sum(axis=-1)
    # |λ| below the rounding level of eigvalsh (N·eps·λ_max) is indistinguishable from 0; without
    # this, the noise on a zero eigenvalue, ~1e-17, adds ~1e-8 bits to S_0.5 of a constant layer.
    noise = lam.shape[-1] * np.finfo(np.float64).eps * lam.max(axis=-1, keepdims=True)
    p = np.where(lam > noise, lam, 0.0)
    p /= p.sum(axis=-1, keepdims=True)
    return _entropy_of_probabilities(p, alpha), clipped


def _frobenius_entropy(a: np.ndarray) -> np.ndarray:
    """S_2 = −log2 tr(A²) = −log2 ‖A‖_F² for symmetric unit-trace A; no eigendecomposition."""
    return -np.log2(np.einsum("...ij,...ij->...", a, a))


def _normalise(g: np.ndarray) -> np.ndarray:
    return g / np.trace(g, axis1=-2, axis2=-1)[..., None, None]


def _entropy_and_clipped(a: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Entropy of unit-trace symmetric matrices (..., N, N)."""
    if alpha == 2.0:
        h = _frobenius_entropy(a)
        return h, np.zeros_like(h)
    return _entropy_of_spectrum(np.linalg.eigvalsh(a), alpha)


def _out(h: np.ndarray, clipped: np.ndarray, return_clipped: bool) -> Any:
    h = np.asarray(h, dtype=np.float64)
    return (h, np.asarray(clipped, dtype=np.float64)) if return_clipped else h


# --------------------------------------------------------------------------------------------
# public numpy API


def renyi_entropy(gram: Any, alpha: float = 1.0, *, return_clipped: bool = False) -> Any:
    """Matrix-based Rényi α-entropy of Gram matrices, in bits.

    Parameters
    ----------
    gram : array_like, shape (..., N, N)
        Symmetric PSD Gram matrices; normalised by their trace inside.
    alpha : float
        Order α > 0 (``1`` is the Shannon/von Neumann limit, ``numpy.inf`` the min-entropy).
    return_clipped : bool
        Also return the clipped negative-eigenvalue mass (0 on the α = 2 path, which needs no
        eigenvalues and clips nothing).

    Returns
    -------
    numpy.ndarray, shape (...)
        Entropies in [0, log2 N]; with ``return_clipped`` a tuple ``(entropy, clipped_mass)``.
    """
    alpha = _check_alpha(alpha)
    g = _check_gram(gram, "gram")
    h, clipped = _entropy_and_clipped(_normalise(g), alpha)
    return _out(h, clipped, return_clipped)


def _hadamard(grams: Sequence[Any], what: str) -> np.ndarray:
    mats = [_check_gram(g, f"{what}[{i}]") for i, g in enumerate(grams)]
    if not mats:
        raise InputError(f"{what} is empty; pass at least one Gram matrix")
    _check_same_n(mats, what)
    try:
        shape = np.broadcast_shapes(*(m.shape for m in mats))
    except ValueError:
        raise InputError(
            f"{what} have incompatible batch shapes {[m.shape for m in mats]}"
        ) from None
    prod = np.array(np.broadcast_to(mats[0], shape))
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
    numpy.ndarray, shape (...)
    """
    alpha = _check_alpha(alpha)
    prod = _hadamard(list(grams), "grams")
    if (np.trace(prod, axis1=-2, axis2=-1) <= 0).any():
        raise InputError("the Hadamard product of grams has a trace <= 0")
    h, clipped = _entropy_and_clipped(_normalise(prod), alpha)
    return _out(h, clipped, return_clipped)


def mutual_information(gram_a: Any, gram_b: Any, alpha: float = 1.0) -> np.ndarray:
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
    numpy.ndarray, shape (...)
    """
    alpha = _check_alpha(alpha)
    a = _check_gram(gram_a, "gram_a")
    b = _check_gram(gram_b, "gram_b")
    _check_same_n([a, b], "gram_a and gram_b")
    prod = _hadamard([a, b], "gram_a and gram_b")
    stack = np.stack([np.broadcast_to(_normalise(m), prod.shape) for m in (a, b, prod)])
    h, _ = _entropy_and_clipped(stack, alpha)
    return np.asarray(h[0] + h[1] - h[2])


# --------------------------------------------------------------------------------------------
# information plane of one captured step


def _components(gram: np.ndarray) -> list[np.ndarray] | None:
    """Index sets of the blocks of a block-diagonal (up to permutation) Gram; None if one block.

    Exact zeros split the matrix - the label indicator kernel splits into classes, an identity
    input Gram into singletons - and every Hadamard product with it inherits the split, so its
    spectrum is the union of the spectra of much smaller blocks.
    """
    if np.all(gram[0] != 0):  # sample 0 is linked to every sample: one block (the dense case)
        return None
    count, labels = csgraph.connected_components(csr_matrix(gram != 0), directed=False)
    if count == 1:
        return None
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds)


def _dense_spectra(fills: Sequence[Callable[[np.ndarray], float]], n: int) -> np.ndarray:
    """Eigenvalues (M, n) of M unit-trace matrices, in as few batched eigvalsh calls as possible.

    ``fills[k](out)`` writes matrix k (not yet normalised) into ``out`` and returns its trace:
    the eigenvalues of K / tr K are those of K divided by tr K, which saves a pass per matrix.
    """
    lam = np.empty((len(fills), n))
    per_call = max(1, _EIG_BATCH_BYTES // (8 * n * n))
    buffer = np.empty((min(per_call, len(fills)), n, n))
    for start in range(0, len(fills), per_call):
        chunk = fills[start : start + per_call]
        stack = buffer[: len(chunk)]
        traces = np.array([fill(out) for fill, out in zip(chunk, stack, strict=True)])
        lam[start : start + len(chunk)] = np.linalg.eigvalsh(stack) / traces[:, None]
    return lam


def _block_spectra(factor: np.ndarray, layers: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """Eigenvalues (L + 1, N) of F / tr F and every T_l∘F / tr(T_l∘F) for a block-split F.

    Blocks of equal size are decomposed in one batched call; 1×1 blocks are read off.
    """
    diag_f = np.diagonal(factor)
    traces = np.concatenate([[diag_f.sum()], np.diagonal(layers, axis1=-2, axis2=-1) @ diag_f])
    by_size: dict[int, list[np.ndarray]] = {}
    for idx in blocks:
        by_size.setdefault(idx.size, []).append(idx)
    lam = np.empty((layers.shape[0] + 1, factor.shape[-1]))
    col = 0
    for size, group in sorted(by_size.items()):
        rows = np.stack(group)[:, :, None]  # (B, size, 1)
        cols = rows.transpose(0, 2, 1)  # (B, 1, size)
        sub_f = factor[rows, cols]  # (B, size, size)
        sub = np.concatenate([sub_f[None], layers[:, rows, cols] * sub_f])  # (L + 1, B, s, s)
        vals = sub[..., 0, 0] if size == 1 else np.linalg.eigvalsh(sub)
        vals = vals.reshape(sub.shape[0], -1)
        lam[:, col : col + vals.shape[1]] = vals
        col += vals.shape[1]
    return lam / traces[:, None]


def _copy_fill(m: np.ndarray) -> Callable[[np.ndarray], float]:
    def fill(out: np.ndarray) -> float:
        np.copyto(out, m)
        return float(np.trace(m))

    return fill


def _product_fill(a: np.ndarray, b: np.ndarray) -> Callable[[np.ndarray], float]:
    def fill(out: np.ndarray) -> float:
        np.multiply(a, b, out=out)
        return float(np.trace(out))

    return fill


def _information_plane_spectra(
    x: np.ndarray, t: np.ndarray, y: np.ndarray, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
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
    dense = _dense_spectra(fills, n)
    parts, pos = [dense[:count]], count
    for key in ("x", "y"):
        if key in split:
            parts.append(split[key])
        else:
            parts.append(dense[pos : pos + count + 1])
            pos += count + 1
    return _entropy_of_spectrum(np.concatenate(parts), alpha)


def information_plane(
    gram_x: Any, gram_layers: Any, gram_y: Any, alpha: float = 1.0
) -> dict[str, np.ndarray]:
    """Every entropy and mutual information of one captured step.

    Parameters
    ----------
    gram_x : array_like, shape (N, N)
        Input Gram matrix.
    gram_layers : array_like, shape (L, N, N)
        One Gram matrix per layer T (softmax included).
    gram_y : array_like, shape (N, N)
        Label Gram matrix.
    alpha : float
        Order α > 0.

    Returns
    -------
    dict of numpy.ndarray
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
            f"gram_x and gram_y must be single (N, N) matrices, got {x.shape} and {y.shape}"
        )
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise InputError(f"gram_layers must have shape (L, N, N), got {t.shape}")
    _check_same_n([x, t, y], "gram_x, gram_layers and gram_y")
    count = t.shape[0]

    if alpha == 2.0:
        h = np.concatenate(
            [
                _frobenius_entropy(_normalise(t)),
                _frobenius_entropy(_normalise(x))[None],
                _frobenius_entropy(_normalise(t * x)),
                _frobenius_entropy(_normalise(y))[None],
                _frobenius_entropy(_normalise(t * y)),
            ]
        )
        c = np.zeros_like(h)
    else:
        h, c = _information_plane_spectra(x, t, y, alpha)
    h_t, h_x, h_xt = h[:count], h[count], h[count + 1 : 2 * count + 1]
    h_y, h_ty = h[2 * count + 1], h[2 * count + 2 :]
    c_t, c_x, c_xt = c[:count], c[count], c[count + 1 : 2 * count + 1]
    c_y, c_ty = c[2 * count + 1], c[2 * count + 2 :]
    clipped = np.maximum.reduce([c_t, c_xt, c_ty, np.full(count, max(c_x, c_y))])
    return _plane(np.asarray(h_x), np.asarray(h_y), h_t, h_xt, h_ty, clipped)


def _plane(h_x: Any, h_y: Any, h_t: Any, h_xt: Any, h_ty: Any, clipped: Any) -> dict[str, Any]:
    """The result of :func:`information_plane` (numpy) or its torch twin from its entropies."""
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
