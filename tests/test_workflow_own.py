"""The workflow on a user's own model (a factory in a package of the workflow's directory) and on
existing stores: end to end under Snakemake, and what an edit reruns."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch
import xarray as xr
from test_workflow import job_counts, planned_jobs, snakemake

from infoplane.train.recorder import Recorder

HERE = Path(__file__).resolve().parent

# A new user's config: their model and data by factory, nothing else but the usual settings.
OWN_CONFIG = """\
run: [own]
experiments:
  own:
    dataset: {factory: "ipnets.nets:blobs", kwargs: {shape: [1, 8, 8], n_train: 120, n_test: 60}}
    model:
      factory: "ipnets.nets:resnet"
      kwargs: {width: 4}
    training: {epochs: 2, batch_size: 40, device: cpu}
    seeds: [0]
    capture:
      schedule: {kind: epoch}
      probe: {train: 30, test: 30}
      layers: ["stem", "type:Block"]
    estimators: [silverman]
"""

STORES_CONFIG = """\
run: [recorded]
experiments:
  recorded:
    stores: "runs/mine/*/activations.zarr"
    estimators: [silverman]
"""


@pytest.mark.slow
def test_a_users_model_file_and_config_run_end_to_end(tmp_path):
    assert len(OWN_CONFIG.splitlines()) <= 15
    shutil.copytree(HERE / "ipnets", tmp_path / "ipnets", ignore=shutil.ignore_patterns("__py*"))
    (tmp_path / "config.yaml").write_text(OWN_CONFIG)
    started = time.perf_counter()
    result = snakemake(tmp_path)
    print(f"own model workflow: {time.perf_counter() - started:.1f} s")
    assert result.returncode == 0, result.stderr[-5000:]
    results = tmp_path / "results" / "own"
    with xr.open_zarr(results / "mi" / "silverman.zarr") as ds:
        assert list(ds["layer"].values) == ["stem", "blocks.0", "blocks.1", "softmax"]
        assert bool(ds["I_XT"].notnull().all())
    assert (results / "plots" / "silverman" / "information_plane.png").stat().st_size > 0
    assert (results / "plots" / "training.png").exists()
    assert job_counts(planned_jobs(snakemake(tmp_path, "--dry-run"))) == {}
    # editing the factory's file retrains (it is an input of the training job)
    with open(tmp_path / "ipnets" / "nets.py", "a") as f:
        f.write("\n# edited\n")
    counts = job_counts(planned_jobs(snakemake(tmp_path, "--dry-run")))
    assert counts["train"] == 1 and counts["distances"] == 1 and counts["estimate"] == 1


def record(store: Path, seed: int, steps=(0, 3, 6)) -> None:
    torch.manual_seed(seed)
    x, y = torch.randn(60, 6), torch.arange(60) % 3
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probes = {"train": (x[:30], y[:30]), "test": (x[30:], y[30:])}
    with Recorder(store, model, layers=["1"], probes=probes, steps=steps, optimizer=optimizer,
                  restart=True) as rec:  # fmt: skip
        for _ in range(rec.step, steps[-1]):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            rec.update()


@pytest.mark.slow
def test_existing_stores_run_through_the_workflow(tmp_path):
    for seed in (0, 1):
        record(tmp_path / "runs" / "mine" / f"seed{seed}" / "activations.zarr", seed)
    (tmp_path / "config.yaml").write_text(STORES_CONFIG)
    result = snakemake(tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    with xr.open_zarr(tmp_path / "results" / "recorded" / "mi" / "silverman.zarr") as ds:
        assert list(ds["run"].values) == ["seed0", "seed1"]
        assert list(ds["step"].values) == [0, 3, 6]
    assert (tmp_path / "results" / "recorded" / "checks" / "silverman.txt").exists()
    assert job_counts(planned_jobs(snakemake(tmp_path, "--dry-run"))) == {}
    report = snakemake(tmp_path, "--report", "results/report.html")
    assert report.returncode == 0, report.stderr[-3000:]
    assert (tmp_path / "results" / "report.html").stat().st_size > 0
    # a rewritten store reruns its own chain, then the stack, check and plots
    record(tmp_path / "runs" / "mine" / "seed1" / "activations.zarr", 1)
    jobs = planned_jobs(snakemake(tmp_path, "--dry-run"))
    assert job_counts(jobs) == {"distances": 1, "estimate": 1, "stack": 1, "check": 1,
                                "plot_estimates": 1}  # fmt: skip
    assert {w.get("run") for rule, w in jobs if rule == "distances"} == {"seed1"}
