import warnings

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch_support import assert_torch_matches, needs_torch, torch

from infoplane.core import entropy
from infoplane.core.distances import squared_distances
from infoplane.core.entropy import (
    information_plane,
    joint_entropy,
    mutual_information,
    renyi_entropy,
)
from infoplane.core.kernels import gaussian_gram, label_gram
from infoplane.core.widths import alignment_width
from infoplane.errors import InputError

ALPHAS = [0.5, 1.0, 1.01, 2.0, 3.0, 5.5]
TOL = 1e-9
PROPERTY = settings(max_examples=50, deadline=None)


def rbf_gram(rng, n=12, dim=3, sigma=None):
    d2 = squared_distances(rng.standard_normal((n, dim)))
    return gaussian_gram(d2, sigma if sigma is not None else np.sqrt(np.median(d2)))


def random_psd(rng, n=10, rank=None):
    b = rng.standard_normal((n, rank or n))
    return b @ b.T


# --- hypothesis strategies: RBF Grams of random samples and widths ----------------------------

samples = hnp.arrays(
    np.float64,
    st.tuples(st.integers(2, 10), st.integers(1, 4)),
    elements=st.floats(-5, 5, allow_nan=False, allow_infinity=False),
)
widths = st.floats(0.05, 20.0)
alphas = st.sampled_from(ALPHAS)


@st.composite
def rbf_pair(draw):
    """Two RBF Grams (unit diagonal, PSD) on the same N samples."""
    x = draw(samples)
    z = draw(
        hnp.arrays(
            np.float64,
            st.tuples(st.just(x.shape[0]), st.integers(1, 4)),
            elements=st.floats(-5, 5, allow_nan=False, allow_infinity=False),
        )
    )
    return (
        gaussian_gram(squared_distances(x), draw(widths)),
        gaussian_gram(squared_distances(z), draw(widths)),
    )


# --- against the brute-force reference -------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
def test_renyi_entropy_matches_reference_on_rbf_grams(rng, alpha):
    for sigma in (0.3, 1.0, 4.0):
        k = rbf_gram(rng, sigma=sigma)
        assert renyi_entropy(k, alpha) == pytest.approx(ref.renyi_entropy(k, alpha), abs=TOL)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_renyi_entropy_matches_reference_on_psd_matrices(rng, alpha):
    k = random_psd(rng)
    assert renyi_entropy(k, alpha) == pytest.approx(ref.renyi_entropy(k, alpha), abs=TOL)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("rank", [1, 4])
def test_rank_deficient_grams_ignore_rounding_noise_on_zero_eigenvalues(rng, alpha, rank):
    # K = B Bᵀ has the non-zero eigenvalues of Bᵀ B (rank × rank) and N − rank exact zeros;
    # for α < 1 the rounding noise on those zeros (~1e-17) must not leak in through λ^α.
    b = rng.standard_normal((10, rank))
    k = b @ b.T
    lam = np.linalg.eigvalsh(b.T @ b) / np.trace(k)
    if alpha == 1.0:
        expected = -(lam * np.log2(lam)).sum()
    else:
        expected = np.log2((lam**alpha).sum()) / (1 - alpha)
    assert renyi_entropy(k, alpha) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 1.5])
def test_joint_entropy_and_mi_match_reference(rng, alpha):
    a, b, c = (rbf_gram(rng, sigma=s) for s in (0.7, 1.5, 3.0))
    assert joint_entropy([a, b, c], alpha) == pytest.approx(
        ref.joint_entropy([a, b, c], alpha), abs=TOL
    )
    assert mutual_information(a, b, alpha) == pytest.approx(
        ref.mutual_information(a, b, alpha), abs=TOL
    )


def test_min_entropy_is_minus_log2_of_the_largest_eigenvalue(rng):
    k = rbf_gram(rng)
    top = np.linalg.eigvalsh(k / np.trace(k)).max()
    assert renyi_entropy(k, np.inf) == pytest.approx(-np.log2(top), abs=1e-12)
    assert renyi_entropy(k, 60.0) == pytest.approx(-np.log2(top), abs=0.2)  # S_α → S_∞


# --- invariants of the estimator -----------------------------------------------------------------


@PROPERTY
@given(x=samples, sigma=widths)
def test_rbf_grams_are_psd(x, sigma):
    k = gaussian_gram(squared_distances(x), sigma)
    assert np.linalg.eigvalsh(k).min() >= -1e-12 * k.shape[0]


@PROPERTY
@given(x=samples, sigma=widths, alpha=alphas)
def test_entropy_lies_between_zero_and_log2_n(x, sigma, alpha):
    k = gaussian_gram(squared_distances(x), sigma)
    h = renyi_entropy(k, alpha)
    assert -TOL <= h <= np.log2(k.shape[0]) + TOL


@PROPERTY
@given(pair=rbf_pair(), alpha=alphas)
def test_joint_entropy_is_at_least_each_marginal(pair, alpha):
    a, b = pair
    h_a, h_b = renyi_entropy(a, alpha), renyi_entropy(b, alpha)
    h_ab = joint_entropy([a, b], alpha)
    assert max(h_a, h_b) - TOL <= h_ab
    mi = mutual_information(a, b, alpha)
    assert mi <= min(h_a, h_b) + TOL
    assert mi == pytest.approx(h_a + h_b - h_ab, abs=1e-12)


@PROPERTY
@given(pair=rbf_pair(), alpha=st.sampled_from([0.5, 1.0]))
def test_joint_entropy_is_subadditive_and_mi_non_negative_for_alpha_up_to_one(pair, alpha):
    a, b = pair
    h_a, h_b = renyi_entropy(a, alpha), renyi_entropy(b, alpha)
    assert joint_entropy([a, b], alpha) <= h_a + h_b + TOL
    assert mutual_information(a, b, alpha) >= -TOL


def test_subadditivity_fails_for_alpha_above_one():
    # As for Shannon-Rényi entropies, S(A, B) <= S(A) + S(B) is not a theorem for α > 1: two
    # variables that each put 3 of 4 samples together (unit distance, σ = 1).
    a = gaussian_gram(squared_distances(np.array([[0.0], [1.0], [0.0], [0.0]])), 1.0)
    b = gaussian_gram(squared_distances(np.array([[1.0], [0.0], [0.0], [0.0]])), 1.0)
    assert joint_entropy([a, b], 2.0) > renyi_entropy(a, 2.0) + renyi_entropy(b, 2.0) + 0.03
    assert mutual_information(a, b, 2.0) < -0.03
    assert mutual_information(a, b, 1.0) >= 0


@PROPERTY
@given(n=st.integers(2, 40), alpha=st.one_of(alphas, st.floats(0.05, 30.0)))
def test_identity_gram_gives_log2_n(n, alpha):
    assert renyi_entropy(np.eye(n), alpha) == pytest.approx(np.log2(n), abs=1e-12)
    assert renyi_entropy(3.0 * np.eye(n), alpha) == pytest.approx(np.log2(n), abs=1e-12)


@PROPERTY
@given(x=samples, sigma=widths)
def test_alpha_two_fast_path_equals_eigenvalue_path(x, sigma):
    k = gaussian_gram(squared_distances(x), sigma)
    lam = np.linalg.eigvalsh(k / np.trace(k))
    assert renyi_entropy(k, 2.0) == pytest.approx(-np.log2((lam**2).sum()), abs=1e-12)
    assert renyi_entropy(k, 2.0) == pytest.approx(renyi_entropy(k, 2.0 + 1e-9), abs=1e-7)


@PROPERTY
@given(
    y=hnp.arrays(np.int64, st.integers(2, 30), elements=st.integers(0, 4)),
    alpha=alphas,
)
def test_self_information_of_an_indicator_gram_is_its_entropy(y, alpha):
    # I(A;A) = S(A) holds when A∘A = A (0/1 Grams such as the label kernel).
    k = label_gram(y)
    assert mutual_information(k, k, alpha) == pytest.approx(renyi_entropy(k, alpha), abs=TOL)


@PROPERTY
@given(x=samples, sigma=widths, alpha=alphas)
def test_self_information_of_an_rbf_gram_is_at_most_its_entropy(x, sigma, alpha):
    # For an RBF Gram K∘K is a narrower RBF, so S(A, A) >= S(A) and I(A;A) <= S(A) (not equal).
    k = gaussian_gram(squared_distances(x), sigma)
    mi = mutual_information(k, k, alpha)
    assert -TOL <= mi <= renyi_entropy(k, alpha) + TOL


def test_alpha_one_and_alpha_1_01_agree_within_005_bits(rng):
    y = rng.integers(0, 10, 100)
    for dim in (2, 10, 50):
        d2 = squared_distances(rng.standard_normal((100, dim)))
        mean_dist = np.sqrt(d2).mean()
        for sigma in (
            0.2 * mean_dist,
            mean_dist,
            5 * mean_dist,
            alignment_width(d2, label_gram(y))[0],
        ):
            k = gaussian_gram(d2, sigma)
            assert abs(renyi_entropy(k, 1.0) - renyi_entropy(k, 1.01)) < 0.05


# --- numerics: constant data, clipping, batching ---------------------------------------------


def test_constant_activations_give_zero_entropy_without_warnings():
    d2 = squared_distances(np.full((20, 8), 0.7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        k = gaussian_gram(d2, 1.0)
        for alpha in [*ALPHAS, np.inf]:
            h, clipped = renyi_entropy(k, alpha, return_clipped=True)
            assert np.isfinite(h) and abs(h) < 1e-9
            assert 0 <= clipped < 1e-12
        ip = information_plane(np.eye(20), k[None], label_gram(np.arange(20) % 3))
    assert all(np.isfinite(v).all() for v in ip.values())
    assert abs(ip["H_T"][0]) < 1e-9 and abs(ip["I_XT"][0]) < 1e-9 and abs(ip["I_TY"][0]) < 1e-9


def test_negative_eigenvalues_are_clipped_and_reported_never_folded():
    rot, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    eig = np.array([0.6, 0.5, -0.1])
    k = rot @ np.diag(eig) @ rot.T
    h, clipped = renyi_entropy(k, 1.0, return_clipped=True)
    p = np.array([0.6, 0.5]) / 1.1
    assert clipped == pytest.approx(0.1, abs=1e-12)
    assert h == pytest.approx(-(p * np.log2(p)).sum(), abs=1e-12)
    folded = np.abs(eig)  # what abs() would have used
    assert abs(h - (-(folded * np.log2(folded)).sum())) > 0.1


def test_clipped_mass_is_zero_for_exact_identity_and_tiny_for_rbf(rng):
    _, clipped = renyi_entropy(np.eye(5), return_clipped=True)
    assert clipped == 0
    _, clipped = renyi_entropy(rbf_gram(rng, n=40, sigma=50.0), return_clipped=True)
    assert 0 <= clipped < 1e-12


def test_batched_stacks_match_single_calls(rng):
    stack = np.stack([[rbf_gram(rng, n=9, sigma=s) for s in (0.5, 1.0, 2.0)] for _ in range(2)])
    for alpha in (1.0, 2.0, 1.5):
        h = renyi_entropy(stack, alpha)
        assert h.shape == (2, 3)
        for i in range(2):
            for j in range(3):
                assert h[i, j] == pytest.approx(renyi_entropy(stack[i, j], alpha), abs=1e-13)
    mi = mutual_information(stack, stack[0, 0])
    assert mi.shape == (2, 3)
    assert mi[1, 2] == pytest.approx(mutual_information(stack[1, 2], stack[0, 0]), abs=1e-13)
    joint = joint_entropy([stack, stack[0, 0]])
    assert joint[1, 1] == pytest.approx(joint_entropy([stack[1, 1], stack[0, 0]]), abs=1e-13)


def test_unnormalised_grams_are_normalised_by_trace(rng):
    k = rbf_gram(rng)
    assert renyi_entropy(7.5 * k) == pytest.approx(renyi_entropy(k), abs=1e-12)
    assert joint_entropy([k]) == pytest.approx(renyi_entropy(k), abs=1e-12)


# --- information plane of one step -----------------------------------------------------------


def _step(rng, n=30, layers=4, classes=5):
    y = rng.integers(0, classes, n)
    x = rng.random((n, 20))
    gram_x = gaussian_gram(squared_distances(x), 2.0)
    grams = []
    for layer in range(layers):
        t = np.tanh(x @ rng.standard_normal((20, 5 + layer)))
        d2 = squared_distances(t)
        grams.append(gaussian_gram(d2, alignment_width(d2, label_gram(y))[0]))
    return gram_x, np.stack(grams), y


def _assert_plane_matches_reference(ip, gram_x, grams, gram_y, alpha):
    assert ip["H_X"] == pytest.approx(ref.renyi_entropy(gram_x, alpha), abs=TOL)
    assert ip["H_Y"] == pytest.approx(ref.renyi_entropy(gram_y, alpha), abs=TOL)
    for layer, t in enumerate(grams):
        assert ip["H_T"][layer] == pytest.approx(ref.renyi_entropy(t, alpha), abs=TOL)
        assert ip["H_XT"][layer] == pytest.approx(ref.joint_entropy([gram_x, t], alpha), abs=TOL)
        assert ip["H_TY"][layer] == pytest.approx(ref.joint_entropy([t, gram_y], alpha), abs=TOL)
        assert ip["I_XT"][layer] == pytest.approx(ref.mutual_information(gram_x, t, alpha), abs=TOL)
        assert ip["I_TY"][layer] == pytest.approx(ref.mutual_information(t, gram_y, alpha), abs=TOL)


@pytest.mark.parametrize("alpha", [1.0, 1.01, 2.0])
@pytest.mark.parametrize("label_kernel", ["indicator", "rbf"])
def test_information_plane_matches_reference(rng, alpha, label_kernel):
    gram_x, grams, y = _step(rng)
    if label_kernel == "indicator":  # block-diagonal: the per-block path
        gram_y = label_gram(y)
    else:  # a dense label Gram: the batched dense path
        gram_y = gaussian_gram(squared_distances(np.eye(5)[y]), 1.0)
    ip = information_plane(gram_x, grams, gram_y, alpha)
    assert set(ip) == {"H_X", "H_Y", "H_T", "H_XT", "H_TY", "I_XT", "I_TY", "clipped_mass"}
    assert ip["H_X"].shape == ip["H_Y"].shape == ()
    assert all(ip[k].shape == (4,) for k in ("H_T", "H_XT", "H_TY", "I_XT", "I_TY"))
    assert ((ip["clipped_mass"] >= 0) & (ip["clipped_mass"] < 1e-12)).all()
    _assert_plane_matches_reference(ip, gram_x, grams, gram_y, alpha)


def test_information_plane_with_identity_input_gram(rng):
    # CIFAR fed as raw 0–255 pixels with σ_X = 8: K_X = I, so I(X;T) = H(T) exactly.
    _, grams, y = _step(rng, n=25, layers=3)
    ip = information_plane(np.eye(25), grams, label_gram(y))
    assert ip["H_X"] == pytest.approx(np.log2(25), abs=1e-12)
    np.testing.assert_allclose(ip["I_XT"], ip["H_T"], atol=1e-10)
    _assert_plane_matches_reference(ip, np.eye(25), grams, label_gram(y), 1.0)


def test_information_plane_invariants(rng):
    gram_x, grams, y = _step(rng, n=40, layers=5)
    ip = information_plane(gram_x, grams, label_gram(y))
    h_max = np.log2(40)
    for key in ("H_T", "H_XT", "H_TY"):
        assert ((ip[key] >= -TOL) & (ip[key] <= h_max + TOL)).all()
    assert (ip["H_XT"] >= np.maximum(ip["H_X"], ip["H_T"]) - TOL).all()
    assert (ip["I_XT"] >= -TOL).all() and (
        ip["I_XT"] <= np.minimum(ip["H_X"], ip["H_T"]) + TOL
    ).all()
    assert (ip["I_TY"] >= -TOL).all() and (ip["I_TY"] <= ip["H_Y"] + TOL).all()


def test_information_plane_accepts_a_single_layer_matrix(rng):
    gram_x, grams, y = _step(rng, layers=1)
    ip = information_plane(gram_x, grams[0], label_gram(y))
    assert ip["H_T"].shape == (1,)


# --- torch tensors: the same functions, results on the input's device ------------------------


def _count_block_spectra(monkeypatch):
    calls = []
    original = entropy._block_spectra

    def spy(factor, layers, blocks):
        calls.append((type(factor), type(layers), [type(b) for b in blocks]))
        return original(factor, layers, blocks)

    monkeypatch.setattr(entropy, "_block_spectra", spy)
    return calls


@needs_torch
@pytest.mark.parametrize("alpha", [1.0, 1.01, 0.5, 2.0, 3.0, np.inf])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_entropies_match_numpy(rng, alpha, dtype):
    gram_x, grams, y = _step(rng)
    gram_y = label_gram(y)
    x, t, ty = (torch.from_numpy(m).to(getattr(torch, dtype)) for m in (gram_x, grams, gram_y))
    gram_x, grams, gram_y = (m.numpy().astype(np.float64) for m in (x, t, ty))
    h, c = renyi_entropy(t, alpha, return_clipped=True)
    expected_h, expected_c = renyi_entropy(grams, alpha, return_clipped=True)
    assert_torch_matches(h, expected_h, t)
    assert_torch_matches(c, expected_c, t)
    assert_torch_matches(joint_entropy([x, t], alpha), joint_entropy([gram_x, grams], alpha), t)
    assert_torch_matches(
        mutual_information(t, ty, alpha), mutual_information(grams, gram_y, alpha), t
    )
    single = renyi_entropy(t[0], alpha)
    assert single.shape == () and single.dtype == torch.float64


@needs_torch
@pytest.mark.parametrize("alpha", [1.0, 1.01, 2.0])
@pytest.mark.parametrize("label_kernel", ["indicator", "rbf"])
def test_torch_information_plane_matches_numpy(rng, monkeypatch, alpha, label_kernel):
    gram_x, grams, y = _step(rng)
    if label_kernel == "indicator":
        gram_y = label_gram(y)
    else:
        gram_y = gaussian_gram(squared_distances(np.eye(5)[y]), 1.0)
    expected = information_plane(gram_x, grams.astype(np.float32), gram_y, alpha)
    calls = _count_block_spectra(monkeypatch)
    t = torch.from_numpy
    ip = information_plane(t(gram_x), t(grams.astype(np.float32)), t(gram_y), alpha)
    assert set(ip) == set(expected)
    for key, value in expected.items():
        assert ip[key].shape == value.shape, key
        assert_torch_matches(ip[key], value, t(gram_x))
    if label_kernel == "indicator" and alpha != 2.0:  # Y splits into classes on torch too
        assert calls == [(torch.Tensor, torch.Tensor, [np.ndarray] * 5)]
    else:
        assert calls == []


@needs_torch
def test_torch_block_split_of_an_identity_input_gram(rng, monkeypatch):
    _, grams, y = _step(rng, n=25, layers=3)
    calls = _count_block_spectra(monkeypatch)
    eye = torch.eye(25, dtype=torch.float64)
    ip = information_plane(eye, torch.from_numpy(grams), label_gram(torch.from_numpy(y)))
    assert len(calls) == 2  # X into 25 singletons, Y into its classes
    assert float(ip["H_X"]) == pytest.approx(np.log2(25), abs=1e-12)
    np.testing.assert_allclose(ip["I_XT"].numpy(), ip["H_T"].numpy(), atol=1e-10)
    assert entropy._components(torch.from_numpy(grams[0])) is None  # dense: no host copy


@needs_torch
def test_torch_inputs_raise_the_same_errors():
    with pytest.raises(InputError, match="alpha"):
        renyi_entropy(torch.eye(3), 0.0)
    with pytest.raises(InputError, match="gram contains NaN or Inf"):
        renyi_entropy(torch.full((3, 3), float("nan")))
    with pytest.raises(InputError, match="symmetric"):
        renyi_entropy(torch.triu(torch.ones(3, 3)))
    with pytest.raises(InputError, match="trace"):
        renyi_entropy(-torch.eye(3))
    with pytest.raises(InputError, match="at least 2"):
        renyi_entropy(torch.eye(1))
    with pytest.raises(InputError, match="different numbers of samples"):
        information_plane(torch.eye(3), torch.eye(4)[None], torch.eye(3))
    with pytest.raises(InputError, match="different numbers of samples"):
        mutual_information(torch.eye(3), torch.eye(4))
    with pytest.raises(InputError, match=r"\(L, N, N\)"):
        information_plane(torch.eye(3), torch.eye(3)[None, None], torch.eye(3))
    with pytest.raises(InputError, match="mix array libraries"):
        mutual_information(np.eye(3), torch.eye(3))


@needs_torch
@pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_computed_on_the_gpu(rng):
    activations = rng.standard_normal((40, 3, 4, 4)).astype(np.float32)
    x_np = rng.random((40, 20)).astype(np.float32)
    y_np = rng.integers(0, 5, 40)
    cuda = torch.device("cuda")
    x, act, y = (torch.from_numpy(a).to(cuda) for a in (x_np, activations, y_np))
    d2 = squared_distances(act)
    assert d2.device.type == "cuda" and d2.dtype == torch.float64
    np.testing.assert_allclose(
        d2.cpu().numpy(), squared_distances(activations), rtol=1e-12, atol=1e-9
    )
    gram_x, gram_t = gaussian_gram(squared_distances(x), 2.0), gaussian_gram(d2, 6.0)
    ip = information_plane(gram_x, gram_t[None], label_gram(y), 1.0)
    expected = information_plane(
        gaussian_gram(squared_distances(x_np), 2.0),
        gaussian_gram(squared_distances(activations), 6.0)[None],
        label_gram(y_np),
        1.0,
    )
    for key, value in expected.items():
        assert ip[key].device.type == "cuda", key
        np.testing.assert_allclose(ip[key].cpu().numpy(), value, rtol=1e-9, atol=1e-9)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, -1.0, np.nan, "one", None])
def test_bad_alpha_raises(alpha):
    with pytest.raises(InputError, match="alpha"):
        renyi_entropy(np.eye(3), alpha)


@pytest.mark.parametrize(
    ("gram", "match"),
    [
        (np.eye(1), "at least 2"),
        (np.ones((2, 3)), "square"),
        (np.ones(3), "square"),
        (np.array([[1.0, np.nan], [np.nan, 1.0]]), "NaN or Inf"),
        (np.array([[1.0, np.inf], [np.inf, 1.0]]), "NaN or Inf"),
        (np.triu(np.ones((3, 3))), "symmetric"),
        (np.zeros((3, 3)), "trace"),
        (-np.eye(3), "trace"),
    ],
)
def test_bad_gram_raises(gram, match):
    with pytest.raises(InputError, match=match):
        renyi_entropy(gram)


def test_mismatched_sizes_raise():
    with pytest.raises(InputError, match="different numbers of samples"):
        joint_entropy([np.eye(3), np.eye(4)])
    with pytest.raises(InputError, match="different numbers of samples"):
        mutual_information(np.eye(3), np.eye(4))
    with pytest.raises(InputError, match="different numbers of samples"):
        information_plane(np.eye(3), np.eye(4)[None], np.eye(3))
    with pytest.raises(InputError, match="empty"):
        joint_entropy([])
    with pytest.raises(InputError, match="single"):
        information_plane(np.eye(3)[None], np.eye(3)[None], np.eye(3))
    with pytest.raises(InputError, match=r"\(L, N, N\)"):
        information_plane(np.eye(3), np.eye(3)[None, None], np.eye(3))
