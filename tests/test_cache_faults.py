"""Faults of the distance cache and of the pairing of a cache with a store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from infoplane.cli import main
from infoplane.errors import StoreError
from infoplane.estimate.distances import compute_distances
from infoplane.estimate.pipeline import estimate
from infoplane.io import cache
from infoplane.presets import resolve_preset
from infoplane.testing import make_store

STEPS = (0, 10, 20)
LAYERS = {"conv": (2, 3, 3), "fc": (5,), "softmax": (3,)}


@pytest.fixture(scope="module")
def built(tmp_path_factory, client):
    """A store and its complete cache, copied afresh by each test that damages them."""
    root = tmp_path_factory.mktemp("built")
    store = make_store(root / "activations.zarr", steps=STEPS, n=12, layers=LAYERS)
    compute_distances(store, root / "distances.zarr", client=client)
    return root


@pytest.fixture
def run(built, tmp_path) -> Path:
    shutil.copytree(built, tmp_path / "run")
    cache._held.clear()  # handles of another test's copy
    return tmp_path / "run"


def chunk(run: Path, name: str, step_index: int = 1, split: str = "train") -> Path:
    rest = {"d2": 3, "d2_x": 2, "y": 1, "nonfinite": 1}[name]
    key = "/".join([str(step_index)] + ["0"] * rest)
    path = run / "distances.zarr" / split / name / "c" / key
    assert path.is_file(), path
    return path


def test_the_cache_is_checksummed_and_records_its_format_and_probe(run):
    root = zarr.open_group(str(run / "distances.zarr"), mode="r")
    assert root.attrs["cache_schema_version"] == 3
    # at the probe sizes of today every matrix is kept full: the layout of format 2
    assert set(root.attrs["storage"].values()) == {"full"}
    for name in cache.STEP_VARIABLES:
        codecs = [c["name"] for c in root["train"][name].metadata.to_dict()["codecs"]]
        assert codecs[-1] == "crc32c", (name, codecs)
    np.testing.assert_array_equal(root["train"]["index"][...], np.arange(12))


@pytest.mark.parametrize("name", ["y", "d2", "d2_x", "nonfinite"])
def test_a_missing_chunk_is_an_error_naming_the_place_never_zeros(run, name):
    chunk(run, name).unlink()
    with pytest.raises(StoreError) as info:
        cache.read_step(run / "distances.zarr", "train", 1)
    message = str(info.value)
    assert "run seed0, split 'train', step 10 (index 1)" in message
    assert "is missing" in message and "--overwrite" in message
    if name == "d2":
        assert "layer(s) conv, fc, softmax" in message


@pytest.mark.parametrize("damage", ["truncate", "flip"])
@pytest.mark.parametrize("name", ["d2", "d2_x", "y"])
def test_a_truncated_or_corrupt_chunk_is_an_error_naming_the_place(run, name, damage):
    path = chunk(run, name)
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 3] ^= 0x10  # one bit: the checksum, not the shape, catches it
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"run seed0, split 'train', step 10 .*cannot be decoded"):
        cache.read_step(run / "distances.zarr", "train", 1)


def test_the_cli_reports_a_damaged_cache_without_a_traceback(run, capsys):
    chunk(run, "y").unlink()
    code = main(
        ["estimate", str(run / "distances.zarr"), "--estimator", "paper",
         "--out", str(run / "mi.zarr"), "--workers", "1"]
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "split 'train', step 10" in err and "is missing" in err
    assert not (run / "mi.zarr").exists()


def test_format_1_caches_are_still_read(run):
    root = zarr.open_group(str(run / "distances.zarr"), mode="r+")
    root.attrs["cache_schema_version"] = 1
    got = cache.read_step(run / "distances.zarr", "train", 1)
    assert got["d2"].shape == (3, 12, 12) and (got["y"] >= 0).all()


def test_a_store_other_than_the_caches_is_refused(run, tmp_path, client):
    other = make_store(tmp_path / "other" / "activations.zarr", steps=STEPS, n=12,
                       layers=LAYERS, run="seed1")  # fmt: skip
    preset = resolve_preset(None, "multivariate")
    with pytest.raises(StoreError, match=r"is not the store .*run 'seed1'.*pass --store"):
        estimate(run / "distances.zarr", preset, name="mv", store=other, client=client)


def test_a_store_with_another_probe_is_refused(run, client):
    """Same attributes, so the same fingerprint; the probe's indices differ."""
    group = zarr.open_group(str(run / "activations.zarr"), mode="r+")["train"]
    group["index"][0] = np.arange(12) + 100
    preset = resolve_preset(None, "multivariate")
    with pytest.raises(StoreError, match=r"split 'train': the probe's index differs"):
        estimate(run / "distances.zarr", preset, name="mv", store=run / "activations.zarr",
                 client=client)  # fmt: skip


def test_negative_labels_stop_distances_and_estimate(run, tmp_path, client):
    group = zarr.open_group(str(run / "activations.zarr"), mode="r+")["test"]
    labels = np.asarray(group["y"][2])
    labels[3] = -1
    group["y"][2] = labels
    with pytest.raises(StoreError, match=r"split 'test'.*step 20.*negative label"):
        compute_distances(run / "activations.zarr", tmp_path / "d.zarr", client=client)
    with pytest.raises(StoreError, match=r"split 'test'.*step 20.*negative label"):
        estimate(run / "activations.zarr", resolve_preset(None, "paper"), name="p", client=client)
    # a cache made before the labels went bad: its own copy is checked too
    values = zarr.open_group(str(run / "distances.zarr"), mode="r+")["test"]["y"]
    values[2] = labels
    with pytest.raises(StoreError, match=r"split 'test', step 20 .*negative label"):
        cache.read_step(run / "distances.zarr", "test", 2)


@pytest.mark.parametrize("name", ["done", "step", "epoch"])
@pytest.mark.parametrize("damage", ["delete", "truncate", "flip"])
def test_damaged_cache_metadata_arrays_are_errors_not_tracebacks(run, name, damage, capsys):
    path = run / "distances.zarr" / "train" / name / "c" / "0"
    if damage == "delete":
        path.unlink()
    else:
        data = bytearray(path.read_bytes())
        if damage == "truncate":
            data = data[: len(data) // 2]
        else:
            data[len(data) // 2] ^= 0x20
        path.write_bytes(bytes(data))
    code = main(
        ["estimate", str(run / "distances.zarr"), "--estimator", "silverman",
         "--out", str(run / "mi.zarr"), "--workers", "1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert "split 'train'" in err or "split train" in err
    assert not (run / "mi.zarr").exists()


def test_store_info_and_a_lost_step_chunk_of_a_store(run, capsys):
    store = run / "activations.zarr"
    meta = store / "train" / "fc" / "zarr.json"
    saved = meta.read_text()
    meta.write_text(saved[:-30])
    assert main(["store", "info", str(store)]) == 1
    assert "train/fc/zarr.json cannot be read" in capsys.readouterr().err
    meta.write_text(saved)
    (store / "train" / "step" / "c" / "0").unlink()  # steps read as the fill value
    with pytest.raises(StoreError, match=r"split 'train': the captured steps .* not distinct"):
        compute_distances(store, run / "again.zarr", workers=1)
