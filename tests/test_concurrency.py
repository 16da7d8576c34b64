"""Concurrent writers of one output: exactly one wins, the other says so; real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from infoplane.errors import BusyError
from infoplane.io.files import exclusive, lock_path
from infoplane.io.results import build_result, open_result, write_result
from infoplane.testing import make_store

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
TRAIN_CONFIG = """
run: [digits]
experiments:
  digits:
    dataset: {name: digits}
    model: {name: mlp, hidden: [8]}
    training: {epochs: 1, batch_size: 100, device: cpu}
    seeds: [0]
    capture:
      schedule: {kind: epoch}
      probe: {train: 10, test: 10}
"""


def infoplane(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "infoplane", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip


def start_infoplane(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "infoplane", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
    )  # fmt: skip


class Holder:
    """A real process holding the lock of one output until it is killed."""

    def __init__(self, path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "lock_holder.py"), str(path)],
            stdout=subprocess.PIPE, text=True, env=ENV,
        )  # fmt: skip
        assert self.process.stdout.readline().strip() == "held"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


def small_result(run: str = "seed0", value: float = 0.5) -> xr.Dataset:
    steps = np.array([0, 10])
    points = [("train", int(t), {"I_XT": np.full(2, value), "H_X": value}) for t in steps]
    return build_result(
        layers=["a", "b"],
        splits={"train": (steps, steps / 10.0, 8)},
        points=points,
        attrs={"estimator": "paper", "preset": "{}", "source": run, "store": run},
        provenance={"experiment": "e", "run": run},
    )


def assert_busy(done: subprocess.CompletedProcess, out: Path) -> None:
    assert done.returncode == 1, done.stderr
    assert "another process is" in done.stderr and str(lock_path(out)) in done.stderr
    assert "Traceback" not in done.stderr


def test_lock_is_exclusive_between_processes_and_freed_by_a_kill(tmp_path):
    out = tmp_path / "mi.zarr"
    holder = Holder(out)
    try:
        with pytest.raises(BusyError, match=r"another process is writing .*pid \d+ on host"):
            with exclusive(out):
                pass
        with pytest.raises(BusyError):
            write_result(small_result(), out)
        assert not out.exists()
    finally:
        holder.kill()
    # the killed holder's lock file is left behind, and free to take
    assert lock_path(out).exists()
    write_result(small_result(), out)
    assert not lock_path(out).exists()  # a clean release removes it
    np.testing.assert_array_equal(open_result(out)["I_XT"].values, 0.5)


@pytest.mark.parametrize("command", ["stack", "estimate", "distances", "train"])
def test_a_second_writer_of_any_output_exits_non_zero_and_leaves_the_output(tmp_path, command):
    """Every writer command refuses an output another (real) process is writing."""
    store = make_store(tmp_path / "run" / "activations.zarr")
    result = tmp_path / "run" / "mi.zarr"
    write_result(small_result(), result)
    config = tmp_path / "config.yaml"
    config.write_text(TRAIN_CONFIG)
    out = {
        "stack": tmp_path / "stacked.zarr",
        "estimate": tmp_path / "run" / "mi" / "paper.zarr",
        "distances": tmp_path / "run" / "distances.zarr",
        "train": tmp_path / "train" / "activations.zarr",
    }[command]
    args = {
        "stack": ["stack", result, "--out", out],
        "estimate": ["estimate", store, "--estimator", "paper", "--out", out, "--workers", "1"],
        "distances": ["distances", store, "--out", out, "--workers", "1"],
        "train": ["train", "--config", config, "--experiment", "digits", "--run", "seed0",
                  "--out", out, "--work-dir", out.parent / ".training"],
    }[command]  # fmt: skip
    holder = Holder(out)
    try:
        assert_busy(infoplane(*args), out)
        assert not out.exists()
    finally:
        holder.kill()
    if command == "train":  # the work directory has its own lock
        holder = Holder(out.parent / ".training")
        try:
            assert_busy(infoplane(*args), out.parent / ".training")
        finally:
            holder.kill()


def test_two_stacks_racing_on_one_output(tmp_path):
    """Started together: each exits 0 or says another process is writing; the file is whole."""
    sources = []
    for k in range(3):
        sources.append(tmp_path / f"seed{k}.zarr")
        write_result(small_result(f"seed{k}", value=0.1 * k), sources[-1])
    out = tmp_path / "stacked.zarr"
    for _ in range(3):
        processes = [start_infoplane("stack", *sources, "--out", out) for _ in range(3)]
        codes = []
        for process in processes:
            _, err = process.communicate(timeout=300)
            codes.append(process.returncode)
            if process.returncode:
                assert process.returncode == 1 and "another process is writing" in err, err
                assert "Traceback" not in err
        assert 0 in codes
        stacked = open_result(out)
        assert list(stacked["run"].values) == ["seed0", "seed1", "seed2"]
        np.testing.assert_allclose(stacked["I_XT"].values[:, 0, 0, 0], [0.0, 0.1, 0.2])
    assert not lock_path(out).exists()


@pytest.mark.slow
def test_two_trains_racing_on_one_work_dir(tmp_path):
    """The orphaned-jobs case: two `train --work-dir` of one run started together."""
    config = tmp_path / "config.yaml"
    config.write_text(TRAIN_CONFIG)
    out = tmp_path / "run" / "activations.zarr"
    args = ["train", "--config", config, "--experiment", "digits", "--run", "seed0",
            "--out", out, "--work-dir", out.parent / ".training"]  # fmt: skip
    processes = [start_infoplane(*args) for _ in range(2)]
    outcomes = [(p.wait(timeout=300), p.communicate()[1]) for p in processes]
    codes = sorted(code for code, _ in outcomes)
    assert codes in ([0, 0], [0, 1]), outcomes
    for code, err in outcomes:
        if code:
            assert "another process is training into" in err and "Traceback" not in err
    done = infoplane("store", "validate", out)
    assert done.returncode == 0, done.stdout + done.stderr
