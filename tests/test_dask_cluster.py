import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from infoplane.cli import main
from infoplane.errors import ConfigError, InfoplaneError
from infoplane.estimate.cluster import (
    BLAS_ENV,
    cluster_settings,
    dask_client,
    read_cluster_config,
    run_tasks,
    slurm_cluster_kwargs,
)
from infoplane.estimate.distances import compute_distances
from infoplane.estimate.pipeline import estimate
from infoplane.io.results import open_result
from infoplane.presets import resolve_preset
from infoplane.testing import assert_results_allclose, make_store

DASK = Path(sys.executable).parent / "dask"


# --- choosing a cluster ----------------------------------------------------------------------


def test_default_is_a_local_cluster_sized_to_the_cores():
    settings = cluster_settings(environ={})
    assert settings["kind"] == "local" and settings["workers"] >= 1
    assert cluster_settings(workers=3, environ={}) == {"kind": "local", "workers": 3}


def test_scheduler_address_wins_over_the_environment_and_the_config():
    config = {"cluster": "slurm", "slurm": {"memory": "4GB"}}
    env = {"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:9"}
    assert cluster_settings(cluster_config=config, environ=env)["address"] == "tcp://127.0.0.1:9"
    given = cluster_settings(scheduler_address="tcp://127.0.0.1:8", environ=env)
    assert given == {"kind": "address", "address": "tcp://127.0.0.1:8"}


@pytest.mark.parametrize(
    ("config", "word"),
    [
        ({"cluster": "pbs"}, "local, slurm"),
        ({"workers": 0}, ">= 1"),
        ({"threads": 2}, "threads"),
        ({"cluster": "slurm", "slurm": {}}, "memory"),
        ({"cluster": "slurm", "slurm": {"memory": "1GB", "gpus": 1}}, "gpus"),
        ({"cluster": "slurm", "slurm": {"memory": "1GB", "cores": 4, "processes": 2}}, "equal"),
    ],
)
def test_bad_cluster_configs_are_rejected(config, word):
    with pytest.raises(ConfigError, match=word):
        cluster_settings(cluster_config=config, environ={})


def test_slurm_cluster_kwargs_and_job_script(tmp_path):
    from dask_jobqueue.slurm import SLURMJob

    config = tmp_path / "cluster.yaml"
    config.write_text(
        "dask:\n  cluster: slurm\n  workers: 8\n  slurm:\n    queue: short\n    account: proj\n"
        "    cores: 4\n    memory: 16GB\n    walltime: '01:00:00'\n"
        "    job_script_prologue: [module load python]\n"
    )
    settings = cluster_settings(cluster_config=read_cluster_config(config), environ={})
    assert settings["kind"] == "slurm" and settings["workers"] == 8
    kwargs = settings["slurm"]
    assert kwargs["processes"] == kwargs["cores"] == 4  # one thread per worker process
    assert kwargs["scheduler_options"]["dashboard_address"].startswith("127.0.0.1:")
    assert kwargs["job_script_prologue"][-1] == "module load python"
    job_kwargs = {k: v for k, v in kwargs.items() if k != "scheduler_options"}
    script = SLURMJob(scheduler="tcp://127.0.0.1:8786", name="w", **job_kwargs).job_script()
    for key, value in BLAS_ENV.items():
        assert f"export {key}={value}" in script
    assert "#SBATCH -A proj" in script and "#SBATCH -p short" in script
    assert "--nthreads 1" in script and "--nworkers 4" in script
    assert slurm_cluster_kwargs({"memory": "2GB"})["cores"] == 1


def test_cluster_config_may_sit_in_the_estimator_config(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("estimators: {}\ndask: {workers: 2}\n")
    assert read_cluster_config(config, dask_key_only=True) == {"workers": 2}
    config.write_text("estimators: {}\n")
    assert read_cluster_config(config, dask_key_only=True) == {}


def fake_slurm_commands(directory: Path, sbatch: str) -> str:
    """A PATH with ``sbatch`` (the given shell script body) and a silent ``scancel`` first."""
    directory.mkdir()
    for name, body in (("sbatch", sbatch), ("scancel", "exit 0")):
        script = directory / name
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(0o755)
    return f"{directory}{os.pathsep}{os.environ['PATH']}"


@pytest.mark.timeout(120)
def test_failing_worker_submissions_end_with_the_sbatch_error(tmp_path, monkeypatch):
    """A bad dask.slurm setting makes sbatch fail; the command must stop with its message
    instead of waiting for workers that never come."""
    message = "sbatch: error: Invalid account or account/partition combination specified"
    monkeypatch.setenv(
        "PATH", fake_slurm_commands(tmp_path / "bin", f"echo '{message}' >&2; exit 1")
    )
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    config = {
        "cluster": "slurm",
        "workers": 2,
        "slurm": {"account": "nosuch", "memory": "1GB", "interface": "lo"},
    }
    started = time.monotonic()
    with pytest.raises(InfoplaneError, match="could not submit") as caught:
        with dask_client(cluster_config=config) as client:
            run_tasks(client, abs, [(-1,)], label="demo")
    assert message in str(caught.value)
    assert time.monotonic() - started < 60


@pytest.mark.timeout(120)
def test_workers_that_never_connect_end_after_the_wait(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "PATH", fake_slurm_commands(tmp_path / "bin", "echo 'Submitted batch job 4242'")
    )
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    config = {"cluster": "slurm", "wait": 2, "slurm": {"memory": "1GB", "interface": "lo"}}
    with pytest.raises(
        InfoplaneError, match=r"no Dask worker connected within 2 s \(worker jobs 4242"
    ):
        with dask_client(cluster_config=config):
            pass
    with pytest.raises(ConfigError, match=r"dask\.wait"):
        cluster_settings(cluster_config={**config, "wait": 0}, environ={})


# --- running tasks ---------------------------------------------------------------------------


def test_progress_is_logged_when_not_on_a_terminal(client, caplog):
    caplog.set_level(logging.INFO, logger="infoplane.estimate.cluster")
    assert run_tasks(client, abs, [(-1,), (-2,), (3,)], label="demo") == [1, 2, 3]
    assert "demo: 3/3 tasks finished" in caplog.text


# --- the same numbers on every cluster -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    return make_store(root / "activations.zarr", steps=(0, 10, 20), n=10)


@pytest.fixture(scope="module")
def reference(tiny_run, client):
    return estimate(tiny_run, resolve_preset(None, "paper"), name="paper", client=client)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_local_process_clusters_give_identical_results(tiny_run, reference, workers):
    with dask_client(workers=workers) as own:
        info = own.scheduler_info(n_workers=-1)["workers"]
        assert len(info) == workers and all(w["nthreads"] == 1 for w in info.values())
        env = own.run(lambda: {k: os.environ.get(k) for k in BLAS_ENV})
        assert all(e == BLAS_ENV for e in env.values())
        result = estimate(tiny_run, resolve_preset(None, "paper"), name="paper", client=own)
    assert_results_allclose(result, reference, rtol=0, atol=1e-10)


@pytest.fixture
def external_scheduler(tmp_path):
    """A ``dask scheduler`` and one ``dask worker`` on loopback, as separate processes."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, **BLAS_ENV}
    common = ["--scheduler-file", str(scheduler_file), "--no-dashboard"]
    processes = [
        subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", *common],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        processes.append(
            subprocess.Popen(
                [
                    str(DASK),
                    "worker",
                    "--no-nanny",
                    "--nthreads",
                    "1",
                    "--local-directory",
                    str(tmp_path),
                    *common,
                ],
                env=env,
                cwd=tmp_path,  # a different working directory: paths must be absolute
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file), timeout=60) as probe:
            probe.wait_for_workers(1, timeout=60)
            address = probe.scheduler.address
        yield address
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.mark.slow
def test_separate_scheduler_and_worker_give_identical_results(
    tiny_run, reference, external_scheduler, tmp_path, monkeypatch
):
    assert external_scheduler.startswith("tcp://127.0.0.1:")
    out = tmp_path / "mi" / "paper.zarr"
    cache = tmp_path / "distances.zarr"
    monkeypatch.chdir(tmp_path)
    # the address from the environment, as on a cluster where the scheduler runs elsewhere
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", external_scheduler)
    assert main(["distances", str(tiny_run), "--out", "distances.zarr"]) == 0
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    args = ["estimate", str(cache), "--estimator", "paper", "--out", str(out)]
    assert main([*args, "--scheduler-address", external_scheduler]) == 0
    assert_results_allclose(open_result(out), reference, rtol=0, atol=1e-10)
    assert compute_distances(tiny_run, cache)["computed"] == 0  # complete: nothing to redo
    np.testing.assert_array_equal(open_result(out)["step"], [0, 10, 20])
