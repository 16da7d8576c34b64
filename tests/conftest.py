"""Fixtures shared by the test suite; stores and result assertions are in infoplane.testing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("INFOPLANE_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST test-set files, or a clean skip where they are absent."""
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not found in {MNIST_DIR}")
    return MNIST_DIR


@pytest.fixture(scope="module")
def client():
    """One in-process cluster (two single-threaded workers) shared by a test module.

    Threads start in a fraction of the time of worker processes, which import the whole stack
    first; test_dask_cluster.py runs the real process clusters.
    """
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as shared,
    ):
        yield shared


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, client):
    """A store of 4 steps (N = 12 train, 10 test) and its distance cache."""
    from infoplane.estimate.distances import compute_distances
    from infoplane.testing import make_store

    root = tmp_path_factory.mktemp("run")
    store = make_store(
        root / "activations.zarr", steps=(0, 10, 20, 30), n={"train": 12, "test": 10}
    )
    compute_distances(store, root / "distances.zarr", client=client)
    return root


@pytest.fixture(scope="session")
def tiny_workflow(tmp_path_factory) -> Path:
    """The tiny workflow (tests/workflow_config.yaml) run once with the local profile; tests only
    read its products (test_workflow.py, and test_slurm.py compares the SLURM run with it)."""
    from workflow_runs import run_tiny_workflow

    return run_tiny_workflow(tmp_path_factory.mktemp("workflow"))
