"""Wall time per training epoch, capture included, and the share of it spent capturing.

Cases (capture at the end of every epoch, probe N = 100 train / 200 test, SGD lr 0.09, batch 100):

1. ``mlp`` (64-32-16) on scikit-learn's digits (1,437 train images, 15 iterations per epoch);
2. the paper's MLP and 3. the paper's CNN on the 10,000 real MNIST test images, split 8,000 train
   / 2,000 test (80 iterations per epoch) — skipped when the files are absent;
4. VGG-16 on CIFAR-shaped synthetic data: a few iterations are timed and the epoch of 50,000
   images (500 iterations, evaluation on 50,000 + 10,000 images) is extrapolated.

An epoch's time is everything ``train_run`` does in it: the optimizer steps, the capture (forward
pass of both probes, all recorded layers, Zarr writes), the evaluation on the full train and test
splits and the checkpoint. Medians over the measured epochs (the first epoch is measured too:
with one capture per epoch, a run is nothing but such epochs).

    python benchmarks/bench_training.py [--epochs 2] [--vgg-iterations 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

from infoplane.config import experiment_settings
from infoplane.train.training import Progress, train_run

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("INFOPLANE_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))
PROBE = {"train": 100, "test": 200, "resample": False}
VGG_EPOCH_ITERATIONS = 500  # CIFAR-10: 50,000 training images in batches of 100
VGG_EVAL_IMAGES = 60_000  # the full train and test splits are evaluated after every epoch


def settings_for(dataset: dict, model: dict, *, epochs: int, device: str) -> dict:
    experiment = {
        "dataset": dataset,
        "model": model,
        "training": {"epochs": epochs, "device": device, "lr": 0.09, "batch_size": 100},
        "capture": {"schedule": {"kind": "epoch"}, "probe": PROBE},
    }
    return experiment_settings({"experiments": {"bench": experiment}}, "bench")


class IterationClock(Progress):
    """Timestamps of the end of every iteration."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def iteration(self, step: int, loss: float) -> None:
        self.times.append(time.perf_counter())


def measure(name: str, settings: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = train_run(settings, run="seed0", out_store=Path(tmp) / "a.zarr", progress="none")
    seconds = statistics.median(e["seconds"] for e in result.epochs)
    share = statistics.median(e["capture_seconds"] / e["seconds"] for e in result.epochs)
    capture = statistics.median(e["capture_seconds"] for e in result.epochs)
    evaluation = statistics.median(e["eval_seconds"] for e in result.epochs)
    print(
        f"{name:<28} {seconds:9.2f} s/epoch   capture {capture:7.3f} s ({100 * share:5.1f} %)   "
        f"evaluation {evaluation:6.2f} s   ({len(result.epochs)} epochs, {result.device})"
    )
    return {"seconds": seconds, "share": share}


def measure_vgg(iterations: int, device: str) -> None:
    dataset = {
        "name": "synthetic",
        "shape": [3, 32, 32],
        "classes": 10,
        "train_size": 100 * iterations,
        "test_size": PROBE["test"],
    }
    settings = settings_for(
        dataset, {"name": "vgg16", "activation": "relu"}, epochs=1, device=device
    )
    clock = IterationClock()
    with tempfile.TemporaryDirectory() as tmp:
        result = train_run(settings, run="seed0", out_store=Path(tmp) / "a.zarr", progress=clock)
    epoch = result.epochs[0]
    # differences between iteration ends: the first iteration (warm-up) is left out
    per_iteration = statistics.median(b - a for a, b in itertools.pairwise(clock.times))
    evaluated = dataset["train_size"] + dataset["test_size"]
    train = per_iteration * VGG_EPOCH_ITERATIONS
    evaluation = epoch["eval_seconds"] / evaluated * VGG_EVAL_IMAGES
    capture = epoch["capture_seconds"]
    total = train + capture + evaluation + epoch["checkpoint_seconds"]
    print(
        f"{'vgg16 / synthetic CIFAR':<28} {total:9.1f} s/epoch   capture {capture:7.3f} s "
        f"({100 * capture / total:5.1f} %)   evaluation {evaluation:6.1f} s   "
        f"(extrapolated: {iterations} iterations timed, median {per_iteration:.3f} s/iteration "
        f"x {VGG_EPOCH_ITERATIONS}; evaluation {epoch['eval_seconds']:.2f} s for {evaluated} "
        f"images x {VGG_EVAL_IMAGES / evaluated:.0f}; {result.device})"
    )


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per small case")
    parser.add_argument("--vgg-iterations", type=int, default=5, help="VGG-16 iterations timed")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--skip-vgg", action="store_true")
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"capture every epoch, probe {PROBE['train']} train / {PROBE['test']} test"
    )
    digits = settings_for(
        {"name": "digits"}, {"name": "mlp"}, epochs=args.epochs, device=args.device
    )
    measure("mlp / digits", digits)
    if (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        mnist = {"name": "mnist", "source": "t10k", "path": str(MNIST_DIR)}
        for model in ("paper_mlp", "paper_cnn"):
            settings = settings_for(mnist, {"name": model}, epochs=args.epochs, device=args.device)
            measure(f"{model} / MNIST 8k", settings)
    else:
        print(f"MNIST files not found in {MNIST_DIR}: paper_mlp and paper_cnn skipped")
    if not args.skip_vgg:
        measure_vgg(args.vgg_iterations, args.device)


if __name__ == "__main__":
    main()
