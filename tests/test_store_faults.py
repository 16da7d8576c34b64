"""Faults of the activation store: a killed writer, damaged chunks, broken metadata."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import store_slow_writer as slow
import xarray as xr

from infoplane.cli import main
from infoplane.errors import StoreError
from infoplane.io.store import open_activations, open_writer, validate_store
from infoplane.testing import make_store

HELPER = Path(__file__).with_name("store_slow_writer.py")

LAYERS = {"h1": (3, 4), "softmax": (5,)}
ATTRS = {
    "experiment": "faults",
    "run": "seed0",
    "seed": 0,
    "model": "toy",
    "dataset": "synthetic",
    "config": {},
    "device": "cpu",
}
STEPS = [0, 10, 20, 30]


def _data(n: int, step: int) -> dict:
    rng = np.random.default_rng(step)
    return {
        "index": np.arange(n) + step,
        "x": rng.random((n, 2), dtype=np.float32),
        "y": rng.integers(0, 5, n),
        "activations": {name: rng.random((n, *shape)) for name, shape in LAYERS.items()},
    }


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with steps 0, 10, 20 captured and step 30 planned but not written."""
    sizes = {"train": 6, "test": 4}
    return make_store(
        tmp_path / "activations.zarr",
        steps=STEPS,
        epochs=[0.0, 0.5, 1.0, 1.5],
        n=sizes,
        input_shape=(2,),
        layers=LAYERS,
        attrs=ATTRS,
        captured=STEPS[:3],
        data=lambda split, step: _data(sizes[split], step),
    )


def _clean(report) -> bool:
    """No error and no warning."""
    assert report.errors == [] and report.warnings == [], report
    return True


def _chunk(store: Path, split: str, name: str, row: int) -> Path:
    import zarr

    array = zarr.open_array(store, path=f"{split}/{name}", mode="r")
    key = array.metadata.encode_chunk_key((row,) + (0,) * (array.ndim - 1))
    return store / split / name / key


# ---------------------------------------------------------------------------- killed writer


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_writer_killed_mid_step_keeps_earlier_steps_and_resumes(tmp_path):
    path = tmp_path / "killed.zarr"
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(path), "--delay", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        # Kill right after the large layer of step 20 is on disk, before its captured flag.
        for line in proc.stdout:
            seen.append(line.strip())
            if line.strip() == "wrote train/conv 2":
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"writer ended before the kill: {seen} {stderr}"
    assert "captured 10" in seen and "captured 20" not in seen

    # The killed store validates; its complete steps are intact, the torn one is not visible.
    assert _clean(validate_store(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = xr.open_zarr(path, group="train")  # consolidated metadata is still valid
    assert plain.captured.values.tolist()[:3] == [True, True, False]
    assert _chunk(path, "train", "conv", 2).is_file()  # the kill did land mid-step
    for split in ("train", "test"):
        view = open_activations(path, split)
        assert view.step.values.tolist() == [0, 10]
        for step in (0, 10):
            expected = slow.step_data(split, step)
            np.testing.assert_array_equal(
                view.conv.sel(step=step).values,
                expected["activations"]["conv"].astype(np.float32),
            )
            np.testing.assert_array_equal(view.index.sel(step=step).values, expected["index"])

    writer = open_writer(path)
    assert writer.captured("train").tolist()[:3] == [True, True, False]
    assert writer.next_uncaptured_index() == 2
    assert not list(path.rglob("*.partial"))
    slow.write_steps(writer, writer.next_uncaptured_index())
    assert writer.next_uncaptured_index() is None

    reference = slow.new_store(tmp_path / "reference.zarr")
    slow.write_steps(reference)
    assert _clean(validate_store(path))
    for split in ("train", "test"):
        resumed = open_activations(path, split).load()
        uninterrupted = open_activations(reference.path, split).load()
        xr.testing.assert_identical(resumed, uninterrupted)


# ---------------------------------------------------------------------------- damaged chunks


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty"])
def test_corrupt_chunk_is_named_by_validate_and_reader(store, damage):
    chunk = _chunk(store, "train", "h1", 1)
    raw = chunk.read_bytes()
    if damage == "truncate":
        chunk.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip":
        chunk.write_bytes(raw[:10] + bytes([raw[10] ^ 0xFF]) + raw[11:])
    else:
        chunk.write_bytes(b"")

    report = validate_store(store)
    problems = report.errors
    assert len(problems) == 1 and report.warnings == []
    assert "'train'" in problems[0] and "'h1'" in problems[0] and "step 10" in problems[0]
    assert "truncated or corrupt" in problems[0] and "recapture the step" in problems[0]

    view = open_activations(store, "train")
    with pytest.raises(StoreError, match=r"variable 'h1', step 10 \(index 1\)"):
        view.load()
    # Undamaged steps and variables still read.
    assert view.h1.sel(step=[0, 20]).values.shape == (2, 6, 3, 4)
    assert np.isfinite(view.softmax.values).all()


def test_missing_chunk_of_captured_step_is_an_error_not_fill(store):
    _chunk(store, "test", "softmax", 2).unlink()
    report = validate_store(store)
    problems = report.errors
    assert len(problems) == 1 and report.warnings == []
    assert "recapture the step" in problems[0]
    assert "'test'" in problems[0] and "'softmax'" in problems[0] and "step 20" in problems[0]
    assert "missing" in problems[0]
    with pytest.raises(StoreError, match=r"variable 'softmax', step 20.*missing"):
        open_activations(store, "test").softmax.load()


def test_missing_chunks_of_uncaptured_steps_are_fine(store):
    # Step 30 is planned but never written: no chunk files, and that is not a fault.
    assert not _chunk(store, "train", "h1", 3).exists()
    assert _clean(validate_store(store))


def test_validate_cli_exits_nonzero_and_names_variable_and_step(store, capsys):
    chunk = _chunk(store, "train", "x", 0)
    chunk.write_bytes(chunk.read_bytes()[:-3])
    assert main(["store", "validate", str(store)]) == 1
    err = capsys.readouterr().err
    assert "variable 'x'" in err and "step 0" in err
    (line,) = [line for line in err.splitlines() if "variable 'x'" in line]
    assert line.startswith("error: ")
    assert err.splitlines()[-1] == f"{store}: invalid: 1 error, 0 warnings"


def test_corrupt_captured_flags(store):
    chunk = store / "train" / "captured" / "c" / "0"
    chunk.write_bytes(b"garbage")
    problems = validate_store(store).errors
    assert any("'captured'" in p for p in problems)
    with pytest.raises(StoreError, match="captured flags"):
        open_activations(store, "train")
    assert open_activations(store, "test").sizes["step"] == 3  # the other split is untouched


def test_nan_activations_are_reported(tmp_path):
    path = make_store(
        tmp_path / "nan.zarr",
        steps=[0],
        epochs=[0.0],
        n={"train": 3},
        input_shape=(2,),
        layers=LAYERS,
        attrs=ATTRS,
        data=lambda split, step: _data(3, step),
        nan_points=[("train", 0, "h1")],
    )
    (problem,) = validate_store(path).errors
    assert "'h1'" in problem and "step 0" in problem and "NaN" in problem
    assert "first at sample 0" in problem and "captured to False at index [0]" in problem


# ---------------------------------------------------------------------------- broken metadata


def test_not_a_store(tmp_path):
    report = validate_store(tmp_path / "absent.zarr")
    (problem,) = report.errors
    assert "no activation store" in problem and "create_store" in problem
    assert not report.ok
    with pytest.raises(StoreError, match="no activation store"):
        open_activations(tmp_path / "absent.zarr", "train")
    with pytest.raises(StoreError, match="no activation store"):
        open_writer(tmp_path / "absent.zarr")


def test_unknown_split(store):
    with pytest.raises(StoreError, match=r"split 'valid' is not in .*\['train', 'test'\]"):
        open_activations(store, "valid")


def test_missing_root_attribute_and_variable(store):
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["seed"]
    del meta["consolidated_metadata"]  # keep the test about the attribute, not staleness
    meta_path.write_text(json.dumps(meta))
    shutil.rmtree(store / "test" / "y")
    report = validate_store(store)
    # a missing provenance attribute reads fine (a warning); a missing variable does not
    (warning,) = [w for w in report.warnings if w.startswith("root attribute 'seed' is missing;")]
    assert any("no consolidated metadata" in w for w in report.warnings)
    assert f"zarr.open_group({str(store)!r}, mode='r+').attrs.update({{'seed': 0}})" in warning
    (error,) = report.errors
    assert error.startswith("split 'test', variable 'y': missing; write y(step, sample) int64")


def test_wrong_schema_version_refuses_to_resume(store):
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["schema_version"] = 99
    meta.pop("consolidated_metadata")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="schema_version 99"):
        open_writer(store)
    assert any("schema_version" in p for p in validate_store(store).errors)


# ---------------------------------------------------------------------------- errors and warnings


def _reconsolidate(store: Path) -> None:
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        zarr.consolidate_metadata(store)


def _edit_metadata(store: Path, node: str, **changes) -> None:
    """Rewrite fields of one node's zarr.json (None deletes), then the consolidated metadata."""
    meta_path = store / node / "zarr.json"
    meta = json.loads(meta_path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    meta_path.write_text(json.dumps(meta))
    _reconsolidate(store)


def _set_attrs(store: Path, node: str = "", **changes) -> None:
    """Set (None: delete) attributes of the root or of one array, keeping metadata consistent."""
    import zarr

    root = zarr.open_group(store, mode="r+")
    attrs = root[node].attrs if node else root.attrs
    for key, value in changes.items():
        if value is None:
            del attrs[key]
        else:
            attrs[key] = value
    _reconsolidate(store)


def _replace(store: Path, node: str, values: np.ndarray, dims, **options) -> None:
    """Replace one variable by an array of ``values`` (all chunks written)."""
    import zarr

    split, name = node.split("/")
    group = zarr.open_group(store, mode="r+", use_consolidated=False)[split]
    del group[name]
    array = group.create_array(
        name, shape=values.shape, dtype=values.dtype, dimension_names=dims,
        attributes={"coordinates": "epoch"}, config={"write_empty_chunks": True}, **options,
    )  # fmt: skip
    array[...] = values
    _reconsolidate(store)


def _values(store: Path, node: str) -> np.ndarray:
    import zarr

    return zarr.open_array(store, path=node, mode="r")[...]


def _write_values(store: Path, node: str, key, values) -> None:
    import zarr

    zarr.open_array(store, path=node, mode="r+")[key] = values


ERRORS = {
    "dimensions": (
        lambda s: _edit_metadata(
            s, "train/h1", dimension_names=["sample", "step", "h1_dim0", "h1_dim1"]
        ),
        "split 'train', variable 'h1': dimensions ['sample', 'step', 'h1_dim0', 'h1_dim1'] "
        "(shape (4, 6, 3, 4)), expected ['step', 'sample', 'h1_dim0', 'h1_dim1']; write",
        "dimension_names=['step', 'sample', 'h1_dim0', 'h1_dim1']",
    ),
    "dtype": (
        lambda s: _edit_metadata(s, "test/y", data_type="float64"),
        "split 'test', variable 'y': dtype float64, expected int64;",
        "np.asarray(values, dtype='int64')",
    ),
    "step axis": (
        lambda s: _replace(
            s, "test/softmax", np.zeros((3, 4, 5), np.float32), ["step", "sample", "softmax_dim0"]
        ),
        "split 'test', variable 'softmax': 3 entries on the step axis, but 'step' has 4;",
        "one entry per scheduled step",
    ),
    "sample axis": (
        lambda s: _replace(
            s, "train/softmax", np.zeros((4, 5, 5), np.float32), ["step", "sample", "softmax_dim0"]
        ),
        "split 'train', variable 'softmax': 5 samples, but 'y' has 6;",
        "the same probe samples",
    ),
    "shape per split": (
        lambda s: _replace(
            s, "test/softmax", np.ones((4, 4, 6), np.float32), ["step", "sample", "softmax_dim0"]
        ),
        "variable 'softmax': per-sample shapes differ between splits "
        "({'train': (5,), 'test': (6,)})",
        "capture the same layers",
    ),
    "step order": (
        lambda s: _write_values(s, "train/step", slice(None), [0, 20, 10, 30]),
        "split 'train', variable 'step': values are not strictly increasing (index 1 is 20, "
        "index 2 is 10)",
        "write the steps in training order",
    ),
    "negative labels": (
        lambda s: _write_values(s, "train/y", 1, np.array([0, -1, 1, 2, 0, 1])),
        "split 'train', variable 'y', step 10 (index 1): holds negative labels, down to -1;",
        "class numbers 0..C-1",
    ),
    "scaled values": (
        lambda s: _set_attrs(s, "train/x", scale_factor=0.5),
        "split 'train', variable 'x': attributes ['scale_factor'] ask readers to rescale",
        "ds.drop_encoding()",
    ),
    "xarray cannot open": (
        lambda s: _edit_metadata(s, "train/softmax", dimension_names=["step", "sample", "h1_dim0"]),
        "split 'train': xarray cannot open the group",
        "<variable>_dim<k>",
    ),
    "schema_version": (
        lambda s: _set_attrs(s, schema_version=None),
        "root attribute 'schema_version' is missing; set it:",
        "zarr.open_group(STORE, mode='r+').attrs['schema_version'] = 1",
    ),
    "layers": (
        lambda s: _set_attrs(s, layers=None),
        "root attribute 'layers' is missing;",
        "zarr.open_group(STORE, mode='r+').attrs['layers'] = [",
    ),
    "repeated layers": (
        lambda s: _set_attrs(s, layers=["h1", "h1", "softmax"]),
        "root attribute 'layers' repeats names: ['h1', 'h1', 'softmax'];",
        "attrs['layers'] = ['h1', 'softmax']",
    ),
    "no split group": (
        lambda s: [shutil.rmtree(s / split) for split in ("train", "test")],
        "no split group;",
        "ds.to_zarr(STORE, group='train')",
    ),
}


@pytest.mark.parametrize("fault", list(ERRORS))
def test_each_error_names_the_place_and_the_fix(store, fault):
    damage, where, fix = ERRORS[fault]
    damage(store)
    report = validate_store(store)
    assert not report.ok
    fix = fix.replace("STORE", repr(str(store)))
    matching = [e for e in report.errors if where in e]
    assert len(matching) == 1, report.errors
    assert fix in matching[0]


def test_fewer_than_two_samples_is_an_error(tmp_path):
    path = make_store(tmp_path / "one.zarr", n={"train": 1}, steps=[0], layers={"h": (2,)})
    (error,) = validate_store(path).errors
    assert error.startswith("split 'train': 1 sample per step; the estimators work on pairwise")
    assert "capture a probe of 2 or more samples" in error


def test_a_zarr_v2_store_is_an_error_naming_zarr_format(tmp_path):
    path = tmp_path / "v2.zarr"
    xr.Dataset({"y": (("step", "sample"), np.zeros((1, 2), int))}).to_zarr(path, zarr_format=2)
    (error,) = validate_store(path).errors
    assert "is a Zarr v2 store" in error and "zarr_format=3" in error


def _add_array(store: Path, node: str, shape, dims) -> None:
    import zarr

    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    group.create_array(node, shape=shape, dtype="float32", dimension_names=dims)
    _reconsolidate(store)


def _drop_consolidated(store: Path) -> None:
    meta = json.loads((store / "zarr.json").read_text())
    del meta["consolidated_metadata"]
    (store / "zarr.json").write_text(json.dumps(meta))


def _without_coordinates_attribute(store: Path, split: str) -> None:
    import zarr

    group = zarr.open_group(store, mode="r+", use_consolidated=False)[split]
    for name in group.array_keys():
        if "coordinates" in group[name].attrs:
            del group[name].attrs["coordinates"]
    _reconsolidate(store)


def _drop_array(store: Path, node: str) -> None:
    shutil.rmtree(store / node)
    _reconsolidate(store)


def _rechunk(store: Path, node: str, chunks) -> None:
    values = _values(store, node)
    dims = ["step", "sample", *(f"{node.split('/')[1]}_dim{k}" for k in range(values.ndim - 2))]
    _replace(store, node, values, dims, chunks=chunks, fill_value=float("nan"))


WARNINGS = {
    "provenance": (
        lambda s: _set_attrs(s, seed=None, device=None),
        "root attributes 'seed', 'device' are missing; readers do not need them",
        "zarr.open_group(STORE, mode='r+').attrs.update({'seed': 0, 'device': 'cuda'})",
    ),
    "no consolidated metadata": (
        _drop_consolidated,
        "the root zarr.json holds no consolidated metadata; infoplane reads without it",
        "zarr.consolidate_metadata(STORE)",
    ),
    "stale consolidated metadata": (
        lambda s: _write_json_attr(s, "train/h1", "units", "a.u."),
        "split 'train': the consolidated metadata in the root zarr.json is stale for variable "
        "'h1' (attributes differ)",
        "zarr.consolidate_metadata(STORE)",
    ),
    "slow chunks": (
        lambda s: (_rechunk(s, "train/h1", (1, 3, 3, 4)), _rechunk(s, "train/softmax", (2, 6, 5))),
        "split 'train': chunks of 'h1' (1, 3, 3, 4) (the sample axis split), 'softmax' (2, 6, 5) "
        "(2 steps per chunk) are not one step per chunk; the store reads correctly",
        "ds.to_zarr(STORE, group='train', mode='w', encoding={'index': {'chunks': (1, 6)}, "
        "'x': {'chunks': (1, 6, 2)}, 'y': {'chunks': (1, 6)}, 'h1': {'chunks': (1, 6, 3, 4)}, "
        "'softmax': {'chunks': (1, 6, 5)}}, write_empty_chunks=True)",
    ),
    "no epoch": (
        lambda s: _drop_array(s, "train/epoch"),
        "split 'train', variable 'epoch': missing; readers give every step a NaN epoch",
        "coords={'epoch': ('step', epochs)}",
    ),
    "no index": (
        lambda s: _drop_array(s, "test/index"),
        "split 'test', variable 'index': missing; the estimators do not read it",
        "write index(step, sample) int64",
    ),
    "epoch not a coordinate": (
        lambda s: _without_coordinates_attribute(s, "train"),
        "split 'train', variable 'epoch': not a coordinate for xarray",
        "ds.set_coords('epoch')",
    ),
    "fill value": (
        lambda s: _set_attrs(s, "train/y", _FillValue=-1),
        "split 'train', variable 'y': attribute _FillValue = -1 makes plain xarray",
        "encoding={'y': {'_FillValue': None}}",
    ),
    "unlisted layer": (
        lambda s: _add_array(s, "train/extra", (4, 6, 2), ["step", "sample", "extra_dim0"]),
        "variables ['extra'] of the split groups have a (step, sample) axis but are not in the "
        "root attribute layers",
        "attrs['layers'] = ['h1', 'softmax', 'extra']",
    ),
    "other group": (
        lambda s: _add_array(s, "valid/y", (4, 6), ["step", "sample"]),
        "group 'valid' is not a probe split, so readers ignore it",
        "name the split groups 'train' and 'test'",
    ),
}


def _write_json_attr(store: Path, node: str, key: str, value) -> None:
    """Change an attribute in the node's zarr.json only: the consolidated copy goes stale."""
    meta_path = store / node / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"][key] = value
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("issue", list(WARNINGS))
def test_each_warning_names_the_place_and_the_fix_and_reads_fine(store, issue):
    change, where, fix = WARNINGS[issue]
    change(store)
    report = validate_store(store)
    assert report.ok, report.errors
    (warning,) = report.warnings
    assert warning.startswith(where), warning
    assert fix.replace("STORE", repr(str(store))) in warning
    for split in ("train", "test"):  # the store reads as before
        view = open_activations(store, split)
        assert view.step.values.tolist() == STEPS[:3]
        np.testing.assert_array_equal(view.y.values[0], _data(view.sizes["sample"], 0)["y"])


def test_a_store_with_nothing_captured_warns_per_split(tmp_path):
    path = make_store(tmp_path / "new.zarr", captured=())
    report = validate_store(path)
    assert report.ok
    assert [w.split(":")[0] for w in report.warnings] == ["split 'train'", "split 'test'"]
    for warning in report.warnings:
        assert "no step is captured" in warning and "run (or resume) training" in warning


# ------------------------------------------------------- damaged metadata arrays and zarr.json


@pytest.mark.parametrize("name", ["step", "epoch", "captured"])
def test_a_damaged_step_epoch_or_captured_chunk_is_an_error_everywhere(store, name, capsys):
    from infoplane.io.store import StoreReader, read_store_plan

    chunk = store / "train" / name / "c" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-3])
    problems = validate_store(store).errors
    assert any(f"variable {name!r}" in p and "cannot be read" in p for p in problems), problems
    with pytest.raises(StoreError, match=rf"split 'train': .*\({name!r}\) cannot be read"):
        read_store_plan(store)
    with pytest.raises(StoreError, match="split 'train'"):
        open_activations(store, "train").load()
    if name == "step":
        with pytest.raises(StoreError, match=r"split 'train': the steps \('step'\)"):
            StoreReader(store).read("train", "h1", 0)
    assert main(["store", "validate", str(store)]) == 1
    assert main(["distances", str(store), "--out", str(store.parent / "d.zarr")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "infoplane: error: store" in err


def test_a_truncated_array_zarr_json_is_named_and_never_a_traceback(store, capsys):
    from infoplane.io.store import StoreReader, read_store_plan

    meta = store / "train" / "h1" / "zarr.json"
    meta.write_text(meta.read_text()[:-40])
    problems = validate_store(store).errors
    assert any("train/h1/zarr.json cannot be read" in p for p in problems), problems
    with pytest.raises(StoreError, match=r"split 'train': its metadata cannot be read"):
        read_store_plan(store)
    with pytest.raises(StoreError, match=r"variable 'h1': its metadata \(h1/zarr.json\)"):
        StoreReader(store).read("train", "h1", 0)
    with pytest.raises(StoreError, match="split 'train'"):
        open_activations(store, "train")
    assert main(["store", "validate", str(store)]) == 1
    assert "Traceback" not in capsys.readouterr().err
    # the other split still reads
    assert open_activations(store, "test").sizes["step"] == 3


def test_a_lost_epoch_chunk_is_reported(store):
    (store / "train" / "epoch" / "c" / "0").unlink()  # epochs read as NaN
    report = validate_store(store)
    assert report.errors == []
    assert any("variable 'epoch'" in w and "step 0 (index 0)" in w for w in report.warnings)
