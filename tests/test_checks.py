import json

import numpy as np
import pytest

from infoplane.cli import main
from infoplane.errors import StoreError
from infoplane.estimate.pipeline import estimate
from infoplane.io.results import stack_runs, write_result
from infoplane.presets import resolve_preset
from infoplane.report.checks import check_result, degenerate_estimates, nan_points
from infoplane.testing import assert_invariants, make_result, make_store


def test_consistent_result_has_no_violation():
    assert check_result(make_result()) == []
    assert nan_points(make_result()) == []


def test_each_broken_invariant_is_reported_with_its_point():
    ds = make_result()
    point = {"split": "test", "step": 10, "layer": "b"}
    ds["H_T"].loc[point] = 3.5  # > log2 8, and breaks the joint and MI bounds it enters
    found = check_result(ds)
    assert found and all(v.where == point for v in found)
    names = {v.invariant for v in found}
    assert "H_T <= log2 N" in names
    assert "H_XT >= max of its marginals" in names
    assert "I_XT = H + H - joint H" in names
    assert "split test, step 10, layer b: H_T <= log2 N violated" in str(found[0]) or any(
        "split test, step 10, layer b: H_T <= log2 N" in str(v) for v in found
    )


@pytest.mark.parametrize(
    ("variable", "value", "invariant"),
    [
        ("H_XT", 3.1, "H_XT <= sum of marginals"),
        ("I_XT", -0.01, "I_XT >= 0"),
        ("I_TY", 1.2, "I_TY <= min of the entropies"),
        ("H_TY", -0.5, "H_TY >= 0"),
    ],
)
def test_single_violations(variable, value, invariant):
    ds = make_result()
    ds[variable].loc[{"split": "train", "step": 0, "layer": "a"}] = value
    assert invariant in {v.invariant for v in check_result(ds)}


@pytest.mark.parametrize(("alpha", "flagged"), [(1.0, True), (0.5, True), (2.0, False)])
def test_subadditivity_is_checked_only_where_it_is_a_theorem(alpha, flagged):
    # for alpha > 1 the matrix-based joint entropy may exceed the sum of its marginals
    ds = make_result()
    ds.attrs["preset"] = json.dumps({"alpha": alpha})
    point = {"split": "train", "step": 0, "layer": "a"}
    ds["H_XT"].loc[point] = 3.05
    ds["I_XT"].loc[point] = 2.0 + 1.0 - 3.05
    names = {v.invariant for v in check_result(ds)}
    assert ("H_XT <= sum of marginals" in names) is flagged
    assert ("I_XT >= 0" in names) is flagged
    assert "H_XT <= log2 N" in names  # the other bounds hold for every alpha


def test_log2n_bound_uses_each_splits_probe_size():
    ds = make_result()
    ds["n_samples"][:] = [8, 4]  # test: log2 4 = 2 < H_XT = 2.5
    found = check_result(ds)
    assert found and {v.where["split"] for v in found} == {"test"}
    ds = ds.drop_vars("n_samples").assign_attrs(n_samples={"train": 8, "test": 4})
    assert {v.where["split"] for v in check_result(ds)} == {"test"}
    with pytest.raises(StoreError, match="probe size"):
        check_result(ds.drop_attrs())


def test_missing_or_unreadable_result_files_name_the_remedy(tmp_path):
    with pytest.raises(StoreError, match=r"does not exist; run `infoplane estimate`"):
        check_result(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(StoreError, match=r"cannot read result .*`infoplane estimate`"):
        check_result(tmp_path / "empty.zarr")


def test_tolerance():
    ds = make_result()
    point = {"split": "train", "step": 0, "layer": "a"}
    # rounding-sized excess: H_XT a hair above H_X + H_T (and log2 N), I_XT a hair below 0
    ds["H_XT"].loc[point] = 3.0 + 1e-9
    ds["I_XT"].loc[point] = -1e-9
    assert check_result(ds) == []
    assert check_result(ds, tolerance=1e-12)


def test_nan_points_are_listed_not_violations():
    ds = make_result()
    ds["I_XT"].loc[{"split": "train", "step": 20, "layer": "a"}] = np.nan
    assert check_result(ds) == []
    assert nan_points(ds) == [{"split": "train", "step": 20, "layer": "a"}]


def test_stacked_results_name_the_run():
    ds = stack_runs([make_result(), make_result()], runs=["seed0", "seed1"])
    ds["H_TY"].loc[{"run": "seed1", "split": "train", "step": 0, "layer": "a"}] = 9.0
    found = check_result(ds)
    assert found and all(v.where["run"] == "seed1" for v in found)


def test_check_command_exit_codes(tmp_path, capsys):
    good = tmp_path / "good.zarr"
    write_result(make_result(), good)
    assert main(["check", str(good)]) == 0
    assert "0 violation(s)" in capsys.readouterr().out
    bad = make_result()
    bad["I_TY"].loc[{"split": "test", "step": 20, "layer": "a"}] = 2.0
    bad["H_X"].loc[{"split": "train", "step": 0}] = np.nan
    write_result(bad, tmp_path / "bad.zarr")
    assert main(["check", str(tmp_path / "bad.zarr")]) == 1
    out = capsys.readouterr().out
    assert "VIOLATION split test, step 20, layer a: I_TY <= min of the entropies" in out
    assert "NaN split train, step 0, layer a" in out
    nan_only = make_result()
    nan_only["H_T"][:] = np.nan
    write_result(nan_only, tmp_path / "nan.zarr")
    assert main(["check", str(tmp_path / "nan.zarr")]) == 0
    assert main(["check", str(tmp_path / "nan.zarr"), "--fail-on-nan"]) == 1


def test_real_estimates_satisfy_every_invariant(tmp_path, client):
    store = make_store(tmp_path / "s.zarr", steps=(0, 10, 20), n=10)
    for name in ("paper", "paper-alpha1.01", "silverman", "multivariate"):
        result = estimate(store, resolve_preset(None, name), name=name, client=client)
        assert_invariants(result)


def test_degenerate_estimates_are_flagged_with_the_remedy(tmp_path, capsys):
    ds = make_result(n_steps=3, layers=("a", "b"))  # N = 8: log2 N = 3 bits
    train = {"split": "train"}
    ds["H_X"].loc[train] = 3.0  # saturated at every step of train (so is the joint)
    ds["H_XT"].loc[train] = 3.0
    ds["I_XT"].loc[train] = 3.0 + 1.0 - 3.0
    point = {"split": "test", "layer": "b", "step": int(ds["step"][1])}
    for name, value in (("H_T", 0.0), ("H_XT", 2.0), ("I_XT", 0.0), ("H_TY", 1.5), ("I_TY", 0.0)):
        ds[name].loc[point] = value  # a collapsed layer, the rest consistent with it
    assert check_result(ds) == []
    found = degenerate_estimates(ds)
    kinds = {(d.quantity, d.kind, tuple(sorted(d.where.items()))) for d in found}
    assert ("H_X", "saturated", (("split", "train"),)) in kinds
    assert ("H_T", "collapsed", (("layer", "b"), ("split", "test"))) in kinds
    saturated = next(d for d in found if d.quantity == "H_X")
    assert saturated.steps == [int(s) for s in ds["step"].values]
    assert "scale the inputs to [0, 1]" in str(saturated) and "input_width" in str(saturated)
    assert not degenerate_estimates(make_result())

    write_result(ds, tmp_path / "degenerate.zarr")
    assert main(["check", str(tmp_path / "degenerate.zarr")]) == 0  # warnings do not fail
    out = capsys.readouterr().out
    assert "WARNING split train: H_X is saturated" in out
    assert "H_XT is saturated" in out and "H_T is collapsed" in out
    assert "4 degenerate estimate(s)" in out  # H_X; H_XT of layers a and b; H_T of b
