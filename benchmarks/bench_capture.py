"""Capture overhead and activation-store size for VGG-16-BN shapes (CIFAR-10 input).

Builds a VGG-16-BN-shaped network (13 conv3x3 + BN + activation, max-pool after each block,
FC 512 -> 4096 -> 4096 -> 10, input 3x32x32) and records the 13 conv activations, the 2 hidden
FC activations and the softmax, as the training stage does for one captured step.

Figures printed (medians over repeats):
  * probe forward pass alone (eval, inference mode);
  * capture (hooks + copies to CPU numpy) and store write of one step, and their ratio to the
    forward pass;
  * store size and compression ratio for ReLU and tanh activations in float32 and float16;
  * Blosc-zstd level against write time and size.

The machine's load matters: run it on an otherwise idle machine.

Activations are those of a randomly initialised network whose BatchNorm statistics are
calibrated on the inputs; the inputs are smooth synthetic images (upsampled 8x8 noise plus a
little pixel noise), since no CIFAR-10 copy is assumed.

    python benchmarks/bench_capture.py [--n 100] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import median_seconds
from torch import nn

from infoplane.io import store
from infoplane.train.capture import capture_activations, modules_of_type

WIDTHS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
ATTRS = {
    "experiment": "bench",
    "run": "seed0",
    "seed": 0,
    "model": "vgg16_bn",
    "dataset": "synthetic",
    "config": {},
    "device": "cpu",
}


def build_vgg16_bn(activation: type[nn.Module]) -> nn.Module:
    layers: list[nn.Module] = []
    cin = 3
    for block in WIDTHS:
        for cout in block:
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), activation()]
            cin = cout
        layers.append(nn.MaxPool2d(2))
    features = nn.Sequential(*layers)
    classifier = nn.Sequential(
        nn.Flatten(),
        nn.Linear(512, 4096),
        activation(),
        nn.Linear(4096, 4096),
        activation(),
        nn.Linear(4096, 10),
    )
    return nn.Sequential(features, classifier)


def smooth_images(n: int, generator: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(n, 3, 8, 8, generator=generator)
    images = nn.functional.interpolate(coarse, size=32, mode="bilinear", align_corners=False)
    return (images + 0.05 * torch.randn(n, 3, 32, 32, generator=generator)).clamp(0, 1)


def calibrate_batchnorm(model: nn.Module, inputs: torch.Tensor) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        for chunk in inputs.split(50):
            model(chunk)
    model.eval()


def new_store(path: Path, acts: dict[str, np.ndarray], n: int, steps: int, dtype: str):
    return store.create_store(
        path,
        steps=list(range(steps)),
        epochs=[float(s) for s in range(steps)],
        n_samples={"train": n},
        input_shape=(3, 32, 32),
        layer_shapes={name: a.shape[1:] for name, a in acts.items()},
        attrs=ATTRS,
        dtype=dtype,
        overwrite=True,
    )


def layer_bytes(info: dict) -> tuple[int, int]:
    variables = info["splits"]["train"]["variables"]
    names = info["layers"]
    return (
        sum(variables[n]["raw_bytes"] for n in names),
        sum(variables[n]["stored_bytes"] for n in names),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="probe size N")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    inputs = smooth_images(args.n, generator)
    index, labels = np.arange(args.n), np.arange(args.n) % 10
    print(
        f"VGG-16-BN, input 3x32x32, N = {args.n}, device {device}, "
        f"torch threads {torch.get_num_threads()}, medians over {args.repeats} repeats"
    )

    models = {}
    for name, activation in (("relu", nn.ReLU), ("tanh", nn.Tanh)):
        model = build_vgg16_bn(activation)
        calibrate_batchnorm(model, smooth_images(500, generator))
        models[name] = (model.to(device), modules_of_type(model, activation))
    model, layers = models["relu"]
    x = inputs.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward() -> None:
        with torch.inference_mode():
            model(x)
        sync()

    forward()  # warm-up
    acts = capture_activations(model, x, layers)
    raw_mb = sum(a.nbytes for a in acts.values()) / 2**20
    print(f"recorded {len(acts)} layers ({len(layers)} hidden + softmax), {raw_mb:.1f} MiB float32")

    with tempfile.TemporaryDirectory() as tmp:
        t_forward = median_seconds(forward, args.repeats)
        t_capture = median_seconds(lambda: capture_activations(model, x, layers), args.repeats)
        writer = new_store(Path(tmp) / "timing.zarr", acts, args.n, args.repeats, "float32")
        steps = iter(range(args.repeats))
        x_np = inputs.numpy()

        def write() -> None:
            writer.write("train", next(steps), index=index, x=x_np, y=labels, activations=acts)

        t_write = median_seconds(write, args.repeats)
        print()
        print(f"probe forward alone        {t_forward * 1e3:8.1f} ms")
        print(
            f"capture (forward + hooks)  {t_capture * 1e3:8.1f} ms   "
            f"{t_capture / t_forward:5.2f} x forward"
        )
        print(
            f"store write of one step    {t_write * 1e3:8.1f} ms   "
            f"{raw_mb / t_write:6.0f} MiB/s raw"
        )
        print(
            f"capture + write            {(t_capture + t_write) * 1e3:8.1f} ms   "
            f"{(t_capture + t_write) / t_forward:5.2f} x forward"
        )

        print()
        print("store size of one step's layer activations (13 conv + 2 FC + softmax)")
        print(f"{'activation':<10} {'dtype':<8} {'raw MiB':>8} {'stored MiB':>11} {'ratio':>6}"
              f" {'vs f32 raw':>11} {'write ms':>9}")  # fmt: skip
        for act_name, (act_model, act_layers) in models.items():
            step_acts = capture_activations(act_model, x, act_layers)
            raw32 = sum(a.nbytes for a in step_acts.values())
            for dtype in ("float32", "float16"):
                w = new_store(Path(tmp) / f"{act_name}-{dtype}.zarr", step_acts, args.n, 1, dtype)
                start = time.perf_counter()
                w.write("train", 0, index=index, x=x_np, y=labels, activations=step_acts)
                elapsed = time.perf_counter() - start
                raw, stored = layer_bytes(store.store_info(w.path))
                print(
                    f"{act_name:<10} {dtype:<8} {raw / 2**20:8.1f} {stored / 2**20:11.1f} "
                    f"{raw / stored:6.2f} {raw32 / stored:11.2f} {elapsed * 1e3:9.0f}"
                )

        print()
        print("Blosc-zstd level (ReLU, float32): write time of one step and stored size")
        default = store.layout.BLOSC_LEVEL
        try:
            for level in (1, 3, 5):  # level 9 is ~30x slower than 3 for ~10 % less space
                store.layout.BLOSC_LEVEL = level
                w = new_store(Path(tmp) / f"level{level}.zarr", acts, args.n, 1, "float32")
                start = time.perf_counter()
                w.write("train", 0, index=index, x=x_np, y=labels, activations=acts)
                elapsed = time.perf_counter() - start
                raw, stored = layer_bytes(store.store_info(w.path))
                mark = "  (default)" if level == default else ""
                print(
                    f"level {level}: {elapsed * 1e3:7.0f} ms, {stored / 2**20:6.1f} MiB, "
                    f"ratio {raw / stored:5.2f}{mark}"
                )
        finally:
            store.layout.BLOSC_LEVEL = default


if __name__ == "__main__":
    main()
