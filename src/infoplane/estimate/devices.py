"""Where a point's Grams and spectra are computed: numpy on the CPU, or torch on a GPU.

The numerical core is one implementation for every array library (:mod:`infoplane.core.arrays`);
this module only chooses the device and moves a point's host arrays there. Devices:

``auto``       a CUDA GPU when torch sees one on the worker, else ``cpu`` (the default)
``cpu``        numpy (every result of the CPU path, bit for bit)
``cuda``       torch on the worker's current CUDA device; ``cuda:N`` on device N
``torch-cpu``  torch on the CPU: the GPU's code path on a machine without one

Everything stays float64 on every device, except the matrix products of the randomized spectra,
whose ``dtype`` the preset's ``spectrum`` sets (float32 by default, a measured choice). Widths
are chosen, and distances cached, on the host either way.
"""

from __future__ import annotations

import glob
import os
import platform
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from infoplane.errors import ConfigError

#: The environment variable read for the default device (else ``auto``).
DEVICE_ENV = "INFOPLANE_DEVICE"
_PATTERN = re.compile(r"auto|cpu|torch-cpu|cuda(:\d+)?")


def check_device(spec: Any) -> str:
    """``spec`` if it names a device (see the module docstring), else a :class:`ConfigError`."""
    if not isinstance(spec, str) or not _PATTERN.fullmatch(spec):
        raise ConfigError(f"device must be auto, cpu, torch-cpu, cuda or cuda:N, got {spec!r}")
    return spec


def default_device(environ: Any = None) -> str:
    """The device of ``$INFOPLANE_DEVICE`` when set, else ``auto``."""
    environ = os.environ if environ is None else environ
    return check_device(environ.get(DEVICE_ENV) or "auto")


def resolve_device(spec: str) -> str:
    """The device ``spec`` means on this machine: ``cpu``, ``torch-cpu`` or a CUDA device.

    ``auto`` is a CUDA device when torch is importable and sees one, else ``cpu``; on a machine
    without GPU device files (``/dev/nvidia*``, ``/dev/kfd``) it is ``cpu`` without importing
    torch (unless torch is imported already). An explicit CUDA device this machine does not
    have is a :class:`ConfigError` (no silent fall-back to the CPU: a user who asks for the GPU
    is told that it is missing).
    """
    spec = check_device(spec)
    if spec in ("cpu", "torch-cpu"):
        return spec
    if spec == "auto" and "torch" not in sys.modules and not _gpu_device_files():
        return "cpu"  # no GPU to find: spare every worker the import of torch (1.6 s, 200 MB)
    try:
        import torch
    except ImportError:
        if spec == "auto":
            return "cpu"
        raise ConfigError(f"device {spec} needs torch, which is not installed") from None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if spec == "auto":
        return "cuda" if count else "cpu"
    index = int(spec.partition(":")[2] or 0)
    if index >= count:
        raise ConfigError(
            f"device {spec} was asked for, but torch sees {count} CUDA device(s) on "
            f"{platform.node()}; "
            "use --device auto (the GPU when there is one, else the CPU) or cpu"
        )
    return spec


def _gpu_device_files() -> bool:
    """Whether the kernel exposes a GPU torch could use: NVIDIA's (CUDA) or AMD's (ROCm) nodes."""
    return bool(glob.glob("/dev/nvidia[0-9]*")) or os.path.exists("/dev/kfd")


def array_mover(device: str) -> Callable[[np.ndarray], Any] | None:
    """A function moving a host array to ``device`` as float64 (None for ``cpu``: numpy)."""
    device = resolve_device(device)
    if device == "cpu":
        return None
    import torch

    target = torch.device("cpu" if device == "torch-cpu" else device)

    def move(a: np.ndarray) -> Any:
        return torch.as_tensor(np.asarray(a), device=target).to(torch.float64)

    return move
