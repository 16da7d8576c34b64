"""Sensitivity families estimated from one distance cache: each member is its single preset."""

from __future__ import annotations

import logging

import numpy as np

from infoplane.estimate.pipeline import estimate
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
    base = estimate(cache, paper, name="paper", client=client)  # searches, keeps the widths
    with caplog.at_level(logging.INFO, logger="infoplane.estimate.pipeline"):
        member = estimate(cache, resolve_preset(FAMILY, "sig.x2"), name="sig.x2", client=client)
    assert caplog.text.count("alignment widths kept") == 2  # both splits: no new search
    single = {**paper, "layer_width": {**paper["layer_width"], "scale": 2.0}}
    assert_results_identical(member, estimate(cache, single, name="sig.x2", client=client))
    # scale 1 is the base preset itself, scale 2 doubles the smoothed widths it chose
    unit = estimate(cache, resolve_preset(FAMILY, "sig.x1"), name="paper", client=client)
    assert_results_identical(unit, base)
    np.testing.assert_array_equal(member["sigma_star"].values, base["sigma_star"].values)
    np.testing.assert_allclose(member["sigma"].values, 2 * base["sigma"].values, rtol=1e-12)
    assert not np.allclose(member["I_XT"].values, base["I_XT"].values)
