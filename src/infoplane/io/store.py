"""The activation store: one Zarr v3 store per run, one xarray Dataset per probe split.

Layout (the public contract: stores written by other code that follow it are read and validated
the same way)::

    activations.zarr/            root attributes: schema_version, experiment, run, seed, model,
                                 dataset, layers, config, device, infoplane_version, torch_version
      train/  test/              one group per probe split
        step(step)               int64, training iteration of each capture (index coordinate)
        epoch(step)              float64 coordinate
        index(step, sample)      int64 dataset indices of the probe samples
        x(step, sample, ...)     float32 network inputs
        y(step, sample)          int64 labels
        <layer>(step, sample, ...)   float32 or float16, one per recorded layer
        captured(step)           bool, set only after every variable of the step is written

Every per-step variable is chunked one step per chunk, ``(1, N, *shape)``, compressed with
Blosc-zstd (byte shuffle) and protected by a CRC32C checksum, so a truncated or corrupt chunk is
an error and never a silent wrong number. Trailing dimensions are named ``<variable>_dim<k>``.

The capture schedule is known up front: :func:`create_store` allocates every array for every
step, and :meth:`ActivationStoreWriter.write` fills one step with region writes. Metadata never
changes after creation, so the consolidated metadata written then stays valid, including for the
store of a killed writer. Readers (:func:`open_activations`) see captured steps only.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from infoplane import __version__
from infoplane.errors import InputError, StoreError
from infoplane.io.files import digest, replacing

if TYPE_CHECKING:
    import xarray as xr
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
_FLOAT16_MAX = float(np.finfo(np.float16).max)
_PARTIAL_SUFFIX = ".partial"  # zarr's LocalStore writes chunks to *.partial, then renames


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _dims(name: str, sample_shape: Sequence[int]) -> list[str]:
    return ["step", "sample", *(f"{name}_dim{k}" for k in range(len(sample_shape)))]


def _compressors() -> tuple[Any, ...]:
    from zarr.codecs import BloscCodec, Crc32cCodec

    # The checksum turns any truncation or bit flip of a chunk into a decode error.
    return (BloscCodec(cname="zstd", clevel=BLOSC_LEVEL, shuffle="shuffle"), Crc32cCodec())


def _jsonable(value: Any, where: str) -> Any:
    """Recursively convert ``value`` to plain JSON types (numpy scalars, tuples, paths)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist(), where)
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


def _torch_version() -> str | None:
    # Read from the installed distribution: importing torch here would make store I/O heavy.
    try:
        return importlib_metadata.version("torch")
    except importlib_metadata.PackageNotFoundError:
        return None


def _open_root(path: Path, mode: Literal["r", "r+"]) -> zarr.Group:
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


def _has_consolidated_metadata(path: Path) -> bool:
    try:
        return json.loads((path / "zarr.json").read_text()).get("consolidated_metadata") is not None
    except (OSError, ValueError, AttributeError):
        return False


def _splits_of(root: zarr.Group) -> list[str]:
    groups = set(root.group_keys())
    return [s for s in SPLITS if s in groups]


def _chunk_files(array: zarr.Array, root_path: Path, row: int) -> list[Path]:
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


def _step_label(steps: np.ndarray, row: int) -> str:
    return f"step {int(steps[row])} (index {row})" if row < len(steps) else f"index {row}"


def _per_step_variables(
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


# --------------------------------------------------------------------------------------------
# creation
# --------------------------------------------------------------------------------------------


def _check_schedule(steps: Any, epochs: Any) -> tuple[np.ndarray, np.ndarray]:
    steps_arr = np.asarray(steps)
    if steps_arr.ndim != 1 or steps_arr.size == 0:
        raise InputError(
            f"steps must be a non-empty 1-D sequence of ints, got shape {steps_arr.shape}"
        )
    if not np.issubdtype(steps_arr.dtype, np.integer):
        raise InputError(
            f"steps must be integers (training iterations), got dtype {steps_arr.dtype}"
        )
    steps_arr = steps_arr.astype(np.int64)
    if (steps_arr < 0).any() or (np.diff(steps_arr) <= 0).any():
        raise InputError(
            f"steps must be non-negative and strictly increasing, got {steps_arr.tolist()}"
        )
    epochs_arr = np.asarray(epochs, dtype=np.float64)
    if epochs_arr.shape != steps_arr.shape:
        raise InputError(
            f"epochs has shape {epochs_arr.shape}; give one epoch per step ({steps_arr.size})"
        )
    if not np.isfinite(epochs_arr).all():
        raise InputError("epochs must be finite numbers")
    return steps_arr, epochs_arr


def _check_layers(
    layer_shapes: Mapping[str, Sequence[int]], input_shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    if not layer_shapes:
        raise InputError("layer_shapes is empty; name at least one layer to record")
    shapes = {}
    for name, shape in layer_shapes.items():
        if not isinstance(name, str) or not name or "/" in name or name.startswith("__"):
            raise InputError(
                f"layer name {name!r} cannot name a Zarr array: use a non-empty string "
                "without '/' that does not start with '__'"
            )
        if name in RESERVED_NAMES:
            raise InputError(
                f"layer name {name!r} is reserved by the store ({sorted(RESERVED_NAMES)}); "
                "rename the layer"
            )
        shapes[name] = tuple(int(n) for n in shape)
        if any(n < 1 for n in shapes[name]):
            raise InputError(f"layer {name!r} has shape {shapes[name]}; sizes must be >= 1")
    dim_names = {d for name, shape in shapes.items() for d in _dims(name, shape)[2:]}
    dim_names.update(_dims("x", input_shape)[2:])
    clash = sorted(dim_names & set(shapes))
    if clash:
        raise InputError(
            f"layer names {clash} collide with dimension names of other variables; rename them"
        )
    return shapes


def _check_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise InputError(
            f"store attributes miss {missing}; pass all of {list(REQUIRED_ATTRS)} "
            "(config is the resolved experiment mapping)"
        )
    reserved = {"layers", "schema_version"} & set(attrs)
    if reserved:
        raise InputError(f"store attributes {sorted(reserved)} are set by the writer; drop them")
    return {str(k): _jsonable(v, str(k)) for k, v in attrs.items()}


def create_store(
    path: str | os.PathLike,
    *,
    steps: Sequence[int] | np.ndarray,
    epochs: Sequence[float] | np.ndarray,
    n_samples: Mapping[str, int],
    input_shape: Sequence[int],
    layer_shapes: Mapping[str, Sequence[int]],
    attrs: Mapping[str, Any],
    dtype: ActivationDtype = "float32",
    overwrite: bool = False,
) -> ActivationStoreWriter:
    """Create an activation store with every array allocated for the whole capture schedule.

    Parameters
    ----------
    path
        Directory of the new store (``.../activations.zarr``).
    steps, epochs
        The capture schedule: strictly increasing training iterations and the epoch (float) of
        each.
    n_samples
        Probe size per split, e.g. ``{"train": 100, "test": 200}``; keys among :data:`SPLITS`.
    input_shape
        Per-sample shape of the network input ``x``.
    layer_shapes
        Ordered mapping, input side first, of layer name to per-sample activation shape.
    attrs
        ``experiment, run, seed, model, dataset, config, device`` (and any extra JSON values);
        the writer adds ``layers``, ``schema_version``, ``infoplane_version``, ``torch_version``.
    dtype
        ``"float32"`` or ``"float16"`` for the layer activations (``x`` stays float32).
    overwrite
        Replace an existing store at ``path``.

    Returns
    -------
    ActivationStoreWriter
    """
    import zarr

    path = Path(path)
    steps_arr, epochs_arr = _check_schedule(steps, epochs)
    if dtype not in ACTIVATION_DTYPES:
        raise InputError(f"dtype must be one of {ACTIVATION_DTYPES}, got {dtype!r}")
    unknown = sorted(set(n_samples) - set(SPLITS))
    if not n_samples or unknown:
        raise InputError(f"n_samples keys must be among {SPLITS}, got {sorted(n_samples)}")
    for split, n in n_samples.items():
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"n_samples[{split!r}] must be a positive int, got {n!r}")
    input_shape = tuple(int(n) for n in input_shape)
    if any(n < 1 for n in input_shape):
        raise InputError(f"input_shape {input_shape} has a size < 1")
    shapes = _check_layers(layer_shapes, input_shape)
    root_attrs = _check_attrs(attrs)
    root_attrs.update(
        schema_version=SCHEMA_VERSION,
        layers=list(shapes),
        activation_dtype=dtype,
        infoplane_version=__version__,
    )
    torch_version = _torch_version()
    if torch_version is not None:
        root_attrs["torch_version"] = torch_version

    if path.exists():
        if not overwrite:
            raise StoreError(
                f"{path} already exists; pass overwrite=True to replace it, or open_writer() "
                "to resume writing it"
            )
        if not path.is_dir() or (not (path / "zarr.json").exists() and any(path.iterdir())):
            raise StoreError(f"{path} exists and is not a Zarr store; not replacing it")

    # Built under a scratch name and moved into place: a store at `path` is always complete.
    with replacing(path, tag="creating") as tmp:
        root = zarr.open_group(tmp, mode="w-", zarr_format=3, attributes=root_attrs)
        spec = _per_step_variables(input_shape, shapes, dtype)
        for split, n in n_samples.items():
            _create_split(root, split, int(n), steps_arr, epochs_arr, spec)
        with warnings.catch_warnings():
            # zarr notes that consolidated metadata is not yet in the v3 spec; xarray reads it.
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(tmp)
    return open_writer(path)


def _create_split(
    root: zarr.Group,
    split: str,
    n: int,
    steps: np.ndarray,
    epochs: np.ndarray,
    spec: Mapping[str, tuple[tuple[int, ...], str, Any]],
) -> None:
    group = root.create_group(split, attributes={"split": split})
    n_steps = steps.size
    compressors = _compressors()
    full = {"write_empty_chunks": True}
    step = group.create_array(
        "step", shape=(n_steps,), dtype="int64", chunks=(n_steps,), compressors=compressors,
        fill_value=-1, dimension_names=["step"], config=full,
    )  # fmt: skip
    step[:] = steps
    epoch = group.create_array(
        "epoch", shape=(n_steps,), dtype="float64", chunks=(n_steps,), compressors=compressors,
        fill_value=float("nan"), dimension_names=["step"], config=full,
    )  # fmt: skip
    epoch[:] = epochs
    for name, (shape, dtype, fill) in spec.items():
        group.create_array(
            name,
            shape=(n_steps, n, *shape),
            dtype=dtype,
            chunks=(1, n, *shape),
            compressors=compressors,
            fill_value=fill,
            dimension_names=_dims(name, shape),
            # "coordinates" is how xarray learns that epoch is a coordinate on step.
            attributes={"coordinates": "epoch"},
            config=full,
        )
    captured = group.create_array(
        "captured", shape=(n_steps,), dtype="bool", chunks=(n_steps,), compressors=compressors,
        fill_value=False, dimension_names=["step"], attributes={"coordinates": "epoch"},
        config=full,
    )  # fmt: skip
    captured[:] = False


# --------------------------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------------------------


def open_writer(path: str | os.PathLike) -> ActivationStoreWriter:
    """Reopen an existing store to resume writing (see :meth:`ActivationStoreWriter.write`)."""
    path = Path(path)
    root = _open_root(path, mode="r+")
    version = root.attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema_version {version!r}; this infoplane writes version "
            f"{SCHEMA_VERSION}. Write a new store (create_store) instead of resuming this one"
        )
    # Leftovers of chunk writes interrupted by a kill; the chunks themselves are rewritten.
    for leftover in path.rglob(f"*{_PARTIAL_SUFFIX}"):
        leftover.unlink(missing_ok=True)
    return ActivationStoreWriter(path, root)


class ActivationStoreWriter:
    """Writes one captured step at a time into a store made by :func:`create_store`.

    Use :func:`create_store` or :func:`open_writer` to obtain one. One writer per store at a
    time; every write is a region write of whole chunks, so rewriting a step is idempotent.

    Attributes
    ----------
    path : Path
    steps : np.ndarray
        The capture schedule (int64 training iterations).
    epochs : np.ndarray
    layers : list[str]
        Recorded layers, input side first.
    splits : list[str]
    n_samples : dict[str, int]
    input_shape : tuple[int, ...]
    layer_shapes : dict[str, tuple[int, ...]]
    dtype : str
        Storage dtype of the layer activations.
    """

    def __init__(self, path: Path, root: zarr.Group) -> None:
        self.path = Path(path)
        self.layers: list[str] = [str(name) for name in root.attrs.get("layers", [])]
        self.splits = _splits_of(root)
        if not self.splits:
            raise StoreError(f"{path} has no split group; expected some of {SPLITS}")
        full = {"write_empty_chunks": True}  # a chunk equal to the fill value is still data
        self._arrays: dict[str, dict[str, zarr.Array]] = {}
        for split in self.splits:
            group = root[split]
            names = ["step", "epoch", "index", "x", "y", *self.layers, "captured"]
            missing = [n for n in names if n not in group.array_keys()]
            if missing:
                raise StoreError(f"{path}: split {split!r} lacks variables {missing}")
            self._arrays[split] = {n: group[n].with_config(full) for n in names}
        first = self._arrays[self.splits[0]]
        self.steps: np.ndarray = np.asarray(first["step"][:], dtype=np.int64)
        self.epochs: np.ndarray = np.asarray(first["epoch"][:], dtype=np.float64)
        for split in self.splits[1:]:
            if not np.array_equal(self._arrays[split]["step"][:], self.steps):
                raise StoreError(f"{path}: splits {self.splits} have different step schedules")
        self._row = {int(s): i for i, s in enumerate(self.steps)}
        self.n_samples = {s: int(self._arrays[s]["index"].shape[1]) for s in self.splits}
        self.input_shape = tuple(first["x"].shape[2:])
        self.layer_shapes = {name: tuple(first[name].shape[2:]) for name in self.layers}
        self.dtype = str(first[self.layers[0]].dtype) if self.layers else "float32"

    def __repr__(self) -> str:
        return (
            f"ActivationStoreWriter({str(self.path)!r}, splits={self.splits}, "
            f"steps={self.steps.size}, layers={self.layers})"
        )

    def _split_arrays(self, split: str) -> dict[str, zarr.Array]:
        if split not in self._arrays:
            raise InputError(f"split {split!r} is not in {self.path}; it has {self.splits}")
        return self._arrays[split]

    def captured(self, split: str) -> np.ndarray:
        """Boolean flag per schedule step: True where ``split`` holds a complete step."""
        return np.asarray(self._split_arrays(split)["captured"][:], dtype=bool)

    def next_uncaptured_index(self) -> int | None:
        """First schedule index not captured in every split, or None when all are."""
        done = np.logical_and.reduce([self.captured(s) for s in self.splits])
        missing = np.flatnonzero(~done)
        return int(missing[0]) if missing.size else None

    def write(
        self,
        split: str,
        step: int,
        *,
        index: Any,
        x: Any,
        y: Any,
        activations: Mapping[str, Any],
    ) -> None:
        """Write one captured step of one split.

        Every variable is written with a region write of its own chunk; ``captured`` is set only
        afterwards, so a writer killed mid-step leaves that step uncaptured. Writing a step again
        replaces it.

        Parameters
        ----------
        split, step
            The probe split and the training iteration (must be in the schedule).
        index, y
            (N,) integer dataset indices and labels of the probe samples.
        x
            (N, *input_shape) network inputs.
        activations
            Layer name -> (N, *layer_shape) array, for exactly the store's layers.
        """
        arrays = self._split_arrays(split)
        if int(step) not in self._row:
            raise InputError(
                f"step {step} is not in the capture schedule of {self.path} "
                f"(steps {self.steps[0]}..{self.steps[-1]}, {self.steps.size} captures)"
            )
        row = self._row[int(step)]
        data = self._prepare(split, int(step), index, x, y, activations)
        flags = arrays["captured"]
        try:
            if flags[row]:
                flags[row] = False  # a rewrite must not look complete while in progress
            # Compression dominates and releases the GIL: write the variables in parallel. The
            # pool is joined (every write done or failed) before the flag can be set.
            with ThreadPoolExecutor(min(WRITE_THREADS, len(data))) as pool:
                for done in [pool.submit(arrays[n].__setitem__, row, v) for n, v in data.items()]:
                    done.result()
            flags[row] = True
        except Exception as exc:
            raise StoreError(
                f"writing split {split!r}, step {step} of {self.path} failed: {exc}"
            ) from exc

    def _prepare(
        self, split: str, step: int, index: Any, x: Any, y: Any, activations: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        n = self.n_samples[split]
        where = f"split {split!r}, step {step}"
        data = {
            "index": _as_labels(index, n, "index", where),
            "x": _as_floats(x, (n, *self.input_shape), "float32", "x", where),
            "y": _as_labels(y, n, "y", where),
        }
        missing = [name for name in self.layers if name not in activations]
        extra = sorted(set(activations) - set(self.layers))
        if missing or extra:
            raise InputError(
                f"{where}: activations must hold exactly the store's layers {self.layers}; "
                f"missing {missing}, unexpected {extra}"
            )
        for name in self.layers:
            shape = (n, *self.layer_shapes[name])
            data[name] = _as_floats(activations[name], shape, self.dtype, f"layer {name!r}", where)
        return data


def _as_labels(values: Any, n: int, what: str, where: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise InputError(f"{where}: {what} has shape {arr.shape}, expected ({n},)")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{where}: {what} must be integers, got dtype {arr.dtype}")
    if (arr < 0).any():
        raise InputError(f"{where}: {what} has negative entries")
    return arr.astype(np.int64, copy=False)


def _as_floats(
    values: Any, shape: tuple[int, ...], dtype: str, what: str, where: str
) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != shape:
        raise InputError(
            f"{where}: {what} has shape {arr.shape}, expected {shape} (probe size first)"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{where}: {what} must be numeric, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):  # overflow to float16 is detected and named below
        out = arr.astype(dtype, copy=False)
    if dtype == "float16" and np.issubdtype(arr.dtype, np.floating):
        overflow = np.isinf(out) & np.isfinite(arr)
        if overflow.any():
            raise InputError(
                f"{where}: {what} has values beyond the float16 range (±{_FLOAT16_MAX:g}, "
                f"largest |value| {float(np.nanmax(np.abs(arr[np.isfinite(arr)]))):.4g}); "
                "store this run with dtype float32"
            )
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------
# the reader
# --------------------------------------------------------------------------------------------

#: Root attributes that name a run; every product made from a store carries them on.
PROVENANCE_KEYS: tuple[str, ...] = ("experiment", "run", "seed", "model", "dataset")


@dataclass(frozen=True)
class SplitPlan:
    """The captured steps of one split and where they lie on the store's step axis."""

    split: str
    steps: np.ndarray  # captured steps (training iterations), ascending
    epochs: np.ndarray
    rows: np.ndarray  # their positions on the store's step axis
    n_samples: int


@dataclass(frozen=True)
class StorePlan:
    """What a reader needs to know of a store before reading any step (metadata only)."""

    path: str
    layers: list[str]
    layer_shapes: dict[str, tuple[int, ...]]
    input_shape: tuple[int, ...]
    splits: dict[str, SplitPlan]
    attrs: dict[str, Any]  # the provenance keys present (PROVENANCE_KEYS)
    fingerprint: str  # digest of every root attribute: the run's settings and versions

    @property
    def dims(self) -> dict[str, int]:
        """Features per sample of every layer (the flattened activation size)."""
        return {name: math.prod(shape) for name, shape in self.layer_shapes.items()}

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)


def _captured_rows(group: zarr.Group, split: str, path: Path) -> np.ndarray:
    try:
        captured = np.asarray(group["captured"][...], dtype=bool)
    except Exception as exc:  # zarr raises several types for a damaged chunk
        raise StoreError(
            f"split {split!r} of {path}: the captured flags cannot be read ({exc}); "
            "run `infoplane store validate` for details"
        ) from exc
    return np.flatnonzero(captured)


def read_store_plan(path: str | os.PathLike, splits: Sequence[str] | None = None) -> StorePlan:
    """Read a store's metadata: layers, shapes and the captured steps of each split.

    Parameters
    ----------
    path
        The activation store.
    splits
        Splits to plan (default: every split of the store).

    Raises
    ------
    StoreError
        The path is not an activation store, a split or variable is missing, or nothing is
        captured.
    """
    path = Path(path)
    root = _open_root(path, mode="r")
    attrs = root.attrs.asdict()
    layers = [str(name) for name in attrs.get("layers") or []]
    if not layers:
        raise StoreError(
            f"{path} is not an activation store: its attributes lack 'layers' "
            "(write it with infoplane.io.store.create_store)"
        )
    available = _splits_of(root)
    wanted = list(splits) if splits else available
    missing = [name for name in wanted if name not in available]
    if missing or not wanted:
        raise StoreError(f"store {path} has no split group(s) {missing or list(SPLITS)}")
    plans: dict[str, SplitPlan] = {}
    layer_shapes: dict[str, tuple[int, ...]] = {}
    input_shape: tuple[int, ...] = ()
    for split in wanted:
        group = root[split]
        names = set(group.array_keys())
        for name in ["x", "y", "step", "captured", *layers]:
            if name not in names:
                raise StoreError(
                    f"store {path}, split {split!r}: variable {name!r} is missing "
                    f"(layers listed in the store attributes: {', '.join(layers)})"
                )
        rows = _captured_rows(group, split, path)
        steps = np.asarray(group["step"][...], dtype=np.int64)
        epochs = (
            np.asarray(group["epoch"][...], dtype=np.float64)
            if "epoch" in names
            else np.full(steps.shape, np.nan)
        )
        rows = rows[np.argsort(steps[rows], kind="stable")]
        plans[split] = SplitPlan(split, steps[rows], epochs[rows], rows, int(group["y"].shape[1]))
        for name in layers:
            shape = tuple(int(s) for s in group[name].shape[2:])
            if layer_shapes.setdefault(name, shape) != shape:
                raise StoreError(f"store {path}: layer {name!r} has different shapes per split")
        input_shape = tuple(int(s) for s in group["x"].shape[2:])
    if not any(len(p.steps) for p in plans.values()):
        raise StoreError(
            f"store {path} has no captured step in split(s) {', '.join(wanted)}; "
            "run (or resume) training first"
        )
    keep = {k: attrs[k] for k in PROVENANCE_KEYS if k in attrs}
    return StorePlan(
        str(path.resolve()), layers, layer_shapes, input_shape, plans, keep, digest(attrs)
    )


def _read_rows(
    array: zarr.Array,
    root_path: Path,
    where: Callable[[Sequence[int]], str],
    rows: np.ndarray,
    rest: tuple[Any, ...] = (),
) -> np.ndarray:
    """Rows ``rows`` of a per-step ``array`` (then ``rest`` on the other axes), checked.

    zarr alone returns the fill value for a missing chunk: every chunk of the rows must exist. A
    chunk that does not decode (truncated, corrupt) is a StoreError naming the place.
    """
    for row in rows:
        for chunk in _chunk_files(array, root_path, int(row)):
            if not chunk.is_file():
                raise StoreError(
                    f"{where([int(row)])}: chunk file {chunk.relative_to(root_path)} is missing "
                    "although the step is marked captured; recapture the step "
                    "(open_writer(...).write) or restore the store; `infoplane store validate` "
                    "lists every damaged chunk"
                )
    try:
        if rows.size and bool((np.diff(rows) == 1).all()):
            return np.asarray(array[(slice(int(rows[0]), int(rows[-1]) + 1), *rest)])
        return np.asarray(array.get_orthogonal_selection((rows, *rest)))
    except Exception as exc:  # zarr raises several types for a damaged chunk
        raise StoreError(
            f"{where([int(r) for r in rows])}: the chunk cannot be decoded "
            f"({type(exc).__name__}: {exc}); it is truncated or corrupt. Recapture the step "
            "(open_writer(...).write) or restore the store; `infoplane store validate` "
            "lists every damaged chunk"
        ) from exc


class StoreReader:
    """Checked reads of whole steps from one activation store: what every reader goes through.

    Reading a step whose chunk is missing, truncated or corrupt raises
    :class:`~infoplane.errors.StoreError` naming the store, split, variable and step.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._root = _open_root(self.path, mode="r")
        self._groups: dict[str, tuple[zarr.Group, np.ndarray]] = {}

    def _group(self, split: str) -> tuple[zarr.Group, np.ndarray]:
        if split not in self._groups:
            if split not in _splits_of(self._root):
                raise StoreError(
                    f"split {split!r} is not in {self.path}; it has {_splits_of(self._root)}"
                )
            group = self._root[split]
            self._groups[split] = (group, np.asarray(group["step"][...]))
        return self._groups[split]

    def where(self, split: str, name: str, steps: np.ndarray, rows: Sequence[int]) -> str:
        labels = ", ".join(_step_label(steps, r) for r in rows)
        return f"store {self.path}, split {split!r}, variable {name!r}, {labels}"

    def read(self, split: str, name: str, row: int) -> np.ndarray:
        """Row ``row`` (a position on the store's step axis) of variable ``name``."""
        group, steps = self._group(split)
        if name not in group.array_keys():
            raise StoreError(f"store {self.path}, split {split!r}: variable {name!r} is missing")
        where = functools.partial(self.where, split, name, steps)
        return _read_rows(group[name], self.path, where, np.array([row]))[0]

    @property
    def attrs(self) -> dict[str, Any]:
        """The store's root attributes."""
        return self._root.attrs.asdict()

    def array(self, split: str, name: str) -> zarr.Array:
        """The Zarr array of one variable (for metadata: shape, dtype, chunks)."""
        return self._group(split)[0][name]

    def steps(self, split: str) -> np.ndarray:
        """Every scheduled step of ``split`` (captured or not), in store order."""
        return self._group(split)[1]


@functools.cache
def _captured_steps_class() -> type:
    """The lazily indexed array class of :func:`open_activations` (xarray imported on use)."""
    from xarray.backends import BackendArray
    from xarray.core.indexing import IndexingSupport, explicit_indexing_adapter

    class CapturedSteps(BackendArray):
        """Lazy view of the captured rows of one per-step variable."""

        def __init__(self, reader: StoreReader, split: str, name: str, rows: np.ndarray) -> None:
            array = reader.array(split, name)
            self._reader, self._split, self._name, self._rows = reader, split, name, rows
            self._array = array
            self.shape = (rows.size, *array.shape[1:])
            self.dtype = np.dtype(array.dtype)

        def __getitem__(self, key: Any) -> np.ndarray:
            return explicit_indexing_adapter(key, self.shape, IndexingSupport.BASIC, self._get)

        def _get(self, key: tuple[Any, ...]) -> np.ndarray:
            # ints become length-1 slices (squeezed afterwards): rows stay an array
            ints = (int, np.integer)
            squeeze = tuple(axis for axis, k in enumerate(key) if isinstance(k, ints))
            key = tuple(slice(k, k + 1) if isinstance(k, ints) else k for k in key)
            key = key + (slice(None),) * (len(self.shape) - len(key))
            rows = self._rows[key[0]]
            if rows.size == 0:
                shape = np.empty(self.shape, dtype=bool)[(slice(0, 0), *key[1:])].shape
                return np.empty(shape, self.dtype).squeeze(axis=squeeze)
            where = functools.partial(
                self._reader.where, self._split, self._name, self._reader.steps(self._split)
            )
            values = _read_rows(self._array, self._reader.path, where, rows, key[1:])
            return values.squeeze(axis=squeeze) if squeeze else values

    return CapturedSteps


def _open_split_dataset(path: Path, split: str, consolidated: bool) -> xr.Dataset:
    import xarray as xr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        return xr.open_dataset(
            path, engine="zarr", group=split, chunks=None, cache=False, consolidated=consolidated
        )


def open_activations(path: str | os.PathLike, split: str) -> xr.Dataset:
    """Lazy (dask) view of the captured steps of one split.

    Parameters
    ----------
    path
        The activation store.
    split
        ``"train"`` or ``"test"``.

    Returns
    -------
    xarray.Dataset
        Dims ``step`` (captured steps only) and ``sample``; variables ``index``, ``x``, ``y`` and
        one per layer, chunked one step per chunk; coordinates ``step`` and ``epoch``; the root
        attributes (``layers``, ``run``, ...) plus ``split``. Reading a missing, truncated or
        corrupt chunk raises :class:`~infoplane.errors.StoreError` naming variable and step.
    """
    import xarray as xr
    from xarray.core.indexing import LazilyIndexedArray

    path = Path(path)
    reader = StoreReader(path)
    reader.steps(split)  # a missing split is an error naming the splits there are
    try:
        lazy = _open_split_dataset(path, split, consolidated=False)
    except Exception as exc:
        raise StoreError(f"xarray cannot open split {split!r} of {path}: {exc}") from exc
    for required in ("step", "captured"):
        if required not in lazy.variables:
            raise StoreError(f"split {split!r} of {path} has no {required!r} variable")
    rows = _captured_rows(reader._root[split], split, path)
    data_vars = {}
    for name, var in lazy.data_vars.items():
        if name == "captured":
            continue
        if not var.dims or var.dims[0] != "step":
            data_vars[name] = var.variable
            continue
        # every read goes through the reader's chunk checks
        lazily = LazilyIndexedArray(_captured_steps_class()(reader, split, str(name), rows))
        data_vars[name] = xr.Variable(var.dims, lazily, attrs=var.attrs, encoding=var.encoding)
    layers = [str(n) for n in reader.attrs.get("layers", [])]
    order = [n for n in ("index", "x", "y", *layers) if n in data_vars]
    data_vars = {n: data_vars[n] for n in [*order, *(n for n in data_vars if n not in order)]}
    coords = {
        name: coord.variable[rows].load() if coord.dims[:1] == ("step",) else coord.variable.load()
        for name, coord in lazy.coords.items()
    }
    attrs = {**reader.attrs, **lazy.attrs, "split": split}
    view = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    # one step per dask chunk: a task reads exactly the chunk(s) of its own step; a fresh token
    # per view, since the store may be rewritten between two views
    return view.chunk({"step": 1}, name_prefix=f"infoplane-{split}-", token=uuid.uuid4().hex)


# --------------------------------------------------------------------------------------------
# validation and information
# --------------------------------------------------------------------------------------------


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


def _check_root(
    root: zarr.Group, splits: Sequence[str], p: str, found: _Findings
) -> list[str] | None:
    """Root attributes; returns the layers, or None when they cannot be known."""
    attrs = root.attrs.asdict()
    group_attrs = {split: root[split].attrs.asdict() for split in splits}

    def on_a_split(key: str) -> tuple[str, Any] | None:
        return next(((s, a[key]) for s, a in group_attrs.items() if key in a), None)

    def copy_hint(key: str) -> str:
        there = on_a_split(key)
        if there is None:
            return ""
        hint = _set_attr_hint(p, key, repr(there[1]))
        return f"; split group {there[0]!r} has it, but readers take the root's: {hint}"

    if "schema_version" not in attrs:
        found.error(
            "root attribute 'schema_version' is missing; set it"
            + (copy_hint("schema_version") or ": " + _set_attr_hint(p, "schema_version", "1"))
        )
    elif attrs["schema_version"] != SCHEMA_VERSION:
        found.error(
            f"root attribute 'schema_version' is {attrs['schema_version']!r}; this infoplane "
            f"reads version {SCHEMA_VERSION}: write the store in that layout "
            "(help(infoplane.io.store)) and set "
            + _set_attr_hint(p, "schema_version", str(SCHEMA_VERSION))
        )
    absent = [key for key in REQUIRED_ATTRS if key not in attrs]
    if absent:
        named = ", ".join(repr(key) for key in absent)
        values = ", ".join(
            f"{key!r}: {repr(there[1]) if (there := on_a_split(key)) else _ATTR_EXAMPLES[key]}"
            for key in absent
        )
        found.warn(
            f"root attribute{'s' if len(absent) > 1 else ''} {named} "
            f"{'are' if len(absent) > 1 else 'is'} missing; readers do not need them, but they "
            "record how the activations were made and results carry them on as provenance: set "
            f"them, e.g. zarr.open_group({p!r}, mode='r+').attrs.update({{{values}}})"
        )

    candidates = _layer_candidates(root, splits)
    example = repr(candidates or ["<layer>", "..."])
    if "layers" not in attrs:
        found.error(
            "root attribute 'layers' is missing; readers find the layer variables by it: set it "
            "to the layer names, input side first"
            + (copy_hint("layers") or ": " + _set_attr_hint(p, "layers", example))
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
    unlisted = [name for name in candidates if name not in layers]
    if unlisted:
        found.warn(
            f"variables {unlisted} of the split groups have a (step, sample) axis but are not in "
            "the root attribute layers, so the estimators skip them; to estimate them, set "
            + _set_attr_hint(p, "layers", repr([*layers, *unlisted]))
            + " (input side first)"
        )
    return [str(name) for name in layers]


def _check_array(array: zarr.Array, name: str, spec: _Spec, where: str, found: _Findings) -> bool:
    """Dims, dtype and decoding attributes of one variable; False on an error."""
    dims = list(array.metadata.dimension_names or [])
    if name in ("index", "y"):
        want = ["step", "sample"]
        good = dims == want
    elif spec.per_step:
        want = _dims(name, array.shape[2:])
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
        ds = _open_split_dataset(path, split, consolidated=False)
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
    labels = [_step_label(steps, int(r)) for r in rows[:_MAX_STEPS_NAMED]]
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
    recapture = "recapture the step (open_writer(...).write) or restore the store from a copy"
    for name in ("index", "x", "y", *layers):
        if name not in group.array_keys():
            continue
        array = group[name]
        missing: dict[int, Path] = {}
        broken: dict[int, str] = {}
        nonfinite: dict[int, int] = {}
        negative: dict[int, int] = {}
        per_chunk = int(array.metadata.chunk_grid.chunk_shape[0])
        present = []
        for row in rows:
            files = [f for f in _chunk_files(array, path, int(row)) if not f.is_file()]
            if files:
                missing[int(row)] = files[0]
            else:
                present.append(int(row))
        # read the rows of one step-chunk together: a chunk of several steps is decoded once
        for block_rows in _step_blocks(present, per_chunk):
            try:
                values = np.asarray(array[block_rows[0] : block_rows[-1] + 1])
            except Exception as exc:  # zarr raises several types for a damaged chunk
                for row in block_rows:
                    broken[row] = f"{type(exc).__name__}: {exc}"
                continue
            for row in block_rows:
                step_values = values[row - block_rows[0]]
                if step_values.dtype.kind == "f":
                    finite = np.isfinite(step_values).reshape(step_values.shape[0], -1)
                    bad = np.flatnonzero(~finite.all(axis=1))
                    if bad.size:
                        nonfinite[row] = int(bad[0])
                elif (step_values < 0).any():
                    negative[row] = int(step_values.min())
        where = f"split {split!r}, variable {name!r}"
        if missing:
            first = missing[min(missing)].relative_to(path)
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
                f"{where}, {_steps_text(steps, sorted(missing))}: chunk file {first} is missing "
                f"although the step is marked captured; {fix}"
            )
        if broken:
            row = min(broken)
            found.error(
                f"{where}, {_steps_text(steps, sorted(broken))}: the chunk cannot be decoded "
                f"({broken[row]}); it is truncated or corrupt: "
                + (recapture if rewrite is None else f"rewrite the split ({rewrite}) or restore it")
            )
        if nonfinite:
            marked = sorted(nonfinite)
            found.error(
                f"{where}, {_steps_text(steps, marked)}: holds NaN or Inf values (first at sample "
                f"{nonfinite[marked[0]]}); NaN is also the fill value of never-written data. "
                "Recapture the step, or, if the run diverged there, mark it uncaptured (set "
                f"captured to False at index {marked})"
            )
        if negative:
            marked = sorted(negative)
            if name == "index":
                what = "indices (-1 is the fill value: the step's indices were never written)"
                fix = "recapture the step or write its dataset indices"
            else:
                what = "labels"
                fix = "write the labels as class numbers 0..C-1"
            found.error(
                f"{where}, {_steps_text(steps, marked)}: holds negative {what}, down to "
                f"{negative[marked[0]]}; {fix}"
            )


def _open_for_check(path: Path, found: _Findings) -> zarr.Group | None:
    if not (path / "zarr.json").is_file() and (path / ".zgroup").is_file():
        found.error(
            f"{path} is a Zarr v2 store; the activation store is Zarr v3: write it with "
            "zarr_format=3 (xarray: ds.to_zarr(path, group=split, zarr_format=3))"
        )
        return None
    if not (path / "zarr.json").is_file():
        try:
            _open_root(path, mode="r")
        except StoreError as exc:
            found.error(str(exc))  # names the fix
        return None
    try:
        return _open_root(path, mode="r")
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
    splits = _splits_of(root)
    layers = _check_root(root, splits, p, found)
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
    for split in splits:
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
            if filename == "zarr.json" or filename.endswith(_PARTIAL_SUFFIX):
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
    root = _open_root(path, mode="r")
    attrs = root.attrs.asdict()
    info: dict[str, Any] = {"path": str(path)}
    info.update({k: v for k, v in attrs.items() if k != "config"})
    info["layers"] = list(attrs.get("layers", []))
    info["splits"] = {}
    raw_total = stored_total = 0
    for split in _splits_of(root):
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
