"""Config problems that need no training are found before the first job runs."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infoplane.cli import main
from infoplane.config import validate_config
from infoplane.errors import ConfigError
from infoplane.train.preflight import check_experiments

ROOT = Path(__file__).resolve().parents[1]
BASE = {
    "run": ["d"],
    "experiments": {
        "d": {
            "dataset": {"name": "digits"},
            "model": {"name": "mlp", "hidden": [16, 8]},
            "training": {"epochs": 3, "batch_size": 100, "device": "cpu"},
            "capture": {"probe": {"train": 30, "test": 20}},
        }
    },
}


def with_change(change) -> dict:
    config = copy.deepcopy(BASE)
    change(config["experiments"]["d"])
    return config


CASES = {
    "probe larger than the split": (
        lambda e: e["capture"]["probe"].update(train=5000),
        r"capture.probe.train: 5000 probe samples, but the train split of digits holds 1438",
    ),
    "probe larger than a t10k split": (
        lambda e: (
            e.update(dataset={"name": "mnist", "source": "t10k"})
            or e["capture"]["probe"].update(test=3000)
        ),
        r"capture.probe.test: 3000 .* mnist holds 2000",
    ),
    "unknown layer": (
        lambda e: e["capture"].update(layers=["fc9"]),
        r"capture.layers: unknown module name 'fc9' of .*modules: .*fc1",
    ),
    "unknown layer of a built-in vgg16": (
        lambda e: (
            e.update(dataset={"name": "cifar10"}, model={"name": "vgg16"})
            or e["capture"].update(layers=["conv1", "features.0"])
        ),
        r"unknown module name 'features.0'",
    ),
    "NaN learning rate": (lambda e: e["training"].update(lr=float("nan")), r"training.lr: nan"),
    "Inf learning rate": (lambda e: e["training"].update(lr=float("inf")), r"training.lr: inf"),
    "list steps beyond training": (
        lambda e: e["capture"].update(schedule={"kind": "list", "steps": [0, 5, 10000]}),
        r"step\(s\) 10000 outside training; allowed 0..45",
    ),
    "unknown dataset option": (
        lambda e: e["dataset"].update(colour=True),
        r"dataset: unknown option\(s\) 'colour' for dataset 'digits'",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_each_problem_is_a_config_error_before_training(case):
    change, message = CASES[case]
    with pytest.raises(ConfigError, match=message):
        check_experiments(validate_config(with_change(change)))


def test_a_valid_config_and_the_shipped_one_pass():
    check_experiments(validate_config(BASE))
    shipped = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    check_experiments(shipped, list(shipped["experiments"]))


def test_train_refuses_before_it_trains(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(with_change(CASES["unknown layer"][0])))
    out = tmp_path / "run" / "activations.zarr"
    args = ["train", "--config", str(config), "--experiment", "d", "--run", "seed0"]
    assert main([*args, "--out", str(out)]) == 1
    assert "unknown module name 'fc9'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_a_dry_run_of_the_workflow_refuses_the_config(tmp_path):
    config = with_change(CASES["probe larger than the split"][0])
    config["experiments"]["d"]["estimators"] = ["paper"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
         "--directory", str(tmp_path), "--dry-run", "--cores", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "capture.probe.train: 5000 probe samples" in output, output[-3000:]
    assert "rule train" not in output
