import tracemalloc

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch_support import assert_torch_matches, needs_torch, torch

from infoplane.core.distances import (
    channel_squared_distances,
    check_square_stack,
    squared_distances,
    squared_distances_or_nan,
)
from infoplane.errors import InputError


def _assert_distance_matrix(d2: np.ndarray, n: int) -> None:
    assert d2.shape == (n, n)
    assert d2.dtype == np.float64
    np.testing.assert_array_equal(d2, d2.T)
    np.testing.assert_array_equal(np.diagonal(d2), 0.0)
    assert (d2 >= 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (7, 5), (7, 3, 4, 4), (7, 2, 1, 3, 5)])
@pytest.mark.parametrize("block_size", [None, 1, 3, 1000])
def test_matches_broadcast_reference(rng, dtype, shape, block_size):
    x = rng.standard_normal(shape).astype(dtype)
    d2 = squared_distances(x, block_size=block_size)
    expected = ref.squared_distances(x)
    _assert_distance_matrix(d2, shape[0])
    np.testing.assert_allclose(d2, expected, rtol=1e-12, atol=1e-12 * expected.max())


def test_wide_conv_map_matches_reference(rng):
    # 64 × 32 × 32 = 65536 features, as VGG-16's first conv layers; several default blocks.
    x = np.maximum(rng.standard_normal((6, 64, 32, 32), dtype=np.float32), 0)
    np.testing.assert_allclose(squared_distances(x), ref.squared_distances(x), rtol=1e-11)


def test_accumulates_in_float64_not_float32(rng):
    # A large common offset and many features: a float32 Gram identity would lose every digit.
    x = (300.0 + rng.standard_normal((5, 40000))).astype(np.float32)
    expected = ref.squared_distances(x)
    np.testing.assert_allclose(squared_distances(x), expected, rtol=1e-9)
    flat = x.reshape(5, -1)
    gram32 = flat @ flat.T
    sq32 = np.diagonal(gram32)
    naive32 = sq32[:, None] + sq32[None, :] - 2 * gram32
    assert np.abs(naive32 - expected).max() > 1e-3 * expected.max()  # the failure mode exists


def test_memory_stays_near_n_squared_plus_block(rng):
    x = rng.standard_normal((50, 64, 32, 32), dtype=np.float32)  # an N×N×D array would be 1.3 GB
    tracemalloc.start()
    try:
        squared_distances(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 * 2**20  # the N×N result, an 8 MiB block buffer and small change


def test_integer_input_and_constant_input():
    x = np.arange(12).reshape(4, 3)
    np.testing.assert_array_equal(squared_distances(x), ref.squared_distances(x))
    np.testing.assert_array_equal(squared_distances(np.full((5, 3, 2), 2.5)), np.zeros((5, 5)))


def test_input_is_not_modified(rng):
    x = rng.standard_normal((4, 6))
    before = x.copy()
    squared_distances(x)
    np.testing.assert_array_equal(x, before)
    if torch is not None:  # a float64 tensor is used without a copy: the shift must not leak
        squared_distances(torch.from_numpy(x))
        np.testing.assert_array_equal(x, before)


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(2, 9), st.integers(1, 6)),
        elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
    )
)
def test_property_matches_reference(x):
    d2 = squared_distances(x)
    expected = ref.squared_distances(x)
    _assert_distance_matrix(d2, x.shape[0])
    scale = max(1.0, float((x**2).sum(axis=1).max()))
    np.testing.assert_allclose(d2, expected, rtol=1e-9, atol=1e-11 * scale)


def test_channel_distances_sum_to_the_layer_distances(rng):
    x = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    per_channel = channel_squared_distances(x)
    assert per_channel.shape == (5, 6, 6)
    for c in range(5):
        np.testing.assert_allclose(per_channel[c], ref.squared_distances(x[:, c]), rtol=1e-12)
    np.testing.assert_allclose(per_channel.sum(axis=0), squared_distances(x), rtol=1e-12)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.ones((1, 4)), "at least 2 samples"),
        (np.ones((0, 4)), "at least 2 samples"),
        (np.float64(3.0), "leading sample axis"),
        (np.array([["a", "b"], ["c", "d"]]), "real numbers"),
        (np.ones((3, 2), dtype=complex), "real numbers"),
    ],
)
def test_bad_input_raises(x, match):
    with pytest.raises(InputError, match=match):
        squared_distances(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_named(rng, bad):
    x = rng.standard_normal((6, 3, 3)).astype(np.float32)
    x[4, 1, 2] = bad
    with pytest.raises(InputError, match=r"NaN or Inf in sample\(s\) 4 "):
        squared_distances(x)


def test_bad_block_size_raises():
    with pytest.raises(InputError, match="block_size"):
        squared_distances(np.ones((3, 3)), block_size=0)


def test_a_single_block_and_many_blocks_agree(rng):
    # The first block's product is written straight into the accumulator; later ones are added.
    x = rng.standard_normal((40, 30))
    one = squared_distances(x, block_size=30)
    many = squared_distances(x, block_size=4)
    _assert_distance_matrix(one, 40)
    np.testing.assert_allclose(one, many, rtol=1e-12, atol=1e-12 * one.max())


def test_large_n_finish_is_exactly_symmetric_across_row_blocks(rng):
    # N = 600 spans several row blocks of the fused finish.
    x = rng.standard_normal((600, 5)).astype(np.float32)
    d2 = squared_distances(x)
    _assert_distance_matrix(d2, 600)
    np.testing.assert_allclose(d2, ref.squared_distances(x), rtol=1e-10, atol=1e-12 * d2.max())


def test_or_nan_flags_non_finite_steps(rng):
    x = rng.standard_normal((5, 3))
    d2, nonfinite = squared_distances_or_nan(x)
    assert not nonfinite
    np.testing.assert_array_equal(d2, squared_distances(x))
    x[2, 1] = np.inf
    d2, nonfinite = squared_distances_or_nan(x)
    assert nonfinite and d2.shape == (5, 5) and np.isnan(d2).all()


# --- torch tensors: the same functions, results on the input's device ------------------------


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("block_size", [None, 50])
def test_torch_tensors_match_numpy(rng, dtype, block_size):
    x = torch.from_numpy(rng.standard_normal((9, 4, 6, 6))).to(getattr(torch, dtype))
    d2 = squared_distances(x, block_size=block_size)
    assert_torch_matches(d2, squared_distances(x.numpy(), block_size=block_size), x, scaled=True)
    np.testing.assert_array_equal(torch.diagonal(d2).numpy(), 0.0)
    np.testing.assert_array_equal(d2.numpy(), d2.numpy().T)  # exactly symmetric on torch too
    assert (d2 >= 0).all()


@needs_torch
def test_torch_integer_input_and_channels(rng):
    x = torch.arange(12).reshape(4, 3)
    np.testing.assert_array_equal(squared_distances(x).numpy(), ref.squared_distances(x.numpy()))
    conv = torch.from_numpy(rng.standard_normal((6, 5, 3, 3)).astype(np.float32))
    per_channel = channel_squared_distances(conv)
    assert per_channel.shape == (5, 6, 6)
    assert_torch_matches(per_channel, channel_squared_distances(conv.numpy()), conv, scaled=True)


@needs_torch
def test_torch_or_nan_and_square_stack(rng):
    x = torch.from_numpy(rng.standard_normal((5, 3)))
    d2, nonfinite = squared_distances_or_nan(x)
    assert not nonfinite
    assert_torch_matches(d2, squared_distances(x.numpy()), x, scaled=True)
    x[3, 0] = float("nan")
    d2, nonfinite = squared_distances_or_nan(x)
    assert nonfinite and isinstance(d2, torch.Tensor) and d2.dtype == torch.float64
    assert torch.isnan(d2).all()
    stack = check_square_stack(torch.eye(3, dtype=torch.float32)[None], "a")
    assert stack.dtype == torch.float64 and stack.shape == (1, 3, 3)
    with pytest.raises(InputError, match="a contains NaN or Inf"):
        check_square_stack(torch.full((3, 3), float("inf")), "a")
    with pytest.raises(InputError, match=r"square matrices \(\.\.\., N, N\), got \(3, 4\)"):
        check_square_stack(torch.ones(3, 4), "a")


@needs_torch
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: torch.ones(1, 4), "at least 2 samples"),
        (lambda: torch.tensor(3.0), "leading sample axis"),
        (lambda: torch.ones(3, 2, dtype=torch.complex64), "real numbers"),
    ],
)
def test_torch_bad_input_raises_the_same_errors(make, match):
    with pytest.raises(InputError, match=match):
        squared_distances(make())


@needs_torch
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_torch_non_finite_samples_are_named(rng, bad):
    x = rng.standard_normal((6, 3, 3)).astype(np.float32)
    x[4, 1, 2] = bad
    with pytest.raises(InputError, match=r"NaN or Inf in sample\(s\) 4 "):
        squared_distances(torch.from_numpy(x))
