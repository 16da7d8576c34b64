"""Kernel widths σ (paper convention exp(−d²/σ²)) from squared distances.

Rules: fixed; Silverman and Scott (textbook rules for exp(−d²/(2s²)), converted with σ = √2·s,
with the data spread read off the distances); the median heuristic; and the paper's rule, the
argmax over a grid of the kernel alignment with the label Gram, optionally smoothed along steps.

The alignment search costs at most O(G·N²) on cached distances and forms no N×N matrix product:
only the N(N−1)/2 pairs above the diagonal are used (the diagonal of an RBF Gram is 1), and the
sums over pairs are evaluated by a Taylor series about the middle of the range of distances for
the widths where it converges fast (O(N²) once, then O(1) per width), by exponentials in small
cache-resident tiles of (widths × pairs) for the rest.

Above ``EXACT_SEARCH_MAX_N`` samples (1000) the whole grid is no longer scored on every pair: the
alignment of every width is first estimated on a seeded sample of ``SEARCH_SAMPLE_PAIRS`` pairs,
with its standard error (delta method on the two sums); the widths whose estimate lies within
``SEARCH_Z`` standard errors of the sampled maximum (at most ``SEARCH_WINDOW_MAX``, always the
argmax's neighbours) are then scored exactly on every pair, row block by row block, and the
exact argmax among them is returned. It is the grid argmax unless the true argmax's sampled
score fell more than ``SEARCH_Z`` standard errors short (then a width of nearly the same
alignment is returned); the cost is O(G·M + W·N²) instead of O(G·N²), with no N×N temporary.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from infoplane.core.distances import check_square_stack
from infoplane.core.kernels import EXP_FLOOR, check_distances
from infoplane.errors import InputError

__all__ = [
    "alignment_scores",
    "alignment_width",
    "median_width",
    "scott_width",
    "select_width",
    "silverman_width",
    "smooth_widths",
    "width_grid",
]

GridKind = Literal["linear", "log"]

# Lower end of the paper's linear grid, linspace(0.3, 10 · mean distance, G).
_PAPER_GRID_LOW = 0.3
# float64 elements per tile of exponentials in the alignment search (512 KiB: stays in L2).
_TILE_ELEMENTS = 1 << 16
# Sums Σ_p w_p exp(−r·d_p) over the pairs use a Taylor series about the middle of the range of
# d where r·(half-range) <= _SERIES_RADIUS (most of the paper's grid), exponentials elsewhere.
_SERIES_RADIUS = 2.0
_MOMENT_CHUNK = 1 << 15  # pairs per chunk of the moment passes (256 KiB of float64)
#: Largest N searched exactly over the whole grid (today's O(G·N²) search, bit for bit).
EXACT_SEARCH_MAX_N = 1000
#: Pairs drawn (seeded, with replacement) to locate the argmax above EXACT_SEARCH_MAX_N.
SEARCH_SAMPLE_PAIRS = 1 << 18
#: Seed of that sample: a search is a deterministic function of its inputs.
SEARCH_SEED = 0
#: Widths within this many standard errors of the sampled maximum are scored exactly.
SEARCH_Z = 4.0
#: At most this many widths are scored exactly over all pairs.
SEARCH_WINDOW_MAX = 12
# Up to this many widths, the exact window is scored by exponentials rather than the series.
_DIRECT_WINDOW_MAX = 8
# Width returned when every distance is zero: any width then gives the same (all-ones) Gram.
_DEGENERATE_WIDTH = 1.0


# --------------------------------------------------------------------------------------------
# helpers


def _check_d2(d2: Any) -> np.ndarray:
    d2 = check_distances(d2)
    if np.diagonal(d2, axis1=-2, axis2=-1).any():
        raise InputError(
            "d2 has a non-zero diagonal; squared distances of a sample to itself must be 0"
        )
    return d2


def _check_dim(dim: Any) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
        raise InputError(f"dim (features per sample) must be a positive integer, got {dim!r}")
    return int(dim)


def _scalar_or_array(values: np.ndarray) -> Any:
    return float(values) if values.ndim == 0 else values


@lru_cache(maxsize=2)  # 16·N²/2 bytes each: 8 MB at N = 1000
def _upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, 1)


def _spread_std(d2: np.ndarray, dim: int) -> np.ndarray:
    # mean_ij ‖x_i − x_j‖² (diagonal included) = 2 · total variance, so the average
    # per-dimension standard deviation is sqrt(mean(d2) / (2 · dim)).
    return np.sqrt(d2.mean(axis=(-2, -1)) / (2.0 * dim))


def _rule_of_thumb(d2: Any, dim: Any, factor: Any) -> Any:
    d2 = _check_d2(d2)
    dim = _check_dim(dim)
    n = d2.shape[-1]
    s = _spread_std(d2, dim) * factor(n, dim)
    sigma = np.where(s > 0, math.sqrt(2.0) * s, _DEGENERATE_WIDTH)
    return _scalar_or_array(sigma)


# --------------------------------------------------------------------------------------------
# closed-form rules


def silverman_width(d2: Any, dim: int) -> Any:
    """Silverman's rule of thumb, in the paper's convention.

    s = std · (4 / ((dim + 2) · N))^(1 / (dim + 4)) for exp(−d²/(2s²)); returns σ = √2·s. The
    per-dimension std is sqrt(mean(d2) / (2·dim)), mean over all pairs incl. the diagonal.

    Parameters
    ----------
    d2 : array_like, shape (..., N, N)
        Squared distances.
    dim : int
        Number of features per sample (flattened size).

    Returns
    -------
    float, or numpy.ndarray of shape (...) for a stack. 1.0 when all distances are zero.
    """
    return _rule_of_thumb(d2, dim, lambda n, d: (4.0 / ((d + 2.0) * n)) ** (1.0 / (d + 4.0)))


def scott_width(d2: Any, dim: int) -> Any:
    """Scott's rule, s = std · N^(−1 / (dim + 4)), returned as σ = √2·s.

    Parameters and return value as for :func:`silverman_width`.
    """
    return _rule_of_thumb(d2, dim, lambda n, d: n ** (-1.0 / (d + 4.0)))


def median_width(d2: Any) -> Any:
    """Median heuristic: σ = median distance ‖x_i − x_j‖ over the pairs i < j.

    In the paper's convention exp(−d²/σ²) (equivalently s = median/√2 for exp(−d²/(2s²))).
    When more than half the pairs coincide the median of the non-zero distances is used; when
    all distances are zero, 1.0.

    Parameters
    ----------
    d2 : array_like, shape (..., N, N)

    Returns
    -------
    float, or numpy.ndarray of shape (...) for a stack.
    """
    d2 = _check_d2(d2)
    iu = _upper_pairs(d2.shape[-1])
    flat = d2[..., iu[0], iu[1]].reshape(-1, iu[0].size)
    out = np.empty(flat.shape[0])
    for k, pairs in enumerate(flat):
        dist = np.sqrt(pairs)
        med = np.median(dist)
        if med == 0:
            positive = dist[dist > 0]
            med = np.median(positive) if positive.size else _DEGENERATE_WIDTH
        out[k] = med
    return _scalar_or_array(out.reshape(d2.shape[:-2]))


# --------------------------------------------------------------------------------------------
# alignment search


def width_grid(d2: Any, kind: GridKind = "linear", points: int = 100) -> np.ndarray:
    """Candidate widths for the alignment search.

    ``"linear"``: the paper's ``linspace(0.3, 10·m, points)``, m the mean distance over all N²
    pairs including the zero diagonal. Where 10·m <= 0.3 (tiny activations) that grid would run
    backwards; it becomes ``linspace(10·m / points, 10·m, points)``.
    ``"log"``: ``geomspace(m / 100, 10·m, points)``, three decades with the same upper end,
    finer where narrow kernels are.
    When all distances are zero (any width is then equivalent) m is taken as 1.

    Parameters
    ----------
    d2 : array_like, shape (..., N, N)
    kind : {"linear", "log"}
    points : int
        Grid size G >= 2.

    Returns
    -------
    numpy.ndarray, shape (..., G), increasing and positive.
    """
    return _grid(_check_d2(d2), kind, points)


def _grid(d2: np.ndarray, kind: str, points: Any) -> np.ndarray:
    if kind not in ("linear", "log"):
        raise InputError(f"grid kind must be 'linear' or 'log', got {kind!r}")
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < 2:
        raise InputError(f"points must be an integer >= 2, got {points!r}")
    n = d2.shape[-1]
    if n > EXACT_SEARCH_MAX_N:  # no N×N temporary for a large matrix
        mean_dist = np.array([_mean_distance(m) for m in d2.reshape(-1, n, n)])
    else:
        mean_dist = np.sqrt(d2).mean(axis=(-2, -1)).reshape(-1)
    grids = np.empty((mean_dist.size, int(points)))
    for k, m in enumerate(mean_dist):
        m = m if m > 0 else 1.0
        if kind == "log":
            grids[k] = np.geomspace(m / 100.0, 10.0 * m, points)
        elif 10.0 * m > _PAPER_GRID_LOW:
            grids[k] = np.linspace(_PAPER_GRID_LOW, 10.0 * m, points)
        else:
            grids[k] = np.linspace(10.0 * m / points, 10.0 * m, points)
    return grids.reshape(*d2.shape[:-2], int(points))


def _check_grid(grid: Any) -> np.ndarray:
    try:
        g = np.asarray(grid, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"grid must be an array of widths, got {grid!r}") from None
    if g.ndim < 1 or g.shape[-1] < 1:
        raise InputError(f"grid must hold at least one width, got shape {g.shape}")
    if not np.isfinite(g).all() or (g <= 0).any():
        raise InputError("grid widths must be finite and > 0")
    return g


def _series_sums(d: np.ndarray, w: np.ndarray | None, rates: np.ndarray) -> np.ndarray:
    """Σ_p w_p exp(−r·d_p) for every r of ``rates`` by a Taylor series about the mid-range.

    With c the centre and h the half-range of d, v_p = (d_p − c) / h lies in [−1, 1] and
    Σ_p w_p e^{−r d_p} = e^{−r c} Σ_k (−r h)^k μ_k / k!, μ_k = Σ_p w_p v_p^k. The K moments cost
    K passes over the pairs once; each rate then costs O(K). Used for r·h <= _SERIES_RADIUS,
    where K <= 30 terms bring the truncation error below 1e-18 relative (K is chosen for the
    largest r·h) and rounding is amplified at most e^(2·radius) ≈ 55 times.
    """
    lo, hi = float(d.min()), float(d.max())
    centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    scale = np.exp(-rates * centre)
    total = float(w.sum()) if w is not None else float(d.size)
    if half == 0:
        return scale * total
    z = -rates * half
    terms = _series_terms(float(np.abs(z).max()))
    moments = np.zeros(terms)
    moments[0] = total
    # Moments chunk by chunk, so that the `terms` passes over each chunk run in cache.
    for start in range(0, d.size, _MOMENT_CHUNK):
        v = (d[start : start + _MOMENT_CHUNK] - centre) / half
        power = v * w[start : start + _MOMENT_CHUNK] if w is not None else v.copy()
        moments[1] += power.sum()
        for k in range(2, terms):
            power *= v
            moments[k] += power.sum()
    coef = np.empty((rates.size, terms))
    coef[:, 0] = 1.0
    for k in range(1, terms):
        coef[:, k] = coef[:, k - 1] * z / k
    return scale * np.einsum("gk,k->g", coef, moments)


def _series_terms(z_max: float) -> int:
    """Terms after which z_max^k / k! < 1e-18 (the truncation bound, relative to e^-z_max)."""
    term, k = 1.0, 0
    while term >= 1e-18 * math.exp(-z_max) and k < 200:
        k += 1
        term *= z_max / k
    return max(k + 1, 2)


def _direct_sums(d: np.ndarray, w: np.ndarray | None, rates: np.ndarray) -> np.ndarray:
    """Σ_p w_p exp(−r·d_p) for every r of ``rates`` by exponentials in cache-sized tiles."""
    out = np.zeros(rates.size)
    pair_tile = min(d.size, _TILE_ELEMENTS)
    grid_tile = max(1, _TILE_ELEMENTS // pair_tile)
    buf = np.empty((grid_tile, pair_tile))
    for p0 in range(0, d.size, pair_tile):
        dt = d[p0 : p0 + pair_tile]
        wt = w[p0 : p0 + pair_tile] if w is not None else None
        for g0 in range(0, rates.size, grid_tile):
            g1 = min(g0 + grid_tile, rates.size)
            tile = buf[: g1 - g0, : dt.size]
            np.multiply.outer(-rates[g0:g1], dt, out=tile)
            # Clamped as in the Gram (kernels.EXP_FLOOR): a term below 4e-44 is invisible next
            # to the unit diagonal, and subnormal exponentials would be ~50x slower.
            np.maximum(tile, EXP_FLOOR, out=tile)
            np.exp(tile, out=tile)
            # einsum, not BLAS: a BLAS call per tile would wake its thread pool every time
            out[g0:g1] += tile.sum(axis=1) if wt is None else np.einsum("gp,p->g", tile, wt)
    return out


def _exp_sums(d: np.ndarray, w: np.ndarray | None, rates: np.ndarray) -> np.ndarray:
    """Σ_p w_p exp(−r·d_p) (w = 1 when None) for every rate r > 0; O(P·G) at worst."""
    out = np.zeros(rates.size)
    if d.size == 0:
        return out
    half = 0.5 * (float(d.max()) - float(d.min()))
    series = rates * half <= _SERIES_RADIUS
    if series.any():
        out[series] = _series_sums(d, w, rates[series])
    if not series.all():
        out[~series] = _direct_sums(d, w, rates[~series])
    return out


def _label_pairs(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Upper-triangle pairs with a non-zero label weight 2·Y_ij, tr(Y) and ‖Y‖_F."""
    y_norm = math.sqrt(float(np.einsum("ij,ij->", y, y)))
    if y_norm == 0:
        raise InputError("gram_y is all zeros; the alignment with it is undefined")
    # Y is symmetric (a Gram matrix), so Y_ij + Y_ji = 2 Y_ij over the upper triangle.
    weights = 2.0 * y[_upper_pairs(y.shape[-1])]
    # For C balanced classes about 1/C of the pairs carry weight; only they enter ⟨K, Y⟩.
    weighted = np.flatnonzero(weights)
    return weighted, weights[weighted], float(np.trace(y)), y_norm


def _alignment_one(
    d2: np.ndarray, labels: tuple[np.ndarray, np.ndarray, float, float], grid: np.ndarray
) -> np.ndarray:
    """Alignment ⟨K_σ, Y⟩_F / (‖K_σ‖_F ‖Y‖_F) for each σ of ``grid``; d2 (N, N)."""
    weighted, weights, y_trace, y_norm = labels
    dp = d2[_upper_pairs(d2.shape[-1])]
    rates = 1.0 / grid**2
    # ⟨K, Y⟩ = tr(Y) + 2 Σ_{i<j} K_ij Y_ij, as K and Y are symmetric and diag K = 1
    inner = y_trace + _exp_sums(dp[weighted], weights, rates)
    sq = _exp_sums(dp, None, 2.0 * rates)  # Σ_{i<j} K_ij², as K_ij² = exp(−2 d_ij / σ²)
    return inner / (np.sqrt(d2.shape[-1] + 2.0 * sq) * y_norm)


def _scores(d2: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Alignment scores of validated inputs, batched; label pairs computed once when shared."""
    batch = np.broadcast_shapes(d2.shape[:-2], y.shape[:-2], g.shape[:-1])
    d2b = np.broadcast_to(d2, (*batch, *d2.shape[-2:])).reshape(-1, *d2.shape[-2:])
    gb = np.broadcast_to(g, (*batch, g.shape[-1])).reshape(-1, g.shape[-1])
    if y.ndim == 2:
        shared = _label_pairs(y)
        labels = [shared] * d2b.shape[0]
    else:
        yb = np.broadcast_to(y, (*batch, *y.shape[-2:])).reshape(-1, *y.shape[-2:])
        labels = [_label_pairs(m) for m in yb]
    out = np.stack([_alignment_one(*args) for args in zip(d2b, labels, gb, strict=True)])
    return out.reshape(*batch, g.shape[-1])


def _check_gram_y(gram_y: Any, d2: np.ndarray) -> np.ndarray:
    y = check_square_stack(gram_y, "gram_y")
    if y.shape[-1] != d2.shape[-1]:
        raise InputError(
            f"gram_y is for {y.shape[-1]} samples but d2 for {d2.shape[-1]}; both must come "
            "from the same probe samples"
        )
    return y


def alignment_scores(d2: Any, gram_y: Any, grid: Any) -> np.ndarray:
    """Kernel alignment A(σ) = ⟨K_σ, K_Y⟩_F / (‖K_σ‖_F ‖K_Y‖_F) of K_σ = exp(−d2/σ²) with K_Y.

    The paper's score is 2·log2 A(σ); it has the same argmax. O(G·N²) elementwise work.

    Parameters
    ----------
    d2 : array_like, shape (..., N, N)
        Squared distances (symmetric, zero diagonal; the upper triangle is used).
    gram_y : array_like, shape (N, N) or (..., N, N)
        Label Gram matrix.
    grid : array_like, shape (G,) or (..., G)
        Candidate widths (> 0).

    Returns
    -------
    numpy.ndarray, shape (..., G)
    """
    d2 = _check_d2(d2)
    return _scores(d2, _check_gram_y(gram_y, d2), _check_grid(grid))


# --------------------------------------------------------------------------------------------
# the search at large N: sampled pairs locate the argmax, exact scores decide it


def _row_blocks(n: int, pairs: int = _MOMENT_CHUNK * 16) -> list[tuple[int, int]]:
    """Row ranges [a, b) whose upper-triangle pairs number about ``pairs`` each."""
    blocks, start, count = [], 0, 0
    for i in range(n):
        count += n - 1 - i
        if count >= pairs or i == n - 1:
            blocks.append((start, i + 1))
            start, count = i + 1, 0
    return blocks


def _upper_rows(m: np.ndarray, start: int, stop: int) -> np.ndarray:
    """The entries m[i, j], j > i, of rows start <= i < stop, row after row."""
    return np.concatenate([m[i, i + 1 :] for i in range(start, stop)])


def _mean_distance(d2: np.ndarray) -> float:
    """Mean of sqrt(d2) over all N² entries, row block by row block (no N×N temporary)."""
    n = d2.shape[-1]
    step = max(1, (_MOMENT_CHUNK * 16) // n)
    total = sum(float(np.sqrt(d2[a : a + step]).sum()) for a in range(0, n, step))
    return total / (n * n)


def _sample_pairs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``size`` pairs i < j drawn uniformly (with replacement) from the N(N−1)/2, seeded."""
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size)
    j = rng.integers(0, n - 1, size)
    j = j + (j >= i)  # uniform over j != i
    return np.minimum(i, j), np.maximum(i, j)


def _sampled_scores(
    d2: np.ndarray, y: np.ndarray, grid: np.ndarray, size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Alignment estimated on ``size`` sampled pairs, and its standard error, for each σ.

    With P = N(N−1)/2 pairs, ⟨K, Y⟩ = tr(Y) + P·E[a] and ‖K‖² = N + 2P·E[b], a = 2Y_ij K_ij and
    b = K_ij² over a uniformly drawn pair. Both means are estimated on the sample; the standard
    error of the ratio comes from their sample variances and covariance (delta method). The
    moments of a and b are sums of exponentials again: e.g. a·b = 2Y_ij exp(−3 d_ij / σ²).
    """
    n = d2.shape[-1]
    i, j = _sample_pairs(n, size, seed)
    dp, w = d2[i, j], 2.0 * y[i, j]
    nz = np.flatnonzero(w)
    dw, ww = dp[nz], w[nz]
    rates = 1.0 / grid**2
    mean_a = _exp_sums(dw, ww, rates) / size
    mean_b = _exp_sums(dp, None, 2.0 * rates) / size
    var_a = np.maximum(_exp_sums(dw, ww * ww, 2.0 * rates) / size - mean_a**2, 0.0) / size
    var_b = np.maximum(_exp_sums(dp, None, 4.0 * rates) / size - mean_b**2, 0.0) / size
    cov = (_exp_sums(dw, ww, 3.0 * rates) / size - mean_a * mean_b) / size
    pairs = 0.5 * n * (n - 1)
    y_trace = float(np.trace(y))
    y_norm = math.sqrt(float(np.einsum("ij,ij->", y, y)))
    if y_norm == 0:
        raise InputError("gram_y is all zeros; the alignment with it is undefined")
    u, v = y_trace + pairs * mean_a, n + 2.0 * pairs * mean_b
    scores = u / (np.sqrt(v) * y_norm)
    grad_a = pairs / (np.sqrt(v) * y_norm)
    grad_b = -u * pairs / (y_norm * v**1.5)
    var = grad_a**2 * var_a + grad_b**2 * var_b + 2.0 * grad_a * grad_b * cov
    return scores, np.sqrt(np.maximum(var, 0.0))


def _exact_window_scores(d2: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Exact alignment scores of a few widths, over every pair, row block by row block."""
    n = d2.shape[-1]
    rates = 1.0 / grid**2
    # a few exponentials per pair cost less than the ~30 moment passes of the series
    sums = _direct_sums if rates.size <= _DIRECT_WINDOW_MAX else _exp_sums
    inner, sq = np.zeros(rates.size), np.zeros(rates.size)
    for a, b in _row_blocks(n):
        dp, w = _upper_rows(d2, a, b), 2.0 * _upper_rows(y, a, b)
        nz = np.flatnonzero(w)
        inner += sums(dp[nz], w[nz], rates)
        sq += sums(dp, None, 2.0 * rates)
    y_norm = math.sqrt(float(np.einsum("ij,ij->", y, y)))
    if y_norm == 0:
        raise InputError("gram_y is all zeros; the alignment with it is undefined")
    return (float(np.trace(y)) + inner) / (np.sqrt(n + 2.0 * sq) * y_norm)


def search_window(scores: np.ndarray, se: np.ndarray, z: float, most: int) -> tuple[int, int]:
    """Grid positions [lo, hi) that may hold the argmax, from sampled scores and their errors.

    Every width whose sampled score is within ``z`` standard errors (of the difference to the
    sampled maximum, bounded by se_g + se_best) of the sampled maximum, and the neighbours of the
    sampled argmax; at most ``most`` positions, centred on the sampled argmax when clipped.
    """
    best = int(np.argmax(scores))
    close = np.flatnonzero(scores >= scores[best] - z * (se + se[best]))
    lo = max(0, min(int(close.min()), best - 1))
    hi = min(scores.size, max(int(close.max()), best + 1) + 1)
    if hi - lo > most:
        lo = max(0, min(best - most // 2, scores.size - most))
        hi = lo + most
    return lo, hi


def _sampled_argmax_one(d2: np.ndarray, y: np.ndarray, grid: np.ndarray) -> int:
    """Grid position of the alignment argmax of one large matrix (see :func:`alignment_width`)."""
    scores, se = _sampled_scores(d2, y, grid, SEARCH_SAMPLE_PAIRS, SEARCH_SEED)
    lo, hi = search_window(scores, se, SEARCH_Z, SEARCH_WINDOW_MAX)
    exact = _exact_window_scores(d2, y, grid[lo:hi])
    return lo + int(np.argmax(exact))


def _sampled_argmax(d2: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`_sampled_argmax_one` over a stack; returns the positions (...) and the grid size."""
    batch = np.broadcast_shapes(d2.shape[:-2], y.shape[:-2], g.shape[:-1])
    n = d2.shape[-1]
    d2b = np.broadcast_to(d2, (*batch, n, n)).reshape(-1, n, n)
    yb = np.broadcast_to(y, (*batch, n, n)).reshape(-1, n, n)
    gb = np.broadcast_to(g, (*batch, g.shape[-1])).reshape(-1, g.shape[-1])
    best = [_sampled_argmax_one(*args) for args in zip(d2b, yb, gb, strict=True)]
    return np.asarray(best, dtype=np.int64).reshape(batch), g.shape[-1]


def alignment_width(
    d2: Any,
    gram_y: Any,
    *,
    grid: GridKind | Any = "linear",
    points: int = 100,
) -> tuple[Any, Any]:
    """Width maximising the alignment with the label Gram (the paper's rule, one step).

    Parameters
    ----------
    d2 : array_like, shape (..., N, N)
        Squared distances of the layer.
    gram_y : array_like, shape (N, N) or (..., N, N)
        Label Gram matrix.
    grid : {"linear", "log"} or array_like
        Grid kind for :func:`width_grid`, or explicit candidate widths (G,) or (..., G).
    points : int
        Grid size for a named grid kind.

    Above ``EXACT_SEARCH_MAX_N`` samples the argmax is located on sampled pairs and decided by
    exact scores of the widths near it (see the module docstring).

    Returns
    -------
    (sigma, boundary_hit)
        The argmax width (first on ties) and whether it lies on the first or last grid point,
        i.e. the grid may not bracket the optimum. Floats/bools for one matrix, arrays (...) for
        a stack.
    """
    d2 = _check_d2(d2)
    y = _check_gram_y(gram_y, d2)
    g = _grid(d2, grid, points) if isinstance(grid, str) else _check_grid(grid)
    if d2.shape[-1] > EXACT_SEARCH_MAX_N:
        best, size = _sampled_argmax(d2, y, g)
    else:
        scores = _scores(d2, y, g)
        best, size = np.argmax(scores, axis=-1), scores.shape[-1]
    batch = best.shape
    g = np.broadcast_to(g, (*batch, g.shape[-1]))
    sigma = np.take_along_axis(g, best[..., None], axis=-1)[..., 0]
    hit = (best == 0) | (best == size - 1)
    if sigma.ndim == 0:
        return float(sigma), bool(hit)
    return sigma, hit


def smooth_widths(sigmas: Any, beta: float, *, steps: Any = None) -> np.ndarray:
    """Exponential smoothing along axis 0 (steps): s_0 = s*_0, s_t = w_t·s_{t−1} + (1 − w_t)·s*_t.

    Without ``steps``, w_t = β at every row (one update per capture). With ``steps`` (the training
    iteration of each row), w_t = β^(steps_t − steps_{t−1}): the paper's per-iteration average
    s ← β·s + (1 − β)·s*, run over every iteration between two captures with s* held at the new
    capture's value. Captured at every iteration, both forms are the paper's; on a sparse schedule
    only the second keeps the average's memory (about 1/(1 − β) iterations) independent of it.

    Parameters
    ----------
    sigmas : array_like, shape (T, ...)
        Per-step widths s*_t (e.g. argmax widths), steps in capture order.
    beta : float
        Weight of the past in [0, 1] (paper: 0.9 per iteration; 0 returns the input).
    steps : array_like of int, shape (T,), optional
        Strictly increasing training iterations of the rows.

    Returns
    -------
    numpy.ndarray, shape (T, ...)
    """
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim < 1 or s.shape[0] < 1:
        raise InputError(f"sigmas must have a step axis 0 with at least one step, got {s.shape}")
    if not np.isfinite(s).all() or (s <= 0).any():
        raise InputError("sigmas must be finite and > 0 (a failed step has no width to smooth)")
    b = float(beta)
    if not 0.0 <= b <= 1.0:
        raise InputError(f"smoothing beta must lie in [0, 1], got {beta!r}")
    if steps is None:
        weights = np.full(s.shape[0], b)
    else:
        gaps = np.diff(np.asarray(steps, dtype=np.float64))
        if gaps.shape != (s.shape[0] - 1,) or not (gaps > 0).all():
            raise InputError(
                f"steps must be {s.shape[0]} strictly increasing iterations, one per row of "
                f"sigmas; got {np.asarray(steps).tolist()}"
            )
        weights = np.concatenate([[b], b**gaps])
    out = np.empty_like(s)
    out[0] = s[0]
    for t in range(1, s.shape[0]):
        out[t] = weights[t] * out[t - 1] + (1.0 - weights[t]) * s[t]
    return out


def select_width(
    d2: Any,
    rule: str,
    *,
    sigma: float | None = None,
    dim: int | None = None,
    gram_y: Any = None,
    grid: GridKind | Any = "linear",
    points: int = 100,
) -> tuple[Any, Any]:
    """The width of a named rule for a distance matrix or a stack of them (no smoothing).

    The one dispatcher of the width rules: every stage that needs a width comes here.

    Parameters
    ----------
    d2 : array_like, shape (N, N) or (..., N, N)
    rule : {"fixed", "silverman", "scott", "median", "alignment"}
    sigma : float
        The width for ``"fixed"``.
    dim : int
        Features per sample, for ``"silverman"`` and ``"scott"``.
    gram_y : array_like, shape (N, N)
        Label Gram, for ``"alignment"``.
    grid, points
        Grid for ``"alignment"`` (see :func:`alignment_width`).

    Returns
    -------
    (sigma, boundary_hit)
        Floats for one matrix (a fixed width is one float for any input), arrays (...) for a
        stack; ``boundary_hit`` is False for rules without a grid.
    """
    if rule == "fixed":
        if sigma is None:
            raise InputError("rule 'fixed' needs sigma")
        s = float(sigma)
        if not (math.isfinite(s) and s > 0):
            raise InputError(f"a fixed width must be finite and > 0, got {sigma!r}")
        return s, False
    if rule in ("silverman", "scott"):
        if dim is None:
            raise InputError(f"rule {rule!r} needs dim (features per sample)")
        fn = silverman_width if rule == "silverman" else scott_width
        return fn(d2, dim), False
    if rule == "median":
        return median_width(d2), False
    if rule == "alignment":
        if gram_y is None:
            raise InputError("rule 'alignment' needs gram_y (the label Gram)")
        return alignment_width(d2, gram_y, grid=grid, points=points)
    raise InputError(
        f"unknown width rule {rule!r}; choose one of fixed, silverman, scott, median, alignment"
    )


def smooth_along_steps(
    sigma_star: np.ndarray, beta: float, steps: np.ndarray | None = None
) -> np.ndarray:
    """Smooth (S, L) widths along steps, per layer, skipping NaN points.

    With ``steps`` (training iterations) β applies per iteration (see :func:`smooth_widths`);
    without, per captured step. A NaN point (not estimable) neither resets nor poisons the
    average of the later steps: it is skipped (with ``steps``, the weight of the past decays
    over the iterations since the last estimable step). The estimate flags the later steps of
    such a layer (``attrs["smoothed_across_nan"]`` of the result).
    """
    smoothed = np.full(sigma_star.shape, np.nan)
    for layer in range(sigma_star.shape[1]):
        finite = np.isfinite(sigma_star[:, layer])
        if finite.any():
            smoothed[finite, layer] = smooth_widths(
                sigma_star[finite, layer], beta, steps=None if steps is None else steps[finite]
            )
    return smoothed
