"""Cost of the per-point intervals (``uncertainty``) against a plain estimate, from one cache.

Store: :func:`infoplane.testing.make_store` with ``--n`` probe samples per split, ``--steps``
captured steps and four tanh layers (64, 32, 16 units and a 10-way output), inputs of 8×8;
its distance cache is computed once. Figures printed:

1. per point, no Dask, one BLAS thread, in process CPU time (what the work costs even when
   other jobs share the machine): :func:`infoplane.core.plane.estimate_step` (plain) and
   :func:`infoplane.core.resample.step_intervals` for each number of resamples B, with the
   ratio to the plain estimate and the cost per resample (medians over ``--repeats``);
2. one timed run (after a warm-up) of the whole estimate from the cache on an in-process
   cluster of one single-threaded worker, plain and with ``uncertainty: {resamples: B}``.

Nothing is asserted. Run::

    python benchmarks/bench_uncertainty.py                   # N = 100 and 200, B = 10, 50
    python benchmarks/bench_uncertainty.py --n 400 --resamples 20 --steps 4
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from timing import median_seconds

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


LAYERS = {"h1": (64,), "h2": (32,), "h3": (16,), "out": (10,)}
PRESET = "fixed-example"  # fixed widths: the cost of the entropies, no width search


def per_point(cache: Path, resamples: list[int], repeats: int) -> None:
    """Per-point times of the plain estimate and of the intervals (no Dask)."""
    from infoplane.core.plane import estimate_step
    from infoplane.core.resample import step_intervals
    from infoplane.io import cache as cache_io
    from infoplane.presets import resolve_preset

    plan = cache_io.read_cache_plan(cache, ["train"])
    point = cache_io.read_step(cache, "train", 0)
    preset = resolve_preset(None, PRESET)
    kwargs = {"layers": plan.layers, "dims": plan.dims, "dim_x": plan.dim_x}
    plain = estimate_step(point, preset, **kwargs)
    base = median_seconds(
        lambda: estimate_step(point, preset, **kwargs), repeats, time.process_time
    )
    n = point["y"].shape[0]
    print(f"\nper point (N = {n}, L = {len(plan.layers)}, one BLAS thread, CPU time)")
    print(f"  plain estimate          {base * 1e3:8.1f} ms")
    for b in resamples:
        spec = {**preset, "uncertainty": {"resamples": b, "level": 0.9, "seed": 0}}
        for method in ("subsample", "bootstrap"):
            spec["uncertainty"]["method"] = method
            took = median_seconds(
                lambda spec=spec: step_intervals(
                    point, spec, plain, split="train", step=0, dims=plan.dims
                ),
                repeats,
                time.process_time,
            )
            print(
                f"  intervals B = {b:<4} {method:<10} {took * 1e3:8.1f} ms  = "
                f"{took / base:5.1f} x plain, {took / b / base:5.3f} x plain per resample"
            )


def whole_estimate(cache: Path, resamples: list[int]) -> None:
    """Wall time of the whole estimate from the cache, plain and with intervals."""
    from distributed import Client, LocalCluster

    from infoplane.estimate.pipeline import estimate
    from infoplane.presets import resolve_preset

    preset = resolve_preset(None, PRESET)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        estimate(cache, preset, name="warm-up", client=client)
        start = time.perf_counter()
        estimate(cache, preset, name="plain", client=client)
        base = time.perf_counter() - start
        print(f"\nwhole estimate from the cache, one worker thread ({PRESET})")
        print(f"  plain                   {base:8.2f} s")
        for b in resamples:
            uncertain = {**preset, "uncertainty": {"resamples": b}}
            start = time.perf_counter()
            estimate(cache, uncertain, name="ci", client=client)
            took = time.perf_counter() - start
            print(f"  uncertainty B = {b:<4}     {took:8.2f} s  = {took / base:5.1f} x plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[100, 200])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--resamples", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from infoplane.estimate.distances import compute_distances
    from infoplane.testing import make_store

    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            store = make_store(
                Path(tmp) / "activations.zarr", n=n, layers=LAYERS, input_shape=(1, 8, 8),
                steps=tuple(range(0, 10 * args.steps, 10)),
            )  # fmt: skip
            cache = Path(tmp) / "distances.zarr"
            compute_distances(store, cache, workers=1)
            per_point(cache, args.resamples, args.repeats)
            whole_estimate(cache, args.resamples)


if __name__ == "__main__":
    main()
