import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from infoplane.cli import main as cli_main
from infoplane.config import experiment_settings, load_config
from infoplane.errors import ConfigError, TrainingError
from infoplane.io.store import StoreReport, open_activations, validate_store
from infoplane.train.datasets import load_dataset
from infoplane.train.models import build_model
from infoplane.train.schedule import capture_steps
from infoplane.train.training import (
    CHECKPOINT_FILE,
    ITERATIONS_FILE,
    METRICS_FILE,
    Progress,
    evaluate,
    load_checkpoint,
    read_metrics,
    train_run,
)

HERE = Path(__file__).resolve().parent
EXPERIMENT = "digits"
CONFIG = """
run: [digits]
experiments:
  digits:
    dataset: {name: digits}
    model: {name: mlp, hidden: [16, 8]}
    training: {epochs: 3, batch_size: 100, device: cpu}
    seeds: [0, 1]
    capture:
      schedule: {kind: every, every: 4}
      probe: {train: 30, test: 20}
"""
ITERATIONS_PER_EPOCH = 15  # 1,437 digits training images in batches of 100
EPOCHS = 3


def store_content(path: Path) -> tuple[dict, dict]:
    """Every array of a store as (dtype, shape, raw bytes), and the root attributes."""
    root = zarr.open_group(path, mode="r")
    arrays = {}
    for split in ("train", "test"):
        for name, array in root[split].arrays():
            values = array[:]
            arrays[f"{split}/{name}"] = (values.dtype.str, values.shape, values.tobytes())
    return arrays, root.attrs.asdict()


def assert_same_run(a: Path, b: Path) -> None:
    """Two run directories hold bit-identical stores, metrics and iteration losses."""
    arrays_a, attrs_a = store_content(a / "activations.zarr")
    arrays_b, attrs_b = store_content(b / "activations.zarr")
    assert attrs_a == attrs_b
    assert arrays_a.keys() == arrays_b.keys()
    different = [name for name in arrays_a if arrays_a[name] != arrays_b[name]]
    assert not different, f"arrays differ: {different}"
    for name in (METRICS_FILE, ITERATIONS_FILE):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def settings_with(settings: dict, **changes) -> dict:
    """A copy of settings with ``section={key: value}`` changes merged in."""
    out = copy.deepcopy(settings)
    for section, values in changes.items():
        out[section].update(values)
    return out


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def settings(config_path) -> dict:
    return experiment_settings(load_config(config_path), EXPERIMENT)


@pytest.fixture(scope="module")
def reference(settings, tmp_path_factory):
    """One uninterrupted run, shared by the tests that compare against it."""
    run_dir = tmp_path_factory.mktemp("reference")
    result = train_run(
        settings, run="seed0", out_store=run_dir / "activations.zarr", progress="none"
    )
    return run_dir, result


def test_run_directory_and_store_contents(reference, settings):
    run_dir, result = reference
    assert result.device == "cpu" and result.seed == 0 and result.resumed_from_step is None
    assert {p.name for p in run_dir.iterdir()} == {
        "activations.zarr",
        METRICS_FILE,
        ITERATIONS_FILE,
        CHECKPOINT_FILE,
    }
    store = run_dir / "activations.zarr"
    assert validate_store(store) == StoreReport([], [])
    expected_steps = capture_steps(
        settings["capture"]["schedule"], iterations_per_epoch=ITERATIONS_PER_EPOCH, epochs=EPOCHS
    )
    np.testing.assert_array_equal(result.steps, expected_steps)

    data = load_dataset("digits")
    for split, n in (("train", 30), ("test", 20)):
        ds = open_activations(store, split)
        assert ds.attrs["layers"] == ["fc1", "fc2", "softmax"]
        assert ds.attrs["experiment"] == EXPERIMENT and ds.attrs["run"] == "seed0"
        assert ds.attrs["seed"] == 0 and ds.attrs["device"] == "cpu"
        assert ds.attrs["model"] == "mlp" and ds.attrs["dataset"] == "digits"
        assert ds.attrs["config"] == settings
        np.testing.assert_array_equal(ds["step"], expected_steps)
        np.testing.assert_allclose(ds["epoch"], expected_steps / ITERATIONS_PER_EPOCH)
        index = ds["index"].values
        assert index.shape == (len(expected_steps), n)
        assert (index == index[0]).all()  # a fixed probe
        x_all, y_all = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        np.testing.assert_array_equal(ds["x"].values, x_all[index])
        np.testing.assert_array_equal(ds["y"].values, y_all[index])
        softmax = ds["softmax"].values
        np.testing.assert_allclose(softmax.sum(axis=-1), 1.0, rtol=1e-5)
        # the network changes between captures
        assert not np.allclose(ds["fc1"].values[0], ds["fc1"].values[-1])


def test_metrics_match_the_checkpointed_model(reference):
    run_dir, result = reference
    rows = read_metrics(run_dir / METRICS_FILE)
    assert [(r["epoch"], r["split"]) for r in rows] == [
        (e, s) for e in range(EPOCHS + 1) for s in ("train", "test")
    ]
    assert [r["step"] for r in rows[::2]] == [e * ITERATIONS_PER_EPOCH for e in range(EPOCHS + 1)]
    assert rows[-1]["loss"] < rows[1]["loss"]  # it learns

    # the last row is the evaluation of the checkpointed model on the whole test split
    state = load_checkpoint(run_dir / CHECKPOINT_FILE)
    assert state["epoch"] == EPOCHS and state["step"] == EPOCHS * ITERATIONS_PER_EPOCH
    data = load_dataset("digits")
    model = build_model("mlp", hidden=[16, 8], input_shape=(1, 8, 8), n_classes=10)
    model.load_state_dict(state["model"])
    logits = model.eval()(torch.from_numpy(data.x_test)).detach()
    accuracy = (logits.argmax(1).numpy() == data.y_test).mean()
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(data.y_test)).item()
    assert rows[-1]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert rows[-1]["loss"] == pytest.approx(loss, rel=1e-5)
    assert result.final["test"]["accuracy"] == rows[-1]["accuracy"]

    lines = (run_dir / ITERATIONS_FILE).read_text().splitlines()
    assert lines[0] == "step,epoch,loss"
    assert len(lines) == 1 + EPOCHS * ITERATIONS_PER_EPOCH
    assert [int(line.split(",")[0]) for line in lines[1:]] == list(range(1, 46))


def test_evaluate_restores_training_mode():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5)).train()
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    first = evaluate(model, x, y, batch_size=3)
    assert model.training
    assert evaluate(model, x, y) == pytest.approx(first)  # eval mode: dropout off, batching moot


@pytest.mark.slow
def test_same_seed_is_bit_identical_and_another_seed_is_not(reference, settings, tmp_path):
    run_dir, _ = reference
    train_run(settings, run="seed0", out_store=tmp_path / "a" / "activations.zarr", progress="none")
    assert_same_run(run_dir, tmp_path / "a")
    train_run(settings, run="seed1", out_store=tmp_path / "b" / "activations.zarr", progress="none")
    assert read_metrics(tmp_path / "b" / METRICS_FILE) != read_metrics(run_dir / METRICS_FILE)


class CrashAt(Progress):
    """Fails right after the update that completes iteration ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def iteration(self, step: int, loss: float) -> None:
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_result(reference, settings, tmp_path):
    out = tmp_path / "activations.zarr"
    with pytest.raises(KeyboardInterrupt):
        train_run(settings, run="seed0", out_store=out, progress=CrashAt(22))
    assert load_checkpoint(tmp_path / CHECKPOINT_FILE)["step"] == ITERATIONS_PER_EPOCH
    assert open_activations(out, "train")["step"].values.max() == 20  # beyond the checkpoint
    result = train_run(settings, run="seed0", out_store=out, progress="none")
    assert result.resumed_from_step == ITERATIONS_PER_EPOCH
    assert [e["epoch"] for e in result.epochs] == [2, 3]
    assert_same_run(reference[0], tmp_path)

    # a finished run started again trains nothing and changes nothing
    before = (tmp_path / METRICS_FILE).read_bytes()
    again = train_run(settings, run="seed0", out_store=out, progress="none")
    assert again.epochs == [] and again.resumed_from_step == EPOCHS * ITERATIONS_PER_EPOCH
    assert (tmp_path / METRICS_FILE).read_bytes() == before
    assert_same_run(reference[0], tmp_path)


@pytest.mark.slow
def test_killed_process_resumes_to_the_same_result(reference, config_path, tmp_path, caplog):
    """SIGKILL a real `infoplane train` after its first checkpoint, rerun it, compare."""
    out = tmp_path / "activations.zarr"
    args = ["--config", str(config_path), "--experiment", EXPERIMENT, "--run", "seed0"]
    args += ["--out", str(out)]
    helper = [sys.executable, str(HERE / "train_kill_helper.py")]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [*helper, "0.04", "--", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / CHECKPOINT_FILE).exists():
            assert process.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.01)
        time.sleep(0.3)  # into the second epoch: some captures beyond the checkpoint
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(tmp_path / CHECKPOINT_FILE)["epoch"]
    assert killed_at < EPOCHS, "the kill came too late to test resuming"

    # the same command again (in this process: it saves a second interpreter start-up)
    with caplog.at_level("INFO", logger="infoplane.train.training"):
        assert cli_main(["train", *args]) == 0
    assert f"resuming after epoch {killed_at}" in caplog.text
    assert_same_run(reference[0], tmp_path)


def test_diverging_loss_stops_with_the_step(settings, tmp_path):
    huge = settings_with(settings, training={"lr": 1e38})
    out = tmp_path / "activations.zarr"
    with pytest.raises(TrainingError, match=r"loss is (inf|nan) at step \d+ \(epoch 1"):
        train_run(huge, run="seed0", out_store=out, progress="none")
    assert validate_store(out) == StoreReport([], [])
    assert open_activations(out, "test")["step"].values.tolist() == [0]


def test_injected_nan_keeps_the_store_valid_up_to_the_last_capture(settings, tmp_path, monkeypatch):
    original = torch.nn.functional.cross_entropy
    calls = {"training": 0}

    def nan_at_iteration_23(logits, target, *args, **kwargs):
        loss = original(logits, target, *args, **kwargs)
        if kwargs.get("reduction", "mean") == "mean":  # training batches, not evaluation
            calls["training"] += 1
            if calls["training"] == 23:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", nan_at_iteration_23)
    out = tmp_path / "activations.zarr"
    with pytest.raises(TrainingError, match=r"loss is nan at step 23 \(epoch 2, iteration 8 of"):
        train_run(settings, run="seed0", out_store=out, progress="none")
    assert validate_store(out) == StoreReport([], [])
    assert open_activations(out, "train")["step"].values.tolist() == [0, 4, 8, 12, 16, 20]
    assert [r["epoch"] for r in read_metrics(tmp_path / METRICS_FILE)] == [0, 0, 1, 1]
    assert (tmp_path / ITERATIONS_FILE).read_text().splitlines()[-1].endswith(",nan")


def test_resampled_probe_float16_adam_and_named_layers(settings, tmp_path):
    changed = settings_with(
        settings,
        training={"optimizer": "adam", "lr": 0.01, "epochs": 1},
        capture={
            "probe": {"train": 10, "test": 12, "resample": True},
            "layers": ["fc2"],
            "dtype": "float16",
            "schedule": {"kind": "epoch", "first_epoch_every": 5},
        },
    )
    out = tmp_path / "activations.zarr"
    result = train_run(changed, run="seed1", out_store=out, progress="none")
    assert result.steps.tolist() == [0, 5, 10, 15]
    ds = open_activations(out, "test")
    assert ds.attrs["layers"] == ["fc2", "softmax"]
    assert ds["fc2"].dtype == np.float16
    index = ds["index"].values
    assert index.shape == (4, 12)
    assert len({tuple(row) for row in index}) == 4  # a new probe at every step
    optimizer = load_checkpoint(tmp_path / CHECKPOINT_FILE)["optimizer"]
    assert "exp_avg" in optimizer["state"][0]  # Adam's moment estimates


def test_existing_foreign_store_and_changed_settings_need_restart(reference, settings, tmp_path):
    out = tmp_path / "activations.zarr"
    train_run(settings_with(settings, training={"epochs": 1}), run="seed0", out_store=out)
    with pytest.raises(TrainingError, match="other settings; rerun with --restart"):
        train_run(settings, run="seed0", out_store=out, progress="none")
    (tmp_path / CHECKPOINT_FILE).unlink()
    with pytest.raises(TrainingError, match="was not started by digits/seed0 with these settings"):
        train_run(settings, run="seed0", out_store=out, progress="none")
    result = train_run(settings, run="seed0", out_store=out, progress="none", restart=True)
    assert result.resumed_from_step is None
    assert_same_run(reference[0], tmp_path)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"capture": {"probe": {"train": 5000, "test": 20, "resample": False}}}, "capture.probe"),
        ({"capture": {"layers": ["fc1", "fc9"]}}, r"capture\.layers: unknown module.*'fc9'"),
        ({"model": {"hidden": "wide"}}, "hidden"),
    ],
)
def test_bad_settings_fail_before_training(settings, tmp_path, change, match):
    with pytest.raises(ConfigError, match=match):
        train_run(settings_with(settings, **change), run="seed0", out_store=tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_run_name_must_be_a_listed_seed(settings, tmp_path):
    with pytest.raises(ConfigError, match="seed 7 is not in the seeds"):
        train_run(settings, run="seed7", out_store=tmp_path / "s.zarr")
    with pytest.raises(ConfigError, match="seed<S>"):
        train_run(settings, run="first", out_store=tmp_path / "s.zarr")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_requested_without_cuda(settings, tmp_path):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train_run(settings, run="seed0", out_store=tmp_path / "s.zarr", device="cuda")


def test_cli_train_logs_one_line_per_epoch(config_path, tmp_path, capsys, caplog):
    out = tmp_path / "run" / "activations.zarr"
    argv = ["train", "--config", str(config_path), "--experiment", EXPERIMENT]
    argv += ["--run", "seed1", "--out", str(out), "--device", "cpu"]
    with caplog.at_level("INFO", logger="infoplane.train.training"):
        assert cli_main(argv) == 0
    epochs = [r.message for r in caplog.records if " epoch " in r.message]
    assert len(epochs) == EPOCHS
    assert "digits/seed1 epoch 3/3 (step 45) | train loss" in epochs[-1]
    assert str(out) in capsys.readouterr().out
    assert validate_store(out) == StoreReport([], [])


def test_cli_reports_config_errors(config_path, tmp_path, capsys):
    argv = ["train", "--config", str(config_path), "--experiment", "nope", "--run", "seed0"]
    assert cli_main([*argv, "--out", str(tmp_path / "a.zarr")]) == 1
    assert "infoplane: error: unknown experiment 'nope'" in capsys.readouterr().err


def test_cli_shows_a_progress_bar_on_a_terminal(config_path, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["train", "--config", str(config_path), "--experiment", EXPERIMENT]
    assert cli_main([*argv, "--run", "seed0", "--out", str(tmp_path / "a.zarr")]) == 0
    err = capsys.readouterr().err
    assert "45/45" in err and "digits/seed0 epoch 3/3" in err


@pytest.mark.slow
def test_work_dir_run_links_into_place_and_resumes_after_its_outputs_are_deleted(
    reference, settings, tmp_path, caplog
):
    run_dir, work = tmp_path / "run", tmp_path / "run" / ".training"
    out = run_dir / "activations.zarr"
    products = [out, run_dir / METRICS_FILE, run_dir / ITERATIONS_FILE, run_dir / CHECKPOINT_FILE]
    with pytest.raises(KeyboardInterrupt):
        train_run(settings, run="seed0", out_store=out, progress=CrashAt(22), work_dir=work)
    assert not any(p.exists() for p in products)  # nothing in place until the run has finished
    assert load_checkpoint(work / CHECKPOINT_FILE)["step"] == ITERATIONS_PER_EPOCH
    run_dir.joinpath(METRICS_FILE).write_text("left over by an earlier attempt\n")
    result = train_run(settings, run="seed0", out_store=out, progress="none", work_dir=work)
    assert result.resumed_from_step == ITERATIONS_PER_EPOCH
    assert result.store == out and result.checkpoint == run_dir / CHECKPOINT_FILE
    assert all(p.exists() for p in products)
    assert (work / "activations.zarr").is_dir()  # the finished state is kept
    assert_same_run(reference[0], run_dir)

    # state of other settings in the work directory is scratch: discarded, not an error
    slower = settings_with(settings, training={"lr": 0.01})
    with pytest.raises(KeyboardInterrupt):
        train_run(slower, run="seed0", out_store=out, progress=CrashAt(22), work_dir=work)
    assert (work / CHECKPOINT_FILE).exists()
    with caplog.at_level("WARNING", logger="infoplane.train.training"):
        result = train_run(settings, run="seed0", out_store=out, progress="none", work_dir=work)
    assert "discarding the state" in caplog.text and result.resumed_from_step is None
    assert_same_run(reference[0], run_dir)


@pytest.mark.slow
def test_finished_run_whose_outputs_are_deleted_gets_them_back_without_training(
    reference, settings, tmp_path, caplog
):
    """A job that finished and was then marked failed (a cluster job at its time limit in its
    last seconds) loses its outputs to the workflow manager; its rerun must not train again."""
    run_dir, work = tmp_path / "run", tmp_path / "run" / ".training"
    out = run_dir / "activations.zarr"
    train_run(settings, run="seed0", out_store=out, progress="none", work_dir=work)
    inode = (run_dir / CHECKPOINT_FILE).stat().st_ino
    assert (work / CHECKPOINT_FILE).stat().st_ino == inode  # a link, not a second copy
    shutil.rmtree(out)  # what Snakemake does to the outputs of a failed job
    for name in (METRICS_FILE, ITERATIONS_FILE, CHECKPOINT_FILE):
        (run_dir / name).unlink()
    with caplog.at_level("INFO", logger="infoplane.train.training"):
        result = train_run(settings, run="seed0", out_store=out, progress="none", work_dir=work)
    assert result.epochs == [] and result.resumed_from_step == EPOCHS * ITERATIONS_PER_EPOCH
    assert "already finished" in caplog.text
    assert_same_run(reference[0], run_dir)
    assert result.final == reference[1].final
