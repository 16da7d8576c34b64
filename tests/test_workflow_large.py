"""The workflow at a large probe: N = 2,000 training samples per step, randomized spectra.

A synthetic dataset of digits size (64 features, 10 classes), a small MLP trained for one epoch,
two captured steps, and a preset whose spectra are randomized above 1,000 rows: the train split
(N = 2,000) takes stochastic Lanczos quadrature with its error bars, the test split (N = 100)
exact spectra. The run must finish, check clean and hold its error bars in the result.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_workflow import snakemake

LARGE_CONFIG = """\
run: [large]
experiments:
  large:
    dataset: {name: synthetic, shape: [64], classes: 10, train_size: 2400, test_size: 200,
              noise: 0.5}
    model: {name: mlp, activation: tanh, hidden: [32, 16]}
    training: {optimizer: sgd, lr: 0.1, batch_size: 200, epochs: 1, device: cpu}
    seeds: [0]
    capture:
      schedule: {kind: list, steps: [0, 12]}
      probe: {train: 2000, test: 100}
      batch_size: 500
    estimators: [wide]
estimators:
  wide:
    kernel: tensor
    alpha: 1.01
    input_width: {rule: silverman}
    layer_width: {rule: silverman}
    spectrum: {method: auto, threshold: 1000, probes: 32, rank: 16}
"""


@pytest.fixture(scope="module")
def large_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("large")
    (workdir / "config.yaml").write_text(LARGE_CONFIG)
    done = snakemake(workdir, "results/large/mi/wide.zarr", "results/large/checks/wide.txt")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    yield workdir
    shutil.rmtree(workdir, ignore_errors=True)


def test_a_probe_of_2000_samples_runs_through_the_workflow(large_run):
    import xarray as xr

    result = xr.open_zarr(large_run / "results/large/mi/wide.zarr").isel(run=0)
    assert dict(zip(result["split"].values, result["n_samples"].values, strict=True)) == {
        "train": 2000,
        "test": 100,
    }
    assert json.loads(result.attrs["preset"])["spectrum"]["threshold"] == 1000
    bars = result["spectral_error"]
    # randomized on the train split (N > threshold), exact on the test split
    assert bool((bars.sel(split="train") > 0).all()) and bool((bars.sel(split="test") == 0).all())
    for name in ("I_XT", "I_TY", "H_T", "H_X"):
        assert np.isfinite(result[name].values).all(), name
    report = (large_run / "results/large/checks/wide.txt").read_text()
    assert "0 violation(s)" in report, report
