"""A reduced run of the reproduced MNIST experiment (docs/reproduction.md), pinning what must hold.

One seed of the tanh MLP of docs/reproduction/config.yaml on the real MNIST t10k images, trained
for 3 epochs, captured at a few steps, then distances, the `paper` estimator and the invariant
check. Numbers that depend on the seed or the machine are not pinned; what is pinned holds for
any healthy run: the fitting phase of the softmax, I(T;Y) near H(Y) once training accuracy is
high, and every invariant at every point.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from infoplane.config import experiment_settings, load_config
from infoplane.estimate.distances import compute_distances
from infoplane.estimate.pipeline import estimate
from infoplane.presets import resolve_preset
from infoplane.report import analysis
from infoplane.report.analysis import load_metrics
from infoplane.report.checks import check_result, nan_points
from infoplane.train.training import train_run

CONFIG = Path(__file__).resolve().parents[1] / "docs" / "reproduction" / "config.yaml"
EXPERIMENT = "repro_mlp_tanh"
EPOCHS = 3
STEPS = [0, 10, 20, 40, 80, 160, 240]  # 80 iterations per epoch on 8,000 images


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory, client):
    from conftest import MNIST_DIR

    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not found in {MNIST_DIR}")
    config = load_config(CONFIG)
    settings = copy.deepcopy(experiment_settings(config, EXPERIMENT))
    settings["dataset"]["path"] = str(MNIST_DIR)
    settings["training"]["epochs"] = EPOCHS
    settings["seeds"] = [0]
    settings["capture"]["schedule"] = {"kind": "list", "steps": STEPS}
    run_dir = tmp_path_factory.mktemp("repro") / EXPERIMENT / "seed0"
    store = run_dir / "activations.zarr"
    train_run(settings, run="seed0", out_store=store, progress="none", device="cpu")
    compute_distances(store, run_dir / "distances.zarr", client=client)
    mi = estimate(
        run_dir / "distances.zarr",
        resolve_preset(config, "paper"),
        name="paper",
        out=run_dir / "mi" / "paper.zarr",
        client=client,
    )
    return {"mi": mi, "metrics": load_metrics([run_dir / "metrics.csv"]), "settings": settings}


@pytest.mark.slow
def test_every_point_obeys_the_invariants(reduced_run, mnist_dir):
    mi = reduced_run["mi"]
    assert list(mi["step"].values) == STEPS
    assert check_result(mi) == []
    assert nan_points(mi) == []
    # the input carries at least as much information as any layer holds about it
    assert bool((mi["I_XT"] <= mi["H_X"] + 1e-9).all())
    assert bool((mi["I_TY"] <= mi["H_Y"] + 1e-9).all())


@pytest.mark.slow
def test_softmax_fits_the_labels(reduced_run, mnist_dir):
    mi, metrics = reduced_run["mi"], reduced_run["metrics"]
    train_accuracy = analysis.metrics_array(metrics, split="train")
    assert train_accuracy.isel(epoch=-1).item() > 0.9
    for split in ("train", "test"):
        i_ty = mi["I_TY"].sel(split=split, layer="softmax")
        h_y = mi["H_Y"].sel(split=split)
        # the fitting phase: the output learns about the labels
        assert float(i_ty.isel(step=-1)) > float(i_ty.isel(step=0)) + 0.5
        # once the training accuracy is high, the output holds most of H(Y)
        assert float(i_ty.isel(step=-1)) > 0.7 * float(h_y.isel(step=-1))


@pytest.mark.slow
def test_fitting_phase_raises_information_in_every_layer(reduced_run, mnist_dir):
    summary = analysis.phase_summary(reduced_run["mi"], var="I_TY", split="train", window=1)
    assert bool((summary["rise"] > 0).all())
    np.testing.assert_array_less(0, summary["peak_step"].values)
