"""Per-point intervals from resampling the probe: coverage, seeding, presets and results."""

from __future__ import annotations

import numpy as np
import pytest

from infoplane.core.distances import squared_distances
from infoplane.core.entropy import information_plane
from infoplane.core.kernels import gaussian_gram, label_gram
from infoplane.core.resample import (
    INTERVAL_LAYER_KEYS,
    INTERVAL_STEP_KEYS,
    interval_keys,
    plane_intervals,
    point_rng,
    resample_indices,
)
from infoplane.errors import ConfigError
from infoplane.presets import preset_to_json, resolve_preset, validate_preset

UNCERTAIN = {"resamples": 8, "level": 0.9, "seed": 3}


def _pool(rng: np.random.Generator, size: int = 4000):
    """A 4-class Gaussian mixture X (size, 5) with one tanh layer T (size, 3)."""
    y = rng.integers(0, 4, size)
    x = rng.normal(0.0, 1.5, (4, 5))[y] + rng.normal(size=(size, 5))
    t = np.tanh(x @ rng.normal(0.0, 0.4, (5, 3)))
    return x, t, y


def _grams(pool, rows):
    x, t, y = pool
    gram_x = gaussian_gram(squared_distances(x[rows]), 4.0)
    gram_t = gaussian_gram(squared_distances(t[rows]), 1.5)[None]
    return gram_x, gram_t, label_gram(y[rows])


def test_subsample_intervals_cover_the_mean_estimate_of_fresh_probes():
    """The 90 % interval of one probe contains the mean over fresh probes of the same N."""
    rng = np.random.default_rng(7)
    pool, n, draws = _pool(rng), 40, 160
    keys = ("H_X", "H_T", "H_XT", "I_XT", "I_TY")
    planes = [information_plane(*_grams(pool, rng.choice(4000, n, False))) for _ in range(400)]
    truth = {key: np.mean([np.asarray(p[key]).ravel()[0] for p in planes]) for key in keys}
    hits = dict.fromkeys(keys, 0)
    for _ in range(draws):
        grams = _grams(pool, rng.choice(4000, n, False))
        plane = information_plane(*grams)
        bounds = plane_intervals(*grams, 1.0, plane, resamples=20, level=0.9, rng=rng)
        for key in keys:
            lo, hi = np.ravel(bounds[f"{key}_lo"])[0], np.ravel(bounds[f"{key}_hi"])[0]
            hits[key] += bool(lo <= truth[key] <= hi)
    coverage = {key: count / draws for key, count in hits.items()}
    # 90 % ± 4 Monte Carlo standard errors (0.024 at 160 draws) and the method's own slack
    assert all(0.78 <= c <= 0.99 for c in coverage.values()), coverage


def test_bootstrap_resamples_repeat_samples_and_subsamples_do_not():
    rng = np.random.default_rng(0)
    boot = resample_indices(30, 20, rng, method="bootstrap")
    sub = resample_indices(30, 20, rng, method="subsample")
    assert boot.shape == (20, 30) and sub.shape == (20, 27)
    assert any(len(set(row)) < 30 for row in boot)
    assert all(len(set(row)) == 27 for row in sub)


def test_a_point_generator_depends_on_seed_split_and_step_only():
    draw = [point_rng(0, "train", 10).integers(1 << 30) for _ in range(2)]
    assert draw[0] == draw[1]
    others = {point_rng(*key).integers(1 << 30) for key in [(1, "train", 10), (0, "test", 10)]}
    others.add(point_rng(0, "train", 20).integers(1 << 30))
    assert draw[0] not in others and len(others) == 3


# --------------------------------------------------------------------------------------------
# presets


def test_an_uncertainty_that_is_off_leaves_the_resolved_preset_unchanged():
    paper = resolve_preset(None, "paper")
    off = validate_preset({**paper, "uncertainty": {"resamples": 0, "level": 0.5}})
    assert off == paper and preset_to_json(off) == preset_to_json(paper)
    binning = resolve_preset(None, "binning")
    assert validate_preset({**binning, "uncertainty": {"resamples": 0}}) == binning


def test_an_uncertainty_is_resolved_with_its_defaults():
    on = validate_preset({"uncertainty": {"resamples": 20}})
    assert on["uncertainty"] == {"resamples": 20, "level": 0.9, "seed": 0, "method": "subsample"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"resamples": -1}, "uncertainty.resamples must be an integer >= 0"),
        ({"resamples": 1}, "must be 0 (off) or >= 2"),
        ({"resamples": 2.5}, "uncertainty.resamples must be an integer"),
        ({"resamples": 5, "level": 90}, "uncertainty.level must lie in (0, 1)"),
        ({"resamples": 5, "seed": -2}, "uncertainty.seed must be an integer >= 0"),
        ({"resamples": 5, "method": "magic"}, "uncertainty.method must be one of"),
        ({"resamples": 5, "quantiles": 3}, "unknown key(s) quantiles"),
        (50, "uncertainty must be a mapping"),
    ],
)
def test_bad_uncertainty_is_rejected_with_the_key(spec, message):
    with pytest.raises(ConfigError, match=None) as info:
        validate_preset({"uncertainty": spec}, "mine")
    assert message in str(info.value) and "'mine'" in str(info.value)


@pytest.mark.parametrize("name", ["binning", "kde"])
def test_the_classic_estimators_refuse_an_uncertainty(name):
    preset = {**resolve_preset(None, name), "uncertainty": {"resamples": 10}}
    with pytest.raises(ConfigError, match="only computed by the matrix estimator"):
        validate_preset(preset, name)


# --------------------------------------------------------------------------------------------
# results


def _plain(result):
    keys = [key for key in result.data_vars if not key.endswith(("_lo", "_hi"))]
    return result[keys]


def test_intervals_are_stored_and_the_plain_variables_are_unchanged(run_dir, client):
    from infoplane.estimate.pipeline import estimate

    cache = run_dir / "distances.zarr"
    paper = resolve_preset(None, "paper")
    plain = estimate(cache, paper, name="paper", client=client)
    uncertain = {**paper, "uncertainty": UNCERTAIN}
    with_bounds = estimate(cache, uncertain, name="paper-ci", client=client)
    assert not any(key.endswith(("_lo", "_hi")) for key in plain.data_vars)
    assert not any(key.startswith("interval_") for key in plain.attrs)
    assert set(interval_keys()) <= set(with_bounds.data_vars)
    for key in interval_keys():
        name = key.rsplit("_", 1)[0]
        assert with_bounds[key].dims == with_bounds[name].dims
    assert with_bounds.attrs["interval_level"] == 0.9
    assert with_bounds.attrs["interval_resamples"] == 8
    assert with_bounds.attrs["interval_seed"] == 3
    assert with_bounds.attrs["interval_method"] == "subsample"
    for key in plain.data_vars:  # byte-identical, not merely close
        assert plain[key].values.tobytes() == with_bounds[key].values.tobytes(), key
    for key in INTERVAL_LAYER_KEYS + INTERVAL_STEP_KEYS:
        value, lo, hi = (with_bounds[k].values for k in (key, f"{key}_lo", f"{key}_hi"))
        assert np.isfinite(lo).all() and (lo <= value).all() and (value <= hi).all(), key
    assert (with_bounds["H_T_hi"] > with_bounds["H_T_lo"]).any()


def test_intervals_are_refused_where_spectra_are_randomized_but_not_at_alpha_two(run_dir, client):
    from infoplane.estimate.pipeline import estimate
    from infoplane.presets import DEFAULT_SPECTRUM

    cache = run_dir / "distances.zarr"
    lanczos = {**DEFAULT_SPECTRUM, "method": "lanczos"}
    preset = {**resolve_preset(None, "fixed-example"), "uncertainty": UNCERTAIN}
    with pytest.raises(ConfigError, match="uncertainty intervals need exact spectra"):
        estimate(cache, {**preset, "spectrum": lanczos}, name="r", client=client)
    # S_2 needs no spectrum at all: nothing is randomized, so nothing is refused
    result = estimate(cache, {**preset, "alpha": 2.0, "spectrum": lanczos}, name="s", client=client)
    assert "spectral_error" not in result and "I_XT_lo" in result


def test_intervals_are_reproducible_per_point_and_change_with_the_seed(run_dir, client):
    from infoplane.estimate.pipeline import estimate

    cache = run_dir / "distances.zarr"
    preset = {**resolve_preset(None, "fixed-example"), "uncertainty": UNCERTAIN}
    both = estimate(cache, preset, name="a", client=client)
    # a point's interval does not depend on which other points are estimated with it
    train = estimate(cache, preset, name="a", client=client, splits=["train"])
    for key in interval_keys():
        np.testing.assert_array_equal(both[key].sel(split="train"), train[key].sel(split="train"))
    other = {**preset, "uncertainty": {**UNCERTAIN, "seed": 4}}
    reseeded = estimate(cache, other, name="a", client=client, splits=["train"])
    assert not np.array_equal(train["I_XT_lo"], reseeded["I_XT_lo"])
    np.testing.assert_array_equal(train["I_XT"], reseeded["I_XT"])


def test_multivariate_intervals_with_one_shared_width_are_the_tensor_kernels(run_dir, client):
    """The intervals rebuild each kernel's Grams with the widths of its plain estimate."""
    from infoplane.estimate.pipeline import estimate

    cache = run_dir / "distances.zarr"
    shared = {"rule": "fixed", "sigma": 3.0}
    tensor = {"kernel": "tensor", "layer_width": shared, "uncertainty": UNCERTAIN}
    channels = {"kernel": "multivariate", "channel_width": shared, "uncertainty": UNCERTAIN}
    a = estimate(cache, tensor, name="t", client=client, splits=["test"])
    b = estimate(cache, channels, name="m", client=client, splits=["test"])
    for key in interval_keys():
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-10)
    assert (a["H_T_hi"] - a["H_T_lo"] > 1e-3).all()


def test_a_nan_point_has_nan_bounds_and_costs_only_itself(tmp_path, client):
    from infoplane.errors import NaNPointWarning
    from infoplane.estimate.pipeline import estimate
    from infoplane.testing import make_store

    store = make_store(tmp_path / "s.zarr", steps=(0, 10), n=9, nan_points=[("test", 10, "fc")])
    preset = {**resolve_preset(None, "fixed-example"), "uncertainty": UNCERTAIN}
    with pytest.warns(NaNPointWarning):
        result = estimate(store, preset, name="f", client=client)
    for key in INTERVAL_LAYER_KEYS:
        for end in ("lo", "hi"):
            bound = result[f"{key}_{end}"]
            np.testing.assert_array_equal(bound.isnull(), result[key].isnull())
            assert bool(bound.isnull().sel(split="test", step=10, layer="fc"))


def test_stacking_keeps_the_intervals_and_their_attributes(tmp_path, client):
    from infoplane.estimate.pipeline import estimate
    from infoplane.io.results import INTERVAL_ATTRS, stack_runs
    from infoplane.testing import make_store

    preset = {**resolve_preset(None, "fixed-example"), "uncertainty": UNCERTAIN}
    results = [
        estimate(
            make_store(tmp_path / f"{run}.zarr", steps=(0, 10), n=8, run=run, seed=k),
            preset,
            name="f",
            out=tmp_path / f"{run}-mi.zarr",
            client=client,
        )
        for k, run in enumerate(("r0", "r1"))
    ]
    stacked = stack_runs([tmp_path / f"{run}-mi.zarr" for run in ("r0", "r1")])  # from Zarr
    assert {key: stacked.attrs[key] for key in INTERVAL_ATTRS} == {
        "interval_level": 0.9,
        "interval_resamples": 8,
        "interval_seed": 3,
        "interval_method": "subsample",
    }
    for key in interval_keys():
        assert stacked[key].dims[0] == "run"
        np.testing.assert_array_equal(stacked[key].sel(run="r1"), results[1][key])


# --------------------------------------------------------------------------------------------
# figures


def _with_bounds(result, half_width: float):
    """``result`` with intervals ± ``half_width`` around every quantity and their attributes."""
    bounded = result.copy()
    for key in INTERVAL_LAYER_KEYS + INTERVAL_STEP_KEYS:
        bounded[f"{key}_lo"] = result[key] - half_width
        bounded[f"{key}_hi"] = result[key] + half_width
    bounded.attrs.update(
        interval_level=0.9, interval_resamples=8, interval_seed=0, interval_method="subsample"
    )
    return bounded


def test_mi_epoch_figure_draws_the_bounds_as_dotted_lines():
    from infoplane.report import plots
    from infoplane.testing import make_result

    plain = make_result(n_steps=4)
    bounded = _with_bounds(plain, 0.25)
    dotted = lambda fig: [  # noqa: E731
        line for ax in fig.axes for line in ax.get_lines() if line.get_linestyle() == ":"
    ]
    assert dotted(plots.mi_epoch_figure(plain)) == []
    fig = plots.mi_epoch_figure(bounded)
    lines = dotted(fig)
    assert len(lines) == 2 * 2 * 2 * 2  # lo and hi, 2 layers, 2 rows, 2 splits
    expected = {float(plain["I_XT"].values.flat[0]) + d for d in (-0.25, 0.25)}
    expected |= {float(plain["I_TY"].values.flat[0]) + d for d in (-0.25, 0.25)}
    assert sorted({round(float(line.get_ydata()[0]), 9) for line in lines}) == sorted(expected)
    assert "90% interval" in fig.get_supxlabel()


def test_information_plane_layers_draws_interval_crosses():
    from infoplane.report import plots
    from infoplane.testing import make_result

    plain = make_result(n_steps=4)
    bounded = _with_bounds(plain, 0.25)
    assert plots.information_plane_layers(plain, "train").get_supxlabel() == ""
    fig = plots.information_plane_layers(bounded, "train")
    panel = fig.axes[1]  # layer 1 (after the overview)
    crosses = [c for c in panel.collections if type(c).__name__ == "LineCollection"]
    segments = np.concatenate([c.get_segments() for c in crosses])
    lengths = np.ptp(segments[:, :, 0], axis=1) + np.ptp(segments[:, :, 1], axis=1)
    assert np.isclose(lengths, 0.5).sum() == 2 * 4  # an x and a y bar at each of the 4 steps


def test_check_reports_a_value_outside_its_interval():
    from infoplane.report.checks import check_result
    from infoplane.testing import make_result

    bounded = _with_bounds(make_result(n_steps=2), 0.1)
    assert check_result(bounded) == []
    bounded["H_T_lo"][0, 1, 0] = 1.5  # above H_T = 1 at train, step 10, layer a
    (violation,) = check_result(bounded)
    assert violation.invariant == "H_T >= H_T_lo"
    assert violation.where == {"split": "train", "step": 10, "layer": "a"}


def test_check_reports_a_finite_value_without_its_interval():
    from infoplane.report.checks import check_result
    from infoplane.testing import make_result

    bounded = _with_bounds(make_result(n_steps=2), 0.1)
    bounded["I_XT_hi"][1, 0, 1] = np.nan  # test, step 0, layer b: too few usable resamples
    (violation,) = check_result(bounded)
    assert violation.invariant == "I_XT has interval bounds"
    assert violation.where == {"split": "test", "step": 0, "layer": "b"}
