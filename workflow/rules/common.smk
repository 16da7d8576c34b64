# Helpers shared by the rules: targets enumerated from the config and the settings each job
# depends on, as canonical JSON strings (the jobs' `params`, so that an edit reruns exactly the
# jobs it affects).

import json
import os

from infoplane.config import (
    experiment_factories,
    seed_from_run,
    store_fingerprint,
    store_runs,
    validate_config,
)
from infoplane.train.preflight import check_experiments
from infoplane.presets import (
    expand_preset_names,
    needs_activations,
    preset_families,
    preset_to_json,
    resolve_preset,
)

# Cross-references the schema cannot express (run names, preset names, schedule keys); the
# schema itself has already filled the defaults into `config`. A preset name is one of the
# config's `estimators:` or a built-in one (infoplane.presets.BUILTIN_PRESETS).
CONFIG = validate_config(config, source="workflow config")
# What needs no training is checked before the first job (snakemake -n included): dataset
# options, probe sizes against the splits, the schedule against training, the layer names. Once,
# by the main process: a cluster job parses the workflow again, and the check (which builds the
# models) would add seconds to every job; `infoplane train` checks its own experiment anyway.
if workflow.is_main_process:
    check_experiments(CONFIG)

# The report's captions show the resolved mapping of every preset an experiment names, built-in
# ones included (CONFIG, a validated copy, is what the jobs' params come from).
config.setdefault("estimators", {})
# A family's name stands for its members (ordinary presets named <family>.<label>).
FAMILIES = preset_families(CONFIG)
for _preset in sorted(
    {p for e in CONFIG["experiments"].values() for p in expand_preset_names(CONFIG, e["estimators"])}
):
    config["estimators"].setdefault(_preset, resolve_preset(CONFIG, _preset))

# Datasets that are downloaded on first use; their experiments get a `dataset` job first, run
# where the network is reachable, so that training jobs never download in parallel.
DOWNLOADED_DATASETS = ("mnist", "cifar10")

# The conda environment of every rule (used with --software-deployment-method conda).
CONDA_ENV = "../envs/infoplane.yaml"


def experiment(name):
    """The validated settings of one experiment (defaults filled)."""
    return CONFIG["experiments"][name]


def external(name):
    """Whether an experiment analyses existing stores (`stores:`) instead of training."""
    return "stores" in experiment(name)


# Experiments of existing stores: run name -> store path, from the globs, when the DAG is built.
EXTERNAL_RUNS = {
    name: store_runs(settings["stores"])
    for name, settings in CONFIG["experiments"].items()
    if "stores" in settings and name in CONFIG["run"]
}


def external_runs(name):
    if name not in EXTERNAL_RUNS:
        EXTERNAL_RUNS[name] = store_runs(experiment(name)["stores"])
    return EXTERNAL_RUNS[name]


def run_names(name):
    """Runs of an experiment: seed<S> for each of its seeds, or one per existing store."""
    if external(name):
        return list(external_runs(name))
    return [f"seed{seed}" for seed in experiment(name)["seeds"]]


def activation_store(wildcards):
    """The activation store of a run: trained here, or an existing one (`stores:`)."""
    if external(wildcards.experiment):
        runs = external_runs(wildcards.experiment)
        if wildcards.run not in runs:
            raise ValueError(f"{wildcards.experiment} has no store for run {wildcards.run}")
        return runs[wildcards.run]
    return f"results/{wildcards.experiment}/{wildcards.run}/activations.zarr"


def store_params(wildcards):
    """A digest of an existing store's files: editing or replacing it reruns its distances."""
    if external(wildcards.experiment):
        return store_fingerprint(activation_store(wildcards))
    return ""


def factory_files(name):
    """The source files of an experiment's model and dataset factories (found without running
    them): inputs of its training jobs, so that editing one retrains."""
    return [f["file"] for f in experiment_factories(experiment(name)).values() if f["file"]]


def presets_of(name):
    """The presets an experiment estimates: those it names, a family's members in its place."""
    return expand_preset_names(CONFIG, experiment(name)["estimators"])


def families_of(name):
    """The families an experiment names, in its order."""
    return [p for p in experiment(name)["estimators"] if p in FAMILIES]


def family_member_of(preset):
    """The family a preset is a member of (None for a single preset)."""
    return next((f for f, members in FAMILIES.items() if preset in members), None)


def search_name(search):
    """A path-safe name of an alignment search: alignment-<grid>-<points>-<label kernel>."""
    return f"alignment-{search['grid']}-{search['points']}-{search['label_kernel']}"


def search_of(preset):
    """The alignment search of a resolved preset (None when it searches no widths)."""
    width = preset.get("layer_width") or {}
    if width.get("rule") != "alignment":
        return None
    return {"grid": width["grid"], "points": width["points"], "label_kernel": preset["label_kernel"]}


def kept_widths(wildcards):
    """For a family member with an alignment rule: the run's shared width search, done first, so
    that the members reuse one search instead of each running it."""
    if family_member_of(wildcards.preset) is None:
        return []
    search = search_of(resolve_preset(CONFIG, wildcards.preset))
    if search is None:
        return []
    return f"results/{wildcards.experiment}/{wildcards.run}/widths/{search_name(search)}.json"


def search_options(wildcards):
    grid, points, label = wildcards.search.split("-")[1:]
    return f"--grid {grid} --points {points} --label-kernel {label}"


def family_inputs(wildcards):
    """The stacked estimates of a family's members, in the family's order."""
    return expand(
        "results/{experiment}/mi/{preset}.zarr",
        experiment=wildcards.experiment,
        preset=FAMILIES[wildcards.family],
    )


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def run_config(wildcards):
    """The config one run is trained with: its experiment, narrowed to the run's seed.

    The seed list, the estimator presets and the distance storage are left out on purpose:
    adding a seed or a preset, or keeping the distances otherwise, must not retrain the runs.
    """
    settings = dict(experiment(wildcards.experiment))
    settings.pop("distances", None)
    settings["seeds"] = [seed_from_run(wildcards.run, settings)]
    settings["estimators"] = []
    return canonical({"experiments": {wildcards.experiment: settings}})


def dataset_input(wildcards):
    """The dataset summary a run waits for (downloaded datasets only), a user's .npz, and the
    source files of the experiment's factories."""
    dataset = experiment(wildcards.experiment)["dataset"]
    inputs = factory_files(wildcards.experiment)
    if "factory" in dataset:
        return inputs
    if dataset["name"] in DOWNLOADED_DATASETS:
        inputs.append(f"results/{wildcards.experiment}/dataset.json")
    if dataset["name"] == "npz" and "path" in dataset:
        inputs.append(dataset["path"])
    return inputs


def dataset_options(wildcards):
    options = dict(experiment(wildcards.experiment)["dataset"])
    options.pop("name", None)
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
        return activation_store(wildcards)
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


def comparison_inputs(wildcards):
    """The stacked estimates of every preset of an experiment, in the config's order."""
    return expand(
        "results/{experiment}/mi/{preset}.zarr",
        experiment=wildcards.experiment,
        preset=presets_of(wildcards.experiment),
    )


def all_targets():
    """Every product of the experiments listed in `run:`."""
    targets = []
    for name in CONFIG["run"]:
        if not external(name):  # existing stores come without training metrics
            targets.append(f"results/{name}/plots/training.png")
        for preset in presets_of(name):
            targets += [
                f"results/{name}/mi/{preset}.zarr",
                f"results/{name}/checks/{preset}.txt",
                f"results/{name}/plots/{preset}/information_plane.png",
            ]
        if len(presets_of(name)) > 1:
            targets.append(f"results/{name}/plots/comparison_train.png")
        if families_of(name):
            targets.append(f"results/{name}/phases.csv")
        for family in families_of(name):
            targets += [
                f"results/{name}/phases/{family}.csv",
                f"results/{name}/plots/families/{family}/family_train.png",
            ]
    return targets
