"""Brute-force reference implementations of the numerical core, used only by the tests.

Deliberately naive and independent of infoplane: broadcast differences, explicit loops, full
eigendecompositions with eigenvectors, matrix powers rebuilt from them, matrix products for the
alignment. Slow; small N only.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg


def squared_distances(x: np.ndarray) -> np.ndarray:
    """Σ_k (x_ik − x_jk)² from an explicit N × N × D difference array."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    diff = flat[:, None, :] - flat[None, :, :]
    return (diff**2).sum(axis=-1)


def gaussian_gram(d2: np.ndarray, sigma: float) -> np.ndarray:
    n = d2.shape[0]
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = np.exp(-d2[i, j] / sigma**2)
    return out


def label_gram(y: np.ndarray) -> np.ndarray:
    n = len(y)
    return np.array([[1.0 if y[i] == y[j] else 0.0 for j in range(n)] for i in range(n)])


def _matrix_power_trace(a: np.ndarray, alpha: float) -> float:
    """tr(A^α) with A^α rebuilt from the full eigendecomposition (eigenvectors included)."""
    w, v = linalg.eigh(a)
    w = np.clip(w, 0.0, None)
    return float(np.trace(v @ np.diag(w**alpha) @ v.T))


def renyi_entropy(k: np.ndarray, alpha: float) -> float:
    """S_α(K / tr K) in bits via tr(A^α), or −tr(A log2 A) for α = 1."""
    a = k / np.trace(k)
    if alpha == 1.0:
        w, v = linalg.eigh(a)
        w = np.clip(w, 0.0, None)
        logs = np.where(w > 0, np.log2(np.where(w > 0, w, 1.0)), 0.0)
        return float(-np.trace(v @ np.diag(w * logs) @ v.T))
    if float(alpha).is_integer():  # an integer power needs no eigendecomposition at all
        return float(np.log2(np.trace(np.linalg.matrix_power(a, int(alpha)))) / (1.0 - alpha))
    return float(np.log2(_matrix_power_trace(a, alpha)) / (1.0 - alpha))


def joint_entropy(grams: list[np.ndarray], alpha: float) -> float:
    prod = np.ones_like(grams[0])
    for g in grams:
        prod = prod * g
    return renyi_entropy(prod, alpha)


def mutual_information(a: np.ndarray, b: np.ndarray, alpha: float) -> float:
    return renyi_entropy(a, alpha) + renyi_entropy(b, alpha) - joint_entropy([a, b], alpha)


def shannon_entropy_of_labels(y: np.ndarray) -> float:
    _, counts = np.unique(y, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def alignment_scores(d2: np.ndarray, gram_y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """⟨K, Y⟩ / (‖K‖ ‖Y‖) with the inner product as tr(K Yᵀ) by a matrix product, as the
    original per-iteration code does (O(N³) per grid point)."""
    out = []
    for sigma in grid:
        k = np.exp(-d2 / sigma**2)
        out.append(np.trace(k @ gram_y.T) / (np.linalg.norm(k) * np.linalg.norm(gram_y)))
    return np.array(out)


def silverman_width_from_data(x: np.ndarray) -> float:
    """Silverman's rule for exp(−d²/(2s²)) from the per-dimension std of the data, as σ = √2·s."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n, dim = flat.shape
    std = np.sqrt(np.mean(flat.var(axis=0)))
    s = std * (4.0 / ((dim + 2) * n)) ** (1.0 / (dim + 4))
    return float(np.sqrt(2.0) * s)


def scott_width_from_data(x: np.ndarray) -> float:
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    n, dim = flat.shape
    std = np.sqrt(np.mean(flat.var(axis=0)))
    return float(np.sqrt(2.0) * std * n ** (-1.0 / (dim + 4)))


def smooth_widths(sigmas: np.ndarray, beta: float) -> np.ndarray:
    out = [float(sigmas[0])]
    for s in sigmas[1:]:
        out.append(beta * out[-1] + (1 - beta) * float(s))
    return np.array(out)
