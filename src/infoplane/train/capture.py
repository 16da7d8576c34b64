"""Capture layer activations of any ``torch.nn.Module`` through forward hooks, and choose probes.

A probe is run in eval mode under ``torch.inference_mode``; the hooks copy each named module's
output to CPU numpy. The previous train/eval mode of every module is restored afterwards and the
hooks are removed even when the forward pass fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from infoplane.errors import InputError, TrainingError

if TYPE_CHECKING:
    import torch

SOFTMAX = "softmax"
_MAX_LISTED = 40  # available module names listed in an error message


def modules_of_type(model: torch.nn.Module, types: type | tuple[type, ...]) -> list[str]:
    """Names of all sub-modules that are instances of ``types``, in registration order.

    Parameters
    ----------
    model
        Any module; the model itself (name ``""``) is never included.
    types
        A module class or a tuple of classes, e.g. ``(nn.ReLU, nn.Tanh)``.

    Returns
    -------
    list[str]
        Names as in ``model.named_modules()``; registration order is input side first for
        sequential models.
    """
    if isinstance(types, list):
        types = tuple(types)
    return [name for name, module in model.named_modules() if name and isinstance(module, types)]


def probe_indices(
    n_available: int,
    n: int,
    *,
    seed: int,
    step: int | None = None,
    resample: bool = False,
) -> np.ndarray:
    """Indices of ``n`` probe samples drawn without replacement from ``n_available``.

    A fixed probe (``resample=False``) depends on ``seed`` only, so every captured step sees the
    same samples. With ``resample=True`` a fresh probe is drawn for each step (the paper's
    per-batch mode), deterministic from ``(seed, step)``. Use different seeds for the train
    and the test probe when their draws should be independent.

    Returns
    -------
    np.ndarray
        (n,) sorted int64 indices.
    """
    if n_available < 1 or not 1 <= n <= n_available:
        raise InputError(
            f"a probe of {n} samples cannot be drawn from {n_available}; choose 1 <= n <= "
            f"{n_available} (capture.probe in the config)"
        )
    if seed < 0:
        raise InputError(f"seed must be >= 0, got {seed}")
    if resample:
        if step is None or step < 0:
            raise InputError(f"a resampled probe needs the step (>= 0) it is drawn for, got {step}")
        entropy = [int(seed), 1, int(step)]
    else:
        entropy = [int(seed), 0]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    return np.sort(rng.choice(int(n_available), size=int(n), replace=False)).astype(np.int64)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    import torch

    # Copy even on CPU: a later in-place op (ReLU(inplace=True)) would change a shared tensor.
    dtype = torch.float32 if tensor.is_floating_point() else None
    return tensor.detach().to("cpu", dtype=dtype, copy=True).numpy()


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    import torch

    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _check_layers(model: torch.nn.Module, layers: Sequence[str], softmax: bool) -> dict[str, Any]:
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        names = [n for n in modules if n]
        listed = ", ".join(names[:_MAX_LISTED]) + (" ..." if len(names) > _MAX_LISTED else "")
        raise InputError(
            f"layers {unknown} are not modules of {type(model).__name__}; available: {listed}"
        )
    repeated = sorted({n for n in layers if list(layers).count(n) > 1})
    if repeated:
        raise InputError(f"layers {repeated} are named more than once")
    if softmax and SOFTMAX in layers:
        raise InputError(
            f"a module named {SOFTMAX!r} collides with the softmax output capture adds; "
            "pass softmax=False or do not list it"
        )
    if not layers and not softmax:
        raise InputError("nothing to capture: name some layers or pass softmax=True")
    return {name: modules[name] for name in layers}


def capture_activations(
    model: torch.nn.Module,
    inputs: Any,
    layers: Sequence[str],
    *,
    softmax: bool = True,
    batch_size: int | None = None,
    device: Any = None,
) -> dict[str, np.ndarray]:
    """Run a probe through ``model`` and return the outputs of the named modules.

    Parameters
    ----------
    model
        Any ``torch.nn.Module``; its train/eval mode is restored afterwards (per module).
    inputs
        (N, ...) tensor or array; numpy floats are cast to the model's floating dtype.
    layers
        Module names as in ``model.named_modules()``, input side first. Each module must run
        exactly once per forward pass and return a tensor.
    softmax
        Add ``"softmax"``: the softmax over dim 1 of the model's output.
    batch_size
        Forward the probe in chunks of this many samples (None: all at once).
    device
        Where the inputs are sent; default the device of the model's parameters.

    Returns
    -------
    dict[str, np.ndarray]
        Layer name -> (N, ...) CPU array (float32 for floating outputs), in the order of
        ``layers``, then ``"softmax"``.

    Raises
    ------
    InputError
        Unknown or repeated layer names, bad ``batch_size``, empty inputs.
    TrainingError
        A hook did not fire, fired more than once in one forward pass, or saw a non-tensor.
    """
    import torch

    targets = _check_layers(model, list(layers), softmax)
    model_device, model_dtype = _model_device_dtype(model)
    device = torch.device(device) if device is not None else model_device
    if isinstance(inputs, torch.Tensor):
        inputs = inputs.to(device)
    else:
        array = np.asarray(inputs)
        dtype = model_dtype if np.issubdtype(array.dtype, np.floating) else None
        inputs = torch.as_tensor(array, dtype=dtype, device=device)
    n = int(inputs.shape[0]) if inputs.ndim else 0
    if n == 0:
        raise InputError("the probe is empty; pass at least one sample")
    if batch_size is None:
        batch_size = n
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int or None, got {batch_size!r}")

    outputs: dict[str, list[np.ndarray]] = {name: [] for name in targets}
    calls: dict[str, int] = dict.fromkeys(targets, 0)

    def make_hook(name: str):
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            calls[name] += 1
            if not isinstance(output, torch.Tensor):
                raise TrainingError(
                    f"module {name!r} returned {type(output).__name__}, not a tensor; "
                    "record one of its sub-modules instead"
                )
            if calls[name] == 1:
                outputs[name].append(_to_numpy(output))

        return hook

    modes = {module: module.training for module in model.modules()}
    handles = []
    probabilities: list[np.ndarray] = []
    try:
        for name, module in targets.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        model.eval()
        with torch.inference_mode():
            for start in range(0, n, int(batch_size)):
                calls.update(dict.fromkeys(calls, 0))
                result = model(inputs[start : start + int(batch_size)])
                _check_calls(calls)
                if softmax:
                    probabilities.append(_softmax(result))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training

    captured = {name: np.concatenate(chunks, axis=0) for name, chunks in outputs.items()}
    if softmax:
        captured[SOFTMAX] = np.concatenate(probabilities, axis=0)
    return captured


def _check_calls(calls: dict[str, int]) -> None:
    silent = [name for name, count in calls.items() if count == 0]
    if silent:
        raise TrainingError(
            f"the hooks on {silent} did not fire during the forward pass: these modules are not "
            "used by forward(); record modules that the model actually calls"
        )
    repeated = {name: count for name, count in calls.items() if count > 1}
    if repeated:
        raise TrainingError(
            f"the hooks on {sorted(repeated)} fired more than once per forward pass "
            f"(counts {repeated}): the module is reused, so its activation is ambiguous; give "
            "each use its own module or record a module that runs once"
        )


def _softmax(output: Any) -> np.ndarray:
    import torch

    if not isinstance(output, torch.Tensor) or output.ndim < 2:
        raise TrainingError(
            "softmax=True needs a model whose output is a (batch, classes, ...) tensor of "
            f"logits; got {type(output).__name__} "
            f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}; "
            "pass softmax=False"
        )
    return _to_numpy(torch.softmax(output.float(), dim=1))
