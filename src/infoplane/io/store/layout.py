"""The store's layout: names, constants, codecs and the helpers every part of the store uses."""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from infoplane.errors import InputError, StoreError

if TYPE_CHECKING:
    import zarr


SCHEMA_VERSION: int = 1
SPLITS: tuple[str, ...] = ("train", "test")
REQUIRED_ATTRS: tuple[str, ...] = (
    "experiment",
    "run",
    "seed",
    "model",
    "dataset",
    "config",
    "device",
)
#: Names a layer may not take: the store's own variables and dimensions.
RESERVED_NAMES: frozenset[str] = frozenset(
    {"step", "epoch", "sample", "index", "x", "y", "captured"}
)
ActivationDtype = Literal["float32", "float16"]
ACTIVATION_DTYPES: tuple[str, ...] = ("float32", "float16")
#: Blosc-zstd level: on VGG activations level 1 stores within a few percent of level 5 at about
#: half the time of level 3 (see benchmarks/bench_capture.py).
BLOSC_LEVEL = 1
#: Variables of one step are compressed and written in parallel by this many threads at most.
WRITE_THREADS = min(8, os.cpu_count() or 1)
FLOAT16_MAX = float(np.finfo(np.float16).max)
PARTIAL_SUFFIX = ".partial"  # zarr's LocalStore writes chunks to *.partial, then renames
#: Root attributes that name a run; every product made from a store carries them on.
PROVENANCE_KEYS: tuple[str, ...] = ("experiment", "run", "seed", "model", "dataset")


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def dim_names(name: str, sample_shape: Sequence[int]) -> list[str]:
    return ["step", "sample", *(f"{name}_dim{k}" for k in range(len(sample_shape)))]


def chunk_codecs() -> tuple[Any, ...]:
    from zarr.codecs import BloscCodec, Crc32cCodec

    # The checksum turns any truncation or bit flip of a chunk into a decode error.
    return (BloscCodec(cname="zstd", clevel=BLOSC_LEVEL, shuffle="shuffle"), Crc32cCodec())


def jsonable(value: Any, where: str) -> Any:
    """Recursively convert ``value`` to plain JSON types (numpy scalars, tuples, paths)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, where) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise InputError(
        f"store attribute {where!r} has type {type(value).__name__}, which JSON cannot hold; "
        "pass numbers, strings, lists or mappings"
    )


def installed_torch_version() -> str | None:
    # Read from the installed distribution: importing torch here would make store I/O heavy.
    try:
        return importlib_metadata.version("torch")
    except importlib_metadata.PackageNotFoundError:
        return None


def open_root(path: Path, mode: Literal["r", "r+"]) -> zarr.Group:
    import zarr

    if not (path / "zarr.json").is_file():
        why = "no zarr.json" if path.exists() else "it does not exist"
        raise StoreError(
            f"no activation store at {path} ({why}); create one with "
            "`infoplane train` or infoplane.io.store.create_store"
        )
    try:
        # The files on disk are the truth; consolidated metadata is for other readers' speed.
        root = zarr.open_group(path, mode=mode, use_consolidated=False)
    except Exception as exc:  # zarr raises several types for damaged metadata
        raise StoreError(f"cannot open the Zarr store at {path}: {exc}") from exc
    if root.metadata.zarr_format != 3:
        raise StoreError(f"{path} is a Zarr v{root.metadata.zarr_format} store; expected Zarr v3")
    return root


def has_consolidated_metadata(path: Path) -> bool:
    try:
        return json.loads((path / "zarr.json").read_text()).get("consolidated_metadata") is not None
    except (OSError, ValueError, AttributeError):
        return False


def splits_of(root: zarr.Group) -> list[str]:
    groups = set(root.group_keys())
    return [s for s in SPLITS if s in groups]


def chunk_files(array: zarr.Array, root_path: Path, row: int) -> list[Path]:
    """Paths of the chunk files that hold step ``row`` of ``array`` (empty if unknown layout)."""
    grid = getattr(getattr(array.metadata, "chunk_grid", None), "chunk_shape", None)
    if grid is None or len(grid) != array.ndim or array.ndim == 0:
        return []
    first = row // grid[0]
    rest = [range(math.ceil(n / c)) for n, c in zip(array.shape[1:], grid[1:], strict=True)]
    return [
        root_path / array.path / array.metadata.encode_chunk_key((first, *coords))
        for coords in itertools.product(*rest)
    ]


def step_label(steps: np.ndarray, row: int) -> str:
    return f"step {int(steps[row])} (index {row})" if row < len(steps) else f"index {row}"


def per_step_variables(
    input_shape: tuple[int, ...], layer_shapes: Mapping[str, tuple[int, ...]], dtype: str
) -> dict[str, tuple[tuple[int, ...], str, Any]]:
    """Name -> (per-sample shape, dtype, fill value) of every variable written per step."""
    spec: dict[str, tuple[tuple[int, ...], str, Any]] = {
        # Fill values that cannot be mistaken for data: -1 is no index or label, NaN no number.
        "index": ((), "int64", -1),
        "x": (tuple(input_shape), "float32", float("nan")),
        "y": ((), "int64", -1),
    }
    for name, shape in layer_shapes.items():
        spec[name] = (tuple(shape), dtype, float("nan"))
    return spec
