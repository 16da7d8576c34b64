"""Checks of an experiment that need no training, run before the first job.

:func:`infoplane.config.validate_config` checks the schema and the cross-references; the checks
here need the package's knowledge of datasets and models, so they live beside them: dataset
options, probe sizes against the splits (a cheap size lookup, no download), the capture
schedule against the length of training, and the layer names against the model (built on
torch's ``meta`` device: no memory, no weights). The workflow runs them when it reads the config
(``snakemake -n`` included) and ``infoplane train`` before it trains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from infoplane.config import resolve_experiment
from infoplane.errors import ConfigError
from infoplane.io.store import SPLITS
from infoplane.train.datasets import dataset_layout
from infoplane.train.schedule import capture_steps, iterations_per_epoch


def experiment_problems(settings: Mapping[str, Any]) -> list[str]:
    """Every problem of one experiment's settings that shows before training, as messages."""
    import torch

    from infoplane.train.capture import select_layers
    from infoplane.train.models import build_model

    key = f"experiments.{settings.get('experiment', 'experiment')}"
    if settings.get("stores") is not None:
        return []  # existing stores: nothing is trained
    settings = resolve_experiment(settings)
    dataset = dict(settings["dataset"])
    if "factory" in dataset:
        return []  # the user's data: sized when the run loads it (factories are checked then)
    name = dataset.pop("name")
    try:
        layout = dataset_layout(name, dataset)
    except ConfigError as exc:
        return [f"{key}.dataset: {exc}"]
    if layout is None:
        return []  # an npz file: read when the run starts
    n_train, n_test, shape, classes = layout
    problems = []
    capture, training = settings["capture"], settings["training"]
    for split, available in zip(SPLITS, (n_train, n_test), strict=True):
        wanted = capture["probe"][split]
        if wanted > available:
            problems.append(
                f"{key}.capture.probe.{split}: {wanted} probe samples, but the {split} split of "
                f"{name} holds {available}; lower capture.probe.{split}"
            )
    try:
        ipe = iterations_per_epoch(n_train, int(training["batch_size"]))
        capture_steps(capture["schedule"], iterations_per_epoch=ipe, epochs=int(training["epochs"]))
    except ConfigError as exc:
        problems.append(f"{key}: {exc}")
    model_settings = settings["model"]
    if "factory" in model_settings:
        return problems  # the user's model: built and its layers checked before training
    options = {k: v for k, v in model_settings.items() if k not in ("name", "activation")}
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            model = build_model(
                model_settings["name"],
                activation=model_settings.get("activation", "tanh"),
                input_shape=shape,
                n_classes=classes,
                **options,
            )
    except ConfigError as exc:
        return [*problems, f"{key}.model: {exc}"]
    if capture.get("layers"):  # names, globs and types, resolved as the capture resolves them
        try:
            select_layers(model, [layer for layer in capture["layers"] if layer != "softmax"])
        except ConfigError as exc:
            problems.append(f"{key}.{exc}")
    return problems


def check_experiments(config: Mapping[str, Any], names: Sequence[str] | None = None) -> None:
    """Run :func:`experiment_problems` for the experiments ``names`` (default: ``run:``).

    Raises
    ------
    ConfigError
        Listing every problem with its key path.
    """
    from infoplane.config import experiment_settings

    problems = []
    for name in names if names is not None else config.get("run", []):
        problems += experiment_problems(experiment_settings(config, name))
    if problems:
        raise ConfigError("config is invalid:\n  " + "\n  ".join(problems))
