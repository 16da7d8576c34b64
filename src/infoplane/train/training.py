"""Training a network while capturing its activations into an activation store.

One call of :func:`train_run` trains one run (experiment + seed) and writes, into the run
directory (the parent of the store):

- ``activations.zarr`` — the probe activations of every recorded layer at every scheduled step
  (:mod:`infoplane.io.store`);
- ``metrics.csv`` — loss and accuracy on the full train and test splits (eval mode) before
  training (epoch 0) and after every epoch; columns ``epoch, step, split, loss, accuracy``;
- ``iterations.csv`` — the mini-batch training loss of every iteration; columns ``step, epoch,
  loss``, where ``step`` is the iteration count *after* the update that used this loss and
  ``epoch`` is ``step / iterations_per_epoch``;
- ``checkpoint.pt`` — model, optimizer, random-number states, epoch, step and the metrics so far,
  written atomically after every epoch.

A killed run resumes from its last checkpoint: the store is reopened, the steps scheduled after
the checkpoint are captured again (region writes are idempotent) and, on the CPU, the run ends
with the same store and metrics, bit for bit, as one that was never interrupted.

With a work directory (``work_dir``; the workflow uses ``<run dir>/.training``) the run trains
there and hard-links its four products into the run directory only once it has finished (copies
where the file system has no hard links); the work directory keeps them. A workflow manager that
deletes the outputs of a killed or failed job (Snakemake does) then leaves the training state
alone, and the job's next attempt resumes from it — from the last epoch's checkpoint, or, when
the job had finished and was marked failed afterwards (a cluster job at its time limit in its
last seconds), from the final checkpoint, which puts the products into place again without
training. The final checkpoint (its ``epoch`` is the last one) is the finished marker. State of
other settings found there is discarded, as the work directory is scratch; it is kept otherwise
(the links cost no disk space) and may be deleted once the workflow has used the run's outputs.

Randomness: every stream derives from the run's seed. Weight initialisation and dropout use
torch's global generator (seeded before the model is built, saved in checkpoints); shuffling uses
its own ``torch.Generator``; probe indices are a pure function of (seed, split, step) through
:func:`infoplane.train.capture.probe_indices`, so they need no state of their own.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from infoplane.config import experiment_factories, resolve_experiment, seed_from_run
from infoplane.errors import ConfigError, StoreError, TrainingError, describe_os_error
from infoplane.io.files import canonical_json, exclusive, write_bytes_atomically
from infoplane.io.store import SPLITS, StoreReader, create_store, open_writer
from infoplane.train.schedule import capture_steps, epochs_of, iterations_per_epoch

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
ITERATIONS_FILE = "iterations.csv"
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 1
METRIC_COLUMNS = ("epoch", "step", "split", "loss", "accuracy")
# Full-split evaluation batch: large enough to be fast, small enough for VGG activations.
EVAL_BATCH_SIZE = 500

DeviceName = Literal["auto", "cpu", "cuda"]


# ---------------------------------------------------------------------------------------------
# Progress reporting


class Progress:
    """Receives training progress; the base class ignores it.

    Subclass and override any of the methods, or pass ``"bar"``/``"log"`` to :func:`train_run`.
    """

    def start(self, *, total: int, done: int, description: str) -> None:
        """Training of ``total`` iterations starts, ``done`` of them already done (resume)."""

    def iteration(self, step: int, loss: float) -> None:
        """One optimizer step finished; ``step`` iterations are now complete."""

    def epoch(self, summary: Mapping[str, Any]) -> None:
        """An epoch finished; ``summary`` holds its metrics and timings (see ``EpochSummary``)."""

    def close(self) -> None:
        """Training ended (normally or not)."""


def format_epoch(summary: Mapping[str, Any]) -> str:
    """One line of text for an epoch summary."""
    parts = [
        f"{summary['description']} epoch {summary['epoch']}/{summary['epochs']} "
        f"(step {summary['step']})"
    ]
    for split in SPLITS:
        row = summary["metrics"][split]
        parts.append(f"{split} loss {row['loss']:.4f} acc {row['accuracy']:.4f}")
    parts.append(f"{summary['seconds']:.2f} s (capture {summary['capture_seconds']:.2f} s)")
    return " | ".join(parts)


class LogProgress(Progress):
    """One ``logging`` line per epoch (for batch jobs and log files)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or log

    def start(self, *, total: int, done: int, description: str) -> None:
        what = f"resuming at iteration {done} of {total}" if done else f"{total} iterations"
        self.logger.info("%s: training, %s", description, what)

    def epoch(self, summary: Mapping[str, Any]) -> None:
        self.logger.info("%s", format_epoch(summary))


class BarProgress(Progress):
    """A tqdm bar over iterations, with the last epoch's metrics beside it (for terminals)."""

    def __init__(self) -> None:
        self.bar = None

    def start(self, *, total: int, done: int, description: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            initial=done,
            desc=description,
            unit="it",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def iteration(self, step: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def epoch(self, summary: Mapping[str, Any]) -> None:
        if self.bar is not None:
            test = summary["metrics"]["test"]
            self.bar.set_postfix(
                epoch=summary["epoch"], loss=f"{test['loss']:.3f}", acc=f"{test['accuracy']:.3f}"
            )
            self.bar.write(format_epoch(summary), file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def make_progress(progress: Progress | str | None) -> Progress:
    """A :class:`Progress` from ``"bar"``, ``"log"``, ``"none"``, None (= ``"log"``) or itself."""
    if isinstance(progress, Progress):
        return progress
    choices = {"bar": BarProgress, "log": LogProgress, "none": Progress, None: LogProgress}
    if progress not in choices:
        raise ConfigError(f"progress={progress!r}; choose 'bar', 'log' or 'none'")
    return choices[progress]()


# ---------------------------------------------------------------------------------------------
# Result


@dataclass
class TrainResult:
    """What :func:`train_run` did.

    Attributes
    ----------
    store, metrics, iterations, checkpoint : Path
        The files of the run directory.
    run, seed, device
        The run's name, its seed and the device it trained on.
    steps : np.ndarray
        The capture schedule.
    resumed_from_step : int or None
        The checkpoint step training resumed from (None: started from scratch).
    final : dict
        ``{split: {"loss", "accuracy"}}`` after the last epoch.
    epochs : list of dict
        Per epoch trained in this call: ``epoch``, ``step``, ``seconds`` (wall time of the epoch,
        everything included), ``train_seconds``, ``capture_seconds``, ``eval_seconds``,
        ``checkpoint_seconds``, ``captures``.
    """

    store: Path
    metrics: Path
    iterations: Path
    checkpoint: Path
    run: str
    seed: int
    device: str
    steps: np.ndarray
    resumed_from_step: int | None
    final: dict[str, dict[str, float]]
    epochs: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Building blocks


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` gives CUDA when available, else the CPU; ``cuda`` without CUDA is an error."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                "training.device: cuda was requested but CUDA is not available here; "
                "use auto or cpu"
            )
        return torch.device("cuda")
    raise ConfigError(
        f"training.device: {requested!r} is not allowed; allowed values: auto, cpu, cuda"
    )


def derived_seeds(seed: int) -> dict[str, int]:
    """Independent 32-bit seeds for each random stream of a run, all derived from ``seed``."""
    names = ("init", "shuffle", "probe_train", "probe_test")
    values = np.random.SeedSequence(seed).generate_state(len(names), dtype=np.uint32)
    return {name: int(v) for name, v in zip(names, values, strict=True)}


def build_optimizer(parameters, training: Mapping[str, Any]) -> torch.optim.Optimizer:
    """SGD (the paper's: lr 0.09, no momentum) or Adam from ``training`` settings."""
    import torch

    name = training.get("optimizer", "sgd")
    lr = float(training.get("lr", 0.09))
    decay = float(training.get("weight_decay", 0.0))
    if not 0 < lr <= float(np.finfo(np.float32).max):
        raise ConfigError(f"training.lr: {lr} is not a usable learning rate; use 0 < lr < 3.4e38")
    if name == "sgd":
        momentum = float(training.get("momentum", 0.0))
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, weight_decay=decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=decay)
    raise ConfigError(f"training.optimizer: {name!r} is not allowed; allowed values: sgd, adam")


def evaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` in eval mode (mode restored)."""
    import torch
    import torch.nn.functional as F

    from infoplane.train.capture import model_output

    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    try:
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                logits = model_output(model(x[start : start + batch_size]))
                target = y[start : start + batch_size]
                loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
                correct += (logits.argmax(dim=1) == target).sum()
    finally:
        model.train(was_training)
    n = max(len(x), 1)
    return {"loss": loss_sum.item() / n, "accuracy": correct.item() / n}


@contextlib.contextmanager
def deterministic_torch(device: torch.device) -> Iterator[None]:
    """Deterministic kernels while training; the previous global settings are restored after.

    On the CPU ``torch.use_deterministic_algorithms`` costs nothing measurable; on CUDA it would
    need a cuBLAS workspace setting made before CUDA starts, so there only cuDNN is pinned to
    deterministic algorithms.
    """
    import torch

    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    try:
        if device.type == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic = previous[2]
        torch.backends.cudnn.benchmark = previous[3]


def _fmt(value: float) -> str:
    # repr round-trips a float exactly, so equal runs give byte-identical files
    return repr(float(value))


def write_metrics(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``metrics.csv`` atomically (columns ``epoch, step, split, loss, accuracy``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for r in rows:
        writer.writerow([r["epoch"], r["step"], r["split"], _fmt(r["loss"]), _fmt(r["accuracy"])])
    write_bytes_atomically(path, buffer.getvalue().encode())


def write_iterations(path: Path, losses: Sequence[float], iterations_per_epoch: int) -> None:
    """Write ``iterations.csv`` atomically: the mini-batch loss of every iteration so far."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("step", "epoch", "loss"))
    for i, loss in enumerate(losses, start=1):
        writer.writerow([i, _fmt(i / iterations_per_epoch), _fmt(loss)])
    write_bytes_atomically(path, buffer.getvalue().encode())


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``metrics.csv`` with numbers parsed."""
    with open(path, newline="") as f:
        return [
            {
                "epoch": int(r["epoch"]),
                "step": int(r["step"]),
                "split": r["split"],
                "loss": float(r["loss"]),
                "accuracy": float(r["accuracy"]),
            }
            for r in csv.DictReader(f)
        ]


def settings_key(settings: Mapping[str, Any]) -> str:
    """Canonical JSON text of settings, to tell whether a checkpoint belongs to them."""
    return canonical_json(settings)


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """``torch.save`` to a temporary file, then an atomic rename: never half a checkpoint."""
    import torch

    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    write_bytes_atomically(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain values only, no pickle)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise TrainingError(
            f"checkpoint {path} cannot be loaded ({exc}); delete it or rerun with --restart"
        ) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"checkpoint {path} is not an infoplane checkpoint of format {CHECKPOINT_FORMAT}; "
            "delete it or rerun with --restart"
        )
    return state


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class _Run:
    """Everything a run needs while it trains (built once by :func:`_prepare`)."""

    settings: dict[str, Any]
    description: str
    run: str
    seed: int
    seeds: dict[str, int]
    device: Any
    dataset: Any
    model: Any
    optimizer: Any
    shuffle: Any
    data: dict[str, tuple[Any, Any]]
    layers: list[str]
    softmax: bool
    batch_size: int
    iterations_per_epoch: int
    epochs: int
    steps: np.ndarray
    probe: dict[str, Any]
    capture_batch_size: int | None


def _prepare(settings: Mapping[str, Any], run: str, device_name: str | None) -> _Run:
    import torch

    from infoplane.train.capture import select_layers
    from infoplane.train.datasets import load_dataset
    from infoplane.train.factories import build_factory_model, load_factory_dataset
    from infoplane.train.models import build_model, default_layers

    settings = resolve_experiment(settings)  # a private, validated copy with defaults
    seed = seed_from_run(run, settings)
    seeds = derived_seeds(seed)
    training, capture = settings["training"], settings["capture"]
    device = resolve_device(device_name or training.get("device", "auto"))

    if "stores" in settings:
        raise ConfigError(
            f"{settings.get('experiment', 'experiment')}: an experiment of existing stores "
            "(stores:) has nothing to train"
        )
    if "factory" in settings["dataset"]:
        dataset = load_factory_dataset(settings["dataset"])
    else:
        dataset = load_dataset(**settings["dataset"])
    for split in SPLITS:
        available = len(getattr(dataset, f"y_{split}"))
        wanted = capture["probe"][split]
        if wanted > available:
            raise ConfigError(
                f"capture.probe.{split}: {wanted} probe samples, but the {split} split of "
                f"{dataset.name} holds {available}; lower capture.probe.{split}"
            )

    torch.manual_seed(seeds["init"])
    model_settings = settings["model"]
    if "factory" in model_settings:
        model = build_factory_model(
            model_settings,
            input_shape=tuple(dataset.x_train.shape[1:]),
            n_classes=dataset.classes,
        ).to(device)
    else:
        options = {k: v for k, v in model_settings.items() if k not in ("name", "activation")}
        model = build_model(
            model_settings["name"],
            activation=model_settings.get("activation", "tanh"),
            input_shape=tuple(dataset.x_train.shape[1:]),
            n_classes=dataset.classes,
            **options,
        ).to(device)
    layers = list(capture["layers"]) if capture.get("layers") else list(default_layers(model))
    softmax = bool(capture.get("softmax", True))
    if "softmax" in layers:  # listing it by name is the same as softmax: true
        layers.remove("softmax")
        softmax = True
    layers = select_layers(model, layers)
    if not layers and not softmax:
        raise ConfigError("capture: nothing to record; list capture.layers or set softmax: true")

    optimizer = build_optimizer(model.parameters(), training)
    shuffle = torch.Generator()
    shuffle.manual_seed(seeds["shuffle"])

    ipe = iterations_per_epoch(len(dataset.y_train), int(training["batch_size"]))
    epochs = int(training["epochs"])
    steps = capture_steps(capture["schedule"], iterations_per_epoch=ipe, epochs=epochs)
    # The splits live on the training device: small enough here, and it saves a copy per batch.
    data = {
        split: (
            torch.from_numpy(getattr(dataset, f"x_{split}")).to(device),
            torch.from_numpy(getattr(dataset, f"y_{split}")).to(device),
        )
        for split in SPLITS
    }
    return _Run(
        settings=settings,
        description=f"{settings.get('experiment', 'experiment')}/{run}",
        run=run,
        seed=seed,
        seeds=seeds,
        device=device,
        dataset=dataset,
        model=model,
        optimizer=optimizer,
        shuffle=shuffle,
        data=data,
        layers=layers,
        softmax=softmax,
        batch_size=int(training["batch_size"]),
        iterations_per_epoch=ipe,
        epochs=epochs,
        steps=steps,
        probe=dict(capture["probe"]),
        capture_batch_size=capture.get("batch_size"),
    )


def _probe(r: _Run, split: str, step: int) -> np.ndarray:
    from infoplane.train.capture import probe_indices

    n_available = len(getattr(r.dataset, f"y_{split}"))
    return np.asarray(
        probe_indices(
            n_available,
            int(r.probe[split]),
            seed=r.seeds[f"probe_{split}"],
            step=int(step),
            resample=bool(r.probe["resample"]),
        ),
        dtype=np.int64,
    )


def _record(r: _Run, inputs: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    from infoplane.train.capture import capture_activations

    return capture_activations(
        r.model,
        torch.from_numpy(np.ascontiguousarray(inputs)),
        r.layers,
        softmax=r.softmax,
        batch_size=r.capture_batch_size,
        device=r.device,
    )


def _capture(r: _Run, writer, step: int) -> None:
    """Capture both probe splits at ``step`` (the model's current state) into the store."""
    for split in SPLITS:
        index = _probe(r, split, step)
        x = getattr(r.dataset, f"x_{split}")[index]
        y = getattr(r.dataset, f"y_{split}")[index]
        writer.write(split, int(step), index=index, x=x, y=y, activations=_record(r, x))


def _store_attrs(r: _Run) -> dict[str, Any]:
    model, dataset = r.settings["model"], r.settings["dataset"]
    attrs = {
        "experiment": r.settings.get("experiment"),
        "run": r.run,
        "seed": r.seed,
        "model": model.get("name", model.get("factory")),
        "dataset": dataset.get("name", dataset.get("factory")),
        "config": r.settings,
        "device": r.device.type,
    }
    factories = experiment_factories(r.settings)
    if factories:  # which source file (and its SHA-256) built the model and the data
        attrs["factories"] = factories
    return attrs


def _create_store(r: _Run, path: Path):
    sample = _record(r, r.dataset.x_train[:2])
    layer_shapes = {name: tuple(a.shape[1:]) for name, a in sample.items()}
    return create_store(
        path,
        steps=r.steps,
        epochs=epochs_of(r.steps, r.iterations_per_epoch),
        n_samples={split: int(r.probe[split]) for split in SPLITS},
        input_shape=tuple(r.dataset.x_train.shape[1:]),
        layer_shapes=layer_shapes,
        attrs=_store_attrs(r),
        dtype=r.settings["capture"].get("dtype", "float32"),
        overwrite=True,
    )


def _existing_store_matches(path: Path, r: _Run) -> bool:
    """Whether the store at ``path`` was started by this very run (same settings and name)."""
    try:
        attrs = StoreReader(path).attrs
    except StoreError:  # unreadable: not ours to overwrite silently
        return False
    return (
        attrs.get("run") == r.run
        and attrs.get("experiment") == r.settings.get("experiment")
        and settings_key(attrs.get("config", {})) == settings_key(r.settings)
    )


def _rng_state(r: _Run) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.get_rng_state_all() if r.device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "shuffle": r.shuffle.get_state(), "cuda": cuda}


def _restore(r: _Run, state: Mapping[str, Any]) -> None:
    import torch

    r.model.load_state_dict(state["model"])
    r.optimizer.load_state_dict(state["optimizer"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    r.shuffle.set_state(rng["shuffle"])
    if r.device.type == "cuda" and rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])


def _checkpoint_state(r: _Run, epoch: int, step: int, rows, losses) -> dict[str, Any]:
    import torch

    return {
        "format": CHECKPOINT_FORMAT,
        "experiment": r.settings.get("experiment"),
        "run": r.run,
        "settings": settings_key(r.settings),
        "epoch": epoch,
        "step": step,
        "model": r.model.state_dict(),
        "optimizer": r.optimizer.state_dict(),
        "rng": _rng_state(r),
        "metrics": list(rows),
        "iteration_loss": torch.tensor(losses, dtype=torch.float64),
    }


def _epoch_rows(r: _Run, epoch: int, step: int) -> list[dict[str, Any]]:
    rows = []
    for split in SPLITS:
        x, y = r.data[split]
        rows.append({"epoch": epoch, "step": step, "split": split, **evaluate(r.model, x, y)})
    return rows


def _start(r: _Run, store: Path, checkpoint: Path, restart: bool):
    """Open or create the store; returns (writer, checkpoint state or None)."""
    if restart:
        checkpoint.unlink(missing_ok=True)
        return _create_store(r, store), None
    if checkpoint.exists() and store.exists():
        state = load_checkpoint(checkpoint)
        if state.get("run") != r.run or state.get("settings") != settings_key(r.settings):
            raise TrainingError(
                f"checkpoint {checkpoint} was written by run {state.get('run')!r} of experiment "
                f"{state.get('experiment')!r} with other settings; rerun with --restart to train "
                f"{r.description} from scratch (this replaces {store})"
            )
        writer = open_writer(store)
        if not np.array_equal(np.asarray(writer.steps), r.steps):
            raise StoreError(
                f"store {store} has a different capture schedule than {r.description}; "
                "rerun with --restart"
            )
        return writer, state
    if checkpoint.exists():
        log.warning(
            "%s: %s has no store beside it; training from scratch", r.description, checkpoint
        )
        checkpoint.unlink()
    elif store.exists() and not _existing_store_matches(store, r):
        raise TrainingError(
            f"{store} exists and was not started by {r.description} with these settings; "
            "rerun with --restart to replace it, or choose another --out"
        )
    return _create_store(r, store), None


def _link_or_copy(source: str, target: str) -> None:
    """A hard link of ``source`` at ``target``; a copy where the file system has no links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _put_into_place(train_dir: Path, run_dir: Path, store: Path) -> None:
    """Give a finished run's products to the run directory; the work directory keeps them.

    Every file is hard-linked (copied where links are impossible), replacing what the run
    directory held: the products cost no second copy, and the finished state stays in
    ``train_dir``. A job that is killed or marked failed after this point (say at its time limit,
    in its last seconds) loses only the links when the workflow manager deletes its outputs; its
    next attempt finds the final checkpoint there and links the products again without training.
    The files are never written again in place (the store is complete, the CSVs and the
    checkpoint are replaced by renames), so the two names of a file cannot diverge.
    """
    products = [
        (train_dir / store.name, store),
        (train_dir / METRICS_FILE, run_dir / METRICS_FILE),
        (train_dir / ITERATIONS_FILE, run_dir / ITERATIONS_FILE),
        (train_dir / CHECKPOINT_FILE, run_dir / CHECKPOINT_FILE),
    ]
    for source, target in products:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(source), str(target))
    log.info("linked the finished run in %s into %s (the state is kept there)", train_dir, run_dir)


def _resume_captures(r: _Run, writer, step: int) -> None:
    """Make sure every scheduled step up to the checkpoint is captured."""
    done = np.ones(len(r.steps), dtype=bool)
    for split in SPLITS:
        done &= np.asarray(writer.captured(split), dtype=bool)
    missing = r.steps[(r.steps <= step) & ~done]
    if missing.size and missing[-1] == step:
        _capture(r, writer, step)  # the model is exactly at this step again
        missing = missing[:-1]
    if missing.size:
        raise StoreError(
            f"store {writer.path} lacks step(s) {missing.tolist()} that precede the checkpoint at "
            f"step {step}; they cannot be recaptured; rerun with --restart"
        )


def _diverged(r: _Run, writer, value: float, iteration: int, epoch: int) -> TrainingError:
    done = np.ones(len(r.steps), dtype=bool)
    for split in SPLITS:
        done &= np.asarray(writer.captured(split), dtype=bool)
    last = int(r.steps[done][-1]) if done.any() else None
    return TrainingError(
        f"{r.description}: the training loss is {value} at step {iteration} (epoch {epoch}, "
        f"iteration {iteration - (epoch - 1) * r.iterations_per_epoch} of "
        f"{r.iterations_per_epoch}); training stopped. The store {writer.path} is valid up to "
        f"step {last}. Lower training.lr (now {r.settings['training']['lr']}) or check the data"
    )


def _train_epoch(
    r: _Run,
    writer,
    *,
    epoch: int,
    step: int,
    losses: list[float],
    reporter: Progress,
    iterations_file: Path,
) -> tuple[int, float, int]:
    """One pass over the shuffled training split, capturing at scheduled steps.

    Returns the step reached, the seconds spent capturing and the number of captures.
    """
    import torch
    import torch.nn.functional as F

    from infoplane.train.capture import model_output

    x_train, y_train = r.data["train"]
    scheduled = set(r.steps.tolist())
    capture_seconds, captures = 0.0, 0
    r.model.train()
    order = torch.randperm(len(y_train), generator=r.shuffle).to(r.device)
    for start in range(0, len(order), r.batch_size):
        batch = order[start : start + r.batch_size]
        r.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model_output(r.model(x_train[batch])), y_train[batch])
        value = loss.item()  # one sync per iteration: divergence is caught at its step
        if not math.isfinite(value):
            losses.append(value)
            write_iterations(iterations_file, losses, r.iterations_per_epoch)
            raise _diverged(r, writer, value, step + 1, epoch)
        loss.backward()
        r.optimizer.step()
        step += 1
        losses.append(value)
        reporter.iteration(step, value)
        if step in scheduled:
            tick = time.perf_counter()
            _capture(r, writer, step)
            capture_seconds += time.perf_counter() - tick
            captures += 1
    return step, capture_seconds, captures


def train_run(
    settings: Mapping[str, Any],
    *,
    run: str,
    out_store: str | os.PathLike,
    progress: Progress | str | None = None,
    device: DeviceName | None = None,
    restart: bool = False,
    work_dir: str | os.PathLike | None = None,
) -> TrainResult:
    """Train one run of an experiment and capture its activations.

    Parameters
    ----------
    settings
        Resolved experiment settings (:func:`infoplane.config.experiment_settings`).
    run
        Run name ``seed<S>``; ``S`` must be one of ``settings["seeds"]``.
    out_store
        Path of the activation store; its parent is the run directory, which also receives
        ``metrics.csv``, ``iterations.csv`` and ``checkpoint.pt``.
    progress
        ``"bar"`` (tqdm), ``"log"`` (one log line per epoch; the default), ``"none"`` or a
        :class:`Progress`.
    device
        Overrides ``settings["training"]["device"]`` (``auto``, ``cpu`` or ``cuda``).
    restart
        Ignore any checkpoint and existing store and train from scratch.
    work_dir
        Train in this directory (same file system as the run directory) and hard-link the
        store, ``metrics.csv``, ``iterations.csv`` and ``checkpoint.pt`` into the run directory
        once the last epoch is done, replacing what is there; the work directory keeps them. A
        killed run resumes from the work directory, and a finished one whose outputs were
        deleted puts them into place again without training; a checkpoint or store there that
        belongs to other settings is discarded.

    Returns
    -------
    TrainResult

    Raises
    ------
    ConfigError
        Bad run name, probe larger than a split, unknown layer, CUDA requested but absent.
    TrainingError
        The loss became NaN or infinite (the message names the step and epoch), or a checkpoint
        does not belong to this run.
    """
    final_store = Path(out_store)
    train_dir = final_store.parent if work_dir is None else Path(work_dir)
    # one writer per run: a second train of the same store (or work directory) fails here,
    # before it touches anything (say orphaned jobs of a killed workflow still running)
    with contextlib.ExitStack() as locks:
        locks.enter_context(exclusive(final_store, what="training into"))
        if train_dir != final_store.parent:
            locks.enter_context(exclusive(train_dir, what="training in"))
        try:
            return _train_run(
                settings, run=run, final_store=final_store, train_dir=train_dir,
                progress=progress, device=device, restart=restart, work_dir=work_dir,
            )  # fmt: skip
        except OSError as exc:
            kept = (
                f"the captured steps of {train_dir / final_store.name} and the last checkpoint "
                "(written after every epoch) are kept, and the same command resumes from them"
            )
            raise TrainingError(f"training {final_store}: {describe_os_error(exc, kept)}") from None


def _train_run(
    settings: Mapping[str, Any],
    *,
    run: str,
    final_store: Path,
    train_dir: Path,
    progress: Progress | str | None,
    device: DeviceName | None,
    restart: bool,
    work_dir: str | os.PathLike | None,
) -> TrainResult:
    """:func:`train_run` with the locks of the run held."""
    run_dir = final_store.parent
    store = train_dir / final_store.name
    train_dir.mkdir(parents=True, exist_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: train_dir / name for name in (METRICS_FILE, ITERATIONS_FILE, CHECKPOINT_FILE)}
    r = _prepare(settings, run, device)
    reporter = make_progress(progress)
    total = r.iterations_per_epoch * r.epochs

    with deterministic_torch(r.device):
        try:
            writer, state = _start(r, store, paths[CHECKPOINT_FILE], restart)
        except (TrainingError, StoreError) as exc:
            if work_dir is None:
                raise
            log.warning("%s: discarding the state in %s (%s)", r.description, train_dir, exc)
            writer, state = _start(r, store, paths[CHECKPOINT_FILE], True)
        if state is None:
            _capture(r, writer, 0)
            rows = _epoch_rows(r, 0, 0)
            losses: list[float] = []
            epoch_done, step, resumed = 0, 0, None
            write_metrics(paths[METRICS_FILE], rows)
            write_iterations(paths[ITERATIONS_FILE], losses, r.iterations_per_epoch)
        else:
            _restore(r, state)
            rows = list(state["metrics"])
            losses = state["iteration_loss"].tolist()
            epoch_done, step = int(state["epoch"]), int(state["step"])
            resumed = step
            _resume_captures(r, writer, step)
            # files may be ahead of the checkpoint (killed between writing them and it)
            write_metrics(paths[METRICS_FILE], rows)
            write_iterations(paths[ITERATIONS_FILE], losses, r.iterations_per_epoch)
            if epoch_done >= r.epochs:
                log.info(
                    "%s: the run had already finished in %s (step %d); nothing to train",
                    r.description, train_dir, step,
                )  # fmt: skip
            else:
                log.info("%s: resuming after epoch %d (step %d)", r.description, epoch_done, step)

        summaries: list[dict[str, Any]] = []
        reporter.start(total=total, done=step, description=r.description)
        try:
            for epoch in range(epoch_done + 1, r.epochs + 1):
                started = time.perf_counter()
                step, capture_seconds, captures = _train_epoch(
                    r, writer, epoch=epoch, step=step, losses=losses, reporter=reporter,
                    iterations_file=paths[ITERATIONS_FILE],
                )  # fmt: skip
                trained = time.perf_counter()
                new_rows = _epoch_rows(r, epoch, step)
                rows.extend(new_rows)
                evaluated = time.perf_counter()
                write_metrics(paths[METRICS_FILE], rows)
                write_iterations(paths[ITERATIONS_FILE], losses, r.iterations_per_epoch)
                save_checkpoint(
                    paths[CHECKPOINT_FILE], _checkpoint_state(r, epoch, step, rows, losses)
                )
                finished = time.perf_counter()
                summary = {
                    "description": r.description,
                    "epoch": epoch,
                    "epochs": r.epochs,
                    "step": step,
                    "metrics": {row["split"]: row for row in new_rows},
                    "seconds": finished - started,
                    "train_seconds": trained - started - capture_seconds,
                    "capture_seconds": capture_seconds,
                    "eval_seconds": evaluated - trained,
                    "checkpoint_seconds": finished - evaluated,
                    "captures": captures,
                }
                summaries.append(summary)
                reporter.epoch(summary)
        finally:
            reporter.close()

    if work_dir is not None:
        _put_into_place(train_dir, run_dir, final_store)
        paths = {name: run_dir / name for name in paths}
    final = {row["split"]: {"loss": row["loss"], "accuracy": row["accuracy"]} for row in rows[-2:]}
    return TrainResult(
        store=final_store,
        metrics=paths[METRICS_FILE],
        iterations=paths[ITERATIONS_FILE],
        checkpoint=paths[CHECKPOINT_FILE],
        run=run,
        seed=r.seed,
        device=r.device.type,
        steps=r.steps,
        resumed_from_step=resumed,
        final=final,
        epochs=[
            {k: v for k, v in s.items() if k not in ("metrics", "description")} for s in summaries
        ],
    )
