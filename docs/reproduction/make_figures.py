"""Tables and figures of docs/reproduction.md, from the workflow's results.

Run after the workflow (see docs/reproduction/config.yaml):

    .venv/bin/python docs/reproduction/make_figures.py [--results results] [--out docs/reproduction]

Prints the tables of the claims as Markdown (and writes them to RESULTS/reproduction/tables.md),
copies the workflow's figures of every experiment into OUT (shrunk when larger than 300 KB) and
draws the summary figures: compression per layer, early stopping against the onset of
compression, and the tensor against the multivariate estimator on the CNN. The classic
estimators (binning, KDE) are left to compare_estimators.py.
"""

from __future__ import annotations

import argparse
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from infoplane.config import load_config
from infoplane.io.results import open_result
from infoplane.io.store import open_activations
from infoplane.report import analysis
from infoplane.report.analysis import load_metrics
from infoplane.report.checks import check_result, nan_points

# Snakemake leaves a timestamp file inside directory outputs; zarr notes it and reads on
warnings.filterwarnings("ignore", message="Object at .snakemake_timestamp")

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.yaml"
LABELS = {
    "repro_mlp_tanh": "MLP, tanh",
    "repro_mlp_relu": "MLP, ReLU",
    "repro_cnn_tanh": "CNN, tanh",
    "repro_mlp_tanh_resample": "MLP, tanh, fresh probes",
}
# experiments trained exactly like another one (only the probes differ): no second training figure
SAME_TRAINING = {"repro_mlp_tanh_resample": "repro_mlp_tanh"}
STOP_EPOCH = "early_stop_epoch (test set, per epoch)"
STOP_PROBE = "early_stop_epoch (test probe, per capture)"
# moving-average window, in captures (captures are every 5 iterations in epoch 1, then per epoch)
WINDOW = 3
MAX_BYTES = 300_000
# presets of the tensor kernel whose compression and timing are tabulated (width smoothing per
# training iteration, per capture, none)
TENSOR_PRESETS = ("paper", "paper-per-capture", "paper-unsmoothed")
# the classic estimators have a comparison of their own (compare_estimators.py)
CLASSIC_PRESETS = ("binning", "binning-adaptive", "kde")
COPIED = {
    "information_plane_train.png": "ip_train",
    "information_plane_test.png": "ip_test",
    "mi_epoch.png": "mi_epoch",
    "widths.png": "widths",
}


# ---------------------------------------------------------------------------------------------
# loading


def experiments() -> dict[str, dict]:
    config = load_config(CONFIG)
    return {name: config["experiments"][name] for name in config["run"]}


def estimates(results: Path, experiment: str, preset: str) -> xr.Dataset:
    return open_result(results / experiment / "mi" / f"{preset}.zarr")


def seeds_of(mi: xr.Dataset) -> list[int]:
    """Seeds of the runs stacked in an estimate (run names seed<S>)."""
    return [int(str(run).removeprefix("seed")) for run in mi["run"].values]


def metrics(results: Path, experiment: str, seeds: Sequence[int]) -> pd.DataFrame:
    return load_metrics([results / experiment / f"seed{s}" / "metrics.csv" for s in seeds])


def probe_accuracy(
    results: Path, experiment: str, seeds: Sequence[int], split: str
) -> xr.DataArray:
    """Accuracy of the softmax on the probe of ``split`` at every capture, on (run, step)."""
    rows = []
    for seed in seeds:
        view = open_activations(results / experiment / f"seed{seed}" / "activations.zarr", split)
        acc = analysis.accuracy_from_probs(view["softmax"].values, view["y"].values)
        rows.append(
            xr.DataArray(acc, dims="step", coords={"step": view["step"].values}).expand_dims(
                run=[f"seed{seed}"]
            )
        )
    out = xr.concat(rows, dim="run")
    return out.assign_coords(epoch=("step", view["epoch"].values))


# ---------------------------------------------------------------------------------------------
# tables


def markdown(table: pd.DataFrame, digits: int = 3) -> str:
    def cell(value) -> str:
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "no"
        if isinstance(value, (float, np.floating)):
            if not math.isfinite(value):
                return "—" if math.isnan(value) else ("∞" if value > 0 else "−∞")
            return f"{value:.{digits}f}"
        return str(value)

    head = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def compression_tables(mi: xr.Dataset) -> dict[str, pd.DataFrame]:
    """Compression tables of the train and test probes, and their paired difference."""
    out, summaries = {}, {}
    for split in ("train", "test"):
        summaries[split] = analysis.phase_summary(mi, var="I_XT", split=split, window=WINDOW)
        table = analysis.compression_table(summaries[split])
        fit = analysis.compression_table(
            analysis.phase_summary(mi, var="I_TY", split=split, window=WINDOW)
        )
        table.insert(3, "mean_rise_I_TY", fit["mean_rise"].to_numpy())
        out[split] = table.rename(columns={"mean_rise": "mean_rise_I_XT"})
    out["train_minus_test"] = analysis.paired_difference(summaries["train"], summaries["test"])
    return out


def timing_table(
    mi: xr.Dataset, test_accuracy: xr.DataArray, probe_acc: xr.DataArray
) -> pd.DataFrame:
    onset = analysis.compression_onset(mi, split="train", window=WINDOW)
    stop_epoch = analysis.early_stopping(test_accuracy, window=1)
    stop_probe = analysis.best_step(probe_acc, window=WINDOW)
    epoch_of_step = dict(zip(probe_acc["step"].values, probe_acc["epoch"].values, strict=True))
    rows = []
    for run in onset["run"].values:
        run = str(run)
        probe_step = float(stop_probe.sel(run=run))
        rows.append(
            {
                "run": run,
                "onset_epoch": float(onset["onset_epoch"].sel(run=run)),
                STOP_EPOCH: float(stop_epoch.sel(run=run)),
                STOP_PROBE: float(epoch_of_step[probe_step]),
                "best_test_accuracy": float(test_accuracy.sel(run=run).max()),
                "final_test_accuracy": float(test_accuracy.sel(run=run).isel(epoch=-1)),
            }
        )
    table = pd.DataFrame(rows)
    table.attrs["layers"] = onset.attrs["layers"]
    return table


def check_counts(mi: xr.Dataset) -> dict[str, int]:
    points = int(mi["I_XT"].size)
    return {
        "points": points,
        "violations": len(check_result(mi)),
        "nan_points": len(nan_points(mi)),
        "boundary_hits": int(mi["boundary_hit"].sum()) if "boundary_hit" in mi else 0,
        "max_clipped_mass": float(mi["clipped_mass"].max()) if "clipped_mass" in mi else 0.0,
    }


def end_of_training(mi: xr.Dataset) -> pd.DataFrame:
    """Per split and layer at the last step: I(X;T)/H(X), I(T;Y)/H(Y), H(T)/log2 N."""
    last = mi.isel(step=-1)
    sat = analysis.saturation(mi).isel(step=-1)
    rows = []
    for split in mi["split"].values:
        for layer in mi["layer"].values:
            sel = {"split": split, "layer": layer}
            rows.append(
                {
                    "split": str(split),
                    "layer": str(layer),
                    "I_XT": float(last["I_XT"].sel(sel).mean()),
                    "I_XT/H_X": float((last["I_XT"] / last["H_X"]).sel(sel).mean()),
                    "I_TY/H_Y": float((last["I_TY"] / last["H_Y"]).sel(sel).mean()),
                    "H_T/log2N": float(sat.sel(sel).mean()),
                }
            )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# figures


def _style():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "font.size": 8,
            "axes.titlesize": 9,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.25,
        }
    )
    return plt


def epoch_axis(ax) -> None:
    """Epochs linear up to 1 (the densely captured first epoch), logarithmic after."""
    ax.set_xscale("symlog", linthresh=1.0, linscale=1.5)
    ax.set_xlim(0, 10.5)
    from matplotlib.ticker import NullLocator

    ticks = [0, 0.25, 0.5, 1, 2, 5, 10]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(NullLocator())


def save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, metadata={"Software": None})
    fig.clf()


def copy_figure(src: Path, dst: Path) -> None:
    """Copy a PNG as a 256-colour palette image, shrunk until it is at most MAX_BYTES."""
    from PIL import Image

    image = Image.open(src)
    scale = 1.0
    while True:
        size = (int(image.width * scale), int(image.height * scale))
        image.convert("RGB").resize(size, Image.LANCZOS).quantize(256).save(dst, optimize=True)
        if dst.stat().st_size <= MAX_BYTES:
            return
        scale *= 0.85


def compression_figure(tables: dict[str, dict[str, dict[str, pd.DataFrame]]], path: Path) -> None:
    """Mean drop ± std per layer, train and test probes; one row per preset, one column per
    experiment (``tables[preset][experiment][split]``)."""
    plt = _style()
    presets = list(tables)
    columns = list(dict.fromkeys(name for by_exp in tables.values() for name in by_exp))
    runs = {int(t["train"]["runs"].max()) for e in tables.values() for t in e.values()}
    fig, axes = plt.subplots(
        len(presets),
        len(columns),
        figsize=(3.2 * len(columns), 2.7 * len(presets)),
        squeeze=False,
        sharey="col",
    )
    for row, preset in enumerate(presets):
        for col, name in enumerate(columns):
            ax = axes[row, col]
            if name not in tables[preset]:
                ax.set_axis_off()
                continue
            by_split = tables[preset][name]
            layers = list(by_split["train"]["layer"])
            x = np.arange(len(layers))
            for offset, split, color in ((-0.2, "train", "#3b6fb6"), (0.2, "test", "#d1762b")):
                t = by_split[split]
                ax.bar(
                    x + offset,
                    t["mean_drop"],
                    0.38,
                    yerr=t["std_drop"],
                    color=color,
                    label=split,
                    capsize=2,
                    error_kw={"lw": 0.8},
                )
            ax.set_xticks(x, layers, rotation=30, ha="right")
            ax.set_title(f"{name} — {preset}")
            ax.axhline(0, color="0.3", lw=0.6)
        axes[row, 0].set_ylabel("peak − final of\nsmoothed I(X;T) [bits]")
    axes[0, 0].legend(title="probe", frameon=False)
    fig.suptitle(
        f"Compression per layer: mean drop ± std over {'/'.join(map(str, sorted(runs)))} seeds",
        fontsize=10,
    )
    fig.tight_layout()
    save(fig, path)


def timing_figure(results: Path, exps: dict[str, dict], path: Path) -> None:
    """Per experiment: test accuracy and smoothed I(X;T) of the last hidden layers vs epoch."""
    plt = _style()
    fig, axes = plt.subplots(
        2, len(exps), figsize=(3.3 * len(exps), 4.6), squeeze=False, sharex=True
    )
    for col, name in enumerate(exps):
        mi = estimates(results, name, "paper")
        seeds = seeds_of(mi)
        table = metrics(results, name, seeds)
        acc = analysis.metrics_array(table, split="test")
        probe = probe_accuracy(results, name, seeds, "test")
        top, bottom = axes[0, col], axes[1, col]
        x = probe["epoch"].values
        smoothed = analysis.smooth(probe, WINDOW)
        top.plot(x, smoothed.mean("run"), color="#d1762b", lw=1.2, label="test probe (smoothed)")
        top.plot(
            acc["epoch"],
            acc.mean("run"),
            "o-",
            color="0.2",
            ms=2.5,
            lw=1,
            label="test split (per epoch)",
        )
        top.set_ylim(0.8, 1.0)
        top.set_title(LABELS.get(name, name))
        onset = analysis.compression_onset(mi, split="train", window=WINDOW)
        layers = onset.attrs["layers"]
        for k, layer in enumerate(layers):
            curve = analysis.smooth(mi["I_XT"].sel(split="train", layer=layer), WINDOW)
            mean = curve.mean("run")
            bottom.plot(
                mi["epoch"], mean, lw=1.2, color=plt.cm.viridis(0.2 + 0.5 * k), label=f"{layer}"
            )
        for ax in (top, bottom):
            for value in onset["onset_epoch"].values:
                ax.axvline(value, color="#3b6fb6", lw=0.6, alpha=0.6)
            for value in analysis.early_stopping(acc).values:
                ax.axvline(value, color="0.2", lw=0.6, ls="--", alpha=0.6)
            epoch_axis(ax)
        bottom.set_xlabel("epoch (linear to 1, log after)")
        bottom.legend(frameon=False, title="smoothed I(X;T), train")
    axes[0, 0].set_ylabel("test accuracy")
    axes[1, 0].set_ylabel("I(X;T) [bits]")
    axes[0, 0].legend(frameon=False, loc="upper left")
    fig.suptitle(
        "Early stopping (dashed: best test accuracy, per epoch) and onset of compression\n"
        "(blue: earliest peak of smoothed I(X;T) of the last two hidden layers), per seed",
        fontsize=9,
    )
    fig.tight_layout()
    save(fig, path)


def estimator_figure(tensor: xr.Dataset, multi: xr.Dataset, path: Path) -> None:
    """CNN: H(T)/log2 N, I(X;T) and I(T;Y) per layer against epoch, tensor vs multivariate."""
    plt = _style()
    layers = [str(v) for v in tensor["layer"].values]
    colors = [plt.cm.plasma(k / max(len(layers) - 1, 1) * 0.85) for k in range(len(layers))]
    rows = (("H_T/log2N", None), ("I(X;T) [bits]", "I_XT"), ("I(T;Y) [bits]", "I_TY"))
    fig, axes = plt.subplots(3, 2, figsize=(7.0, 6.6), sharex=True, squeeze=False)
    for col, split in enumerate(("train", "test")):
        for row, (label, var) in enumerate(rows):
            ax = axes[row, col]
            for mi, style in ((tensor, "-"), (multi, "--")):
                values = analysis.saturation(mi) if var is None else mi[var]
                values = values.sel(split=split).mean("run")
                for k, layer in enumerate(layers):
                    ax.plot(
                        mi["epoch"],
                        values.sel(layer=layer),
                        style,
                        color=colors[k],
                        lw=1.1,
                        label=layer if style == "-" else None,
                    )
            if var is None:
                ax.axhline(1.0, color="0.3", lw=0.6)
            ax.set_ylabel(label)
            epoch_axis(ax)
        axes[0, col].set_title(
            f"{split} probe (N = {int(tensor['n_samples'].sel(split=split).max())})"
        )
        axes[-1, col].set_xlabel("epoch (linear to 1, log after)")
    handles = axes[0, 0].get_legend_handles_labels()[0]
    handles += [
        plt.Line2D([], [], color="0.3", ls="-", label="tensor (paper)"),
        plt.Line2D([], [], color="0.3", ls="--", label="multivariate"),
    ]
    fig.legend(handles=handles, loc="lower center", ncols=len(handles), frameon=False)
    hidden = analysis.hidden_layers(multi)
    at_ceiling = float(analysis.saturation(multi).sel(layer=hidden).min()) > 0.999
    for ax in axes[:2].ravel() if at_ceiling else []:
        ax.annotate(
            f"multivariate: {', '.join(hidden)} all at the ceiling",
            (0.02, 0.985),
            xycoords="axes fraction",
            va="top",
            fontsize=7,
            color="0.3",
        )
    fig.suptitle(
        "CNN: tensor kernel (solid) vs channel-wise multivariate kernel (dashed), "
        f"mean of {tensor.sizes['run']} seeds",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save(fig, path)


# ---------------------------------------------------------------------------------------------


def span(values: pd.Series, fmt: str = "g") -> str:
    """``min–max`` of a column."""
    return f"{values.min():{fmt}}–{values.max():{fmt}}"


def compact_compression(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Fitting rise and train/test drops side by side, one row per layer."""
    train, test, paired = tables["train"], tables["test"], tables["train_minus_test"]

    def drop(t: pd.DataFrame) -> list[str]:
        return [
            f"{m:.2f} ± {s:.2f} ({r:.1f})" if math.isfinite(r) else f"{m:.2f} ± {s:.2f}"
            for m, s, r in zip(t["mean_drop"], t["std_drop"], t["drop_over_std"], strict=True)
        ]

    return pd.DataFrame(
        {
            "layer": train["layer"],
            "rise I(T;Y)": train["mean_rise_I_TY"],
            "rise I(X;T)": train["mean_rise_I_XT"],
            "peak epoch": train["mean_peak_epoch"],
            "drop, train: mean ± std (ratio)": drop(train),
            "drop, test: mean ± std (ratio)": drop(test),
            "train − test, paired: mean ± std (ratio)": [
                f"{m:+.2f} ± {s:.2f} ({r:+.1f})" if math.isfinite(r) else f"{m:+.2f} ± {s:.2f}"
                for m, s, r in zip(
                    paired["mean_diff"], paired["std_diff"], paired["diff_over_std"], strict=True
                )
            ],
        }
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--experiments", nargs="+", help="default: `run` of config.yaml")
    args = parser.parse_args(argv)
    results, out = args.results, args.out
    out.mkdir(parents=True, exist_ok=True)
    exps = experiments()
    if args.experiments:
        exps = {name: exps[name] for name in args.experiments}
    summary: dict[str, list[str]] = {"compression": [], "timing": [], "details": []}
    checks, dpi_rows, timing_rows = [], [], []
    compression: dict[str, dict[str, dict[str, pd.DataFrame]]] = {}

    for name, settings in exps.items():
        label = LABELS.get(name, name)
        for preset in settings["estimators"]:
            if preset in CLASSIC_PRESETS:
                continue
            mi = estimates(results, name, preset)
            seeds = seeds_of(mi)
            checks.append({"experiment": label, "preset": preset, **check_counts(mi)})
            tables = compression_tables(mi)
            if preset in TENSOR_PRESETS:
                compression.setdefault(preset, {})[label] = tables
            summary["compression"].append(f"\n### {label}, `{preset}` ({len(seeds)} seeds)\n")
            summary["compression"].append(markdown(compact_compression(tables), digits=2))
            for row in analysis.data_processing_summary(mi).to_dict("records"):
                dpi_rows.append({"experiment": label, "preset": preset, **row})
            details = summary["details"]
            details.append(f"\n### {label}, `{preset}`: end of training (mean over seeds)\n")
            details.append(markdown(end_of_training(mi)))
            plots = results / name / "plots" / preset
            if preset in TENSOR_PRESETS:
                test_acc = analysis.metrics_array(metrics(results, name, seeds), split="test")
                probe = probe_accuracy(results, name, seeds, "test")
                timing = timing_table(mi, test_acc, probe)
                summary["timing"].append(
                    f"\n### {label}, `{preset}` "
                    f"(onset: earliest peak among {timing.attrs['layers']})\n"
                )
                summary["timing"].append(markdown(timing))
                timing_rows.append(
                    {
                        "experiment": label,
                        "preset": preset,
                        "onset epoch (range over seeds)": span(timing["onset_epoch"], ".2f"),
                        "early stop epoch, test set": span(timing[STOP_EPOCH]),
                        "early stop epoch, test probe": span(timing[STOP_PROBE]),
                        "seeds stopping before onset": int(
                            (timing[STOP_EPOCH] <= timing["onset_epoch"]).sum()
                        ),
                    }
                )
            if preset == "paper":
                for source, short in COPIED.items():
                    if (plots / source).exists():
                        copy_figure(plots / source, out / f"{name}_{short}.png")
                training = results / name / "plots" / "training.png"
                if training.exists() and name not in SAME_TRAINING:
                    copy_figure(training, out / f"{name}_training.png")
            else:
                # the lag of per-capture smoothing shows in its widths
                extra = ("mi_epoch", "widths") if preset == "paper-per-capture" else ("mi_epoch",)
                for short in extra:
                    if (plots / f"{short}.png").exists():
                        copy_figure(plots / f"{short}.png", out / f"{name}_{preset}_{short}.png")

    compression_figure(compression, out / "compression.png")
    timing_figure(results, exps, out / "early_stopping.png")
    for name in [n for n, s in exps.items() if "multivariate" in s["estimators"]]:
        estimator_figure(
            estimates(results, name, "paper"),
            estimates(results, name, "multivariate"),
            out / f"{name}_tensor_vs_multivariate.png",
        )
    text = "\n".join(
        [
            "## Invariant checks (every run, split, step and layer)\n",
            markdown(pd.DataFrame(checks), digits=3),
            f"\n## Fitting and compression (smoothing window {WINDOW} captures)",
            *summary["compression"],
            "\n## Early stopping and the onset of compression\n",
            markdown(pd.DataFrame(timing_rows)),
            *summary["timing"],
            "\n## Data-processing order (pooled over consecutive layer pairs)\n",
            markdown(pd.DataFrame(dpi_rows)),
            "\n## End of training",
            *summary["details"],
        ]
    )
    print(text)
    report = results / "reproduction"
    report.mkdir(parents=True, exist_ok=True)
    (report / "tables.md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
