"""No traceback for what a user can produce: a full disk, odd results, a file that is no npz."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from infoplane.cli import main
from infoplane.errors import DataError, InputError, StoreError, TrainingError
from infoplane.estimate.distances import compute_distances
from infoplane.io import cache
from infoplane.io.results import build_result, open_result, write_result
from infoplane.testing import make_store


def disk_full(path="somewhere"):
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    return fail


def small_result():
    steps = np.array([0, 10])
    names = ("I_XT", "I_TY", "sigma")
    points = [
        ("train", int(t), {**{n: np.full(2, 0.5) for n in names}, "H_X": 1.0, "H_Y": 1.0})
        for t in steps
    ]
    return build_result(
        layers=["a", "b"], splits={"train": (steps, steps / 10.0, 8)}, points=points,
        attrs={"estimator": "paper", "preset": "{}"}, provenance={"run": "seed0"},
    )  # fmt: skip


def test_a_full_disk_in_distances_names_the_step_and_keeps_finished_steps(
    tmp_path, client, monkeypatch, capsys
):
    store = make_store(tmp_path / "activations.zarr", steps=(0, 10, 20), n=8)
    out = tmp_path / "distances.zarr"
    import zarr

    calls = {"n": 0}
    original = zarr.Array.__setitem__

    def flaky(self, key, value):
        if self.path.endswith("d2") and calls["n"] >= 1:
            raise OSError(errno.ENOSPC, "No space left on device", f"{self.path}/c/...")
        if self.path.endswith("d2"):
            calls["n"] += 1
        return original(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", flaky)
    with pytest.raises(StoreError, match=r"split '\w+', step \d+: cannot write .*disk is full"):
        compute_distances(store, out, client=client)
    monkeypatch.undo()
    done = sum(int(cache.cache_done(out, s).sum()) for s in ("train", "test"))
    assert done == 1  # the finished step is kept
    assert compute_distances(store, out, client=client)["skipped"] == 1


def test_a_full_disk_when_writing_a_result_keeps_the_old_one(tmp_path, monkeypatch):
    import xarray as xr

    out = tmp_path / "mi.zarr"
    write_result(small_result(), out)
    monkeypatch.setattr(xr.Dataset, "to_zarr", disk_full(tmp_path / "x"))
    with pytest.raises(StoreError, match=r"result .*mi.zarr: cannot write .*disk is full.*kept"):
        write_result(small_result(), out)
    monkeypatch.undo()
    assert float(open_result(out)["I_XT"].max()) == 0.5


def test_a_full_disk_when_saving_a_checkpoint_is_a_training_error(tmp_path, monkeypatch):
    from infoplane.config import experiment_settings, load_config
    from infoplane.train import training

    config = tmp_path / "c.yaml"
    config.write_text(
        "run: [d]\nexperiments:\n  d:\n    dataset: {name: digits}\n"
        "    model: {name: mlp, hidden: [8]}\n    training: {epochs: 1, device: cpu}\n"
        "    capture: {probe: {train: 10, test: 10}}\n"
    )
    settings = experiment_settings(load_config(config), "d")
    monkeypatch.setattr(training, "write_bytes_atomically", disk_full(tmp_path / "ckpt"))
    with pytest.raises(TrainingError, match=r"cannot write .*ckpt.*disk is full.*resumes"):
        training.train_run(
            settings, run="seed0", out_store=tmp_path / "activations.zarr", progress="none"
        )


def test_the_cli_turns_any_os_error_into_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "infoplane.io.results.stack_runs", disk_full(tmp_path / "gone"), raising=True
    )
    write_result(small_result(), tmp_path / "a.zarr")
    assert main(["stack", str(tmp_path / "a.zarr"), "--out", str(tmp_path / "s.zarr")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "gone" in err and "disk is full" in err


def test_plot_of_a_result_without_a_split_dimension(tmp_path, capsys):
    out = tmp_path / "one.zarr"
    write_result(small_result().isel(split=0, drop=True), out)
    assert main(["plot", str(out), "--out-dir", str(tmp_path / "plots")]) == 1
    err = capsys.readouterr().err
    assert "lack the dimension(s) split" in err and "Traceback" not in err
    from infoplane.report.plots import plot_estimates

    with pytest.raises(InputError, match="split"):
        plot_estimates(open_result(out), tmp_path / "plots")


def test_an_npz_that_is_not_a_zip_says_so(tmp_path):
    from infoplane.train.datasets import load_dataset

    bad = tmp_path / "d.npz"
    bad.write_text("not an archive")
    with pytest.raises(DataError, match=r"is not a \.npz file \(not a zip archive\)"):
        load_dataset("npz", path=bad)
