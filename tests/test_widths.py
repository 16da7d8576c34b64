import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import pdist

from infoplane.core.distances import squared_distances
from infoplane.core.kernels import gaussian_gram, label_gram
from infoplane.core.widths import (
    alignment_scores,
    alignment_width,
    median_width,
    scott_width,
    select_width,
    silverman_width,
    smooth_widths,
    width_grid,
)
from infoplane.errors import InputError


def _layer(rng, n=30, dim=8, classes=4):
    """Class-structured samples, so the alignment has an interior optimum."""
    y = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, dim)) * 3
    x = centres[y] + rng.standard_normal((n, dim))
    return squared_distances(x), y, x


# --- closed-form rules -----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(40, 3), (25, 2, 3, 3)])
def test_silverman_and_scott_use_the_data_spread(rng, shape):
    x = rng.standard_normal(shape) * np.linspace(0.5, 2.0, int(np.prod(shape[1:]))).reshape(
        shape[1:]
    )
    d2 = squared_distances(x)
    dim = int(np.prod(shape[1:]))
    assert silverman_width(d2, dim) == pytest.approx(ref.silverman_width_from_data(x), rel=1e-10)
    assert scott_width(d2, dim) == pytest.approx(ref.scott_width_from_data(x), rel=1e-10)
    assert isinstance(silverman_width(d2, dim), float)


def test_rules_of_thumb_convert_to_the_paper_convention():
    # One dimension, two points at distance 2: std 1, Silverman s = (4 / (3·2))^(1/5).
    d2 = np.array([[0.0, 4.0], [4.0, 0.0]])
    s = (4.0 / 6.0) ** 0.2
    assert silverman_width(d2, 1) == pytest.approx(np.sqrt(2) * s, rel=1e-14)
    assert scott_width(d2, 1) == pytest.approx(np.sqrt(2) * 2**-0.2, rel=1e-14)


def test_rules_are_batched_and_handle_constant_data(rng):
    d2 = np.stack([squared_distances(rng.standard_normal((10, 3))), np.zeros((10, 10))])
    out = silverman_width(d2, 3)
    assert out.shape == (2,)
    assert out[0] == pytest.approx(silverman_width(d2[0], 3))
    assert out[1] == 1.0  # all distances zero: any width gives the all-ones Gram
    assert scott_width(np.zeros((4, 4)), 2) == 1.0


def test_median_width_is_the_median_pairwise_distance(rng):
    x = rng.standard_normal((21, 4))
    assert median_width(squared_distances(x)) == pytest.approx(np.median(pdist(x)), rel=1e-12)
    # more than half the pairs coincide: the median of the non-zero distances is used
    dup = np.vstack([np.zeros((8, 2)), [[3.0, 4.0]]])
    assert median_width(squared_distances(dup)) == pytest.approx(5.0)
    assert median_width(np.zeros((3, 3))) == 1.0


# --- grids -----------------------------------------------------------------------------------


def test_linear_grid_is_the_papers(rng):
    d2, _, x = _layer(rng)
    mean_dist = np.sqrt(ref.squared_distances(x)).mean()  # N² pairs, zero diagonal included
    np.testing.assert_allclose(width_grid(d2), np.linspace(0.3, 10 * mean_dist, 100), rtol=1e-12)
    assert width_grid(d2, points=7).shape == (7,)


def test_log_grid_spans_three_decades(rng):
    d2, _, _ = _layer(rng)
    grid = width_grid(d2, "log", 50)
    mean_dist = np.sqrt(d2).mean()
    assert grid[0] == pytest.approx(mean_dist / 100) and grid[-1] == pytest.approx(10 * mean_dist)
    np.testing.assert_allclose(np.diff(np.log(grid)), np.log(1000) / 49)


def test_grids_stay_positive_and_increasing_for_tiny_or_zero_distances(rng):
    tiny = squared_distances(1e-4 * rng.standard_normal((6, 2)))
    for d2 in (tiny, np.zeros((6, 6))):
        for kind in ("linear", "log"):
            grid = width_grid(d2, kind, 20)
            assert (grid > 0).all() and (np.diff(grid) > 0).all()
    assert width_grid(np.stack([tiny, tiny]), "linear", 5).shape == (2, 5)


# --- alignment -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 9, 40])
def test_alignment_scores_match_the_matrix_product_reference(rng, n):
    d2, y, _ = _layer(rng, n=n)
    for gram_y in (label_gram(y), gaussian_gram(squared_distances(rng.random((n, 2))), 0.7)):
        grid = width_grid(d2, "log", 37)
        np.testing.assert_allclose(
            alignment_scores(d2, gram_y, grid), ref.alignment_scores(d2, gram_y, grid), rtol=1e-12
        )


def test_alignment_tiles_cover_every_pair_and_grid_point(rng):
    # N = 400 has 79800 pairs: more than one tile of pairs for the narrow widths of a log grid
    # (exponentials), the series for the wide ones.
    d2, y, _ = _layer(rng, n=400, classes=10)
    grid = width_grid(d2, "log", 11)
    np.testing.assert_allclose(
        alignment_scores(d2, label_gram(y), grid),
        ref.alignment_scores(d2, label_gram(y), grid),
        rtol=1e-11,
    )


@settings(max_examples=50, deadline=None)
@given(
    x=hnp.arrays(
        np.float64,
        st.tuples(st.integers(2, 12), st.integers(1, 4)),
        elements=st.floats(-10, 10, allow_nan=False, allow_infinity=False),
    ),
    seed=st.integers(0, 2**16),
)
def test_property_alignment_matches_reference_and_lies_in_unit_interval(x, seed):
    y = np.random.default_rng(seed).integers(0, 3, x.shape[0])
    d2 = squared_distances(x)
    grid = width_grid(d2, "log", 15)
    scores = alignment_scores(d2, label_gram(y), grid)
    np.testing.assert_allclose(scores, ref.alignment_scores(d2, label_gram(y), grid), rtol=1e-10)
    assert ((scores > 0) & (scores <= 1 + 1e-12)).all()


def test_alignment_width_is_the_first_argmax_of_the_reference(rng):
    d2, y, _ = _layer(rng)
    sigma, hit = alignment_width(d2, label_gram(y))
    grid = width_grid(d2)
    expected = grid[np.argmax(ref.alignment_scores(d2, label_gram(y), grid))]
    assert sigma == pytest.approx(expected, rel=1e-14)
    assert hit is False and isinstance(sigma, float)


def test_boundary_hit_is_flagged(rng):
    d2, y, _ = _layer(rng)
    gram_y = label_gram(y)
    best, _ = alignment_width(d2, gram_y, grid="log", points=200)
    below = np.linspace(best / 50, best / 10, 5)  # every candidate narrower than the optimum
    sigma, hit = alignment_width(d2, gram_y, grid=below)
    assert hit is True and sigma == pytest.approx(below[-1])
    above = np.linspace(best * 10, best * 50, 5)
    sigma, hit = alignment_width(d2, gram_y, grid=above)
    assert hit is True and sigma == pytest.approx(above[0])


def test_alignment_is_batched_over_layers(rng):
    d2, y, x = _layer(rng, n=25)
    stack = np.stack([d2, squared_distances(np.tanh(x)), squared_distances(x**2)])
    gram_y = label_gram(y)
    sigmas, hits = alignment_width(stack, gram_y, grid="log", points=30)
    assert sigmas.shape == hits.shape == (3,)
    for k in range(3):
        s, h = alignment_width(stack[k], gram_y, grid="log", points=30)
        assert sigmas[k] == s and hits[k] == h
    scores = alignment_scores(stack, gram_y, width_grid(stack, "log", 30))
    assert scores.shape == (3, 30)


def test_constant_layer_alignment_is_finite():
    sigma, hit = alignment_width(np.zeros((6, 6)), label_gram(np.array([0, 0, 1, 1, 2, 2])))
    assert np.isfinite(sigma) and sigma > 0 and hit is True


# --- smoothing -------------------------------------------------------------------------------


def test_smoothing_is_the_papers_moving_average(rng):
    raw = rng.uniform(0.5, 5.0, 30)
    np.testing.assert_allclose(smooth_widths(raw, 0.9), ref.smooth_widths(raw, 0.9), rtol=1e-15)
    np.testing.assert_array_equal(smooth_widths(raw, 0.0), raw)
    np.testing.assert_array_equal(smooth_widths(raw, 1.0), np.full(30, raw[0]))


def test_smoothing_runs_along_steps_for_every_layer(rng):
    raw = rng.uniform(0.5, 5.0, (12, 4))
    out = smooth_widths(raw, 0.7)
    for layer in range(4):
        np.testing.assert_allclose(out[:, layer], ref.smooth_widths(raw[:, layer], 0.7))


def test_per_iteration_smoothing_equals_the_papers_average_run_every_iteration(rng):
    # captures at iterations 0, 1, 4, 20: the per-iteration average, run over every iteration
    # with sigma* held at the next capture's value, gives the same widths at the captures
    steps = np.array([0, 1, 4, 20])
    raw = rng.uniform(0.5, 5.0, (4, 3))
    dense = np.repeat(raw, np.diff(steps, prepend=-1), axis=0)  # row i repeated up to step i
    expected = ref.smooth_widths(dense[:, 0], 0.9)[steps]
    out = smooth_widths(raw, 0.9, steps=steps)
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-12)
    # every capture one iteration apart: the same as one update per capture
    np.testing.assert_allclose(smooth_widths(raw, 0.9, steps=np.arange(4)), smooth_widths(raw, 0.9))
    # a long gap forgets the past: after 200 iterations the width is the new argmax
    np.testing.assert_allclose(smooth_widths(raw[:2], 0.9, steps=[0, 200])[1], raw[1], rtol=1e-8)


def test_per_iteration_smoothing_rejects_bad_steps(rng):
    raw = rng.uniform(0.5, 5.0, 3)
    with pytest.raises(InputError, match="strictly increasing"):
        smooth_widths(raw, 0.9, steps=[0, 5, 5])
    with pytest.raises(InputError, match="one per row"):
        smooth_widths(raw, 0.9, steps=[0, 5])


# --- dispatcher and errors -------------------------------------------------------------------


def test_select_width_dispatches(rng):
    d2, y, _ = _layer(rng)
    assert select_width(d2, "fixed", sigma=8.0) == (8.0, False)
    assert select_width(d2, "silverman", dim=8) == (silverman_width(d2, 8), False)
    assert select_width(d2, "scott", dim=8) == (scott_width(d2, 8), False)
    assert select_width(d2, "median") == (median_width(d2), False)
    assert select_width(d2, "alignment", gram_y=label_gram(y), grid="log", points=20) == (
        alignment_width(d2, label_gram(y), grid="log", points=20)
    )
    with pytest.raises(InputError, match="unknown width rule"):
        select_width(d2, "cubic")
    with pytest.raises(InputError, match="needs sigma"):
        select_width(d2, "fixed")
    with pytest.raises(InputError, match="> 0"):
        select_width(d2, "fixed", sigma=-1.0)
    with pytest.raises(InputError, match="needs dim"):
        select_width(d2, "scott")
    with pytest.raises(InputError, match="needs gram_y"):
        select_width(d2, "alignment")


def test_bad_inputs_raise(rng):
    d2, y, _ = _layer(rng, n=6)
    gram_y = label_gram(y)
    with pytest.raises(InputError, match="negative"):
        median_width(-np.ones((3, 3)) + np.eye(3))
    with pytest.raises(InputError, match="diagonal"):
        alignment_width(d2 + np.eye(6), gram_y)
    with pytest.raises(InputError, match="NaN or Inf"):
        alignment_width(np.full((6, 6), np.nan), gram_y)
    with pytest.raises(InputError, match="same probe samples"):
        alignment_scores(d2, label_gram(np.arange(5)), [1.0])
    with pytest.raises(InputError, match="all zeros"):
        alignment_scores(d2, np.zeros((6, 6)), [1.0])
    with pytest.raises(InputError, match="grid widths"):
        alignment_scores(d2, gram_y, [1.0, 0.0])
    with pytest.raises(InputError, match="grid kind"):
        alignment_width(d2, gram_y, grid="cubic")
    with pytest.raises(InputError, match="points"):
        width_grid(d2, points=1)
    with pytest.raises(InputError, match="dim"):
        silverman_width(d2, 0)
    with pytest.raises(InputError, match="at least 2"):
        median_width(np.zeros((1, 1)))
    with pytest.raises(InputError, match="beta"):
        smooth_widths([1.0, 2.0], 1.5)
    with pytest.raises(InputError, match="finite and > 0"):
        smooth_widths([1.0, np.nan], 0.9)


@pytest.mark.parametrize("weighted", [False, True])
def test_pair_sums_by_series_and_by_exponentials_agree_with_brute_force(rng, weighted):
    from infoplane.core.widths import _SERIES_RADIUS, _direct_sums, _exp_sums, _series_sums

    d = rng.uniform(3.0, 40.0, 5000)
    w = rng.random(5000) if weighted else None
    half = (d.max() - d.min()) / 2
    # rates on both sides of the switch between the two methods, and exactly on it
    rates = np.concatenate([np.geomspace(1e-4, 3, 40) / half, [_SERIES_RADIUS / half]])
    brute = np.array([((w if weighted else 1.0) * np.exp(-r * d)).sum() for r in rates])
    np.testing.assert_allclose(_exp_sums(d, w, rates), brute, rtol=1e-13)
    inside = rates * half <= _SERIES_RADIUS
    np.testing.assert_allclose(_series_sums(d, w, rates[inside]), brute[inside], rtol=1e-13)
    np.testing.assert_allclose(_direct_sums(d, w, rates), brute, rtol=1e-13)
    assert inside.any() and not inside.all()
    # all distances equal: the series is exact
    np.testing.assert_allclose(_exp_sums(np.full(7, 2.0), None, rates), 7 * np.exp(-2 * rates))
