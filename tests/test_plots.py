"""Figures from synthetic estimates: content (labels in bits, panels, colour bar), files written,
deterministic bytes, and the data-processing share on hand-built cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from infoplane.errors import InputError
from infoplane.report import analysis, plots

LAYERS = ("fc1", "fc2", "fc3", "softmax")


def synthetic_estimates(
    rng: np.random.Generator,
    *,
    runs: int = 3,
    layers: tuple[str, ...] = LAYERS,
    steps: int = 24,
    n: int = 100,
) -> xr.Dataset:
    """Stacked estimates shaped like `infoplane stack` output: fitting, then compression."""
    step = np.unique(np.concatenate([np.arange(0, 10), np.linspace(10, 200, steps - 10)]))
    step = step.astype(np.int64)
    epoch = step / 10.0
    t = epoch / epoch.max()
    h_max = np.log2(n)
    h_y = np.log2(10)
    n_layers = len(layers)
    shape = (runs, 2, step.size, n_layers)
    depth = np.arange(n_layers) / max(n_layers - 1, 1)
    # deeper layers: less I(X;T), more compression late in training
    rise = 1 - np.exp(-t[:, None] * 25)
    ixt = h_max * (0.95 - 0.35 * depth) * rise - 0.8 * depth * np.clip(t[:, None] - 0.3, 0, None)
    ity = h_y * (0.4 + 0.55 * rise) * (1 - 0.05 * depth)
    noise = lambda: rng.normal(0, 0.05, shape)  # noqa: E731
    i_xt = np.clip(ixt[None, None] + noise(), 0, h_max)
    i_ty = np.clip(ity[None, None] + noise(), 0, h_y)
    test_scale = np.array([1.0, 0.9])[None, :, None, None]
    i_ty = i_ty * test_scale
    sigma = np.exp(rng.normal(0.5, 0.1, shape)) * (1 + depth)
    boundary = np.zeros(shape, dtype=bool)
    boundary[0, 0, 0, -1] = True
    dims3 = ("run", "split", "step", "layer")
    dims2 = ("run", "split", "step")
    ds = xr.Dataset(
        {
            "I_XT": (dims3, i_xt),
            "I_TY": (dims3, i_ty),
            "H_T": (dims3, i_xt + 0.1),
            "H_XT": (dims3, np.full(shape, h_max)),
            "H_TY": (dims3, i_xt + 0.2),
            "sigma": (dims3, sigma),
            "clipped_mass": (dims3, np.zeros(shape)),
            "boundary_hit": (dims3, boundary),
            "H_X": (dims2, np.full(shape[:3], h_max - 0.2)),
            "H_Y": (dims2, np.full(shape[:3], h_y)),
            "sigma_x": (dims2, np.full(shape[:3], 8.0)),
        },
        coords={
            "run": [f"seed{i}" for i in range(runs)],
            "split": ["train", "test"],
            "step": step,
            "layer": list(layers),
            "epoch": ("step", epoch),
        },
        attrs={"experiment": "synthetic", "estimator": "paper"},
    )
    return ds


@pytest.fixture
def mi(rng) -> xr.Dataset:
    return synthetic_estimates(rng)


def _axes_with_content(fig):
    """Axes that hold data (not colour bars)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _colorbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_information_plane_layers_has_a_panel_per_layer_and_an_overview(mi):
    fig = plots.information_plane_layers(mi, "train")
    panels = _axes_with_content(fig)
    assert len(panels) == len(LAYERS) + 1
    titles = [ax.get_title() for ax in panels]
    assert titles[0] == "all layers (means)"
    for layer in LAYERS:
        assert any(layer in t for t in titles)
    xlabels = [ax.get_xlabel() for ax in panels if ax.get_xlabel()]
    ylabels = [ax.get_ylabel() for ax in panels if ax.get_ylabel()]
    assert xlabels and all(label == "I(X;T) [bits]" for label in xlabels)
    assert ylabels and all(label == "I(T;Y) [bits]" for label in ylabels)
    (bar,) = _colorbars(fig)
    assert bar.get_ylabel() == "epoch"
    # the colour scale spans the epochs of the data
    lo, hi = bar.get_ylim()
    assert lo == pytest.approx(0.0) and hi == pytest.approx(float(mi["epoch"].max()))
    assert "train" in fig.get_suptitle()


def test_information_plane_panel_limits_cover_the_mean_path(mi):
    fig = plots.information_plane_layers(mi, "test")
    panel = _axes_with_content(fig)[2]  # layer 2
    mean_x = mi["I_XT"].sel(split="test", layer="fc2").mean("run")
    mean_y = mi["I_TY"].sel(split="test", layer="fc2").mean("run")
    x0, x1 = panel.get_xlim()
    y0, y1 = panel.get_ylim()
    assert x0 <= float(mean_x.min()) and x1 >= float(mean_x.max())
    assert y0 <= float(mean_y.min()) and y1 >= float(mean_y.max())


def test_overview_puts_train_and_test_side_by_side(mi):
    fig = plots.information_plane_overview(mi)
    panels = _axes_with_content(fig)
    assert [ax.get_title() for ax in panels] == ["train probe", "test probe"]
    assert all(ax.get_xlabel() == "I(X;T) [bits]" for ax in panels)
    assert len(_colorbars(fig)) == 1
    # the two panels sit next to each other (same row)
    (a, b) = (ax.get_position() for ax in panels)
    assert a.y0 == pytest.approx(b.y0) and a.x1 <= b.x0
    legend = [t.get_text() for t in panels[0].get_legend().get_texts()]
    assert legend == [*LAYERS, "H(Y)"]


def test_single_run_file_is_plotted_without_spread(rng):
    one = synthetic_estimates(rng, runs=1).isel(run=0, drop=True)
    one.attrs["run"] = "seed0"
    fig = plots.information_plane_layers(one, "train")
    assert len(_axes_with_content(fig)) == len(LAYERS) + 1
    assert "1 run)" in fig.get_suptitle()


def test_mi_epoch_and_widths_figures(mi):
    fig = plots.mi_epoch_figure(mi)
    panels = _axes_with_content(fig)
    assert len(panels) == 4
    assert {ax.get_ylabel() for ax in panels} == {"I(X;T) [bits]", "I(T;Y) [bits]"}
    legend_texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend_texts[: len(LAYERS)] == list(LAYERS)

    fig = plots.widths_figure(mi)
    panels = _axes_with_content(fig)
    assert len(panels) == 2 and all(ax.get_yscale() == "log" for ax in panels)
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "grid edge hit" in texts  # the synthetic data mark one boundary hit


def test_data_processing_share_on_a_hand_built_case():
    # one run, one split, 4 steps, 3 layers; shares counted by hand
    i_xt = np.array([[[5.0, 4.0, 3.0], [5.0, 6.0, 1.0], [2.0, 2.0, 2.0], [np.nan, 1.0, 0.5]]])
    i_ty = np.array([[[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 1.0, 2.0], [3.0, 2.0, 1.0]]])
    ds = xr.Dataset(
        {
            "I_XT": (("split", "step", "layer"), i_xt),
            "I_TY": (("split", "step", "layer"), i_ty),
        },
        coords={"split": ["train"], "step": [0, 1, 2, 3], "layer": ["a", "b", "c"]},
    )
    shares = analysis.data_processing_share(ds, tol=0.0)
    assert list(shares["pair"].values) == ["a → b", "b → c", "chain"]
    # I(X;T): a→b ok at steps 0, 2 (equal counts), not 1; step 3 has NaN -> 2/3
    #         b→c ok at 0, 1, 2, 3 -> 4/4; chain ok at 0, 2 of steps 0-2 -> 2/3
    np.testing.assert_allclose(shares["I_XT"].sel(split="train"), [2 / 3, 1.0, 2 / 3])
    np.testing.assert_array_equal(shares["n_XT"].sel(split="train"), [3, 4, 3])
    # I(T;Y): a→b ok at 1, 2, 3; b→c ok at 1, 3 -> chain ok at 1, 3
    np.testing.assert_allclose(shares["I_TY"].sel(split="train"), [3 / 4, 2 / 4, 2 / 4])


def test_data_processing_tolerance_counts_near_ties():
    values = np.array([[[3.0, 3.0 + 1e-9]]])
    ds = xr.Dataset(
        {
            "I_XT": (("split", "step", "layer"), values),
            "I_TY": (("split", "step", "layer"), values),
        },
        coords={"split": ["test"], "step": [0], "layer": ["a", "b"]},
    )
    assert float(analysis.data_processing_share(ds, tol=0.0)["I_XT"][0, 0]) == 0.0
    assert float(analysis.data_processing_share(ds, tol=1e-6)["I_XT"][0, 0]) == 1.0


def test_data_processing_figure_bars_match_shares(mi):
    shares = analysis.data_processing_share(mi)
    fig = plots.data_processing_figure(mi, shares=shares)
    train_ax = _axes_with_content(fig)[0]
    heights = [p.get_height() for p in train_ax.patches]
    n_pairs = len(LAYERS)  # 3 pairs + chain
    np.testing.assert_allclose(heights[:n_pairs], shares["I_XT"].sel(split="train"))
    np.testing.assert_allclose(heights[n_pairs:], shares["I_TY"].sel(split="train"))
    assert [t.get_text() for t in train_ax.get_xticklabels()][-1] == "chain"


def _metrics_csv(path, rng, epochs=5):
    epoch = np.arange(epochs + 1, dtype=float)
    table = pd.DataFrame(
        {
            "epoch": epoch,
            "step": (epoch * 10).astype(int),
            "train_loss": 2.3 * np.exp(-epoch / 2) + rng.uniform(0, 0.05, epoch.size),
            "train_accuracy": 1 - 0.9 * np.exp(-epoch),
            "test_loss": 2.3 * np.exp(-epoch / 3) + 0.1,
            "test_accuracy": 1 - 0.9 * np.exp(-epoch / 1.5) - 0.05,
        }
    )
    path.parent.mkdir(parents=True)
    table.to_csv(path, index=False)
    return path


def test_load_metrics_reads_wide_and_long_tables(tmp_path, rng):
    wide = _metrics_csv(tmp_path / "seed0" / "metrics.csv", rng)
    long_path = tmp_path / "seed1" / "metrics.csv"
    long_path.parent.mkdir()
    pd.DataFrame(
        {"epoch": [0, 0, 1, 1], "split": ["train", "test"] * 2, "loss": [2, 2.1, 1, 1.2]}
    ).to_csv(long_path, index=False)
    table = analysis.load_metrics([wide, long_path])
    assert set(table["run"]) == {"seed0", "seed1"}
    seed1 = table[table["run"] == "seed1"]
    assert set(seed1["metric"]) == {"loss"} and len(seed1) == 4
    seed0 = table[(table["run"] == "seed0") & (table["metric"] == "accuracy")]
    assert set(seed0["split"]) == {"train", "test"}


def test_load_metrics_rejects_a_table_without_epochs(tmp_path):
    bad = tmp_path / "seed0" / "metrics.csv"
    bad.parent.mkdir()
    bad.write_text("step,loss\n0,1\n")
    with pytest.raises(InputError, match="epoch"):
        analysis.load_metrics([bad])


@pytest.mark.slow
def test_plot_estimates_writes_every_figure_from_a_zarr_store(tmp_path, mi):
    from infoplane.io.results import write_result

    write_result(mi, tmp_path / "paper.zarr")  # the writer of `infoplane estimate` and `stack`
    written = plots.plot_estimates(tmp_path / "paper.zarr", tmp_path / "plots")
    names = [p.name for p in written]
    assert names == [*plots.ESTIMATE_FIGURES, plots.DATA_PROCESSING_TABLE]
    for path in written[:-1]:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, path.name
        assert b"Software" not in data and b"matplotlib" not in data
    table = pd.read_csv(written[-1])
    assert set(table.columns) >= {"split", "pair", "I_XT", "I_TY", "n_XT", "n_TY"}
    assert len(table) == 2 * len(LAYERS)  # (3 pairs + chain) per split


def test_saved_figures_are_byte_identical(tmp_path, mi):
    first = plots.save_figure(plots.information_plane_overview(mi), tmp_path / "a.png")
    second = plots.save_figure(plots.information_plane_overview(mi), tmp_path / "b.png")
    assert first.read_bytes() == second.read_bytes()
    svg = plots.save_figure(plots.widths_figure(mi), tmp_path / "w.svg").read_text()
    assert "<dc:date>" not in svg and "Matplotlib" not in svg


def test_training_figure_from_metrics(tmp_path, rng):
    paths = [_metrics_csv(tmp_path / f"seed{i}" / "metrics.csv", rng) for i in range(3)]
    out = plots.plot_training(paths, tmp_path / "training.png", title="digits_mlp")
    assert out.is_file() and out.stat().st_size > 10_000
    fig = plots.training_figure(analysis.load_metrics(paths))
    loss_ax, acc_ax = _axes_with_content(fig)
    assert acc_ax.get_ylim() == (0, 1.02)
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["train", "test"]
    assert "3 runs" in fig.get_suptitle()


def test_plot_command(tmp_path, rng, capsys):
    from infoplane.cli import main

    paths = [str(_metrics_csv(tmp_path / f"seed{i}" / "metrics.csv", rng)) for i in range(2)]
    out = tmp_path / "plots"
    assert main(["plot", "--metrics", *paths, "--out-dir", str(out)]) == 0
    assert (out / plots.TRAINING_FIGURE).is_file()
    assert str(out / plots.TRAINING_FIGURE) in capsys.readouterr().out
    assert main(["plot", "--out-dir", str(out)]) == 1
    assert "nothing to plot" in capsys.readouterr().err


def test_saturated_layer_keeps_a_readable_range(rng):
    mi = synthetic_estimates(rng)
    # fc1 saturated: I(X;T) = log2 N up to rounding noise of 1e-6 bits
    noise = rng.normal(0, 1e-6, mi["I_XT"].sel(layer="fc1").shape)
    mi["I_XT"].loc[{"layer": "fc1"}] = np.log2(100) + noise
    fig = plots.information_plane_layers(mi, "train")
    fig.canvas.draw()
    fc1 = _axes_with_content(fig)[1]
    low, high = fc1.get_xlim()
    assert high - low >= plots.MIN_SPAN_BITS * (1 - 1e-9)
    assert fc1.xaxis.get_offset_text().get_text() == ""


# --- degenerate points marked ----------------------------------------------------------------


def _degenerate_marks(fig) -> list:
    return [c for ax in fig.axes for c in ax.collections if c.get_gid() == plots.DEGENERATE_GID]


def _legend_texts(fig) -> list[str]:
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def test_degenerate_points_are_marked_with_a_legend_entry():
    from infoplane.testing import make_result

    clean = make_result(n_steps=4, layers=("a", "b"))  # N = 8: log2 N = 3 bits
    ds = clean.copy(deep=True)
    point = {"split": "train", "layer": "b", "step": [10, 20]}
    for name, value in (("H_T", 0.0), ("H_XT", 2.0), ("I_XT", 0.0), ("H_TY", 1.5), ("I_TY", 0.0)):
        ds[name].loc[point] = value  # layer b collapsed at two steps of train
    assert plots.degenerate_mask(ds, "train")[:, 1].tolist() == [False, True, True, False]
    assert not plots.degenerate_mask(ds, "test").any()

    layers_fig = plots.information_plane_layers(ds, "train")
    marks = _degenerate_marks(layers_fig)
    # the overview panel and the panel of layer b, two points each, at b's mean path
    assert len(marks) == 2 and all(len(m.get_offsets()) == 2 for m in marks)
    np.testing.assert_allclose(marks[1].get_offsets(), [[0.0, 0.0], [0.0, 0.0]])
    assert plots.DEGENERATE_LABEL in _legend_texts(layers_fig)
    epoch_fig = plots.mi_epoch_figure(ds)
    assert len(_degenerate_marks(epoch_fig)) == 2  # I(X;T) and I(T;Y) of b, train column
    assert plots.DEGENERATE_LABEL in _legend_texts(epoch_fig)
    overview = plots.information_plane_overview(ds)
    assert len(_degenerate_marks(overview)) == 1

    # nothing degenerate: no mark, no legend entry
    for fig in (
        plots.information_plane_layers(clean, "train"),
        plots.mi_epoch_figure(clean),
        plots.information_plane_overview(clean),
    ):
        assert not _degenerate_marks(fig) and plots.DEGENERATE_LABEL not in _legend_texts(fig)
