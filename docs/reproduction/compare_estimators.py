"""The estimator comparison of docs/reproduction.md (claim 1 under binning, KDE and `paper`).

Run after the workflow has estimated the MLP experiments with the classic presets (see "How to
reproduce" in docs/reproduction.md):

    python docs/reproduction/compare_estimators.py [--results results] [--out docs/reproduction]

Prints, per network, layer and preset, the rise and drop of I(X;T) on the training probe (bits,
and as a share of the estimate's own H(X)), the drop's mean/std ratio across seeds and, for
binning, the share of (run, step) points at which the layer is saturated. Writes the table to
RESULTS/reproduction/estimators.md and the comparison figures (training probe) to OUT.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from infoplane.io.results import open_result
from infoplane.report import analysis
from infoplane.report.plots import comparison_figure

warnings.filterwarnings("ignore", message="Object at .snakemake_timestamp")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_figures import WINDOW, copy_figure, markdown  # noqa: E402

EXPERIMENTS = {"repro_mlp_tanh": "MLP, tanh", "repro_mlp_relu": "MLP, ReLU"}
PRESETS = ("paper", "binning", "binning-adaptive", "kde")


def layer_table(mi, preset: str) -> pd.DataFrame:
    """Rise, drop and (binning) saturation of I(X;T) per layer on the training probe."""
    variables = ["I_XT"] + (["I_XT_lower"] if "I_XT_lower" in mi else [])
    h_x = float(analysis.as_runs(mi)["H_X"].sel(split="train").mean())
    rows = []
    for var in variables:
        summary = analysis.phase_summary(mi, var=var, split="train", window=WINDOW)
        table = analysis.compression_table(summary)
        for _, row in table.iterrows():
            entry = {
                "preset": preset + (" (lower bound)" if var == "I_XT_lower" else ""),
                "layer": row["layer"],
                "H_X": h_x,
                "rise": row["mean_rise"],
                "peak_epoch": row["mean_peak_epoch"],
                "drop": row["mean_drop"],
                "drop_std": row["std_drop"],
                "drop_over_std": row["drop_over_std"],
                "drop_share": row["mean_drop"] / h_x,
            }
            if "saturated" in mi:
                flags = analysis.as_runs(mi)["saturated"].sel(split="train", layer=row["layer"])
                entry["saturated_share"] = float(flags.values.astype(float).mean())
            rows.append(entry)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--out", default=HERE, type=Path)
    args = parser.parse_args(argv)
    sections = []
    for experiment, label in EXPERIMENTS.items():
        results = {p: open_result(args.results / experiment / "mi" / f"{p}.zarr") for p in PRESETS}
        table = pd.concat([layer_table(mi, p) for p, mi in results.items()], ignore_index=True)
        runs = results["paper"].sizes.get("run", 1)
        sections.append(f"### {label} ({runs} seeds)\n\n" + markdown(table, digits=3))
        for split in ("train", "test"):
            fig = comparison_figure(results, split)
            raw = args.results / experiment / "plots" / f"estimators_{split}.png"
            fig.savefig(raw, dpi=110, metadata={"Software": None})
            if split == "train":
                copy_figure(raw, args.out / f"{experiment}_estimators.png")
        n = int(np.max(results["binning"]["n_samples"].sel(split="train").values))
        sections[-1] += f"\n\nlog2 N (train probe, N = {n}) = {np.log2(n):.3f} bits"
    text = "\n\n".join(sections) + "\n"
    out = args.results / "reproduction"
    out.mkdir(parents=True, exist_ok=True)
    (out / "estimators.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
