"""Your own model, data and training loop: factories, layer selection, the output rule, the
recorder (with a real kill and resume) and three architectures beyond the built-ins."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from infoplane.config import factory_source, resolve_experiment, store_runs, validate_config
from infoplane.core.distances import squared_distances
from infoplane.errors import ConfigError, InfoplaneError, TrainingError
from infoplane.io.store import StoreReader, open_activations, validate_store
from infoplane.train.capture import capture_activations, model_output, pick_output, select_layers
from infoplane.train.factories import build_factory_model, load_factory_dataset
from infoplane.train.recorder import Recorder
from infoplane.train.training import train_run

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def experiment(model: dict, dataset: dict, **capture) -> dict:
    return resolve_experiment(
        {
            "experiment": "own",
            "dataset": dataset,
            "model": model,
            "training": {"epochs": 2, "batch_size": 50, "lr": 0.05, "device": "cpu"},
            "capture": {"probe": {"train": 20, "test": 20}, **capture},
        }
    )


BLOBS = {"factory": "ipnets.nets:blobs", "kwargs": {"shape": [1, 8, 8]}}


def store_content(path: Path) -> dict:
    root = zarr.open_group(path, mode="r")
    return {
        f"{split}/{name}": array[:].tobytes()
        for split in ("train", "test")
        for name, array in root[split].arrays()
    }


# --- the config -----------------------------------------------------------------------------


def test_the_schema_takes_factories_and_stores():
    config = validate_config(
        {
            "run": ["own", "ext"],
            "experiments": {
                "own": {"dataset": BLOBS, "model": {"factory": "ipnets.nets:resnet"}},
                "ext": {"stores": "runs/*/activations.zarr"},
            },
        }
    )
    assert config["experiments"]["own"]["model"] == {"factory": "ipnets.nets:resnet"}


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"factory": "not a name"}, "not of the form 'package.module:function'"),
        ({"factory": "a.b:c", "name": "mlp"}, "either name .* or factory"),
        ({"factory": "a.b:c", "activation": "relu"}, "model.activation: an option of the built-in"),
        ({"factory": "a.b:c", "hidden": [3]}, "options of the built-in models"),
    ],
)
def test_bad_factory_entries_are_config_errors(model, message):
    with pytest.raises(ConfigError, match=message):
        validate_config({"experiments": {"own": {"dataset": BLOBS, "model": model}}})


def test_stores_and_a_model_do_not_mix():
    with pytest.raises(ConfigError, match=r"dataset and model .* or stores"):
        validate_config(
            {"experiments": {"x": {"stores": "a", "dataset": BLOBS, "model": {"name": "mlp"}}}}
        )


def test_store_runs_are_named_after_their_folders(tmp_path):
    for run in ("seed0", "seed1"):
        (tmp_path / "runs" / run / "activations.zarr").mkdir(parents=True)
    (tmp_path / "other.zarr").mkdir()
    runs = store_runs(["runs/*/activations.zarr", "other.zarr"], base=tmp_path)
    assert list(runs) == ["seed0", "seed1", "other"]
    with pytest.raises(ConfigError, match="matches no store"):
        store_runs("nothing/*.zarr", base=tmp_path)


def test_the_factory_source_is_hashed():
    source = factory_source("ipnets.nets:resnet", search=HERE)
    assert source["file"] == str(HERE / "ipnets" / "nets.py")
    assert re.fullmatch(r"[0-9a-f]{64}", source["sha256"])


# --- bad factories fail before any training ---------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("no_such_package.nets:resnet", "cannot import module 'no_such_package.nets'"),
        ("ipnets.nets:resnett", "has no attribute 'resnett'; did you mean 'resnet'"),
        ("ipnets.nets:NOT_CALLABLE", "is a int, not callable"),
        ("ipnets.nets:returns_a_string", "returned str, not a torch.nn.Module"),
    ],
)
def test_bad_factories_fail_before_training(tmp_path, factory, message):
    settings = experiment({"factory": factory}, BLOBS, layers=["x"])
    with pytest.raises(ConfigError, match=message):
        train_run(settings, run="seed0", out_store=tmp_path / "activations.zarr")
    assert not (tmp_path / "activations.zarr").exists()


def test_an_unknown_layer_lists_close_matches(tmp_path):
    settings = experiment({"factory": "ipnets.nets:resnet"}, BLOBS, layers=["blocks.0.conv"])
    with pytest.raises(ConfigError, match=r"unknown module name 'blocks.0.conv' .* did you mean"):
        train_run(settings, run="seed0", out_store=tmp_path / "activations.zarr")
    assert not (tmp_path / "activations.zarr").exists()


def test_a_bad_dataset_factory_is_a_config_error():
    with pytest.raises(ConfigError, match="returned str"):
        load_factory_dataset({"factory": "ipnets.nets:returns_a_string"})
    with pytest.raises(InfoplaneError, match=r"calling ipnets\.nets:blobs"):
        load_factory_dataset({"factory": "ipnets.nets:blobs", "kwargs": {"colour": 1}})


# --- layers and outputs -----------------------------------------------------------------------


def test_layers_by_name_glob_and_type():
    model = build_factory_model(
        {"factory": "ipnets.nets:resnet"}, input_shape=(1, 8, 8), n_classes=3
    )
    assert select_layers(model, ["stem", "head"]) == ["stem", "head"]
    assert select_layers(model, ["blocks.?"]) == ["blocks.0", "blocks.1"]
    assert select_layers(model, ["type:Block", "blocks.0"]) == ["blocks.0", "blocks.1"]
    assert select_layers(model, ["blocks.*.relu"]) == ["blocks.0.relu", "blocks.1.relu"]
    with pytest.raises(ConfigError, match=r"no module of ResNet is of type 'Blok'.*'Block'"):
        select_layers(model, ["type:Blok"])
    with pytest.raises(ConfigError, match="matches no module"):
        select_layers(model, ["nothing.*"])


def test_the_output_rule():
    a, b = torch.zeros(2, 3), torch.ones(2, 4)
    assert pick_output((a, b)) is a
    assert pick_output((a, b), "1") is b
    assert pick_output({"f": b, "g": a}) is b
    assert pick_output({"f": b, "g": a}, "g") is a
    assert pick_output([(a, None)]) is a
    assert model_output({"features": b, "logits": a}) is a
    with pytest.raises(TrainingError, match="without key 'h'"):
        pick_output({"f": a}, "h")
    with pytest.raises(TrainingError, match="not a tensor"):
        pick_output(None)


def test_a_tuple_output_and_a_selector_are_captured():
    model = build_factory_model({"factory": "ipnets.nets:transformer"}, input_shape=(8,),
                                n_classes=2)  # fmt: skip
    x = torch.randint(0, 6, (5, 8)).float()
    attention = "encoder.layers.0.self_attn"  # nn.MultiheadAttention returns (output, weights)
    acts = capture_activations(model, x, [attention, f"{attention}[0]"], softmax=True)
    assert acts[attention].shape == (5, 8, 16)
    np.testing.assert_array_equal(acts[attention], acts[f"{attention}[0]"])
    assert acts["softmax"].shape == (5, 2)


# --- three architectures, trained by the workflow's training loop -----------------------------


def test_a_resnet_with_residual_blocks(tmp_path):
    settings = experiment({"factory": "ipnets.nets:resnet", "kwargs": {"width": 4}}, BLOBS,
                          layers=["stem", "type:Block"])  # fmt: skip
    result = train_run(settings, run="seed0", out_store=tmp_path / "activations.zarr",
                       progress="none")  # fmt: skip
    reader = StoreReader(result.store)
    assert reader.attrs["layers"] == ["stem", "blocks.0", "blocks.1", "softmax"]
    assert reader.attrs["model"] == "ipnets.nets:resnet"
    assert (
        reader.attrs["factories"]["model"]["sha256"]
        == factory_source("ipnets.nets:resnet", search=HERE)["sha256"]
    )
    with open_activations(result.store, "train") as ds:
        assert ds["blocks.1"].shape[2:] == (8, 4, 4)
    assert validate_store(result.store).ok


def test_a_transformer_encoder_on_token_sequences(tmp_path):
    settings = experiment(
        {"factory": "ipnets.nets:transformer"},
        {"factory": "ipnets.nets:tokens"},
        layers=["type:TransformerEncoderLayer"],
    )
    result = train_run(settings, run="seed0", out_store=tmp_path / "activations.zarr",
                       progress="none")  # fmt: skip
    assert validate_store(result.store).ok
    with open_activations(result.store, "test") as ds:
        hidden = ds["encoder.layers.1"].isel(step=-1).values
    assert hidden.shape == (20, 8, 16)  # (sample, seq, hidden)
    # the tensor kernel's distances are those of the flattened (seq * hidden) vectors
    flat = hidden.reshape(20, -1)
    expected = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(hidden), expected, rtol=1e-4, atol=1e-4)


def test_a_model_with_a_dict_output(tmp_path):
    settings = experiment({"factory": "ipnets.nets:dict_net"},
                          {"factory": "ipnets.nets:blobs"}, layers=["body"])  # fmt: skip
    result = train_run(settings, run="seed0", out_store=tmp_path / "activations.zarr",
                       progress="none")  # fmt: skip
    assert result.final["train"]["accuracy"] > 0.5  # trained on the "logits" entry
    assert StoreReader(result.store).attrs["layers"] == ["body", "softmax"]


# --- the recorder -----------------------------------------------------------------------------


def readme_recorder_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- recorder example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README.md lost its recorder example"
    return match.group(1)


def test_the_readme_recorder_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = readme_recorder_example()
    assert len([line for line in code.splitlines() if line.strip()]) <= 30
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    store = tmp_path / "runs" / "mine" / "seed0" / "activations.zarr"
    assert validate_store(store).ok
    assert StoreReader(store).attrs["layers"][-1] == "softmax"


def test_a_killed_recorder_run_resumes_to_the_same_store(tmp_path):
    helper = [sys.executable, str(HERE / "recorder_kill_helper.py")]
    subprocess.run([*helper, str(tmp_path / "whole.zarr"), "0"], check=True, timeout=300)
    killed = tmp_path / "killed.zarr"
    process = subprocess.Popen([*helper, str(killed), "0.1"], stdout=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.strip() == "step 18":  # past a few captures, between two of them
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    captured = zarr.open_group(killed, mode="r")["train"]["captured"][:]
    assert captured[:5].all() and not captured[-1]
    started = time.perf_counter()
    out = subprocess.run([*helper, str(killed), "0"], check=True, timeout=300,
                         capture_output=True, text=True)  # fmt: skip
    assert out.stdout.splitlines()[0] == "step 17"  # resumed after the capture at step 16
    assert time.perf_counter() - started < 300
    assert store_content(killed) == store_content(tmp_path / "whole.zarr")


def test_the_recorder_restarts_on_another_schedule(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    x, y = torch.randn(10, 4), torch.arange(10) % 3
    probes = {"train": (x, y), "test": (x, y)}
    with Recorder(tmp_path / "a.zarr", model, layers=["0"], probes=probes, steps=[0, 2]) as rec:
        rec.update()
        assert rec.update()
    with Recorder(tmp_path / "a.zarr", model, layers=["0"], probes=probes, steps=[0, 3]) as rec:
        assert rec.step == 0 and rec.resumed_from is None
    with Recorder(tmp_path / "a.zarr", model, layers=["0"], probes=probes, steps=[0, 3]) as rec:
        assert rec.step == 0  # no checkpoint yet: a fresh store again
        rec.update(3)
    with Recorder(tmp_path / "a.zarr", model, layers=["0"], probes=probes, steps=[0, 3]) as rec:
        assert rec.resumed_from == 3 and rec.done


def test_the_lightning_callback_is_optional():
    pytest.importorskip("lightning")
    from infoplane.train.lightning import InfoplaneCallback

    assert InfoplaneCallback("a.zarr", layers=["0"], probes={}, steps=[0]).recorder is None


def test_the_lightning_callback_records_on_a_stand_in_trainer(tmp_path, monkeypatch):
    """The callback's logic, with a stand-in for ``lightning.pytorch`` where it is absent."""
    import importlib
    import types

    if importlib.util.find_spec("lightning") is None:
        fake = types.ModuleType("lightning.pytorch")
        fake.Callback = object
        monkeypatch.setitem(sys.modules, "lightning", types.ModuleType("lightning"))
        monkeypatch.setitem(sys.modules, "lightning.pytorch", fake)
    monkeypatch.delitem(sys.modules, "infoplane.train.lightning", raising=False)
    from infoplane.train.lightning import InfoplaneCallback

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(12, 4), torch.arange(12) % 3
    store = tmp_path / "run" / "activations.zarr"
    callback = InfoplaneCallback(str(store), layers=["1"], probes={"train": (x, y), "test": (x, y)},
                                 steps=[0, 2, 4])  # fmt: skip
    trainer = types.SimpleNamespace(global_step=0)
    callback.on_fit_start(trainer, model)
    for step in (1, 2, 3):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, model, None, None, step - 1)
    callback.on_fit_end(trainer, model)
    captured = zarr.open_group(store, mode="r")["train"]["captured"][:]
    assert captured.tolist() == [True, True, False]
    trainer.global_step = 3  # resumed by Lightning
    callback.on_fit_start(trainer, model)
    trainer.global_step = 4
    callback.on_train_batch_end(trainer, model, None, None, 3)
    assert zarr.open_group(store, mode="r")["train"]["captured"][:].all()
    assert not store.with_name("activations.zarr.checkpoint.pt").exists()


def test_the_readme_model_file_and_config_fit_together(tmp_path, monkeypatch):
    """The README's model file and config: valid, importable from the workflow's directory, the
    layers found (the workflow test runs such a config end to end)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(# mynets/models\.py\n.*?)```", text, re.S).group(1)
    config_text = re.search(r"```yaml\n(run: \[mine\]\n.*?)```", text, re.S).group(1)
    assert len(config_text.splitlines()) <= 15
    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "mynets" / "models.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import yaml

    settings = validate_config(yaml.safe_load(config_text))["experiments"]["mine"]
    model = build_factory_model(settings["model"], input_shape=(1, 8, 8), n_classes=10)
    assert select_layers(model, settings["capture"]["layers"]) == ["1"]
    assert factory_source(settings["model"]["factory"])["file"].endswith("models.py")
