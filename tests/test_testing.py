"""infoplane.testing: the store builder and the result assertions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import zarr

from infoplane.errors import InputError, StoreError
from infoplane.estimate.pipeline import estimate
from infoplane.io.results import write_result
from infoplane.io.store import open_activations, open_writer, validate_store
from infoplane.presets import resolve_preset
from infoplane.testing import (
    INPUT_SHAPE,
    LAYERS,
    assert_invariants,
    assert_results_allclose,
    assert_results_identical,
    make_result,
    make_store,
)


def problems_of(path) -> list:
    """Errors and warnings of validate_store."""
    report = validate_store(path)
    return [*report.errors, *report.warnings]


def store_bytes(path) -> dict:
    root = zarr.open_group(path, mode="r")
    arrays = {
        f"{split}/{name}": array[:].tobytes()
        for split in root.group_keys()
        for name, array in root[split].arrays()
    }
    return {"arrays": arrays, "attrs": root.attrs.asdict()}


# ---------------------------------------------------------------------------- make_store


def test_import_is_light():
    code = (
        "import sys, infoplane.testing; "
        "heavy = {'xarray', 'zarr', 'dask', 'distributed', 'torch', 'matplotlib'}; "
        "loaded = sorted(heavy & set(sys.modules)); assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_store_is_valid_and_its_layers_depend_on_the_inputs(tmp_path):
    path = make_store(tmp_path / "activations.zarr")
    assert path == tmp_path / "activations.zarr"
    assert problems_of(path) == []
    for split in ("train", "test"):
        view = open_activations(path, split).load()
        assert view.step.values.tolist() == [0, 10, 20, 30]
        np.testing.assert_allclose(view.epoch.values, [0.0, 0.5, 1.0, 1.5])
        assert view.attrs["layers"] == list(LAYERS)
        assert view.sizes["sample"] == 12
        assert view.x.shape[2:] == INPUT_SHAPE
        assert view.attrs["run"] == "seed0" and view.attrs["seed"] == 0
        np.testing.assert_array_equal(view.y.values[0], np.arange(12) % 3)
        for name, shape in LAYERS.items():
            values = view[name].values
            assert values.shape[2:] == shape and values.dtype == np.float32
            assert np.isfinite(values).all()
            assert np.ptp(values[0], axis=0).max() > 0  # samples differ
            assert not np.array_equal(values[0], values[1])  # and steps do
        # the same inputs at every step, as in one probe set
        np.testing.assert_array_equal(view.x.values[0], view.x.values[-1])


def test_the_same_arguments_write_the_same_bytes(tmp_path):
    a = make_store(tmp_path / "a.zarr", steps=(0, 10), n=5)
    b = make_store(tmp_path / "b.zarr", steps=(0, 10), n=5)
    c = make_store(tmp_path / "c.zarr", steps=(0, 10), n=5, seed=1)
    assert store_bytes(a) == store_bytes(b)
    assert store_bytes(a)["arrays"]["train/fc"] != store_bytes(c)["arrays"]["train/fc"]


def test_captured_leaves_the_other_steps_uncaptured(tmp_path):
    path = make_store(tmp_path / "killed.zarr", steps=(0, 10, 20, 30), captured=(0, 20), n=4)
    assert problems_of(path) == []
    writer = open_writer(path)
    assert writer.captured("train").tolist() == [True, False, True, False]
    assert writer.next_uncaptured_index() == 1
    assert open_activations(path, "test").step.values.tolist() == [0, 20]
    empty = make_store(tmp_path / "empty.zarr", steps=(0, 1), captured=(), n=4)
    assert open_activations(empty, "train").sizes["step"] == 0


def test_nan_points_put_nan_exactly_there(tmp_path):
    path = make_store(
        tmp_path / "nan.zarr", steps=(0, 10, 20), n=6, nan_points=[("test", 10, "fc")]
    )
    fc = open_activations(path, "test").fc
    assert np.isnan(fc.sel(step=10).values[0]).all()
    assert np.isfinite(fc.sel(step=10).values[1:]).all()
    assert np.isfinite(fc.sel(step=[0, 20]).values).all()
    assert np.isfinite(open_activations(path, "train").fc.values).all()
    assert np.isfinite(open_activations(path, "test").conv.values).all()
    (problem,) = problems_of(path)
    assert "'test'" in str(problem) and "'fc'" in str(problem) and "step 10" in str(problem)


def test_values_attributes_and_layout_of_ones_own(tmp_path):
    def data(split: str, step: int) -> dict:
        rng = np.random.default_rng(step)
        return {
            "index": np.arange(3) + step,
            "x": rng.random((3, 2), dtype=np.float32),
            "y": np.array([0, 1, 0]),
            "activations": {"h": rng.random((3, 4))},
        }

    attrs = {
        "experiment": "own",
        "run": "r1",
        "seed": 7,
        "model": "m",
        "dataset": "d",
        "config": {"a": 1},
        "device": "cpu",
    }
    path = make_store(
        tmp_path / "own.zarr", steps=(0, 5), epochs=(0.0, 2.0), n={"train": 3},
        input_shape=(2,), layers={"h": (4,)}, attrs=attrs, data=data, dtype="float16",
        nan_points=[("train", 5, "h")],
    )  # fmt: skip
    view = open_activations(path, "train")
    assert zarr.open_group(path, mode="r").attrs["experiment"] == "own"
    assert {k: view.attrs[k] for k in attrs} == attrs
    with pytest.raises(StoreError, match="split 'test' is not in"):
        open_activations(path, "test")
    np.testing.assert_array_equal(view.epoch.values, [0.0, 2.0])
    assert view.h.dtype == np.float16
    for step in (0, 5):
        expected = data("train", step)
        np.testing.assert_array_equal(view.index.sel(step=step).values, expected["index"])
        np.testing.assert_array_equal(view.x.sel(step=step).values, expected["x"])
    h = expected["activations"]["h"].astype(np.float16)
    h[0] = np.nan
    np.testing.assert_array_equal(view.h.sel(step=5).values, h)


def test_bad_layout_leaves_nothing_and_overwrite_replaces(tmp_path):
    path = tmp_path / "a.zarr"
    with pytest.raises(InputError, match="reserved"):
        make_store(path, layers={"x": (2,)})
    assert not path.exists()
    make_store(path, steps=(0, 10), n=4)
    with pytest.raises(StoreError, match="already exists"):
        make_store(path, steps=(0, 10), n=4)
    make_store(path, steps=(0, 10), n=4, captured=(), overwrite=True)
    assert not open_writer(path).captured("train").any()


# ---------------------------------------------------------------------------- result assertions


def small_result() -> xr.Dataset:
    """A result that satisfies every invariant: N = 8 (log2 N = 3 bits)."""
    return make_result(n_steps=2, attrs={"estimator": "paper", "run": "seed0"})


POINT = {"split": "test", "step": 10, "layer": "b"}


def test_identical_results_pass_nan_included(tmp_path):
    a = small_result()
    a["I_XT"].loc[POINT] = np.nan
    b = a.copy(deep=True)
    assert_results_identical(a, b, check_attrs=True)
    assert_results_identical(a["I_XT"], b["I_XT"])
    write_result(a, tmp_path / "a.zarr")
    assert_results_identical(tmp_path / "a.zarr", b)
    assert_results_identical(str(tmp_path / "a.zarr"), b)


def test_results_identical_fails_on_a_value_a_coordinate_or_a_variable():
    a = small_result()
    b = a.copy(deep=True)
    b["H_T"].loc[POINT] = 1.0 + 1e-15
    with pytest.raises(AssertionError):
        assert_results_identical(a, b)
    with pytest.raises(AssertionError):
        assert_results_identical(a, a.assign_coords(step=[0, 20]))
    with pytest.raises(AssertionError):
        assert_results_identical(a, a.drop_vars("H_TY"))
    with pytest.raises(AssertionError):
        assert_results_identical(a, a.where(a.layer == "a"))  # NaN is not a number


def test_results_identical_compares_attributes_only_when_asked():
    a = small_result()
    b = a.assign_attrs(store="/elsewhere/activations.zarr")
    assert_results_identical(a, b)
    with pytest.raises(AssertionError):
        assert_results_identical(a, b, check_attrs=True)
    c = a.copy(deep=True)
    c["H_T"].attrs["units"] = "nats"
    assert_results_identical(a, c)
    with pytest.raises(AssertionError):
        assert_results_identical(a, c, check_attrs=True)


def test_results_allclose_within_and_beyond_the_tolerance(tmp_path):
    a = small_result()
    a["I_TY"].loc[POINT] = np.nan
    b = a.copy(deep=True).assign_attrs(store="elsewhere")
    b["H_T"].loc[POINT] = 1.0 + 1e-12
    assert_results_allclose(a, b)
    assert_results_allclose(a, b, rtol=0, atol=1e-11)
    with pytest.raises(AssertionError):
        assert_results_allclose(a, b, rtol=0, atol=1e-13)
    b["H_T"].loc[POINT] = 1.1
    with pytest.raises(AssertionError):
        assert_results_allclose(a, b)
    write_result(a, tmp_path / "a.zarr")
    assert_results_allclose(tmp_path / "a.zarr", a)
    with pytest.raises(AssertionError):
        assert_results_allclose(a, a.assign_coords(layer=["a", "c"]))


def test_invariants_pass_on_a_consistent_result(tmp_path):
    assert_invariants(small_result())
    write_result(small_result(), tmp_path / "r.zarr")
    assert_invariants(tmp_path / "r.zarr", allow_nan=False)


def test_invariants_fail_listing_every_violation():
    ds = small_result()
    ds["H_T"].loc[POINT] = 3.5  # > log2 8, and breaks the bounds and identities it enters
    with pytest.raises(AssertionError) as caught:
        assert_invariants(ds)
    message = str(caught.value)
    assert message.startswith("result 'paper' of run seed0:")
    assert "split test, step 10, layer b: H_T <= log2 N violated" in message
    assert "H_XT >= max of its marginals" in message and "I_XT = H + H - joint H" in message
    assert "split train" not in message


def test_invariants_tolerance_and_nan_points():
    ds = small_result()
    ds["I_XT"].loc[POINT] = -1e-9
    ds["H_XT"].loc[POINT] = 3.0 + 1e-9  # a hair above H_X + H_T and log2 N
    assert_invariants(ds)
    with pytest.raises(AssertionError, match="I_XT >= 0"):
        assert_invariants(ds, tolerance=1e-12)
    nan = small_result()
    nan["I_TY"].loc[POINT] = np.nan
    assert_invariants(nan)
    with pytest.raises(AssertionError, match=r"1 NaN point.*\n  NaN at split test, step 10"):
        assert_invariants(nan, allow_nan=False)


def test_long_lists_are_cut(tmp_path):
    ds = small_result()
    ds["H_T"][:] = 9.0
    with pytest.raises(AssertionError, match=r"\.\.\. and \d+ more$"):
        assert_invariants(ds)


def test_real_estimates_from_the_builder_pass(tmp_path, client):
    store = make_store(tmp_path / "s.zarr", steps=(0, 10, 20), n=8)
    result = estimate(store, resolve_preset(None, "paper"), name="paper", client=client)
    assert_invariants(result, allow_nan=False)
    again = estimate(store, resolve_preset(None, "paper"), name="paper", client=client)
    assert_results_identical(result, again, check_attrs=True)
