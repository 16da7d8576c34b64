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

import itertools
import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from infoplane import __version__
from infoplane.errors import InputError, StoreError

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
        raise StoreError(
            f"no activation store at {path} (no zarr.json); create one with "
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

    # Build under a temporary name and rename: a store at `path` is always complete.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.creating")
    try:
        root = zarr.open_group(tmp, mode="w-", zarr_format=3, attributes=root_attrs)
        spec = _per_step_variables(input_shape, shapes, dtype)
        for split, n in n_samples.items():
            _create_split(root, split, int(n), steps_arr, epochs_arr, spec)
        with warnings.catch_warnings():
            # zarr notes that consolidated metadata is not yet in the v3 spec; xarray reads it.
            warnings.filterwarnings("ignore", message="Consolidated metadata")
            zarr.consolidate_metadata(tmp)
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
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


class _CheckedStepArray:
    """Array-like over the captured steps of one per-step variable, read by dask step by step.

    Row ``k`` is row ``rows[k]`` of the stored variable. Before reading, it checks that the
    chunk files of the requested steps exist (zarr would silently return the fill value for a
    missing chunk); decode failures become a StoreError naming the split, variable and step.
    """

    def __init__(
        self,
        variable: xr.Variable,
        array: zarr.Array,
        *,
        rows: np.ndarray,
        root_path: Path,
        split: str,
        name: str,
        steps: np.ndarray,
    ) -> None:
        self._variable = variable
        self._array = array
        self._rows = rows
        self._root_path = root_path
        self._split = split
        self._name = name
        self._steps = steps
        self.shape = (rows.size, *variable.shape[1:])
        self.dtype = variable.dtype
        self.ndim = variable.ndim

    def _where(self, rows: Sequence[int]) -> str:
        labels = ", ".join(_step_label(self._steps, r) for r in rows)
        return f"split {self._split!r}, variable {self._name!r}, {labels} of {self._root_path}"

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        key = tuple(key) + (slice(None),) * (self.ndim - len(tuple(key)))
        rows = self._rows[key[0]]
        if rows.size == 0:
            return np.empty((0, *self._variable[(slice(0, 0), *key[1:])].shape[1:]), self.dtype)
        for row in rows:
            for chunk in _chunk_files(self._array, self._root_path, int(row)):
                if not chunk.is_file():
                    raise StoreError(
                        f"{self._where([int(row)])}: chunk file "
                        f"{chunk.relative_to(self._root_path)} is missing although the step is "
                        "marked captured; recapture the step (open_writer(...).write) or restore "
                        "the store; `infoplane store validate` lists every damaged chunk"
                    )
        contiguous = bool((np.diff(rows) == 1).all())
        first = slice(int(rows[0]), int(rows[-1]) + 1) if contiguous else rows
        try:
            return np.asarray(self._variable[(first, *key[1:])].values)
        except Exception as exc:
            raise StoreError(
                f"{self._where([int(r) for r in rows])}: the chunk cannot be decoded "
                f"({type(exc).__name__}: {exc}); it is truncated or corrupt. Recapture the step "
                "(open_writer(...).write) or restore the store; `infoplane store validate` "
                "lists every damaged chunk"
            ) from exc


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
    import dask.array as da
    import xarray as xr

    path = Path(path)
    root = _open_root(path, mode="r")
    splits = _splits_of(root)
    if split not in splits:
        raise StoreError(f"split {split!r} is not in {path}; it has {splits}")
    try:
        lazy = _open_split_dataset(path, split, consolidated=False)
    except Exception as exc:
        raise StoreError(f"xarray cannot open split {split!r} of {path}: {exc}") from exc
    for required in ("step", "captured"):
        if required not in lazy.variables:
            raise StoreError(f"split {split!r} of {path} has no {required!r} variable")
    steps = np.asarray(lazy["step"].values)
    try:
        captured = np.asarray(lazy["captured"].values, dtype=bool)
    except Exception as exc:
        raise StoreError(
            f"split {split!r} of {path}: the captured flags cannot be read ({exc}); "
            "run `infoplane store validate` for details"
        ) from exc

    group = root[split]
    rows = np.flatnonzero(captured)
    token = uuid.uuid4().hex  # a fresh dask name per view: the store may be rewritten
    data_vars = {}
    for name, var in lazy.data_vars.items():
        if name == "captured":
            continue
        if not var.dims or var.dims[0] != "step":
            data_vars[name] = var.variable
            continue
        array = group[name]
        checked = _CheckedStepArray(
            var.variable, array, rows=rows, root_path=path, split=split, name=str(name),
            steps=steps,
        )  # fmt: skip
        # One step per dask chunk: a task reads exactly the chunk(s) of its own step.
        chunks = (1, *(var.encoding.get("chunks") or array.chunks)[1:])
        darr = da.from_array(
            checked,
            chunks=chunks,
            name=f"infoplane-{split}-{name}-{token}",
            meta=np.empty((0,) * var.ndim, dtype=var.dtype),
            asarray=False,
            fancy=False,
            lock=False,
        )
        data_vars[name] = xr.Variable(var.dims, darr, attrs=var.attrs, encoding=var.encoding)
    layers = [str(n) for n in root.attrs.get("layers", [])]
    order = [n for n in ("index", "x", "y", *layers) if n in data_vars]
    data_vars = {n: data_vars[n] for n in [*order, *(n for n in data_vars if n not in order)]}
    coords = {
        name: coord.variable[rows].load() if coord.dims[:1] == ("step",) else coord.variable.load()
        for name, coord in lazy.coords.items()
    }
    attrs = {**root.attrs.asdict(), **lazy.attrs, "split": split}
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


# --------------------------------------------------------------------------------------------
# validation and information
# --------------------------------------------------------------------------------------------


def _expected_variables(layers: Sequence[str]) -> dict[str, str]:
    """Name -> required numpy dtype kind ('i' int, 'f' float, 'b' bool) of a split group."""
    return {
        "step": "i",
        "epoch": "f",
        "index": "i",
        "x": "f",
        "y": "i",
        **{name: "f" for name in layers},
        "captured": "b",
    }


def _check_root(root: zarr.Group) -> tuple[list[str], list[str]]:
    attrs = root.attrs.asdict()
    problems = [
        f"root attribute {key!r} is missing"
        for key in ("schema_version", "layers", *REQUIRED_ATTRS)
        if key not in attrs
    ]
    version = attrs.get("schema_version")
    if "schema_version" in attrs and version != SCHEMA_VERSION:
        problems.append(
            f"root attribute schema_version is {version!r}; this infoplane reads {SCHEMA_VERSION}"
        )
    layers = attrs.get("layers", [])
    if not isinstance(layers, list) or not all(isinstance(n, str) and n for n in layers):
        problems.append(f"root attribute layers must be a list of layer names, got {layers!r}")
        layers = []
    elif len(set(layers)) != len(layers):
        problems.append(f"root attribute layers repeats names: {layers}")
    return problems, layers


def _check_structure(group: zarr.Group, split: str, layers: Sequence[str]) -> list[str]:
    """Dims, dtypes, shapes and chunking of one split group."""
    problems = []
    arrays = set(group.array_keys())
    n_steps = n_samples = None
    for name, kind in _expected_variables(layers).items():
        where = f"split {split!r}, variable {name!r}"
        if name not in arrays:
            problems.append(f"{where}: missing")
            continue
        array = group[name]
        dims = list(array.metadata.dimension_names or [])
        per_step = name not in ("step", "epoch", "captured")
        want = ["step", "sample"] if per_step else ["step"]
        if dims[: len(want)] != want or (not per_step and len(dims) != 1):
            problems.append(f"{where}: dimensions {dims}, expected {want} + per-sample dims")
            continue
        if name in ("index", "y") and len(dims) != 2:
            problems.append(f"{where}: dimensions {dims}, expected ['step', 'sample']")
        if len(set(dims)) != len(dims):
            problems.append(f"{where}: repeated dimension names {dims}")
        if array.dtype.kind != kind and not (kind == "i" and array.dtype.kind == "u"):
            problems.append(f"{where}: dtype {array.dtype} is not {_KIND_NAMES[kind]}")
        n_steps = array.shape[0] if n_steps is None else n_steps
        if array.shape[0] != n_steps:
            problems.append(f"{where}: {array.shape[0]} steps, other variables have {n_steps}")
        if per_step:
            n_samples = array.shape[1] if n_samples is None else n_samples
            if array.shape[1] != n_samples:
                problems.append(f"{where}: {array.shape[1]} samples, others have {n_samples}")
            if array.chunks[0] != 1:
                problems.append(
                    f"{where}: chunks {array.chunks}; the contract is one step per chunk"
                )
    if "step" in arrays and not problems:
        steps = np.asarray(group["step"][:])
        if (np.diff(steps) <= 0).any():
            problems.append(f"split {split!r}, variable 'step': values are not strictly increasing")
    return problems


_KIND_NAMES = {"i": "an integer type", "f": "a float type", "b": "bool"}


def _check_xarray(path: Path, split: str, consolidated: bool, layers: Sequence[str]) -> list[str]:
    try:
        ds = _open_split_dataset(path, split, consolidated=False)
    except Exception as exc:
        return [f"split {split!r}: xarray cannot open the group ({type(exc).__name__}: {exc})"]
    if consolidated:
        # xr.open_zarr prefers consolidated metadata: it must list what is on disk.
        try:
            listed = set(_open_split_dataset(path, split, consolidated=True).variables)
        except Exception:
            listed = set()
        stale = [n for n in _expected_variables(layers) if n not in listed]
        if stale:
            return [
                f"split {split!r}: the consolidated metadata lacks {stale}; it is stale, run "
                f"zarr.consolidate_metadata({str(path)!r})"
            ]
    if "epoch" in ds.variables and "epoch" not in ds.coords:
        return [
            f"split {split!r}: epoch is not a coordinate for xarray; give the data variables "
            "the attribute coordinates='epoch'"
        ]
    return []


def _check_captured_chunks(
    path: Path, group: zarr.Group, split: str, layers: Sequence[str]
) -> Iterator[str]:
    """Open every chunk of every captured step: it must exist, decode and hold sane values."""
    try:
        captured = np.asarray(group["captured"][:], dtype=bool)
    except Exception as exc:
        yield f"split {split!r}, variable 'captured': cannot be read ({exc})"
        return
    steps = np.asarray(group["step"][:])
    for name in ("index", "x", "y", *layers):
        array = group[name]
        for row in np.flatnonzero(captured):
            where = f"split {split!r}, variable {name!r}, {_step_label(steps, row)}"
            missing = [f for f in _chunk_files(array, path, row) if not f.is_file()]
            if missing:
                yield (
                    f"{where}: chunk file {missing[0].relative_to(path)} is missing although "
                    "the step is marked captured (writers must store every chunk of a captured "
                    "step; with xarray pass write_empty_chunks=True)"
                )
                continue
            try:
                values = np.asarray(array[int(row)])
            except Exception as exc:
                yield f"{where}: chunk cannot be decoded, it is truncated or corrupt ({exc})"
                continue
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                yield f"{where}: holds NaN or Inf values (a diverged run?)"
            elif values.dtype.kind in "iu" and (values < 0).any():
                yield f"{where}: holds negative {'indices' if name == 'index' else 'labels'}"


def validate_store(path: str | os.PathLike) -> list[str]:
    """Check a store against the contract; decode every chunk of every captured step.

    Returns
    -------
    list[str]
        One message per problem, each naming the split, variable and step where they apply;
        empty when the store is valid.
    """
    path = Path(path)
    try:
        root = _open_root(path, mode="r")
    except StoreError as exc:
        return [str(exc)]
    problems, layers = _check_root(root)
    splits = _splits_of(root)
    if not splits:
        problems.append(f"no split group; expected some of {list(SPLITS)}")
    consolidated = _has_consolidated_metadata(path)
    for split in splits:
        group = root[split]
        structure = _check_structure(group, split, layers)
        problems += structure
        if structure:
            continue  # chunk checks assume the layout is right
        problems += _check_xarray(path, split, consolidated, layers)
        problems += list(_check_captured_chunks(path, group, split, layers))
    return problems


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
