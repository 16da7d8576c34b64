"""Estimator presets: validated, defaults-filled, JSON-serialisable mappings.

A preset names its ``estimator`` (default ``matrix``) and that estimator's parameters:

- ``matrix`` (the matrix-based Rényi estimator): the kernel (``tensor`` or ``multivariate``), the
  Rényi order ``alpha``, the width rule of the input kernel, the label kernel and the width rule of
  the layer kernels (``multivariate`` presets give a per-channel rule instead). Its resolved
  mapping carries no ``estimator`` key, so that a matrix preset resolves to the same mapping (and
  canonical JSON) whether or not it says ``estimator: matrix``;
- ``binning`` (Shwartz-Ziv & Tishby): ``bins`` (equal-width bins per unit, default 30) and
  ``range`` (``[low, high]``, default ``[-1, 1]``, or ``layer``: each layer's observed range at
  each point); see :mod:`infoplane.core.binning`;
- ``kde`` (the pairwise-distance bounds of Kolchinsky & Tracey, as used by Saxe et al.):
  ``noise_variance`` (default 0.1); see :mod:`infoplane.core.kde`.

A matrix preset may ask for an interval per point, ``uncertainty: {resamples: 50, level: 0.9,
seed: 0, method: subsample}`` (see :mod:`infoplane.core.resample`). ``resamples: 0`` (the
default) is off, and an uncertainty that is off is dropped from the resolved mapping, so that a
preset resolves to the same mapping (and canonical JSON, and results) with or without it.

The resolved mapping is the one stored in a result's attributes, so it must re-create the
estimate exactly.

Presets are looked up by name, first in the ``estimators:`` mapping of the given configuration,
then among :data:`BUILTIN_PRESETS`. The built-ins are defined here only: a configuration names them
without defining them, lists under ``estimators:`` only presets of its own, and replaces a
built-in by defining a preset of the same name.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infoplane.errors import ConfigError
from infoplane.io.files import canonical_json

ESTIMATORS = ("matrix", "binning", "kde")
KERNELS = ("tensor", "multivariate")
LABEL_KERNELS = ("indicator",)
INPUT_RULES = ("fixed", "silverman", "scott", "median")
LAYER_RULES = ("alignment", "fixed", "silverman", "scott", "median")
CHANNEL_RULES = ("fixed", "silverman", "scott", "median")
GRIDS = ("linear", "log")
SMOOTHING_UNITS = ("iteration", "capture")
# infoplane.core.resample.METHODS less "bootstrap", whose intervals miss (kept for the study)
INTERVAL_METHODS = ("subsample",)

# Defaults are the paper's estimator (PAPER_NOTES §2.3 and §3.2).
DEFAULT_ALPHA = 1.0
DEFAULT_INPUT_WIDTH: dict[str, Any] = {"rule": "fixed", "sigma": 8.0}
DEFAULT_ALIGNMENT: dict[str, Any] = {
    "rule": "alignment",
    "grid": "linear",
    "points": 100,
    "smoothing": 0.9,
    "smoothing_per": "iteration",
}
DEFAULT_CHANNEL_WIDTH: dict[str, Any] = {"rule": "silverman"}
# Shwartz-Ziv & Tishby's binning: 30 bins per unit on [-1, 1]; Saxe et al.'s noise variance.
DEFAULT_BINS = 30
DEFAULT_BIN_RANGE = [-1.0, 1.0]
DEFAULT_NOISE_VARIANCE = 0.1
DEFAULT_UNCERTAINTY: dict[str, Any] = {
    "resamples": 0,
    "level": 0.9,
    "seed": 0,
    "method": "subsample",
}

_PAPER: dict[str, Any] = {
    "kernel": "tensor",
    "alpha": 1.0,
    "input_width": {"rule": "fixed", "sigma": 8.0},
    "label_kernel": "indicator",
    "layer_width": dict(DEFAULT_ALIGNMENT),
}

BUILTIN_PRESETS: dict[str, dict[str, Any]] = {
    # The authors' estimator: tensor kernel, Shannon limit, σ_X = 8, aligned and smoothed σ_T.
    "paper": _PAPER,
    # The α of the authors' earlier scripts; differs from "paper" by a few hundredths of a bit.
    "paper-alpha1.01": {**_PAPER, "alpha": 1.01},
    # Yu et al.: the layer Gram is the Hadamard product of per-channel Grams, one Silverman width
    # per channel. Needs the activations (per-channel distances are not cached).
    "multivariate": {
        "kernel": "multivariate",
        "alpha": 1.0,
        "input_width": {"rule": "fixed", "sigma": 8.0},
        "label_kernel": "indicator",
        "channel_width": {"rule": "silverman"},
    },
    # Rule-of-thumb widths everywhere, from the data spread: no search, no smoothing.
    "silverman": {
        "kernel": "tensor",
        "alpha": 1.0,
        "input_width": {"rule": "silverman"},
        "label_kernel": "indicator",
        "layer_width": {"rule": "silverman"},
    },
    # Fixed widths everywhere (σ_T = 5) with the earlier scripts' α: no search, no smoothing.
    "fixed-example": {
        "kernel": "tensor",
        "alpha": 1.01,
        "input_width": {"rule": "fixed", "sigma": 8.0},
        "label_kernel": "indicator",
        "layer_width": {"rule": "fixed", "sigma": 5.0},
    },
    # Shwartz-Ziv & Tishby: every unit cut into 30 bins on [-1, 1] (the tanh range).
    "binning": {"estimator": "binning", "bins": 30, "range": [-1.0, 1.0]},
    # 30 bins on each layer's observed range at each point (Saxe et al.'s fix for ReLU).
    "binning-adaptive": {"estimator": "binning", "bins": 30, "range": "layer"},
    # Kolchinsky & Tracey's bounds with Saxe et al.'s noise variance (upper bound in I_XT/I_TY).
    "kde": {"estimator": "kde", "noise_variance": 0.1},
}

_TOP_KEYS = (
    "estimator",
    "kernel",
    "alpha",
    "input_width",
    "label_kernel",
    "layer_width",
    "channel_width",
    "uncertainty",
)
_BINNING_KEYS = ("estimator", "bins", "range")
_KDE_KEYS = ("estimator", "noise_variance")


def _fail(name: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"estimator preset {name!r}: {key} {problem}")


def _number(name: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(name, key, f"must be a finite number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise _fail(name, key, f"must be a finite number, got {value!r}")
    return number


def _positive(name: str, key: str, value: Any) -> float:
    number = _number(name, key, value)
    if number <= 0:
        raise _fail(name, key, f"must be > 0, got {value!r}")
    return number


def _choice(name: str, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _fail(name, key, f"must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _check_keys(name: str, key: str, mapping: Mapping, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(mapping) - set(allowed), key=str)  # YAML keys need not all be strings
    if unknown:
        raise _fail(
            name,
            key,
            f"has unknown key(s) {', '.join(map(str, unknown))}; allowed: {', '.join(allowed)}",
        )


def _width_rule(
    name: str, key: str, value: Any, rules: tuple[str, ...], default: Mapping
) -> dict[str, Any]:
    """Validate one ``{rule: ..., ...}`` width mapping and fill its defaults."""
    if value is None:
        value = default
    if not isinstance(value, Mapping):
        raise _fail(name, key, f"must be a mapping like {{rule: {rules[0]}}}, got {value!r}")
    rule = _choice(name, f"{key}.rule", value.get("rule"), rules)
    if rule == "fixed":
        _check_keys(name, key, value, ("rule", "sigma"))
        if "sigma" not in value:
            raise _fail(name, f"{key}.sigma", "is required by rule fixed (a width > 0)")
        return {"rule": "fixed", "sigma": _positive(name, f"{key}.sigma", value["sigma"])}
    if rule == "alignment":
        _check_keys(name, key, value, ("rule", "grid", "points", "smoothing", "smoothing_per"))
        grid = _choice(name, f"{key}.grid", value.get("grid", DEFAULT_ALIGNMENT["grid"]), GRIDS)
        points = value.get("points", DEFAULT_ALIGNMENT["points"])
        if isinstance(points, bool) or not isinstance(points, int) or points < 2:
            raise _fail(name, f"{key}.points", f"must be an integer >= 2, got {points!r}")
        beta = _number(
            name, f"{key}.smoothing", value.get("smoothing", DEFAULT_ALIGNMENT["smoothing"])
        )
        if not 0.0 <= beta < 1.0:
            raise _fail(name, f"{key}.smoothing", f"must lie in [0, 1), got {beta!r}")
        unit = _choice(
            name,
            f"{key}.smoothing_per",
            value.get("smoothing_per", DEFAULT_ALIGNMENT["smoothing_per"]),
            SMOOTHING_UNITS,
        )
        return {
            "rule": "alignment",
            "grid": grid,
            "points": points,
            "smoothing": beta,
            "smoothing_per": unit,
        }
    _check_keys(name, key, value, ("rule",))
    return {"rule": rule}


def _count(name: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(name, key, f"must be an integer >= {low}, got {value!r}")
    return value


def _uncertainty(name: str, value: Any) -> dict[str, Any] | None:
    """Validate ``uncertainty`` and fill its defaults; None when it is off (``resamples: 0``)."""
    if not isinstance(value, Mapping):
        raise _fail(name, "uncertainty", f"must be a mapping like {{resamples: 50}}, got {value!r}")
    _check_keys(name, "uncertainty", value, tuple(DEFAULT_UNCERTAINTY))
    spec = {**DEFAULT_UNCERTAINTY, **value}
    resamples = _count(name, "uncertainty.resamples", spec["resamples"], 0)
    if resamples == 0:
        return None
    if resamples == 1:
        raise _fail(name, "uncertainty.resamples", "must be 0 (off) or >= 2, got 1")
    level = _number(name, "uncertainty.level", spec["level"])
    if not 0.0 < level < 1.0:
        raise _fail(name, "uncertainty.level", f"must lie in (0, 1), e.g. 0.9; got {level!r}")
    return {
        "resamples": resamples,
        "level": level,
        "seed": _count(name, "uncertainty.seed", spec["seed"], 0),
        "method": _choice(name, "uncertainty.method", spec["method"], INTERVAL_METHODS),
    }


def _no_uncertainty(name: str, estimator: str, preset: Mapping[str, Any]) -> dict[str, Any]:
    """``preset`` without an uncertainty that is off; an error if one is asked of ``estimator``."""
    if "uncertainty" not in preset:
        return dict(preset)
    if _uncertainty(name, preset["uncertainty"]) is not None:
        raise _fail(
            name,
            "uncertainty",
            f"is only computed by the matrix estimator, not by {estimator}; remove it or set "
            "resamples: 0",
        )
    return {key: value for key, value in preset.items() if key != "uncertainty"}


def validate_preset(preset: Mapping[str, Any], name: str = "<preset>") -> dict[str, Any]:
    """Validate one preset mapping and return it with every default filled.

    Parameters
    ----------
    preset
        The mapping as written in a configuration (missing keys take the paper's values).
    name
        Used in error messages only.

    Raises
    ------
    ConfigError
        Naming the offending key and its allowed values.
    """
    if not isinstance(preset, Mapping):
        raise ConfigError(f"estimator preset {name!r} must be a mapping, got {preset!r}")
    estimator = _choice(name, "estimator", preset.get("estimator", "matrix"), ESTIMATORS)
    if estimator == "binning":
        return _binning_preset(name, _no_uncertainty(name, estimator, preset))
    if estimator == "kde":
        return _kde_preset(name, _no_uncertainty(name, estimator, preset))
    _check_keys(name, "(top level)", preset, _TOP_KEYS)
    kernel = _choice(name, "kernel", preset.get("kernel", "tensor"), KERNELS)
    resolved: dict[str, Any] = {
        "kernel": kernel,
        "alpha": _positive(name, "alpha", preset.get("alpha", DEFAULT_ALPHA)),
        "input_width": _width_rule(
            name, "input_width", preset.get("input_width"), INPUT_RULES, DEFAULT_INPUT_WIDTH
        ),
        "label_kernel": _choice(
            name, "label_kernel", preset.get("label_kernel", "indicator"), LABEL_KERNELS
        ),
    }
    if kernel == "tensor":
        if "channel_width" in preset:
            raise _fail(name, "channel_width", "is only used by kernel multivariate; remove it")
        resolved["layer_width"] = _width_rule(
            name, "layer_width", preset.get("layer_width"), LAYER_RULES, DEFAULT_ALIGNMENT
        )
    else:
        if "layer_width" in preset:
            raise _fail(
                name,
                "layer_width",
                "is not used by kernel multivariate (every layer gets per-channel widths); "
                f"give channel_width {{rule: {' | '.join(CHANNEL_RULES)}}} instead",
            )
        resolved["channel_width"] = _width_rule(
            name, "channel_width", preset.get("channel_width"), CHANNEL_RULES, DEFAULT_CHANNEL_WIDTH
        )
    if "uncertainty" in preset:
        uncertainty = _uncertainty(name, preset["uncertainty"])
        if uncertainty is not None:
            resolved["uncertainty"] = uncertainty
    return resolved


def uncertainty_of(preset: Mapping[str, Any]) -> dict[str, Any] | None:
    """The resolved ``uncertainty`` of a preset, or None when it asks for no intervals."""
    return preset.get("uncertainty")


def _binning_preset(name: str, preset: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys(name, "(top level) of estimator binning", preset, _BINNING_KEYS)
    bins = preset.get("bins", DEFAULT_BINS)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise _fail(name, "bins", f"must be an integer >= 1, got {bins!r}")
    value_range = preset.get("range", DEFAULT_BIN_RANGE)
    if value_range != "layer":
        if (
            isinstance(value_range, (str, bytes, Mapping))
            or not hasattr(value_range, "__len__")
            or len(value_range) != 2
        ):
            raise _fail(name, "range", f"must be [low, high] or layer, got {value_range!r}")
        low, high = (_number(name, "range", v) for v in value_range)
        if not low < high:
            raise _fail(name, "range", f"needs low < high, got {value_range!r}")
        value_range = [low, high]
    return {"estimator": "binning", "bins": bins, "range": value_range}


def _kde_preset(name: str, preset: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys(name, "(top level) of estimator kde", preset, _KDE_KEYS)
    variance = _positive(
        name, "noise_variance", preset.get("noise_variance", DEFAULT_NOISE_VARIANCE)
    )
    return {"estimator": "kde", "noise_variance": variance}


def estimator_of(preset: Mapping[str, Any]) -> str:
    """The estimator of a resolved preset: ``matrix``, ``binning`` or ``kde``."""
    return str(preset.get("estimator", "matrix"))


def load_presets(source: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``name -> preset`` mapping of a configuration (unvalidated).

    ``source`` is a path to a YAML or JSON file, or an already loaded mapping. Either form may be
    a whole configuration (presets under ``estimators:``) or a bare ``name -> preset`` mapping.
    """
    if source is None:
        return {}
    if isinstance(source, (str, Path)):
        source = _read_mapping(Path(source))
    if not isinstance(source, Mapping):
        raise ConfigError(f"an estimator configuration must be a mapping, got {type(source)}")
    if "estimators" in source:
        presets = source["estimators"]
    elif "experiments" in source or "run" in source:
        presets = {}  # a config.yaml without presets of its own
    else:
        presets = source
    if presets is None:
        return {}
    if not isinstance(presets, Mapping) or not all(
        isinstance(v, Mapping) for v in presets.values()
    ):
        raise ConfigError(
            "estimators must map preset names to mappings, e.g. "
            "estimators: {mine: {kernel: tensor, layer_width: {rule: silverman}}}"
        )
    return dict(presets)


def _read_mapping(path: Path) -> Any:
    if not path.is_file():
        raise ConfigError(f"estimator configuration {path} does not exist")
    if path.suffix.lower() == ".json":
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read estimator configuration {path}: {exc}") from None
        except ValueError as exc:  # not UTF-8, or not JSON
            raise ConfigError(f"cannot parse estimator configuration {path}: {exc}") from None
    from infoplane.config import read_yaml

    return read_yaml(path)


def available_presets(config: str | Path | Mapping[str, Any] | None = None) -> list[str]:
    """Preset names visible through ``config``: its own first, then the built-ins."""
    own = list(load_presets(config))
    return own + [name for name in BUILTIN_PRESETS if name not in own]


def resolve_preset(config: str | Path | Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """Look up preset ``name`` and return it validated, with defaults filled.

    Parameters
    ----------
    config
        A configuration (path or mapping) whose ``estimators:`` mapping is searched first, or a bare
        ``name -> preset`` mapping, or None for the built-ins only.
    name
        Preset name.

    Returns
    -------
    dict
        A fresh, JSON-serialisable mapping (see :func:`preset_to_json`).
    """
    presets = load_presets(config)
    if name in presets:
        preset = presets[name]
    elif name in BUILTIN_PRESETS:
        preset = BUILTIN_PRESETS[name]
    else:
        raise ConfigError(
            f"unknown estimator preset {name!r}; available: {', '.join(available_presets(config))}"
            " (add it under estimators: in the configuration)"
        )
    return validate_preset(copy.deepcopy(dict(preset)), name)


def preset_to_json(preset: Mapping[str, Any]) -> str:
    """Canonical JSON text of a resolved preset (sorted keys), as stored in result attributes."""
    return canonical_json(preset)


def preset_from_json(text: str) -> dict[str, Any]:
    """Inverse of :func:`preset_to_json`, validated.

    Raises
    ------
    ConfigError
        ``text`` is not JSON, or not the JSON of a valid preset.
    """
    try:
        preset = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"a stored estimator preset is not valid JSON: {exc}") from None
    return validate_preset(preset, "<from result attributes>")


def needs_activations(preset: Mapping[str, Any]) -> bool:
    """Whether the preset reads the activation store (per-channel distances and the binned
    activations themselves are not cached)."""
    if estimator_of(preset) == "binning":
        return True
    return preset.get("kernel") == "multivariate"
