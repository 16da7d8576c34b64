import shutil

import numpy as np
import pytest
import xarray as xr
import zarr

import infoplane
from infoplane.cli import main
from infoplane.errors import NaNPointWarning, StoreError
from infoplane.estimate.distances import compute_distances, distances_task
from infoplane.io.cache import (
    AlignmentWidths,
    create_cache,
    is_distance_cache,
    read_cached_widths,
    write_cached_widths,
)
from infoplane.io.store import open_activations, read_store_plan
from infoplane.testing import make_store

STEPS = (0, 10, 20, 30)


@pytest.fixture
def store(tmp_path):
    # step 30 never captured: a store of a killed training run
    return make_store(tmp_path / "activations.zarr", steps=STEPS, captured=STEPS[:3], n=12)


def open_split(path, split):
    with xr.open_zarr(path, group=split) as view:
        return view.load()


def reference_distances(store, split):
    """Squared distances of every captured step computed independently (plain numpy, per pair)."""
    view = open_activations(store, split)
    out = {}
    for name in ["x", *view.attrs["layers"]]:
        values = np.asarray(view[name].values, dtype=np.float64)
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        diff = flat[:, :, None, :] - flat[:, None, :, :]
        out[name] = (diff**2).sum(axis=-1)
    out["y"] = np.asarray(view["y"].values)
    out["step"] = np.asarray(view["step"].values)
    return out


def test_cache_layout_and_values_match_an_independent_reference(store, tmp_path, client):
    out = tmp_path / "distances.zarr"
    summary = compute_distances(store, out, client=client)
    assert summary == {"computed": 6, "skipped": 0, "nonfinite": []}
    assert is_distance_cache(out) and not is_distance_cache(store)
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["store"] == str(store.resolve())
    assert root.attrs["infoplane_version"] == infoplane.__version__
    assert root.attrs["layers"] == ["conv", "fc", "softmax"]
    for split in ("train", "test"):
        cache = open_split(out, split)
        ref = reference_distances(store, split)
        # only the captured steps, with their epochs
        np.testing.assert_array_equal(cache["step"], [0, 10, 20])
        np.testing.assert_allclose(cache["epoch"], [0.0, 0.5, 1.0])
        assert list(cache["layer"].values) == ["conv", "fc", "softmax"]
        assert cache["d2"].dims == ("step", "layer", "i", "j")
        assert cache["d2"].dtype == np.float64
        np.testing.assert_array_equal(cache["dim"], [18, 5, 3])
        assert int(cache["dim_x"]) == 16
        assert cache["done"].values.all()
        np.testing.assert_array_equal(cache["y"], ref["y"])
        np.testing.assert_allclose(cache["d2_x"], ref["x"], rtol=1e-9, atol=1e-9)
        for k, layer in enumerate(["conv", "fc", "softmax"]):
            np.testing.assert_allclose(cache["d2"][:, k], ref[layer], rtol=1e-9, atol=1e-9)


def test_rerun_skips_done_steps_and_completes_an_interrupted_cache(store, tmp_path, client):
    full = tmp_path / "full.zarr"
    compute_distances(store, full, client=client)
    # an interrupted run: the cache exists, one step is done (with a marker value), rest not
    out = tmp_path / "distances.zarr"
    plan = read_store_plan(store)
    create_cache(out, plan)
    distances_task(plan.path, str(out), "train", 1, 1, plan.layers)
    group = zarr.open_group(str(out), mode="r+")["train"]
    marked = np.asarray(group["d2"][1]).copy()
    marked[0, 0, 1] = -7.0  # a done step must not be recomputed
    group["d2"][1] = marked

    summary = compute_distances(store, out, client=client)
    assert summary["computed"] == 5 and summary["skipped"] == 1
    resumed, fresh = open_split(out, "train"), open_split(full, "train")
    assert float(resumed["d2"][1, 0, 0, 1]) == -7.0
    np.testing.assert_array_equal(resumed["d2"][[0, 2]], fresh["d2"][[0, 2]])
    xr.testing.assert_identical(open_split(out, "test"), open_split(full, "test"))
    # nothing left to do: no cluster needed at all
    assert compute_distances(store, out)["computed"] == 0


def test_failed_step_keeps_finished_ones_and_a_rerun_completes_it(store, tmp_path, client):
    out = tmp_path / "distances.zarr"
    chunk = store / "test" / "fc" / "c" / "1" / "0" / "0"
    saved = chunk.read_bytes()
    chunk.unlink()  # a damaged store: one chunk of a captured step is gone
    with pytest.raises(StoreError, match=r"split 'test', variable 'fc', step 10"):
        compute_distances(store, out, client=client)
    done = {s: open_split(out, s)["done"].values for s in ("train", "test")}
    assert done["train"].all()
    np.testing.assert_array_equal(done["test"], [True, False, True])
    chunk.write_bytes(saved)
    assert compute_distances(store, out, client=client)["computed"] == 1
    assert open_split(out, "test")["done"].values.all()


def test_incompatible_cache_is_refused_unless_overwritten(store, tmp_path, client):
    out = tmp_path / "distances.zarr"
    compute_distances(store, out, splits=["train"], client=client)
    other = make_store(tmp_path / "other.zarr", steps=(0, 5), n=12)
    with pytest.raises(StoreError, match="--overwrite"):
        compute_distances(other, out, splits=["train"], client=client)
    compute_distances(other, out, splits=["train"], overwrite=True, client=client)
    np.testing.assert_array_equal(open_split(out, "train")["step"], [0, 5])
    # the same schedule trained again with another seed: same steps, other activations
    shutil.rmtree(other)
    retrained = make_store(other, steps=(0, 5), n=12, seed=3)
    with pytest.raises(StoreError, match="trained again since"):
        compute_distances(retrained, out, splits=["train"], client=client)


def test_nonfinite_activations_give_flagged_nan_points(tmp_path, client):
    store = make_store(
        tmp_path / "s.zarr", steps=(0, 10), n=10, nan_points=[("train", 10, "fc")], run="seed3"
    )
    out = tmp_path / "d.zarr"
    with pytest.warns(NaNPointWarning, match=r"run seed3, split train, step 10, layer fc"):
        summary = compute_distances(store, out, client=client)
    assert summary["nonfinite"] == [("train", 10, "fc")]
    cache = open_split(out, "train")
    assert np.isnan(cache["d2"].sel(step=10, layer="fc")).all()
    assert cache["nonfinite"].sel(step=10, layer="fc")
    assert int(cache["nonfinite"].sum()) == 1
    others = cache["d2"].where(~cache["nonfinite"])
    assert int(np.isnan(others).sum()) == 10 * 10  # only the flagged point
    assert np.isfinite(open_split(out, "test")["d2"]).all()


def test_store_errors_are_clear(tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        read_store_plan(tmp_path / "missing.zarr")
    empty = make_store(tmp_path / "empty.zarr", steps=(0, 1), captured=(), n=4)
    with pytest.raises(StoreError, match="no captured step"):
        read_store_plan(empty)


def test_distances_command_resumes_and_reports(tmp_path, capsys, client):
    store = make_store(tmp_path / "s.zarr", steps=(0, 10), n=8)
    out = tmp_path / "d.zarr"
    address = ["--scheduler-address", client.scheduler.address]
    assert main(["distances", str(store), "--out", str(out), *address]) == 0
    assert "4 steps computed" in capsys.readouterr().out
    assert main(["distances", str(store), "--out", str(out)]) == 0
    assert "0 steps computed, 4 already done" in capsys.readouterr().out
    shutil.rmtree(store)
    assert main(["distances", str(store), "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_kept_widths_written_twice_keep_the_first_entry(store, tmp_path, client, caplog):
    cache = tmp_path / "distances.zarr"
    compute_distances(store, cache, splits=["train"], client=client)
    steps = np.asarray(open_split(cache, "train")["step"])
    layers = list(zarr.open_group(str(cache), mode="r").attrs["layers"])
    search = {"rule": "alignment", "grid": "linear", "points": 7, "label_kernel": "indicator"}
    shape = (len(steps), len(layers))
    first = AlignmentWidths(np.full(shape, 1.5), np.zeros(shape, bool), [(0, layers[0], "why")])
    second = AlignmentWidths(np.full(shape, 2.5), np.ones(shape, bool), [])
    with caplog.at_level("WARNING", logger="infoplane.io.cache"):
        write_cached_widths(cache, "train", search, steps, layers, first)
        write_cached_widths(cache, "train", search, steps, layers, second)  # a concurrent twin
    assert caplog.text == ""
    kept = read_cached_widths(cache, "train", search, steps, layers)
    np.testing.assert_array_equal(kept.sigma_star, first.sigma_star)
    assert kept.failures == first.failures
    assert [p.name for p in (cache / "widths").iterdir() if "writing" in p.name] == []
    # another search, other steps or other layers find nothing
    assert read_cached_widths(cache, "train", {**search, "points": 8}, steps, layers) is None
    assert read_cached_widths(cache, "train", search, steps[:-1], layers) is None
    assert read_cached_widths(cache, "train", search, steps, layers[::-1]) is None


def test_an_empty_cache_of_a_huge_probe_costs_no_memory(store):
    """The template of N = 30,000 samples (65 GB of float64 distances) is metadata only."""
    import dataclasses
    import tracemalloc

    from infoplane.io.cache import _split_template

    plan = read_store_plan(store)
    train = dataclasses.replace(plan.splits["train"], n_samples=30_000)
    big = dataclasses.replace(plan, splits={"train": train})
    storage = {name: "float32" for name in [*plan.layers, "x"]}
    tracemalloc.start()
    template = _split_template(big, "train", storage=storage)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert template["d2"].shape[-2:] == (30_000, 30_000) and template["d2"].nbytes > 6e10
    assert peak < 50e6
