"""Dask clusters for the estimation stages, and running a batch of independent tasks on them.

Three ways to get workers, in this order of precedence:

1. an existing scheduler: ``--scheduler-address`` or the ``DASK_SCHEDULER_ADDRESS`` variable;
2. a SLURM cluster from dask-jobqueue, asked for by a cluster configuration::

       dask:
         cluster: slurm          # local | slurm
         workers: 8              # worker processes in all
         wait: 3600              # seconds to wait for the first worker (queue time included)
         slurm: {queue: normal, account: proj, cores: 4, memory: 16GB, walltime: "01:00:00",
                 interface: ib0} # the network the scheduler and workers use

3. the default: a LocalCluster of worker processes, one thread and one BLAS thread each.

A SLURM cluster whose worker jobs cannot be submitted (``sbatch`` fails: a bad account,
partition or memory request) is an error with ``sbatch``'s own message as soon as the submissions
have failed, and one whose workers never connect (jobs that die at start, or pend) is an error
after ``wait`` seconds; neither waits forever. The scheduler listens on the address of
``interface`` (dask-jobqueue uses it for the scheduler and the workers); without it, on the
host's default address.

Every task is single-threaded on purpose: the tasks are many and independent, and one BLAS
thread per process also makes results independent of how many workers run them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from infoplane.errors import ConfigError, InfoplaneError

log = logging.getLogger(__name__)

#: Environment of every worker process: one BLAS/OpenMP thread (see the module docstring).
BLAS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

CLUSTER_KINDS = ("local", "slurm")
_CLUSTER_KEYS = ("cluster", "workers", "slurm", "wait")
#: Seconds :func:`dask_client` waits for the first worker of a SLURM cluster (``dask.wait``).
DEFAULT_SLURM_WAIT = 3600.0
#: SLURMCluster arguments a cluster configuration may set (dask_jobqueue names).
SLURM_KEYS = (
    "queue",
    "account",
    "cores",
    "processes",
    "memory",
    "walltime",
    "job_extra_directives",
    "job_script_prologue",
    "job_directives_skip",
    "job_cpu",
    "job_mem",
    "local_directory",
    "log_directory",
    "interface",
    "python",
    "death_timeout",
    "worker_extra_args",
    "name",
)


def read_cluster_config(path: str | Path, *, dask_key_only: bool = False) -> dict[str, Any]:
    """The ``dask:`` mapping of a YAML file.

    A file without a ``dask:`` key is itself the mapping, unless ``dask_key_only`` (a file that
    holds other settings too, such as a configuration with estimator presets).
    """
    from infoplane.config import read_yaml

    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"cluster configuration {path} must be a mapping with a dask: key")
    section = data.get("dask", {} if dask_key_only else data)
    if not isinstance(section, Mapping):
        raise ConfigError(f"cluster configuration {path}: dask must be a mapping")
    return dict(section)


def cluster_settings(
    *,
    workers: int | None = None,
    scheduler_address: str | None = None,
    cluster_config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Decide which cluster to use, validating the configuration before any work starts.

    Returns
    -------
    dict
        ``{"kind": "address", "address": ...}``, ``{"kind": "local", "workers": n}`` or
        ``{"kind": "slurm", "workers": n, "slurm": {...}, "wait": seconds}``.
    """
    environ = os.environ if environ is None else environ
    config = dict(cluster_config or {})
    unknown = sorted(set(config) - set(_CLUSTER_KEYS))
    if unknown:
        raise ConfigError(
            f"dask: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(_CLUSTER_KEYS)}"
        )
    if workers is None:
        workers = config.get("workers")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)):
        raise ConfigError(f"dask.workers must be a positive integer, got {workers!r}")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers / dask.workers must be >= 1, got {workers}")
    address = scheduler_address or environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        return {"kind": "address", "address": address}
    kind = config.get("cluster", "local")
    if kind not in CLUSTER_KINDS:
        raise ConfigError(f"dask.cluster must be one of {', '.join(CLUSTER_KINDS)}; got {kind!r}")
    if kind == "slurm":
        kwargs = slurm_cluster_kwargs(config.get("slurm") or {})
        wait = config.get("wait", DEFAULT_SLURM_WAIT)
        if isinstance(wait, bool) or not isinstance(wait, int | float) or not wait > 0:
            raise ConfigError(f"dask.wait must be a positive number of seconds, got {wait!r}")
        return {
            "kind": "slurm",
            "workers": workers or kwargs["processes"],
            "slurm": kwargs,
            "wait": float(wait),
        }
    return {"kind": "local", "workers": workers or default_workers()}


def default_workers() -> int:
    """One worker per usable core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def slurm_cluster_kwargs(slurm: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` from the ``dask.slurm`` mapping.

    Every worker process gets one thread (``processes = cores``) and one BLAS thread (exported in
    the job script); the scheduler's dashboard listens on loopback only.
    """
    unknown = sorted(set(slurm) - set(SLURM_KEYS))
    if unknown:
        raise ConfigError(
            f"dask.slurm: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(SLURM_KEYS)}"
        )
    if not slurm.get("memory"):
        raise ConfigError("dask.slurm.memory is required (memory per job, e.g. 16GB)")
    kwargs = dict(slurm)
    cores = kwargs.setdefault("cores", 1)
    if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
        raise ConfigError(f"dask.slurm.cores must be a positive integer, got {cores!r}")
    processes = kwargs.setdefault("processes", cores)
    if processes != cores:
        raise ConfigError(
            f"dask.slurm.processes ({processes}) must equal cores ({cores}): infoplane runs one "
            "single-threaded worker process per core"
        )
    exports = [f"export {key}={value}" for key, value in BLAS_ENV.items()]
    kwargs["job_script_prologue"] = exports + list(kwargs.get("job_script_prologue") or [])
    kwargs["scheduler_options"] = {"dashboard_address": "127.0.0.1:0"}
    return kwargs


@contextlib.contextmanager
def dask_client(
    *,
    workers: int | None = None,
    scheduler_address: str | None = None,
    cluster_config: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """A ``distributed.Client`` on the cluster :func:`cluster_settings` chooses; always closed."""
    settings = cluster_settings(
        workers=workers, scheduler_address=scheduler_address, cluster_config=cluster_config
    )
    import dask
    from distributed import Client

    cluster = client = None
    try:
        if settings["kind"] == "address":
            log.info("connecting to the Dask scheduler at %s", settings["address"])
            client = Client(settings["address"])
        elif settings["kind"] == "slurm":
            try:
                from dask_jobqueue import SLURMCluster
            except ImportError:
                raise ConfigError(
                    "dask.cluster: slurm needs dask-jobqueue; pip install 'infoplane[workflow]'"
                ) from None
            from dask_jobqueue.slurm import SLURMJob

            failures: list[str] = []
            job_cls = recording_job_class(SLURMJob, failures)
            cluster = SLURMCluster(job_cls=job_cls, **settings["slurm"])
            cluster.scale(settings["workers"])
            log.info("SLURM cluster asked for %d workers", settings["workers"])
            client = Client(cluster)
            wait_for_first_worker(client, cluster, failures, timeout=settings["wait"])
        else:
            from distributed import LocalCluster

            environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
            environ.update(BLAS_ENV)
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                cluster = LocalCluster(
                    n_workers=settings["workers"],
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    # the scheduler's HTTP server (dashboard when bokeh is installed) listens
                    # on loopback only, on a free port
                    dashboard_address="127.0.0.1:0",
                )
            client = Client(cluster)
            if importlib.util.find_spec("bokeh") is not None:
                log.info("Dask dashboard (loopback only): %s", client.dashboard_link)
        yield client
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def recording_job_class(base: type, failures: list[str]) -> type:
    """A subclass of the dask-jobqueue job class ``base`` that appends to ``failures`` the error
    of every submission that fails (dask-jobqueue logs it and waits for the worker regardless)."""

    class RecordingJob(base):
        async def _submit_job(self, script_filename):
            try:
                return await super()._submit_job(script_filename)
            except RuntimeError as exc:  # dask-jobqueue: the command's exit code and stderr
                failures.append(submission_error(str(exc)))
                from distributed.core import Status

                self.status = Status.failed  # never started: closing the cluster skips it
                raise

    RecordingJob.__name__ = RecordingJob.__qualname__ = f"Recording{base.__name__}"
    return RecordingJob


def submission_error(text: str) -> str:
    """The submit command's stderr from dask-jobqueue's error text (all of it when absent)."""
    _, found, stderr = text.partition("stderr:\n")
    return (stderr if found and stderr.strip() else text).strip()


def wait_for_first_worker(
    client: Any, cluster: Any, failures: Sequence[str], *, timeout: float, poll: float = 0.5
) -> None:
    """Return once a worker has connected to ``cluster``'s scheduler; raise otherwise.

    Raises
    ------
    InfoplaneError
        When every worker job's submission failed (the message holds the submit command's
        error), or when no worker connected within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not client.scheduler_info(n_workers=-1)["workers"]:
        n_jobs, submitted = _job_ids(cluster)
        if failures and len(failures) >= n_jobs and not submitted:
            raise InfoplaneError(
                f"dask-jobqueue could not submit the worker jobs (every one of "
                f"{len(failures)} submissions failed): {failures[-1]}. Fix the dask.slurm "
                "settings of the cluster configuration"
            )
        if time.monotonic() > deadline:
            ids = ", ".join(submitted) or "none"
            detail = f"; last submission error: {failures[-1]}" if failures else ""
            raise InfoplaneError(
                f"no Dask worker connected within {timeout:g} s (worker jobs {ids}: see "
                f"`squeue --me` and the jobs' logs){detail}. Raise dask.wait if the jobs only "
                "wait in the queue"
            )
        time.sleep(poll)
    log.info("the first Dask worker connected")


def _job_ids(cluster: Any) -> tuple[int, list[str]]:
    """The number of worker jobs of a dask-jobqueue cluster and the ids of those submitted.

    Only ids leave this function: a job object referenced from a traceback would outlive the
    cluster's close, whose check of its jobs' states it then fails.
    """
    jobs = list(getattr(cluster, "workers", {}).values())
    return len(jobs), [str(job.job_id) for job in jobs if getattr(job, "job_id", None)]


@contextlib.contextmanager
def client_or(client: Any = None, **cluster: Any) -> Iterator[Any]:
    """The client to use: ``client`` itself, or one from :func:`dask_client` (closed after).

    ``cluster`` holds :func:`dask_client`'s keyword arguments (``workers``,
    ``scheduler_address``, ``cluster_config``); every stage that runs tasks gets its client here.
    """
    if client is not None:
        yield client
        return
    with dask_client(**cluster) as own:
        yield own


def run_tasks(
    client: Any,
    fn: Callable[..., Any],
    calls: Sequence[tuple],
    *,
    label: str,
    names: Sequence[str] | None = None,
    log_every: float = 10.0,
) -> list[Any]:
    """Run ``fn(*args)`` for every ``args`` in ``calls`` on the cluster; results in call order.

    Every task runs to its end even when another fails, so that finished work (written regions,
    computed points) is kept; the first failure is raised afterwards. Progress: a bar on a
    terminal, a log line every ``log_every`` seconds otherwise.
    """
    from distributed import as_completed

    if not calls:
        return []
    token = uuid.uuid4().hex[:8]
    names = names if names is not None else [str(i) for i in range(len(calls))]
    futures = [
        client.submit(fn, *args, key=f"{label}-{name}-{token}", pure=False)
        for args, name in zip(calls, names, strict=True)
    ]
    try:
        if sys.stderr.isatty():
            from distributed import progress, wait

            progress(futures)
            wait(futures)
        else:
            done, last = 0, time.monotonic()
            for _ in as_completed(futures):
                done += 1
                if time.monotonic() - last >= log_every or done == len(futures):
                    log.info("%s: %d/%d tasks finished", label, done, len(futures))
                    last = time.monotonic()
        failed = [(n, f) for n, f in zip(names, futures, strict=True) if f.status != "finished"]
        if failed:
            for name, future in failed[1:]:
                log.error("%s task %s failed: %r", label, name, future.exception())
            first_name, first = failed[0]
            if len(failed) > 1:
                log.error("%s: %d of %d tasks failed", label, len(failed), len(futures))
            first.result()  # re-raises the task's own exception, with its message
            raise InfoplaneError(
                f"{label} task {first_name} ended in state {first.status!r} without an error "
                "of its own (a worker lost?); finished work is kept, rerun the command"
            )
        return client.gather(futures)  # one round trip for every result
    finally:
        for future in futures:
            future.release()


# tasks per worker thread in each round: a step costs only tens of milliseconds, so one task per
# step would spend as much time in dispatch and result transfer as in the work itself
_TASKS_PER_THREAD = 2


def run_batch(fn: Any, calls: Sequence[tuple]) -> list[Any]:
    """Task: ``fn(*args)`` for every ``args`` in ``calls``, in order, in one worker call."""
    return [fn(*args) for args in calls]


def _batch_size(client: Any, n_calls: int) -> int:
    """Calls per task: about ``_TASKS_PER_THREAD`` tasks per worker thread; 1 without workers."""
    try:
        threads = sum(client.nthreads().values())
    except Exception:  # an unusual client (no scheduler query): keep one call per task
        threads = 0
    if threads <= 0:
        return 1
    return max(1, -(-n_calls // (_TASKS_PER_THREAD * threads)))


def run_batched(
    client: Any, fn: Any, calls: Sequence[tuple], *, label: str, names: Sequence[str]
) -> list[Any]:
    """:func:`run_tasks` over batches of consecutive calls; results per call, in call order."""
    size = _batch_size(client, len(calls))
    if size == 1:
        return run_tasks(client, fn, calls, label=label, names=names)
    starts = range(0, len(calls), size)
    batches = [(fn, list(calls[a : a + size])) for a in starts]
    batch_names = [
        names[a]
        if len(calls[a : a + size]) == 1
        else f"{names[a]}..{names[min(a + size, len(calls)) - 1]}"
        for a in starts
    ]
    results = run_tasks(client, run_batch, batches, label=label, names=batch_names)
    return [value for batch in results for value in batch]


def add_cluster_arguments(parser: Any) -> None:
    """The cluster options shared by the ``distances`` and ``estimate`` commands."""
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of the local cluster (default: one per core)",
    )
    group.add_argument(
        "--scheduler-address",
        default=None,
        help="use a running Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, else a local one)",
    )
    group.add_argument(
        "--cluster-config",
        default=None,
        metavar="FILE",
        help="YAML with a dask: mapping, e.g. {cluster: slurm, workers: 8, slurm: {...}}",
    )


def cluster_options(args: Any, fallback_config: Mapping[str, Any] | None = None) -> dict:
    """Keyword arguments of :func:`dask_client` from parsed command-line options."""
    config = read_cluster_config(args.cluster_config) if args.cluster_config else fallback_config
    options = {
        "workers": args.workers,
        "scheduler_address": args.scheduler_address,
        "cluster_config": config,
    }
    cluster_settings(**options)  # reject a bad cluster configuration before any work
    return options
