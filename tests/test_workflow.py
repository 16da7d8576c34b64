"""The Snakemake workflow end to end: a tiny config run for real, its products' content, the
report, dry runs that show which jobs an edit reruns, the lint, and the `data fetch` command."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml
from workflow_runs import ROOT, TINY_CONFIG, snakemake

LOG2_TOL = 1e-6


def planned_jobs(result: subprocess.CompletedProcess) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) of every job a dry run lists."""
    assert result.returncode == 0, result.stdout + result.stderr
    jobs: list[tuple[str, dict[str, str]]] = []
    for line in (result.stdout + result.stderr).splitlines():
        rule = re.match(r"^(?:local)?rule (\w+):$", line)
        if rule:
            jobs.append((rule.group(1), {}))
            continue
        wildcards = re.match(r"^\s+wildcards: (.*)$", line)
        if wildcards and jobs:
            jobs[-1][1].update(dict(kv.split("=", 1) for kv in wildcards.group(1).split(", ")))
    return jobs


def job_counts(jobs) -> Counter:
    return Counter(rule for rule, _ in jobs if rule != "all")


@pytest.fixture(scope="module")
def tiny_run(tiny_workflow) -> Path:
    """The tiny workflow, run once for real (shared with test_slurm.py); read-only here."""
    return tiny_workflow


def edited_config(workdir: Path, name: str, edit) -> Path:
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    edit(config)
    path = workdir / name
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(workdir: Path, config: Path | None = None) -> list[tuple[str, dict[str, str]]]:
    args = ["--dry-run"]
    if config is not None:
        args += ["--configfile", str(config), "--replace-workflow-config"]
    return planned_jobs(snakemake(workdir, *args))


# ---------------------------------------------------------------------------------------------
# Products of a real run


@pytest.mark.slow
def test_stacked_estimates_are_finite_and_obey_the_invariants(tiny_run):
    import xarray as xr

    for preset in ("aligned", "silverman"):
        with xr.open_zarr(tiny_run / "results" / "tiny" / "mi" / f"{preset}.zarr") as ds:
            ds = ds.load()
        assert list(ds["run"].values) == ["seed0", "seed1"]
        assert list(ds["split"].values) == ["train", "test"]
        assert list(ds["layer"].values)[-1] == "softmax" and ds.sizes["layer"] >= 2
        # digits: 1437 training images, batch 64 -> 23 iterations per epoch; epoch captures plus
        # every 8th iteration of the first epoch
        assert list(ds["step"].values) == [0, 8, 16, 23, 46]
        np.testing.assert_allclose(ds["epoch"].values, np.array([0, 8, 16, 23, 46]) / 23)
        assert ds.attrs["estimator"] == preset
        for name in ("I_XT", "I_TY", "H_T", "H_X", "H_Y", "sigma"):
            assert np.isfinite(ds[name].values).all(), name
        log2n = np.log2(30)
        for name in ("H_T", "H_X", "H_Y", "H_XT", "H_TY"):
            assert float(ds[name].min()) >= -LOG2_TOL and float(ds[name].max()) <= log2n + 1e-9
        bound = np.minimum(ds["H_X"], ds["H_T"])
        assert (ds["I_XT"] >= -LOG2_TOL).all() and (ds["I_XT"] <= bound + LOG2_TOL).all()
        assert (ds["I_TY"] <= ds["H_Y"] + LOG2_TOL).all()
        assert (ds["sigma"] > 0).all()
        # the network learns: the softmax carries more about the labels at the end than at step 0
        softmax_ty = ds["I_TY"].sel(layer="softmax", split="train").mean("run")
        assert float(softmax_ty.isel(step=-1)) > float(softmax_ty.isel(step=0))
    checks = (tiny_run / "results" / "tiny" / "checks" / "aligned.txt").read_text()
    assert "0 violation(s), 0 NaN point(s)" in checks


@pytest.mark.slow
def test_runs_record_their_settings_and_metrics(tiny_run):
    import pandas as pd

    for seed in (0, 1):
        run_dir = tiny_run / "results" / "tiny" / f"seed{seed}"
        settings = json.loads((run_dir / "config.json").read_text())["experiments"]["tiny"]
        assert settings["seeds"] == [seed] and settings["training"]["epochs"] == 2
        metrics = pd.read_csv(run_dir / "metrics.csv")
        assert set(metrics["split"]) == {"train", "test"}
        assert sorted(metrics["epoch"].unique()) == [0, 1, 2]
        assert metrics["loss"].notna().all()
        assert (run_dir / "distances.zarr").is_dir() and (run_dir / "activations.zarr").is_dir()
    first = (tiny_run / "results/tiny/seed0/metrics.csv").read_text()
    assert first != (tiny_run / "results/tiny/seed1/metrics.csv").read_text()  # seeds differ


@pytest.mark.slow
def test_plots_are_written_and_not_trivial(tiny_run):
    from infoplane.report.plots import DATA_PROCESSING_TABLE, ESTIMATE_FIGURES

    plots = tiny_run / "results" / "tiny" / "plots"
    for preset in ("aligned", "silverman"):
        for name in ESTIMATE_FIGURES:
            data = (plots / preset / name).read_bytes()
            assert data.startswith(b"\x89PNG") and len(data) > 20_000, (preset, name)
        table = (plots / preset / DATA_PROCESSING_TABLE).read_text().splitlines()
        assert table[0] == "split,pair,I_XT,I_TY,n_XT,n_TY"
        assert table[-1].startswith("test,chain,")
    assert (plots / "training.png").stat().st_size > 20_000
    for name in ("comparison_train.png", "comparison_test.png"):
        assert (plots / name).read_bytes().startswith(b"\x89PNG")
        assert (plots / name).stat().st_size > 20_000


@pytest.mark.slow
def test_report_has_the_figures_and_captions(tiny_run):
    report = tiny_run / "report.html"
    result = snakemake(tiny_run, "--report", str(report))
    assert result.returncode == 0, result.stderr[-3000:]
    html = report.read_text(encoding="utf-8")
    assert "information_plane_train.png" in html and "training.png" in html
    assert "Data-processing check for experiment" in html  # a caption, rendered
    assert "comparison_train.png" in html and "compared on the same" in html
    assert "Experiments in this report: tiny" in html


# ---------------------------------------------------------------------------------------------
# What an edit reruns (dry runs against the finished tiny run)


@pytest.mark.slow
def test_nothing_to_do_after_the_run(tiny_run):
    assert job_counts(dry_run(tiny_run)) == Counter()


def assert_only_the_jobs_of_one_preset(jobs, preset):
    """A preset's estimates (one per run), stack, check and plots, and the comparison figure."""
    assert job_counts(jobs) == Counter(
        {
            "preset": 1,
            "estimate": 2,
            "stack": 1,
            "check": 1,
            "plot_estimates": 1,
            "plot_comparison": 1,
        }
    )
    assert all(
        w.get("preset") == preset for rule, w in jobs if rule not in ("all", "plot_comparison")
    )


@pytest.mark.slow
def test_editing_a_preset_reruns_only_its_estimation_and_plots(tiny_run):
    def edit(config):
        config["estimators"]["aligned"]["layer_width"]["smoothing"] = 0.5

    jobs = dry_run(tiny_run, edited_config(tiny_run, "edit_preset.yaml", edit))
    assert_only_the_jobs_of_one_preset(jobs, "aligned")


@pytest.mark.slow
def test_adding_a_preset_adds_only_its_jobs(tiny_run):
    def edit(config):
        config["estimators"]["wide"] = {
            "kernel": "tensor",
            "input_width": {"rule": "fixed", "sigma": 8.0},
            "layer_width": {"rule": "fixed", "sigma": 5.0},
        }
        config["experiments"]["tiny"]["estimators"].append("wide")

    jobs = dry_run(tiny_run, edited_config(tiny_run, "add_preset.yaml", edit))
    assert_only_the_jobs_of_one_preset(jobs, "wide")


@pytest.mark.slow
def test_adding_binning_and_kde_presets_adds_only_their_jobs(tiny_run):
    def edit(config):
        config["estimators"]["bins10"] = {"estimator": "binning", "bins": 10, "range": "layer"}
        config["experiments"]["tiny"]["estimators"] += ["bins10", "kde"]

    jobs = dry_run(tiny_run, edited_config(tiny_run, "add_classic.yaml", edit))
    assert job_counts(jobs) == Counter(
        {
            "preset": 2,
            "estimate": 4,
            "stack": 2,
            "check": 2,
            "plot_estimates": 2,
            "plot_comparison": 1,
        }
    )
    assert {w.get("preset") for rule, w in jobs if rule not in ("all", "plot_comparison")} == {
        "bins10",
        "kde",
    }


def add_family(config, values=(0.5, 2)):
    """A sensitivity family of the tiny config's `aligned` preset: its widths scaled."""
    family = {"base": "aligned", "vary": "sigma_scale", "values": list(values)}
    config["estimators"]["scaled"] = {"family": family}
    config["experiments"]["tiny"]["estimators"].append("scaled")


FAMILY_JOBS = {
    "preset": 2,
    "widths": 2,  # one shared search per run, not one per member
    "estimate": 4,
    "stack": 2,
    "check": 2,
    "plot_estimates": 2,
    "plot_comparison": 1,
    "phases": 1,
    "family_phases": 1,
    "plot_family": 1,
}


@pytest.mark.slow
def test_adding_a_family_adds_only_its_members_jobs(tiny_run):
    jobs = dry_run(tiny_run, edited_config(tiny_run, "add_family.yaml", add_family))
    assert job_counts(jobs) == Counter(FAMILY_JOBS)
    members = {"scaled.x0.5", "scaled.x2"}
    assert {w["preset"] for rule, w in jobs if "preset" in w} == members
    assert {w["family"] for rule, w in jobs if "family" in w} == {"scaled"}
    assert {w["search"] for rule, w in jobs if rule == "widths"} == {
        "alignment-linear-30-indicator"
    }


def test_a_family_plans_its_members_after_one_width_search(tmp_path):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    add_family(config)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--dry-run")
    counts = job_counts(planned_jobs(result))
    assert counts["widths"] == 2 and counts["estimate"] == 2 * 4 and counts["plot_family"] == 1
    output = result.stdout + result.stderr
    # every member's estimate waits for its run's search; the other presets' do not
    member_inputs = re.findall(r"input: ([^\n]*mi/scaled[^\n]*)", output)
    estimates = re.findall(r"rule estimate:\n\s+input: ([^\n]*)", output)
    with_widths = [
        line for line in estimates if "/widths/alignment-linear-30-indicator.json" in line
    ]
    assert len(with_widths) == 4 and all("scaled" in line for line in with_widths)
    assert member_inputs  # the family's figure and table read the members' stacks
    assert "results/tiny/phases/scaled.csv" in output and "results/tiny/phases.csv" in output


@pytest.mark.slow
def test_adding_a_seed_runs_only_that_seeds_chain(tiny_run):
    def edit(config):
        config["experiments"]["tiny"]["seeds"].append(2)

    jobs = dry_run(tiny_run, edited_config(tiny_run, "add_seed.yaml", edit))
    assert job_counts(jobs) == Counter(
        {
            "train": 1,
            "distances": 1,
            "estimate": 2,
            "stack": 2,
            "check": 2,
            "plot_estimates": 2,
            "plot_comparison": 1,
            "plot_training": 1,
        }
    )
    for rule, wildcards in jobs:
        if rule in ("train", "distances", "estimate"):
            assert wildcards["run"] == "seed2"


@pytest.mark.slow
def test_changing_training_settings_retrains_every_run(tiny_run):
    def edit(config):
        config["experiments"]["tiny"]["training"]["lr"] = 0.05

    counts = job_counts(dry_run(tiny_run, edited_config(tiny_run, "edit_training.yaml", edit)))
    assert counts["train"] == 2 and counts["distances"] == 2 and counts["estimate"] == 4
    assert counts["preset"] == 0


@pytest.mark.slow
def test_changing_the_distance_storage_recomputes_distances_not_training(tiny_run):
    def edit(config):
        config["experiments"]["tiny"]["distances"] = {"store": "float32"}

    counts = job_counts(dry_run(tiny_run, edited_config(tiny_run, "edit_storage.yaml", edit)))
    assert counts["train"] == 0 and counts["distances"] == 2 and counts["estimate"] == 4


@pytest.mark.slow
def test_binning_and_kde_presets_run_through_the_workflow(tiny_run, tmp_path):
    """On a copy of the finished tiny run: the classic presets estimate, stack, check and plot
    without retraining; the binned I(X;T) is H(T), the KDE upper bound is above the lower."""
    import xarray as xr

    workdir = tmp_path / "copy"
    shutil.copytree(tiny_run, workdir, symlinks=True)

    def edit(config):
        config["experiments"]["tiny"]["estimators"] += ["binning-adaptive", "kde"]

    config = edited_config(workdir, "classic.yaml", edit)
    result = snakemake(workdir, "--configfile", str(config), "--replace-workflow-config")
    assert result.returncode == 0, result.stderr[-5000:]
    mi = workdir / "results" / "tiny" / "mi"
    with xr.open_zarr(mi / "binning-adaptive.zarr") as ds:
        ds = ds.load()
    np.testing.assert_allclose(ds["I_XT"], ds["H_T"], atol=1e-9)
    assert ds["saturated"].dtype == bool and list(ds["run"].values) == ["seed0", "seed1"]
    with xr.open_zarr(mi / "kde.zarr") as ds:
        ds = ds.load()
    assert (ds["I_XT_upper"] >= ds["I_XT_lower"] - 1e-12).all()
    checks = workdir / "results" / "tiny" / "checks"
    for preset in ("binning-adaptive", "kde"):
        assert "0 violation(s), 0 NaN point(s)" in (checks / f"{preset}.txt").read_text()
    assert (workdir / "results" / "tiny" / "plots" / "comparison_test.png").stat().st_size > 20_000


# ---------------------------------------------------------------------------------------------
# The workflow definition itself


@pytest.mark.slow
@pytest.mark.slow
def test_a_killed_training_job_resumes_on_the_next_run(tmp_path):
    """SIGKILL the training job after a checkpoint (as a cluster's time limit would): Snakemake
    deletes the job's outputs, and the next run continues from the checkpoint."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    tiny = config["experiments"]["tiny"]
    tiny["training"]["epochs"] = 150  # about 10 s on 2 cores: time to kill it mid-run
    tiny["seeds"] = [0]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "results" / "tiny" / "seed0"
    checkpoint = run_dir / ".training" / "checkpoint.pt"
    target = "results/tiny/seed0/activations.zarr"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile")]
    command += ["--workflow-profile", str(ROOT / "workflow" / "profiles" / "local")]
    command += ["--directory", str(tmp_path), "--cores", "1", target]
    first = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 180
        while not checkpoint.exists():
            assert first.poll() is None, "the training job ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.05)
        time.sleep(0.5)
        (job,) = [
            p
            for p in psutil.Process(first.pid).children(recursive=True)
            if "train" in p.cmdline() and "infoplane" in p.cmdline()
        ]
        job.send_signal(signal.SIGKILL)
        assert first.wait(timeout=120) != 0  # Snakemake reports the failed job
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert not (run_dir / "activations.zarr").exists()  # Snakemake removed the job's outputs
    from infoplane.train.training import load_checkpoint

    killed_at = load_checkpoint(checkpoint)["epoch"]
    assert killed_at < 150, "the kill came too late to test resuming"

    result = snakemake(tmp_path, target)  # the profile reruns the incomplete job
    assert result.returncode == 0, result.stderr[-5000:]
    log = (tmp_path / "logs" / "tiny" / "seed0" / "train.log").read_text()
    assert re.search(r"resuming after epoch (\d+)", log), log[-2000:]
    assert int(re.search(r"resuming after epoch (\d+)", log).group(1)) >= killed_at
    # the finished state stays in .training, linked to the outputs (no second copy)
    assert checkpoint.stat().st_ino == (run_dir / "checkpoint.pt").stat().st_ino
    epochs = [row["epoch"] for row in csv.DictReader(open(run_dir / "metrics.csv"))]
    assert epochs == [str(e) for e in range(151) for _ in range(2)]


def test_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint", "--configfile", str(ROOT / "config.yaml"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Lints for" not in output and "good condition" in output


@pytest.mark.slow
def test_paper_experiments_plan(tmp_path):
    """Every experiment of the shipped config builds a DAG: downloads first, GPU-free plan."""
    runs = "run=[mnist_mlp_tanh,mnist_cnn,cifar10_vgg16]"
    result = snakemake(
        tmp_path,
        "--dry-run",
        "--configfile",
        str(ROOT / "config.yaml"),
        "--replace-workflow-config",
        "--config",
        runs,
    )
    jobs = planned_jobs(result)
    counts = job_counts(jobs)
    assert counts["dataset"] == 3
    assert counts["train"] == 10 + 10 + 5
    # mnist_mlp_tanh: paper + paper-alpha1.01; mnist_cnn: paper + multivariate; vgg: paper
    assert counts["estimate"] == 10 * 2 + 10 * 2 + 5
    assert counts["plot_estimates"] == 5
    output = result.stdout
    assert "--store results/mnist_cnn/seed0/activations.zarr" in output  # multivariate reads it


def test_bad_config_is_rejected_before_any_job(tmp_path):
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["experiments"]["tiny"]["estimators"].append("missing")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--dry-run")
    assert result.returncode != 0
    assert "unknown estimator preset 'missing'" in result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# `infoplane data fetch` (the `dataset` rule)


def _fetch(argv):
    import argparse

    from infoplane.commands import data

    parser = argparse.ArgumentParser()
    data.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_data_fetch_summarises_a_dataset(tmp_path, capsys):
    out = tmp_path / "digits.json"
    assert (
        _fetch(["data", "fetch", "digits", "--options", '{"test_size": 300}', "--out", str(out)])
        == 0
    )
    summary = json.loads(out.read_text())
    assert summary["n_test"] == 300 and summary["n_train"] == 1797 - 300
    assert summary["input_shape"] == [1, 8, 8] and summary["classes"] == 10
    assert json.loads(capsys.readouterr().out) == summary


@pytest.mark.mnist
def test_data_fetch_verifies_local_mnist(tmp_path, mnist_dir):
    options = json.dumps({"name": "mnist", "source": "t10k", "path": str(mnist_dir)})
    out = tmp_path / "mnist.json"
    assert _fetch(["data", "fetch", "mnist", "--options", options, "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["n_train"] + summary["n_test"] == 10_000
    assert summary["input_shape"] == [1, 28, 28]


def test_data_fetch_rejects_bad_options():
    from infoplane.errors import ConfigError

    with pytest.raises(ConfigError, match="JSON mapping"):
        _fetch(["data", "fetch", "digits", "--options", "[1, 2]"])
    with pytest.raises(ConfigError, match="unknown option"):
        _fetch(["data", "fetch", "digits", "--options", '{"colour": 1}'])
