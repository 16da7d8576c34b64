import numpy as np
import pytest
import reference as ref
from torch_support import assert_torch_matches, needs_torch, torch

from infoplane.core.distances import channel_squared_distances, squared_distances
from infoplane.core.entropy import joint_entropy, renyi_entropy
from infoplane.core.kernels import (
    check_widths,
    exp_flushed,
    gaussian_gram,
    label_gram,
    multivariate_gram,
)
from infoplane.errors import InputError

FLUSHED = np.exp(-100.0)  # kernel values below this are set to 0


def test_gaussian_gram_matches_reference_and_has_no_factor_two(rng):
    d2 = squared_distances(rng.standard_normal((8, 3)))
    np.testing.assert_allclose(
        gaussian_gram(d2, 1.7), ref.gaussian_gram(d2, 1.7), rtol=1e-14, atol=FLUSHED
    )
    # exp(−d²/σ²): at d² = σ² the kernel is e^−1 (with a factor 2 it would be e^−1/2)
    assert gaussian_gram(np.array([[0.0, 4.0], [4.0, 0.0]]), 2.0)[0, 1] == pytest.approx(np.exp(-1))


def test_gaussian_gram_batched_widths(rng):
    d2 = np.stack([squared_distances(rng.standard_normal((6, 4))) for _ in range(3)])
    sigmas = np.array([0.5, 1.0, 3.0])
    out = gaussian_gram(d2, sigmas)
    for k in range(3):
        np.testing.assert_allclose(
            out[k], ref.gaussian_gram(d2[k], sigmas[k]), rtol=1e-14, atol=FLUSHED
        )
    np.testing.assert_allclose(gaussian_gram(d2, 2.0)[1], ref.gaussian_gram(d2[1], 2.0))


def test_kernel_values_below_exp_minus_100_are_exactly_zero():
    d2 = np.array([[0.0, 99.0, 101.0], [99.0, 0.0, 400.0], [101.0, 400.0, 0.0]])
    k = gaussian_gram(d2, 1.0)
    assert k[0, 1] == np.exp(-99.0)
    assert k[0, 2] == 0.0 and k[1, 2] == 0.0
    assert multivariate_gram(d2[None], 1.0)[0, 2] == 0.0


def test_label_gram_is_the_class_indicator():
    y = np.array([3, 1, 3, 0, 1, 1])
    np.testing.assert_array_equal(label_gram(y), ref.label_gram(y))


def test_paper_one_hot_rbf_equals_the_indicator():
    y = np.array([0, 2, 2, 1, 0, 2, 1])
    onehot = np.eye(3)[y]
    k_paper = gaussian_gram(squared_distances(onehot), 0.1)
    np.testing.assert_array_equal(k_paper, label_gram(y))  # e^-200 is flushed to exactly 0


@pytest.mark.parametrize("classes", [2, 3, 10])
def test_label_entropy_is_the_shannon_entropy_of_the_histogram(rng, classes):
    y = rng.integers(0, classes, size=60)
    assert renyi_entropy(label_gram(y)) == pytest.approx(ref.shannon_entropy_of_labels(y), abs=1e-9)


def test_tensor_kernel_equals_product_of_channel_kernels(rng):
    x = np.maximum(rng.standard_normal((12, 6, 4, 4)), 0).astype(np.float32)
    sigma = 3.0
    tensor = gaussian_gram(squared_distances(x), sigma)
    per_channel = channel_squared_distances(x)
    product = np.ones((12, 12))
    for c in range(6):
        product *= ref.gaussian_gram(per_channel[c], sigma)
    np.testing.assert_allclose(tensor, product, rtol=0, atol=1e-10)
    np.testing.assert_allclose(multivariate_gram(per_channel, sigma), product, rtol=0, atol=1e-10)


def test_multivariate_gram_with_per_channel_widths(rng):
    per_channel = channel_squared_distances(rng.standard_normal((7, 3, 5)))
    sigmas = np.array([0.8, 2.0, 5.0])
    expected = np.prod([ref.gaussian_gram(per_channel[c], sigmas[c]) for c in range(3)], axis=0)
    np.testing.assert_allclose(multivariate_gram(per_channel, sigmas), expected, rtol=1e-12)


def test_multivariate_joint_entropy_saturates_with_many_channels(rng):
    # Yu et al.'s channel-wise Gram with fixed per-channel widths: the Hadamard product of many
    # channels tends to I/N and the joint entropy to log2 N, whatever the data.
    n = 100
    x = np.maximum(rng.standard_normal((n, 512, 2, 2)), 0)
    per_channel = channel_squared_distances(x)
    sigma = np.sqrt(np.median(per_channel[:, ~np.eye(n, dtype=bool)], axis=1))  # median heuristic
    entropies = [renyi_entropy(multivariate_gram(per_channel[:c], sigma[:c])) for c in (1, 16, 512)]
    assert entropies[0] < entropies[1] < entropies[2]
    assert entropies[2] == pytest.approx(np.log2(n), abs=1e-3)
    assert entropies[0] < np.log2(n) - 1


def test_joint_entropy_of_channel_grams_equals_entropy_of_multivariate_gram(rng):
    per_channel = channel_squared_distances(rng.standard_normal((9, 4, 3)))
    sigmas = np.array([1.0, 1.5, 2.0, 2.5])
    grams = [gaussian_gram(per_channel[c], sigmas[c]) for c in range(4)]
    assert joint_entropy(grams) == pytest.approx(
        float(renyi_entropy(multivariate_gram(per_channel, sigmas))), abs=1e-10
    )


@pytest.mark.parametrize("sigma", [0.0, -1.0, np.nan, np.inf, "wide", None])
def test_bad_width_raises(sigma):
    with pytest.raises(InputError, match="sigma"):
        gaussian_gram(np.zeros((3, 3)), sigma)


def test_bad_distances_raise():
    with pytest.raises(InputError, match="negative"):
        gaussian_gram(np.array([[0.0, -1.0], [-1.0, 0.0]]), 1.0)
    with pytest.raises(InputError, match="square"):
        gaussian_gram(np.zeros((3, 4)), 1.0)
    with pytest.raises(InputError, match="at least 2"):
        gaussian_gram(np.zeros((1, 1)), 1.0)
    with pytest.raises(InputError, match="NaN or Inf"):
        gaussian_gram(np.array([[0.0, np.nan], [np.nan, 0.0]]), 1.0)
    with pytest.raises(InputError, match="does not match"):
        gaussian_gram(np.zeros((2, 3, 3)), np.ones(3))
    with pytest.raises(InputError, match=r"\(C, N, N\)"):
        multivariate_gram(np.zeros((3, 3)), 1.0)
    with pytest.raises(InputError, match="sigmas"):
        multivariate_gram(np.zeros((2, 3, 3)), [1.0, 0.0])


def test_bad_labels_raise():
    with pytest.raises(InputError, match="argmax"):
        label_gram(np.eye(3))
    with pytest.raises(InputError, match="integers"):
        label_gram(np.array([0.0, 1.0]))
    with pytest.raises(InputError, match="at least 2"):
        label_gram(np.array([1]))


def test_gaussian_gram_of_a_large_stack_spans_row_blocks(rng):
    # 3 × 300 rows of 300: row blocks of the fused scale-and-exp pass (436 rows of 1 MiB each)
    # that cross the boundaries between matrices.
    d2 = np.stack([squared_distances(rng.standard_normal((300, 3))) for _ in range(3)])
    sigmas = np.array([0.3, 1.0, 3.0])
    out = gaussian_gram(d2.astype(np.float32), sigmas)
    assert out.dtype == np.float64 and out.shape == d2.shape
    for k in range(3):
        d2_k = d2[k].astype(np.float32).astype(np.float64)
        # bit for bit the whole-matrix computation: the same operations on every entry
        np.testing.assert_array_equal(out[k], exp_flushed(d2_k * (-1.0 / sigmas[k] ** 2)))
        expected = ref.gaussian_gram(d2_k, sigmas[k])
        np.testing.assert_allclose(out[k], expected, rtol=1e-13, atol=FLUSHED)


def test_a_bad_entry_in_a_later_row_block_is_found():
    d2 = np.zeros((600, 600))
    d2[590, 7] = d2[7, 590] = -1.0
    with pytest.raises(InputError, match="negative"):
        gaussian_gram(d2, 1.0)
    d2[590, 7] = d2[7, 590] = np.nan
    d2[3, 4] = d2[4, 3] = -1.0  # NaN in any block is named first, as by check_distances
    with pytest.raises(InputError, match="NaN or Inf"):
        gaussian_gram(d2, 1.0)


# --- torch tensors: the same functions, results on the input's device ------------------------


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_gaussian_gram_matches_numpy(rng, dtype):
    d2 = np.stack([squared_distances(rng.standard_normal((6, 3))) for _ in range(2)])
    d2_t = torch.from_numpy(d2).to(getattr(torch, dtype))
    expected = d2_t.numpy().astype(np.float64)
    for sigma in (1.3, np.float32(0.7), np.array([0.5, 2.0]), torch.tensor([0.5, 2.0])):
        assert_torch_matches(gaussian_gram(d2_t, sigma), gaussian_gram(expected, sigma), d2_t)
    flushed = gaussian_gram(torch.tensor([[0.0, 101.0], [101.0, 0.0]]), 1.0)
    assert flushed[0, 1] == 0.0 and flushed[0, 0] == 1.0


@needs_torch
def test_torch_multivariate_and_label_grams_match_numpy(rng):
    x = torch.from_numpy(rng.standard_normal((7, 3, 5)).astype(np.float32))
    per_channel = channel_squared_distances(x)
    sigmas = np.array([0.8, 2.0, 5.0])
    assert_torch_matches(
        multivariate_gram(per_channel, sigmas),
        multivariate_gram(per_channel.numpy(), sigmas),
        x,
    )
    y = torch.tensor([3, 1, 3, 0, 1, 1])
    k = label_gram(y)
    assert k.dtype == torch.float64
    np.testing.assert_array_equal(k.numpy(), ref.label_gram(y.numpy()))
    arg = torch.tensor([0.0, -50.0, -100.5, -400.0], dtype=torch.float64)
    assert exp_flushed(arg) is arg  # in place
    np.testing.assert_array_equal(arg.numpy(), [1.0, np.exp(-50.0), 0.0, 0.0])


@needs_torch
def test_torch_inputs_raise_the_same_errors():
    with pytest.raises(InputError, match="negative"):
        gaussian_gram(torch.tensor([[0.0, -1.0], [-1.0, 0.0]]), 1.0)
    with pytest.raises(InputError, match="NaN or Inf"):
        gaussian_gram(torch.tensor([[0.0, float("nan")], [float("nan"), 0.0]]), 1.0)
    with pytest.raises(InputError, match="square"):
        gaussian_gram(torch.zeros(3, 4), 1.0)
    with pytest.raises(InputError, match="sigma must be finite and > 0"):
        gaussian_gram(torch.zeros(3, 3), torch.tensor(0.0))
    with pytest.raises(InputError, match="does not match"):
        gaussian_gram(torch.zeros(2, 3, 3), torch.ones(3))
    with pytest.raises(InputError, match=r"\(C, N, N\)"):
        multivariate_gram(torch.zeros(3, 3), 1.0)
    with pytest.raises(InputError, match="integers"):
        label_gram(torch.tensor([0.0, 1.0]))
    with pytest.raises(InputError, match="argmax"):
        label_gram(torch.eye(3, dtype=torch.int64))


@needs_torch
def test_widths_from_a_tensor_are_checked_on_the_host():
    s = check_widths(torch.tensor([1.0, 2.0], dtype=torch.float32), (2,))
    assert isinstance(s, np.ndarray) and s.dtype == np.float64
    np.testing.assert_array_equal(s, [1.0, 2.0])
