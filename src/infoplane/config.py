"""Loading and validating ``config.yaml``: experiments to train and estimator presets.

The file is checked against the package's JSON schema (``schemas/config.schema.yaml``) with a
validator that fills every documented default, the way Snakemake's ``validate`` does. Problems are
reported together, each naming its key path and the allowed values, before any work starts.

Only the shape of the estimator presets is checked here; :mod:`infoplane.presets` gives them their
meaning and defaults. An experiment may name a preset of the file's ``estimators:`` or a built-in
one (:data:`infoplane.presets.BUILTIN_PRESETS`).

The models :func:`infoplane.train.models.build_model` builds are defined here, without torch:
:data:`MODEL_OPTIONS` (and :data:`MODEL_NAMES`, :data:`ACTIVATIONS`) is the one list of model
names, activations and per-model options; the schema's enums must equal it.
"""

from __future__ import annotations

import copy
import functools
import glob
import hashlib
import importlib.util
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from infoplane.errors import ConfigError
from infoplane.presets import BUILTIN_PRESETS, available_presets, expand_families

SCHEMA_RESOURCE = "schemas/config.schema.yaml"
RUN_PATTERN = re.compile(r"^seed(0|[1-9][0-9]*)$")
# The models of infoplane.train.models.build_model and the options each accepts besides name and
# activation. Defined here, without torch, so that a misplaced option fails when the config is
# read, not after the data is loaded; models.py builds from these names.
MODEL_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden", "batch_norm"),
    "paper_mlp": ("batch_norm",),
    "paper_cnn": (),
    "vgg16": ("dropout",),
    "ib_mlp": (),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_OPTIONS)
# Hidden-layer non-linearities (each also selects the weight initialisation).
ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "sigmoid", "leaky_relu")
# Every per-model option, in a fixed order (for the checks of misplaced options).
_ALL_MODEL_OPTIONS: tuple[str, ...] = tuple(
    dict.fromkeys(option for options in MODEL_OPTIONS.values() for option in options)
)
_MAX_REPORTED = 20


def _yaml_loader() -> type:
    """A safe YAML loader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    exponent_float = re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent_float, list("-+0123456789"))
    return Loader


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely; a missing or malformed file raises :class:`ConfigError`."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text: {exc}") from None
    try:
        return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None


@functools.lru_cache(maxsize=1)
def config_schema() -> dict:
    """The JSON schema of ``config.yaml`` (a fresh copy is cheap; callers must not mutate it)."""
    import yaml

    text = resources.files("infoplane").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    return yaml.safe_load(text)


@functools.lru_cache(maxsize=1)
def _validator_class() -> type:
    """The schema's draft validator, extended to fill defaults and to keep integers integral."""
    from jsonschema import validators

    base = validators.validator_for(config_schema())
    validate_properties = base.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema and key not in instance:
                    # a copy: the schema's own default must never be filled in by reference
                    instance[key] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    def is_integer(checker, instance) -> bool:
        # JSON Schema counts 10.0 as an integer; epochs and sizes must really be ints
        return isinstance(instance, int) and not isinstance(instance, bool)

    type_checker = base.TYPE_CHECKER.redefine("integer", is_integer)
    return validators.extend(base, {"properties": fill_defaults}, type_checker=type_checker)


def key_path(parts: Iterable[Any]) -> str:
    """Dotted key path with list positions in brackets: ``experiments.a.seeds[1]``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<top level>"


def _describe(error) -> str:
    """One line for a schema violation: the key path, what is wrong, what is allowed."""
    where = key_path(error.absolute_path)
    kind = error.validator
    if kind == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"{where}: {error.instance!r} is not allowed; allowed values: {allowed}"
    if kind == "const":
        return f"{where}: must be {error.validator_value!r}, got {error.instance!r}"
    if kind == "additionalProperties" and isinstance(error.instance, dict):
        known = error.schema.get("properties", {})
        extra = sorted(str(k) for k in error.instance if k not in known)
        allowed = ", ".join(known) or "none"
        return f"{where}: unknown key(s) {', '.join(map(repr, extra))}; allowed keys: {allowed}"
    if kind == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        hint = ""
        if "then" in error.absolute_schema_path:
            hint = f" (needed with kind: {error.instance.get('kind')})"
        return f"{where}: missing required key(s) {', '.join(map(repr, missing))}{hint}"
    if kind == "type":
        expected = error.validator_value
        expected = " or ".join(expected) if isinstance(expected, list) else expected
        return f"{where}: expected {expected}, got {error.instance!r}"
    if kind == "oneOf" and isinstance(error.instance, dict):
        if "stores" in error.schema.get("properties", {}):
            return (
                f"{where}: give either dataset and model (to train) or stores (existing "
                "activation stores to analyse), not both"
            )
        return (
            f"{where}: give either name (a built-in) or factory ('package.module:function', "
            "your own), not both"
        )
    if kind == "pattern" and error.absolute_path and error.absolute_path[-1] == "factory":
        return (
            f"{where}: {error.instance!r} is not of the form 'package.module:function' "
            "(dotted module path, a colon, the callable's name)"
        )
    if "propertyNames" in error.absolute_schema_path:
        return (
            f"{where}: name {error.instance!r} is not allowed; names are used in paths and "
            "may hold letters, digits, '.', '_' and '-', starting with a letter or digit"
        )
    return f"{where}: {error.message}"


def _schema_problems(config: Any) -> list[str]:
    validator = _validator_class()(config_schema())
    errors = sorted(
        validator.iter_errors(config), key=lambda e: (list(map(str, e.path)), e.message)
    )
    return [_describe(e) for e in errors]


def _reference_problems(config: Mapping) -> list[str]:
    """Checks the schema cannot express: names that refer to other entries, ignored keys."""
    problems = []
    experiments = config["experiments"]
    for i, name in enumerate(config["run"]):
        if name not in experiments:
            problems.append(
                f"run[{i}]: unknown experiment {name!r}; defined: {', '.join(experiments)}"
            )
    presets = config["estimators"]
    try:  # families expand to their members here, so that a bad family fails before any job
        members = expand_families(presets)
    except ConfigError as exc:
        problems.append(f"estimators: {exc}")
        members = {}
    for name, experiment in experiments.items():
        if "model" in experiment and "factory" in experiment["model"]:
            model = experiment["model"]
            if model.get("activation", "tanh") != "tanh":
                problems.append(
                    f"experiments.{name}.model.activation: an option of the built-in models; "
                    "pass your factory its own kwargs instead"
                )
            extra = [k for k in _ALL_MODEL_OPTIONS if k in model]
            if extra:
                problems.append(
                    f"experiments.{name}.model: {', '.join(map(repr, extra))} are options of the "
                    "built-in models; a factory model takes only factory and kwargs"
                )
            model.pop("activation", None)  # filled by the schema; means nothing here
        dataset = experiment.get("dataset")
        if dataset is not None and "factory" in dataset:
            extra = sorted(set(dataset) - {"factory", "kwargs"})
            if extra:
                problems.append(
                    f"experiments.{name}.dataset: unknown key(s) {', '.join(map(repr, extra))} "
                    "beside factory; allowed keys: factory, kwargs"
                )
        for i, preset in enumerate(experiment["estimators"]):
            if preset not in presets and preset not in members and preset not in BUILTIN_PRESETS:
                available = ", ".join(available_presets({"estimators": presets}))
                problems.append(
                    f"experiments.{name}.estimators[{i}]: unknown estimator preset {preset!r}; "
                    f"available: {available} (define it under the top-level estimators)"
                )
        if "stores" in experiment:
            continue
        model = experiment["model"]
        allowed = MODEL_OPTIONS.get(model.get("name"), ())
        for key in _ALL_MODEL_OPTIONS if "name" in model else ():
            if key in model and key not in allowed:
                problems.append(
                    f"experiments.{name}.model.{key}: not an option of model {model['name']}; "
                    f"its options: {', '.join(('activation', *allowed))}"
                )
        for option, value in experiment["training"].items():
            if isinstance(value, float) and not math.isfinite(value):
                problems.append(
                    f"experiments.{name}.training.{option}: {value} is not a finite number"
                )
        schedule = experiment["capture"]["schedule"]
        used = {"every": "every", "log": "points", "list": "steps"}.get(schedule["kind"])
        for key in ("every", "points", "steps"):
            if key in schedule and key != used:
                problems.append(
                    f"experiments.{name}.capture.schedule.{key}: ignored with kind: "
                    f"{schedule['kind']}; remove it or set the matching kind"
                )
    return problems


def validate_config(config: Any, *, source: str = "config") -> dict:
    """Validate a parsed config and return a deep copy with every default filled.

    Raises
    ------
    ConfigError
        Listing every problem with its key path and the allowed values.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"{source}: expected a mapping with 'experiments' (and 'run', 'estimators'), "
            f"got {type(config).__name__}"
        )
    filled = copy.deepcopy(dict(config))
    problems = _schema_problems(filled)
    if not problems:
        problems = _reference_problems(filled)
    if problems:
        shown = problems[:_MAX_REPORTED]
        more = len(problems) - len(shown)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise ConfigError(f"{source} is invalid:\n  " + "\n  ".join(shown) + tail)
    return filled


def load_config(path: str | Path) -> dict:
    """Read ``config.yaml``, validate it against the package schema and fill the defaults.

    Parameters
    ----------
    path
        The YAML file.

    Returns
    -------
    dict
        The validated config; every experiment carries all its keys.

    Raises
    ------
    ConfigError
        The file is missing, not YAML, or breaks the schema (every problem is listed with its key
        path and the allowed values).
    """
    return validate_config(read_yaml(path), source=str(path))


def experiment_settings(config: Mapping, name: str) -> dict:
    """The resolved settings of one experiment: JSON-serialisable, defaults filled.

    The result is the experiment's mapping plus ``experiment: name``; it is what a run's store
    records as its ``config`` attribute.

    Raises
    ------
    ConfigError
        The experiment is not defined, or the config is invalid.
    """
    config = validate_config(config)
    experiments = config["experiments"]
    if name not in experiments:
        raise ConfigError(
            f"unknown experiment {name!r}; defined in the config: {', '.join(experiments)}"
        )
    settings = {"experiment": name, **copy.deepcopy(experiments[name])}
    try:
        # YAML can produce dates and other objects in free-form dataset options
        return json.loads(json.dumps(settings))
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"experiments.{name}: settings must be plain JSON values (numbers, strings, lists, "
            f"mappings): {exc}"
        ) from None


def resolve_experiment(settings: Mapping) -> dict:
    """Validate one experiment's settings on their own and fill their defaults.

    Accepts what :func:`experiment_settings` returns (``experiment`` names it) or a hand-written
    experiment mapping; resolved settings come back unchanged. Estimator presets it names are not
    looked up (they live in the whole config).

    Raises
    ------
    ConfigError
        Naming the key path and the allowed values.
    """
    if not isinstance(settings, Mapping):
        raise ConfigError(f"experiment settings must be a mapping, got {type(settings).__name__}")
    name = str(settings.get("experiment", "experiment"))
    body = {k: v for k, v in settings.items() if k != "experiment"}
    named = body.get("estimators", [])
    presets = {p: {} for p in named if isinstance(p, str)} if isinstance(named, list) else {}
    config = validate_config(
        {"experiments": {name: body}, "estimators": presets}, source=f"experiment {name!r}"
    )
    return experiment_settings(config, name)


def seed_from_run(run: str, settings: Mapping) -> int:
    """The seed ``S`` of a run named ``seed<S>``, checked against the experiment's seeds.

    Raises
    ------
    ConfigError
        The name is not ``seed<S>`` or ``S`` is not in ``settings["seeds"]``.
    """
    seeds = list(settings.get("seeds", []))
    match = RUN_PATTERN.match(str(run))
    if match is None:
        raise ConfigError(
            f"run name {run!r} is not of the form seed<S> (e.g. 'seed0'); "
            f"this experiment's runs: {', '.join(f'seed{s}' for s in seeds)}"
        )
    seed = int(match.group(1))
    if seed not in seeds:
        experiment = settings.get("experiment", "this experiment")
        raise ConfigError(
            f"run {run!r}: seed {seed} is not in the seeds of {experiment} "
            f"({', '.join(map(str, seeds))}); add it to seeds or pick one of "
            f"{', '.join(f'seed{s}' for s in seeds)}"
        )
    return seed


# --- your own models and data (factories), your own stores ----------------------------------


def factory_source(spec: str, search: str | os.PathLike | None = None) -> dict[str, Any]:
    """Where a factory ``"package.module:function"`` lives and the SHA-256 of its module's source.

    Finds the module without running it (its parent packages are imported), searching ``search``
    (default: the current directory) before the installed packages. The digest changes whenever
    the factory's file is edited; runs record it in their store (attribute ``factories``); the
    workflow makes the file an input of the training jobs, so editing it retrains.

    Returns
    -------
    dict
        ``{"factory": spec, "file": path or None, "sha256": hex digest or None}`` (None: the
        module was not found or has no source file).
    """
    module = spec.split(":", 1)[0]
    folder = os.fspath(search) if search is not None else os.getcwd()
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    finally:
        if added:
            sys.path.remove(folder)
    origin = getattr(found, "origin", None)
    if not origin or not os.path.isfile(origin):
        return {"factory": spec, "file": None, "sha256": None}
    with open(origin, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return {"factory": spec, "file": os.path.abspath(origin), "sha256": digest}


def experiment_factories(settings: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`factory_source` of the model and dataset factories an experiment names."""
    found = {}
    for part in ("model", "dataset"):
        entry = settings.get(part)
        if isinstance(entry, Mapping) and "factory" in entry:
            found[part] = factory_source(entry["factory"])
    return found


#: Folder names a run of an external store may not take: they are products of an experiment.
_RESERVED_RUNS = ("mi", "plots", "checks", "estimators")


def store_runs(patterns: str | Iterable[str], *, base: str | os.PathLike = ".") -> dict[str, str]:
    """The runs of an experiment of existing stores: run name -> store path.

    Each pattern is a path or a glob (relative to ``base``); matches are sorted. A store named
    ``activations.zarr`` gives its folder's name as the run (``runs/seed0/activations.zarr`` ->
    ``seed0``), any other its stem (``stores/a.zarr`` -> ``a``).

    Raises
    ------
    ConfigError
        A pattern matches nothing, two stores give the same run, or a run name is unusable.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    runs: dict[str, str] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(os.path.join(os.fspath(base), pattern)))
        matches = [m for m in matches if os.path.isdir(m)]
        if not matches:
            raise ConfigError(
                f"stores: {pattern!r} matches no store (folder) under {os.path.abspath(base)}"
            )
        for path in matches:
            path = os.path.normpath(path)
            leaf = os.path.basename(path)
            name = (
                os.path.basename(os.path.dirname(path))
                if leaf == "activations.zarr"
                else (os.path.splitext(leaf)[0])
            )
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", name) or name in _RESERVED_RUNS:
                raise ConfigError(
                    f"stores: the store {path} would be run {name!r}, which cannot name a run "
                    "folder; rename its folder (letters, digits, . _ -)"
                )
            if name in runs and runs[name] != path:
                raise ConfigError(
                    f"stores: {runs[name]} and {path} both give run {name!r}; name them apart"
                )
            runs[name] = path
    return runs


def store_fingerprint(path: str | os.PathLike) -> str:
    """A digest of a store's files (names, sizes, modification times): changes when it does."""
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            info = os.stat(full)
            rel = os.path.relpath(full, path)
            digest.update(f"{rel}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()
