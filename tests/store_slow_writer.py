"""A slow activation-store writer for the kill test (run as a script; not a test module).

``python store_slow_writer.py STORE --delay 0.05`` creates a store and writes every step,
printing ``wrote <array path> <row>`` after each array write and ``captured <step>`` after each
complete step; the delay after every array write gives a test time to kill it mid-step.
The data are a pure function of (split, step), so a test can build the uninterrupted store.
The store is created by infoplane.testing.make_store (nothing captured) before writes slow down.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from infoplane.io.store import ActivationStoreWriter, open_writer
from infoplane.testing import make_store

STEPS = np.arange(0, 120, 10)
EPOCHS = STEPS / 40.0
N_SAMPLES = {"train": 32, "test": 24}
INPUT_SHAPE = (1, 16, 16)
LAYER_SHAPES = {"conv": (16, 16, 16), "fc": (64,), "softmax": (10,)}
ATTRS = {
    "experiment": "kill",
    "run": "seed3",
    "seed": 3,
    "model": "toy",
    "dataset": "synthetic",
    "config": {"capture": {"probe": {"train": 32, "test": 24}}},
    "device": "cpu",
}


def step_data(split: str, step: int) -> dict:
    """Deterministic probe data of one (split, step)."""
    rng = np.random.default_rng([int(step), SPLIT_CODES[split]])
    n = N_SAMPLES[split]
    return {
        "index": np.sort(rng.choice(1000, n, replace=False)),
        "x": rng.random((n, *INPUT_SHAPE), dtype=np.float32),
        "y": rng.integers(0, 10, n),
        "activations": {
            "conv": np.maximum(rng.standard_normal((n, *LAYER_SHAPES["conv"])), 0),
            "fc": np.tanh(rng.standard_normal((n, 64))),
            "softmax": rng.dirichlet(np.ones(10), n),
        },
    }


SPLIT_CODES = {"train": 0, "test": 1}


def new_store(path: Path) -> ActivationStoreWriter:
    """The store with every step planned and none captured, and its writer."""
    store = make_store(
        path,
        steps=STEPS,
        epochs=EPOCHS,
        n=N_SAMPLES,
        input_shape=INPUT_SHAPE,
        layers=LAYER_SHAPES,
        attrs=ATTRS,
        captured=(),
    )
    return open_writer(store)


def write_steps(writer: ActivationStoreWriter, start: int = 0, *, report: bool = False) -> None:
    for step in writer.steps[start:]:
        for split in writer.splits:
            data = step_data(split, int(step))
            writer.write(split, int(step), **data)
        if report:
            print(f"captured {int(step)}", flush=True)


def _slow_down_array_writes(delay: float) -> None:
    import zarr

    original = zarr.Array.__setitem__

    def slow_setitem(self, key, value):
        original(self, key, value)
        print(f"wrote {self.path} {key!r}", flush=True)
        time.sleep(delay)

    zarr.Array.__setitem__ = slow_setitem


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    writer = new_store(args.store)
    _slow_down_array_writes(args.delay)
    print("created", flush=True)
    write_steps(writer, report=True)


if __name__ == "__main__":
    main()
