"""Benchmark of large probe sets: the distance cache and the width search at N = 1k … 10k.

One captured step of the paper's MLP shapes (784-1024-20-20-20-10: inputs, layers fc1 … fc4 and
the softmax; synthetic ``tanh`` activations written by :func:`infoplane.testing.make_store`),
train probe of N samples. For every N, side by side:

  distances   the distance stage on the step (``compute_distances``, one single-threaded worker):
              wall time and cache size, before (``store: full``, every matrix float64 as the
              cache of format 2 keeps it) and after (``store: auto``, the forms it chose)
  search      the alignment width search (paper's linear grid, G = 100, and the log grid) of the
              1024-d and a 20-d layer on their distances: before (the whole grid scored exactly,
              EXACT_SEARCH_MAX_N lifted) and after (sampled pairs, then exact scores of a window)
  point       the width-search task of one point read from the cache (every layer): wall time
              and peak traced memory (tracemalloc, numpy's buffers included), before (the whole
              (L, N, N) stack read, as before) and after (one layer at a time, from ``auto``)
  model       the per-entry costs the storage cost model of ``auto`` assumes, measured here

Figures are printed, nothing is asserted.

    python benchmarks/bench_large_inputs.py                 # N = 1000, 2000, 5000
    python benchmarks/bench_large_inputs.py --n 10000       # one size
    python benchmarks/bench_large_inputs.py --quick         # N = 1000 only, search only
    python benchmarks/bench_large_inputs.py --only search   # the width search alone

Run with ``OMP_NUM_THREADS=1`` for the figures of one single-threaded worker.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from infoplane.core import widths
from infoplane.core.distances import pack_upper, squared_distances, unpack_upper
from infoplane.core.kernels import label_gram
from infoplane.estimate.distances import PointDistances, compute_distances
from infoplane.estimate.pipeline import plan_source, search_widths_task
from infoplane.io import cache
from infoplane.testing import make_store

LAYERS = {"fc1": (1024,), "fc2": (20,), "fc3": (20,), "fc4": (20,), "softmax": (10,)}
INPUT = (784,)
RULE = {"rule": "alignment", "grid": "linear", "points": 100}


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def peak_mb(fn):
    tracemalloc.start()
    try:
        seconds, _ = timed(fn)
        return seconds, tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def exact_search(d2, gram_y, grid):
    """The search as before: every width of the grid scored over every pair."""
    saved = widths.EXACT_SEARCH_MAX_N
    widths.EXACT_SEARCH_MAX_N = 1 << 62
    try:
        return widths.alignment_width(d2, gram_y, grid=grid, points=100)[0]
    finally:
        widths.EXACT_SEARCH_MAX_N = saved


def bench_search(n: int, rng: np.random.Generator) -> None:
    for dim in (1024, 20):
        y = rng.integers(0, 10, n)
        centres = rng.normal(size=(10, dim))
        x = np.tanh(0.5 * centres[y] + rng.normal(size=(n, dim)))
        search_layer(squared_distances(x), label_gram(y), n, dim)


def search_layer(d2: np.ndarray, gram_y: np.ndarray, n: int, dim: int) -> None:
    for grid in ("linear", "log"):
        before, s_before = timed(lambda grid=grid: exact_search(d2, gram_y, grid))
        after, s_after = timed(
            lambda grid=grid: widths.alignment_width(d2, gram_y, grid=grid, points=100)[0]
        )
        g = widths.width_grid(d2, grid, 100)
        scores = widths.alignment_scores(d2, gram_y, g)
        mine = scores[np.flatnonzero(g == s_after)[0]]
        print(
            f"  search  N={n:>5} D={dim:>4} {grid:<6}  before {before:6.2f} s  "
            # the grids differ in their last bits (the mean distance is summed by row blocks)
            f"after {after:6.2f} s  same grid point: {abs(s_after / s_before - 1) < 1e-12}  "
            f"alignment loss {1 - mine / scores.max():.1e}"
        )


def bench_model(n: int, rng: np.random.Generator, work: Path) -> None:
    d2 = None
    for dim in (20, 1024):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        squared_distances(x)  # once, so that the timed calls find their memory mapped
        seconds, d2 = min(timed(lambda x=x: squared_distances(x)) for _ in range(2))
        print(f"  model   N={n:>5} distances of D={dim:<4}: {seconds / n / n * 1e9:6.1f} ns/entry")
    packed = pack_upper(d2)
    unpack_upper(packed, n)
    seconds = min(timed(lambda: unpack_upper(packed, n))[0] for _ in range(2))
    print(f"  model   N={n:>5} unpack float32: {seconds / n / n * 1e9:6.1f} ns/entry")


def bench_cache(n: int, work: Path, client) -> None:
    store = make_store(
        work / f"s{n}.zarr", n={"train": n, "test": 100}, steps=(0,), layers=LAYERS,
        input_shape=INPUT,
    )  # fmt: skip
    made = {}
    for label, form in (("before", "full"), ("after", "auto")):
        out = work / f"d{n}-{form}.zarr"
        seconds, _ = timed(
            lambda out=out, form=form: compute_distances(
                store, out, splits=["train"], storage=form, client=client
            )
        )
        forms = cache.storage_of(out)
        print(
            f"  cache   N={n:>5} {label:<6} ({form}): {seconds:7.1f} s  {size_mb(out):9.1f} MB  "
            + ", ".join(f"{k}={v}" for k, v in forms.items())
        )
        made[form] = out

    point = PointDistances(
        tuple(LAYERS), cache_path=str(made["auto"]), store=str(store), split="train", index=0,
        row=0,
    )  # fmt: skip
    for k, name in enumerate(LAYERS):
        seconds = min(timed(lambda k=k: point[k])[0] for _ in range(2))
        print(
            f"  read    N={n:>5} {name:<7} ({point.storage[name]}): "
            f"{seconds / n / n * 1e9:6.1f} ns/entry"
        )

    def before():
        data = cache.read_step(made["full"], "train", 0)
        gram_y = label_gram(data["y"])
        saved = widths.EXACT_SEARCH_MAX_N
        widths.EXACT_SEARCH_MAX_N = 1 << 62
        try:
            widths.alignment_width(data["d2"], gram_y, grid="linear", points=100)
        finally:
            widths.EXACT_SEARCH_MAX_N = saved

    def after():
        src = plan_source(made["auto"])[0]
        search_widths_task(src, "train", 0, RULE)

    for label, fn in (("before", before), ("after", after)):
        seconds, peak = peak_mb(fn)
        print(f"  point   N={n:>5} {label:<6} search task: {seconds:7.1f} s  peak {peak:8.0f} MB")
    for path in made.values():
        shutil.rmtree(path)
    shutil.rmtree(store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 2000, 5000])
    parser.add_argument("--quick", action="store_true", help="N = 1000, the search only")
    parser.add_argument("--only", choices=("search", "cache"), help="one part of the benchmark")
    args = parser.parse_args()
    sizes = [1000] if args.quick else args.n
    rng = np.random.default_rng(0)
    from distributed import Client

    work = Path(tempfile.mkdtemp(prefix="bench-large-"))
    try:
        with Client(processes=False, n_workers=1, threads_per_worker=1) as client:
            warm = make_store(work / "warm.zarr", n=20, steps=(0,))
            compute_distances(warm, work / "warm-d.zarr", client=client)  # imports, first task
            for n in sizes:
                if args.only != "cache":
                    bench_search(n, rng)
                if not args.quick and args.only != "search":
                    bench_model(n, rng, work)
                    bench_cache(n, work, client)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
