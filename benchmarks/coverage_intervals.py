"""Coverage of the per-point intervals of :mod:`infoplane.core.resample`, per quantity.

The matrix estimate depends on N, so the "truth" of a point is the mean of the same estimate
(same widths, same N) over many fresh probes drawn from a large pool. Each of ``--draws`` probes
then gets an interval at ``--level`` from ``--resamples`` resamples of its own samples; the
coverage is the share of probes whose interval contains the truth, with its Monte Carlo standard
error sqrt(c (1 − c) / draws). Pools:

  mixture  20,000 points of a 10-class Gaussian mixture in 20 dimensions; two layers
           T1 = tanh(X W1) (12 units) and T2 = tanh(T1 W2) (6 units), fixed random weights
  mnist    the 10,000 MNIST test images (pixels in [0, 1]) as X, a fixed random projection
           to 64 units through tanh as T1, and a second tanh layer of 10 units as T2

The widths are fixed per pool (the scale rule of thumb of the pool's spread, kept for every
probe): the interval is for the probe sample, given the widths.

    python benchmarks/coverage_intervals.py                       # both pools, both methods
    python benchmarks/coverage_intervals.py --pool mixture --n 100 --draws 400
    python benchmarks/coverage_intervals.py --quick               # a fast smoke run

Seeded (``--seed``): the same arguments print the same table.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np

from infoplane.core.distances import squared_distances
from infoplane.core.entropy import information_plane
from infoplane.core.kernels import gaussian_gram, label_gram
from infoplane.core.resample import (
    DEFAULT_FRACTION,
    INTERVAL_LAYER_KEYS,
    INTERVAL_STEP_KEYS,
    METHODS,
    plane_intervals,
)
from infoplane.core.widths import median_width

MNIST = Path("/work/shared/data/mnist/t10k-images-idx3-ubyte.gz")
MNIST_LABELS = Path("/work/shared/data/mnist/t10k-labels-idx1-ubyte.gz")


def mixture_pool(size: int, rng: np.random.Generator) -> tuple[np.ndarray, list, np.ndarray]:
    """X (size, 20), layers [T1 (size, 12), T2 (size, 6)] and labels of a Gaussian mixture."""
    centres = rng.normal(0.0, 1.5, size=(10, 20))
    y = rng.integers(0, 10, size)
    x = centres[y] + rng.normal(size=(size, 20))
    t1 = np.tanh(x @ rng.normal(0.0, 0.3, size=(20, 12)))
    t2 = np.tanh(t1 @ rng.normal(0.0, 0.8, size=(12, 6)))
    return x, [t1, t2], y


def _idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read(), dtype=np.uint8, offset=offset)


def mnist_pool(rng: np.random.Generator) -> tuple[np.ndarray, list, np.ndarray]:
    """X: the MNIST test pixels in [0, 1] (10000, 784); two fixed random tanh layers."""
    x = _idx(MNIST, 16).reshape(-1, 784).astype(np.float64) / 255.0
    y = _idx(MNIST_LABELS, 8).astype(np.int64)
    t1 = np.tanh((x - x.mean(axis=0)) @ rng.normal(0.0, 0.1, size=(784, 64)))
    t2 = np.tanh(t1 @ rng.normal(0.0, 0.25, size=(64, 10)))
    return x, [t1, t2], y


def scale_width(values: np.ndarray, rng: np.random.Generator) -> float:
    """A width of the pool's scale: the median heuristic on 500 of its points."""
    pick = values[rng.choice(len(values), 500, replace=False)]
    return float(median_width(squared_distances(pick)))


def probe_grams(pool, widths, rows):
    """Grams of X, the layers and Y on the probe ``rows``."""
    x, layers, y = pool
    gram_x = gaussian_gram(squared_distances(x[rows]), widths[0])
    gram_t = np.stack(
        [
            gaussian_gram(squared_distances(t[rows]), s)
            for t, s in zip(layers, widths[1:], strict=True)
        ]
    )
    return gram_x, gram_t, label_gram(y[rows])


def study(pool, *, n, draws, truth_draws, resamples, level, methods, seed, fraction) -> dict:
    """Coverage per method and quantity, with the truths and the mean interval widths."""
    rng = np.random.default_rng(seed)
    widths = [scale_width(v, rng) for v in (pool[0], *pool[1])]
    size = len(pool[2])
    keys = INTERVAL_STEP_KEYS + INTERVAL_LAYER_KEYS
    # the truth: the mean estimate over fresh probes of the same N
    sums = {key: 0.0 for key in keys}
    for _ in range(truth_draws):
        plane = information_plane(*probe_grams(pool, widths, rng.choice(size, n, False)))
        for key in keys:
            sums[key] = sums[key] + np.asarray(plane[key])
    truth = {key: sums[key] / truth_draws for key in keys}
    hits = {m: {key: 0 for key in keys} for m in methods}
    span = {m: {key: 0.0 for key in keys} for m in methods}
    for _ in range(draws):
        grams = probe_grams(pool, widths, rng.choice(size, n, False))
        plane = information_plane(*grams)
        for method in methods:
            bounds = plane_intervals(
                *grams, 1.0, plane, resamples=resamples, level=level,
                rng=np.random.default_rng(rng.integers(2**32)), method=method, fraction=fraction,
            )  # fmt: skip
            for key in keys:
                lo, hi = bounds[f"{key}_lo"], bounds[f"{key}_hi"]
                hits[method][key] = hits[method][key] + ((lo <= truth[key]) & (truth[key] <= hi))
                span[method][key] = span[method][key] + (hi - lo)
    return {"truth": truth, "hits": hits, "span": span, "widths": widths}


def print_table(name: str, found: dict, *, draws: int, level: float) -> None:
    """One row per method and quantity (layers as T1, T2): coverage ± its Monte Carlo error."""
    print(f"\npool {name}: widths σ_X = {found['widths'][0]:.3g}, σ_T = "
          + ", ".join(f"{s:.3g}" for s in found["widths"][1:]))  # fmt: skip
    print(f"{'method':<10} {'quantity':<8} {'truth':>8} {'coverage':>9} {'± MC se':>8} "
          f"{'mean width':>10}  (target {level:.0%}, accepted 85-95 %)")  # fmt: skip
    for method, hits in found["hits"].items():
        for key, count in hits.items():
            values = np.atleast_1d(count)
            for k, c in enumerate(values):
                label = (
                    key if values.size == 1 and key in INTERVAL_STEP_KEYS else f"{key}[T{k + 1}]"
                )
                cover = c / draws
                se = np.sqrt(cover * (1 - cover) / draws)
                truth = np.atleast_1d(found["truth"][key])[k]
                width = np.atleast_1d(found["span"][method][key])[k] / draws
                flag = "" if 0.85 <= cover <= 0.95 else "  <- outside"
                print(f"{method:<10} {label:<8} {truth:8.3f} {cover:9.3f} {se:8.3f} "
                      f"{width:10.3f}{flag}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", choices=("mixture", "mnist", "both"), default="both")
    parser.add_argument("--n", type=int, nargs="+", default=[100])
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--truth-draws", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=50)
    parser.add_argument("--level", type=float, default=0.9)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fraction", type=float, default=DEFAULT_FRACTION, help="subsample size / N"
    )
    parser.add_argument("--quick", action="store_true", help="60 draws, 200 truth draws")
    args = parser.parse_args()
    if args.quick:
        args.draws, args.truth_draws = 60, 200
    rng = np.random.default_rng(args.seed)
    pools = {}
    if args.pool in ("mixture", "both"):
        pools["mixture"] = mixture_pool(20_000, rng)
    if args.pool in ("mnist", "both"):
        if MNIST.exists():
            pools["mnist"] = mnist_pool(rng)
        else:
            print(f"{MNIST} not found: the mnist pool is skipped")
    for name, pool in pools.items():
        for n in args.n:
            start = time.perf_counter()
            found = study(
                pool, n=n, draws=args.draws, truth_draws=args.truth_draws,
                resamples=args.resamples, level=args.level, methods=args.methods, seed=args.seed,
                fraction=args.fraction,
            )  # fmt: skip
            title = f"{name}, N = {n}, B = {args.resamples}, subsample fraction {args.fraction}"
            print_table(title, found, draws=args.draws,
                        level=args.level)  # fmt: skip
            print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
