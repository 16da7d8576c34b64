"""The activation store: layout, writer, reader, info, and stores written by plain xarray."""

from __future__ import annotations

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
    create_store,
    open_activations,
    open_writer,
    store_info,
    validate_store,
)

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
    options = dict(
        steps=STEPS,
        epochs=EPOCHS,
        n_samples=N,
        input_shape=INPUT,
        layer_shapes=LAYERS,
        attrs=ATTRS,
    )
    options.update(kwargs)
    return create_store(path, **options)


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
        "open_activations(sys.argv[1], 'test'); assert validate_store(sys.argv[1]) == []"
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
    assert validate_store(writer.path) == []


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
    writer = new_store(tmp_path / "a.zarr", n_samples={"train": 6})
    with pytest.raises(InputError, match="step 7 is not in the capture schedule"):
        writer.write("train", 7, **step_data("train", 0))
    with pytest.raises(InputError, match=r"split 'test' is not in .*\['train'\]"):
        writer.write("test", 0, **step_data("test", 0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": [0, 5, 5, 20]}, "strictly increasing"),
        ({"epochs": [0.0, 1.0]}, "one epoch per step"),
        ({"n_samples": {"valid": 3}}, "n_samples keys"),
        ({"layer_shapes": {"x": (2,)}}, "reserved"),
        ({"layer_shapes": {"a/b": (2,)}}, "cannot name a Zarr array"),
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
    writer = create_store(
        tmp_path / "relu.zarr",
        steps=[0],
        epochs=[0.0],
        n_samples={"train": 64},
        input_shape=(1,),
        layer_shapes={"relu": (32, 8, 8)},
        attrs=ATTRS,
    )
    writer.write(
        "train", 0, index=np.arange(64), x=np.zeros((64, 1)), y=np.zeros(64, int),
        activations={"relu": relu},
    )  # fmt: skip
    variable = store_info(writer.path)["splits"]["train"]["variables"]["relu"]
    assert variable["raw_bytes"] / variable["stored_bytes"] > 1.5


def test_cli_info_and_validate(full_store, capsys):
    assert main(["store", "info", str(full_store)]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "(2, 3, 3)" in out and "4/4 steps" in out and "ratio" in out
    assert main(["store", "info", "--json", str(full_store)]) == 0
    assert '"steps_captured": 4' in capsys.readouterr().out
    assert main(["store", "validate", str(full_store)]) == 0
    assert "valid" in capsys.readouterr().out


# ---------------------------------------------------------------------------- hand-written stores


@pytest.mark.filterwarnings("ignore:Consolidated metadata:UserWarning")
def test_store_written_with_plain_xarray_follows_the_contract(tmp_path, rng):
    """A user's own training code may write the store with xarray alone."""
    path = tmp_path / "own.zarr"
    steps, n = np.array([0, 100, 200]), 5
    layers = {"hidden": (7,), "softmax": (3,)}
    root_attrs = {
        **ATTRS,
        "schema_version": SCHEMA_VERSION,
        "layers": list(layers),
    }
    xr.Dataset(attrs=root_attrs).to_zarr(path, mode="w")
    for split in ("train", "test"):
        data = {
            "index": (("step", "sample"), np.tile(np.arange(n), (3, 1))),
            "x": (("step", "sample", "x_dim0"), rng.random((3, n, 4), dtype=np.float32)),
            "y": (("step", "sample"), rng.integers(0, 3, (3, n))),
            "captured": ("step", np.array([True, True, False])),
        }
        for name, shape in layers.items():
            dims = ("step", "sample", f"{name}_dim0")
            data[name] = (dims, rng.random((3, n, *shape), dtype=np.float32))
        ds = xr.Dataset(data, coords={"step": steps, "epoch": ("step", [0.0, 1.0, 2.0])})
        encoding = {
            name: {"chunks": (1, *ds[name].shape[1:])} for name in ("index", "x", "y", *layers)
        }
        ds.to_zarr(path, group=split, mode="w", encoding=encoding, write_empty_chunks=True)

    assert validate_store(path) == []
    view = open_activations(path, "train")
    assert view.step.values.tolist() == [0, 100]
    expected = xr.open_zarr(path, group="train").hidden.isel(step=[0, 1])
    np.testing.assert_array_equal(view.hidden.values, expected.values)
    assert view.attrs["layers"] == ["hidden", "softmax"]
