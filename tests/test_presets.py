import json
from pathlib import Path

import pytest

from infoplane.config import load_config
from infoplane.errors import ConfigError
from infoplane.presets import (
    BUILTIN_PRESETS,
    available_presets,
    needs_activations,
    preset_from_json,
    preset_to_json,
    resolve_preset,
    validate_preset,
)


def test_paper_preset_is_the_papers_estimator():
    preset = resolve_preset(None, "paper")
    assert preset == {
        "kernel": "tensor",
        "alpha": 1.0,
        "input_width": {"rule": "fixed", "sigma": 8.0},
        "label_kernel": "indicator",
        "layer_width": {
            "rule": "alignment",
            "grid": "linear",
            "points": 100,
            "smoothing": 0.9,
            "smoothing_per": "iteration",
        },
    }
    assert resolve_preset(None, "paper-alpha1.01")["alpha"] == 1.01


@pytest.mark.parametrize("name", sorted(BUILTIN_PRESETS))
def test_every_builtin_resolves_and_round_trips_through_json(name):
    preset = resolve_preset(None, name)
    assert preset_from_json(preset_to_json(preset)) == preset
    assert validate_preset(preset, name) == preset  # resolving is idempotent


def test_multivariate_and_binning_need_the_activations_and_others_do_not():
    readers = {"multivariate", "binning", "binning-adaptive"}
    assert all(needs_activations(resolve_preset(None, n)) for n in readers)
    assert resolve_preset(None, "multivariate")["channel_width"] == {"rule": "silverman"}
    assert not any(
        needs_activations(resolve_preset(None, n)) for n in BUILTIN_PRESETS if n not in readers
    )


def test_defaults_are_filled():
    preset = resolve_preset(
        {"estimators": {"mine": {"layer_width": {"rule": "alignment"}}}}, "mine"
    )
    assert preset["alpha"] == 1.0
    assert preset["input_width"] == {"rule": "fixed", "sigma": 8.0}
    assert preset["layer_width"] == {
        "rule": "alignment",
        "grid": "linear",
        "points": 100,
        "smoothing": 0.9,
        "smoothing_per": "iteration",
    }


def test_config_presets_shadow_builtins_and_resolving_does_not_mutate():
    config = {"estimators": {"paper": {"alpha": 2.0, "layer_width": {"rule": "median"}}}}
    before = json.dumps(config, sort_keys=True)
    preset = resolve_preset(config, "paper")
    assert preset["alpha"] == 2.0 and preset["layer_width"] == {"rule": "median"}
    assert json.dumps(config, sort_keys=True) == before
    assert BUILTIN_PRESETS["paper"]["alpha"] == 1.0


@pytest.mark.parametrize(
    ("preset", "words"),
    [
        ({"kernel": "gauss"}, ["kernel", "tensor", "multivariate"]),
        ({"alpha": 0}, ["alpha", "> 0"]),
        ({"alpha": "one"}, ["alpha"]),
        ({"input_width": {"rule": "fixed"}}, ["input_width.sigma", "required"]),
        ({"input_width": {"rule": "alignment"}}, ["input_width.rule", "silverman", "median"]),
        ({"label_kernel": "rbf"}, ["label_kernel", "indicator"]),
        ({"layer_width": {"rule": "alignment", "grid": "cubic"}}, ["layer_width.grid", "log"]),
        ({"layer_width": {"rule": "alignment", "smoothing": 1.0}}, ["smoothing", "[0, 1)"]),
        ({"layer_width": {"rule": "alignment", "points": 1}}, ["points", ">= 2"]),
        (
            {"layer_width": {"rule": "alignment", "smoothing_per": "epoch"}},
            ["layer_width.smoothing_per", "iteration", "capture"],
        ),
        ({"layer_width": {"rule": "fixed", "sigma": -1}}, ["layer_width.sigma", "> 0"]),
        ({"layer_width": {"rule": "silverman", "sigma": 2}}, ["layer_width", "sigma"]),
        ({"widths": {}}, ["widths", "kernel", "alpha"]),
        ({"kernel": "multivariate", "layer_width": {"rule": "median"}}, ["channel_width"]),
        ({"channel_width": {"rule": "median"}}, ["channel_width", "multivariate"]),
        ({"kernel": "multivariate", "channel_width": {"rule": "alignment"}}, ["channel_width"]),
    ],
)
def test_bad_presets_name_the_key_and_the_allowed_values(preset, words):
    with pytest.raises(ConfigError) as info:
        validate_preset(preset, "bad")
    message = str(info.value)
    assert "bad" in message
    for word in words:
        assert word in message


def test_unknown_name_lists_the_available_presets():
    with pytest.raises(ConfigError, match=r"paper-alpha1\.01") as info:
        resolve_preset({"estimators": {"mine": {}}}, "nope")
    assert "mine" in str(info.value)


def test_presets_from_yaml_and_json_files(tmp_path):
    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text(
        "experiments: {}\nestimators:\n  quick:\n    alpha: 2\n    layer_width: {rule: scott}\n",
        encoding="utf-8",
    )
    assert resolve_preset(yaml_file, "quick")["layer_width"] == {"rule": "scott"}
    assert resolve_preset(str(yaml_file), "quick")["alpha"] == 2.0
    json_file = tmp_path / "adhoc.json"
    json_file.write_text(json.dumps({"wide": {"layer_width": {"rule": "fixed", "sigma": 50}}}))
    assert resolve_preset(json_file, "wide")["layer_width"] == {"rule": "fixed", "sigma": 50.0}
    assert available_presets(json_file)[0] == "wide"
    assert "paper" in available_presets(json_file)


def test_missing_or_broken_config_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_preset(tmp_path / "nope.yaml", "paper")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json"):
        resolve_preset(broken, "paper")


def test_bad_values_are_config_errors_not_crashes(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) 1, extra"):
        validate_preset({1: "a", "extra": "b"}, "bad")  # YAML keys need not be strings
    with pytest.raises(ConfigError, match="alpha must be a finite number"):
        validate_preset({"alpha": 10**400}, "bad")
    with pytest.raises(ConfigError, match="not valid JSON"):
        preset_from_json("{not json")
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"caf\xe9": {}}')
    with pytest.raises(ConfigError, match=r"latin1\.json"):
        resolve_preset(latin1, "paper")


# --- the shipped configs name the built-ins, which are defined in infoplane.presets only -------

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONFIGS = ("config.yaml", "tests/workflow_config.yaml")

# The mappings config.yaml and tests/workflow_config.yaml wrote out for the built-in presets they
# use (the documented values): naming a built-in must resolve to exactly these, byte for byte,
# so that results/estimators/<name>.json and every estimate's params stay the same.
DOCUMENTED = {
    "paper": {
        "kernel": "tensor",
        "alpha": 1.0,
        "input_width": {"rule": "fixed", "sigma": 8.0},
        "label_kernel": "indicator",
        "layer_width": {"rule": "alignment", "grid": "linear", "points": 100, "smoothing": 0.9},
    },
    "paper-alpha1.01": {
        "kernel": "tensor",
        "alpha": 1.01,
        "input_width": {"rule": "fixed", "sigma": 8.0},
        "label_kernel": "indicator",
        "layer_width": {"rule": "alignment", "grid": "linear", "points": 100, "smoothing": 0.9},
    },
    "silverman": {
        "kernel": "tensor",
        "alpha": 1.0,
        "input_width": {"rule": "silverman"},
        "label_kernel": "indicator",
        "layer_width": {"rule": "silverman"},
    },
    "multivariate": {
        "kernel": "multivariate",
        "alpha": 1.0,
        "input_width": {"rule": "fixed", "sigma": 8.0},
        "label_kernel": "indicator",
        "channel_width": {"rule": "silverman"},
    },
}


@pytest.mark.parametrize("config_file", SHIPPED_CONFIGS)
def test_shipped_configs_define_no_builtin_again(config_file):
    config = load_config(ROOT / config_file)
    assert not set(config["estimators"]) & set(BUILTIN_PRESETS)


@pytest.mark.parametrize("config_file", SHIPPED_CONFIGS)
def test_builtins_named_by_the_shipped_configs_resolve_to_the_documented_mappings(config_file):
    config = load_config(ROOT / config_file)
    named = {p for experiment in config["experiments"].values() for p in experiment["estimators"]}
    builtins = sorted(named - set(config["estimators"]))
    assert builtins, "the shipped configs name built-in presets"
    for name in builtins:
        resolved = resolve_preset(config, name)
        documented = validate_preset(DOCUMENTED[name], name)
        assert preset_to_json(resolved) == preset_to_json(documented)
        # what the workflow's `preset` rule writes: canonical JSON of {"estimators": {name: ...}}
        assert _canonical({"estimators": {name: resolved}}) == _canonical(
            {"estimators": {name: documented}}
        )


def _canonical(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- width scale and sensitivity families --------------------------------------------------

FAMILIES = {
    "estimators": {
        "mine": {"kernel": "tensor", "layer_width": {"rule": "fixed", "sigma": 2.0}},
        "sig": {"family": {"base": "paper", "vary": "sigma_scale", "values": [0.5, 1, 2]}},
        "alp": {"family": {"base": "mine", "vary": "alpha", "values": [1.0, 2.0]}},
        "wid": {
            "family": {
                "base": "paper",
                "vary": "layer_width",
                "values": [{"rule": "alignment", "smoothing": 0.0}, {"rule": "median"}],
                "labels": ["raw", "med"],
            }
        },
    }
}


def test_scale_one_or_absent_leaves_the_preset_unchanged():
    paper = resolve_preset(None, "paper")
    for scale in (1, 1.0):
        same = validate_preset({**paper, "layer_width": {**paper["layer_width"], "scale": scale}})
        assert preset_to_json(same) == preset_to_json(paper)
    scaled = validate_preset({"layer_width": {"rule": "median", "scale": 3}})
    assert scaled["layer_width"] == {"rule": "median", "scale": 3.0}
    for bad in (0, -1, "2", True):
        with pytest.raises(ConfigError, match=r"layer_width\.scale"):
            validate_preset({"layer_width": {"rule": "median", "scale": bad}})
    with pytest.raises(ConfigError, match="unknown key"):
        validate_preset({"input_width": {"rule": "fixed", "sigma": 8.0, "scale": 2}})


def test_family_members_are_the_single_presets_they_expand_to():
    from infoplane.presets import expand_preset_names, preset_families

    assert preset_families(FAMILIES) == {
        "sig": ["sig.x0.5", "sig.x1", "sig.x2"],
        "alp": ["alp.a1", "alp.a2"],
        "wid": ["wid.raw", "wid.med"],
    }
    paper, mine = resolve_preset(None, "paper"), FAMILIES["estimators"]["mine"]
    singles = {
        "sig.x0.5": {**paper, "layer_width": {**paper["layer_width"], "scale": 0.5}},
        "sig.x1": paper,
        "sig.x2": {**paper, "layer_width": {**paper["layer_width"], "scale": 2}},
        "alp.a2": {**mine, "alpha": 2},
        "wid.med": {**paper, "layer_width": {"rule": "median"}},
    }
    for member, single in singles.items():
        expected = resolve_preset({"estimators": {"one": single}}, "one")
        assert preset_to_json(resolve_preset(FAMILIES, member)) == preset_to_json(expected)
    assert available_presets(FAMILIES)[:3] == ["mine", "sig.x0.5", "sig.x1"]
    assert expand_preset_names(FAMILIES, ["paper", "sig", "sig.x2"]) == [
        "paper", "sig.x0.5", "sig.x1", "sig.x2"
    ]  # fmt: skip
    with pytest.raises(ConfigError, match=r"is a family; estimate one of its members: sig\.x0\.5"):
        resolve_preset(FAMILIES, "sig")


@pytest.mark.parametrize(
    ("family", "message"),
    [
        ({"base": "nope", "vary": "alpha", "values": [1]}, "'nope' is not a preset"),
        ({"base": "paper", "vary": "beta", "values": [1]}, "vary must be one of"),
        ({"base": "paper", "vary": "alpha", "values": []}, "non-empty list"),
        ({"base": "paper", "vary": "alpha"}, "lacks values"),
        ({"base": "paper", "vary": "alpha", "values": [1], "x": 1}, "unknown key"),
        ({"base": "paper", "vary": "alpha", "values": [1, 1.0]}, "two members named 'fam.a1'"),
        (
            {"base": "paper", "vary": "alpha", "values": [1, 1.0], "labels": ["p", "q"]},
            "'fam.p' and 'fam.q' the same preset",
        ),
        ({"base": "paper", "vary": "alpha", "values": [-1]}, "bad value -1.*alpha"),
        ({"base": "paper", "vary": "sigma_scale", "values": [0]}, "bad value 0.*scale"),
        ({"base": "kde", "vary": "sigma_scale", "values": [2]}, "needs a base with layer_width"),
        ({"base": "binning", "vary": "alpha", "values": [2]}, "alpha needs a matrix base"),
        ({"base": "paper", "vary": "alpha", "values": [1, 2], "labels": ["a"]}, "2 labels"),
        ({"base": "paper", "vary": "alpha", "values": [1], "labels": ["a/b"]}, "not a label"),
        (
            {"base": "paper", "vary": "layer_width", "values": [{"rule": "nope"}]},
            "layer_width.rule must be one of",
        ),
        ({"base": "other", "vary": "alpha", "values": [2]}, "'other' is a family"),
    ],
)
def test_bad_families_are_rejected_naming_the_key(family, message):
    presets = {
        "fam": {"family": family},
        "other": {"family": {"base": "paper", "vary": "alpha", "values": [2]}},
    }
    with pytest.raises(ConfigError, match=message):
        resolve_preset({"estimators": presets}, "paper")


def test_family_errors_and_member_clashes_fail_when_the_config_is_read(tmp_path):
    from infoplane.config import validate_config

    config = {
        "experiments": {
            "e": {
                "dataset": {"name": "digits"},
                "model": {"name": "mlp"},
                "estimators": ["sig", "sig.x2"],
            }
        },
        "estimators": {
            "sig": {"family": {"base": "paper", "vary": "sigma_scale", "values": [2]}},
        },
    }
    validate_config(config)  # a family and one of its members are both valid names
    clash = {**config, "estimators": {**config["estimators"], "sig.x2": {"alpha": 2.0}}}
    with pytest.raises(ConfigError, match=r"member 'sig\.x2' clashes"):
        validate_config(clash)
    family = {"base": "paper", "vary": "alpha", "values": [2]}
    extra = {"estimators": {"sig": {"family": family, "alpha": 2.0}}}
    with pytest.raises(ConfigError, match=r"estimators\.sig"):
        validate_config({**config, **extra})
