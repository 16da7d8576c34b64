"""Benchmark of the numerical core on one captured step of VGG-16-shaped activations.

One step of the full information-plane computation: squared distances of the input and of all
16 recorded layers (13 conv maps, two 4096 FC layers, the 10-way softmax), alignment widths on
the paper's linear grid (G = 100), the 3L + 2 entropies and both MI coordinates of every layer.
Three things are timed in the same run:

  ours      infoplane: blockwise float64 SYRK distances, O(G·N²) alignment, batched eigvalsh
  original  a re-implementation of the authors' per-iteration algorithm in torch float32
            (broadcast ``x[:, None] - x`` distances, one N×N matrix product per grid point,
            one ``eigh`` with eigenvectors per entropy, |λ| as in the original)
  floor     the distance GEMMs alone: float64 ``x @ x.T`` of every flattened layer

Figures are medians over repeats of wall-clock and process-CPU time (with one thread the CPU
time is what the work costs even when other jobs share the machine); nothing is asserted.

    python benchmarks/bench_core.py                  # N = 100 with all three, then N = 1000
    python benchmarks/bench_core.py --quick          # a fast smoke run
    python benchmarks/bench_core.py --original rows  # broadcast one row i at a time
    python benchmarks/bench_core.py --threads 1      # one BLAS thread, as a Dask worker
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from infoplane.core.distances import squared_distances
from infoplane.core.entropy import information_plane
from infoplane.core.kernels import gaussian_gram, label_gram
from infoplane.core.widths import alignment_width

CONV_SHAPES = [(64, 32, 32)] * 2 + [(128, 16, 16)] * 2 + [(256, 8, 8)] * 3 + [(512, 4, 4)] * 3
CONV_SHAPES += [(512, 2, 2)] * 3
LAYER_SHAPES = [*CONV_SHAPES, (4096,), (4096,), (10,)]
INPUT_SHAPE = (3, 32, 32)
CLASSES = 10
SIGMA_X = 8.0
GRID_POINTS = 100


# --------------------------------------------------------------------------------------------
# data


def make_step(n: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Input in [0, 1], ReLU activations with a weak class signal, softmax outputs; float32."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    x = rng.random((n, *INPUT_SHAPE), dtype=np.float32)
    acts = []
    for shape in LAYER_SHAPES[:-1]:
        dim = int(np.prod(shape))
        signal = rng.standard_normal((CLASSES, dim), dtype=np.float32)
        a = rng.standard_normal((n, dim), dtype=np.float32)
        a += 0.5 * signal[y]
        np.maximum(a, 0, out=a)
        acts.append(a.reshape(n, *shape))
    logits = 2.0 * np.eye(CLASSES, dtype=np.float32)[y] + rng.standard_normal((n, CLASSES))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    acts.append((e / e.sum(axis=1, keepdims=True)).astype(np.float32))
    return x, acts, y


# --------------------------------------------------------------------------------------------
# ours


class Clock:
    """Wall and process-CPU seconds per named phase, appended to ``phases``."""

    def __init__(self, phases: dict) -> None:
        self.phases = phases
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.phases.setdefault(name, []).append((wall - self.wall, cpu - self.cpu))
        self.wall, self.cpu = wall, cpu


def ours_step(x: np.ndarray, acts: list[np.ndarray], y: np.ndarray, phases: dict) -> dict:
    clock = Clock(phases)
    gram_y = label_gram(y)
    d2_x = squared_distances(x)
    d2_layers = [squared_distances(a) for a in acts]
    clock.lap("distances")
    sigmas = [alignment_width(d2, gram_y, grid="linear", points=GRID_POINTS)[0] for d2 in d2_layers]
    clock.lap("alignment")
    gram_x = gaussian_gram(d2_x, SIGMA_X)
    grams = [gaussian_gram(d2, s) for d2, s in zip(d2_layers, sigmas, strict=True)]
    clock.lap("grams")
    ip = information_plane(gram_x, grams, gram_y, alpha=1.0)
    clock.lap("entropies")
    ip["sigma"] = np.array(sigmas)
    return ip


# --------------------------------------------------------------------------------------------
# the original per-iteration algorithm (torch, float32), re-implemented from its description


def original_step(x, acts, y, phases: dict, mode: str) -> dict:
    import torch

    def dist(a: torch.Tensor) -> torch.Tensor:
        a = a.reshape(a.shape[0], -1)
        if mode == "full":  # the N × N × D difference tensor at once
            return torch.norm(a[:, None] - a, dim=2, p=2)
        # one row i at a time: the N × D differences of row i are still materialised
        return torch.stack([torch.norm(a[i] - a, dim=1, p=2) for i in range(a.shape[0])])

    def kernel(d: torch.Tensor, sigma) -> torch.Tensor:
        return torch.exp(-(d**2) / sigma**2)

    def alignment_sigma(d: torch.Tensor, k_y: torch.Tensor) -> torch.Tensor:
        grid = torch.linspace(0.3, 10 * d.mean().item(), GRID_POINTS)
        scores = []
        for sigma in grid:
            k_l = kernel(d, sigma) / d.shape[0]
            score = 2 * torch.log2(
                torch.trace(torch.matmul(k_l, k_y)) / (torch.norm(k_l) * torch.norm(k_y))
            )
            scores.append(score.item())
        return grid[scores.index(max(scores))]

    def entropy(*grams: torch.Tensor) -> torch.Tensor:
        k = grams[0].clone()
        for g in grams[1:]:
            k *= g
        k = k / k.trace()
        eigv = torch.linalg.eigh(k)[0].abs()
        return -(eigv * eigv.log2()).sum()

    with torch.no_grad():
        clock = Clock(phases)
        xt = torch.from_numpy(x)
        onehot = torch.nn.functional.one_hot(torch.from_numpy(y), CLASSES).float()
        k_x = kernel(dist(xt), SIGMA_X)
        k_y = kernel(dist(onehot), 0.1)
        d_layers = [dist(torch.from_numpy(a)) for a in acts]
        clock.lap("distances")
        sigmas = [alignment_sigma(d, k_y) for d in d_layers]
        k_layers = [kernel(d, s) for d, s in zip(d_layers, sigmas, strict=True)]
        clock.lap("alignment")
        e_list = [entropy(k) for k in [k_x, *k_layers, k_y]]
        j_xt = [entropy(k_x, k) for k in k_layers]
        j_ty = [entropy(k, k_y) for k in k_layers]
        clock.lap("entropies")
    h_x, h_t, h_y = e_list[0], e_list[1:-1], e_list[-1]
    return {
        "I_XT": np.array([float(h_x + t - j) for t, j in zip(h_t, j_xt, strict=True)]),
        "I_TY": np.array([float(h_y + t - j) for t, j in zip(h_t, j_ty, strict=True)]),
        "sigma": np.array([float(s) for s in sigmas]),
    }


# --------------------------------------------------------------------------------------------
# the GEMM floor


def floor_step(x: np.ndarray, acts: list[np.ndarray], phases: dict) -> None:
    """The distance GEMMs alone; the float64 copies are made outside the timed sections."""
    total_wall = total_cpu = 0.0
    for a in [x, *acts]:
        flat = np.ascontiguousarray(a.reshape(a.shape[0], -1), dtype=np.float64)
        wall, cpu = time.perf_counter(), time.process_time()
        _ = flat @ flat.T
        total_wall += time.perf_counter() - wall
        total_cpu += time.process_time() - cpu
        del flat
    phases.setdefault("gemm", []).append((total_wall, total_cpu))


# --------------------------------------------------------------------------------------------
# driver


def total(phases: dict) -> tuple[float, float]:
    """Median over repeats of the summed phases: (wall, cpu) seconds."""
    per_repeat = np.sum([np.array(v) for v in phases.values()], axis=0)  # (repeats, 2)
    return float(np.median(per_repeat[:, 0])), float(np.median(per_repeat[:, 1]))


def describe(phases: dict) -> str:
    """Median wall/cpu milliseconds of each phase."""
    parts = []
    for name, samples in phases.items():
        wall, cpu = np.median(np.array(samples), axis=0) * 1e3
        parts.append(f"{name} {wall:.0f}/{cpu:.0f}")
    return ", ".join(parts)


def run_size(n: int, repeats: int, original_repeats: int, mode: str | None) -> None:
    """Time ours and the floor, interleaved repeat by repeat so that changes in the machine's
    load hit both alike, then (optionally) the original."""
    t0 = time.perf_counter()
    x, acts, y = make_step(n)
    features = sum(int(np.prod(a.shape[1:])) for a in [x, *acts])
    print(
        f"\n== N = {n}: {len(acts)} layers + input, {features} features in all "
        f"(data made in {time.perf_counter() - t0:.1f} s)"
    )
    ours_step(x, acts, y, {})  # warm-up: imports, BLAS thread pools, caches
    ours: dict = {}
    floor: dict = {}
    orig: dict = {}
    ip = ip_orig = None
    for _ in range(repeats):
        ip = ours_step(x, acts, y, ours)
        floor_step(x, acts, floor)
    # The original runs after, not between: torch's OpenMP threads keep spinning for a while
    # after each parallel region and would steal the cores from the BLAS threads.
    for _ in range(original_repeats if mode is not None else 0):
        ip_orig = original_step(x, acts, y, orig, mode)
    (w_ours, c_ours), (w_floor, c_floor) = total(ours), total(floor)
    print("medians      wall ms      cpu ms")
    print(f"ours      {w_ours * 1e3:10.1f}  {c_ours * 1e3:10.1f}   (wall/cpu ms: {describe(ours)})")
    print(f"floor     {w_floor * 1e3:10.1f}  {c_floor * 1e3:10.1f}   (float64 x @ x.T per layer)")
    print(f"ratio ours / floor: wall {w_ours / w_floor:.2f}, cpu {c_ours / c_floor:.2f}")
    if mode is None:
        return
    w_orig, c_orig = total(orig)
    print(
        f"original  {w_orig * 1e3:10.1f}  {c_orig * 1e3:10.1f}   ({mode} broadcast, float32; "
        f"wall/cpu ms: {describe(orig)})"
    )
    print(f"speedup ours vs original: wall {w_orig / w_ours:.0f}x, cpu {c_orig / c_ours:.0f}x")
    same = np.isclose(ip["sigma"], ip_orig["sigma"], rtol=1e-3)
    diff = np.abs(ip["I_XT"] - ip_orig["I_XT"])[same].max(initial=0.0)
    diff_y = np.abs(ip["I_TY"] - ip_orig["I_TY"])[same].max(initial=0.0)
    print(
        f"agreement: same grid width in {same.sum()}/{same.size} layers; there "
        f"max |ΔI(X;T)| = {diff:.1e}, max |ΔI(T;Y)| = {diff_y:.1e} bits "
        "(float32 original vs float64)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="probe size with the original (100)")
    parser.add_argument(
        "--large-n", type=int, default=1000, help="second size, no original; 0 skips"
    )
    parser.add_argument("--repeats", type=int, default=5, help="repeats for ours and the floor")
    parser.add_argument("--original-repeats", type=int, default=3)
    parser.add_argument(
        "--original",
        choices=("full", "rows", "none"),
        default="full",
        help="broadcast the whole N×N×D difference (full, float32, as the "
        "original) or one row at a time (rows); none skips it",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="limit BLAS/OpenMP and torch threads (1 = a Dask worker's setting); 0 leaves them",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 repeat, original by rows, large N = 300"
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.original_repeats, args.large_n = 1, 1, min(args.large_n, 300)
        args.original = "rows" if args.original == "full" else args.original

    import torch

    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)
    print("infoplane numerical core benchmark: one captured step, VGG-16 shapes")
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
        f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
    )
    try:
        from threadpoolctl import threadpool_info

        blas = {(i["internal_api"], i.get("num_threads")) for i in threadpool_info()}
        print(f"BLAS pools: {sorted(blas)}")
    except ImportError:
        pass
    print(
        f"load average at start: {os.getloadavg()[0]:.2f} (other work on the machine skews times)"
    )
    run_size(
        args.n,
        args.repeats,
        args.original_repeats,
        None if args.original == "none" else args.original,
    )
    if args.large_n:
        run_size(args.large_n, args.repeats, 0, None)
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
