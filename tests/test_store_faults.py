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
from infoplane.io.store import create_store, open_activations, open_writer, validate_store

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
    path = tmp_path / "activations.zarr"
    writer = create_store(
        path,
        steps=STEPS,
        epochs=[0.0, 0.5, 1.0, 1.5],
        n_samples={"train": 6, "test": 4},
        input_shape=(2,),
        layer_shapes=LAYERS,
        attrs=ATTRS,
    )
    for step in STEPS[:3]:
        for split, n in writer.n_samples.items():
            writer.write(split, step, **_data(n, step))
    return path


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
    assert validate_store(path) == []
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
    assert validate_store(path) == []
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

    problems = validate_store(store)
    assert len(problems) == 1
    assert "'train'" in problems[0] and "'h1'" in problems[0] and "step 10" in problems[0]

    view = open_activations(store, "train")
    with pytest.raises(StoreError, match=r"variable 'h1', step 10 \(index 1\)"):
        view.load()
    # Undamaged steps and variables still read.
    assert view.h1.sel(step=[0, 20]).values.shape == (2, 6, 3, 4)
    assert np.isfinite(view.softmax.values).all()


def test_missing_chunk_of_captured_step_is_an_error_not_fill(store):
    _chunk(store, "test", "softmax", 2).unlink()
    problems = validate_store(store)
    assert len(problems) == 1
    assert "'test'" in problems[0] and "'softmax'" in problems[0] and "step 20" in problems[0]
    assert "missing" in problems[0]
    with pytest.raises(StoreError, match=r"variable 'softmax', step 20.*missing"):
        open_activations(store, "test").softmax.load()


def test_missing_chunks_of_uncaptured_steps_are_fine(store):
    # Step 30 is planned but never written: no chunk files, and that is not a fault.
    assert not _chunk(store, "train", "h1", 3).exists()
    assert validate_store(store) == []


def test_validate_cli_exits_nonzero_and_names_variable_and_step(store, capsys):
    chunk = _chunk(store, "train", "x", 0)
    chunk.write_bytes(chunk.read_bytes()[:-3])
    assert main(["store", "validate", str(store)]) == 1
    err = capsys.readouterr().err
    assert "variable 'x'" in err and "step 0" in err


def test_corrupt_captured_flags(store):
    chunk = store / "train" / "captured" / "c" / "0"
    chunk.write_bytes(b"garbage")
    problems = validate_store(store)
    assert any("'captured'" in p for p in problems)
    with pytest.raises(StoreError, match="captured flags"):
        open_activations(store, "train")
    assert open_activations(store, "test").sizes["step"] == 3  # the other split is untouched


def test_nan_activations_are_reported(tmp_path):
    writer = create_store(
        tmp_path / "nan.zarr",
        steps=[0],
        epochs=[0.0],
        n_samples={"train": 3},
        input_shape=(2,),
        layer_shapes=LAYERS,
        attrs=ATTRS,
    )
    data = _data(3, 0)
    data["activations"]["h1"][1, 0, 0] = np.nan
    writer.write("train", 0, **data)
    (problem,) = validate_store(writer.path)
    assert "'h1'" in problem and "step 0" in problem and "NaN" in problem


# ---------------------------------------------------------------------------- broken metadata


def test_not_a_store(tmp_path):
    (problem,) = validate_store(tmp_path / "absent.zarr")
    assert "no activation store" in problem
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
    problems = validate_store(store)
    assert "root attribute 'seed' is missing" in problems
    assert "split 'test', variable 'y': missing" in problems


def test_wrong_schema_version_refuses_to_resume(store):
    meta_path = store / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["schema_version"] = 99
    meta.pop("consolidated_metadata")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="schema_version 99"):
        open_writer(store)
    assert any("schema_version" in p for p in validate_store(store))
