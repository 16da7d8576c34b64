"""Randomized spectral sums for large Gram matrices: tr f(A) without an eigendecomposition.

For the matrix-based entropies of N×N trace-normalised Grams A (eigenvalues in [0, 1], summing
to 1) the exact route is ``eigvalsh``, O(N³). Here ``tr f(A)`` for ``f(λ) = λ^α`` or
``f(λ) = −λ log2 λ`` is estimated in O(k·(r + m)·N²) by Hutch++-style deflation and stochastic
Lanczos quadrature (SLQ):

1. a randomized range finder (subspace iteration) gives an orthonormal basis Q (N, r) of the
   dominant eigenspace, where kernel Grams hold most of their mass;
2. ``tr(Qᵀ f(A) Q)`` is computed by Lanczos quadrature started from every column of Q
   (deterministic);
3. the rest, ``tr(P f(A) P)`` with P = I − QQᵀ, is the mean of ``vᵀ f(A) v`` over m Rademacher
   probes v projected by P, again by Lanczos quadrature.

Both parts share one batched Lanczos recurrence (one N×N by N×(r + m) product per step) with
full reorthogonalisation. Each start vector's quadrature is bracketed: its k-point Gauss rule
and its Gauss–Radau rule with a node fixed at 0 err on opposite sides for these functions, so the
estimate takes their midpoint and half their distance is a bound on the quadrature error (Golub
and Meurant). The reported error is the standard error over the probes, and that bound beside
it; the tests hold both the estimate and its error against ``eigvalsh``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.linalg import eigh_tridiagonal

from infoplane.core.arrays import device, is_numpy, namespace, to_numpy
from infoplane.core.distances import check_square_stack
from infoplane.core.entropy import (
    _block_spectra,
    _components,
    _entropy_and_clipped,
    _entropy_of_spectrum,
    _normalise,
)
from infoplane.errors import InputError

_LN2 = math.log(2.0)


@dataclass(frozen=True)
class SpectralEstimate:
    """An estimate of a spectral quantity (same units for all three fields).

    ``stderr`` is the standard error over the random probes; ``bound`` bounds the quadrature's
    bias (the Gauss/Gauss–Radau bracket), which does not average out over probes.
    """

    value: float
    stderr: float
    bound: float = 0.0

    def bar(self, z: float) -> float:
        """The error bar of ``z`` standard errors plus the quadrature bound."""
        return z * self.stderr + self.bound


#: Below this |α − 1| the power sum is estimated as its offset from tr A = 1 (see below).
_NEAR_ONE = 0.5


def _spectral_function(alpha: float) -> tuple[Any, float]:
    """(f, c) with f(0) = 0 and the sum behind S_α equal to c + tr f(A) (tr A = 1 is used).

    α = 1: f(λ) = −λ log2 λ, c = 0 (the entropy itself). Near α = 1: f(λ) = λ^α − λ =
    λ·expm1((α − 1) ln λ) and c = 1, so the estimate, and its error, stay on the scale of the
    entropy instead of being divided by (1 − α). Otherwise f(λ) = λ^α, c = 0.
    """

    def terms(lam: np.ndarray) -> np.ndarray:
        lam = np.clip(lam, 0.0, None)
        positive = lam > 0
        log_lam = np.log(np.where(positive, lam, 1.0))
        if alpha == 1.0:
            return np.where(positive, -lam * log_lam / _LN2, 0.0)
        if abs(alpha - 1.0) < _NEAR_ONE:
            return np.where(positive, lam * np.expm1((alpha - 1.0) * log_lam), 0.0)
        return np.where(positive, np.exp(alpha * log_lam), 0.0)

    return terms, 0.0 if alpha == 1.0 or abs(alpha - 1.0) >= _NEAR_ONE else 1.0


def _lanczos_recurrence(
    a: Any, starts: np.ndarray, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lanczos tridiagonals of every column s of ``starts`` (N, c), run together.

    Each step is one product A @ (N, c), in the dtype of ``a`` (a float32 operator halves the
    memory traffic that bounds it at large N; the recurrence itself stays float64), with full
    reorthogonalisation. ``a`` may be any array of the core (numpy, or torch on a GPU): the
    recurrence runs on its device and only the tridiagonals come back to the host. Returns the
    column norms (c,), the diagonals (steps, c) and the off-diagonals (steps, c), as numpy:
    ``off[j]`` is β_{j+1}, so ``off[steps − 1]`` is the coupling to the next (not taken) step
    that the Gauss–Radau rule needs.
    """
    xp = namespace(a)
    at = device(a)
    n, c = starts.shape
    norms = np.linalg.norm(starts, axis=0)
    q = starts / np.where(norms > 0, norms, 1.0)  # a zero column stays zero
    q = xp.asarray(np.ascontiguousarray(q.T), device=at)  # one Lanczos vector per row
    basis = xp.zeros((c, steps, n), dtype=xp.float64, device=at)
    diag = xp.zeros((steps, c), dtype=xp.float64, device=at)
    off = xp.zeros((steps, c), dtype=xp.float64, device=at)
    q_prev = xp.zeros_like(q)
    b_prev = xp.zeros((c,), dtype=xp.float64, device=at)
    for j in range(steps):
        basis[:, j, :] = q
        w = xp.astype(a @ xp.astype(q.T, a.dtype), xp.float64, copy=False).T
        diag[j, :] = xp.sum(q * w, axis=1)
        w = w - (diag[j, :][:, None] * q + b_prev[:, None] * q_prev)
        # full reorthogonalisation (twice is enough) keeps the quadrature free of ghost nodes;
        # batched per column: (c, j, n) @ (c, n, 1)
        done_basis = basis[:, : j + 1, :]
        for _ in range(2):
            coef = xp.matmul(done_basis, w[:, :, None])
            w = w - xp.matmul(xp.permute_dims(done_basis, (0, 2, 1)), coef)[:, :, 0]
        b = xp.linalg.vector_norm(w, axis=1)
        # an invariant subspace: the quadrature is exact; later nodes carry no weight
        scale = xp.maximum(xp.max(xp.abs(diag[: j + 1, :]), axis=0), xp.ones_like(b))
        done = b <= 1e-12 * scale
        b = xp.where(done, xp.zeros_like(b), b)
        off[j, :] = b
        q_prev = q
        q = xp.where(
            done[:, None], xp.zeros_like(w), w / xp.where(done, xp.ones_like(b), b)[:, None]
        )
        b_prev = b
    return norms, to_numpy(diag), to_numpy(off)


def _radau_rule(
    diag: np.ndarray, off: np.ndarray, gauss: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the (k + 1)-point Gauss–Radau rule with a node fixed at 0.

    ``gauss`` is the k-point Gauss rule of the same tridiagonal (nodes, eigenvectors). The Radau
    rule appends the node 0 to the Jacobi matrix T_k: its new last diagonal entry is
    ω = β_k² · [T_k⁻¹]_kk (Golub and Meurant, *Matrices, Moments and Quadrature*, ch. 6); the
    caller makes sure T_k has no node at 0.
    """
    nodes, vectors = gauss
    k = diag.size
    omega = off[k - 1] ** 2 * float(np.sum(vectors[-1] ** 2 / nodes))
    r_nodes, r_vectors = eigh_tridiagonal(np.append(diag, omega), off[:k])
    return r_nodes, r_vectors[0] ** 2


def _lanczos_quadrature(
    a: Any, starts: np.ndarray, steps: int, fn
) -> tuple[np.ndarray, np.ndarray]:
    """``sᵀ f(A) s`` for every column s of ``starts`` (N, c) by its Gauss and Gauss–Radau rules.

    Both rules come from one ``steps``-step Lanczos recurrence (:func:`_lanczos_recurrence`).
    For the functions used here (λ^α, λ^α − λ, −λ log λ), the derivatives of orders 2k and
    2k + 1 have opposite signs on (0, 1] once 2k > α + 1. The k-point Gauss rule errs by the
    sign of the first, the Radau rule fixed at the lower end of the spectrum, 0, by the sign of
    the second, so the two bracket the true value for every start vector: their midpoint is the
    estimate and half their distance bounds its quadrature error. Where the recurrence ended in
    an invariant subspace the Gauss rule is exact and stands for both; where the Gauss rule has
    a node at the rounding level of 0, T_k is singular and the Radau rule undefined, and the
    Gauss rule stands for both too (that vector's bound is then 0: its mass at 0, where
    f(0) = 0, is what the Radau node would have added).
    """
    n = starts.shape[0]
    steps = max(1, min(steps, n))
    norms, diag, off = _lanczos_recurrence(a, starts, steps)
    live = np.flatnonzero(norms > 0)
    gauss = {
        col: eigh_tridiagonal(diag[:, col], off[: steps - 1, col]) for col in live
    }  # fmt: skip
    # as for eigvalsh: nodes below the rounding level N·eps·λ_max count as 0
    top = max((float(nodes.max()) for nodes, _ in gauss.values()), default=0.0)
    floor = n * np.finfo(np.float64).eps * top
    values = np.zeros((2, starts.shape[1]))
    for col in live:
        rules = [(gauss[col][0], gauss[col][1][0] ** 2)]
        exact = off[steps - 1, col] == 0 or gauss[col][0].min() <= floor
        rules.append(rules[0] if exact else _radau_rule(diag[:, col], off[:, col], gauss[col]))
        for row, (nodes, weights) in enumerate(rules):
            # the spectrum of a unit-trace PSD matrix lies in [0, 1]
            nodes = np.clip(np.where(nodes > floor, nodes, 0.0), 0.0, 1.0)
            values[row, col] = norms[col] ** 2 * float(np.sum(weights * fn(nodes)))
    return values[0], values[1]


def _dominant_basis(a: Any, rank: int, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal (N, rank) basis of the dominant eigenspace: two subspace iterations.

    The products run on the device of ``a``; the basis comes back as numpy (it is small), so
    that the probes, drawn on the host, are the same on every device.
    """
    xp = namespace(a)

    def product(x: Any) -> Any:
        return xp.astype(a @ xp.astype(x, a.dtype), xp.float64, copy=False)

    y = product(xp.asarray(rng.standard_normal((a.shape[0], rank)), device=device(a)))
    for _ in range(2):
        y = product(xp.linalg.qr(y)[0])
    return to_numpy(xp.linalg.qr(y)[0])


def _trace_function(
    a: np.ndarray, alpha: float, probes: int, steps: int, rank: int, seed: Any
) -> SpectralEstimate:
    """:func:`trace_function_estimate` of a checked, trace-normalised ``a`` (any float dtype)."""
    n = a.shape[0]
    fn, offset = _spectral_function(float(alpha))
    rng = np.random.default_rng(seed)
    rank = min(rank, n - 1)
    basis = _dominant_basis(a, rank, rng) if rank else np.zeros((n, 0))
    v = rng.choice(np.array([-1.0, 1.0]), size=(n, probes))
    v -= basis @ (basis.T @ v)  # P v: the probes see only the rest of the spectrum
    gauss, radau = _lanczos_quadrature(a, np.concatenate([basis, v], axis=1), steps, fn)
    # per start vector: the midpoint of the bracket, and half its width (a bound)
    mid, half = (gauss + radau) / 2.0, np.abs(gauss - radau) / 2.0
    total = mid[:rank].sum() + mid[rank:].mean()
    sampling = mid[rank:].std(ddof=1) / math.sqrt(probes)
    bound = half[:rank].sum() + half[rank:].mean()
    return SpectralEstimate(float(offset + total), float(sampling), float(bound))


def _entropy_from_sum(est: SpectralEstimate, alpha: float) -> SpectralEstimate:
    """S_α from the estimate of its spectral sum (see :func:`_spectral_function`)."""
    if alpha == 1.0:
        return est
    # S = log2 tr(A^α) / (1 − α), its error propagated to first order
    total = max(est.value, np.finfo(float).tiny)
    value = math.log2(total) / (1.0 - alpha)
    scale = 1.0 / (abs(1.0 - alpha) * total * _LN2)
    return SpectralEstimate(value, est.stderr * scale, est.bound * scale)


def trace_function_estimate(
    a: Any,
    alpha: float,
    *,
    probes: int = 32,
    steps: int = 40,
    rank: int = 32,
    seed: int = 0,
) -> SpectralEstimate:
    """Randomized estimate of the spectral sum behind S_α of one trace-normalised Gram.

    Parameters
    ----------
    a : array_like, shape (N, N)
        Symmetric positive semi-definite, trace-normalised (tr A = 1).
    alpha : float
        Rényi order (> 0): the estimate is −tr(A log2 A) for 1, tr(A^α) otherwise.
    probes, steps, rank
        Rademacher probes m, Lanczos steps k and the deflated rank r (see the module docstring).
    seed
        Seed of the probes and of the range finder (an int or a sequence of ints, as for
        :func:`numpy.random.default_rng`): the same seed gives the same estimate.
    """
    a = check_square_stack(a, "a")
    if a.ndim != 2:
        raise InputError(f"a must be one (N, N) matrix, got shape {a.shape}")
    _check_settings(probes, steps, rank)
    return _trace_function(a, float(alpha), probes, steps, rank, seed)


def _check_settings(probes: Any, steps: Any, rank: Any) -> None:
    if probes < 2 or steps < 1 or rank < 0:
        raise InputError(f"need probes >= 2, steps >= 1, rank >= 0; got {probes}, {steps}, {rank}")


def renyi_entropy_estimate(
    gram: Any,
    alpha: float = 1.0,
    *,
    probes: int = 32,
    steps: int = 40,
    rank: int = 32,
    seed: int = 0,
) -> SpectralEstimate:
    """Randomized matrix-based Rényi entropy (bits) of one Gram, with its errors.

    The Gram is trace-normalised first (A = K / tr K). S_α = log2 tr(A^α) / (1 − α), and the
    error of tr(A^α) is propagated to first order; α = 1 is −tr(A log2 A) directly. See
    :func:`trace_function_estimate` for the parameters.
    """
    g = check_square_stack(gram, "gram")
    if g.ndim != 2:
        raise InputError(f"gram must be one (N, N) matrix, got shape {g.shape}")
    trace = float(np.trace(g))
    if not trace > 0:
        raise InputError("gram has a trace <= 0; a Gram matrix has a positive diagonal")
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise InputError(f"alpha must be finite and > 0, got {alpha!r}")
    _check_settings(probes, steps, rank)
    est = _trace_function(g / trace, alpha, probes, steps, rank, seed)
    return _entropy_from_sum(est, alpha)


# --------------------------------------------------------------------------------------------
# the information plane of one point, one layer at a time (large N)

#: The reported error bar of a randomized entropy: this many standard errors over the probes,
#: plus the quadrature's bound.
ERROR_BAR = 3.0


def randomized_at(spectrum: Mapping[str, Any] | None, n: int, alpha: float | None = None) -> bool:
    """Whether a preset's ``spectrum`` settings take randomized spectra for N×N matrices.

    None (no settings) and ``method: exact`` never do; ``lanczos`` always does; ``auto`` does
    above ``threshold`` rows. α = 2 never does (S_2 = −log2 ‖A‖²_F needs no spectrum).
    """
    if spectrum is None or alpha == 2.0:
        return False
    method = spectrum["method"]
    return method == "lanczos" or (method == "auto" and n > spectrum["threshold"])


@dataclass(frozen=True)
class Entropy:
    """One entropy (bits) with its error bar (bits; 0 when exact) and clipped eigenvalue mass."""

    value: float
    error: float = 0.0
    clipped: float = 0.0


def _normalised(gram: Any, other: Any, dtype: str) -> Any:
    """(gram ∘ other) / tr(gram ∘ other) in ``dtype`` (on numpy without a float64 temporary)."""
    xp = namespace(gram, other)
    if is_numpy(xp):
        out = np.empty(gram.shape, dtype=dtype)
        if other is None:
            np.copyto(out, gram, casting="same_kind")
        else:
            np.multiply(gram, other, out=out, casting="same_kind")
    else:
        out = xp.astype(gram if other is None else gram * other, getattr(xp, dtype))
    trace = float(xp.sum(xp.astype(xp.linalg.diagonal(out), xp.float64)))
    if not trace > 0:
        raise InputError("a Gram matrix has a trace <= 0 (check the kernel width and the inputs)")
    out *= 1.0 / trace
    return out


def _randomized(
    gram: np.ndarray, other: np.ndarray | None, alpha: float, spectrum: Mapping, seed: Any
) -> Entropy:
    a = _normalised(gram, other, spectrum["dtype"])
    est = _trace_function(
        a, alpha, spectrum["probes"], spectrum["steps"], spectrum["rank"], seed
    )  # fmt: skip
    est = _entropy_from_sum(est, alpha)
    return Entropy(est.value, est.bar(ERROR_BAR))


def _exact(gram: np.ndarray, other: np.ndarray | None, alpha: float) -> Entropy:
    h, clipped = _entropy_and_clipped(_normalise(gram if other is None else gram * other), alpha)
    return Entropy(float(h), 0.0, float(clipped))


@dataclass(frozen=True)
class Factor:
    """The input or label Gram F of a point, prepared for the joint entropies of every layer.

    ``blocks`` are its index blocks when F is block-diagonal up to a permutation (the label
    indicator kernel) with blocks small enough for exact spectra: then F and every T∘F are
    decomposed per block, exactly.
    """

    gram: np.ndarray
    entropy: Entropy
    blocks: list[np.ndarray] | None


def _block_entropies(gram: Any, layer: Any, blocks: list[np.ndarray], alpha: float) -> Entropy:
    xp = namespace(gram)
    empty = xp.empty((0, *gram.shape), dtype=gram.dtype, device=device(gram))
    layers = empty if layer is None else layer[None]
    lam = _block_spectra(gram, layers, blocks)[-1]
    h, clipped = _entropy_of_spectrum(lam, alpha)
    return Entropy(float(h), 0.0, float(clipped))


def _entropy(
    gram: np.ndarray,
    other: np.ndarray | None,
    alpha: float,
    spectrum: Mapping | None,
    seed: Any,
) -> Entropy:
    """S_α of gram (∘ other): randomized where ``spectrum`` says so, exact otherwise."""
    if randomized_at(spectrum, gram.shape[-1], alpha):
        return _randomized(gram, other, alpha, spectrum, seed)
    return _exact(gram, other, alpha)


def plane_factor(gram: Any, alpha: float, spectrum: Mapping | None, seed: Any) -> Factor:
    """Prepare the input or label Gram of a point (see :class:`Factor`) and take its entropy.

    ``spectrum`` holds a preset's settings (``method``, ``threshold``, ``probes``, ``rank``,
    ``steps``, ``dtype``); ``seed`` seeds the randomized estimate (a sequence of ints).
    """
    g = check_square_stack(gram, "gram")
    blocks = _components(g)
    limit = np.inf if spectrum is None else spectrum["threshold"]
    if blocks is not None and max(b.size for b in blocks) <= limit:
        return Factor(g, _block_entropies(g, None, blocks, alpha), blocks)
    return Factor(g, _entropy(g, None, alpha, spectrum, seed), None)


def layer_entropies(
    gram_t: Any,
    x: Factor,
    y: Factor,
    alpha: float,
    spectrum: Mapping | None,
    seed: Sequence[int],
) -> dict[str, Entropy]:
    """H(T), H(X, T) and H(T, Y) of one layer's Gram, each with its error bar.

    Only one N×N product (and its float32 copy) exists at a time beside the inputs, so a point
    of N = 10⁴ samples needs a few GB whatever its number of layers.
    """
    t = check_square_stack(gram_t, "gram_t")
    out = {"H_T": _entropy(t, None, alpha, spectrum, [*seed, 0])}
    for key, factor, kind in (("H_XT", x, 1), ("H_TY", y, 2)):
        if factor.blocks is not None:
            out[key] = _block_entropies(factor.gram, t, factor.blocks, alpha)
        else:
            out[key] = _entropy(t, factor.gram, alpha, spectrum, [*seed, kind])
    return out
