"""Benchmark of one information-plane step at large N: randomized against exact spectra.

The paper's MLP shapes (784-1024-20-20-20-10, tanh, softmax output; random weights) on the real
MNIST test set when it is present (``--mnist DIR``, default ``../shared/data/mnist``; its 10,000
images give N up to 10⁴) or on a synthetic 10-class mixture of the same shapes. One captured
step per N, each N in a fresh process (its peak memory is that process's maximum RSS):

  step       the whole point as the pipeline computes it: squared distances of the input and of
             every layer, the alignment width search (the paper's linear grid of 100), the Grams,
             every entropy and both MI coordinates, with the preset's default ``spectrum``
             (``auto``: exact up to 3,000 rows, randomized above)
  exact      the same entropies by ``eigvalsh`` (timed at N <= --exact-max; above, the time of
             one N×N ``eigvalsh`` times the number of dense spectra of a step, 2L + 1)
  accuracy   every dense entropy (H_X, H_T and H_XT of every layer) by the randomized method
             against ``eigvalsh`` (N <= --exact-max): the relative error, and whether the exact
             value lies inside the reported error bar. H_Y and H_TY are exact in both (the
             label kernel is block-diagonal; its blocks are decomposed one by one)

Figures are printed; nothing is asserted. The BLAS threads of the process are its workers
(``--threads``, default 2: this machine's cores).

    python benchmarks/bench_large_n.py                       # N = 1,000, 2,000, 5,000, 10,000
    python benchmarks/bench_large_n.py --sizes 1000 2000     # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
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


def one(n: int, mnist: Path | None, exact_max: int) -> dict:
    """Measure one N (run in its own process)."""
    import numpy as np

    from infoplane.core import spectra
    from infoplane.core.distances import squared_distances
    from infoplane.core.entropy import renyi_entropy
    from infoplane.core.kernels import gaussian_gram
    from infoplane.core.plane import estimate_step, search_step
    from infoplane.presets import resolve_preset, spectrum_of

    x, y = _inputs(n, mnist)
    acts = _layers(x)
    names = [f"layer{i + 1}" for i in range(len(acts))]
    preset = {**resolve_preset(None, "paper-alpha1.01")}
    preset["layer_width"] = {**preset["layer_width"], "smoothing": 0.0}
    spectrum = spectrum_of(preset)
    report: dict = {"n": n, "source": "mnist" if mnist else "synthetic"}

    start = time.perf_counter()
    d2 = np.stack([squared_distances(a) for a in acts])
    d2_x = squared_distances(x)
    report["distances_s"] = time.perf_counter() - start
    point = {
        "d2": d2, "d2_x": d2_x, "y": y, "nonfinite": np.zeros(len(acts), bool),
        "nonfinite_x": np.array(False),
    }  # fmt: skip
    start = time.perf_counter()
    found = search_step(d2, y, point["nonfinite"], names, grid="linear", points=100)
    report["widths_s"] = time.perf_counter() - start
    start = time.perf_counter()
    est = estimate_step(
        point, preset, layers=names, dims=[a.shape[1] for a in acts], dim_x=x.shape[1],
        sigma=found["sigma_star"], spectrum=spectrum, seed=(0, 0, 0),
    )  # fmt: skip
    report["entropies_s"] = time.perf_counter() - start
    report["randomized"] = bool(est["randomized"])
    report["step_s"] = report["distances_s"] + report["widths_s"] + report["entropies_s"]
    report["largest_error_bar"] = float(np.nanmax(est["spectral_error"]))

    # the dense matrices of the step, one at a time: exact against randomized
    lanczos = {**spectrum, "method": "lanczos"}
    gram_x = gaussian_gram(d2_x, est["sigma_x"])
    dense = [("H_X", lambda: (gram_x, None))]
    for i, name in enumerate(names):
        dense.append((f"H_T {name}", lambda i=i: (gaussian_gram(d2[i], est["sigma"][i]), None)))
        dense.append(
            (f"H_XT {name}", lambda i=i: (gaussian_gram(d2[i], est["sigma"][i]), gram_x))
        )  # fmt: skip
    report["dense_spectra"] = len(dense)
    rows = []
    exact_s = 0.0
    for k, (label, make) in enumerate(dense):
        if n > exact_max and k > 0:
            break
        gram, other = make()
        start = time.perf_counter()
        got = spectra._randomized(gram, other, ALPHA, lanczos, [0, k])
        randomized_s = time.perf_counter() - start
        matrix = gram if other is None else gram * other
        start = time.perf_counter()
        truth = float(renyi_entropy(matrix, ALPHA))
        exact_s += time.perf_counter() - start
        del matrix
        rows.append(
            {
                "entropy": label, "exact": truth, "randomized": got.value, "bar": got.error,
                "rel_error": abs(got.value - truth) / truth, "covered": abs(got.value - truth)
                <= got.error, "randomized_s": randomized_s,
            }
        )  # fmt: skip
    if n > exact_max:  # one eigvalsh timed, the others extrapolated
        report["exact_spectra_s"] = exact_s * len(dense)
        report["exact_extrapolated"] = True
    else:
        report["exact_spectra_s"] = exact_s
        report["exact_extrapolated"] = False
        report["rows"] = rows
    # the exact step: the same distances, widths and Grams, every dense spectrum by eigvalsh
    # (H_Y and H_TY are exact per class block in both)
    randomized_s = sum(r["randomized_s"] for r in rows) * len(dense) / len(rows)
    report["exact_step_s"] = report["step_s"] - min(randomized_s, report["entropies_s"])
    report["exact_step_s"] += report["exact_spectra_s"]
    if not report["randomized"]:
        report["exact_step_s"] = report["step_s"]
    report["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return report


def _print(reports: list[dict]) -> None:
    print(
        f"{'N':>6} {'spectra':>10} {'distances':>9} {'widths':>8} {'entropies':>9} "
        f"{'step':>8} {'exact step':>11} {'speed-up':>8} {'max rel err':>11} "
        f"{'covered':>8} {'peak GB':>7}"
    )
    for r in reports:
        errs = [row["rel_error"] for row in r.get("rows", [])]
        cover = [row["covered"] for row in r.get("rows", [])]
        exact = f"{r['exact_step_s']:.1f}" + ("*" if r["exact_extrapolated"] else "")
        print(
            f"{r['n']:>6} {'randomized' if r['randomized'] else 'exact':>10} "
            f"{r['distances_s']:>9.1f} {r['widths_s']:>8.1f} {r['entropies_s']:>9.1f} "
            f"{r['step_s']:>8.1f} {exact:>11} {r['exact_step_s'] / r['step_s']:>7.1f}x "
            + (
                f"{max(errs):>11.2e} {sum(cover):>3}/{len(cover):<4}"
                if errs
                else f"{'-':>11} {'-':>8}"
            )
            + f" {r['peak_rss_gb']:>7.2f}"
        )
    print("* extrapolated: one N×N eigvalsh timed, times the step's dense spectra (2L + 1)")
    for r in reports:
        for row in r.get("rows", []):
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
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    mnist = args.mnist if (args.mnist / "t10k-images-idx3-ubyte.gz").is_file() else None
    if args.one:
        print(json.dumps(one(args.one, mnist, args.exact_max)))
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
        f"{args.threads} BLAS threads, "
        f"inputs: {'MNIST test set' if mnist else 'synthetic mixture'}"
    )
    reports = []
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
        ]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        reports.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  N = {n}: step {reports[-1]['step_s']:.1f} s", flush=True)
    _print(reports)


if __name__ == "__main__":
    main()
