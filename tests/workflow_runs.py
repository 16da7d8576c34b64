"""Running the repository's Snakemake workflow from the tests (test_workflow.py, test_slurm.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = Path(__file__).with_name("workflow_config.yaml")


def workflow_env(**extra: str) -> dict[str, str]:
    """The environment of a workflow run: this interpreter's bin folder first on PATH (the rules
    call `python -m infoplane`), no external Dask scheduler."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    env.update(extra)
    return env


def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the repository's workflow in ``workdir`` with the local profile, one Dask worker."""
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--workflow-profile",
        str(ROOT / "workflow" / "profiles" / "local"),
        "--directory",
        str(workdir),
        *args,
        "--cores",
        "2",
        # the last option: its values run on to the next option
        "--set-threads",
        "distances=1",
        "estimate=1",
    ]
    return subprocess.run(
        command, cwd=workdir, env=workflow_env(), capture_output=True, text=True, timeout=timeout
    )


def run_tiny_workflow(workdir: Path) -> Path:
    """The tiny workflow (tests/workflow_config.yaml) run for real in ``workdir``."""
    shutil.copy(TINY_CONFIG, workdir / "config.yaml")
    result = snakemake(workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir
