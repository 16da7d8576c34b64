"""Creating an activation store and writing its captured steps (see :mod:`infoplane.io.store`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infoplane import __version__
from infoplane.errors import InputError, StoreError
from infoplane.io.files import replacing

if TYPE_CHECKING:
    import zarr
from infoplane.io.store.layout import (
    ACTIVATION_DTYPES,
    FLOAT16_MAX,
    PARTIAL_SUFFIX,
    REQUIRED_ATTRS,
    RESERVED_NAMES,
    SCHEMA_VERSION,
    SPLITS,
    WRITE_THREADS,
    ActivationDtype,
    chunk_codecs,
    dim_names,
    installed_torch_version,
    jsonable,
    open_root,
    per_step_variables,
    splits_of,
)


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
    trailing = {d for name, shape in shapes.items() for d in dim_names(name, shape)[2:]}
    trailing.update(dim_names("x", input_shape)[2:])
    clash = sorted(trailing & set(shapes))
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
    return {str(k): jsonable(v, str(k)) for k, v in attrs.items()}


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
    torch_version = installed_torch_version()
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
        spec = per_step_variables(input_shape, shapes, dtype)
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
    compressors = chunk_codecs()
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
            dimension_names=dim_names(name, shape),
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
    root = open_root(path, mode="r+")
    version = root.attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path} has schema_version {version!r}; this infoplane writes version "
            f"{SCHEMA_VERSION}. Write a new store (create_store) instead of resuming this one"
        )
    # Leftovers of chunk writes interrupted by a kill; the chunks themselves are rewritten.
    for leftover in path.rglob(f"*{PARTIAL_SUFFIX}"):
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
        self.splits = splits_of(root)
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
                f"{where}: {what} has values beyond the float16 range (±{FLOAT16_MAX:g}, "
                f"largest |value| {float(np.nanmax(np.abs(arr[np.isfinite(arr)]))):.4g}); "
                "store this run with dtype float32"
            )
    return np.ascontiguousarray(out)
