# Helpers shared by the rules: targets enumerated from the config and the settings each job
# depends on, as canonical JSON strings (the jobs' `params`, so that an edit reruns exactly the
# jobs it affects).

import json
import os

from infoplane.config import seed_from_run, validate_config
from infoplane.train.preflight import check_experiments
from infoplane.presets import needs_activations, preset_to_json, resolve_preset

# Cross-references the schema cannot express (run names, preset names, schedule keys); the
# schema itself has already filled the defaults into `config`. A preset name is one of the
# config's `estimators:` or a built-in one (infoplane.presets.BUILTIN_PRESETS).
CONFIG = validate_config(config, source="workflow config")
# What needs no training is checked before the first job (snakemake -n included): dataset
# options, probe sizes against the splits, the schedule against training, the layer names.
check_experiments(CONFIG)

# The report's captions show the resolved mapping of every preset an experiment names, built-in
# ones included (CONFIG, a validated copy, is what the jobs' params come from).
config.setdefault("estimators", {})
for _preset in sorted({p for e in CONFIG["experiments"].values() for p in e["estimators"]}):
    config["estimators"].setdefault(_preset, resolve_preset(CONFIG, _preset))

# Datasets that are downloaded on first use; their experiments get a `dataset` job first, run
# where the network is reachable, so that training jobs never download in parallel.
DOWNLOADED_DATASETS = ("mnist", "cifar10")

# The conda environment of every rule (used with --software-deployment-method conda).
CONDA_ENV = "../envs/infoplane.yaml"


def experiment(name):
    """The validated settings of one experiment (defaults filled)."""
    return CONFIG["experiments"][name]


def run_names(name):
    """Runs of an experiment: seed<S> for each of its seeds."""
    return [f"seed{seed}" for seed in experiment(name)["seeds"]]


def presets_of(name):
    return list(experiment(name)["estimators"])


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def run_config(wildcards):
    """The config one run is trained with: its experiment, narrowed to the run's seed.

    The seed list and the estimator presets are left out on purpose: adding a seed or a preset
    must not retrain the existing runs.
    """
    settings = dict(experiment(wildcards.experiment))
    settings["seeds"] = [seed_from_run(wildcards.run, settings)]
    settings["estimators"] = []
    return canonical({"experiments": {wildcards.experiment: settings}})


def dataset_input(wildcards):
    """The dataset summary a run waits for (downloaded datasets only), plus a user's .npz."""
    dataset = experiment(wildcards.experiment)["dataset"]
    inputs = []
    if dataset["name"] in DOWNLOADED_DATASETS:
        inputs.append(f"results/{wildcards.experiment}/dataset.json")
    if dataset["name"] == "npz" and "path" in dataset:
        inputs.append(dataset["path"])
    return inputs


def dataset_options(wildcards):
    options = dict(experiment(wildcards.experiment)["dataset"])
    options.pop("name")
    return canonical(options)


def preset_config(wildcards):
    """A file's worth of config holding one resolved preset: {"estimators": {name: preset}}.

    The preset is the config's own or a built-in one; either way the file holds its resolved
    mapping, so that `infoplane estimate` reads it without the workflow config.
    """
    return canonical({"estimators": {wildcards.preset: resolve_preset(CONFIG, wildcards.preset)}})


def preset_json(wildcards):
    return preset_to_json(resolve_preset(CONFIG, wildcards.preset))


def estimate_store(wildcards):
    """The activation store, for presets that read activations (per-channel kernels)."""
    if needs_activations(resolve_preset(CONFIG, wildcards.preset)):
        return f"results/{wildcards.experiment}/{wildcards.run}/activations.zarr"
    return []


def store_option(wildcards, input):
    return f"--store {input.store}" if input.store else ""


def stacked_inputs(wildcards):
    return expand(
        "results/{experiment}/{run}/mi/{preset}.zarr",
        experiment=wildcards.experiment,
        run=run_names(wildcards.experiment),
        preset=wildcards.preset,
    )


def metrics_inputs(wildcards):
    return expand(
        "results/{experiment}/{run}/metrics.csv",
        experiment=wildcards.experiment,
        run=run_names(wildcards.experiment),
    )


def all_targets():
    """Every product of the experiments listed in `run:`."""
    targets = []
    for name in CONFIG["run"]:
        targets.append(f"results/{name}/plots/training.png")
        for preset in presets_of(name):
            targets += [
                f"results/{name}/mi/{preset}.zarr",
                f"results/{name}/checks/{preset}.txt",
                f"results/{name}/plots/{preset}/information_plane.png",
            ]
    return targets
