"""The networks of the paper and a generic MLP, built with named, hookable hidden layers.

Every model is a :class:`LayeredNet`: an ``nn.Sequential`` of named blocks whose
``hidden_layers`` lists, input side first, the blocks whose *output* is a recorded hidden layer
T. The model returns logits; the softmax "layer" is added by capture, not by the model.

=========== ===================================================================================
model       blocks (recorded ones in bold) and the tensor each recorded name is
=========== ===================================================================================
mlp         flatten, **fc1** … **fcK** (Linear → act [→ BatchNorm1d]), out (Linear).
            Recorded: the activation output (after BN when ``batch_norm=True``).
paper_mlp   flatten, **fc1** (→1024), **fc2** (→20), **fc3** (→20), **fc4** (→20), out (→classes);
            each block Linear → act → BatchNorm1d, BN *after* the activation as in the authors'
            code (HEAD ``FC_Hero.py``), and the block output is recorded there too, so the
            recorded tensor is BN(act(Wx + b)). ``batch_norm=False`` drops the BN layers.
paper_cnn   **conv1** (3×3, C→4, pad 1, act), **conv2** (4→8, act), pool1 (max 2), **conv3**
            (8→16, act), pool2, flatten, **fc** (→256, act), out (→classes). No BN. conv2 and
            conv3 are recorded before pooling, as in the paper.
vgg16       **conv1** … **conv13**, each Conv3×3 (pad 1) → BatchNorm2d → act, widths
            64, 64 | 128, 128 | 256 ×3 | 512 ×3 | 512 ×3 with pool1 … pool5 (max 2) after the
            blocks; flatten, **fc1** (Dropout → Linear 512→4096 → act), **fc2** (Dropout →
            Linear 4096→4096 → act), out (Linear 4096→classes). Recorded: the 13 conv blocks
            after the activation and before pooling, then fc1, fc2 — in forward order (the
            authors' code lists fc2 before fc1).
ib_mlp      flatten, **fc1** … **fc5** of widths 10, 7, 5, 4, 3 (Linear → act), out; the
            12-10-7-5-4-3-2 network of the original information-bottleneck experiments.
=========== ===================================================================================

Models adapt to ``input_shape``: MLPs take the flattened input size, the CNNs their input
channels and image size (the first FC layer's width is computed). Initialisation follows the
authors' code: every Linear and Conv2d weight is Xavier-uniform with gain
``calculate_gain(act)`` for tanh and sigmoid and Kaiming-normal (fan-in) for relu and leaky relu
(slope 0.01), every bias 0; BatchNorm layers keep PyTorch's defaults (weight 1, bias 0).
"""

from __future__ import annotations

import numbers
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

# The model names, activations and per-model options are defined, torch-free, with the config
# checks; re-exported here.
from infoplane.config import ACTIVATIONS, MODEL_NAMES, MODEL_OPTIONS
from infoplane.errors import ConfigError

LEAKY_RELU_SLOPE = 0.01

_VGG16_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class LayeredNet(nn.Sequential):
    """A feed-forward network of named blocks with its recorded hidden layers.

    Parameters
    ----------
    blocks : OrderedDict
        Named modules in forward order.
    hidden_layers : sequence of str
        Names of the blocks whose outputs are the hidden layers, input side first.
    architecture, activation : str
        What was built, for ``repr`` and provenance.

    Raises
    ------
    ConfigError
        A name of ``hidden_layers`` is not one of ``blocks``.
    """

    def __init__(
        self,
        blocks: OrderedDict[str, nn.Module],
        hidden_layers: Sequence[str],
        *,
        architecture: str,
        activation: str,
    ) -> None:
        super().__init__(blocks)
        missing = [name for name in hidden_layers if name not in blocks]
        if missing:
            raise ConfigError(f"hidden layers {missing} are not blocks of the network")
        self.hidden_layers = tuple(hidden_layers)
        self.architecture = architecture
        self.activation_name = activation

    def extra_repr(self) -> str:
        return f"architecture={self.architecture!r}, activation={self.activation_name!r}"


def build_model(
    name: str,
    *,
    activation: str = "tanh",
    input_shape: Sequence[int],
    n_classes: int,
    **options: Any,
) -> LayeredNet:
    """Build a freshly initialised model.

    Parameters
    ----------
    name : {"mlp", "paper_mlp", "paper_cnn", "vgg16", "ib_mlp"}
        Architecture (see the module docstring).
    activation : {"tanh", "relu", "sigmoid", "leaky_relu"}
        Hidden-layer non-linearity; also selects the initialisation.
    input_shape : sequence of int
        Shape of one input sample: ``(D,)`` or ``(C, H, W)``.
    n_classes : int
        Number of output logits.
    **options
        ``mlp``: ``hidden`` (widths, default ``[64, 32, 16]``), ``batch_norm`` (default False);
        ``paper_mlp``: ``batch_norm`` (default True); ``vgg16``: ``dropout`` (default 0.5).
        Which model takes which option is :data:`infoplane.config.MODEL_OPTIONS`.

    Returns
    -------
    LayeredNet
        In training mode; initialised from torch's global generator (seed it with
        ``torch.manual_seed`` for reproducible weights).

    Raises
    ------
    ConfigError
        Unknown model, activation or option; an input shape the model cannot take.
    """
    builders: dict[str, Callable[..., LayeredNet]] = {
        "mlp": _build_mlp,
        "paper_mlp": _build_paper_mlp,
        "paper_cnn": _build_paper_cnn,
        "vgg16": _build_vgg16,
        "ib_mlp": _build_ib_mlp,
    }
    if name not in MODEL_NAMES:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"unknown activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}"
        )
    shape = _checked_shape(input_shape, name)
    if not _is_int(n_classes) or n_classes < 2:
        raise ConfigError(f"model {name!r}: n_classes must be an int >= 2, got {n_classes!r}")
    allowed = MODEL_OPTIONS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; allowed: "
            f"{', '.join(sorted(allowed)) or 'none'}"
        )
    model = builders[name](shape, int(n_classes), activation, **options)
    init_weights(model, activation)
    return model


def default_layers(model: nn.Module) -> list[str]:
    """Module names of every hidden layer of ``model``, input side first.

    The softmax output is not included; capture adds it.

    Raises
    ------
    ConfigError
        The model does not declare its hidden layers (it was not built by :func:`build_model`
        and has no ``hidden_layers`` attribute), or declares names it does not have.
    """
    names = getattr(model, "hidden_layers", None)
    if names is None:
        raise ConfigError(
            f"{type(model).__name__} does not declare its hidden layers; list the module names "
            "to record under capture.layers (see model.named_modules()), or give the model a "
            "'hidden_layers' attribute"
        )
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise ConfigError(
            f"{type(model).__name__}.hidden_layers names modules it does not have: {missing}"
        )
    return list(names)


def make_activation(name: str) -> nn.Module:
    """A new activation module (a fresh instance, so each layer's hook fires once)."""
    factories: dict[str, Callable[[], nn.Module]] = {
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "sigmoid": nn.Sigmoid,
        "leaky_relu": lambda: nn.LeakyReLU(LEAKY_RELU_SLOPE),
    }
    if name not in factories:
        raise ConfigError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return factories[name]()


def init_weights(model: nn.Module, activation: str) -> None:
    """The authors' initialisation, in place (see the module docstring)."""
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if activation in ("tanh", "sigmoid"):
            nn.init.xavier_uniform_(module.weight, gain=nn.init.calculate_gain(activation))
        else:
            slope = LEAKY_RELU_SLOPE if activation == "leaky_relu" else 0.0
            nn.init.kaiming_normal_(module.weight, a=slope, nonlinearity=activation)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# Builders


def _build_mlp(
    shape: tuple[int, ...],
    n_classes: int,
    activation: str,
    *,
    hidden: Sequence[int] = (64, 32, 16),
    batch_norm: bool = False,
) -> LayeredNet:
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence) or not hidden:
        raise ConfigError(f"model 'mlp': hidden must be a list of layer widths, got {hidden!r}")
    if not all(_is_int(w) and w > 0 for w in hidden):
        raise ConfigError(f"model 'mlp': hidden widths must be positive ints, got {hidden!r}")
    if not isinstance(batch_norm, bool):
        raise ConfigError(f"model 'mlp': batch_norm must be true or false, got {batch_norm!r}")
    return _dense_net(shape, hidden, n_classes, activation, batch_norm, architecture="mlp")


def _build_paper_mlp(
    shape: tuple[int, ...], n_classes: int, activation: str, *, batch_norm: bool = True
) -> LayeredNet:
    if not isinstance(batch_norm, bool):
        raise ConfigError(
            f"model 'paper_mlp': batch_norm must be true or false, got {batch_norm!r}"
        )
    widths = (1024, 20, 20, 20)
    return _dense_net(shape, widths, n_classes, activation, batch_norm, architecture="paper_mlp")


def _build_ib_mlp(shape: tuple[int, ...], n_classes: int, activation: str) -> LayeredNet:
    widths = (10, 7, 5, 4, 3)
    return _dense_net(shape, widths, n_classes, activation, False, architecture="ib_mlp")


def _dense_net(
    shape: tuple[int, ...],
    widths: Sequence[int],
    n_classes: int,
    activation: str,
    batch_norm: bool,
    *,
    architecture: str,
) -> LayeredNet:
    blocks: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    n_in = _numel(shape)
    names = []
    for i, width in enumerate(widths, start=1):
        layers = [nn.Linear(n_in, int(width)), make_activation(activation)]
        if batch_norm:
            # After the activation, as in the authors' FC network.
            layers.append(nn.BatchNorm1d(width))
        names.append(f"fc{i}")
        blocks[names[-1]] = nn.Sequential(*layers)
        n_in = int(width)
    blocks["out"] = nn.Linear(n_in, n_classes)
    return LayeredNet(blocks, names, architecture=architecture, activation=activation)


def _build_paper_cnn(shape: tuple[int, ...], n_classes: int, activation: str) -> LayeredNet:
    channels, height, width = _image_shape(shape, "paper_cnn", minimum=4)
    flat = 16 * (height // 4) * (width // 4)
    blocks: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=_conv_block(channels, 4, activation),
        conv2=_conv_block(4, 8, activation),
        pool1=nn.MaxPool2d(2, 2),
        conv3=_conv_block(8, 16, activation),
        pool2=nn.MaxPool2d(2, 2),
        flatten=nn.Flatten(),
        fc=nn.Sequential(nn.Linear(flat, 256), make_activation(activation)),
        out=nn.Linear(256, n_classes),
    )
    hidden = ["conv1", "conv2", "conv3", "fc"]
    return LayeredNet(blocks, hidden, architecture="paper_cnn", activation=activation)


def _build_vgg16(
    shape: tuple[int, ...], n_classes: int, activation: str, *, dropout: float = 0.5
) -> LayeredNet:
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"model 'vgg16': dropout must be a number in [0, 1), got {dropout!r}")
    channels, height, width = _image_shape(shape, "vgg16", minimum=32)
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    hidden = []
    n_in = channels
    for stage, widths in enumerate(_VGG16_WIDTHS, start=1):
        for n_out in widths:
            hidden.append(f"conv{len(hidden) + 1}")
            blocks[hidden[-1]] = _conv_block(n_in, n_out, activation, batch_norm=True)
            n_in = n_out
        blocks[f"pool{stage}"] = nn.MaxPool2d(2, 2)
    blocks["flatten"] = nn.Flatten()
    flat = n_in * (height // 32) * (width // 32)
    for name, n_from in (("fc1", flat), ("fc2", 4096)):
        blocks[name] = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(n_from, 4096), make_activation(activation)
        )
        hidden.append(name)
    blocks["out"] = nn.Linear(4096, n_classes)
    return LayeredNet(blocks, hidden, architecture="vgg16", activation=activation)


def _conv_block(n_in: int, n_out: int, activation: str, *, batch_norm: bool = False) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(n_in, n_out, kernel_size=3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(n_out))
    layers.append(make_activation(activation))
    return nn.Sequential(*layers)


def _checked_shape(input_shape: Sequence[int], name: str) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if not shape or not all(_is_int(s) and s > 0 for s in shape):
        raise ConfigError(
            f"model {name!r}: input_shape must be the shape of one sample, e.g. (1, 28, 28) or "
            f"(64,), got {input_shape!r}"
        )
    return tuple(int(s) for s in shape)


def _image_shape(shape: tuple[int, ...], name: str, *, minimum: int) -> tuple[int, int, int]:
    if len(shape) != 3 or min(shape[1:]) < minimum:
        raise ConfigError(
            f"model {name!r} needs images (C, H, W) with H, W >= {minimum}, got input_shape "
            f"{shape}; use an MLP for vector or smaller inputs"
        )
    return shape[0], shape[1], shape[2]


def _numel(shape: tuple[int, ...]) -> int:
    return int(torch.Size(shape).numel())


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
