"""Where the Grams and spectra are computed (infoplane.estimate.devices): one core, any device.

CI has no GPU: the torch code path is tested on the CPU (``torch-cpu``), against numpy; the
same test runs on a CUDA device where there is one.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_spectra_plane import DIM_X, DIMS, LAYERS, PLANE, _point

from infoplane.core.kernels import gaussian_gram
from infoplane.core.plane import estimate_step
from infoplane.errors import ConfigError
from infoplane.estimate import devices
from infoplane.presets import DEFAULT_SPECTRUM, resolve_preset, spectrum_of

torch = pytest.importorskip("torch")

TORCH_DEVICES = ["torch-cpu"] + (["cuda"] if torch.cuda.is_available() else [])
KEYS = (*PLANE, "H_X", "H_Y", "sigma", "sigma_x", "clipped_mass", "spectral_error")


@pytest.mark.parametrize("spec", ["auto", "cpu", "torch-cpu", "cuda", "cuda:1"])
def test_device_names_are_accepted(spec):
    assert devices.check_device(spec) == spec


@pytest.mark.parametrize("spec", ["gpu", "CUDA", "cuda:", "cuda:x", "", None, 0])
def test_other_device_names_are_a_config_error(spec):
    with pytest.raises(ConfigError, match="device must be auto, cpu"):
        devices.check_device(spec)


def test_auto_takes_the_gpu_only_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == "cpu"
    assert devices.array_mover("auto") is None  # numpy: the CPU path itself
    with pytest.raises(ConfigError, match="torch sees 0 CUDA device"):
        devices.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve_device("auto") == "cuda"
    assert devices.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(ConfigError, match="cuda:2 was asked for"):
        devices.resolve_device("cuda:2")


def test_the_default_device_comes_from_the_environment():
    assert devices.default_device({}) == "auto"
    assert devices.default_device({devices.DEVICE_ENV: "torch-cpu"}) == "torch-cpu"
    with pytest.raises(ConfigError):
        devices.default_device({devices.DEVICE_ENV: "tpu"})


def test_the_mover_gives_float64_tensors_on_the_device():
    moved = devices.array_mover("torch-cpu")(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert isinstance(moved, torch.Tensor) and moved.dtype == torch.float64
    assert moved.device.type == "cpu" and moved.tolist() == [[0, 1, 2], [3, 4, 5]]


def _on(device, point, preset, spectrum=None, seed=(0, 0, 0)):
    return estimate_step(
        point, preset, layers=LAYERS, dims=DIMS, dim_x=DIM_X, spectrum=spectrum, seed=seed,
        to_device=devices.array_mover(device),
    )  # fmt: skip


def _numpy_spectra_fail(monkeypatch):
    """From here on, a numpy eigensolver or a numpy Gram fails the test: the torch path must
    compute on its own arrays, not convert them to numpy behind the scenes (the width search
    alone runs on the host)."""
    from infoplane.core import plane

    def refuse(*args, **kwargs):
        raise AssertionError("numpy computed the spectra the device should have")

    def on_device_only(d2, sigma):
        assert isinstance(d2, torch.Tensor), "a Gram built from host distances"
        return gaussian_gram(d2, sigma)

    monkeypatch.setattr(np.linalg, "eigvalsh", refuse)
    monkeypatch.setattr(plane, "gaussian_gram", on_device_only)


@pytest.fixture(scope="module")
def point():
    return _point(240, 3)


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("name, alpha", [("paper-alpha1.01", 1.01), ("silverman", 1), ("paper", 2)])
def test_exact_estimates_agree_across_devices(point, device, name, alpha, monkeypatch):
    preset = {**resolve_preset(None, name), "alpha": alpha}
    cpu = _on("cpu", point, preset, spectrum_of(preset))
    _numpy_spectra_fail(monkeypatch)
    other = _on(device, point, preset, spectrum_of(preset))
    assert other["failures"] == cpu["failures"] == []
    for key in KEYS:
        assert isinstance(other[key], (float, np.ndarray)), key
        np.testing.assert_allclose(other[key], cpu[key], rtol=1e-10, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_randomized_estimates_agree_across_devices(point, device, monkeypatch):
    """The probes are drawn on the host: the same seed gives the same estimate on any device."""
    preset = resolve_preset(None, "paper-alpha1.01")
    spectrum = {**DEFAULT_SPECTRUM, "method": "lanczos", "dtype": "float64"}
    cpu = _on("cpu", point, preset, spectrum, seed=(0, 1, 5))
    _numpy_spectra_fail(monkeypatch)
    other = _on(device, point, preset, spectrum, seed=(0, 1, 5))
    assert other["randomized"] and cpu["randomized"]
    for key in KEYS:
        np.testing.assert_allclose(other[key], cpu[key], rtol=1e-8, atol=1e-9, err_msg=key)


def test_the_multivariate_kernel_agrees_across_devices(rng):
    from infoplane.core.distances import channel_squared_distances, squared_distances

    x = rng.standard_normal((60, 3, 4, 4))
    y = rng.integers(0, 4, 60)
    point = {
        "d2_x": squared_distances(x),
        "y": y,
        "nonfinite": np.zeros(1, bool),
        "nonfinite_x": np.array(False),
    }
    preset = resolve_preset(None, "multivariate")
    d2c = channel_squared_distances(x)
    kwargs = {"layers": ["conv"], "dims": [48], "dim_x": 48, "channel_d2": lambda i: d2c}
    cpu = estimate_step(point, preset, **kwargs)
    other = estimate_step(point, preset, to_device=devices.array_mover("torch-cpu"), **kwargs)
    for key in ("I_XT", "I_TY", "H_T", "sigma"):
        np.testing.assert_allclose(other[key], cpu[key], rtol=1e-10, err_msg=key)


def test_a_missing_gpu_fails_the_estimate_instead_of_falling_back(run_dir, client, monkeypatch):
    from infoplane.estimate.pipeline import estimate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    preset = resolve_preset(None, "silverman")
    with pytest.raises(ConfigError, match="CUDA device"):
        estimate(run_dir / "distances.zarr", preset, name="s", client=client, device="cuda")
    with pytest.raises(ConfigError, match="device must be"):
        estimate(run_dir / "distances.zarr", preset, name="s", client=client, device="gpu")


def test_the_pipeline_on_torch_matches_numpy(run_dir, client):
    from infoplane.estimate.pipeline import estimate

    preset = resolve_preset(None, "paper")
    cpu = estimate(run_dir / "distances.zarr", preset, name="p", client=client, device="cpu")
    other = estimate(
        run_dir / "distances.zarr", preset, name="p", client=client, device="torch-cpu"
    )  # fmt: skip
    for key in ("I_XT", "I_TY", "H_T", "H_X", "H_Y", "sigma"):
        np.testing.assert_allclose(other[key], cpu[key], rtol=1e-10, atol=1e-10, err_msg=key)


def test_the_command_line_names_a_bad_device(run_dir, tmp_path, capsys, monkeypatch):
    from infoplane.cli import main

    args = ["estimate", str(run_dir / "distances.zarr"), "--estimator", "silverman"]
    assert main([*args, "--out", str(tmp_path / "a.zarr"), "--device", "gpu"]) != 0
    assert (
        "device must be auto, cpu, torch-cpu, cuda or cuda:N, got 'gpu'" in capsys.readouterr().err
    )
    monkeypatch.setenv(devices.DEVICE_ENV, "tpu")
    assert main([*args, "--out", str(tmp_path / "b.zarr")]) != 0
    assert "got 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_auto_on_a_machine_without_a_gpu_does_not_import_torch():
    """Every worker resolves the device: without GPU device files, ``auto`` costs no import."""
    import subprocess
    import sys

    code = (
        "import sys; from infoplane.estimate.devices import resolve_device; "
        "print(resolve_device('auto'), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    if devices._gpu_device_files():
        assert out.stdout.split()[1] == "True"
    else:
        assert out.stdout.split() == ["cpu", "False"]
