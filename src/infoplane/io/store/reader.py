"""Reading an activation store: its plan, checked step reads and the lazy xarray view."""

from __future__ import annotations

import functools
import math
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infoplane.errors import StoreError
from infoplane.io.files import digest

if TYPE_CHECKING:
    import xarray as xr
    import zarr
from infoplane.io.store.layout import (
    PROVENANCE_KEYS,
    SPLITS,
    chunk_files,
    open_root,
    splits_of,
    step_label,
)


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


def read_whole(group: zarr.Group, name: str, split: str, path: Path) -> np.ndarray:
    """A per-step metadata array (``step``, ``epoch``, ``captured``) in full, checked.

    A chunk that does not decode (truncated, corrupt) or damaged metadata is a StoreError
    naming the store and split. (A missing chunk reads as the fill value, as zarr writes no
    chunk that equals it: False flags, NaN epochs, or steps of 0, which validation reports.)
    """
    try:
        return np.asarray(group[name][...])
    except Exception as exc:  # zarr raises several types for a damaged chunk or metadata
        what = {"captured": "the captured flags", "step": "the steps", "epoch": "the epochs"}
        raise StoreError(
            f"store {path}, split {split!r}: {what.get(name, name)} ({name!r}) cannot be read "
            f"({type(exc).__name__}: {exc}); it is truncated or corrupt: run "
            f"`infoplane store validate {path}` for details, then restore the store from a copy"
        ) from None


def _captured_rows(group: zarr.Group, split: str, path: Path) -> np.ndarray:
    return np.flatnonzero(np.asarray(read_whole(group, "captured", split, path), dtype=bool))


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
    root = open_root(path, mode="r")
    attrs = root.attrs.asdict()
    layers = [str(name) for name in attrs.get("layers") or []]
    if not layers:
        raise StoreError(
            f"{path} is not an activation store: its attributes lack 'layers' "
            "(write it with infoplane.io.store.create_store)"
        )
    available = splits_of(root)
    wanted = list(splits) if splits else available
    missing = [name for name in wanted if name not in available]
    if missing or not wanted:
        raise StoreError(f"store {path} has no split group(s) {missing or list(SPLITS)}")
    plans: dict[str, SplitPlan] = {}
    layer_shapes: dict[str, tuple[int, ...]] = {}
    input_shape: tuple[int, ...] = ()
    for split in wanted:
        try:
            plans[split], shapes, input_shape = _plan_split(root, split, path, layers)
        except StoreError:
            raise
        except Exception as exc:  # zarr raises several types for damaged metadata
            raise StoreError(
                f"store {path}, split {split!r}: its metadata cannot be read "
                f"({type(exc).__name__}: {exc}); run `infoplane store validate {path}` to see "
                "which file is damaged, then restore the store from a copy"
            ) from None
        for name, shape in shapes.items():
            if layer_shapes.setdefault(name, shape) != shape:
                raise StoreError(f"store {path}: layer {name!r} has different shapes per split")
    if not any(len(p.steps) for p in plans.values()):
        raise StoreError(
            f"store {path} has no captured step in split(s) {', '.join(wanted)}; "
            "run (or resume) training first"
        )
    keep = {k: attrs[k] for k in PROVENANCE_KEYS if k in attrs}
    return StorePlan(
        str(path.resolve()), layers, layer_shapes, input_shape, plans, keep, digest(attrs)
    )


def _plan_split(
    root: zarr.Group, split: str, path: Path, layers: Sequence[str]
) -> tuple[SplitPlan, dict[str, tuple[int, ...]], tuple[int, ...]]:
    """The plan of one split, its layer shapes and its input shape."""
    group = root[split]
    names = set(group.array_keys())
    for name in ["x", "y", "step", "captured", *layers]:
        if name not in names:
            raise StoreError(
                f"store {path}, split {split!r}: variable {name!r} is missing "
                f"(layers listed in the store attributes: {', '.join(layers)})"
            )
    rows = _captured_rows(group, split, path)
    steps = np.asarray(read_whole(group, "step", split, path), dtype=np.int64)
    epochs = (
        np.asarray(read_whole(group, "epoch", split, path), dtype=np.float64)
        if "epoch" in names
        else np.full(steps.shape, np.nan)
    )
    rows = rows[np.argsort(steps[rows], kind="stable")]
    captured_steps = steps[rows]
    if captured_steps.size and (captured_steps.min() < 0 or (np.diff(captured_steps) <= 0).any()):
        raise StoreError(
            f"store {path}, split {split!r}: the captured steps {captured_steps[:10].tolist()} "
            "are not distinct training iterations >= 0 in increasing order (a lost or damaged "
            f"'step' chunk reads as its fill value); run `infoplane store validate {path}` for "
            "details, then restore the store from a copy"
        )
    plan = SplitPlan(split, steps[rows], epochs[rows], rows, int(group["y"].shape[1]))
    shapes = {name: tuple(int(s) for s in group[name].shape[2:]) for name in layers}
    return plan, shapes, tuple(int(s) for s in group["x"].shape[2:])


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
        for chunk in chunk_files(array, root_path, int(row)):
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
        self._root = open_root(self.path, mode="r")
        self._groups: dict[str, tuple[zarr.Group, np.ndarray]] = {}

    def _group(self, split: str) -> tuple[zarr.Group, np.ndarray]:
        if split not in self._groups:
            if split not in splits_of(self._root):
                raise StoreError(
                    f"split {split!r} is not in {self.path}; it has {splits_of(self._root)}"
                )
            group = self._root[split]
            self._groups[split] = (group, read_whole(group, "step", split, self.path))
        return self._groups[split]

    def where(self, split: str, name: str, steps: np.ndarray, rows: Sequence[int]) -> str:
        labels = ", ".join(step_label(steps, r) for r in rows)
        return f"store {self.path}, split {split!r}, variable {name!r}, {labels}"

    def read(self, split: str, name: str, row: int) -> np.ndarray:
        """Row ``row`` (a position on the store's step axis) of variable ``name``."""
        group, steps = self._group(split)
        try:
            array = group[name]
        except KeyError:
            raise StoreError(
                f"store {self.path}, split {split!r}: variable {name!r} is missing"
            ) from None
        except Exception as exc:  # zarr raises several types for damaged metadata
            raise StoreError(
                f"store {self.path}, split {split!r}, variable {name!r}: its metadata "
                f"({name}/zarr.json) cannot be read ({type(exc).__name__}: {exc}); restore it "
                f"from a copy (`infoplane store validate {self.path}` lists every damaged file)"
            ) from None
        where = functools.partial(self.where, split, name, steps)
        return _read_rows(array, self.path, where, np.array([row]))[0]

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


def open_split_dataset(path: Path, split: str, consolidated: bool) -> xr.Dataset:
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
        lazy = open_split_dataset(path, split, consolidated=False)
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
    try:
        coords = {
            name: coord.variable[rows].load()
            if coord.dims[:1] == ("step",)
            else coord.variable.load()
            for name, coord in lazy.coords.items()
        }
    except Exception as exc:  # zarr raises several types for a damaged chunk
        raise StoreError(
            f"store {path}, split {split!r}: a coordinate (step, epoch) cannot be read "
            f"({type(exc).__name__}: {exc}); it is truncated or corrupt: run `infoplane store "
            f"validate {path}` for details, then restore the store from a copy"
        ) from None
    attrs = {**reader.attrs, **lazy.attrs, "split": split}
    view = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    # one step per dask chunk: a task reads exactly the chunk(s) of its own step; a fresh token
    # per view, since the store may be rewritten between two views
    return view.chunk({"step": 1}, name_prefix=f"infoplane-{split}-", token=uuid.uuid4().hex)
