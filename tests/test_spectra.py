"""Randomized spectral sums against exact spectra (infoplane.core.spectra)."""

from __future__ import annotations

import numpy as np
import pytest

from infoplane.core import spectra
from infoplane.core.distances import squared_distances
from infoplane.core.entropy import renyi_entropy
from infoplane.core.kernels import gaussian_gram
from infoplane.core.spectra import renyi_entropy_estimate
from infoplane.errors import InputError

ALPHAS = (1.0, 1.01, 2.0, 0.5)


def _block_gram(sizes) -> np.ndarray:
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return (labels[:, None] == labels[None, :]).astype(float)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_a_block_gram_is_exact_once_its_blocks_are_deflated(alpha):
    gram = _block_gram([40, 25, 25, 10])  # 4 eigenvalues, the rest 0
    est = renyi_entropy_estimate(gram, alpha, rank=8)
    assert est.value == pytest.approx(float(renyi_entropy(gram, alpha)), abs=1e-9)
    assert est.stderr < 1e-9 and est.bound < 1e-9


@pytest.mark.parametrize("alpha", ALPHAS)
def test_a_low_rank_gram_is_exact_once_deflated(rng, alpha):
    factor = rng.standard_normal((120, 5))
    gram = factor @ factor.T  # rank 5
    est = renyi_entropy_estimate(gram, alpha, rank=10)
    assert est.value == pytest.approx(float(renyi_entropy(gram, alpha)), abs=1e-8)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_the_identity_gives_log2_n_within_its_error(alpha):
    n = 256
    est = renyi_entropy_estimate(np.eye(n), alpha, probes=16, steps=10, rank=8)
    assert abs(est.value - np.log2(n)) <= est.bar(3) + 1e-9
    assert abs(est.value - np.log2(n)) < 0.01 * np.log2(n)


def test_the_same_seed_gives_the_same_estimate(rng):
    x = rng.standard_normal((150, 6))
    gram = gaussian_gram(squared_distances(x), 3.0)
    first = renyi_entropy_estimate(gram, 1.0, seed=3)
    assert renyi_entropy_estimate(gram, 1.0, seed=3) == first
    assert renyi_entropy_estimate(gram, 1.0, seed=4) != first


def test_estimates_are_close_and_their_errors_cover_the_truth():
    """On many random RBF Grams: within 2 % of eigvalsh, and inside 2.5 errors >= 90 %."""
    rng = np.random.default_rng(7)
    covered = []
    for trial in range(12):
        d = int(rng.integers(2, 40))
        x = rng.standard_normal((150, d)) * rng.random(d) * 3
        d2 = squared_distances(x)
        gram = gaussian_gram(d2, float(np.sqrt(np.median(d2)) * rng.uniform(0.3, 3.0)))
        for alpha in ALPHAS:
            exact = float(renyi_entropy(gram, alpha))
            est = renyi_entropy_estimate(gram, alpha, seed=trial)
            assert abs(est.value - exact) < 0.02 * exact
            covered.append(abs(est.value - exact) <= est.bar(2.5))
    assert np.mean(covered) >= 0.9


def test_bad_input_is_an_input_error():
    with pytest.raises(InputError, match="one \\(N, N\\) matrix"):
        renyi_entropy_estimate(np.ones((2, 3, 3)))
    with pytest.raises(InputError, match="alpha"):
        renyi_entropy_estimate(np.eye(4), 0.0)
    with pytest.raises(InputError, match="probes"):
        renyi_entropy_estimate(np.eye(4), probes=1)


@pytest.mark.parametrize("alpha", (1.0, 1.01, 0.5, 1.7, 3.5))
@pytest.mark.parametrize("steps", (2, 4, 7))
def test_gauss_and_radau_rules_bracket_every_quadratic_form(rng, alpha, steps):
    """For each start vector s: s^T f(A) s lies between its Gauss and Gauss-Radau rules."""
    x = rng.standard_normal((90, 4))
    gram = gaussian_gram(squared_distances(x), 2.0)
    a = gram / np.trace(gram)
    fn, _ = spectra._spectral_function(alpha)
    lam, vec = np.linalg.eigh(a)
    starts = rng.choice([-1.0, 1.0], size=(90, 6))
    exact = ((vec.T @ starts) ** 2 * fn(np.clip(lam, 0, None))[:, None]).sum(axis=0)
    gauss, radau = spectra._lanczos_quadrature(a, starts, steps, fn)
    low, high = np.minimum(gauss, radau), np.maximum(gauss, radau)
    slack = 1e-9 * np.abs(exact).max()
    assert np.all(low - slack <= exact) and np.all(exact <= high + slack)
    assert np.all(high - low > 0)  # a real bracket, not two equal rules
