"""Capture through forward hooks, and probe selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from infoplane.errors import InputError, TrainingError
from infoplane.train.capture import capture_activations, modules_of_type, probe_indices


class Block(nn.Module):
    """A ResNet basic block: two conv-BN stages and an identity or projected shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(out)) + self.shortcut(x))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.block1 = Block(4, 4)
        self.block2 = Block(4, 8, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block2(self.block1(self.stem(x)))
        return self.fc(self.dropout(torch.flatten(self.pool(h), 1)))


@pytest.fixture
def resnet() -> TinyResNet:
    torch.manual_seed(0)
    model = TinyResNet()
    # Non-trivial running statistics, so eval-mode BN differs from train-mode BN.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8) * 2 + 1)
    return model


@pytest.fixture
def probe() -> torch.Tensor:
    return torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def _reference(model: TinyResNet, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Layer outputs computed by hand in eval mode."""
    model.eval()
    with torch.no_grad():
        stem = model.stem(x)
        block1 = model.block1(stem)
        block2 = model.block2(block1)
        logits = model.fc(torch.flatten(model.pool(block2), 1))
        inner = model.block2.relu1(model.block2.bn1(model.block2.conv1(block1)))
    return {
        "stem": stem.numpy(),
        "block1": block1.numpy(),
        "block2.relu1": inner.numpy(),
        "block2": block2.numpy(),
        "fc": logits.numpy(),
        "softmax": torch.softmax(logits, 1).numpy(),
    }


def test_residual_network_matches_a_hand_computed_forward(resnet, probe):
    layers = ["stem", "block1", "block2.relu1", "block2", "fc"]
    resnet.train()
    got = capture_activations(resnet, probe, layers)
    expected = _reference(resnet, probe)
    assert list(got) == [*layers, "softmax"]
    for name, value in expected.items():
        assert isinstance(got[name], np.ndarray) and got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(got["softmax"].sum(axis=1), 1.0, rtol=1e-6)


def test_batch_chunking_gives_the_same_activations(resnet, probe):
    layers = ["block1", "block2"]
    whole = capture_activations(resnet, probe, layers)
    chunked = capture_activations(resnet, probe, layers, batch_size=3)  # 3 + 3 + 3 + 1
    for name in whole:
        assert chunked[name].shape == whole[name].shape
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-5, atol=1e-6)


def test_previous_modes_and_statistics_are_restored(resnet, probe):
    resnet.train()
    resnet.block2.eval()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in resnet.named_modules()}
    stats = resnet.stem[1].running_mean.clone()
    capture_activations(resnet, probe, ["block1"])
    assert {name: m.training for name, m in resnet.named_modules()} == modes
    torch.testing.assert_close(resnet.stem[1].running_mean, stats)  # no train-mode BN update
    assert torch.is_grad_enabled()


def test_dropout_is_off_during_capture(resnet, probe):
    resnet.train()
    got = capture_activations(resnet, probe, ["pool", "dropout"])
    np.testing.assert_array_equal(got["dropout"], got["pool"].reshape(len(probe), -1))
    assert resnet.dropout.training


def test_numpy_inputs_are_cast_to_the_model_dtype(resnet, probe):
    got = capture_activations(resnet, probe.numpy().astype(np.float64), ["fc"], softmax=False)
    np.testing.assert_allclose(got["fc"], _reference(resnet, probe)["fc"], rtol=1e-5, atol=1e-6)


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_reused_module_is_an_error_naming_it(probe):
    class Reused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3, padding=1)
            self.act = nn.ReLU()  # applied twice: its hook fires twice per forward

        def forward(self, x):
            return self.act(self.conv(x) + self.act(x)).flatten(1)

    model = Reused()
    with pytest.raises(TrainingError, match=r"\['act'\] fired more than once.*\{'act': 2\}"):
        capture_activations(model, probe, ["conv", "act"])
    assert _hooks_left(model) == 0


def test_module_not_called_is_an_error_naming_it(resnet, probe):
    resnet.unused = nn.Linear(3, 3)
    resnet.train()
    with pytest.raises(TrainingError, match=r"\['unused'\] did not fire"):
        capture_activations(resnet, probe, ["block1", "unused"])
    assert _hooks_left(resnet) == 0
    assert resnet.training  # mode restored after the failure too


def test_unknown_layer_lists_the_available_names(resnet, probe):
    with pytest.raises(InputError, match=r"\['block3'\] are not modules.*block2\.conv1"):
        capture_activations(resnet, probe, ["block1", "block3"])
    assert _hooks_left(resnet) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": ["fc", "fc"]}, "named more than once"),
        ({"layers": [], "softmax": False}, "nothing to capture"),
        ({"layers": ["fc"], "batch_size": 0}, "batch_size must be a positive int"),
    ],
)
def test_bad_requests(resnet, probe, kwargs, message):
    with pytest.raises(InputError, match=message):
        capture_activations(resnet, probe, **kwargs)


def test_in_place_activation_after_a_recorded_module(probe):
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(108, 2)
    )
    got = capture_activations(model, probe, ["0", "1"], softmax=False)
    assert (got["0"] < 0).any()  # the pre-activation was copied before ReLU overwrote it
    np.testing.assert_array_equal(got["1"], np.maximum(got["0"], 0))


def test_modules_of_type(resnet):
    names = modules_of_type(resnet, nn.ReLU)
    assert names == ["stem.2", "block1.relu1", "block1.relu2", "block2.relu1", "block2.relu2"]
    mixed = modules_of_type(resnet, (nn.Linear, nn.AdaptiveAvgPool2d))
    assert mixed == ["pool", "fc"]
    assert modules_of_type(resnet, nn.Tanh) == []


# ---------------------------------------------------------------------------- probes


def test_fixed_probe_is_deterministic_and_ignores_step():
    a = probe_indices(1000, 100, seed=3)
    assert np.array_equal(a, probe_indices(1000, 100, seed=3, step=500))
    assert not np.array_equal(a, probe_indices(1000, 100, seed=4))
    assert a.dtype == np.int64 and a.shape == (100,)
    assert len(np.unique(a)) == 100 and a.min() >= 0 and a.max() < 1000
    assert (np.diff(a) > 0).all()


def test_resampled_probe_changes_with_step_and_repeats_per_seed_and_step():
    draws = [probe_indices(500, 50, seed=0, step=s, resample=True) for s in range(20)]
    assert len({tuple(d) for d in draws}) == 20
    again = probe_indices(500, 50, seed=0, step=7, resample=True)
    assert np.array_equal(again, draws[7])
    assert not np.array_equal(again, probe_indices(500, 50, seed=1, step=7, resample=True))
    # Every sample is drawn about equally often over many steps.
    counts = np.bincount(
        np.concatenate([probe_indices(20, 5, seed=2, step=s, resample=True) for s in range(2000)]),
        minlength=20,
    )
    assert counts.min() > 0.8 * 500 and counts.max() < 1.2 * 500


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((10, 11), {"seed": 0}, "cannot be drawn"),
        ((10, 0), {"seed": 0}, "cannot be drawn"),
        ((10, 5), {"seed": -1}, "seed must be"),
        ((10, 5), {"seed": 0, "resample": True}, "needs the step"),
    ],
)
def test_probe_indices_errors(args, kwargs, message):
    with pytest.raises(InputError, match=message):
        probe_indices(*args, **kwargs)
