"""Binning and KDE estimators: their math against direct counts and formulas, and the pipeline."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from infoplane.core.binning import bin_activations, binning_step, plugin_entropy
from infoplane.core.distances import squared_distances
from infoplane.core.kde import kde_step, pairwise_mi, pairwise_mi_labels
from infoplane.errors import ConfigError
from infoplane.estimate.distances import compute_distances
from infoplane.estimate.pipeline import estimate
from infoplane.io.results import open_result, stack_runs
from infoplane.presets import (
    BUILTIN_PRESETS,
    needs_activations,
    preset_to_json,
    resolve_preset,
    validate_preset,
)
from infoplane.report.checks import check_result
from infoplane.testing import assert_invariants, assert_results_identical, make_store

STEPS = (0, 10, 20, 30)


# ---------------------------------------------------------------------------------------------
# binning


def _brute_entropy(keys) -> float:
    counts: dict = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def _brute_bin(value: float, low: float, high: float, bins: int) -> int:
    """The bin of one value by walking the edges."""
    edges = [low + (high - low) * k / bins for k in range(bins + 1)]
    for k in range(bins):
        if value < edges[k + 1]:
            return k
    return bins - 1


@pytest.mark.parametrize("value_range", [(-1.0, 1.0), "layer"])
@pytest.mark.parametrize("bins", [2, 3, 7])
def test_binning_agrees_with_a_brute_force_count(rng, bins, value_range):
    n, d = 16, 3
    t = np.tanh(rng.normal(size=(n, d)) * 1.5)
    x = rng.integers(0, 3, size=(n, 2)).astype(float)  # duplicate inputs on purpose
    y = rng.integers(0, 3, size=n)
    out = binning_step([t], x, y, bins=bins, value_range=value_range, layers=["fc"])
    low, high = (t.min(), t.max()) if value_range == "layer" else value_range
    patterns = [tuple(_brute_bin(v, low, high, bins) for v in row) for row in t]
    xs = [tuple(row) for row in x]
    h_t = _brute_entropy(patterns)
    h_x = _brute_entropy(xs)
    h_xt = _brute_entropy(list(zip(xs, patterns, strict=True)))
    h_ty = _brute_entropy(list(zip(patterns, y.tolist(), strict=True)))
    h_y = _brute_entropy(y.tolist())
    np.testing.assert_allclose(out["H_T"][0], h_t, atol=1e-12)
    np.testing.assert_allclose(out["H_X"], h_x, atol=1e-12)
    np.testing.assert_allclose(out["H_XT"][0], h_xt, atol=1e-12)
    np.testing.assert_allclose(out["I_XT"][0], h_x + h_t - h_xt, atol=1e-12)
    np.testing.assert_allclose(out["I_TY"][0], h_t + h_y - h_ty, atol=1e-12)
    assert out["occupied"][0] == len(set(patterns))
    assert out["saturated"][0] == (len(set(patterns)) == n)
    np.testing.assert_allclose(out["sigma"][0], (high - low) / bins)


def test_fixed_range_puts_outliers_in_the_edge_bins():
    indices, width = bin_activations(
        np.array([[-5.0], [-1.0], [0.0], [0.999], [1.0], [9.0]]), 4, (-1, 1)
    )
    np.testing.assert_array_equal(indices[:, 0], [0, 0, 2, 3, 3, 3])
    assert width == 0.5


def test_a_constant_layer_is_one_bin_under_adaptive_bins():
    out = binning_step(
        [np.full((5, 3), 0.3)], np.eye(5), np.arange(5), bins=30, value_range="layer", layers=["a"]
    )
    assert out["H_T"][0] == 0.0 and out["I_TY"][0] == 0.0 and out["occupied"][0] == 1


def _ib_inputs() -> np.ndarray:
    """The 4,096 distinct 12-bit inputs of the information-bottleneck data."""
    return np.array(list(itertools.product([0.0, 1.0], repeat=12)))


def test_binning_closed_form_on_the_12_bit_data():
    x = _ib_inputs()
    y = x[:, 0].astype(int)  # the label is the first bit: H(Y) = 1 bit
    layers = {
        "identity": 2 * x - 1,  # every input its own bin pattern: saturated
        "first3": 2 * x[:, :3] - 1,  # 3 of the bits: H(T) = 3 bits, I(T;Y) = 1 bit
        "last4": 2 * x[:, -4:] - 1,  # 4 bits independent of the label: I(T;Y) = 0
        "parity": (2 * (x.sum(axis=1) % 2) - 1)[:, None],  # one balanced bit
    }
    out = binning_step(
        list(layers.values()), x, y, bins=30, value_range=(-1, 1), layers=list(layers)
    )
    assert out["H_X"] == pytest.approx(12.0, abs=1e-12)
    assert out["H_Y"] == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(out["H_T"], [12, 3, 4, 1], atol=1e-12)
    np.testing.assert_allclose(out["I_XT"], [12, 3, 4, 1], atol=1e-9)
    np.testing.assert_allclose(out["I_TY"], [1, 1, 0, 0], atol=1e-9)
    np.testing.assert_array_equal(out["saturated"], [True, False, False, False])
    np.testing.assert_array_equal(out["occupied"], [4096, 8, 16, 2])


# ---------------------------------------------------------------------------------------------
# KDE


def _direct_mi(t: np.ndarray, variance: float, scale: float) -> float:
    """−(1/N) Σ_i log2 (1/N) Σ_j exp(−‖t_i − t_j‖² / (scale s²)), by loops in float64."""
    n = len(t)
    total = 0.0
    for i in range(n):
        inner = 0.0
        for j in range(n):
            d2 = float(np.sum((t[i].astype(np.float64) - t[j]) ** 2))
            inner += math.exp(-d2 / (scale * variance)) / n
        total -= math.log2(inner) / n
    return total


def _direct_mi_y(t: np.ndarray, y: np.ndarray, variance: float, scale: float) -> float:
    conditional = sum(
        np.mean(y == c) * _direct_mi(t[y == c], variance, scale) for c in np.unique(y)
    )
    return _direct_mi(t, variance, scale) - conditional


@pytest.mark.parametrize("variance", [1e-2, 1e-1, 1.0])
def test_kde_bounds_agree_with_a_direct_implementation(rng, variance):
    t = np.tanh(rng.normal(size=(14, 5)))
    y = rng.integers(0, 3, size=14)
    d2 = ((t[:, None, :] - t[None, :, :]) ** 2).sum(-1)
    for bound, scale in (("upper", 2.0), ("lower", 8.0)):
        np.testing.assert_allclose(
            pairwise_mi(d2, variance, bound), _direct_mi(t, variance, scale), rtol=1e-10
        )
        np.testing.assert_allclose(
            pairwise_mi_labels(d2, y, variance, bound),
            _direct_mi_y(t, y, variance, scale),
            rtol=1e-9,
            atol=1e-12,
        )


def test_kde_upper_bound_is_never_below_the_lower(rng):
    gaps_ty = []
    for _ in range(30):
        n, d = int(rng.integers(5, 40)), int(rng.integers(1, 30))
        t = rng.normal(size=(n, d)) * rng.uniform(0.01, 3)
        y = rng.integers(0, 4, size=n)
        d2 = squared_distances(t)
        for variance in np.logspace(-4, 3, 15):
            upper, lower = pairwise_mi(d2, variance, "upper"), pairwise_mi(d2, variance, "lower")
            assert upper >= lower - 1e-12
            assert 0 <= lower and upper <= math.log2(n) + 1e-12
            gaps_ty.append(
                pairwise_mi_labels(d2, y, variance, "upper")
                - pairwise_mi_labels(d2, y, variance, "lower")
            )
    # I(T;Y) is a difference of bounds; on these data its upper estimate is the larger too
    assert min(gaps_ty) >= -1e-9


def test_kde_bounds_tend_to_log2_n_and_to_zero(rng):
    n = 50
    t = rng.normal(size=(n, 4))  # distinct samples
    d2 = squared_distances(t)
    for bound in ("upper", "lower"):
        assert pairwise_mi(d2, 1e-6, bound) == pytest.approx(math.log2(n), abs=1e-9)
        assert pairwise_mi(d2, 1e8, bound) == pytest.approx(0.0, abs=1e-6)
        values = [pairwise_mi(d2, v, bound) for v in np.logspace(-4, 4, 30)]
        assert np.all(np.diff(values) <= 1e-12)  # more noise, less information


def test_kde_step_entropies_add_up_to_its_mi(rng):
    t = rng.normal(size=(2, 20, 3))
    x = rng.normal(size=(20, 6))
    y = rng.integers(0, 2, size=20)
    point = {
        "d2": np.stack([squared_distances(a) for a in t]),
        "d2_x": squared_distances(x),
        "y": y,
        "nonfinite": np.array([False, True]),
        "nonfinite_x": np.array(False),
    }
    out = kde_step(point, variance=0.1, layers=["a", "b"])
    assert out["H_X"] == pytest.approx(math.log2(20))
    assert out["H_Y"] == pytest.approx(plugin_entropy(y))
    np.testing.assert_allclose(out["I_XT"][0], out["H_X"] + out["H_T"][0] - out["H_XT"][0])
    np.testing.assert_allclose(out["I_TY"][0], out["H_T"][0] + out["H_Y"] - out["H_TY"][0])
    assert np.isnan(out["I_XT"][1]) and out["failures"] == [("b", "non-finite activations")]
    assert out["sigma"][0] == pytest.approx(math.sqrt(0.1))


# ---------------------------------------------------------------------------------------------
# presets


def test_matrix_presets_resolve_as_before():
    for name in ("paper", "paper-alpha1.01", "multivariate", "silverman", "fixed-example"):
        resolved = resolve_preset(None, name)
        assert "estimator" not in resolved
        explicit = validate_preset({**BUILTIN_PRESETS[name], "estimator": "matrix"}, name)
        assert preset_to_json(explicit) == preset_to_json(resolved)
    assert preset_to_json(validate_preset({})) == preset_to_json(resolve_preset(None, "paper"))


def test_classic_presets_resolve_with_their_defaults():
    assert validate_preset({"estimator": "binning"}) == {
        "estimator": "binning",
        "bins": 30,
        "range": [-1.0, 1.0],
    }
    assert validate_preset({"estimator": "binning", "range": "layer", "bins": 10})["range"] == (
        "layer"
    )
    assert validate_preset({"estimator": "kde"}) == {"estimator": "kde", "noise_variance": 0.1}
    assert needs_activations(resolve_preset(None, "binning"))
    assert not needs_activations(resolve_preset(None, "kde"))
    for name in ("binning", "binning-adaptive", "kde"):
        resolved = resolve_preset(None, name)
        assert validate_preset(json.loads(preset_to_json(resolved))) == resolved


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        ({"estimator": "histogram"}, "estimator must be one of"),
        ({"estimator": "binning", "bins": 0}, "bins must be an integer"),
        ({"estimator": "binning", "bins": 2.5}, "bins must be an integer"),
        ({"estimator": "binning", "range": [1, -1]}, "low < high"),
        ({"estimator": "binning", "range": "observed"}, "range must be"),
        ({"estimator": "binning", "range": [0, 1, 2]}, "range must be"),
        ({"estimator": "binning", "alpha": 1.0}, "unknown key"),
        ({"estimator": "kde", "noise_variance": 0}, "must be > 0"),
        ({"estimator": "kde", "kernel": "tensor"}, "unknown key"),
    ],
)
def test_bad_classic_presets_are_rejected(preset, message):
    with pytest.raises(ConfigError, match=message):
        validate_preset(preset, "bad")


# ---------------------------------------------------------------------------------------------
# pipeline and checks


def test_binning_estimate_reads_the_store_and_holds_its_invariants(run_dir, client):
    preset = resolve_preset(None, "binning-adaptive")
    out = run_dir / "mi" / "binning-adaptive.zarr"
    result = estimate(run_dir / "distances.zarr", preset, name="b", out=out, client=client)
    result = open_result(out)
    assert json.loads(result.attrs["preset"]) == preset
    assert result["saturated"].dtype == bool
    assert result["I_XT"].dims == ("split", "step", "layer")
    np.testing.assert_allclose(result["I_XT"], result["H_T"], atol=1e-9)
    assert_invariants(result, allow_nan=False)
    from_store = estimate(run_dir / "activations.zarr", preset, name="b", client=client)
    assert_results_identical(from_store, result)


def test_kde_estimate_works_from_the_cache_alone(tmp_path, client):
    results = []
    for seed in (0, 1):  # two runs, to check a stack of them too
        run = tmp_path / f"seed{seed}"
        store = make_store(run / "activations.zarr", steps=STEPS, seed=seed, run=f"seed{seed}")
        compute_distances(store, run / "distances.zarr", client=client)
        (run / "activations.zarr").rename(run / "gone.zarr")
        kde = resolve_preset(None, "kde")
        results.append(estimate(run / "distances.zarr", kde, name="kde", client=client))
    result = results[0]
    assert (result["I_XT_upper"] >= result["I_XT_lower"] - 1e-12).all()
    assert_invariants(result, allow_nan=False)
    assert_invariants(stack_runs(results), allow_nan=False)


def test_the_check_knows_each_estimators_invariants(run_dir, client):
    binned = estimate(
        run_dir / "distances.zarr", resolve_preset(None, "binning"), name="b", client=client
    )
    broken = binned.copy(deep=True)
    broken["I_XT"][0, 0, 0] = broken["H_T"][0, 0, 0] - 0.5
    found = [v.invariant for v in check_result(broken)]
    assert "binning: I_XT = H_T" in found and "binning: I_XT = H_T" not in [
        v.invariant for v in check_result(binned)
    ]
    kde = estimate(run_dir / "distances.zarr", resolve_preset(None, "kde"), name="k", client=client)
    broken = kde.copy(deep=True)
    broken["I_XT_lower"][1, 2, 1] = broken["I_XT_upper"][1, 2, 1] + 0.1
    assert [v.invariant for v in check_result(broken)] == ["kde: I_XT_upper >= I_XT_lower"]


def test_the_schema_names_the_estimators_and_checks_their_parameters():
    from infoplane.config import config_schema, validate_config
    from infoplane.presets import ESTIMATORS

    preset = config_schema()["$defs"]["preset"]["properties"]
    assert preset["estimator"]["enum"] == list(ESTIMATORS)
    experiment = {"dataset": {"name": "digits"}, "model": {"name": "mlp"}}
    good = {
        "experiments": {"e": {**experiment, "estimators": ["b30", "kde", "paper"]}},
        "estimators": {"b30": {"estimator": "binning", "bins": 30, "range": "layer"}},
    }
    validate_config(good)
    for bad in (
        {"estimator": "binning", "range": "observed"},
        {"estimator": "kde", "noise_variance": -1.0},
        {"estimator": "binning", "bins": 0},
        {"estimator": "kernel"},
    ):
        with pytest.raises(ConfigError):
            validate_config({**good, "estimators": {"b30": bad}})


def test_comparison_figure_of_several_presets(run_dir, client, tmp_path, capsys):
    from infoplane.cli import main
    from infoplane.report.analysis import normalised_mi
    from infoplane.report.plots import COMPARISON_FIGURES, comparison_figure

    paths = []
    for name in ("paper", "binning", "kde"):
        out = tmp_path / f"{name}.zarr"
        estimate(run_dir / "distances.zarr", resolve_preset(None, name), name=name, out=out,
                 client=client)  # fmt: skip
        paths.append(out)
    results = {p.stem: open_result(p) for p in paths}
    layers = [str(v) for v in results["kde"]["layer"].values]
    ratio = normalised_mi(results["binning"], "I_XT", "train", layers)
    assert ratio.shape == (1, len(STEPS), len(layers))
    assert np.nanmax(ratio) <= 1 + 1e-12 and np.nanmin(ratio) >= 0
    fig = comparison_figure(results, "test")
    assert len(fig.axes) == 2 * len(layers)
    assert main(["plot", "--compare", *map(str, paths), "--out-dir", str(tmp_path / "plots")]) == 0
    for name in COMPARISON_FIGURES.values():
        assert (tmp_path / "plots" / name).read_bytes().startswith(b"\x89PNG")
    assert main(["check", str(paths[1])]) == 0 and main(["check", str(paths[2])]) == 0
    assert main(["plot", str(paths[1]), "--out-dir", str(tmp_path / "binning")]) == 0
    assert main(["plot", str(paths[2]), "--out-dir", str(tmp_path / "kde")]) == 0


def test_explicit_matrix_estimator_gives_the_same_result(run_dir, client):
    paper = resolve_preset(None, "paper")
    explicit = {**BUILTIN_PRESETS["paper"], "estimator": "matrix"}
    first = estimate(run_dir / "distances.zarr", paper, name="paper", client=client)
    second = estimate(run_dir / "distances.zarr", explicit, name="paper", client=client)
    assert_results_identical(first, second)
    assert first.attrs["preset"] == second.attrs["preset"]
    assert list(first.data_vars) == list(second.data_vars)


def test_stacking_binned_runs_of_different_steps_keeps_the_flags_boolean(tmp_path, client):
    preset = resolve_preset(None, "binning")
    results = []
    for seed, captured in ((0, STEPS), (1, STEPS[:3])):
        store = make_store(tmp_path / f"s{seed}.zarr", steps=STEPS, captured=captured, seed=seed,
                           run=f"seed{seed}")  # fmt: skip
        results.append(estimate(store, preset, name="binning", client=client))
    stacked = stack_runs(results)
    assert stacked["saturated"].dtype == bool
    assert np.isnan(stacked["I_XT"].sel(run="seed1", step=30)).all()
    assert_invariants(stacked)
