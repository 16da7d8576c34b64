"""Models: output and hidden-layer shapes, recorded tensors, initialisation, errors."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from infoplane import config
from infoplane.errors import ConfigError
from infoplane.train.models import (
    ACTIVATIONS,
    MODEL_NAMES,
    MODEL_OPTIONS,
    LayeredNet,
    build_model,
    default_layers,
    make_activation,
)


def record(
    model: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """Forward ``x`` with hooks on the default layers; returns logits and (name, output) in
    the order the hooks fired."""
    fired: list[tuple[str, torch.Tensor]] = []
    modules = dict(model.named_modules())
    handles = [
        modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: fired.append((name, out.detach()))
        )
        for name in default_layers(model)
    ]
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    return logits, fired


SMALL_CASES = [
    ("mlp", (1, 8, 8), 10, {}, {"fc1": (64,), "fc2": (32,), "fc3": (16,)}),
    ("mlp", (12,), 3, {"hidden": [5, 4]}, {"fc1": (5,), "fc2": (4,)}),
    ("paper_mlp", (1, 28, 28), 10, {}, {"fc1": (1024,), "fc2": (20,), "fc3": (20,), "fc4": (20,)}),
    ("paper_mlp", (1, 8, 8), 10, {}, {"fc1": (1024,), "fc2": (20,), "fc3": (20,), "fc4": (20,)}),
    (
        "paper_cnn",
        (1, 28, 28),
        10,
        {},
        {"conv1": (4, 28, 28), "conv2": (8, 28, 28), "conv3": (16, 14, 14), "fc": (256,)},
    ),
    (
        "paper_cnn",
        (3, 8, 8),
        5,
        {},
        {"conv1": (4, 8, 8), "conv2": (8, 8, 8), "conv3": (16, 4, 4), "fc": (256,)},
    ),
    ("ib_mlp", (12,), 2, {}, {"fc1": (10,), "fc2": (7,), "fc3": (5,), "fc4": (4,), "fc5": (3,)}),
]


@pytest.mark.parametrize(("name", "shape", "n_classes", "options", "expected"), SMALL_CASES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_output_and_hidden_layer_shapes_in_forward_order(
    name, shape, n_classes, options, expected, mode
):
    torch.manual_seed(0)
    model = build_model(name, input_shape=shape, n_classes=n_classes, **options)
    model.train(mode == "train")
    assert default_layers(model) == list(expected)
    logits, fired = record(model, torch.rand(5, *shape))
    assert logits.shape == (5, n_classes)
    # Each layer's hook fires exactly once per forward, input side first.
    assert [n for n, _ in fired] == list(expected)
    assert {n: tuple(t.shape[1:]) for n, t in fired} == expected


def test_vgg16_layers_shapes_and_order():
    torch.manual_seed(0)
    model = build_model("vgg16", activation="relu", input_shape=(3, 32, 32), n_classes=10).eval()
    names = [f"conv{i}" for i in range(1, 14)] + ["fc1", "fc2"]
    assert default_layers(model) == names
    logits, fired = record(model, torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert [n for n, _ in fired] == names
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    sides = [32, 32, 16, 16, 8, 8, 8, 4, 4, 4, 2, 2, 2]
    expected = [(w, s, s) for w, s in zip(widths, sides, strict=True)] + [(4096,), (4096,)]
    assert [tuple(t.shape[1:]) for _, t in fired] == expected
    # Recorded after the ReLU, before pooling.
    assert all(t.min() >= 0 for _, t in fired)
    assert [type(m) for m in model.conv1] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert [type(m) for m in model.fc1] == [nn.Dropout, nn.Linear, nn.ReLU]


def test_recorded_tensor_is_the_activation_output():
    torch.manual_seed(0)
    model = build_model("mlp", activation="tanh", input_shape=(6,), n_classes=2)
    x = torch.randn(4, 6) * 10
    _, fired = record(model, x)
    first = dict(fired)["fc1"]
    assert torch.allclose(first, torch.tanh(model.fc1[0](x)))
    assert first.abs().max() <= 1


def test_paper_mlp_puts_batch_norm_after_the_activation():
    model = build_model("paper_mlp", activation="relu", input_shape=(1, 28, 28), n_classes=10)
    for name in default_layers(model):
        assert [type(m) for m in getattr(model, name)] == [nn.Linear, nn.ReLU, nn.BatchNorm1d]
    plain = build_model(
        "paper_mlp", activation="relu", input_shape=(784,), n_classes=10, batch_norm=False
    )
    assert not any(isinstance(m, nn.BatchNorm1d) for m in plain.modules())
    assert plain.fc1[0].in_features == 784


def test_paper_cnn_matches_the_paper_on_mnist():
    model = build_model("paper_cnn", input_shape=(1, 28, 28), n_classes=10)
    convs = [model.conv1[0], model.conv2[0], model.conv3[0]]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 4, (3, 3), (1, 1)),
        (4, 8, (3, 3), (1, 1)),
        (8, 16, (3, 3), (1, 1)),
    ]
    assert (model.fc[0].in_features, model.fc[0].out_features) == (784, 256)
    assert (model.out.in_features, model.out.out_features) == (256, 10)


# --- initialisation ----------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_xavier_uniform_with_gain_for_saturating_activations(activation):
    torch.manual_seed(0)
    model = build_model("paper_mlp", activation=activation, input_shape=(784,), n_classes=10)
    w = model.fc1[0].weight.detach()
    gain = {"tanh": 5.0 / 3.0, "sigmoid": 1.0}[activation]
    bound = gain * math.sqrt(6.0 / (784 + 1024))
    assert w.abs().max() <= bound
    assert w.abs().max() > 0.99 * bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.02)


@pytest.mark.parametrize(("activation", "slope"), [("relu", 0.0), ("leaky_relu", 0.01)])
def test_kaiming_normal_for_rectifiers(activation, slope):
    torch.manual_seed(0)
    model = build_model("paper_cnn", activation=activation, input_shape=(1, 28, 28), n_classes=10)
    w = model.fc[0].weight.detach()  # 256 × 784
    expected_std = math.sqrt(2.0 / (1 + slope**2)) / math.sqrt(784)
    assert w.std().item() == pytest.approx(expected_std, rel=0.02)
    assert abs(w.mean().item()) < 0.05 * expected_std
    conv = model.conv3[0].weight.detach()  # fan-in 8·3·3
    assert conv.std().item() == pytest.approx(math.sqrt(2.0 / 72), rel=0.15)


@pytest.mark.parametrize("name", ["mlp", "paper_mlp", "paper_cnn", "ib_mlp"])
def test_biases_zero_and_batch_norm_defaults(name):
    shape = (12,) if name == "ib_mlp" else (1, 8, 8)
    model = build_model(name, input_shape=shape, n_classes=2)
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            assert torch.count_nonzero(module.bias) == 0
        if isinstance(module, nn.BatchNorm1d):
            assert torch.all(module.weight == 1) and torch.count_nonzero(module.bias) == 0


def test_weights_are_reproducible_with_manual_seed():
    def weights(seed):
        torch.manual_seed(seed)
        model = build_model("paper_cnn", input_shape=(1, 8, 8), n_classes=10)
        return [p.detach().clone() for p in model.parameters()]

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a, c, strict=True))


# --- errors ------------------------------------------------------------------------------------


def test_unknown_model_and_activation_name_the_allowed_values():
    with pytest.raises(ConfigError, match=", ".join(MODEL_NAMES)):
        build_model("resnet", input_shape=(1, 8, 8), n_classes=10)
    with pytest.raises(ConfigError, match=", ".join(ACTIVATIONS)):
        build_model("mlp", activation="gelu", input_shape=(1, 8, 8), n_classes=10)


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("vgg16", {"input_shape": (1, 8, 8)}, "H, W >= 32"),
        ("paper_cnn", {"input_shape": (64,)}, r"images \(C, H, W\)"),
        ("mlp", {"input_shape": (0, 8)}, "input_shape"),
        ("mlp", {"input_shape": (8,), "n_classes": 1}, "n_classes"),
        ("mlp", {"input_shape": (8,), "hidden": []}, "hidden"),
        ("mlp", {"input_shape": (8,), "hidden": [4, 0]}, "positive"),
        ("paper_cnn", {"input_shape": (1, 8, 8), "hidden": [4]}, "'hidden'.*allowed: none"),
        ("vgg16", {"input_shape": (3, 32, 32), "dropout": 1.5}, "dropout"),
    ],
)
def test_bad_arguments_are_config_errors(name, kwargs, message):
    kwargs = {"n_classes": 10, **kwargs}
    with pytest.raises(ConfigError, match=message):
        build_model(name, **kwargs)


def test_default_layers_needs_declared_layers():
    with pytest.raises(ConfigError, match=r"capture\.layers"):
        default_layers(nn.Sequential(nn.Linear(2, 2)))
    model = build_model("mlp", input_shape=(4,), n_classes=2)
    model.hidden_layers = ("fc1", "nope")
    with pytest.raises(ConfigError, match="nope"):
        default_layers(model)


def test_layered_net_rejects_undeclared_hidden_layers():
    with pytest.raises(ConfigError, match="nope"):
        LayeredNet(
            OrderedDict(fc1=nn.Linear(2, 2)), ["fc1", "nope"], architecture="x", activation="tanh"
        )


# --- one definition of the models ---------------------------------------------------------------

SHAPES = {"paper_cnn": (1, 8, 8), "vgg16": (3, 32, 32)}
OPTION_VALUES = {"hidden": [4], "batch_norm": True, "dropout": 0.25}


def test_names_activations_and_options_are_the_config_ones():
    assert MODEL_NAMES is config.MODEL_NAMES and ACTIVATIONS is config.ACTIVATIONS
    assert MODEL_OPTIONS is config.MODEL_OPTIONS
    assert set(OPTION_VALUES) == {o for options in MODEL_OPTIONS.values() for o in options}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_builds_with_exactly_its_options(name):
    shape = SHAPES.get(name, (12,))
    for option in OPTION_VALUES:
        kwargs = {option: OPTION_VALUES[option]}
        if option in MODEL_OPTIONS[name]:
            model = build_model(name, input_shape=shape, n_classes=3, **kwargs)
            assert isinstance(model, LayeredNet) and model.architecture == name
        else:
            with pytest.raises(ConfigError, match=rf"unknown option\(s\) '{option}'"):
                build_model(name, input_shape=shape, n_classes=3, **kwargs)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_builds(activation):
    assert isinstance(make_activation(activation), nn.Module)
    model = build_model("mlp", activation=activation, input_shape=(4,), n_classes=2)
    assert model.activation_name == activation
