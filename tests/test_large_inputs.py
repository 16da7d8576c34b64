"""Large probe sets: the width search above N = 1000 and the storage forms of the distance cache."""

import numpy as np
import pytest
import zarr

from infoplane.core import widths
from infoplane.core.distances import pack_upper, squared_distances, unpack_upper
from infoplane.core.kernels import label_gram
from infoplane.errors import InputError, StoreError
from infoplane.estimate.distances import (
    AUTO_FULL_MAX_N,
    PointDistances,
    choose_storage,
    compute_distances,
    storage_costs,
)
from infoplane.estimate.pipeline import estimate
from infoplane.io import cache
from infoplane.presets import resolve_preset
from infoplane.testing import assert_results_identical, make_store

RESULT_KEYS = ("H_T", "H_XT", "H_TY", "I_XT", "I_TY", "H_X", "H_Y", "sigma")


def mlp_like(rng, n, dim, classes=10):
    """tanh activations of class-dependent inputs: the shape of an MLP layer's probe."""
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, dim))
    return np.tanh(0.5 * centres[y] + rng.normal(size=(n, dim))), y


# --------------------------------------------------------------------------------------------
# width search


@pytest.mark.parametrize("seed", range(4))
def test_the_search_up_to_1000_samples_is_the_grid_argmax_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([40, 300, widths.EXACT_SEARCH_MAX_N]))
    x, y = mlp_like(rng, n, int(rng.choice([3, 20, 200])))
    d2, gram_y = squared_distances(x), label_gram(y)
    for kind in ("linear", "log"):
        grid = widths.width_grid(d2, kind, 60)
        scores = widths.alignment_scores(d2, gram_y, grid)
        sigma, _ = widths.alignment_width(d2, gram_y, grid=kind, points=60)
        assert sigma == grid[np.argmax(scores)]


@pytest.mark.parametrize("seed", range(6))
def test_the_sampled_search_finds_the_grid_argmax(seed, monkeypatch):
    # the large-N path on small matrices, where the exact argmax is cheap to know
    monkeypatch.setattr(widths, "EXACT_SEARCH_MAX_N", 50)
    monkeypatch.setattr(widths, "SEARCH_SAMPLE_PAIRS", 4096)
    rng = np.random.default_rng(100 + seed)
    x, y = mlp_like(rng, 400, int(rng.choice([5, 20, 100])))
    d2, gram_y = squared_distances(x), label_gram(y)
    grid = widths.width_grid(d2, "log", 80)
    sigma, hit = widths.alignment_width(d2, gram_y, grid=grid)
    scores = widths.alignment_scores(d2, gram_y, grid)
    assert sigma == grid[np.argmax(scores)]
    assert hit == (np.argmax(scores) in (0, grid.size - 1))


def test_the_search_at_5000_samples_is_within_its_stated_error():
    # stated: the chosen width's exact alignment is within 1e-3 (relative) of the grid maximum
    rng = np.random.default_rng(7)
    x, y = mlp_like(rng, 5000, 20)
    d2, gram_y = squared_distances(x), label_gram(y)
    grid = widths.width_grid(d2, "linear", 100)
    sigma, _ = widths.alignment_width(d2, gram_y, grid=grid)
    scores = widths.alignment_scores(d2, gram_y, grid)
    chosen = scores[np.flatnonzero(grid == sigma)[0]]
    assert chosen >= scores.max() * (1 - 1e-3)


def test_the_sampled_scores_and_their_errors_cover_the_exact_ones():
    rng = np.random.default_rng(3)
    x, y = mlp_like(rng, 600, 20)
    d2, gram_y = squared_distances(x), label_gram(y)
    grid = widths.width_grid(d2, "log", 40)
    exact = widths.alignment_scores(d2, gram_y, grid)
    sampled, se = widths._sampled_scores(d2, gram_y, grid, 20000, seed=1)
    z = np.abs(sampled - exact) / se
    assert (z < 4).all() and np.median(z) < 2
    lo, hi = widths.search_window(sampled, se, 4.0, 12)
    assert lo <= np.argmax(exact) < hi and hi - lo <= 12


def test_a_lazy_point_is_searched_one_layer_at_a_time():
    from infoplane.core.plane import search_step

    rng = np.random.default_rng(0)
    mats = [squared_distances(mlp_like(rng, 50, 4)[0]) for _ in range(3)]
    y = np.arange(50) % 3
    asked = []

    class Lazy:
        def __getitem__(self, i):
            asked.append(int(i))
            return mats[i]

    flags = np.array([False, True, False])
    lazy = search_step(Lazy(), y, flags, ["a", "b", "c"], grid="linear", points=20)
    eager = search_step(np.stack(mats), y, flags, ["a", "b", "c"], grid="linear", points=20)
    assert asked == [0, 2]
    np.testing.assert_array_equal(lazy["sigma_star"], eager["sigma_star"])


# --------------------------------------------------------------------------------------------
# storage forms


def test_pack_upper_round_trips_a_distance_matrix(rng):
    d2 = squared_distances(rng.normal(size=(1100, 3)))
    packed = pack_upper(d2)
    assert packed.dtype == np.float32 and packed.size == 1100 * 1099 // 2
    back = unpack_upper(packed, 1100)
    np.testing.assert_array_equal(back, d2.astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(back, back.T)
    with pytest.raises(InputError):
        unpack_upper(packed[:-1], 1100)


def test_the_cost_model_keeps_small_probes_full_and_follows_the_override():
    dims = {"fc1": 1024, "fc2": 20, "softmax": 10, "x": 784}
    assert set(choose_storage(AUTO_FULL_MAX_N, dims).values()) == {"full"}
    large = choose_storage(10_000, dims)
    assert set(large.values()) <= {"float32", "recompute"}
    for name, form in large.items():  # the cheaper of the two by the model
        costs = storage_costs(10_000, dims[name])
        assert costs[form] == min(costs["float32"], costs["recompute"])
    # a narrower layer is never kept when a wider one is recomputed
    order = ["recompute", "float32"]
    ranks = [order.index(large[n]) for n in sorted(dims, key=dims.get)]
    assert ranks == sorted(ranks)
    assert set(choose_storage(100, dims, "recompute").values()) == {"recompute"}
    with pytest.raises(InputError, match="auto, full, float32, recompute"):
        choose_storage(100, dims, "half")


@pytest.fixture(scope="module")
def caches(tmp_path_factory, client):
    base = tmp_path_factory.mktemp("forms")
    store = make_store(base / "s.zarr", n=40, steps=(0, 10))
    made = {}
    for form in ("auto", "full", "float32", "recompute"):
        made[form] = base / f"{form}.zarr"
        compute_distances(store, made[form], storage=form, client=client)
    return store, made


@pytest.fixture(scope="module")
def estimates(caches, client):
    preset = resolve_preset(None, "paper")
    return {
        form: estimate(path, preset, name="paper", client=client)
        for form, path in caches[1].items()
    }


def test_auto_at_small_n_is_todays_cache_and_estimate(caches, estimates):
    assert set(cache.storage_of(caches[1]["auto"]).values()) == {"full"}
    assert_results_identical(estimates["auto"], estimates["full"])


def test_recomputed_distances_give_the_same_estimates(caches, estimates):
    group = zarr.open_group(str(caches[1]["recompute"] / "train"), mode="r")
    assert "d2_f32" not in group and not any((caches[1]["recompute"] / "train" / "d2").rglob("c"))
    for key in RESULT_KEYS:
        np.testing.assert_allclose(
            estimates["recompute"][key], estimates["full"][key], rtol=1e-12, err_msg=key
        )


def test_float32_distances_keep_the_estimates_within_1e6_relative(caches, estimates):
    # stated: entropies and widths within 1e-6 relative, MI (a difference) within 1e-6 bits
    for key in RESULT_KEYS:
        tolerance = {"atol": 1e-6} if key.startswith("I_") else {"rtol": 1e-6}
        np.testing.assert_allclose(
            estimates["float32"][key], estimates["full"][key], **tolerance, err_msg=key
        )
    point = PointDistances(
        ("conv", "fc", "softmax"), cache_path=str(caches[1]["float32"]), split="train", index=1,
        row=None,
    )  # fmt: skip
    full = cache.read_step(caches[1]["full"], "train", 1)["d2"]
    np.testing.assert_allclose(np.asarray(point), full, rtol=1e-6)


def test_a_format_2_cache_is_read_as_all_full(caches, tmp_path, client):
    import shutil

    old = tmp_path / "v2.zarr"
    shutil.copytree(caches[1]["full"], old)
    root = zarr.open_group(str(old), mode="r+")
    attrs = dict(root.attrs)
    del attrs["storage"]
    attrs["cache_schema_version"] = 2
    root.attrs.clear()
    root.attrs.update(attrs)
    zarr.consolidate_metadata(str(old))
    assert set(cache.storage_of(old).values()) == {"full"}
    result = estimate(old, resolve_preset(None, "paper"), name="paper", client=client)
    full = estimate(caches[1]["full"], resolve_preset(None, "paper"), name="paper", client=client)
    for key in RESULT_KEYS:
        np.testing.assert_array_equal(result[key], full[key])


def test_a_damaged_compact_cache_is_detected(caches, tmp_path):
    import shutil

    damaged = tmp_path / "f32.zarr"
    shutil.copytree(caches[1]["float32"], damaged)
    chunk = damaged / "train" / "d2_f32" / "c" / "1" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match=r"d2 of layer\(s\) fc\) cannot be decoded"):
        cache.read_layer(damaged, "train", 1, 1)
    chunk.unlink()
    with pytest.raises(StoreError, match="is missing"):
        cache.read_layer(damaged, "train", 1, 1)
    cache.read_layer(damaged, "train", 1, 0)  # the other layers are intact


def test_a_resumed_cache_must_keep_its_storage(caches, client):
    store, made = caches
    with pytest.raises(StoreError, match="--overwrite"):
        compute_distances(store, made["float32"], storage="full", client=client)
