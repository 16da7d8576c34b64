"""Every pairing of two artefacts compares their fingerprints: results to stack, kept widths."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import zarr

from infoplane.errors import StoreError
from infoplane.estimate.distances import compute_distances
from infoplane.estimate.pipeline import estimate
from infoplane.io import cache
from infoplane.io.results import build_result, stack_runs
from infoplane.presets import resolve_preset
from infoplane.testing import make_store


def result(run="seed0", *, experiment="e", layers=("a", "b"), store="f0"):
    steps = np.array([0, 10])
    points = [("train", int(t), {"I_XT": np.full(len(layers), 0.5), "H_X": 0.5}) for t in steps]
    return build_result(
        layers=list(layers),
        splits={"train": (steps, steps / 10.0, 8)},
        points=points,
        attrs={"estimator": "paper", "preset": "{}", "source": run, "store_attrs_sha256": store},
        provenance={"experiment": experiment, "run": run},
    )


def test_stacking_refuses_other_experiments_other_layers_and_a_run_twice():
    ok = stack_runs([result("seed0", store="f0"), result("seed1", store="f1")])
    assert list(ok["run"].values) == ["seed0", "seed1"]
    with pytest.raises(StoreError, match=r"different experiments \(e, f\)"):
        stack_runs([result("seed0", store="f0"), result("seed1", experiment="f", store="f1")])
    with pytest.raises(StoreError, match=r"different layers \(a, b \| a, c\)"):
        stack_runs([result("seed0", store="f0"), result("seed1", layers=("a", "c"), store="f1")])
    with pytest.raises(StoreError, match=r"from the same store .* counted twice"):
        stack_runs([result("seed0", store="f0"), result("seed0", store="f0")], runs=["a", "b"])


def test_results_record_their_stores_fingerprint(tmp_path, client):
    store = make_store(tmp_path / "activations.zarr", steps=(0, 10), n=8)
    got = estimate(store, resolve_preset(None, "fixed-example"), name="f", client=client)
    from infoplane.io.store import read_store_plan

    assert got.attrs["store_attrs_sha256"] == read_store_plan(store).fingerprint


def test_kept_widths_of_another_cache_are_not_used(tmp_path, client, caplog):
    caches = []
    for seed in (0, 1):
        store = make_store(tmp_path / f"r{seed}" / "activations.zarr", steps=(0, 10), n=10,
                           seed=seed, run=f"seed{seed}")  # fmt: skip
        caches.append(tmp_path / f"r{seed}" / "distances.zarr")
        compute_distances(store, caches[-1], client=client)
    preset = resolve_preset(None, "paper")
    first = estimate(caches[0], preset, name="paper", client=client)
    estimate(caches[1], preset, name="paper", client=client)  # keeps seed1's widths
    # seed1's kept widths copied over seed0's (same search, same steps, same layers)
    shutil.rmtree(caches[0] / cache.WIDTHS_GROUP)
    shutil.copytree(caches[1] / cache.WIDTHS_GROUP, caches[0] / cache.WIDTHS_GROUP)
    assert (
        zarr.open_group(str(caches[0]), mode="r").attrs["cache_id"]
        != zarr.open_group(str(caches[1]), mode="r").attrs["cache_id"]
    )
    with caplog.at_level(logging.WARNING, logger="infoplane.io.cache"):
        again = estimate(caches[0], preset, name="paper", client=client)
    assert "searched on another distance cache" in caplog.text
    np.testing.assert_array_equal(again["sigma"].values, first["sigma"].values)
