"""The package's layering: who may import whom (docs/architecture.md)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "infoplane"

#: Sub-packages and the infoplane sub-packages each may import. Top-level modules (config,
#: presets, errors, cli, testing) are listed under their own name.
ALLOWED = {
    "core": {"core", "errors"},
    "io": {"io", "errors"},
    "estimate": {"estimate", "core", "io", "errors", "presets", "config"},
    "train": {"train", "io", "errors", "config"},
    "report": {"report", "io", "errors", "presets"},
    "commands": {"commands", "core", "io", "estimate", "train", "report", "errors", "presets",
                 "config"},
    "config": {"errors", "presets"},
    "presets": {"errors", "config", "io"},
    "errors": set(),
    "testing": {"io", "report", "errors"},
    "cli": {"errors"},
}  # fmt: skip
#: Third-party libraries only some layers may import.
RESTRICTED = {
    "zarr": {"io"},
    "dask": {"estimate"},
    "distributed": {"estimate"},
    "dask_jobqueue": {"estimate"},
    "torch": {"train", "estimate"},
    "matplotlib": {"report"},
}


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "infoplane":
                names.update(f"infoplane.{alias.name}" for alias in node.names)
    return names


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_module_imports_only_the_layers_below_it(path):
    layer = _layer(path)
    allowed = ALLOWED[layer]
    wrong = []
    for name in _imports(path):
        top, _, rest = name.partition(".")
        if top == "infoplane" and rest:
            target = rest.split(".")[0]
            if target not in allowed and target != "__version__" and target != layer:
                wrong.append(name)
        elif top in RESTRICTED and layer not in RESTRICTED[top]:
            wrong.append(name)
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(wrong)}"


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_only_numpy_scipy_and_the_array_api(path):
    # torch tensors reach the core with their own namespace (array_api_compat); torch itself
    # is never imported there.
    stdlib = sys.stdlib_module_names
    allowed = {"numpy", "scipy", "array_api_compat", "infoplane", "__future__"}
    foreign = [
        name
        for name in _imports(path)
        if name.split(".")[0] not in allowed and name.split(".")[0] not in stdlib
    ]
    assert not foreign, f"core/{path.name} imports {foreign}"


def test_there_is_one_core_and_no_torch_twin_of_it():
    assert not (PACKAGE / "torch_core.py").exists()
    assert not [p for p in MODULES if "torch_core" in " ".join(_imports(p))]
