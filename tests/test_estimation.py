import json
import logging
import operator
import shutil

import numpy as np
import pytest
import xarray as xr

from infoplane.cli import main
from infoplane.core.distances import squared_distances
from infoplane.core.entropy import information_plane
from infoplane.core.kernels import gaussian_gram, label_gram
from infoplane.core.plane import LAYER_KEYS as LAYER_VARIABLES
from infoplane.core.plane import STEP_KEYS as STEP_VARIABLES
from infoplane.core.widths import alignment_width, smooth_along_steps, smooth_widths
from infoplane.errors import ConfigError, NaNPointWarning, StoreError
from infoplane.estimate.cluster import _batch_size
from infoplane.estimate.cluster import run_batched as _run_batched
from infoplane.estimate.distances import compute_distances
from infoplane.estimate.pipeline import estimate
from infoplane.io.results import open_result, stack_runs
from infoplane.io.store import open_activations
from infoplane.presets import resolve_preset
from infoplane.testing import assert_results_allclose, assert_results_identical, make_store

STEPS = (0, 10, 20, 30)


def test_result_holds_every_variable_and_the_resolved_preset(run_dir, client):
    out = run_dir / "mi" / "paper.zarr"
    preset = resolve_preset(None, "paper")
    estimate(run_dir / "distances.zarr", preset, name="paper", out=out, client=client)
    result = open_result(out)
    assert result.sizes == {"split": 2, "step": 4, "layer": 3}
    for name in LAYER_VARIABLES:
        assert result[name].dims == ("split", "step", "layer")
    for name in STEP_VARIABLES:
        assert result[name].dims == ("split", "step")
    assert result["boundary_hit"].dtype == bool
    np.testing.assert_allclose(result["epoch"], [s / 20 for s in STEPS])
    np.testing.assert_array_equal(result["n_samples"], [12, 10])
    assert json.loads(result.attrs["preset"]) == preset
    assert result.attrs["estimator"] == "paper"
    assert result.attrs["run"] == "seed0" and result.attrs["experiment"] == "tiny"
    assert result.attrs["store"] == str((run_dir / "activations.zarr").resolve())
    assert np.isfinite(result["I_XT"]).all() and "nan_points" not in result.attrs
    np.testing.assert_allclose(result["sigma_x"], 8.0)


def test_one_point_agrees_with_the_core_functions_by_hand(run_dir, client):
    preset = resolve_preset(None, "paper")
    result = estimate(run_dir / "distances.zarr", preset, name="paper", client=client)
    view = open_activations(run_dir / "activations.zarr", "test")
    gram_y = label_gram(view["y"].values[0])
    gram_x = gaussian_gram(squared_distances(view["x"].values[0]), 8.0)
    star = []
    for step in range(len(STEPS)):
        star.append(alignment_width(squared_distances(view["fc"].values[step]), gram_y)[0])
    sigma = smooth_widths(np.array(star), 0.9, steps=STEPS)  # beta per training iteration
    point = result.sel(split="test", layer="fc")
    np.testing.assert_allclose(point["sigma_star"], star, rtol=1e-12)
    np.testing.assert_allclose(point["sigma"], sigma, rtol=1e-12)
    gram_t = gaussian_gram(squared_distances(view["fc"].values[-1]), sigma[-1])
    expected = information_plane(gram_x, gram_t[None], gram_y, 1.0)
    for key in ("I_XT", "I_TY", "H_T", "H_XT", "H_TY"):
        np.testing.assert_allclose(point[key][-1], expected[key][0], rtol=1e-10, atol=1e-12)
    # the label kernel's entropy is the Shannon entropy of the class histogram
    counts = np.bincount(view["y"].values[0])
    p = counts / counts.sum()
    np.testing.assert_allclose(result["H_Y"].sel(split="test"), -(p * np.log2(p)).sum())


def test_cache_and_store_sources_give_the_same_result(run_dir, client):
    preset = resolve_preset(None, "paper-alpha1.01")
    from_cache = estimate(run_dir / "distances.zarr", preset, name="p", client=client)
    from_store = estimate(run_dir / "activations.zarr", preset, name="p", client=client)
    assert_results_allclose(from_cache, from_store, rtol=1e-10, atol=1e-10)


def test_distance_presets_never_open_the_store(tmp_path, client):
    store = make_store(tmp_path / "activations.zarr", steps=(0, 10), n=8)
    cache = tmp_path / "distances.zarr"
    compute_distances(store, cache, client=client)
    moved = store.rename(tmp_path / "elsewhere.zarr")  # the store is gone from its path
    for name in ("paper", "silverman", "fixed-example"):
        result = estimate(cache, resolve_preset(None, name), name=name, client=client)
        assert np.isfinite(result["I_TY"]).all()
    multivariate = resolve_preset(None, "multivariate")
    with pytest.raises(StoreError, match="--store"):
        estimate(cache, multivariate, name="multivariate", client=client)
    result = estimate(cache, multivariate, name="multivariate", store=moved, client=client)
    assert result.attrs["store"] == str(moved.resolve())
    assert np.isfinite(result["I_XT"]).all()


def test_multivariate_with_one_shared_width_is_the_tensor_kernel(run_dir, client):
    cache = run_dir / "distances.zarr"
    shared = {"rule": "fixed", "sigma": 3.0}
    tensor = {"kernel": "tensor", "layer_width": shared}
    channels = {"kernel": "multivariate", "channel_width": shared}
    a = estimate(cache, tensor, name="t", client=client)
    b = estimate(cache, channels, name="m", client=client)
    for key in ("I_XT", "I_TY", "H_T", "H_XT", "H_TY", "sigma"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-10)


def test_per_channel_silverman_widths(run_dir, client):
    from infoplane.core.widths import silverman_width

    preset = resolve_preset(None, "multivariate")
    result = estimate(run_dir / "distances.zarr", preset, name="mv", client=client)
    view = open_activations(run_dir / "activations.zarr", "train")
    conv = view["conv"].values[2]  # (N, C=2, 3, 3)
    widths = [silverman_width(squared_distances(conv[:, c]), 9) for c in range(conv.shape[1])]
    expected = np.mean(np.array(widths) ** -2.0) ** -0.5
    np.testing.assert_allclose(result["sigma"].sel(split="train", layer="conv")[2], expected)


def test_smoothing_skips_nan_points():
    star = np.array([[1.0, 2.0], [np.nan, 4.0], [3.0, np.nan], [5.0, 8.0]])
    smoothed = smooth_along_steps(star, 0.5)
    np.testing.assert_allclose(smoothed[:, 0], [1.0, np.nan, 2.0, 3.5])
    np.testing.assert_allclose(smoothed[:, 1], [2.0, 3.0, np.nan, 5.5])


def test_batched_tasks_return_every_call_in_order(client):
    calls = [(i, 100 * i) for i in range(11)]
    names = [f"train-{i}" for i in range(11)]
    assert _batch_size(client, len(calls)) > 1  # steps really travel in batches here
    results = _run_batched(client, operator.add, calls, label="t", names=names)
    assert results == [a + b for a, b in calls]


def test_smoothing_weights_the_past_per_iteration_between_captures():
    star = np.array([[1.0], [3.0], [5.0]])
    per_capture = smooth_along_steps(star, 0.5)
    per_iteration = smooth_along_steps(star, 0.5, np.array([0, 1, 3]))
    np.testing.assert_allclose(per_capture[:, 0], [1.0, 2.0, 3.5])
    np.testing.assert_allclose(per_iteration[:, 0], [1.0, 2.0, 0.25 * 2.0 + 0.75 * 5.0])


def test_diverged_points_are_nan_and_named_while_others_are_computed(tmp_path, client):
    store = make_store(
        tmp_path / "s.zarr", steps=(0, 10, 20), n=9, nan_points=[("test", 10, "conv")], run="seed7"
    )
    cache = tmp_path / "d.zarr"
    with pytest.warns(NaNPointWarning):
        compute_distances(store, cache, client=client)
    for source in (cache, store):
        with pytest.warns(NaNPointWarning, match=r"run seed7, split test, step 10, layer conv"):
            result = estimate(source, resolve_preset(None, "paper"), name="paper", client=client)
        bad = result["I_XT"].isnull()
        assert bad.sum() == 1 and bool(bad.sel(split="test", step=10, layer="conv"))
        assert np.isfinite(result["H_X"]).all()
        assert json.loads(result.attrs["nan_points"])[0][:3] == ["test", 10, "conv"]
        # smoothing carries on past the NaN point
        assert np.isfinite(result["sigma"].sel(split="test", step=20, layer="conv"))


def test_stack_runs_on_a_run_dimension(tmp_path, client):
    preset = resolve_preset(None, "fixed-example")
    results = []
    for seed in (0, 1):
        store = make_store(
            tmp_path / f"s{seed}.zarr", steps=(0, 10), n=8, seed=seed, run=f"seed{seed}"
        )
        out = tmp_path / f"mi{seed}.zarr"
        estimate(store, preset, name="fixed-example", out=out, client=client)
        results.append(out)
    stacked = stack_runs(results)
    assert stacked["I_XT"].dims == ("run", "split", "step", "layer")
    assert list(stacked["run"].values) == ["seed0", "seed1"]
    xr.testing.assert_allclose(
        stacked["I_TY"].sel(run="seed1", drop=True), open_result(results[1])["I_TY"]
    )
    assert json.loads(stacked.attrs["preset"]) == preset
    out = tmp_path / "experiment.zarr"
    assert main(["stack", "--out", str(out), *map(str, results), "--runs", "a", "b"]) == 0
    assert list(open_result(out)["run"].values) == ["a", "b"]
    other = estimate(
        results[0].parent / "s0.zarr", resolve_preset(None, "silverman"), name="s", client=client
    )
    with pytest.raises(StoreError, match="different estimator presets"):
        stack_runs([results[0], other])
    with pytest.raises(StoreError, match="unique"):
        stack_runs(results, runs=["a", "a"])


def test_estimate_command_with_an_ad_hoc_preset_file(run_dir, tmp_path, capsys, client):
    config = tmp_path / "adhoc.yaml"
    config.write_text("estimators:\n  wide:\n    alpha: 2\n    layer_width: {rule: median}\n")
    out = tmp_path / "mi" / "wide.zarr"
    args = ["estimate", str(run_dir / "distances.zarr"), "--config", str(config)]
    address = ["--scheduler-address", client.scheduler.address]
    assert main([*args, "--estimator", "wide", "--out", str(out), *address]) == 0
    assert "wide" in capsys.readouterr().out
    result = open_result(out)
    assert json.loads(result.attrs["preset"]) == resolve_preset(config, "wide")
    assert main([*args, "--estimator", "nope", "--out", str(out), *address]) == 1
    assert "unknown estimator preset 'nope'" in capsys.readouterr().err


def test_bad_preset_is_rejected_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"layer_width\.rule"):
        estimate(tmp_path / "nothing.zarr", {"layer_width": {"rule": "magic"}}, name="bad")


def test_unfinished_cache_is_refused(tmp_path):
    import zarr

    store = make_store(tmp_path / "s.zarr", steps=(0, 10), n=6)
    from infoplane.io.cache import create_cache
    from infoplane.io.store import read_store_plan

    create_cache(tmp_path / "d.zarr", read_store_plan(store))
    zarr.open_group(str(tmp_path / "d.zarr"), mode="r+")["train"]["done"][0] = True
    with pytest.raises(StoreError, match=r"split train: steps 10 are not computed"):
        estimate(tmp_path / "d.zarr", resolve_preset(None, "paper"), name="paper")


# ---------------------------------------------------------------------------------------------
# alignment widths kept in the distance cache


def _kept_entries(cache):
    return sorted(p.name for p in (cache / "widths").glob("*") if (p / "zarr.json").is_file())


def test_a_second_preset_with_the_same_search_reuses_the_kept_widths(tmp_path, client):
    store = make_store(tmp_path / "s.zarr", steps=(0, 10, 20), n=9)
    cache = tmp_path / "d.zarr"
    compute_distances(store, cache, client=client)
    paper = estimate(cache, resolve_preset(None, "paper"), name="paper", client=client)
    assert len(_kept_entries(cache)) == 2  # one per split
    searched = estimate(
        cache, resolve_preset(None, "paper-alpha1.01"), name="a", client=client, keep_widths=False
    )
    reused = estimate(cache, resolve_preset(None, "paper-alpha1.01"), name="a", client=client)
    xr.testing.assert_identical(searched, reused)
    xr.testing.assert_identical(paper["sigma_star"], reused["sigma_star"])
    # the kept widths are what is read: doubling them doubles the widths a preset then uses
    import zarr

    for entry in _kept_entries(cache):
        group = zarr.open_group(str(cache / "widths" / entry), mode="r+")
        group["sigma_star"][...] = 2 * group["sigma_star"][...]
    doubled = estimate(cache, resolve_preset(None, "paper-alpha1.01"), name="a", client=client)
    np.testing.assert_allclose(doubled["sigma_star"], 2 * paper["sigma_star"], rtol=1e-15)
    np.testing.assert_allclose(doubled["sigma"], 2 * paper["sigma"], rtol=1e-12)
    fresh = estimate(
        cache, resolve_preset(None, "paper"), name="p", client=client, keep_widths=False
    )
    xr.testing.assert_identical(fresh["sigma_star"], paper["sigma_star"])


def test_another_grid_is_another_search(tmp_path, client):
    store = make_store(tmp_path / "s.zarr", steps=(0, 10), n=8)
    cache = tmp_path / "d.zarr"
    compute_distances(store, cache, client=client)
    estimate(cache, resolve_preset(None, "paper"), name="paper", client=client, splits=["train"])
    assert len(_kept_entries(cache)) == 1
    log_grid = {"layer_width": {"rule": "alignment", "grid": "log", "points": 40, "smoothing": 0.5}}
    result = estimate(cache, log_grid, name="log", client=client, splits=["train"])
    assert len(_kept_entries(cache)) == 2
    d2 = squared_distances(open_activations(store, "train")["fc"].values[1])
    gram_y = label_gram(open_activations(store, "train")["y"].values[1])
    expected = alignment_width(d2, gram_y, grid="log", points=40)[0]
    assert float(result["sigma_star"].sel(split="train", layer="fc")[1]) == expected


def test_kept_widths_carry_the_failed_points(tmp_path, client):
    store = make_store(tmp_path / "s.zarr", steps=(0, 10, 20), n=9, nan_points=[("test", 10, "fc")])
    cache = tmp_path / "d.zarr"
    with pytest.warns(NaNPointWarning):
        compute_distances(store, cache, client=client)
    results = []
    for _ in range(2):  # searched, then reused
        with pytest.warns(NaNPointWarning, match=r"split test, step 10, layer fc"):
            results.append(estimate(cache, resolve_preset(None, "paper"), name="p", client=client))
    xr.testing.assert_identical(results[0], results[1])
    assert np.isnan(results[1]["sigma_star"].sel(split="test", step=10, layer="fc"))


def test_bad_kept_widths_only_cost_a_search(tmp_path, client, monkeypatch, caplog):
    store = make_store(tmp_path / "s.zarr", steps=(0, 10), n=8)
    cache = tmp_path / "d.zarr"
    compute_distances(store, cache, client=client)
    preset = resolve_preset(None, "paper")
    first = estimate(cache, preset, name="p", client=client, splits=["train"])
    (entry,) = _kept_entries(cache)
    shutil.rmtree(cache / "widths" / entry / "sigma_star")
    with caplog.at_level(logging.WARNING, logger="infoplane.io.cache"):
        again = estimate(cache, preset, name="p", client=client, splits=["train"])
    assert "cannot be read" in caplog.text
    xr.testing.assert_identical(first, again)

    shutil.rmtree(cache / "widths")

    def refuse(*args):
        raise PermissionError("read-only file system")

    monkeypatch.setattr("infoplane.io.files.os.replace", refuse)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="infoplane.io.cache"):
        third = estimate(cache, preset, name="p", client=client, splits=["train"])
    assert "could not keep the alignment widths" in caplog.text
    xr.testing.assert_identical(first, third)
    # and no half-written entry is left behind
    assert not [p for p in (cache / "widths").iterdir() if p.name != "zarr.json"]


def test_step_reads_follow_a_recreated_cache(tmp_path, client):
    from infoplane.estimate.pipeline import load_step, plan_source

    cache = tmp_path / "d.zarr"
    values = []
    for seed in (0, 1):
        store = make_store(tmp_path / f"s{seed}.zarr", steps=(0, 10), n=8, seed=seed)
        compute_distances(store, cache, overwrite=True, client=client)
        source = plan_source(cache)[0]
        step = load_step(source, "train", 1)
        # d2 reads a layer when indexed: keep this cache's layers before it is recreated
        values.append({**step, "d2": np.asarray(step["d2"])})
        view = open_activations(store, "train")
        np.testing.assert_array_equal(values[-1]["y"], view["y"].values[1])
        np.testing.assert_allclose(
            values[-1]["d2"][1], squared_distances(view["fc"].values[1]), rtol=1e-12
        )
    assert not np.allclose(values[0]["d2"], values[1]["d2"])
    assert set(values[0]) == {"d2", "d2_x", "y", "nonfinite", "nonfinite_x"}
    assert values[0]["nonfinite"].dtype == bool and values[0]["nonfinite"].shape == (3,)


def test_estimate_command_can_search_again_and_keep_nothing(tmp_path, client):
    store = make_store(tmp_path / "s.zarr", steps=(0, 10), n=8)
    cache = tmp_path / "d.zarr"
    compute_distances(store, cache, client=client)
    args = ["estimate", str(cache), "--estimator", "paper", "--splits", "train"]
    address = ["--scheduler-address", client.scheduler.address]
    assert main([*args, "--out", str(tmp_path / "a.zarr"), "--no-kept-widths", *address]) == 0
    assert not (cache / "widths").exists()
    assert main([*args, "--out", str(tmp_path / "b.zarr"), *address]) == 0
    assert len(_kept_entries(cache)) == 1
    assert_results_identical(open_result(tmp_path / "a.zarr"), open_result(tmp_path / "b.zarr"))


def test_an_unsmoothed_search_keeps_and_reuses_widths_too(tmp_path, client):
    store = make_store(tmp_path / "s.zarr", steps=(0, 10, 20), n=9)
    cache = tmp_path / "d.zarr"
    compute_distances(store, cache, client=client)
    unsmoothed = {"layer_width": {"rule": "alignment", "smoothing": 0.0}}
    one_pass = estimate(cache, unsmoothed, name="u", client=client, keep_widths=False)
    assert not (cache / "widths").exists()
    kept = estimate(cache, unsmoothed, name="u", client=client)
    assert len(_kept_entries(cache)) == 2
    xr.testing.assert_identical(one_pass, kept)
    np.testing.assert_array_equal(kept["sigma"], kept["sigma_star"])
    paper = estimate(cache, resolve_preset(None, "paper"), name="paper", client=client)
    assert len(_kept_entries(cache)) == 2  # the same search: nothing new kept
    xr.testing.assert_identical(paper["sigma_star"], kept["sigma_star"])


def test_smoothed_widths_after_a_nan_point_are_flagged(tmp_path, client):
    store = make_store(
        tmp_path / "s.zarr", steps=(0, 10, 20, 30), n=9, nan_points=[("test", 10, "conv")]
    )
    with pytest.warns(NaNPointWarning, match=r"smoothed width averages across an earlier NaN"):
        result = estimate(store, resolve_preset(None, "paper"), name="paper", client=client)
    flagged = json.loads(result.attrs["smoothed_across_nan"])
    assert flagged == [["test", 20, "conv"], ["test", 30, "conv"]]
    # a preset without smoothing has nothing to flag
    plain = {**resolve_preset(None, "paper")}
    plain["layer_width"] = {**plain["layer_width"], "smoothing": 0.0}
    with pytest.warns(NaNPointWarning):
        unsmoothed = estimate(store, plain, name="plain", client=client)
    assert "smoothed_across_nan" not in unsmoothed.attrs
