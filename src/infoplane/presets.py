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

A matrix preset may also say how its spectra are computed, ``spectrum:`` (see
:data:`DEFAULT_SPECTRUM`): ``method: auto`` (the default) takes exact eigenvalues for every matrix
of at most ``threshold`` rows and randomized ones (stochastic Lanczos quadrature,
:mod:`infoplane.core.spectra`) above; ``exact`` and ``lanczos`` force one. ``probes``, ``rank``,
``steps`` and ``seed`` tune the randomized estimate, ``dtype`` its matrix products, and
``tolerance`` (bits) is the error bar above which ``infoplane check`` warns. A ``spectrum``
equal to the defaults is dropped from the resolved mapping, so a preset resolves to the same
mapping (and results keep their identity) whether or not it spells the defaults out.

A matrix preset may ask for an interval per point, ``uncertainty: {resamples: 50, level: 0.9,
seed: 0, method: subsample}`` (see :mod:`infoplane.core.resample`). ``resamples: 0`` (the
default) is off, and an uncertainty that is off is dropped from the resolved mapping, so that a
preset resolves to the same mapping (and canonical JSON, and results) with or without it.

The resolved mapping is the one stored in a result's attributes, so it must re-create the
estimate exactly.

Every layer width rule takes ``scale`` (a factor > 0 on the width the rule chose, after
smoothing; kept in the resolved mapping only when it is not 1). A configuration entry may instead
be a sensitivity *family*, ``{family: {base, vary, values, labels}}``: it expands into one ordinary
preset per value, ``<family>.<label>`` (:func:`family_members`, :func:`expand_families`), each
resolved exactly as a single preset with its mapping would be.

Presets are looked up by name, first in the ``estimators:`` mapping of the given configuration,
then among :data:`BUILTIN_PRESETS`. The built-ins are defined here only: a configuration names them
without defining them, lists under ``estimators:`` only presets of its own, and replaces a
built-in by defining a preset of the same name.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
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
SPECTRUM_METHODS = ("auto", "exact", "lanczos")
SPECTRUM_DTYPES = ("float32", "float64")
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
#: How a matrix preset computes its spectra (see :mod:`infoplane.core.spectra`): exact
#: ``eigvalsh`` up to ``threshold`` rows, randomized above, with an error bar per entropy.
DEFAULT_SPECTRUM: dict[str, Any] = {
    "method": "auto",
    "threshold": 3000,
    "probes": 64,
    "rank": 96,
    "steps": 12,
    "seed": 0,
    "dtype": "float32",
    "tolerance": 0.1,
}
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
    "spectrum",
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
    name: str,
    key: str,
    value: Any,
    rules: tuple[str, ...],
    default: Mapping,
    *,
    scalable: bool = False,
) -> dict[str, Any]:
    """Validate one ``{rule: ..., ...}`` width mapping and fill its defaults.

    With ``scalable`` (the layer widths) the mapping may hold ``scale``, a factor > 0 applied to
    the width the rule gives (after smoothing); it is kept in the resolved mapping only when it
    is not 1, so that a mapping without it, or with ``scale: 1``, resolves as before.
    """
    if value is None:
        value = default
    if not isinstance(value, Mapping):
        raise _fail(name, key, f"must be a mapping like {{rule: {rules[0]}}}, got {value!r}")
    if scalable and "scale" in value:
        scale = _positive(name, f"{key}.scale", value["scale"])
        rest = {k: v for k, v in value.items() if k != "scale"}
        resolved = _width_rule(name, key, rest, rules, default, scalable=True)
        return resolved if scale == 1.0 else {**resolved, "scale": scale}
    rule = _choice(name, f"{key}.rule", value.get("rule"), rules)
    if rule == "fixed":
        _check_keys(name, key, value, ("rule", "sigma", *_scale_key(scalable)))
        if "sigma" not in value:
            raise _fail(name, f"{key}.sigma", "is required by rule fixed (a width > 0)")
        return {"rule": "fixed", "sigma": _positive(name, f"{key}.sigma", value["sigma"])}
    if rule == "alignment":
        _check_keys(
            name,
            key,
            value,
            ("rule", "grid", "points", "smoothing", "smoothing_per", *_scale_key(scalable)),
        )
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
    _check_keys(name, key, value, ("rule", *_scale_key(scalable)))
    return {"rule": rule}


def _count(name: str, key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(name, key, f"must be an integer >= {low}, got {value!r}")
    return value


def _spectrum(name: str, value: Any) -> dict[str, Any] | None:
    """Validate ``spectrum:``; None when it equals :data:`DEFAULT_SPECTRUM` (it is dropped)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _fail(name, "spectrum", f"must be a mapping like {{method: auto}}, got {value!r}")
    _check_keys(name, "spectrum", value, tuple(DEFAULT_SPECTRUM))
    given = {**DEFAULT_SPECTRUM, **value}
    spectrum = {
        "method": _choice(name, "spectrum.method", given["method"], SPECTRUM_METHODS),
        "threshold": _count(name, "spectrum.threshold", given["threshold"], 2),
        "probes": _count(name, "spectrum.probes", given["probes"], 2),
        "rank": _count(name, "spectrum.rank", given["rank"], 0),
        "steps": _count(name, "spectrum.steps", given["steps"], 2),
        "seed": _count(name, "spectrum.seed", given["seed"], 0),
        "dtype": _choice(name, "spectrum.dtype", given["dtype"], SPECTRUM_DTYPES),
        "tolerance": _positive(name, "spectrum.tolerance", given["tolerance"]),
    }
    return None if spectrum == DEFAULT_SPECTRUM else spectrum


def spectrum_of(preset: Mapping[str, Any]) -> dict[str, Any]:
    """The spectrum settings of a resolved matrix preset (the defaults when it has none)."""
    return {**DEFAULT_SPECTRUM, **preset.get("spectrum", {})}


def _scale_key(scalable: bool) -> tuple[str, ...]:
    """The ``scale`` key, where a width mapping may hold it (named in unknown-key errors)."""
    return ("scale",) if scalable else ()


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
            name,
            "layer_width",
            preset.get("layer_width"),
            LAYER_RULES,
            DEFAULT_ALIGNMENT,
            scalable=True,
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
    spectrum = _spectrum(name, preset.get("spectrum"))
    if spectrum is not None:
        resolved["spectrum"] = spectrum
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


# ---------------------------------------------------------------------------------------------
# sensitivity families

#: What a family varies: the factor on the layer widths, the Rényi order, or the whole layer
#: width mapping.
FAMILY_VARIES = ("sigma_scale", "alpha", "layer_width")
_FAMILY_KEYS = ("base", "vary", "values", "labels")
#: A member's label: the part of its name after the family's name and ``.``.
_LABEL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def is_family(preset: Any) -> bool:
    """Whether a configuration entry under ``estimators:`` is a family (``{family: {...}}``)."""
    return isinstance(preset, Mapping) and "family" in preset


def _family_fail(name: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"estimator family {name!r}: {key} {problem}")


def _default_label(vary: str, value: Any, index: int, values: list) -> str:
    """A member's label from its value: ``x2`` (σ scale), ``a1.01`` (α), the rule (widths)."""
    if vary == "sigma_scale":
        return f"x{float(value):g}"
    if vary == "alpha":
        return f"a{float(value):g}"
    rules = [v.get("rule") if isinstance(v, Mapping) else None for v in values]
    rule = rules[index]
    return str(rule) if rules.count(rule) == 1 else f"{rule}{index + 1}"


def _family_member(name: str, base: Mapping[str, Any], vary: str, value: Any) -> dict[str, Any]:
    """The preset mapping of one member: ``base`` (resolved) with the varied key set."""
    member = copy.deepcopy(dict(base))
    if vary == "alpha":
        member["alpha"] = value
    elif vary == "layer_width":
        member["layer_width"] = copy.deepcopy(value)
    else:
        member["layer_width"] = {**member["layer_width"], "scale": value}
    return member


def family_members(
    name: str, spec: Mapping[str, Any], presets: Mapping[str, Any]
) -> dict[str, dict[str, Any]]:
    """The members of one family: ``member name -> resolved preset``, in the order of its values.

    Parameters
    ----------
    name
        The family's name; member ``k`` is named ``<name>.<label k>``.
    spec
        The family's entry, ``{family: {base: B, vary: V, values: [...], labels: [...]}}``:
        ``base`` a preset of the configuration (not a family) or a built-in one; ``vary`` one of
        :data:`FAMILY_VARIES`; ``values`` the factors on the layer widths (``sigma_scale``:
        numbers > 0, written to ``layer_width.scale``), the Rényi orders (``alpha``) or the layer
        width mappings (``layer_width``); ``labels`` (optional) the members' labels, by default
        ``x<factor>``, ``a<alpha>`` or the width rule.
    presets
        The configuration's own presets (families included), where ``base`` is looked up first.

    Returns
    -------
    dict
        Each member resolved exactly as a single preset holding its mapping would be.

    Raises
    ------
    ConfigError
        Naming the key of the family that is wrong and what it may be.
    """
    if set(spec) != {"family"}:
        extra = ", ".join(sorted(map(str, set(spec) - {"family"})))
        raise _family_fail(name, "(top level)", f"holds {extra} beside family; move them to base")
    body = spec["family"]
    if not isinstance(body, Mapping):
        raise _family_fail(
            name, "family", f"must be a mapping {{base, vary, values}}, got {body!r}"
        )
    unknown = sorted(map(str, set(body) - set(_FAMILY_KEYS)))
    if unknown:
        raise _family_fail(
            name, "family", f"has unknown key(s) {', '.join(unknown)}; allowed: "
            f"{', '.join(_FAMILY_KEYS)}",
        )  # fmt: skip
    missing = [key for key in ("base", "vary", "values") if key not in body]
    if missing:
        raise _family_fail(name, "family", f"lacks {', '.join(missing)}")
    base_name = body["base"]
    if base_name in presets and is_family(presets[base_name]):
        raise _family_fail(name, "family.base", f"{base_name!r} is a family; name a single preset")
    if base_name in presets:
        base = validate_preset(copy.deepcopy(dict(presets[base_name])), str(base_name))
    elif base_name in BUILTIN_PRESETS:
        base = validate_preset(copy.deepcopy(BUILTIN_PRESETS[base_name]), str(base_name))
    else:
        singles = [n for n, p in presets.items() if not is_family(p)]
        known = singles + [n for n in BUILTIN_PRESETS if n not in singles]
        raise _family_fail(
            name, "family.base", f"{base_name!r} is not a preset; available: {', '.join(known)}"
        )
    vary = body["vary"]
    if vary not in FAMILY_VARIES:
        raise _family_fail(
            name, "family.vary", f"must be one of {', '.join(FAMILY_VARIES)}; got {vary!r}"
        )
    if vary in ("sigma_scale", "layer_width") and "layer_width" not in base:
        raise _family_fail(
            name, "family.vary", f"{vary} needs a base with layer_width (the matrix estimator "
            f"with kernel tensor); {base_name!r} has none",
        )  # fmt: skip
    if vary == "alpha" and estimator_of(base) != "matrix":
        raise _family_fail(name, "family.vary", f"alpha needs a matrix base; {base_name!r} is not")
    values = body["values"]
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, list) or not values:
        raise _family_fail(name, "family.values", f"must be a non-empty list, got {values!r}")
    labels = body.get("labels")
    if labels is None:
        labels = [_default_label(vary, v, k, values) for k, v in enumerate(values)]
    elif not isinstance(labels, list) or len(labels) != len(values):
        raise _family_fail(
            name, "family.labels", f"must be a list of {len(values)} labels (one per value)"
        )
    members: dict[str, dict[str, Any]] = {}
    canonical: dict[str, str] = {}
    for label, value in zip(labels, values, strict=True):
        if not isinstance(label, str) or not label or not set(label) <= _LABEL_CHARS:
            raise _family_fail(
                name, "family.labels", f"{label!r} is not a label (letters, digits, . _ -)"
            )
        member = f"{name}.{label}"
        if member in members:
            raise _family_fail(name, "family.labels", f"gives two members named {member!r}")
        try:
            resolved = validate_preset(_family_member(name, base, vary, value), member)
        except ConfigError as exc:
            raise _family_fail(name, "family.values", f"has a bad value {value!r}: {exc}") from None
        text = preset_to_json(resolved)
        twin = next((m for m, t in canonical.items() if t == text), None)
        if twin is not None:
            raise _family_fail(
                name, "family.values", f"give {twin!r} and {member!r} the same preset"
            )
        canonical[member] = text
        members[member] = resolved
    return members


def expand_families(presets: Mapping[str, Any]) -> dict[str, Any]:
    """A configuration's presets with every family replaced by its members, in place.

    Members are ordinary presets (see :func:`family_members`); a member whose name is taken by
    another preset of the configuration is an error.
    """
    expanded: dict[str, Any] = {}
    for name, preset in presets.items():
        if not is_family(preset):
            expanded[name] = preset
            continue
        for member, resolved in family_members(name, preset, presets).items():
            if member in presets or member in expanded:
                raise _family_fail(
                    name, "family", f"member {member!r} clashes with another preset of that name"
                )
            expanded[member] = resolved
    return expanded


def preset_families(config: str | Path | Mapping[str, Any] | None) -> dict[str, list[str]]:
    """``family name -> member names`` of a configuration (empty when it defines none)."""
    presets = load_presets(config)
    return {
        name: list(family_members(name, preset, presets))
        for name, preset in presets.items()
        if is_family(preset)
    }


def expand_preset_names(
    config: str | Path | Mapping[str, Any] | None, names: Sequence[str]
) -> list[str]:
    """``names`` with every family name replaced by its members (duplicates dropped)."""
    families = preset_families(config)
    out: list[str] = []
    for name in names:
        out += families.get(name, [name])
    return list(dict.fromkeys(out))


def available_presets(config: str | Path | Mapping[str, Any] | None = None) -> list[str]:
    """Preset names visible through ``config``: its own first (family members in place of their
    family), then the built-ins."""
    own = list(expand_families(load_presets(config)))
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
    raw = load_presets(config)
    if name in raw and is_family(raw[name]):
        members = ", ".join(family_members(name, raw[name], raw))
        raise ConfigError(
            f"estimator preset {name!r} is a family; estimate one of its members: {members}"
        )
    presets = expand_families(raw)
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
