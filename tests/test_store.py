"""The activation store: layout, writer, reader, info, and stores written by plain xarray."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from infoplane import __version__
from infoplane.cli import main
from infoplane.errors import InputError, StoreError
from infoplane.io.store import (
    SCHEMA_VERSION,
    open_activations,
    open_writer,
    store_info,
    validate_store,
)
from infoplane.testing import make_store

STEPS = [0, 5, 10, 20]
EPOCHS = [0.0, 0.25, 0.5, 1.0]
N = {"train": 6, "test": 4}
INPUT = (1, 3, 3)
LAYERS = {"conv1": (2, 3, 3), "fc": (4,), "softmax": (3,)}
ATTRS = {
    "experiment": "toy",
    "run": "seed1",
    "seed": 1,
    "model": "cnn",
    "dataset": "synthetic",
    "config": {"training": {"lr": 0.1}, "capture": {"layers": None}},
    "device": "cpu",
}


def step_data(split: str, step: int, dtype=np.float32) -> dict:
    rng = np.random.default_rng([step, len(split)])
    n = N[split]
    return {
        "index": rng.permutation(50)[:n],
        "x": rng.random((n, *INPUT), dtype=np.float32),
        "y": rng.integers(0, 3, n),
        "activations": {
            name: rng.standard_normal((n, *shape)).astype(dtype) for name, shape in LAYERS.items()
        },
    }


def new_store(path: Path, **kwargs):
    """A store of this module's layout (kwargs override it), nothing captured, and its writer."""
    options = dict(
        steps=STEPS,
        epochs=EPOCHS,
        n=N,
        input_shape=INPUT,
        layers=LAYERS,
        attrs=ATTRS,
    )
    options.update(kwargs)
    return open_writer(make_store(path, captured=(), **options))


def write_all(writer, steps=STEPS):
    for step in steps:
        for split in writer.splits:
            writer.write(split, step, **step_data(split, step))


@pytest.fixture
def full_store(tmp_path):
    writer = new_store(tmp_path / "activations.zarr")
    write_all(writer)
    return writer.path


# ---------------------------------------------------------------------------- layout


def test_round_trip_through_the_reader(full_store):
    for split in ("train", "test"):
        view = open_activations(full_store, split)
        assert list(view.data_vars) == ["index", "x", "y", "conv1", "fc", "softmax"]
        assert view.step.values.tolist() == STEPS
        np.testing.assert_array_equal(view.epoch.values, EPOCHS)
        assert view.conv1.dims == ("step", "sample", "conv1_dim0", "conv1_dim1", "conv1_dim2")
        assert view.conv1.chunks[0] == (1,) * len(STEPS)  # lazy, one step per chunk
        for step in STEPS:
            data = step_data(split, step)
            sel = view.sel(step=step)
            np.testing.assert_array_equal(sel.index.values, data["index"])
            np.testing.assert_array_equal(sel.x.values, data["x"])
            np.testing.assert_array_equal(sel.y.values, data["y"])
            for name in LAYERS:
                np.testing.assert_array_equal(sel[name].values, data["activations"][name])
        assert view.attrs["split"] == split
        assert view.attrs["layers"] == list(LAYERS)


def test_root_attributes(full_store):
    attrs = zarr.open_group(full_store, mode="r").attrs.asdict()
    for key, value in ATTRS.items():
        assert attrs[key] == value
    assert attrs["schema_version"] == SCHEMA_VERSION
    assert attrs["layers"] == ["conv1", "fc", "softmax"]
    assert attrs["infoplane_version"] == __version__
    assert ("torch_version" in attrs) == (find_spec("torch") is not None)


def test_chunks_codecs_and_dtypes(full_store):
    group = zarr.open_group(full_store, mode="r")["train"]
    conv = group["conv1"]
    assert conv.chunks == (1, N["train"], *LAYERS["conv1"])
    assert conv.dtype == np.float32
    blosc = conv.compressors[0]
    assert (blosc.cname.value, blosc.shuffle.value) == ("zstd", "shuffle")
    assert group["x"].dtype == np.float32
    assert group["index"].dtype == group["y"].dtype == np.int64
    assert group["captured"].dtype == bool
    # One chunk file per (variable, step).
    assert len(list((full_store / "train" / "conv1" / "c").rglob("*"))) - len(
        list((full_store / "train" / "conv1" / "c").rglob("*/"))
    ) == len(STEPS)


def test_plain_xarray_reads_it_without_warnings(full_store):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = xr.open_zarr(full_store, group="test")
    assert set(ds.coords) == {"step", "epoch"}
    assert ds.captured.values.all()
    assert ds.fc.sizes == {"step": len(STEPS), "sample": N["test"], "fc_dim0": 4}


def test_snakemakes_marker_file_in_a_store_raises_no_warning(full_store):
    # Snakemake leaves `.snakemake_timestamp` in directory outputs; zarr warns about it
    (full_store / ".snakemake_timestamp").touch()
    code = (
        "import sys; from infoplane.io.store import open_activations, validate_store; "
        "open_activations(sys.argv[1], 'test'); report = validate_store(sys.argv[1]); "
        "assert report.ok and not report.warnings, report"
    )
    subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", code, str(full_store)], check=True
    )


def test_float16_activations(tmp_path):
    writer = new_store(tmp_path / "half.zarr", dtype="float16")
    write_all(writer, STEPS[:1])
    view = open_activations(writer.path, "train")
    assert view.conv1.dtype == np.float16 and view.x.dtype == np.float32
    assert view.y.dtype == np.int64 and view.index.dtype == np.int64
    expected = step_data("train", 0)["activations"]["conv1"]
    np.testing.assert_allclose(view.conv1[0].values, expected, rtol=1e-3, atol=1e-3)


def test_float16_overflow_is_refused(tmp_path):
    writer = new_store(tmp_path / "half.zarr", dtype="float16")
    data = step_data("train", 0)
    data["activations"]["fc"][0, 0] = 1e6
    with pytest.raises(InputError, match=r"layer 'fc'.*float16 range.*float32"):
        writer.write("train", 0, **data)
    assert not writer.captured("train").any()


# ---------------------------------------------------------------------------- writer


def test_only_captured_steps_are_visible_and_resume_index(tmp_path):
    writer = new_store(tmp_path / "a.zarr")
    assert writer.next_uncaptured_index() == 0
    empty = open_activations(writer.path, "train").load()
    assert empty.sizes["step"] == 0 and empty.conv1.shape == (0, 6, 2, 3, 3)
    write_all(writer, [0, 10])
    assert writer.captured("train").tolist() == [True, False, True, False]
    assert writer.next_uncaptured_index() == 1
    assert open_activations(writer.path, "train").step.values.tolist() == [0, 10]
    # A step captured in one split only is not complete.
    writer.write("train", 5, **step_data("train", 5))
    assert writer.next_uncaptured_index() == 1
    writer.write("test", 5, **step_data("test", 5))
    assert writer.next_uncaptured_index() == 3
    write_all(writer, [20])
    assert writer.next_uncaptured_index() is None


def test_captured_is_set_only_after_every_variable(tmp_path, monkeypatch):
    writer = new_store(tmp_path / "a.zarr")
    original = zarr.Array.__setitem__

    def failing_setitem(self, key, value):
        if self.path == "train/softmax":
            raise OSError("disk full")
        original(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", failing_setitem)
    with pytest.raises(StoreError, match=r"split 'train', step 5.*disk full"):
        writer.write("train", 5, **step_data("train", 5))
    monkeypatch.undo()
    assert (writer.path / "train" / "conv1" / "c" / "1").exists()  # earlier variables written
    assert not writer.captured("train").any()
    report = validate_store(writer.path)
    assert report.ok, report.errors
    assert all("no step is captured" in w for w in report.warnings)  # nothing else is off


def test_rewriting_a_step_is_idempotent_and_replaces(tmp_path):
    writer = new_store(tmp_path / "a.zarr")
    write_all(writer, [5])
    chunk = writer.path / "train" / "fc" / "c" / "1" / "0" / "0"
    first = chunk.read_bytes()
    writer.write("train", 5, **step_data("train", 5))
    assert chunk.read_bytes() == first
    other = step_data("train", 10)
    writer.write("train", 5, **other)
    view = open_activations(writer.path, "train")
    np.testing.assert_array_equal(view.fc.sel(step=5).values, other["activations"]["fc"])
    assert view.step.values.tolist() == [5]


def test_open_writer_restores_the_layout(full_store):
    writer = open_writer(full_store)
    assert writer.steps.tolist() == STEPS
    assert writer.epochs.tolist() == EPOCHS
    assert writer.layers == list(LAYERS)
    assert writer.layer_shapes == LAYERS
    assert writer.n_samples == N
    assert writer.input_shape == INPUT
    assert writer.dtype == "float32"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(x=d["x"][:, :, :2]), r"x has shape \(6, 1, 2, 3\), expected"),
        (lambda d: d["activations"].pop("fc"), r"missing \['fc'\]"),
        (lambda d: d["activations"].update(extra=d["x"]), r"unexpected \['extra'\]"),
        (lambda d: d.update(y=d["y"].astype(float)), "y must be integers"),
        (lambda d: d.update(index=-d["index"] - 1), "index has negative entries"),
    ],
)
def test_write_rejects_bad_arrays(tmp_path, change, message):
    writer = new_store(tmp_path / "a.zarr")
    data = step_data("train", 0)
    change(data)
    with pytest.raises(InputError, match=message):
        writer.write("train", 0, **data)


def test_write_rejects_unknown_step_and_split(tmp_path):
    writer = new_store(tmp_path / "a.zarr", n={"train": 6})
    with pytest.raises(InputError, match="step 7 is not in the capture schedule"):
        writer.write("train", 7, **step_data("train", 0))
    with pytest.raises(InputError, match=r"split 'test' is not in .*\['train'\]"):
        writer.write("test", 0, **step_data("test", 0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": [0, 5, 5, 20]}, "strictly increasing"),
        ({"epochs": [0.0, 1.0]}, "one epoch per step"),
        ({"n": {"valid": 3}}, "n_samples keys"),
        ({"layers": {"x": (2,)}}, "reserved"),
        ({"layers": {"a/b": (2,)}}, "cannot name a Zarr array"),
        ({"attrs": {"experiment": "e"}}, r"miss \['run', 'seed'"),
        ({"dtype": "float64"}, "dtype must be one of"),
    ],
)
def test_create_rejects_bad_layouts(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        new_store(tmp_path / "a.zarr", **kwargs)
    assert not (tmp_path / "a.zarr").exists()


def test_create_does_not_clobber(full_store):
    with pytest.raises(StoreError, match=r"already exists.*overwrite=True.*open_writer"):
        new_store(full_store)
    writer = new_store(full_store, overwrite=True)
    assert not writer.captured("train").any()
    assert not list(full_store.parent.glob(".*creating"))


def test_create_refuses_to_replace_a_foreign_directory(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep")
    with pytest.raises(StoreError, match="not a Zarr store"):
        new_store(tmp_path / "data", overwrite=True)
    assert (tmp_path / "data" / "precious.txt").exists()


# ---------------------------------------------------------------------------- info and CLI


def test_store_info(tmp_path):
    writer = new_store(tmp_path / "a.zarr")
    write_all(writer, [0, 5])
    info = store_info(writer.path)
    assert info["layers"] == list(LAYERS)
    assert info["run"] == "seed1"
    train = info["splits"]["train"]
    assert (train["steps_planned"], train["steps_captured"]) == (4, 2)
    assert train["captured_steps"] == [0, 5]
    assert train["n_samples"] == 6
    assert train["variables"]["conv1"]["shape"] == [2, 3, 3]
    assert train["variables"]["conv1"]["dtype"] == "float32"
    assert train["variables"]["conv1"]["raw_bytes"] == 2 * 6 * 18 * 4
    stored = sum(
        v["stored_bytes"] for s in info["splits"].values() for v in s["variables"].values()
    )
    assert info["stored_bytes"] == stored
    assert info["compression_ratio"] == pytest.approx(info["raw_bytes"] / stored)
    assert info["size_on_disk"] > stored


def test_compression_pays_on_sparse_activations(tmp_path, rng):
    relu = np.maximum(rng.standard_normal((64, 32, 8, 8)), 0).astype(np.float32)
    path = make_store(
        tmp_path / "relu.zarr",
        steps=[0],
        epochs=[0.0],
        n={"train": 64},
        input_shape=(1,),
        layers={"relu": (32, 8, 8)},
        attrs=ATTRS,
        data=lambda split, step: {
            "index": np.arange(64), "x": np.zeros((64, 1)), "y": np.zeros(64, int),
            "activations": {"relu": relu},
        },
    )  # fmt: skip
    variable = store_info(path)["splits"]["train"]["variables"]["relu"]
    assert variable["raw_bytes"] / variable["stored_bytes"] > 1.5


def test_cli_info_and_validate(full_store, capsys):
    assert main(["store", "info", str(full_store)]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "(2, 3, 3)" in out and "4/4 steps" in out and "ratio" in out
    assert main(["store", "info", "--json", str(full_store)]) == 0
    assert '"steps_captured": 4' in capsys.readouterr().out
    assert main(["store", "validate", str(full_store)]) == 0
    assert capsys.readouterr().out == f"{full_store}: valid\n"
    assert main(["store", "validate", "--strict", str(full_store)]) == 0


def test_cli_validate_tells_errors_from_warnings(full_store, capsys):
    del zarr.open_group(full_store, mode="r+").attrs["device"]  # readable: a warning
    assert main(["store", "validate", str(full_store)]) == 0
    out, err = capsys.readouterr()
    assert out == f"{full_store}: valid (0 errors, 1 warning)\n"
    assert err.startswith("warning: root attribute 'device' is missing;") and "error:" not in err
    assert main(["store", "validate", "--strict", str(full_store)]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"{full_store}: invalid: 0 errors, 1 warning (--strict: warnings fail)"

    shutil.rmtree(full_store / "test" / "y")  # unreadable: an error (and stale metadata)
    assert main(["store", "validate", str(full_store)]) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == ""
    assert [line for line in lines if line.startswith("error: ")] == [
        "error: split 'test', variable 'y': missing; write y(step, sample) int64, the labels"
    ]
    warned = [line for line in lines if line.startswith("warning: ")]
    assert len(warned) == 2 and "is stale for variable 'y'" in warned[1]
    assert lines[-1] == f"{full_store}: invalid: 1 error, 2 warnings"


# ---------------------------------------------------------------------------- hand-written stores


XR_STEPS = np.array([0, 100, 200])
XR_LAYERS = {"hidden": (7,), "softmax": (3,)}


def _xarray_split(rng, n: int = 5, labels=None) -> xr.Dataset:
    """One split as a user's own training code builds it: the documented names and dims."""
    k = len(XR_STEPS)
    y = rng.integers(0, 3, (k, n)) if labels is None else np.full((k, n), labels)
    data = {
        "index": (("step", "sample"), np.tile(np.arange(n), (k, 1))),
        "x": (("step", "sample", "x_dim0"), rng.random((k, n, 4), dtype=np.float32)),
        "y": (("step", "sample"), y),
        "captured": ("step", np.array([True, True, False])),
    }
    for name, shape in XR_LAYERS.items():
        dims = ("step", "sample", f"{name}_dim0")
        data[name] = (dims, rng.random((k, n, *shape), dtype=np.float32))
    return xr.Dataset(data, coords={"step": XR_STEPS, "epoch": ("step", [0.0, 1.0, 2.0])})


def _write_with_xarray(path: Path, splits: dict[str, xr.Dataset]) -> None:
    """xarray's defaults throughout (zarr_format 3 with zarr 3)."""
    root_attrs = {**ATTRS, "schema_version": SCHEMA_VERSION, "layers": list(XR_LAYERS)}
    xr.Dataset(attrs=root_attrs).to_zarr(path, mode="w")
    for split, ds in splits.items():
        ds.to_zarr(path, group=split)


def _apply_printed_fixes(messages: list[str], splits: dict[str, xr.Dataset]) -> int:
    """Run every ``ds.to_zarr(...)`` call the messages print, with ``ds`` that split's Dataset."""
    done = 0
    for message in messages:
        calls = re.findall(r"ds\.to_zarr\(.*?write_empty_chunks=True\)", message)
        if calls:
            (call,) = calls
            split = re.search(r"group='(\w+)'", call).group(1)
            eval(call, {"ds": splits[split]})
            done += 1
    return done


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_plain_xarray_store_with_defaults_reads_and_warns_with_the_exact_fix(tmp_path, rng):
    """A user's own code may write the store with xarray alone, with its default settings."""
    path = tmp_path / "own.zarr"
    splits = {split: _xarray_split(rng) for split in ("train", "test")}
    _write_with_xarray(path, splits)
    # What the defaults write: the Dataset's dims, one chunk for all steps of a small array,
    # fill value NaN (and a _FillValue attribute) for floats and 0 for ints, a bool captured,
    # epoch named in the coordinates attribute, consolidated metadata at the root.
    group = zarr.open_group(path, mode="r", use_consolidated=False)["train"]
    assert group["hidden"].metadata.dimension_names == ("step", "sample", "hidden_dim0")
    assert group["hidden"].chunks == (3, 5, 7) and group["y"].chunks == (3, 5)
    assert np.isnan(group["x"].fill_value) and "_FillValue" in group["x"].attrs
    assert group["y"].fill_value == 0 and "_FillValue" not in group["y"].attrs
    assert group["captured"].dtype == bool and group["x"].attrs["coordinates"] == "epoch"

    report = validate_store(path)
    assert report.ok, report.errors  # it reads correctly ...
    view = open_activations(path, "train")
    np.testing.assert_array_equal(view.hidden.values, splits["train"].hidden.values[:2])
    # ... but every step read decodes all three steps: one warning per split, with the fix
    assert len(report.warnings) == 2, report.warnings
    for split, warning in zip(("train", "test"), report.warnings, strict=True):
        assert warning.startswith(
            f"split {split!r}: chunks of 'index' (3, 5) (3 steps per chunk), 'x' (3, 5, 4)"
        )
        assert (
            f"ds.to_zarr({str(path)!r}, group={split!r}, mode='w', encoding={{'index': "
            "{'chunks': (1, 5)}, 'x': {'chunks': (1, 5, 4)}, 'y': {'chunks': (1, 5)}, 'hidden': "
            "{'chunks': (1, 5, 7)}, 'softmax': {'chunks': (1, 5, 3)}}, write_empty_chunks=True)"
        ) in warning

    assert _apply_printed_fixes(report.warnings, splits) == 2
    fixed = validate_store(path)
    assert fixed.errors == [] and fixed.warnings == []
    assert zarr.open_group(path, mode="r")["train"]["hidden"].chunks == (1, 5, 7)
    view = open_activations(path, "train")
    assert view.step.values.tolist() == [0, 100]
    np.testing.assert_array_equal(view.hidden.values, splits["train"].hidden.values[:2])
    expected = xr.open_zarr(path, group="train").hidden.isel(step=[0, 1])
    np.testing.assert_array_equal(view.hidden.values, expected.values)
    assert view.attrs["layers"] == ["hidden", "softmax"]


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_plain_xarray_store_with_skipped_chunks_is_an_error_naming_the_fix(tmp_path, rng):
    """zarr does not write a chunk equal to the fill value: labels all 0 (fill 0) leave none."""
    path = tmp_path / "own.zarr"
    splits = {"train": _xarray_split(rng), "test": _xarray_split(rng, labels=0)}  # one class
    _write_with_xarray(path, splits)
    assert not (path / "test" / "y" / "c").exists()

    report = validate_store(path)
    (error,) = report.errors
    assert error.startswith(
        "split 'test', variable 'y', step 0 (index 0), step 100 (index 1): chunk file "
        "test/y/c/0/0 is missing although the step is marked captured; zarr does not store a "
        "chunk whose values all equal the fill value (0) unless write_empty_chunks=True"
    )
    assert f"ds.to_zarr({str(path)!r}, group='test', mode='w', encoding={{'index'" in error
    with pytest.raises(StoreError, match=r"split 'test', variable 'y', step .*missing"):
        open_activations(path, "test").y.load()  # readers refuse it: it is an error

    # the printed calls (the error's for test, the chunk warning's for train) fix the store
    assert _apply_printed_fixes([*report.errors, *report.warnings], splits) == 3
    fixed = validate_store(path)
    assert fixed.errors == [] and fixed.warnings == []
    np.testing.assert_array_equal(open_activations(path, "test").y.values, np.zeros((2, 5)))
