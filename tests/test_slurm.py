"""The workflow's SLURM profile: what a site's edits resolve to (a dry run, no SLURM needed) and,
on a real SLURM, the tiny workflow run as a cluster user would run it.

The tests that need SLURM skip where ``sbatch`` or a responsive controller is absent. To enable
them on a Debian machine, run ``sudo ci/slurm-single-node.sh`` first (a single node on the
loopback interface, sized to this machine; `.ci/run` does it in CI).

Site values are passed the documented way (README, "The paper's experiments on a GPU or a
cluster"): a copy of ``workflow/profiles/slurm`` whose values are edited. On the test node there
is no GPU, no account and no accounting, so the copy drops ``gpu`` and the account, asks for one
core per job (more than the node has would pend forever) and reads job states with
``slurm-status-command: squeue``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from workflow_runs import ROOT, TINY_CONFIG, workflow_env

PROFILE = ROOT / "workflow" / "profiles" / "slurm"
SETUP = "ci/slurm-single-node.sh"
HOOK_DIR = Path(__file__).with_name("slurm_hook")
# the first test that needs the SLURM run also waits for it (and for the local reference run)
SLURM_TIMEOUT = pytest.mark.timeout(1800)


# ---------------------------------------------------------------------------------------------
# Helpers


def slurm_unavailable() -> str | None:
    """Why the SLURM tests cannot run here, or None when a controller answers with a node."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return f"no SLURM here (no sbatch): run `sudo {SETUP}` to start a single-node SLURM"
    try:
        states = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:
        return f"the SLURM controller does not answer: run `sudo {SETUP}`"
    usable = {"idle", "mixed", "allocated", "completing"}
    if states.returncode != 0 or not usable & set(states.stdout.split()):
        return (
            f"no usable SLURM node (sinfo: {(states.stdout + states.stderr).strip()!r}): "
            f"run `sudo {SETUP}`"
        )
    return None


@pytest.fixture(scope="module")
def slurm() -> None:
    reason = slurm_unavailable()
    if reason:
        pytest.skip(reason)


def site_profile(directory: Path, edit) -> Path:
    """A site's copy of the SLURM profile with ``edit(profile_mapping)`` applied (README)."""
    shutil.copytree(PROFILE, directory)
    path = directory / "config.yaml"
    profile = yaml.safe_load(path.read_text())
    edit(profile)
    path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return directory


def planned_resources(output: str) -> dict[str, dict[str, str]]:
    """rule -> its resources, from a dry run's job listing (the first job of each rule)."""
    plan: dict[str, dict[str, str]] = {}
    rule = None
    for line in output.splitlines():
        match = re.match(r"^(?:local)?rule (\w+):$", line)
        if match:
            rule = match.group(1)
            continue
        fields = re.match(r"^\s+resources: (.*)$", line)
        if fields and rule and rule not in plan:
            plan[rule] = dict(kv.split("=", 1) for kv in fields.group(1).split(", "))
    return plan


def dry_run(workdir: Path, profile: Path, *args: str) -> dict[str, dict[str, str]]:
    shutil.copy(TINY_CONFIG, workdir / "config.yaml")
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    command += ["--workflow-profile", str(profile), "--directory", str(workdir), "--dry-run"]
    result = subprocess.run(
        [*command, *args], cwd=workdir, env=workflow_env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return planned_resources(result.stdout + result.stderr)


def arrays_of(store: Path) -> dict[str, bytes]:
    """Every array of a Zarr store (nested groups included) as dtype, shape and raw bytes."""
    group = zarr.open_group(store, mode="r")
    out = {}
    for name, array in group.members(max_depth=None):
        if isinstance(array, zarr.Array):
            values = np.asarray(array[...])
            out[name] = (values.dtype.str, values.shape, values.tobytes())
    return out


def stores_under(results: Path) -> list[Path]:
    """The Zarr stores of a results folder (the training work directories left out)."""
    stores = [p.relative_to(results) for p in results.rglob("*.zarr") if p.is_dir()]
    return sorted(p for p in stores if ".training" not in p.parts)


def squeue(*args: str) -> str:
    return subprocess.run(
        ["squeue", "-h", *args], capture_output=True, text=True, timeout=30
    ).stdout.strip()


# ---------------------------------------------------------------------------------------------
# What a site's edits resolve to (no SLURM needed)


def edit_runtime(profile: dict) -> None:
    profile["set-resources"]["train"]["runtime"] = 1440


FULL_COMMAND_LINE = [
    "--set-resources",
    "train:gpu=1", "train:slurm_partition=gpu", "train:runtime=1440", "train:mem_mb=32000",
    "distances:runtime=240", "distances:mem_mb=64000",
    "estimate:runtime=240", "estimate:mem_mb=32000",
    "stack:mem_mb=16000",
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("way", ["site profile", "every entry on the command line"])
def test_a_longer_training_time_keeps_the_gpu_and_the_other_rules_resources(tmp_path, way):
    """The README's ways of changing one resource: a copy of the profile with the value edited,
    or every entry of the profile's set-resources repeated on the command line. (A single
    `--set-resources train:runtime=1440` replaces the profile's whole set-resources: no GPU,
    the default partition, and distances/estimate with the default memory.)"""
    (tmp_path / "run").mkdir()
    if way == "site profile":
        plan = dry_run(tmp_path / "run", site_profile(tmp_path / "site", edit_runtime))
    else:
        plan = dry_run(tmp_path / "run", PROFILE, *FULL_COMMAND_LINE)
    train = plan["train"]
    assert (train["gpu"], train["slurm_partition"]) == ("1", "gpu")
    assert (train["runtime"], train["mem_mb"]) == ("1440", "32000")
    assert (plan["distances"]["mem_mb"], plan["distances"]["runtime"]) == ("64000", "240")
    assert plan["estimate"]["mem_mb"] == "32000" and plan["stack"]["mem_mb"] == "16000"
    assert plan["stack"]["slurm_partition"] == "cpu"  # the default resources stay too


# ---------------------------------------------------------------------------------------------
# The tiny workflow on a real SLURM


def one_node_site(profile: dict) -> None:
    """The edits of a one-node test cluster: partition `debug`, no account, no GPU, one core
    and 1 GB per job, job states from squeue (no accounting), quick status checks."""
    profile["default-resources"] = {"slurm_partition": "debug", "runtime": 10, "mem_mb": 1000}
    profile["slurm-no-account"] = True
    profile["slurm-status-command"] = "squeue"
    profile["slurm-init-seconds-before-status-checks"] = 1
    profile["latency-wait"] = 5
    profile["set-threads"] = {rule: 1 for rule in profile["set-threads"]}
    for resources in profile["set-resources"].values():
        for key in ("gpu", "slurm_partition"):
            resources.pop(key, None)
        resources.update(mem_mb=1000, runtime=10)


@pytest.fixture(scope="module")
def slurm_run(slurm, tmp_path_factory, tiny_workflow):
    """The tiny workflow through the site's SLURM profile up to its stacked estimates (every store
    of the workflow; the checks and figures, four levels of jobs more, are left out to keep the
    test short), its two train jobs ended early once.

    A job at its time limit gets SIGCONT and SIGTERM from SLURM, then SIGKILL ``KillWait``
    seconds later (5 s in ci/slurm-single-node.sh), and is marked failed; Snakemake removes its
    outputs and, with the profile's ``retries: 1``, submits it again. Waiting for real time
    limits would cost minutes (limits are whole minutes, and slurmctld looks at them every
    30 s), so each train job is stopped at a chosen point by tests/slurm_hook (seed0 after its
    first checkpoint, mid-training; seed1 after it has finished, about to exit 0) and then
    cancelled with ``scancel``. For a running batch job that is the same termination as at the
    time limit — slurmctld asks slurmd to end the job, which sends SIGCONT, SIGTERM, waits
    KillWait and sends SIGKILL — except that the state reads CANCELLED instead of TIMEOUT, and
    the executor plugin treats both as a failed job.
    """
    workdir = tmp_path_factory.mktemp("slurm_workflow")
    shutil.copy(TINY_CONFIG, workdir / "config.yaml")
    profile = site_profile(workdir / "site", one_node_site)
    stop_dir = workdir / "stops"
    stop_dir.mkdir()
    points = {"seed0": "checkpoint", "seed1": "finished"}
    for run, point in points.items():
        (stop_dir / f"{run}.point").write_text(point)
    env = workflow_env(INFOPLANE_TEST_STOP_DIR=str(stop_dir))
    env["PYTHONPATH"] = (
        f"{HOOK_DIR}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(HOOK_DIR)
    )
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    command += ["--workflow-profile", str(profile), "--directory", str(workdir)]
    command += [f"results/tiny/mi/{preset}.zarr" for preset in ("aligned", "silverman")]
    started = time.monotonic()
    log = open(workdir / "snakemake.out", "w")
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    stopped: dict[str, str] = {}
    try:
        while process.poll() is None:
            assert time.monotonic() - started < 900, "the SLURM workflow ran over 15 minutes"
            for run in points:
                jobid = stop_dir / f"{run}.jobid"
                if run not in stopped and jobid.exists():
                    stopped[run] = jobid.read_text().strip()
                    state = (workdir / "results" / "tiny" / run / "activations.zarr").exists()
                    stopped[f"{run} in place"] = state
                    subprocess.run(["scancel", stopped[run]], check=True, timeout=30)
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=60)
        log.close()
    output = (workdir / "snakemake.out").read_text()
    assert process.returncode == 0, output[-6000:]
    print(f"\nthe tiny workflow on SLURM took {time.monotonic() - started:.0f} s")
    return {
        "workdir": workdir,
        "local": tiny_workflow,
        "output": output,
        "stopped": stopped,
    }


@pytest.mark.slow
@SLURM_TIMEOUT
def test_every_cluster_job_is_an_sbatch_job_and_the_results_equal_the_local_ones(slurm_run):
    output, workdir, local = slurm_run["output"], slurm_run["workdir"], slurm_run["local"]
    submitted = re.findall(r"Job (\d+) has been submitted with SLURM jobid (\d+)", output)
    # 2 train, 2 distances, 4 estimate and 2 stack jobs, and the two train jobs again
    assert len(submitted) == 12, output[-3000:]
    stores = stores_under(workdir / "results")
    assert stores == stores_under(local / "results") and len(stores) == 10
    for store in stores:
        ours, theirs = arrays_of(workdir / "results" / store), arrays_of(local / "results" / store)
        assert ours.keys() == theirs.keys(), store
        different = [name for name in ours if ours[name] != theirs[name]]
        assert not different, f"{store}: {different}"
    for run in ("seed0", "seed1"):
        for name in ("metrics.csv", "iterations.csv"):
            path = Path("results", "tiny", run, name)
            assert (workdir / path).read_bytes() == (local / path).read_bytes(), path


@pytest.mark.slow
@SLURM_TIMEOUT
def test_a_train_job_ended_mid_training_resumes_from_its_checkpoint(slurm_run):
    assert slurm_run["stopped"]["seed0"] and not slurm_run["stopped"]["seed0 in place"]
    log = (slurm_run["workdir"] / "logs" / "tiny" / "seed0" / "train.log").read_text()
    assert "resuming after epoch 1 " in log, log[-2000:]


@pytest.mark.slow
@SLURM_TIMEOUT
def test_a_train_job_ended_after_finishing_does_not_train_again(slurm_run):
    """The job had put its products in place when it was ended; its retry must find the
    finished state in .training/ (before: moved away, so the retry trained from scratch)."""
    assert slurm_run["stopped"]["seed1"] and slurm_run["stopped"]["seed1 in place"]
    log = (slurm_run["workdir"] / "logs" / "tiny" / "seed1" / "train.log").read_text()
    assert "already finished" in log, log[-2000:]
    assert not re.search(r"training, \d+ iterations", log), log[-2000:]


def dask_config(path: Path, **slurm: object) -> Path:
    """A cluster configuration of one single-core worker job on the test node, loopback only."""
    settings = {"queue": "debug", "cores": 1, "memory": "1GB", "walltime": "00:10:00"}
    settings.update(interface="lo", python=sys.executable, **slurm)
    path.write_text(yaml.safe_dump({"dask": {"cluster": "slurm", "workers": 1, "slurm": settings}}))
    return path


def infoplane_estimate(run_dir: Path, config: Path, out: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "infoplane", "estimate", str(run_dir / "distances.zarr")]
    command += ["--config", str(run_dir.parents[1] / "estimators" / "aligned.json")]
    command += ["--estimator", "aligned", "--cluster-config", str(config), "--out", str(out)]
    return subprocess.run(
        command, cwd=out.parent, env=workflow_env(), capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@SLURM_TIMEOUT
def test_an_estimate_on_dask_jobqueue_workers_equals_the_workflow_one(slurm_run, tmp_path):
    run_dir = slurm_run["workdir"] / "results" / "tiny" / "seed0"
    result = infoplane_estimate(run_dir, dask_config(tmp_path / "dask.yaml"), tmp_path / "mi.zarr")
    assert result.returncode == 0, result.stderr[-4000:]
    ours, workflow = arrays_of(tmp_path / "mi.zarr"), arrays_of(run_dir / "mi" / "aligned.zarr")
    assert ours.keys() == workflow.keys()
    assert [name for name in ours if ours[name] != workflow[name]] == []


@pytest.mark.slow
@SLURM_TIMEOUT
def test_a_bad_dask_yaml_fails_with_the_sbatch_error(slurm_run, tmp_path):
    run_dir = slurm_run["workdir"] / "results" / "tiny" / "seed0"
    config = dask_config(tmp_path / "dask.yaml", queue="no_such_partition")
    started = time.monotonic()
    result = infoplane_estimate(run_dir, config, tmp_path / "mi.zarr")
    assert result.returncode != 0
    assert "could not submit" in result.stderr and "invalid partition" in result.stderr.lower()
    assert time.monotonic() - started < 120


@pytest.mark.slow
@SLURM_TIMEOUT
def test_no_job_is_left_behind(slurm_run):
    deadline = time.monotonic() + 30
    while squeue("-t", "PENDING,RUNNING,SUSPENDED") and time.monotonic() < deadline:
        time.sleep(1)  # jobs cancelled a moment ago are still completing
    assert squeue("-t", "PENDING,RUNNING,SUSPENDED") == ""
