"""Tiny activation stores and shared Dask clusters for the estimation-stage tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from infoplane.io.store import create_store

#: Default recorded layers: a conv map (C, H, W), a vector layer and a softmax.
LAYERS: dict[str, tuple[int, ...]] = {"conv": (2, 3, 3), "fc": (5,), "softmax": (3,)}
INPUT_SHAPE = (1, 4, 4)
CLASSES = 3


def _layer_values(x: np.ndarray, shape: tuple[int, ...], weights: np.ndarray) -> np.ndarray:
    flat = np.tanh(x.reshape(len(x), -1) @ weights)
    return flat.reshape((len(x), *shape))


def make_store(
    path: str | Path,
    *,
    n: int | Mapping[str, int] = 12,
    steps: Sequence[int] = (0, 10, 20, 30),
    layers: Mapping[str, tuple[int, ...]] = LAYERS,
    seed: int = 0,
    captured: Sequence[int] | None = None,
    nan_points: Sequence[tuple[str, int, str]] = (),
    dtype: str = "float32",
    run: str = "seed0",
) -> Path:
    """Write a small store whose layers depend on the inputs (so MI is not trivial).

    Parameters
    ----------
    n
        Probe size, the same for both splits or one per split.
    captured
        Steps to capture (default: all); the others stay uncaptured, as in a killed run.
    nan_points
        ``(split, step, layer)`` points whose activations are NaN (a diverged run).
    """
    rng = np.random.default_rng(seed)
    sizes = {"train": n, "test": n} if isinstance(n, int) else dict(n)
    writer = create_store(
        path,
        steps=list(steps),
        epochs=[s / 20.0 for s in steps],
        n_samples=sizes,
        input_shape=INPUT_SHAPE,
        layer_shapes=dict(layers),
        attrs={
            "experiment": "tiny",
            "run": run,
            "seed": seed,
            "model": "toy",
            "dataset": "synthetic",
            "config": {"experiment": "tiny"},
            "device": "cpu",
        },
        dtype=dtype,
    )
    d_in = int(np.prod(INPUT_SHAPE))
    inputs = {s: rng.random((m, *INPUT_SHAPE), dtype=np.float32) for s, m in sizes.items()}
    labels = {s: np.arange(m) % CLASSES for s, m in sizes.items()}
    for step in steps if captured is None else captured:
        for split, m in sizes.items():
            x = inputs[split]
            activations = {}
            for name, shape in layers.items():
                w = rng.normal(size=(d_in, int(np.prod(shape)))) * (1 + step / 10)
                values = _layer_values(x, shape, w)
                if (split, step, name) in nan_points:
                    values = values.copy()
                    values[0] = np.nan
                activations[name] = values.astype(np.float32)
            writer.write(
                split, step, index=np.arange(m), x=x, y=labels[split], activations=activations
            )
    return Path(path)


@pytest.fixture(scope="module")
def client():
    """One in-process cluster (two single-threaded workers) shared by a test module.

    Threads start in a fraction of the time of worker processes, which import the whole stack
    first; test_dask_cluster.py runs the real process clusters.
    """
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0"
        ) as cluster,
        Client(cluster) as shared,
    ):
        yield shared


def reference_distances(store: Path, split: str) -> dict[str, np.ndarray]:
    """Squared distances of every captured step computed independently (plain numpy, per pair)."""
    from infoplane.io.store import open_activations

    view = open_activations(store, split)
    out = {}
    for name in ["x", *view.attrs["layers"]]:
        values = np.asarray(view[name].values, dtype=np.float64)
        flat = values.reshape(values.shape[0], values.shape[1], -1)
        diff = flat[:, :, None, :] - flat[:, None, :, :]
        out[name] = (diff**2).sum(axis=-1)
    out["y"] = np.asarray(view["y"].values)
    out["step"] = np.asarray(view["step"].values)
    return out
