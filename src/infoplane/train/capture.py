"""Capture layer activations of any ``torch.nn.Module`` through forward hooks, and choose probes.

A probe is run in eval mode under ``torch.inference_mode``; the hooks copy each named module's
output to CPU numpy. The previous train/eval mode of every module is restored afterwards and the
hooks are removed even when the forward pass fails.

Choosing layers (:func:`select_layers`): an entry of ``layers`` is a module name of
``model.named_modules()`` (``"blocks.1"``), a glob over those names (``"blocks.*.relu"``,
matches in registration order) or ``"type:ClassName"`` (every module of that class, e.g.
``"type:TransformerEncoderLayer"``).

Outputs that are not one tensor (the rule, :func:`pick_output`):

- a tensor is recorded as it is, ``(N, ...)``: a sequence layer gives ``(N, seq, hidden)``, kept
  whole in the store; the tensor kernel's distances flatten every axis after the sample axis,
  so it sees the flattened ``(seq * hidden)`` vector (the multivariate kernel would take axis 1
  as its channels);
- a tuple or list gives its first element (e.g. ``nn.MultiheadAttention``'s output rather than
  its weights; an LSTM's output sequence), a dict its first value in insertion order, applied
  again until a tensor is reached;
- a suffix ``[i]`` or ``[key]`` on the layer name picks another element: ``"attn[1]"``,
  ``"head[features]"``; the layer is stored under the full name;
- the model's own output (for the ``softmax`` layer and for the training loss) follows the same
  rule, except that a dict with a ``"logits"`` entry gives that entry.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from infoplane.errors import ConfigError, InputError, TrainingError

if TYPE_CHECKING:
    import torch

SOFTMAX = "softmax"
TYPE_PREFIX = "type:"
_MAX_LISTED = 40  # available module names listed in an error message
_SELECTOR = re.compile(r"^(?P<module>.*?)\[(?P<key>[^\[\]]+)\]$")
_GLOB_CHARS = set("*?[")


def split_selector(layer: str) -> tuple[str, str | None]:
    """``"attn[1]"`` -> ``("attn", "1")``; a plain module name -> ``(name, None)``."""
    match = _SELECTOR.match(layer)
    if match is None:
        return layer, None
    return match.group("module"), match.group("key")


def close_matches(name: str, names: Sequence[str], n: int = 5) -> str:
    """``"; did you mean 'a', 'b'?"`` for the names close to ``name`` (empty when none)."""
    close = difflib.get_close_matches(name, list(names), n=n, cutoff=0.6)
    return f"; did you mean {', '.join(map(repr, close))}?" if close else ""


def select_layers(model: torch.nn.Module, patterns: Sequence[str]) -> list[str]:
    """Expand module names, globs and ``type:ClassName`` entries into module names.

    Parameters
    ----------
    model
        The model whose ``named_modules()`` are searched (the model itself, ``""``, never).
    patterns
        Entries of ``capture.layers``: an exact module name (optionally with an output selector
        ``[i]``/``[key]``), a glob over the names or ``type:ClassName``.

    Returns
    -------
    list[str]
        Names in the order of ``patterns``; a glob or type gives its matches in registration
        order; a name matched twice is kept once.

    Raises
    ------
    ConfigError
        A name that is not a module (listing the close matches), a glob or type matching none.
    """
    modules = [(name, module) for name, module in model.named_modules() if name]
    names = [name for name, _ in modules]
    known = set(names)
    chosen: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"capture.layers: {pattern!r} is not a module name")
        if pattern.startswith(TYPE_PREFIX):
            wanted = pattern[len(TYPE_PREFIX) :]
            found = [n for n, m in modules if type(m).__name__ == wanted]
            if not found:
                types = sorted({type(m).__name__ for _, m in modules})
                raise ConfigError(
                    f"capture.layers: no module of {type(model).__name__} is of type {wanted!r}"
                    f"{close_matches(wanted, types)} (its module types: {', '.join(types)})"
                )
        elif split_selector(pattern)[0] in known or pattern in known:
            found = [pattern]
        elif _GLOB_CHARS & set(pattern):
            found = fnmatch.filter(names, pattern)
            if not found:
                raise ConfigError(
                    f"capture.layers: the pattern {pattern!r} matches no module of "
                    f"{type(model).__name__}; its modules: {_listed(names)}"
                )
        else:
            module = split_selector(pattern)[0]
            raise ConfigError(
                f"capture.layers: unknown module name {module!r} of {type(model).__name__}"
                f"{close_matches(module, names)} (its modules: {_listed(names)})"
            )
        chosen.extend(name for name in found if name not in chosen)
    return chosen


def _listed(names: Sequence[str]) -> str:
    return ", ".join(names[:_MAX_LISTED]) + (" ..." if len(names) > _MAX_LISTED else "")


def pick_output(output: Any, key: str | None = None, *, where: str = "the output") -> Any:
    """The tensor the output rule (module docstring) takes from a module's output.

    Parameters
    ----------
    output
        A tensor, a tuple/list or a mapping (nested ones too).
    key
        ``None`` (first element, then the rule again) or a selector: a position of a tuple or
        list, a key of a mapping.
    where
        Names the output in error messages.

    Raises
    ------
    TrainingError
        No tensor found, or the selector does not exist.
    """
    import torch

    if key is not None:
        if isinstance(output, Mapping):
            if key not in output:
                raise TrainingError(
                    f"{where} is a dict without key {key!r}; its keys: "
                    f"{', '.join(map(repr, output))}"
                )
            output = output[key]
        elif isinstance(output, (tuple, list)):
            if not key.lstrip("-").isdigit() or not -len(output) <= int(key) < len(output):
                raise TrainingError(
                    f"{where} is a {type(output).__name__} of {len(output)} elements; "
                    f"[{key}] must be a position 0..{len(output) - 1}"
                )
            output = output[int(key)]
        else:
            raise TrainingError(
                f"{where} is a {type(output).__name__}, which has no element [{key}]; "
                "drop the selector"
            )
    for _ in range(16):  # nested containers, bounded
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, Mapping) and output:
            output = next(iter(output.values()))
        elif isinstance(output, (tuple, list)) and output:
            output = output[0]
        else:
            break
    raise TrainingError(
        f"{where} is {type(output).__name__}, not a tensor (nor a tuple, list or dict holding "
        "one); record one of its sub-modules instead"
    )


def model_output(output: Any) -> Any:
    """The logits tensor of a model's output: ``output["logits"]`` for a dict that has it, else
    the rule of :func:`pick_output`."""
    if isinstance(output, Mapping) and "logits" in output:
        return pick_output(output, "logits", where="the model's output")
    return pick_output(output, where="the model's output")


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
    unknown = [name for name in layers if _module_name(name, modules) is None]
    if unknown:
        names = [n for n in modules if n]
        hint = close_matches(split_selector(unknown[0])[0], names)
        raise InputError(
            f"layers {unknown} are not modules of {type(model).__name__}{hint}; "
            f"available: {_listed(names)}"
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
    return {name: modules[_module_name(name, modules)] for name in layers}


def _module_name(layer: str, modules: Mapping[str, Any]) -> str | None:
    """The module a layer entry records (its name without selector), None if there is none."""
    if layer in modules and layer:
        return layer
    module, key = split_selector(layer)
    return module if key is not None and module in modules and module else None


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

    # every layer's rows are copied into one array allocated at the first batch: the probe's
    # activations exist once, not once per batch and again concatenated
    outputs: dict[str, np.ndarray] = {}
    calls: dict[str, int] = dict.fromkeys(targets, 0)
    rows = slice(0, 0)

    modules = dict(model.named_modules())

    def keep(name: str, values: np.ndarray) -> None:
        if name not in outputs:
            outputs[name] = np.empty((n, *values.shape[1:]), dtype=values.dtype)
        outputs[name][rows] = values

    def make_hook(name: str):
        key = None if name in modules else split_selector(name)[1]

        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            calls[name] += 1
            tensor = pick_output(output, key, where=f"the output of module {name!r}")
            if calls[name] == 1:
                keep(name, _to_numpy(tensor))

        return hook

    modes = {module: module.training for module in model.modules()}
    handles = []
    try:
        for name, module in targets.items():
            handles.append(module.register_forward_hook(make_hook(name)))
        model.eval()
        with torch.inference_mode():
            for start in range(0, n, int(batch_size)):
                rows = slice(start, min(n, start + int(batch_size)))
                calls.update(dict.fromkeys(calls, 0))
                result = model(inputs[rows])
                _check_calls(calls)
                if softmax:
                    keep(SOFTMAX, _softmax(result))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training

    captured = {name: outputs[name] for name in targets}
    if softmax:
        captured[SOFTMAX] = outputs[SOFTMAX]
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

    output = model_output(output)
    if not isinstance(output, torch.Tensor) or output.ndim < 2:
        raise TrainingError(
            "softmax=True needs a model whose output is a (batch, classes, ...) tensor of "
            f"logits; got {type(output).__name__} "
            f"{tuple(output.shape) if isinstance(output, torch.Tensor) else ''}; "
            "pass softmax=False"
        )
    return _to_numpy(torch.softmax(output.float(), dim=1))
