"""Stops a training job of tests/test_slurm.py at a chosen point, once, so that the test can end
it there the way SLURM ends a job at its time limit.

Python imports this module at start-up when its folder is on PYTHONPATH (the test puts it there
for the SLURM jobs only). It acts only in ``python -m infoplane train ... --run R`` when the file
``$INFOPLANE_TEST_STOP_DIR/R.point`` exists, and removes that file, so the job's next attempt
runs undisturbed. The file names the point:

- ``checkpoint``: after the first checkpoint is written (mid-training: later epochs remain);
- ``finished``: when the command has done everything and is about to exit 0.

There the process writes its ``SLURM_JOB_ID`` to ``R.jobid`` and stops itself (SIGSTOP); the
test then ends the job. SLURM's termination begins with SIGCONT, so the stopped process wakes up
to the SIGTERM that follows, like a running one.
"""

import atexit
import os
import signal
import sys
from pathlib import Path


def _stop(stop_dir: Path, run: str) -> None:
    (stop_dir / f"{run}.jobid.tmp").write_text(os.environ.get("SLURM_JOB_ID", ""))
    os.replace(stop_dir / f"{run}.jobid.tmp", stop_dir / f"{run}.jobid")
    os.kill(os.getpid(), signal.SIGSTOP)


def _install() -> None:
    stop_dir = os.environ.get("INFOPLANE_TEST_STOP_DIR")
    if not stop_dir or sys.argv[:2] != ["-m", "train"] or "--run" not in sys.argv:
        return
    stop_dir = Path(stop_dir)
    run = sys.argv[sys.argv.index("--run") + 1]
    point_file = stop_dir / f"{run}.point"
    try:
        point = point_file.read_text().strip()
        point_file.unlink()
    except FileNotFoundError:
        return
    if point == "finished":
        atexit.register(_stop, stop_dir, run)
    elif point == "checkpoint":
        import infoplane.train.training as training

        save = training.save_checkpoint

        def save_then_stop(path, state):
            save(path, state)
            _stop(stop_dir, run)

        training.save_checkpoint = save_then_stop


_install()
