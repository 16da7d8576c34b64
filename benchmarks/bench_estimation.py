"""Benchmark of the estimation stages on a synthetic VGG-16-shaped activation store.

Store: N = 100 probe samples (train split only), CIFAR-shaped inputs, the 13 conv maps of VGG-16
(64×32×32 … 512×2×2, before pooling), two 4096-unit FC layers and a softmax over 10 classes;
random ReLU activations, stored as float16 (half the disk of float32; the distance GEMMs read them
as float64 either way). Written with infoplane.io.store.create_store.

Figures printed (medians over --repeats):

1. the floor: reading every chunk of the store and the distance GEMMs, one process, no Dask,
   with one BLAS thread (what one worker does) and with the default BLAS threads;
2. ``distances`` with 1 and 2 worker processes (cluster started and warm), speedup, ratio to
   the one-thread floor;
3. the first full estimate (distances + ``paper``) against a second preset from the cache
   (``paper-alpha1.01``: the same alignment search, whose widths ``paper`` kept in the cache,
   and the same with ``keep_widths=False``, searching again; ``fixed-example``: no search);
4. peak memory (RSS of the client and all its worker processes, sampled every 50 ms) of
   distances + estimate with 2 workers, for stores of 20 and 80 steps.

Run:  .venv/bin/python benchmarks/bench_estimation.py  [--steps 20] [--memory-steps 20 80]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from timing import median_seconds

VGG16_LAYERS: dict[str, tuple[int, ...]] = {
    "conv1_1": (64, 32, 32),
    "conv1_2": (64, 32, 32),
    "conv2_1": (128, 16, 16),
    "conv2_2": (128, 16, 16),
    "conv3_1": (256, 8, 8),
    "conv3_2": (256, 8, 8),
    "conv3_3": (256, 8, 8),
    "conv4_1": (512, 4, 4),
    "conv4_2": (512, 4, 4),
    "conv4_3": (512, 4, 4),
    "conv5_1": (512, 2, 2),
    "conv5_2": (512, 2, 2),
    "conv5_3": (512, 2, 2),
    "fc1": (4096,),
    "fc2": (4096,),
    "softmax": (10,),
}
N = 100
CLASSES = 10


def write_vgg_store(path: Path, steps: int, *, dtype: str = "float16", seed: int = 0) -> Path:
    """A VGG-16-shaped store of ``steps`` captured steps of random ReLU activations."""
    from infoplane.io.store import create_store

    rng = np.random.default_rng(seed)
    writer = create_store(
        path,
        steps=list(range(0, steps * 100, 100)),
        epochs=[s / 5 for s in range(steps)],
        n_samples={"train": N},
        input_shape=(3, 32, 32),
        layer_shapes=VGG16_LAYERS,
        attrs={
            "experiment": "bench",
            "run": "seed0",
            "seed": seed,
            "model": "vgg16",
            "dataset": "synthetic",
            "config": {},
            "device": "cpu",
        },
        dtype=dtype,
        overwrite=True,
    )
    x = rng.random((N, 3, 32, 32), dtype=np.float32)
    y = np.arange(N) % CLASSES
    for step in writer.steps:
        activations = {}
        for name, shape in VGG16_LAYERS.items():
            if name == "softmax":
                logits = rng.standard_normal((N, *shape), dtype=np.float32)
                e = np.exp(logits - logits.max(axis=1, keepdims=True))
                activations[name] = e / e.sum(axis=1, keepdims=True)
            else:
                values = rng.standard_normal((N, *shape), dtype=np.float32)
                activations[name] = np.maximum(values, 0.0, out=values)
        writer.write("train", int(step), index=np.arange(N), x=x, y=y, activations=activations)
    return path


def floor_seconds(store: Path, blas_threads: int | None = None) -> float:
    """Read every captured chunk and compute every distance matrix in this one process."""
    import zarr
    from threadpoolctl import threadpool_limits

    from infoplane.core.distances import squared_distances

    with threadpool_limits(limits=blas_threads):
        return _floor(store, zarr, squared_distances)


def _floor(store: Path, zarr, squared_distances) -> float:
    start = time.perf_counter()
    group = zarr.open_group(str(store), mode="r")["train"]
    captured = np.flatnonzero(np.asarray(group["captured"][:]))
    for row in captured:
        for name in ["x", *VGG16_LAYERS]:
            squared_distances(np.asarray(group[name][row]))
    return time.perf_counter() - start


class PeakMemory:
    """Peak summed RSS of this process and all its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        import psutil

        self._root = psutil.Process(os.getpid())
        self._interval = interval
        self._stop = threading.Event()
        self.peak = 0
        self.peak_worker = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total, largest = 0, 0
            for process in [self._root, *self._root.children(recursive=True)]:
                try:
                    rss = process.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                if process.pid != self._root.pid:
                    largest = max(largest, rss)
            self.peak = max(self.peak, total)
            self.peak_worker = max(self.peak_worker, largest)
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _warm_up() -> None:
    """Import the estimation stack in a worker before anything is timed."""
    import infoplane.core.entropy
    import infoplane.core.plane
    import infoplane.core.widths
    import infoplane.estimate.pipeline
    import infoplane.io.cache  # noqa: F401


def _cpu_seconds() -> float:
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def timed_on_workers(client, fn, repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU seconds the workers spent, over ``repeats`` runs."""
    walls, cpus = [], []
    for _ in range(repeats):
        before = sum(client.run(_cpu_seconds).values())
        start = time.perf_counter()
        fn()
        walls.append(time.perf_counter() - start)
        cpus.append(sum(client.run(_cpu_seconds).values()) - before)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps of the timing store")
    parser.add_argument("--memory-steps", type=int, nargs="+", default=[20, 80])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    from infoplane.estimate.cluster import dask_client
    from infoplane.estimate.distances import compute_distances
    from infoplane.estimate.pipeline import estimate
    from infoplane.presets import resolve_preset

    work = Path(args.workdir or tempfile.mkdtemp(prefix="infoplane-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        store = write_vgg_store(work / "activations.zarr", args.steps, dtype=args.dtype)
        size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file())
        features = sum(int(np.prod(s)) for s in VGG16_LAYERS.values())
        print(
            f"store: N={N}, {args.steps} steps, {len(VGG16_LAYERS)} layers, "
            f"{features:,} features/sample, {args.dtype}, {size / 2**30:.2f} GiB on disk, "
            f"written in {time.perf_counter() - start:.1f} s"
        )
        print(f"load average before: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
        floor = median_seconds(lambda: floor_seconds(store, 1), args.repeats)
        floor_all = median_seconds(lambda: floor_seconds(store), args.repeats)
        print(
            f"floor (read + distance GEMMs, 1 process): {floor:.2f} s with 1 BLAS thread, "
            f"{floor_all:.2f} s with the default BLAS threads"
        )

        cache = work / "distances.zarr"
        paper = resolve_preset(None, "paper")
        second = resolve_preset(None, "paper-alpha1.01")
        fixed = resolve_preset(None, "fixed-example")
        wall, cpu = {}, {}
        for workers in (1, 2):
            started = time.perf_counter()
            with dask_client(workers=workers) as client:
                startup = time.perf_counter() - started
                client.run(_warm_up)
                wall[workers], cpu[workers] = timed_on_workers(
                    client,
                    lambda c=client: compute_distances(store, cache, overwrite=True, client=c),
                    args.repeats,
                )
                if workers == 2:
                    first = median_seconds(
                        lambda c=client: (
                            compute_distances(store, cache, overwrite=True, client=c),
                            estimate(cache, paper, name="paper", client=c),
                        ),
                        args.repeats,
                    )
                    # the widths `paper` kept in the cache, then a search of its own
                    again = median_seconds(
                        lambda c=client: estimate(cache, second, name="alpha", client=c),
                        args.repeats,
                    )
                    again_search = median_seconds(
                        lambda c=client: estimate(
                            cache, second, name="alpha", client=c, keep_widths=False
                        ),
                        args.repeats,
                    )
                    again_fixed = median_seconds(
                        lambda c=client: estimate(cache, fixed, name="fixed", client=c),
                        args.repeats,
                    )
            print(
                f"distances, {workers} worker(s): {wall[workers]:.2f} s "
                f"({wall[workers] / floor:.2f}x the floor; cluster start {startup:.1f} s); "
                f"worker CPU {cpu[workers]:.2f} s = {cpu[workers] / wall[workers]:.2f} cores "
                "busy on average"
            )
        print(f"speedup 1 -> 2 workers: {wall[1] / wall[2]:.2f}x")
        print(
            f"first full estimate (distances + paper, 2 workers): {first:.2f} s; "
            f"second preset from the cache: paper-alpha1.01 {again:.2f} s with the kept widths "
            f"(ratio {first / again:.1f}x), {again_search:.2f} s searching again "
            f"(ratio {first / again_search:.1f}x); fixed-example {again_fixed:.2f} s "
            f"(ratio {first / again_fixed:.1f}x)"
        )

        for steps in args.memory_steps:
            path = write_vgg_store(work / f"memory{steps}.zarr", steps, dtype=args.dtype)
            memory_cache = work / f"memory{steps}-distances.zarr"
            with dask_client(workers=2) as client, PeakMemory() as peak:
                compute_distances(path, memory_cache, overwrite=True, client=client)
                estimate(memory_cache, paper, name="paper", client=client)
            print(
                f"peak RSS, {steps} steps (distances + paper, 2 workers): "
                f"{peak.peak / 2**20:.0f} MiB in all, "
                f"largest worker {peak.peak_worker / 2**20:.0f} MiB"
            )
            shutil.rmtree(path)
            shutil.rmtree(memory_cache)
        print(f"load average after: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
