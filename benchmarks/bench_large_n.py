"""Benchmark of one information-plane step at large N: randomized against exact spectra.

The paper's MLP shapes (784-1024-20-20-20-10, tanh, softmax output; random weights) on the real
MNIST test set when it is present (``--mnist DIR``, default ``../shared/data/mnist``; its 10,000
images give N up to 10⁴) or on a synthetic 10-class mixture of the same shapes. One captured
step with a train probe of N samples (and a test probe of 200 of them), each N in a fresh
process whose peak memory (maximum RSS) is reported:

  step       the pipeline on that step, as the workflow runs it: ``compute_distances`` into a
             distance cache (``storage: auto``) and ``estimate`` with the ``paper-alpha1.01``
             preset (alignment widths on the paper's grid of 100, every entropy, both MI) and
             its default ``spectrum`` (``auto``: exact up to 3,000 rows, randomized above), on
             a local Dask cluster of 2 single-threaded workers
  exact      the same estimate with ``spectrum: {method: exact}`` (run at N <= --exact-max;
             above, one N×N ``eigvalsh`` is timed and multiplied by the step's 2L + 1 dense
             spectra, and added to the randomized step's time without its spectra)
  accuracy   every dense entropy of the train split (H_X, H_T and H_XT of every layer) by the
             randomized method against ``eigvalsh`` on the same matrices (N <= --exact-max):
             the relative error, and whether the exact value lies inside the reported error
             bar. H_Y and H_TY are exact in both (the label kernel is block-diagonal; its
             blocks are decomposed one by one)

Figures are printed; nothing is asserted.

    python benchmarks/bench_large_n.py                       # N = 1,000, 2,000, 5,000, 10,000
    python benchmarks/bench_large_n.py --sizes 1000 2000     # a quick run
    python benchmarks/bench_large_n.py --sizes 5000 --rank 32 --steps 20   # other settings
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
HIDDEN = (1024, 20, 20, 20)
CLASSES = 10
ALPHA = 1.01  # the paper's scripts' α (α = 1 takes the same route)


def _inputs(n: int, mnist: Path | None, seed: int = 0):
    """(x (n, 784) in [0, 1], labels (n,)): the first n MNIST test images, or a mixture."""
    import numpy as np

    if mnist is not None and (mnist / "t10k-images-idx3-ubyte.gz").is_file():
        from infoplane.train.datasets import load_dataset

        data = load_dataset("mnist", path=str(mnist), source="t10k", normalize="unit")
        # every one of the 10,000 images, whichever split the loader put it in
        x = np.concatenate([data.x_train, data.x_test]).reshape(-1, 784).astype(np.float64)
        return x[:n], np.concatenate([data.y_train, data.y_test])[:n]
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    centers = rng.random((CLASSES, 784))
    x = np.clip(centers[y] + 0.3 * rng.standard_normal((n, 784)), 0, 1)
    return x, y


def _layers(x, seed: int = 0):
    """Activations of a random-weight tanh MLP 784-1024-20-20-20-10 with a softmax output."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out, h = [], x
    for width in (*HIDDEN, CLASSES):
        w = rng.standard_normal((h.shape[1], width)) * np.sqrt(2.0 / (h.shape[1] + width))
        h = h @ w
        if width == CLASSES:
            h = np.exp(h - h.max(axis=1, keepdims=True))
            h /= h.sum(axis=1, keepdims=True)
        else:
            h = np.tanh(h)
        out.append(h)
    return out


def _store(path: Path, n: int, mnist: Path | None) -> tuple[Path, list[str]]:
    """An activation store of one captured step: train probe N, test probe 200."""
    import numpy as np

    from infoplane.testing import make_store

    x, y = _inputs(n, mnist)
    acts = _layers(x)
    names = [f"layer{i + 1}" for i in range(len(acts))]
    # the test probe: 200 of the same samples (the MNIST test set holds 10,000 in all)
    rows = {"train": slice(0, n), "test": slice(0, 200)}

    def data(split: str, step: int) -> dict:
        at = rows[split]
        return {
            "index": np.arange(at.start, at.stop),
            "x": x[at].astype(np.float32),
            "y": y[at],
            "activations": {m: a[at].astype(np.float32) for m, a in zip(names, acts, strict=True)},
        }

    layers = {m: (a.shape[1],) for m, a in zip(names, acts, strict=True)}
    store = make_store(
        path, n={"train": n, "test": 200}, steps=(0,), layers=layers, input_shape=(784,),
        data=data,
    )  # fmt: skip
    return store, names


def _estimate(
    cache: Path, store: Path, preset: dict, client, device: str = "cpu"
) -> tuple[object, float]:
    from infoplane.estimate.pipeline import estimate

    start = time.perf_counter()
    result = estimate(
        cache, preset, name="bench", store=store, client=client, keep_widths=False, device=device
    )  # fmt: skip
    return result, time.perf_counter() - start


def one(
    n: int,
    mnist: Path | None,
    exact_max: int,
    workdir: Path,
    device: str = "cpu",
    settings: dict | None = None,
) -> dict:
    """Measure one N (run in its own process)."""
    import numpy as np
    from distributed import Client, LocalCluster

    from infoplane.core import spectra
    from infoplane.core.entropy import renyi_entropy
    from infoplane.core.kernels import gaussian_gram
    from infoplane.estimate.distances import compute_distances
    from infoplane.io import cache as cache_io
    from infoplane.presets import resolve_preset, spectrum_of

    store, names = _store(workdir / f"n{n}" / "activations.zarr", n, mnist)
    preset = resolve_preset(None, "paper-alpha1.01")
    if settings:  # spectrum settings other than the defaults (probes, rank, steps)
        preset = {**preset, "spectrum": {**spectrum_of(preset), **settings}}
    report: dict = {"n": n, "source": "mnist" if mnist else "synthetic", "device": device}
    report["spectrum"] = {k: spectrum_of(preset)[k] for k in ("probes", "rank", "steps")}
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as client,
    ):
        cache = workdir / f"n{n}" / "distances.zarr"
        start = time.perf_counter()
        compute_distances(store, cache, client=client)
        report["distances_s"] = time.perf_counter() - start
        report["cache_mb"] = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 1e6
        report["storage"] = cache_io.storage_of(str(cache))
        result, report["estimate_s"] = _estimate(cache, store, preset, client, device)
        report["step_s"] = report["distances_s"] + report["estimate_s"]
        report["randomized"] = "spectral_error" in result
        if report["randomized"]:
            report["largest_error_bar"] = float(result["spectral_error"].max())
        if n <= exact_max:
            exact_preset = {**preset, "spectrum": {**spectrum_of(preset), "method": "exact"}}
            exact, report["exact_estimate_s"] = _estimate(
                cache, store, exact_preset, client, device
            )  # fmt: skip
            report["exact_step_s"] = report["distances_s"] + report["exact_estimate_s"]
            report["max_rel_error_result"] = max(
                float(np.nanmax(np.abs(result[k] - exact[k]) / np.abs(exact[k])))
                for k in ("H_X", "H_T", "H_XT", "H_TY", "H_Y")
            )
    report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    # the train split's dense matrices one at a time, exact against randomized, with the
    # widths the estimate used
    train = result.sel(split="train").isel(step=0)
    lanczos = {**spectrum_of(preset), "method": "lanczos"}
    from infoplane.estimate.distances import load_point

    point = load_point("cache", str(cache), str(store), "train", 0, 0, names)
    gram_x = gaussian_gram(point["d2_x"], float(train["sigma_x"]))
    dense = [("H_X", lambda: (gram_x, None))]
    for i, name in enumerate(names):
        sigma = float(train["sigma"].sel(layer=name))
        dense.append((f"H_T {name}", lambda i=i, s=sigma: (gaussian_gram(point["d2"][i], s), None)))
        dense.append(
            (f"H_XT {name}", lambda i=i, s=sigma: (gaussian_gram(point["d2"][i], s), gram_x))
        )  # fmt: skip
    rows, exact_s, randomized_s = [], 0.0, 0.0
    for k, (label, make) in enumerate(dense):
        if n > exact_max and k > 0:
            break
        gram, other = make()
        start = time.perf_counter()
        got = spectra._randomized(gram, other, ALPHA, lanczos, [0, k])
        randomized_s += time.perf_counter() - start
        # the same probes with float64 products: what float32 costs in accuracy
        double = spectra._randomized(gram, other, ALPHA, {**lanczos, "dtype": "float64"}, [0, k])
        matrix = gram if other is None else gram * other
        del gram
        start = time.perf_counter()
        truth = float(renyi_entropy(matrix, ALPHA))
        exact_s += time.perf_counter() - start
        del matrix
        rows.append(
            {
                "entropy": label, "exact": truth, "randomized": got.value, "bar": got.error,
                "rel_error": abs(got.value - truth) / truth,
                "covered": bool(abs(got.value - truth) <= got.error),
                "float32_change": abs(got.value - double.value),
            }
        )  # fmt: skip
    report["rows"] = rows
    report["one_exact_s"] = exact_s / len(rows)
    report["one_randomized_s"] = randomized_s / len(rows)
    if n > exact_max:  # extrapolate: the randomized step, its spectra replaced by eigvalsh
        count = len(dense)
        report["exact_step_s"] = report["step_s"] + count * (
            report["one_exact_s"] - report["one_randomized_s"]
        )
        report["exact_extrapolated"] = True
        report["rows"] = []
    else:
        report["exact_extrapolated"] = False
    return report


def _print(reports: list[dict]) -> None:
    import numpy as np

    print(
        f"{'N':>6} {'spectra':>10} {'cache MB':>8} {'distances':>9} {'estimate':>8} "
        f"{'step s':>7} {'exact step':>10} {'speed-up':>8} {'one eig':>7} {'one SLQ':>7} "
        f"{'max rel err':>11} {'covered':>8} {'peak GB':>7}"
    )
    for r in reports:
        errs = [row["rel_error"] for row in r["rows"]]
        cover = [row["covered"] for row in r["rows"]]
        exact = f"{r['exact_step_s']:.1f}" + ("*" if r["exact_extrapolated"] else "")
        accuracy = f"{max(errs):>11.2e} {sum(cover):>3}/{len(cover):<4}" if errs else f"{'-':>20}"
        print(
            f"{r['n']:>6} {'randomized' if r['randomized'] else 'exact':>10} "
            f"{r['cache_mb']:>8.0f} {r['distances_s']:>9.1f} {r['estimate_s']:>8.1f} "
            f"{r['step_s']:>7.1f} {exact:>10} {r['exact_step_s'] / r['step_s']:>7.1f}x "
            f"{r['one_exact_s']:>7.1f} {r['one_randomized_s']:>7.1f} {accuracy} "
            f"{r['peak_rss_gb']:>7.2f}"
        )
    print(
        "* extrapolated: the step with its 2L + 1 dense spectra each replaced by one timed "
        "N×N eigvalsh"
    )
    for r in reports:
        if "max_rel_error_result" in r:
            print(
                f"  N={r['n']}: largest relative difference of any entropy of the result from "
                f"the exact estimate {r['max_rel_error_result']:.1e}; storage {r['storage']}"
            )
        else:
            print(f"  N={r['n']}: storage {r['storage']}")
    for r in reports:
        bars = [row["bar"] for row in r["rows"]]
        line = f"  N={r['n']}: spectrum {r['spectrum']}"
        if bars:
            line += (
                f"; error bars of the rows: median {np.median(bars):.3f}, largest {max(bars):.3f}"
            )
        if "largest_error_bar" in r:
            line += f"; largest bar in the result {r['largest_error_bar']:.3f}"
        print(line)
    changes = [row["float32_change"] for r in reports for row in r["rows"]]
    if changes:
        print(
            f"  float32 against float64 matrix products, same probes: largest change of an "
            f"entropy {max(changes):.1e} bits"
        )
    for r in reports:
        for row in r["rows"]:
            print(
                f"  N={r['n']:<6} {row['entropy']:<14} exact {row['exact']:8.4f}  randomized "
                f"{row['randomized']:8.4f} ± {row['bar']:.4f}  rel err {row['rel_error']:.1e}"
                f"  {'inside' if row['covered'] else 'OUTSIDE'}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    parser.add_argument("--exact-max", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST)
    parser.add_argument("--workdir", type=Path, default=None, help="scratch (default: a temp dir)")
    parser.add_argument(
        "--device",
        default="cpu",
        help="device of the estimate: cpu, torch-cpu, cuda (see --help "
        "of infoplane estimate); the exact eigvalsh and the accuracy rows stay numpy",
    )
    for key in ("probes", "rank", "steps"):
        parser.add_argument(
            f"--{key}", type=int, default=None, help=f"spectrum {key} (default: the preset's)"
        )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    mnist = args.mnist if (args.mnist / "t10k-images-idx3-ubyte.gz").is_file() else None
    if args.one:
        settings = {
            key: getattr(args, key)
            for key in ("probes", "rank", "steps")
            if getattr(args, key) is not None
        }
        report = one(args.one, mnist, args.exact_max, args.workdir, args.device, settings)
        print(json.dumps(report))
        return
    env = {
        **os.environ,
        **{
            k: str(args.threads)
            for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
        },
    }
    print(
        f"MLP 784-{'-'.join(map(str, HIDDEN))}-{CLASSES}, alpha {ALPHA}, "
        f"{args.threads} BLAS threads, device {args.device}, "
        f"inputs: {'MNIST test set' if mnist else 'synthetic mixture'}"
    )
    reports = []
    scratch = tempfile.TemporaryDirectory(dir=args.workdir)
    for n in args.sizes:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            str(n),
            "--exact-max",
            str(args.exact_max),
            "--mnist",
            str(args.mnist),
            "--workdir",
            scratch.name,
            "--device",
            args.device,
            *(
                f"--{key}={getattr(args, key)}"
                for key in ("probes", "rank", "steps")
                if getattr(args, key) is not None
            ),
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            print(f"  N = {n} failed:\n{done.stderr[-3000:]}", flush=True)
            continue
        reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  N = {n}: step {reports[-1]['step_s']:.1f} s", flush=True)
    _print(reports)


if __name__ == "__main__":
    main()
