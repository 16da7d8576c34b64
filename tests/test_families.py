"""Sensitivity families estimated from one distance cache: each member is its single preset."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from infoplane.errors import InputError
from infoplane.estimate.pipeline import estimate, keep_alignment_widths
from infoplane.presets import resolve_preset
from infoplane.testing import assert_results_identical

FAMILY = {
    "estimators": {
        "sig": {"family": {"base": "paper", "vary": "sigma_scale", "values": [1, 2]}},
    }
}


def test_members_estimate_as_their_single_presets_from_the_kept_widths(run_dir, client, caplog):
    cache = run_dir / "distances.zarr"
    paper = resolve_preset(None, "paper")
    # the workflow's `widths` job: one search, kept in the cache ahead of the members
    summary = keep_alignment_widths(cache, grid="linear", points=100, client=client)
    assert summary["steps"] == {"train": 4, "test": 4}
    with caplog.at_level(logging.INFO, logger="infoplane.estimate.pipeline"):
        base = estimate(cache, paper, name="paper", client=client)
        member = estimate(cache, resolve_preset(FAMILY, "sig.x2"), name="sig.x2", client=client)
    assert caplog.text.count("alignment widths kept") == 4  # two presets × two splits: no search
    single = {**paper, "layer_width": {**paper["layer_width"], "scale": 2.0}}
    assert_results_identical(member, estimate(cache, single, name="sig.x2", client=client))
    # scale 1 is the base preset itself, scale 2 doubles the smoothed widths it chose
    unit = estimate(cache, resolve_preset(FAMILY, "sig.x1"), name="paper", client=client)
    assert_results_identical(unit, base)
    np.testing.assert_array_equal(member["sigma_star"].values, base["sigma_star"].values)
    np.testing.assert_allclose(member["sigma"].values, 2 * base["sigma"].values, rtol=1e-12)
    assert not np.allclose(member["I_XT"].values, base["I_XT"].values)


def member_result(name: str, drop: float, seed: int):
    """Two runs of :func:`make_result` whose I(X;T) of layer a rises then drops by ``drop``."""
    import xarray as xr

    from infoplane.testing import make_result

    rng = np.random.default_rng(seed)
    runs = []
    for r in range(3):
        ds = make_result(n_steps=6, layers=("a", "b"), attrs={"estimator": name})
        curve = np.array([0.0, 0.5, 1.0, 1.0, 1.0 - drop / 2, 1.0 - drop])
        ds["I_XT"][:, :, 0] = 0.5 + curve + 0.01 * rng.standard_normal()
        ds["I_XT"][:, :, 1] = 0.5 + np.linspace(0, 1, 6) + 0.01 * rng.standard_normal()
        runs.append(ds.expand_dims(run=[f"seed{r}"]))
    return xr.concat(runs, dim="run", combine_attrs="override")


def test_phases_command_writes_the_verdict_table(tmp_path, capsys):
    import pandas as pd

    from infoplane.cli import main
    from infoplane.io.results import write_result

    paths = []
    for name, drop in (("sig.x1", 0.6), ("sig.x2", 0.0)):
        paths.append(tmp_path / f"{name}.zarr")
        write_result(member_result(name, drop, seed=len(paths)), paths[-1])
    out = tmp_path / "phases" / "sig.csv"
    assert main(["phases", *map(str, paths), "--out", str(out), "--window", "1"]) == 0
    table = pd.read_csv(out)
    assert list(table.columns[:3]) == ["preset", "split", "layer"]
    assert {"compression_lo", "compression_hi", "fitting", "verdict"} <= set(table.columns)
    assert len(table) == 2 * 2 * 2  # presets × splits × layers
    verdict = table.drop_duplicates(["split", "layer"]).set_index(["split", "layer"])["verdict"]
    assert verdict[("train", "a")] == "some" and verdict[("train", "b")] == "none"
    assert (
        "train a: compression significant under some preset(s) (1 of 2)" in capsys.readouterr().out
    )


def test_family_figure_draws_the_members_and_their_band(tmp_path):
    from matplotlib.collections import LineCollection

    from infoplane.report import plots

    results = {name: member_result(name, drop, seed=k)
               for k, (name, drop) in enumerate((("sig.x1", 0.6), ("sig.x2", 0.2)))}  # fmt: skip
    fig = plots.family_figure(results, "train", family="sig")
    top = fig.axes[:2]
    for ax in top:  # one join of the members per step and one line per member
        joins = [c for c in ax.collections if isinstance(c, LineCollection)]
        assert len(joins) == 1 and len(joins[0].get_segments()) == 6
        assert len(ax.lines) == 2
    # the join spans the members: at the last step of layer a, from 0.5 + 0.4 to 0.5 + 0.8
    last = top[0].collections[0].get_segments()[-1]
    assert sorted(last[:, 0]) == pytest.approx([0.9, 1.3], abs=0.05)
    assert "family sig" in fig._suptitle.get_text().lower()
    written = plots.plot_family(list(results.values()), tmp_path, splits=["test"])
    assert [p.name for p in written] == ["family_test.png"] and written[0].stat().st_size
    shifted = results["sig.x2"].assign_coords(step=results["sig.x2"]["step"] + 1)
    with pytest.raises(InputError, match="different steps"):
        plots.family_figure({"sig.x1": results["sig.x1"], "sig.x2": shifted})
