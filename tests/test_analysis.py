"""Claim metrics on hand-built estimates whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from infoplane.errors import InputError
from infoplane.report import analysis

STEPS = np.array([0, 10, 20, 30, 40, 80, 160, 240, 320])
EPOCHS = STEPS / 80.0


def estimates(i_xt: np.ndarray, i_ty: np.ndarray | None = None, *, layers=None, n=(100, 200)):
    """Stacked estimates from I(X;T) (and I(T;Y)) given on (run, split, step, layer)."""
    i_xt = np.asarray(i_xt, dtype=float)
    runs, splits, steps, n_layers = i_xt.shape
    layers = layers or [f"fc{k + 1}" for k in range(n_layers - 1)] + ["softmax"]
    i_ty = np.zeros_like(i_xt) if i_ty is None else np.asarray(i_ty, dtype=float)
    dims = ("run", "split", "step", "layer")
    return xr.Dataset(
        {
            "I_XT": (dims, i_xt),
            "I_TY": (dims, i_ty),
            "H_T": (dims, i_xt + 0.5),
            "n_samples": (("run", "split"), np.tile(np.asarray(n[:splits]), (runs, 1))),
        },
        coords={
            "run": [f"seed{r}" for r in range(runs)],
            "split": ["train", "test"][:splits],
            "step": STEPS[:steps],
            "epoch": ("step", EPOCHS[:steps]),
            "layer": layers,
        },
    )


def brute_moving_average(x: np.ndarray, window: int) -> np.ndarray:
    half = (window - 1) // 2
    n = len(x)
    out = np.empty(n)
    for i in range(n):
        h = min(half, i, n - 1 - i)
        part = x[i - h : i + h + 1]
        part = part[np.isfinite(part)]
        out[i] = part.mean() if part.size else np.nan
    return out


@pytest.mark.parametrize("window", [1, 3, 5, 7])
def test_moving_average_matches_a_loop_including_nan(rng, window):
    x = rng.normal(size=(3, 11))
    x[1, 4] = np.nan
    x[2, :] = np.nan
    got = analysis.moving_average(x, window, axis=1)
    want = np.stack([brute_moving_average(row, window) for row in x])
    np.testing.assert_allclose(got, want, equal_nan=True)
    # along another axis: the same numbers, transposed
    np.testing.assert_allclose(analysis.moving_average(x.T, window, axis=0), want.T, equal_nan=True)


def test_moving_average_keeps_the_ends_and_a_line():
    line = np.arange(9.0) * 0.3 + 1
    np.testing.assert_allclose(analysis.moving_average(line, 5), line)


@pytest.mark.parametrize("window", [0, 2, -1, 1.5, True])
def test_moving_average_rejects_bad_windows(window):
    with pytest.raises(InputError, match="window"):
        analysis.moving_average(np.ones(5), window)


def test_phase_summary_finds_rise_peak_and_drop():
    # one layer rises 1 -> 4 at step 30 then falls to 2.5; the other rises and never falls
    up_down = np.array([1.0, 2.0, 3.0, 4.0, 3.5, 3.0, 2.5, 2.5, 2.5])
    up = np.array([1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    i_xt = np.stack([up_down, up], axis=-1)[None, None]  # (run, split, step, layer)
    summary = analysis.phase_summary(estimates(i_xt), window=1)
    first = summary.sel(run="seed0", layer="fc1")
    assert float(first["peak"]) == 4.0
    assert int(first["peak_step"]) == 30
    assert float(first["peak_epoch"]) == pytest.approx(30 / 80)
    assert float(first["rise"]) == pytest.approx(3.0)
    assert float(first["drop"]) == pytest.approx(1.5)
    second = summary.sel(run="seed0", layer="softmax")
    assert float(second["drop"]) == 0.0
    assert int(second["peak_step"]) == 20  # the first of the tied maxima


def test_phase_summary_smooths_before_taking_the_peak():
    # a single spike at step 10 is the raw maximum; after smoothing (window 3) the broad bump wins
    curve = np.array([0.0, 5.0, 0.0, 3.0, 3.0, 3.0, 0.0, 0.0, 0.0])
    summary = analysis.phase_summary(
        estimates(curve[None, None, :, None], layers=["fc1"]), window=3
    )
    assert int(summary["peak_step"].item()) == 40
    assert float(summary["peak"].item()) == pytest.approx(3.0)
    raw = analysis.phase_summary(estimates(curve[None, None, :, None], layers=["fc1"]), window=1)
    assert int(raw["peak_step"].item()) == 10


def test_phase_summary_uses_the_requested_split_and_variable():
    flat = np.ones(9)
    falling = np.linspace(3, 1, 9)
    i_xt = np.stack([flat, falling])[None, :, :, None]  # train flat, test falling
    i_ty = np.stack([falling, flat])[None, :, :, None]
    mi = estimates(i_xt, i_ty, layers=["fc1"])

    def drop(**kwargs) -> float:
        return analysis.phase_summary(mi, window=1, **kwargs)["drop"].item()

    assert drop(split="train") == 0.0
    assert drop(split="test") == pytest.approx(2.0)
    assert drop(var="I_TY", split="train") == pytest.approx(2.0)
    with pytest.raises(InputError, match="split"):
        analysis.phase_summary(mi, split="validation")
    with pytest.raises(InputError, match="variable"):
        analysis.phase_summary(mi, var="I_XY")


def test_phase_summary_ignores_missing_steps_and_all_nan_runs():
    curve = np.array([1.0, 2.0, 4.0, 3.0, 2.0, np.nan, np.nan, np.nan, np.nan])
    dead = np.full(9, np.nan)
    mi = estimates(np.stack([curve, dead])[:, None, :, None], layers=["fc1"])
    summary = analysis.phase_summary(mi, window=1)
    assert summary["drop"].sel(run="seed0").item() == pytest.approx(2.0)  # final = last captured
    assert np.isnan(summary["drop"].sel(run="seed1").item())


def test_compression_table_compares_the_mean_drop_with_its_spread(rng):
    runs = 5
    base = np.array([1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0])
    drops = np.array([[1.0, 0.05], [1.1, -0.05], [0.9, 0.05], [1.05, -0.05], [0.95, 0.05]])
    curves = np.empty((runs, 1, 9, 2))
    for r in range(runs):
        for k in range(2):
            c = base.copy()
            c[-4:] -= np.linspace(0.25, 1.0, 4) * drops[r, k]
            curves[r, 0, :, k] = c
    table = analysis.compression_table(analysis.phase_summary(estimates(curves), window=1))
    assert list(table["layer"]) == ["fc1", "softmax"]
    first = table.iloc[0]
    assert first["runs"] == runs
    assert first["mean_drop"] == pytest.approx(1.0)
    assert first["std_drop"] == pytest.approx(np.std(drops[:, 0], ddof=1))
    assert first["drop_over_std"] == pytest.approx(1.0 / np.std(drops[:, 0], ddof=1))
    assert bool(first["compresses"])
    # a layer whose final value is the peak in some runs (drop 0) and 0.05 lower in others
    second = table.iloc[1]
    assert second["mean_drop"] == pytest.approx(0.03)
    assert not bool(second["compresses"])


def test_best_step_and_early_stopping_take_the_smoothed_argmax():
    acc = xr.DataArray(
        [[0.1, 0.5, 0.9, 0.6, 0.95, 0.6, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]],
        dims=("run", "epoch"),
        coords={"run": ["a", "b"], "epoch": np.arange(7.0)},
    )
    raw = analysis.early_stopping(acc, window=1)
    assert raw.dims == ("run",)
    np.testing.assert_array_equal(raw.values, [4.0, 6.0])
    # smoothed over 3 epochs the plateau 0.9, 0.6, 0.95 (mean 0.82) beats the lone 0.95 neighbours
    smoothed = analysis.early_stopping(acc, window=3)
    np.testing.assert_array_equal(smoothed.values, [3.0, 6.0])


def test_metrics_array_reads_the_long_metrics_table():
    table = pd.DataFrame(
        {
            "run": ["seed0"] * 4 + ["seed1"] * 4,
            "epoch": [0, 0, 1, 1] * 2,
            "split": ["train", "test"] * 4,
            "metric": ["accuracy"] * 8,
            "value": [0.1, 0.2, 0.8, 0.7, 0.15, 0.25, 0.85, 0.75],
        }
    )
    acc = analysis.metrics_array(table, split="test")
    assert acc.dims == ("run", "epoch")
    np.testing.assert_allclose(acc.sel(run="seed1").values, [0.25, 0.75])
    with pytest.raises(InputError, match="no test loss"):
        analysis.metrics_array(table, metric="loss")
    with pytest.raises(InputError, match="columns"):
        analysis.metrics_array(table.drop(columns="metric"))


def test_accuracy_from_probs():
    probs = np.array([[[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], [[0.1, 0.9], [0.1, 0.9], [0.1, 0.9]]])
    labels = np.array([[0, 1, 1], [1, 1, 0]])
    np.testing.assert_allclose(analysis.accuracy_from_probs(probs, labels), [2 / 3, 2 / 3])
    with pytest.raises(InputError, match="do not match"):
        analysis.accuracy_from_probs(probs, labels[:, :2])


def test_compression_onset_is_the_earliest_peak_of_the_chosen_layers():
    rising = np.linspace(0, 1, 9)
    early = np.array([0, 1, 2, 3, 2, 1, 1, 1, 1.0])  # peak at step 30
    late = np.array([0, 1, 2, 3, 4, 5, 4, 3, 2.0])  # peak at step 80
    i_xt = np.stack([rising, late, early, rising], axis=-1)[None, None]  # fc1, fc2, fc3, softmax
    mi = estimates(i_xt)
    onset = analysis.compression_onset(mi, window=1)  # default: the last two hidden layers
    assert onset.attrs["layers"] == ["fc2", "fc3"]
    assert int(onset["onset_step"].sel(run="seed0")) == 30
    assert float(onset["onset_epoch"].sel(run="seed0")) == pytest.approx(30 / 80)
    only_fc2 = analysis.compression_onset(mi, layers=["fc2"], window=1)
    assert int(only_fc2["onset_step"].sel(run="seed0")) == 80
    with pytest.raises(InputError, match="unknown layer"):
        analysis.compression_onset(mi, layers=["conv9"])


def test_hidden_layers_leave_out_the_softmax():
    mi = estimates(np.zeros((1, 1, 9, 4)))
    assert analysis.hidden_layers(mi) == ["fc1", "fc2", "fc3"]
    assert analysis.hidden_layers(mi, last=2) == ["fc2", "fc3"]


def test_data_processing_summary_pools_the_pairs():
    # layers fc1, fc2, softmax; 4 steps x 1 run. I(X;T): fc1 >= fc2 at 3 of 4 steps,
    # fc2 >= softmax at every step -> pooled 7 of 8. I(T;Y) is ordered the wrong way everywhere.
    fc1 = np.array([3.0, 3.0, 3.0, 1.0])
    fc2 = np.array([2.0, 2.0, 2.0, 2.0])
    soft = np.array([1.0, 1.0, 1.0, 1.0])
    i_xt = np.stack([fc1, fc2, soft], axis=-1)[None, None]
    i_ty = np.stack([soft, fc2, fc1 + 3], axis=-1)[None, None]
    mi = estimates(i_xt, i_ty).isel(step=slice(0, 4))
    table = analysis.data_processing_summary(mi)
    row = table.set_index("split").loc["train"]
    assert row["points_XT"] == 8
    assert row["share_XT"] == pytest.approx(7 / 8)
    assert row["chain_XT"] == pytest.approx(3 / 4)
    assert row["share_TY"] == pytest.approx(0.0)


def test_saturation_divides_by_log2_n():
    mi = estimates(np.full((1, 2, 9, 2), 2.0))
    frac = analysis.saturation(mi)  # H_T = I_XT + 0.5 = 2.5 bits
    np.testing.assert_allclose(frac.sel(split="train").values, 2.5 / np.log2(100))
    np.testing.assert_allclose(frac.sel(split="test").values, 2.5 / np.log2(200))


def test_compression_table_claims_nothing_from_one_run():
    curve = np.array([1.0, 2.0, 3.0, 4.0, 3.0, 2.0, 2.0, 2.0, 2.0])
    table = analysis.compression_table(
        analysis.phase_summary(estimates(curve[None, None, :, None], layers=["fc1"]), window=1)
    )
    row = table.iloc[0]
    assert row["mean_drop"] == pytest.approx(2.0)
    assert np.isnan(row["std_drop"]) and np.isnan(row["drop_over_std"])
    assert not bool(row["compresses"])


def test_compression_table_treats_rounding_noise_as_no_drop():
    # a saturated estimator: every value log2 N up to rounding, in every run
    ceiling = np.log2(100)
    noise = np.array([0.0, 2e-15, -1e-15, 3e-15, 0.0])
    curves = np.full((5, 1, 9, 1), ceiling)
    curves[:, 0, 2, 0] += np.abs(noise)
    table = analysis.compression_table(
        analysis.phase_summary(estimates(curves, layers=["conv1"]), window=1)
    )
    row = table.iloc[0]
    assert row["mean_drop"] == 0.0
    assert np.isnan(row["drop_over_std"])
    assert not bool(row["compresses"])


def test_paired_difference_pairs_runs_before_taking_the_spread():
    # the drops differ a lot between runs but train - test is 0.5 in every run
    base = np.array([1.0, 2.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0])
    curves = np.empty((4, 2, 9, 1))
    for r, size in enumerate([0.5, 1.0, 1.5, 2.0]):
        for k, extra in enumerate([0.5, 0.0]):  # train drops 0.5 more than test
            c = base.copy()
            c[-1] -= size + extra
            curves[r, k, :, 0] = c
    mi = estimates(curves, layers=["fc1"])
    train = analysis.phase_summary(mi, split="train", window=1)
    test = analysis.phase_summary(mi, split="test", window=1)
    row = analysis.paired_difference(train, test).iloc[0]
    assert row["runs"] == 4
    assert row["mean_diff"] == pytest.approx(0.5)
    assert row["std_diff"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(row["diff_over_std"])
    unpaired = analysis.compression_table(train).iloc[0]
    assert unpaired["std_drop"] > 0.5  # the spread between runs that pairing removes
    with pytest.raises(InputError, match="not in both"):
        analysis.paired_difference(train, test.isel(run=slice(0, 2)))


def test_analysis_imports_neither_the_figures_nor_matplotlib():
    # computations feed the figures, never the other way round
    import subprocess
    import sys

    code = (
        "import sys, infoplane.report.analysis; "
        "print(sorted(m for m in sys.modules "
        "if m == 'infoplane.report.plots' or m.split('.')[0] == 'matplotlib'))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "[]"


# --- phase metrics with intervals and verdicts ---------------------------------------------


def phase_result(drops, *, rise=1.0, noise=0.02, seed=0):
    """Stacked :func:`make_result` runs whose I(X;T) rises 1 bit by step 30 and then drops by
    ``drops[layer]`` bits by the last step (each run and step off by ``noise``; a layer of drop
    0 keeps rising, each run off by a constant), and whose I(T;Y) rises by ``rise`` bits over
    the first 3 steps, on both splits."""
    from infoplane.testing import make_result

    rng = np.random.default_rng(seed)
    layers = list(drops)
    runs = []
    for r in range(4):
        ds = make_result(n_steps=8, layers=layers)
        up = np.minimum(np.arange(8), 3) / 3.0  # 0, 1/3, 2/3, 1, 1, ...
        for k, drop in enumerate(drops.values()):
            if drop:
                down = np.clip(np.arange(8) - 3, 0, None) / 4.0 * drop
                xt = 1.0 + up - down * (1 + noise * rng.standard_normal())
                xt = xt + noise * rng.normal(size=8)
            else:
                xt = 1.0 + np.arange(8) / 7.0 + noise * rng.standard_normal()
            ds["I_XT"][:, :, k] = xt
            ds["I_TY"][:, :, k] = 0.2 + rise * up
        runs.append(ds.expand_dims(run=[f"seed{r}"]))
    return xr.concat(runs, dim="run")


def with_bounds(ds, half_width, level=0.9):
    """``ds`` with resampling bounds ``I_XT_lo/_hi`` and ``I_TY_lo/_hi`` of ± ``half_width``."""
    out = ds.copy()
    for var in ("I_XT", "I_TY"):
        out[f"{var}_lo"] = ds[var] - half_width
        out[f"{var}_hi"] = ds[var] + half_width
    out.attrs["interval_level"] = level
    return out


def test_phase_table_finds_compression_and_fitting_with_intervals():
    ds = phase_result({"a": 0.8, "b": 0.0})
    table = analysis.phase_table(ds, window=1)
    assert list(table.columns) == list(analysis.PHASE_COLUMNS)
    assert len(table) == 4 and set(table["split"]) == {"train", "test"}
    a = table[(table["split"] == "train") & (table["layer"] == "a")].iloc[0]
    b = table[(table["split"] == "train") & (table["layer"] == "b")].iloc[0]
    assert a["runs"] == 4 and not a["resampled"]
    assert a["compression_lo"] < a["compression"] < a["compression_hi"]
    assert a["compression"] == pytest.approx(0.8, abs=0.1) and a["significant"]
    assert a["compression_onset_epoch"] == pytest.approx(30, abs=10)  # make_result: epoch = step
    assert a["fitting"] == pytest.approx(1.0, abs=1e-9)
    assert a["fitting_onset_epoch"] == 10  # the first step past 10 % of the rise
    assert b["compression_lo"] < 0.1 and not b["significant"]
    flat = analysis.phase_table(phase_result({"a": 0.8}, rise=0.0), window=1)
    assert np.allclose(flat["fitting"], 0) and flat["fitting_onset_epoch"].isna().all()


def test_phase_intervals_combine_seeds_and_resampling_bounds():
    ds = phase_result({"a": 0.8, "b": 0.0})
    plain = analysis.phase_table(ds, window=1).set_index(["split", "layer"])
    narrow = analysis.phase_table(with_bounds(ds, 0.01), window=1).set_index(["split", "layer"])
    wide = analysis.phase_table(with_bounds(ds, 2.0), window=1).set_index(["split", "layer"])
    key = ("train", "a")
    assert narrow.loc[key, "resampled"] and not plain.loc[key, "resampled"]
    assert narrow.loc[key, "compression"] == plain.loc[key, "compression"]
    width = {name: t.loc[key, "compression_hi"] - t.loc[key, "compression_lo"]
             for name, t in (("plain", plain), ("narrow", narrow), ("wide", wide))}  # fmt: skip
    assert width["plain"] < width["narrow"] < width["wide"]
    assert narrow.loc[key, "significant"] and not wide.loc[key, "significant"]
    # bounds of I(X;T) only: the compression uses them, the fitting the seeds alone
    only_xt = with_bounds(ds, 0.01).drop_vars(["I_TY_lo", "I_TY_hi"])
    partial = analysis.phase_table(only_xt, window=1).set_index(["split", "layer"])
    assert partial.loc[key, "resampled"]
    assert partial.loc[key, "compression_lo"] == narrow.loc[key, "compression_lo"]
    assert partial.loc[key, "fitting_lo"] == plain.loc[key, "fitting_lo"]
    # one run: seeds give no interval, the resampling bounds still do
    one = ds.isel(run=[0])
    assert np.isnan(analysis.phase_table(one, window=1)["compression_lo"]).all()
    single = analysis.phase_table(with_bounds(one, 0.01), window=1).set_index(["split", "layer"])
    assert single.loc[key, "significant"] and not single.loc[("train", "b"), "significant"]


def test_mean_interval_is_the_t_interval_of_the_runs():
    from scipy import stats

    values = np.array([0.5, 0.7, 0.6, np.nan])
    mean, lo, hi = analysis.mean_interval(values, level=0.9)
    ref = stats.t.interval(0.9, 2, loc=0.6, scale=stats.sem(values[:3]))
    assert mean == pytest.approx(0.6) and (lo, hi) == pytest.approx(ref)


def test_phase_verdicts_every_some_none():
    strong = analysis.phase_table(phase_result({"a": 0.8, "b": 0.6, "c": 0.0}), window=1)
    weak = analysis.phase_table(phase_result({"a": 0.8, "b": 0.0, "c": 0.0}, seed=1), window=1)
    verdicts = analysis.phase_verdicts({"m.x1": strong, "m.x2": weak})
    assert list(verdicts.columns[:2]) == ["preset", "split"]
    assert {"significant_under", "presets", "verdict"} <= set(verdicts.columns)
    train = verdicts[verdicts["split"] == "train"].drop_duplicates("layer").set_index("layer")
    assert train["verdict"].to_dict() == {"a": "every", "b": "some", "c": "none"}
    assert train.loc["b", "significant_under"] == 1 and train.loc["b", "presets"] == 2
    assert len(verdicts) == 2 * len(strong)
    with pytest.raises(InputError):
        analysis.phase_verdicts({})
