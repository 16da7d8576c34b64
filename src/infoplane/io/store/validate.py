"""Checking a store against the contract (errors and warnings) and summarising it."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infoplane.errors import StoreError

if TYPE_CHECKING:
    import zarr
from infoplane.io.store.layout import (
    PARTIAL_SUFFIX,
    REQUIRED_ATTRS,
    RESERVED_NAMES,
    SCHEMA_VERSION,
    SPLITS,
    chunk_files,
    dim_names,
    open_root,
    splits_of,
    step_label,
)
from infoplane.io.store.reader import open_split_dataset


@dataclass(frozen=True)
class StoreReport:
    """What :func:`validate_store` found in an activation store.

    Every message names where (split, variable, step where they apply) and how to fix it.

    Attributes
    ----------
    errors : list[str]
        Faults that make the store unreadable or its reads wrong: a missing or malformed array,
        wrong dims or dtypes, inconsistent shapes, a missing or corrupt chunk of a captured step,
        NaN/Inf or negative labels in captured data, fewer than 2 samples, steps out of order, a
        missing ``schema_version`` or ``layers``.
    warnings : list[str]
        The store reads correctly, but something is off: missing provenance attributes, stale or
        absent consolidated metadata, chunks that make reads slow, a missing ``epoch`` or
        ``index``, no captured step yet, attributes that mislead plain xarray.
    """

    errors: list[str]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings are allowed)."""
        return not self.errors


class _Findings:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, message: str) -> None:
        self.errors.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def report(self) -> StoreReport:
        return StoreReport(errors=list(self.errors), warnings=list(self.warnings))


@dataclass(frozen=True)
class _Spec:
    """What the contract asks of one variable of a split group."""

    kinds: str  # numpy dtype kinds the readers accept
    dtype: str  # the dtype to write
    layout: str  # the contract's line for it
    per_step: bool  # dims (step, sample, ...) rather than (step,)
    required: bool  # the readers need it


def _variable_specs(layers: Sequence[str]) -> dict[str, _Spec]:
    specs = {
        "step": _Spec("iu", "int64", "step(step) int64, the training iteration of each capture "
                      "(the index coordinate)", per_step=False, required=True),
        "epoch": _Spec("iuf", "float64", "epoch(step) float64, a coordinate", per_step=False,
                       required=False),
        "index": _Spec("iu", "int64", "index(step, sample) int64, the dataset indices of the "
                       "probe samples", per_step=True, required=False),
        "x": _Spec("f", "float32", "x(step, sample, ...) float32, the network inputs",
                   per_step=True, required=True),
        "y": _Spec("iu", "int64", "y(step, sample) int64, the labels", per_step=True,
                   required=True),
    }  # fmt: skip
    for name in layers:
        specs[name] = _Spec(
            "f", "float32 or float16",
            f"{name}(step, sample, ...) float32 or float16, the activations of layer {name!r}",
            per_step=True, required=True,
        )  # fmt: skip
    specs["captured"] = _Spec(
        "b", "bool", "captured(step) bool, True for each step whose variables are all written",
        per_step=False, required=True,
    )  # fmt: skip
    return specs


_ATTR_EXAMPLES = {
    "experiment": "'my_experiment'",
    "run": "'seed0'",
    "seed": "0",
    "model": "'MyNet'",
    "dataset": "'mnist'",
    "config": "{}",
    "device": "'cuda'",
}
#: Captured steps named in one message at most; the rest are counted.
_MAX_STEPS_NAMED = 5


def _set_attr_hint(p: str, key: str, value: str) -> str:
    return f"zarr.open_group({p!r}, mode='r+').attrs[{key!r}] = {value}"


def _layer_candidates(root: zarr.Group, splits: Sequence[str]) -> list[str]:
    """Names of the per-step arrays of the split groups that are not store variables."""
    names: list[str] = []
    for split in splits:
        group = root[split]
        for name in group.array_keys():
            dims = list(group[name].metadata.dimension_names or [])
            if name not in RESERVED_NAMES and dims[:2] == ["step", "sample"] and name not in names:
                names.append(name)
    return names


def _on_a_split(group_attrs: Mapping[str, Mapping], key: str) -> tuple[str, Any] | None:
    """(split, value) of the first split group that holds root attribute ``key`` itself."""
    return next(((s, a[key]) for s, a in group_attrs.items() if key in a), None)


def _copy_hint(group_attrs: Mapping[str, Mapping], p: str, key: str) -> str:
    there = _on_a_split(group_attrs, key)
    if there is None:
        return ""
    hint = _set_attr_hint(p, key, repr(there[1]))
    return f"; split group {there[0]!r} has it, but readers take the root's: {hint}"


def _check_schema_version(
    attrs: Mapping[str, Any], group_attrs: Mapping[str, Mapping], p: str, found: _Findings
) -> None:
    if "schema_version" not in attrs:
        found.error(
            "root attribute 'schema_version' is missing; set it"
            + (
                _copy_hint(group_attrs, p, "schema_version")
                or ": " + _set_attr_hint(p, "schema_version", "1")
            )
        )
    elif attrs["schema_version"] != SCHEMA_VERSION:
        found.error(
            f"root attribute 'schema_version' is {attrs['schema_version']!r}; this infoplane "
            f"reads version {SCHEMA_VERSION}: write the store in that layout "
            "(help(infoplane.io.store)) and set "
            + _set_attr_hint(p, "schema_version", str(SCHEMA_VERSION))
        )


def _check_provenance(
    attrs: Mapping[str, Any], group_attrs: Mapping[str, Mapping], p: str, found: _Findings
) -> None:
    absent = [key for key in REQUIRED_ATTRS if key not in attrs]
    if not absent:
        return
    named = ", ".join(repr(key) for key in absent)
    values = ", ".join(
        f"{key!r}: "
        + (repr(there[1]) if (there := _on_a_split(group_attrs, key)) else _ATTR_EXAMPLES[key])
        for key in absent
    )
    found.warn(
        f"root attribute{'s' if len(absent) > 1 else ''} {named} "
        f"{'are' if len(absent) > 1 else 'is'} missing; readers do not need them, but they "
        "record how the activations were made and results carry them on as provenance: set "
        f"them, e.g. zarr.open_group({p!r}, mode='r+').attrs.update({{{values}}})"
    )


def _check_layers_attr(
    attrs: Mapping[str, Any],
    group_attrs: Mapping[str, Mapping],
    candidates: Sequence[str],
    p: str,
    found: _Findings,
) -> list[str] | None:
    """The root attribute ``layers``; None when it cannot be used."""
    example = repr(list(candidates) or ["<layer>", "..."])
    if "layers" not in attrs:
        found.error(
            "root attribute 'layers' is missing; readers find the layer variables by it: set it "
            "to the layer names, input side first"
            + (_copy_hint(group_attrs, p, "layers") or ": " + _set_attr_hint(p, "layers", example))
        )
        return None
    layers = attrs["layers"]
    if (
        not isinstance(layers, list)
        or not layers
        or not all(isinstance(n, str) and n for n in layers)
    ):
        found.error(
            f"root attribute 'layers' is {layers!r}; it must be a non-empty list of layer "
            "names, input side first: " + _set_attr_hint(p, "layers", example)
        )
        return None
    if len(set(layers)) != len(layers):
        unique = list(dict.fromkeys(layers))
        found.error(
            f"root attribute 'layers' repeats names: {layers}; list each layer once: "
            + _set_attr_hint(p, "layers", repr(unique))
        )
        return None
    reserved = [name for name in layers if name in RESERVED_NAMES]
    if reserved:
        found.error(
            f"root attribute 'layers' names {reserved}, which are the store's own variables "
            f"or dimensions ({sorted(RESERVED_NAMES)}); rename those layer variables and their "
            "entries in layers"
        )
        return None
    return [str(name) for name in layers]


def _check_root(
    root: zarr.Group, splits: Sequence[str], p: str, found: _Findings
) -> list[str] | None:
    """Root attributes; returns the layers, or None when they cannot be known."""
    attrs = root.attrs.asdict()
    group_attrs = {split: root[split].attrs.asdict() for split in splits}
    _check_schema_version(attrs, group_attrs, p, found)
    _check_provenance(attrs, group_attrs, p, found)
    candidates = _layer_candidates(root, splits)
    layers = _check_layers_attr(attrs, group_attrs, candidates, p, found)
    if layers is None:
        return None
    unlisted = [name for name in candidates if name not in layers]
    if unlisted:
        found.warn(
            f"variables {unlisted} of the split groups have a (step, sample) axis but are not in "
            "the root attribute layers, so the estimators skip them; to estimate them, set "
            + _set_attr_hint(p, "layers", repr([*layers, *unlisted]))
            + " (input side first)"
        )
    return layers


def _check_array(array: zarr.Array, name: str, spec: _Spec, where: str, found: _Findings) -> bool:
    """Dims, dtype and decoding attributes of one variable; False on an error."""
    dims = list(array.metadata.dimension_names or [])
    if name in ("index", "y"):
        want = ["step", "sample"]
        good = dims == want
    elif spec.per_step:
        want = dim_names(name, array.shape[2:])
        good = array.ndim >= 2 and dims[:2] == want[:2]
    else:
        want = ["step"]
        good = dims == want
    if good and len(set(dims)) != len(dims):
        found.error(
            f"{where}: repeated dimension names {dims}; name the per-sample axes "
            f"{want[2:]} (<variable>_dim<k>)"
        )
        return False
    if not good:
        found.error(
            f"{where}: dimensions {dims or None} (shape {array.shape}), expected {want}; write "
            f"{spec.layout} with dims {tuple(want)} (xarray takes them from the Dataset "
            f"variable; zarr: dimension_names={want})"
        )
        return False
    if array.dtype.kind not in spec.kinds:
        found.error(
            f"{where}: dtype {array.dtype}, expected {spec.dtype}; write it as {spec.dtype}, "
            f"e.g. np.asarray(values, dtype={spec.dtype.split()[0]!r})"
        )
        return False
    scaling = sorted({"scale_factor", "add_offset"} & set(array.attrs.asdict()))
    if scaling:
        found.error(
            f"{where}: attributes {scaling} ask readers to rescale the stored values, but "
            "infoplane reads the stored values as they are, so its numbers would be wrong; "
            "write the values themselves without these attributes (xarray: ds = "
            "ds.drop_encoding() before to_zarr)"
        )
        return False
    return True


def _check_structure(
    group: zarr.Group, split: str, layers: Sequence[str], found: _Findings
) -> bool:
    """Dims, dtypes and shapes of one split group; False on an error."""
    before = len(found.errors)
    arrays = set(group.array_keys())
    present: dict[str, zarr.Array] = {}
    for name, spec in _variable_specs(layers).items():
        where = f"split {split!r}, variable {name!r}"
        if name not in arrays:
            if spec.required:
                drop = (
                    " (or drop the layer from the root attribute layers)" if name in layers else ""
                )
                found.error(f"{where}: missing; write {spec.layout}{drop}")
            elif name == "epoch":
                found.warn(
                    f"{where}: missing; readers give every step a NaN epoch, so results carry no "
                    "epochs to plot against, and open_writer cannot resume the store: write "
                    "epoch(step) float64 as a coordinate (xarray: coords={'epoch': ('step', "
                    "epochs)})"
                )
            else:
                found.warn(
                    f"{where}: missing; the estimators do not read it, but it records which "
                    f"dataset samples the probe holds and open_writer needs it: write {spec.layout}"
                )
            continue
        if _check_array(group[name], name, spec, where, found):
            present[name] = group[name]
    if len(found.errors) > before:
        return False

    n_steps = present["step"].shape[0]
    for name, array in present.items():
        if array.shape[0] != n_steps:
            found.error(
                f"split {split!r}, variable {name!r}: {array.shape[0]} entries on the step axis, "
                f"but 'step' has {n_steps}; every variable holds one entry per scheduled step "
                "(captured or not)"
            )
    per_step = [name for name in ("y", "x", "index", *layers) if name in present]
    reference = per_step[0]
    n_samples = present[reference].shape[1]
    for name in per_step[1:]:
        if present[name].shape[1] != n_samples:
            found.error(
                f"split {split!r}, variable {name!r}: {present[name].shape[1]} samples, but "
                f"{reference!r} has {n_samples}; every per-step variable holds the same probe "
                "samples in the same order"
            )
    if n_samples < 2:
        found.error(
            f"split {split!r}: {n_samples} sample per step; the estimators work on pairwise "
            "distances and need at least 2: capture a probe of 2 or more samples"
        )
    if len(found.errors) > before:
        return False
    try:
        steps = np.asarray(present["step"][:])
    except Exception as exc:  # zarr raises several types for a damaged chunk
        found.error(
            f"split {split!r}, variable 'step': cannot be read ({type(exc).__name__}: {exc}); "
            "rewrite it with the training iteration of every scheduled step"
        )
        return False
    if "epoch" in present:
        try:
            present["epoch"][:]
        except Exception as exc:  # zarr raises several types for a damaged chunk
            found.error(
                f"split {split!r}, variable 'epoch': cannot be read ({type(exc).__name__}: "
                f"{exc}); it is truncated or corrupt: rewrite it with the epoch of every "
                "scheduled step (or restore the store from a copy)"
            )
    bad = np.flatnonzero(np.diff(steps) <= 0)
    if bad.size:
        k = int(bad[0])
        found.error(
            f"split {split!r}, variable 'step': values are not strictly increasing (index {k} "
            f"is {int(steps[k])}, index {k + 1} is {int(steps[k + 1])}); write the steps in "
            "training order, each once, with the other variables in the same order"
        )
        return False
    return True


def _rewrite_hint(p: str, split: str, group: zarr.Group, layers: Sequence[str]) -> str:
    """The exact xarray call that writes a split as the contract says."""
    arrays = set(group.array_keys())
    encoding = {
        name: {"chunks": (1, *(int(n) for n in group[name].shape[1:]))}
        for name in ("index", "x", "y", *layers)
        if name in arrays
    }
    return (
        f"ds.to_zarr({p!r}, group={split!r}, mode='w', encoding={encoding!r}, "
        "write_empty_chunks=True) (ds: the split's Dataset)"
    )


def _check_chunking(
    group: zarr.Group, split: str, layers: Sequence[str], p: str, found: _Findings
) -> None:
    """Per-step variables should be chunked (1, N, *shape): readers read one step at a time."""
    details = []
    for name in ("index", "x", "y", *layers):
        if name not in group.array_keys():
            continue
        array = group[name]
        grid = tuple(int(n) for n in array.metadata.chunk_grid.chunk_shape)  # shards if sharded
        why = []
        if grid[0] > 1:
            why.append(f"{grid[0]} steps per chunk")
        if grid[1] < array.shape[1]:
            why.append("the sample axis split")
        if any(c < n for c, n in zip(grid[2:], array.shape[2:], strict=True)):
            why.append("the per-sample axes split")
        if why:
            details.append(f"{name!r} {grid} ({', '.join(why)})")
    if details:
        found.warn(
            f"split {split!r}: chunks of {', '.join(details)} are not one step per chunk; the "
            "store reads correctly, but reading one step decodes every chunk it touches (several "
            "steps, or many small chunks), which is slow. Write the split with "
            + _rewrite_hint(p, split, group, layers)
        )


def _consolidated_staleness(folder: Path) -> dict[str, list[str]] | None:
    """Node -> what differs between the consolidated metadata of ``folder`` and the files.

    None when ``folder/zarr.json`` holds no consolidated metadata.
    """
    try:
        meta = json.loads((folder / "zarr.json").read_text())
        listed = (meta.get("consolidated_metadata") or {}).get("metadata")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(listed, dict):
        return None
    on_disk: dict[str, dict[str, Any]] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        if here == folder or "zarr.json" not in filenames:
            continue
        try:
            node = json.loads((here / "zarr.json").read_text())
        except (OSError, ValueError):
            continue  # a damaged zarr.json is reported by the structure checks
        if not isinstance(node, dict):
            continue
        node.pop("consolidated_metadata", None)
        on_disk[here.relative_to(folder).as_posix()] = node
        if node.get("node_type") == "array":
            dirnames[:] = []  # chunks below
    stale: dict[str, list[str]] = {}
    for key in sorted(set(on_disk) | set(listed)):
        if key not in listed:
            stale[key] = ["not listed"]
        elif key not in on_disk:
            stale[key] = ["listed, but not on disk"]
        else:
            copy = dict(listed[key]) if isinstance(listed[key], dict) else {}
            copy.pop("consolidated_metadata", None)
            fields = sorted(
                k for k in set(copy) | set(on_disk[key]) if copy.get(k) != on_disk[key].get(k)
            )
            if fields:
                stale[key] = [f"{', '.join(fields)} differ"]
    return stale


def _check_consolidated(path: Path, splits: Sequence[str], p: str, found: _Findings) -> None:
    """Consolidated metadata is for other readers (xr.open_zarr): infoplane reads the files."""
    fix = f"run zarr.consolidate_metadata({p!r})"
    root = _consolidated_staleness(path)
    if root is None:
        found.warn(
            "the root zarr.json holds no consolidated metadata; infoplane reads without it, but "
            f"xr.open_zarr warns and opens every zarr.json of the store: {fix}"
        )
    places = {"": root or {}}
    for split in splits:
        nested = _consolidated_staleness(path / split)
        if nested:
            places[split] = nested
    for folder, stale in places.items():
        by_split: dict[str, list[str]] = {}
        for key, why in stale.items():
            full = f"{folder}/{key}" if folder else key
            split, _, name = full.partition("/")
            what = f"variable {name!r}" if name else "the group itself"
            by_split.setdefault(split, []).append(f"{what} ({'; '.join(why)})")
        file = f"{folder}/zarr.json" if folder else "the root zarr.json"
        for split, items in by_split.items():
            where = f"split {split!r}" if split in SPLITS else f"node {split!r}"
            found.warn(
                f"{where}: the consolidated metadata in {file} is stale for "
                f"{', '.join(items)}; infoplane reads the zarr.json files, but xr.open_zarr and "
                f"zarr.open_group read the stale copy: {fix}"
            )


def _check_xarray(path: Path, split: str, layers: Sequence[str], found: _Findings) -> None:
    """What open_activations and plain xarray see of a split group."""
    try:
        ds = open_split_dataset(path, split, consolidated=False)
    except Exception as exc:  # xarray raises many types for a group it cannot decode
        found.error(
            f"split {split!r}: xarray cannot open the group ({type(exc).__name__}: {exc}); "
            "open_activations reads through xarray: fix what it names (e.g. give each "
            "variable's per-sample axes their own names, <variable>_dim<k>)"
        )
        return
    with ds:
        if "epoch" in ds.variables and "epoch" not in ds.coords:
            found.warn(
                f"split {split!r}, variable 'epoch': not a coordinate for xarray (no data "
                "variable has the attribute coordinates='epoch'), so open_activations shows it "
                "as a data variable; write it as a coordinate (xarray: ds = "
                "ds.set_coords('epoch') before to_zarr)"
            )
        for name in ("index", "x", "y", *layers):
            if name not in ds.variables:
                continue
            encoding = ds[name].encoding
            for key in ("_FillValue", "missing_value"):
                value = encoding.get(key)
                if value is None:
                    continue
                integer = np.dtype(encoding.get("dtype", ds[name].dtype)).kind in "iu"
                if not integer and np.isnan(np.asarray(value, dtype=np.float64)).all():
                    continue  # NaN is the store's own fill value of floats
                effect = " and its values as float64" if integer else ""
                found.warn(
                    f"split {split!r}, variable {name!r}: attribute {key} = {value!r} makes plain "
                    f"xarray (xr.open_zarr) read stored values equal to it as NaN{effect}; "
                    "infoplane reads the stored values, so its readers are not affected: write "
                    f"it with encoding={{{name!r}: {{{key!r}: None}}}}"
                )


def _step_blocks(rows: Sequence[int], per_chunk: int) -> Iterator[list[int]]:
    """Runs of ``rows`` (ascending) that lie in the same chunk along the step axis."""
    for _, block in itertools.groupby(rows, key=lambda r: r // per_chunk):
        yield list(block)


def _steps_text(steps: np.ndarray, rows: Sequence[int]) -> str:
    labels = [step_label(steps, int(r)) for r in rows[:_MAX_STEPS_NAMED]]
    more = len(rows) - _MAX_STEPS_NAMED
    return ", ".join(labels) + (f" and {more} more" if more > 0 else "")


def _check_captured_chunks(
    path: Path,
    group: zarr.Group,
    split: str,
    layers: Sequence[str],
    rewrite: str | None,
    found: _Findings,
) -> None:
    """Open every chunk of every captured step: it must exist, decode and hold sane values.

    ``rewrite`` is the xarray call that rewrites the split (None for a store infoplane wrote).
    """
    try:
        captured = np.asarray(group["captured"][:], dtype=bool)
    except Exception as exc:  # zarr raises several types for a damaged chunk
        found.error(
            f"split {split!r}, variable 'captured': cannot be read ({type(exc).__name__}: "
            f"{exc}); rewrite the flags, one bool per scheduled step: zarr.open_array("
            f"{str(path)!r}, path='{split}/captured', mode='r+')[:] = flags"
        )
        return
    rows = np.flatnonzero(captured)
    if rows.size == 0:
        found.warn(
            f"split {split!r}: no step is captured (captured is False everywhere), so the "
            "estimation stages have nothing to read here: run (or resume) training, or set "
            "captured to True for the steps that are written"
        )
        return
    steps = np.asarray(group["step"][:])
    if "epoch" in group.array_keys():
        try:
            epochs = np.asarray(group["epoch"][:], dtype=np.float64)
        except Exception:  # reported by _check_structure
            epochs = None
        if epochs is not None and epochs.shape == captured.shape:
            lost = [int(r) for r in rows if not np.isfinite(epochs[r])]
            if lost:
                found.warn(
                    f"split {split!r}, variable 'epoch', {_steps_text(steps, lost)}: NaN (the "
                    "fill value) although the step is captured, so its chunk was lost or never "
                    "written; results carry no epoch for these steps: write epoch(step) again "
                    "or restore the store from a copy"
                )
    for name in ("index", "x", "y", *layers):
        if name in group.array_keys():
            scan = _scan_chunks(group[name], path, rows)
            _report_chunks(scan, group[name], path, steps, f"split {split!r}, variable {name!r}",
                           name, rewrite, found)  # fmt: skip


@dataclass
class _ChunkScan:
    """What reading every captured row of one variable found, by row."""

    missing: dict[int, Path] = field(default_factory=dict)  # the first missing chunk file
    broken: dict[int, str] = field(default_factory=dict)  # the decode error
    nonfinite: dict[int, int] = field(default_factory=dict)  # the first non-finite sample
    negative: dict[int, int] = field(default_factory=dict)  # the smallest (negative) value


def _scan_chunks(array: zarr.Array, path: Path, rows: np.ndarray) -> _ChunkScan:
    """Check that every chunk of the rows exists, decodes and holds sane values."""
    scan = _ChunkScan()
    present = []
    for row in rows:
        files = [f for f in chunk_files(array, path, int(row)) if not f.is_file()]
        if files:
            scan.missing[int(row)] = files[0]
        else:
            present.append(int(row))
    per_chunk = int(array.metadata.chunk_grid.chunk_shape[0])
    # read the rows of one step-chunk together: a chunk of several steps is decoded once
    for block_rows in _step_blocks(present, per_chunk):
        try:
            values = np.asarray(array[block_rows[0] : block_rows[-1] + 1])
        except Exception as exc:  # zarr raises several types for a damaged chunk
            for row in block_rows:
                scan.broken[row] = f"{type(exc).__name__}: {exc}"
            continue
        for row in block_rows:
            step_values = values[row - block_rows[0]]
            if step_values.dtype.kind == "f":
                finite = np.isfinite(step_values).reshape(step_values.shape[0], -1)
                bad = np.flatnonzero(~finite.all(axis=1))
                if bad.size:
                    scan.nonfinite[row] = int(bad[0])
            elif (step_values < 0).any():
                scan.negative[row] = int(step_values.min())
    return scan


def _report_chunks(
    scan: _ChunkScan,
    array: zarr.Array,
    path: Path,
    steps: np.ndarray,
    where: str,
    name: str,
    rewrite: str | None,
    found: _Findings,
) -> None:
    """One error per kind of damage a scan found, naming the steps and the fix."""
    recapture = "recapture the step (open_writer(...).write) or restore the store from a copy"
    if scan.missing:
        first = scan.missing[min(scan.missing)].relative_to(path)
        if rewrite is None:
            fix = recapture
        else:
            fill = np.asarray(array.fill_value).item()
            fix = (
                f"zarr does not store a chunk whose values all equal the fill value "
                f"({fill!r}) unless write_empty_chunks=True, and readers refuse a missing "
                f"chunk: write the split with {rewrite} (or, if the file was lost, restore it)"
            )
        found.error(
            f"{where}, {_steps_text(steps, sorted(scan.missing))}: chunk file {first} is missing "
            f"although the step is marked captured; {fix}"
        )
    if scan.broken:
        row = min(scan.broken)
        found.error(
            f"{where}, {_steps_text(steps, sorted(scan.broken))}: the chunk cannot be decoded "
            f"({scan.broken[row]}); it is truncated or corrupt: "
            + (recapture if rewrite is None else f"rewrite the split ({rewrite}) or restore it")
        )
    if scan.nonfinite:
        marked = sorted(scan.nonfinite)
        found.error(
            f"{where}, {_steps_text(steps, marked)}: holds NaN or Inf values (first at sample "
            f"{scan.nonfinite[marked[0]]}); NaN is also the fill value of never-written data. "
            "Recapture the step, or, if the run diverged there, mark it uncaptured (set "
            f"captured to False at index {marked})"
        )
    if scan.negative:
        marked = sorted(scan.negative)
        if name == "index":
            what = "indices (-1 is the fill value: the step's indices were never written)"
            fix = "recapture the step or write its dataset indices"
        else:
            what = "labels"
            fix = "write the labels as class numbers 0..C-1"
        found.error(
            f"{where}, {_steps_text(steps, marked)}: holds negative {what}, down to "
            f"{scan.negative[marked[0]]}; {fix}"
        )


def _check_metadata_files(path: Path, split: str, found: _Findings) -> bool:
    """Every ``zarr.json`` of the split group and its arrays must parse; False when one does not."""
    folder = path / split
    for meta in [folder / "zarr.json", *sorted(folder.glob("*/zarr.json"))]:
        try:
            json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            found.error(
                f"split {split!r}: the metadata file {meta.relative_to(path)} cannot be read "
                f"({type(exc).__name__}: {exc}); it is truncated or corrupt: restore it from a "
                "copy, or rewrite the store"
            )
            return False
    return True


def _open_for_check(path: Path, found: _Findings) -> zarr.Group | None:
    if not (path / "zarr.json").is_file() and (path / ".zgroup").is_file():
        found.error(
            f"{path} is a Zarr v2 store; the activation store is Zarr v3: write it with "
            "zarr_format=3 (xarray: ds.to_zarr(path, group=split, zarr_format=3))"
        )
        return None
    if not (path / "zarr.json").is_file():
        try:
            open_root(path, mode="r")
        except StoreError as exc:
            found.error(str(exc))  # names the fix
        return None
    try:
        return open_root(path, mode="r")
    except StoreError as exc:
        found.error(
            f"{exc}; restore the root zarr.json from a copy, or rewrite the store as Zarr v3 "
            "(xarray: zarr_format=3)"
        )
        return None


def validate_store(path: str | os.PathLike) -> StoreReport:
    """Check a store against the contract; decode every chunk of every captured step.

    Errors are what makes reading the store impossible or wrong (what
    :func:`open_activations`, :func:`read_store_plan` and :class:`StoreReader` need); warnings are
    what is off in a store that still reads correctly. See :class:`StoreReport` for both lists.

    Returns
    -------
    StoreReport
        ``errors`` and ``warnings``, one message per problem, each naming the split, variable and
        step where they apply and how to fix it; ``ok`` is True when there is no error.
    """
    path = Path(path)
    found = _Findings()
    root = _open_for_check(path, found)
    if root is None:
        return found.report()
    p = str(path)
    splits = splits_of(root)
    # a split whose metadata zarr cannot parse is reported and left out of the other checks
    readable = [split for split in splits if _check_metadata_files(path, split, found)]
    layers = _check_root(root, readable, p, found)
    if not splits:
        found.error(
            f"no split group; write each probe split as its own group, some of {list(SPLITS)} "
            f"(xarray: ds.to_zarr({p!r}, group='train'))"
        )
    for other in sorted(set(root.group_keys()) - set(SPLITS)):
        found.warn(
            f"group {other!r} is not a probe split, so readers ignore it; name the split groups "
            f"{' and '.join(repr(s) for s in SPLITS)}"
        )
    _check_consolidated(path, splits, p, found)
    if layers is None:
        return found.report()  # the variables to check are not known
    written_by_infoplane = "infoplane_version" in root.attrs
    shapes: dict[str, dict[str, tuple[int, ...]]] = {}
    for split in readable:
        group = root[split]
        if not _check_structure(group, split, layers, found):
            continue  # the other checks assume the layout is right
        shapes[split] = {name: tuple(group[name].shape[2:]) for name in layers}
        _check_chunking(group, split, layers, p, found)
        _check_xarray(path, split, layers, found)
        rewrite = None if written_by_infoplane else _rewrite_hint(p, split, group, layers)
        _check_captured_chunks(path, group, split, layers, rewrite, found)
    for name in layers:
        per_split = {split: shape[name] for split, shape in shapes.items()}
        if len(set(per_split.values())) > 1:
            found.error(
                f"variable {name!r}: per-sample shapes differ between splits ({per_split}); a "
                "layer has one shape: capture the same layers of the same model in every split"
            )
    return found.report()


def _array_sizes(array: zarr.Array, root_path: Path) -> tuple[int, int, int]:
    """(chunk files, stored bytes, raw bytes) of the chunks written for ``array``."""
    folder = root_path / array.path
    files = stored = 0
    for dirpath, _, filenames in os.walk(folder):
        for filename in filenames:
            if filename == "zarr.json" or filename.endswith(PARTIAL_SUFFIX):
                continue
            files += 1
            stored += os.path.getsize(os.path.join(dirpath, filename))
    chunk_bytes = math.prod(array.chunks) * array.dtype.itemsize
    return files, stored, files * chunk_bytes


def _dir_size(path: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, names in os.walk(path) for f in names)


def store_info(path: str | os.PathLike) -> dict[str, Any]:
    """Summary of a store: attributes, layers, shapes, dtypes, steps, sizes.

    Returns
    -------
    dict
        ``path``, the root attributes (``experiment``, ``run``, ...; ``config`` left out),
        ``layers``, per split ``{n_samples, steps_planned, steps_captured, captured_steps,
        variables: {name: {shape, dtype, chunks_stored, stored_bytes, raw_bytes}}}``,
        ``size_on_disk``, ``stored_bytes``, ``raw_bytes`` and ``compression_ratio`` (raw / stored
        bytes of the chunks written; None before any).
    """
    path = Path(path)
    root = open_root(path, mode="r")
    attrs = root.attrs.asdict()
    info: dict[str, Any] = {"path": str(path)}
    info.update({k: v for k, v in attrs.items() if k != "config"})
    info["layers"] = list(attrs.get("layers", []))
    info["splits"] = {}
    raw_total = stored_total = 0
    for split in splits_of(root):
        broken = _Findings()
        if not _check_metadata_files(path, split, broken):
            raise StoreError(f"store {path}: {broken.errors[0]}")
        group = root[split]
        names = set(group.array_keys())
        entry: dict[str, Any] = {"variables": {}}
        if "captured" in names and "step" in names:
            try:
                captured = np.asarray(group["captured"][:], dtype=bool)
                steps = np.asarray(group["step"][:])
            except Exception as exc:
                raise StoreError(f"split {split!r} of {path}: {exc}") from exc
            entry["steps_planned"] = int(steps.size)
            entry["steps_captured"] = int(captured.sum())
            entry["captured_steps"] = steps[captured].tolist()
        for name in ("index", "x", "y", *info["layers"]):
            if name not in names:
                continue
            array = group[name]
            entry.setdefault("n_samples", int(array.shape[1]))
            files, stored, raw = _array_sizes(array, path)
            entry["variables"][name] = {
                "shape": list(array.shape[2:]),
                "dtype": str(array.dtype),
                "chunks_stored": files,
                "stored_bytes": stored,
                "raw_bytes": raw,
            }
            raw_total += raw
            stored_total += stored
        info["splits"][split] = entry
    info["size_on_disk"] = _dir_size(path)
    info["stored_bytes"] = stored_total
    info["raw_bytes"] = raw_total
    info["compression_ratio"] = raw_total / stored_total if stored_total else None
    return info
