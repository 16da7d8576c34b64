"""Randomized spectra in the estimate of a point (the preset's ``spectrum``) and in results."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infoplane.core.distances import squared_distances
from infoplane.core.plane import estimate_step
from infoplane.core.spectra import randomized_at
from infoplane.errors import ConfigError
from infoplane.presets import DEFAULT_SPECTRUM, preset_to_json, resolve_preset, spectrum_of
from infoplane.report.checks import check_result, imprecise_estimates
from infoplane.testing import make_result

LAYERS, DIMS, DIM_X = ["wide", "narrow"], [30, 6], 40
PLANE = ("H_T", "H_XT", "H_TY", "I_XT", "I_TY")


def _point(n: int, seed: int) -> dict:
    """One point of a small synthetic network: 10 classes, a wide and a narrow tanh layer."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.standard_normal((10, DIM_X))[y] + rng.standard_normal((n, DIM_X))
    wide = np.tanh(x @ rng.standard_normal((DIM_X, DIMS[0])) / 4)
    narrow = np.tanh(wide @ rng.standard_normal((DIMS[0], DIMS[1])) / 2)
    return {
        "d2": np.stack([squared_distances(wide), squared_distances(narrow)]),
        "d2_x": squared_distances(x),
        "y": y,
        "nonfinite": np.zeros(2, bool),
        "nonfinite_x": np.array(False),
    }


def _estimate(point, preset, spectrum=None, seed=(0, 0, 0)):
    return estimate_step(
        point, preset, layers=LAYERS, dims=DIMS, dim_x=DIM_X, spectrum=spectrum, seed=seed
    )


@pytest.fixture(scope="module")
def point():
    return _point(300, 0)


@pytest.mark.parametrize("name", ["paper-alpha1.01", "silverman"])
def test_auto_is_exact_below_its_threshold_and_identical_to_before(point, name):
    preset = resolve_preset(None, name)
    before = _estimate(point, preset)
    auto = _estimate(point, preset, spectrum_of(preset))
    assert not auto["randomized"] and not before["randomized"]
    for key in (*PLANE, "H_X", "H_Y", "sigma", "clipped_mass"):
        assert np.array_equal(auto[key], before[key], equal_nan=True), key
    assert np.array_equal(auto["spectral_error"], np.zeros(2))


def test_randomized_spectra_match_exact_ones_within_their_error_bars(point):
    preset = resolve_preset(None, "paper-alpha1.01")
    exact = _estimate(point, preset)
    spectrum = {**spectrum_of(preset), "method": "lanczos"}
    est = _estimate(point, preset, spectrum)
    assert est["randomized"] and est["failures"] == []
    bar = est["spectral_error"]
    assert np.all(bar > 0) and np.all(bar < 0.3)
    for key in PLANE:  # an MI combines three entropies: three error bars
        allowed = bar if key.startswith("H") else 3 * bar
        assert np.all(np.abs(est[key] - exact[key]) <= allowed), key
    assert abs(est["H_X"] - exact["H_X"]) <= bar.max()
    # the label kernel and its products are block-diagonal: exact, per block
    assert est["H_Y"] == pytest.approx(exact["H_Y"], abs=1e-12)
    assert np.allclose(est["H_TY"], exact["H_TY"], atol=1e-10)
    # the widths do not depend on the spectra, and I = H + H - joint H holds exactly
    assert np.array_equal(est["sigma"], exact["sigma"])
    assert np.allclose(est["I_XT"], est["H_X"] + est["H_T"] - est["H_XT"], atol=1e-12)


def test_error_bars_cover_the_exact_entropies_on_random_points():
    """The error bar (3 standard errors) holds the exact value in >= 95 % of cases."""
    preset = resolve_preset(None, "silverman")
    spectrum = {**spectrum_of(preset), "method": "lanczos", "probes": 16, "rank": 16}
    covered = []
    for trial in range(6):
        point = _point(160, 10 + trial)
        exact, est = _estimate(point, preset), _estimate(point, preset, spectrum, (0, 0, trial))
        bar = est["spectral_error"]
        covered += list(np.abs(est["H_T"] - exact["H_T"]) <= bar)
        covered += list(np.abs(est["H_XT"] - exact["H_XT"]) <= bar)
        covered.append(abs(est["H_X"] - exact["H_X"]) <= bar.min())
    assert np.mean(covered) >= 0.95


def test_the_seed_of_a_point_fixes_its_estimate(point):
    preset = resolve_preset(None, "paper-alpha1.01")
    spectrum = {**spectrum_of(preset), "method": "lanczos", "probes": 8, "rank": 4}
    first = _estimate(point, preset, spectrum, (0, 0, 10))
    again = _estimate(point, preset, spectrum, (0, 0, 10))
    other = _estimate(point, preset, spectrum, (0, 0, 20))
    assert np.array_equal(first["H_T"], again["H_T"]) and first["H_X"] == again["H_X"]
    assert not np.array_equal(first["H_T"], other["H_T"])


def test_alpha_two_stays_exact_and_float64_matches_float32(point):
    preset = {**resolve_preset(None, "silverman"), "alpha": 2.0}
    exact = _estimate(point, preset)
    forced = _estimate(point, preset, {**DEFAULT_SPECTRUM, "method": "lanczos"})
    assert not forced["randomized"]
    assert np.array_equal(forced["H_XT"], exact["H_XT"])
    preset = resolve_preset(None, "silverman")
    spectrum = {**DEFAULT_SPECTRUM, "method": "lanczos"}
    single = _estimate(point, preset, {**spectrum, "dtype": "float32"})
    double = _estimate(point, preset, {**spectrum, "dtype": "float64"})
    assert np.allclose(single["H_XT"], double["H_XT"], atol=1e-4)


def test_auto_switches_above_its_threshold():
    spectrum = {**DEFAULT_SPECTRUM, "threshold": 100}
    assert not randomized_at(spectrum, 100) and randomized_at(spectrum, 101)
    assert randomized_at({**spectrum, "method": "lanczos"}, 10)
    assert not randomized_at({**spectrum, "method": "exact"}, 10**6)
    assert not randomized_at(None, 10**6)


def test_the_spectrum_preset_option():
    plain = resolve_preset(None, "paper")
    spelled = resolve_preset({"paper": {"spectrum": dict(DEFAULT_SPECTRUM)}}, "paper")
    assert preset_to_json(spelled) == preset_to_json(plain)  # defaults are dropped
    assert "spectrum" not in plain and spectrum_of(plain) == DEFAULT_SPECTRUM
    mine = resolve_preset({"p": {"spectrum": {"method": "lanczos", "probes": 128}}}, "p")
    assert mine["spectrum"] == {**DEFAULT_SPECTRUM, "method": "lanczos", "probes": 128}
    for bad, match in (
        ({"method": "chebyshev"}, "spectrum.method"),
        ({"probes": 1}, "spectrum.probes"),
        ({"tolerance": 0}, "spectrum.tolerance"),
        ({"dtype": "float16"}, "spectrum.dtype"),
        ({"probe": 3}, "unknown key"),
        ("lanczos", "must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=match):
            resolve_preset({"p": {"spectrum": bad}}, "p")


def _randomized_result(bar: float, tolerance: float):
    preset = {
        **resolve_preset(None, "paper"),
        "spectrum": {**DEFAULT_SPECTRUM, "tolerance": tolerance},
    }
    result = make_result(attrs={"preset": json.dumps(preset)})
    result["spectral_error"] = result["H_T"].copy(data=np.full(result["H_T"].shape, bar))
    return result


def test_check_names_points_whose_error_bar_exceeds_the_tolerance():
    result = _randomized_result(0.02, 0.1)
    result["spectral_error"].loc[{"split": "test", "layer": "b"}] = 0.5
    found = imprecise_estimates(result)
    assert [(e.where, e.steps, e.largest) for e in found] == [
        ({"split": "test", "layer": "b"}, [0, 10, 20], 0.5)
    ]
    assert "spectrum.tolerance 0.1" in str(found[0]) and "probes" in str(found[0])
    assert imprecise_estimates(make_result()) == []


def test_check_allows_an_entropy_its_error_bar_beyond_a_bound():
    result = _randomized_result(0.05, 0.1)
    result["H_XT"].loc[{"split": "train", "step": 0, "layer": "a"}] = 3.04  # log2 N = 3
    result["I_XT"] = result["H_X"] + result["H_T"] - result["H_XT"]
    assert [v.invariant for v in check_result(result)] == []
    result["H_XT"].loc[{"split": "train", "step": 0, "layer": "a"}] = 3.06
    result["I_XT"] = result["H_X"] + result["H_T"] - result["H_XT"]
    assert "H_XT <= log2 N" in [v.invariant for v in check_result(result)]
    del result["spectral_error"]  # exact spectra: the bound is tight again
    result["H_XT"].loc[{"split": "train", "step": 0, "layer": "a"}] = 3.04
    result["I_XT"] = result["H_X"] + result["H_T"] - result["H_XT"]
    assert "H_XT <= log2 N" in [v.invariant for v in check_result(result)]


def test_a_result_holds_error_bars_only_where_spectra_were_randomized(run_dir, client):
    from infoplane.estimate.pipeline import estimate
    from infoplane.io.results import open_result, stack_runs

    preset = resolve_preset(None, "silverman")
    plain = estimate(run_dir / "distances.zarr", preset, name="s", client=client)
    assert "spectral_error" not in plain
    forced = {**preset, "spectrum": {**DEFAULT_SPECTRUM, "method": "lanczos", "rank": 4}}
    out = run_dir / "mi" / "lanczos.zarr"
    result = estimate(run_dir / "distances.zarr", forced, name="lanczos", out=out, client=client)
    bars = result["spectral_error"]
    assert bars.dims == ("split", "step", "layer") and bool((bars > 0).all())
    assert json.loads(result.attrs["preset"])["spectrum"]["method"] == "lanczos"
    assert json.loads(result.attrs["spectrum"])["rank"] == 4 and "spectrum" not in plain.attrs
    assert check_result(result) == []
    for key in ("H_Y", "sigma"):  # exact label spectra; widths untouched
        assert np.allclose(result[key], plain[key], atol=1e-10), key
    reopened = open_result(out)
    other = reopened.assign_attrs(run="other", store_attrs_sha256="0" * 64)
    stacked = stack_runs([reopened, other], runs=["a", "b"])
    assert stacked["spectral_error"].dims == ("run", "split", "step", "layer")
    assert stacked.attrs["spectrum"] == result.attrs["spectrum"]
