import json
import subprocess
import sys
import textwrap

import pytest

from infoplane.config import (
    ACTIVATIONS,
    MODEL_NAMES,
    MODEL_OPTIONS,
    config_schema,
    experiment_settings,
    load_config,
    resolve_experiment,
    seed_from_run,
    validate_config,
)
from infoplane.errors import ConfigError
from infoplane.presets import BUILTIN_PRESETS

MINIMAL = """
run: [digits_mlp]
experiments:
  digits_mlp:
    dataset: {name: digits}
    model: {name: mlp}
"""

FULL = """
run: [digits_mlp]
experiments:
  digits_mlp:
    dataset: {name: mnist, root: data, n_train: 8000}
    model: {name: paper_cnn, activation: relu}
    training: {optimizer: adam, lr: 1e-3, batch_size: 50, epochs: 3, device: cpu}
    seeds: [0, 4]
    capture:
      schedule: {kind: every, every: 25, first_epoch_every: 5}
      probe: {train: 64, test: 128, resample: true}
      layers: [conv1, fc1]
      softmax: false
      dtype: float16
    estimators: [paper]
estimators:
  paper:
    kernel: tensor
    alpha: 1.0
    input_width: {rule: fixed, sigma: 8.0}
    label_kernel: indicator
    layer_width: {rule: alignment, grid: linear, points: 100, smoothing: 0.9}
"""


def write(tmp_path, text, name="config.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_config_gets_every_default(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    settings = experiment_settings(config, "digits_mlp")
    assert settings["experiment"] == "digits_mlp"
    assert settings["model"] == {"name": "mlp", "activation": "tanh"}
    assert settings["training"] == {
        "optimizer": "sgd",
        "lr": 0.09,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "batch_size": 100,
        "epochs": 10,
        "device": "auto",
    }
    assert settings["seeds"] == [0]
    capture = settings["capture"]
    assert capture["schedule"] == {"kind": "epoch", "first_epoch_every": None}
    assert capture["probe"] == {"train": 100, "test": 200, "resample": False}
    assert capture["layers"] is None and capture["softmax"] is True
    assert capture["dtype"] == "float32"
    assert config["estimators"] == {} and settings["estimators"] == []


def test_given_values_are_kept_and_settings_are_json(tmp_path):
    config = load_config(write(tmp_path, FULL))
    settings = experiment_settings(config, "digits_mlp")
    assert settings["training"]["lr"] == pytest.approx(1e-3)  # 1e-3 read as a float, not a string
    assert settings["training"]["optimizer"] == "adam"
    assert settings["dataset"] == {"name": "mnist", "root": "data", "n_train": 8000}
    assert settings["capture"]["schedule"]["every"] == 25
    assert settings["capture"]["dtype"] == "float16"
    assert json.loads(json.dumps(settings)) == settings
    assert config["estimators"]["paper"]["alpha"] == 1.0


def test_defaults_do_not_leak_between_experiments_or_into_the_schema(tmp_path):
    text = MINIMAL + "  other:\n    dataset: {name: digits}\n    model: {name: mlp}\n"
    config = load_config(write(tmp_path, text))
    config["experiments"]["digits_mlp"]["capture"]["probe"]["train"] = 7
    assert config["experiments"]["other"]["capture"]["probe"]["train"] == 100
    assert (
        load_config(write(tmp_path, MINIMAL, "again.yaml"))["experiments"]["digits_mlp"]["capture"][
            "probe"
        ]["train"]
        == 100
    )
    assert "default" not in json.dumps(config_schema()["properties"]["experiments"])


def test_validation_is_idempotent(tmp_path):
    config = load_config(write(tmp_path, FULL))
    assert validate_config(config) == config


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("training: {optimizer: sgdd}", r"training\.optimizer: 'sgdd'.*allowed values: sgd, adam"),
        ("training: {epochs: 2.0}", r"training\.epochs: expected integer"),
        ("training: {lr: 0}", r"training\.lr"),
        ("training: {device: tpu}", r"training\.device.*auto, cpu, cuda"),
        ("training: {batchsize: 10}", r"training: unknown key\(s\) 'batchsize'; allowed keys:"),
        ("capture: {schedule: {kind: every}}", r"capture\.schedule: missing.*'every'"),
        (
            "capture: {schedule: {kind: log, points: 5, every: 2}}",
            r"capture\.schedule\.every: ignored",
        ),
        ("capture: {probe: {train: 1}}", r"capture\.probe\.train"),
        ("capture: {dtype: float64}", r"capture\.dtype.*float32, float16"),
        ("seeds: []", r"seeds"),
        ("seeds: [0, 0]", r"seeds"),
        ("estimators: [nope]", r"estimators\[0\]: unknown estimator preset 'nope'"),
        ("estimators: [nope]", r"estimators\[0\]: .*available: paper, paper-alpha1\.01"),
    ],
)
def test_bad_values_name_the_key_path(tmp_path, edit, expected):
    path = write(tmp_path, MINIMAL + "    " + edit + "\n")
    with pytest.raises(ConfigError, match=rf"experiments\.digits_mlp\.{expected}"):
        load_config(path)


def test_model_and_dataset_names_are_checked(tmp_path):
    text = MINIMAL.replace("name: mlp", "name: resnet").replace("name: digits", "name: svhn")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    # every problem is reported at once, with the allowed values
    assert "experiments.digits_mlp.model.name: 'resnet'" in message and "paper_cnn" in message
    assert "experiments.digits_mlp.dataset.name: 'svhn'" in message and "cifar10" in message


def test_run_must_name_defined_experiments(tmp_path):
    with pytest.raises(ConfigError, match=r"run\[0\]: unknown experiment 'other'"):
        load_config(write(tmp_path, MINIMAL.replace("run: [digits_mlp]", "run: [other]")))


def test_unknown_top_level_key_and_bad_names(tmp_path):
    with pytest.raises(ConfigError, match=r"<top level>: unknown key\(s\) 'experiment'"):
        load_config(write(tmp_path, "experiment: {}\nexperiments: {a: {}}\n"))
    bad = MINIMAL.replace("  digits_mlp:\n", "  digits/mlp:\n").replace("run: [digits_mlp]", "")
    with pytest.raises(ConfigError, match=r"experiments: name 'digits/mlp' is not allowed"):
        load_config(write(tmp_path, bad))


def test_estimator_presets_are_loosely_typed(tmp_path):
    ok = MINIMAL + "estimators:\n  mine: {kernel: tensor, alpha: 1.01, extra_key: 3}\n"
    assert load_config(write(tmp_path, ok))["estimators"]["mine"]["extra_key"] == 3
    bad = MINIMAL + "estimators:\n  mine: {alpha: high}\n"
    with pytest.raises(ConfigError, match=r"estimators\.mine\.alpha: expected number"):
        load_config(write(tmp_path, bad))


def test_file_problems_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "run: [a\n"))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_experiment_settings_unknown_name(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError, match=r"unknown experiment 'mnist'.*digits_mlp"):
        experiment_settings(config, "mnist")


def test_seed_from_run():
    settings = {"experiment": "e", "seeds": [0, 3, 10]}
    assert seed_from_run("seed3", settings) == 3
    assert seed_from_run("seed10", settings) == 10
    with pytest.raises(ConfigError, match=r"seed 4 is not in the seeds of e \(0, 3, 10\)"):
        seed_from_run("seed4", settings)
    for name in ("run0", "seed", "seed-1", "seed03", "Seed0"):
        with pytest.raises(ConfigError, match="seed<S>"):
            seed_from_run(name, settings)


def test_resolve_experiment_fills_and_checks_hand_written_settings(tmp_path):
    resolved = experiment_settings(load_config(write(tmp_path, FULL)), "digits_mlp")
    assert resolve_experiment(resolved) == resolved
    bare = resolve_experiment({"dataset": {"name": "digits"}, "model": {"name": "mlp"}})
    assert bare["training"]["lr"] == 0.09 and bare["experiment"] == "experiment"
    with pytest.raises(
        ConfigError, match=r"experiments\.e\.capture\.probe\.test: expected integer"
    ):
        resolve_experiment({**resolved, "experiment": "e", "capture": {"probe": {"test": "all"}}})
    with pytest.raises(ConfigError, match=r"model\.dropout: not an option of model mlp"):
        resolve_experiment(
            {"dataset": {"name": "digits"}, "model": {"name": "mlp", "dropout": 0.1}}
        )


def test_experiments_name_builtin_presets_without_defining_them(tmp_path):
    text = MINIMAL + "    estimators: [" + ", ".join(BUILTIN_PRESETS) + "]\n"
    config = load_config(write(tmp_path, text))
    assert config["estimators"] == {}
    assert experiment_settings(config, "digits_mlp")["estimators"] == list(BUILTIN_PRESETS)
    own = MINIMAL + "    estimators: [mine, paper]\nestimators:\n  mine: {alpha: 2.0}\n"
    assert load_config(write(tmp_path, own, "own.yaml"))["estimators"] == {"mine": {"alpha": 2.0}}


def test_non_utf8_config_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(MINIMAL.encode() + b"# \xe9t\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)


# --- the schema's enums are the Python definitions ------------------------------------------
# The schema is YAML that Snakemake's `validate` reads as a file, so it spells the names out;
# these tests keep it equal to infoplane.config (and to the dataset loaders).


def _model_schema() -> dict:
    return config_schema()["$defs"]["experiment"]["properties"]["model"]


def test_schema_model_names_and_activations_are_the_python_ones():
    properties = _model_schema()["properties"]
    assert properties["name"]["enum"] == list(MODEL_NAMES)
    assert properties["activation"]["enum"] == list(ACTIVATIONS)
    assert properties["activation"]["default"] == ACTIVATIONS[0] == "tanh"


def test_schema_model_options_are_the_python_ones():
    options = set(_model_schema()["properties"]) - {"name", "activation", "factory", "kwargs"}
    assert options == {option for names in MODEL_OPTIONS.values() for option in names}
    assert tuple(MODEL_OPTIONS) == MODEL_NAMES


def test_schema_dataset_names_are_the_loaders():
    from infoplane.train.datasets import DATASET_NAMES

    dataset = config_schema()["$defs"]["experiment"]["properties"]["dataset"]
    assert dataset["properties"]["name"]["enum"] == list(DATASET_NAMES)


@pytest.mark.parametrize(
    ("name", "option"),
    [(name, option) for name in MODEL_NAMES for option in ("hidden", "batch_norm", "dropout")],
)
def test_model_options_are_checked_per_model(tmp_path, name, option):
    value = {"hidden": [8], "batch_norm": True, "dropout": 0.1}[option]
    text = MINIMAL.replace("model: {name: mlp}", f"model: {{name: {name}, {option}: {value}}}")
    if option in MODEL_OPTIONS[name]:
        assert load_config(write(tmp_path, text))["experiments"]["digits_mlp"]["model"][option]
    else:
        with pytest.raises(ConfigError, match=rf"model\.{option}: not an option of model {name}"):
            load_config(write(tmp_path, text))


def test_config_and_presets_import_light():
    heavy = "('torch', 'dask', 'zarr', 'xarray', 'matplotlib')"
    code = (
        "import sys, infoplane.config, infoplane.presets; "
        f"print(any(m in sys.modules for m in {heavy}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
