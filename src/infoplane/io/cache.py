"""The distance cache: squared distances of every (split, step, layer), the only activation pass.

Layout of ``distances.zarr`` (Zarr v3, one group per probe split, readable by xarray)::

    attrs: kind, cache_schema_version (3), cache_id, store (source store path), store_attrs_sha256
           (digest of the store's root attributes, checked when a cache is resumed and when an
           estimate reads the store beside the cache), infoplane_version, layers, run,
           experiment, splits, storage ({layer or "x": full | float32 | recompute})
    <split>/
      d2(step, layer, i, j)  float64   chunk (1, layers up to ~64 MiB, N, N), uncompressed; only
                                       the full layers' chunks are written (with another form
                                       in the cache, one layer per chunk)
      d2_f32(step, layer, pair) float32  optional (a float32 layer): the N(N−1)/2 entries above
                                       the diagonal, row after row; chunk (1, 1, pairs)
      d2_x(step, i, j)       float64   squared distances of the network inputs (x full)
      d2_x_f32(step, pair)   float32   optional, when x is kept float32
      y(step, sample)        int64     labels of the probe samples
      nonfinite(step, layer) bool      the layer's activations held NaN/Inf (d2 is NaN)
      nonfinite_x(step)      bool
      done(step)             bool      set after the step's region is written
      dim(layer), dim_x      int64     feature dimensions (for Silverman/Scott widths)
      index(sample)          int64     dataset indices of the probe (first captured step; an
                                       estimate that reads the store checks them against it)
      coords: step, epoch(step), layer

Every per-step array ends its codec chain with a CRC-32C checksum (``Crc32cCodec``, as the
activation store's chunks do), so a truncated or bit-flipped chunk is a decode error, and every
read of a step first checks that its chunk files exist (zarr alone would return the fill value,
zero distances, for a missing one). Either fault is a StoreError naming the cache, run, split,
step and layer. A ``recompute`` layer (or x) has no chunk at all: an estimate computes its
distances from the activation store again (:mod:`infoplane.estimate.distances`). Format
history: ``cache_schema_version`` 2 is 3 with every matrix full (no ``storage``), read as such;
1 (no checksums, no ``index``) is still read, with the same chunk-file checks; its decode
errors cannot tell a bit flip, so recompute it (``infoplane distances STORE --out CACHE
--overwrite``) to get the checksums.
    widths/<split>-<key>/    optional: the result of an alignment width search run on these
      sigma_star(step, layer) float64, boundary_hit(step, layer) bool, step(step) int64;
      attrs: search (rule, grid, points, label kernel), layers, infoplane_version, failures,
      cache_id (the root's ``cache_id``, a random id drawn when the cache is created: kept
      widths of another cache, copied in or left over, are ignored and searched again)

:func:`create_cache` pre-allocates every array for the store's captured steps; one task per
(split, step) writes its own region with :func:`write_step`, which sets ``done`` last. Every
per-step array has one chunk per step, so concurrent tasks never share a chunk, and a rerun skips
done steps. :func:`read_step` reads one step's arrays concurrently through handles held per
process.

The argmax widths σ* of an alignment search depend only on the distances, the labels and the
grid, so ``infoplane estimate`` keeps them under ``widths/`` (keyed by the search settings and the
package version) and a later preset with the same search (another α, another input width) skips
it. Each entry is written beside its final name and renamed into place, so concurrent estimates
never see half an entry; deleting ``widths/`` only costs the searches again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infoplane.errors import StoreError, describe_os_error
from infoplane.io.files import digest, replacing
from infoplane.io.store import PROVENANCE_KEYS, SPLITS, StorePlan
from infoplane.io.store.layout import chunk_files

log = logging.getLogger(__name__)

CACHE_KIND = "infoplane-distance-cache"
#: 3: a storage form per layer (``storage``; full, float32 or recompute); 2: checksummed
#: chunks (Crc32cCodec) and the probe's ``index``. 2 and 1 are still read (every layer full).
CACHE_SCHEMA_VERSION = 3
#: The per-step arrays of a split, in the order :func:`write_step` writes them.
STEP_VARIABLES = ("d2", "d2_x", "y", "nonfinite", "nonfinite_x")
#: How the distances of a layer (or of the inputs, ``"x"``) are kept: ``full`` float64 (N, N)
#: in ``d2``/``d2_x``; ``float32``, the upper triangle (N(N−1)/2,) in ``d2_f32``/``d2_x_f32``;
#: ``recompute``, not kept (computed again from the activation store when read).
STORAGE_FORMS = ("full", "float32", "recompute")
#: The array of each stored form: (layer distances, input distances).
_FORM_ARRAYS = {"full": ("d2", "d2_x"), "float32": ("d2_f32", "d2_x_f32")}
#: The per-step arrays of the compact form, present only when a layer uses it.
PACKED_VARIABLES = ("d2_f32", "d2_x_f32")
#: Target size of one d2 chunk: all layers of a step in one read at small N, a few at large N.
D2_CHUNK_BYTES = 64 * 2**20


def _open_group(path: str | Path, mode: str = "r"):
    import zarr

    try:
        return zarr.open_group(str(path), mode=mode)
    except Exception as exc:  # zarr raises several types for a missing or damaged group
        raise StoreError(f"cannot open Zarr group {path}: {exc}") from None


# --------------------------------------------------------------------------------------------
# creation and writing


def full_storage(plan: StorePlan) -> dict[str, str]:
    """Every layer and the inputs (``"x"``) kept full: the layout of format 2."""
    return {name: "full" for name in (*plan.layers, "x")}


def check_storage(storage: Mapping[str, str], plan: StorePlan) -> dict[str, str]:
    """A storage form of :data:`STORAGE_FORMS` for every layer of ``plan`` and for ``"x"``."""
    wanted = (*plan.layers, "x")
    forms = {name: storage.get(name) for name in wanted}
    bad = {name: form for name, form in forms.items() if form not in STORAGE_FORMS}
    if bad:
        raise StoreError(
            f"distance storage {bad}: every layer and 'x' needs one of {', '.join(STORAGE_FORMS)}"
        )
    return forms  # type: ignore[return-value]


def _split_template(
    plan: StorePlan,
    split: str,
    index: np.ndarray | None = None,
    storage: Mapping[str, str] | None = None,
):
    """The split's Dataset of lazily zero arrays: to_zarr(compute=False) writes metadata only."""
    import xarray as xr

    storage = storage or full_storage(plan)
    at = plan.splits[split]
    n_steps, n_layers, n = len(at.steps), len(plan.layers), at.n_samples
    pairs = n * (n - 1) // 2
    all_full = all(form == "full" for form in storage.values())
    # with other forms, one layer per chunk: the slots of layers kept otherwise stay unwritten
    per_chunk = max(1, min(n_layers, D2_CHUNK_BYTES // (8 * n * n))) if all_full else 1

    def lazy(dims, shape, chunks, dtype):
        # one lazy zero broadcast to the shape: no memory and no pass over it, whatever the
        # shape (a numpy view of the full shape would be copied, and hashed, when chunked)
        one = xr.Variable((), np.zeros((), dtype=dtype)).chunk()
        full = one.set_dims(dict(zip(dims, shape, strict=True)))
        return full.chunk(dict(zip(dims, chunks, strict=True)))

    data = {
        "d2": lazy(
            ("step", "layer", "i", "j"), (n_steps, n_layers, n, n), (1, per_chunk, n, n), "f8"
        ),
        "d2_x": lazy(("step", "i", "j"), (n_steps, n, n), (1, n, n), "f8"),
        "y": lazy(("step", "sample"), (n_steps, n), (1, n), "i8"),
        "nonfinite": lazy(("step", "layer"), (n_steps, n_layers), (1, n_layers), bool),
        "nonfinite_x": lazy(("step",), (n_steps,), (1,), bool),
        "done": lazy(("step",), (n_steps,), (1,), bool),
        "dim": (("layer",), np.array([plan.dims[name] for name in plan.layers], dtype=np.int64)),
        "dim_x": ((), np.int64(plan.input_dim)),
    }
    if any(storage[name] == "float32" for name in plan.layers):
        data["d2_f32"] = lazy(
            ("step", "layer", "pair"), (n_steps, n_layers, pairs), (1, 1, pairs), "f4"
        )
    if storage["x"] == "float32":
        data["d2_x_f32"] = lazy(("step", "pair"), (n_steps, pairs), (1, pairs), "f4")
    if index is not None:
        data["index"] = (("sample",), np.asarray(index, dtype=np.int64))
    coords = {
        "step": ("step", at.steps),
        "epoch": ("step", at.epochs),
        "layer": ("layer", np.array(plan.layers, dtype=object)),
    }
    attrs = {"split": split, "n_samples": at.n_samples}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _cache_attrs(plan: StorePlan) -> dict[str, Any]:
    from infoplane import __version__

    return {
        "kind": CACHE_KIND,
        "cache_schema_version": CACHE_SCHEMA_VERSION,
        "store": plan.path,
        "store_attrs_sha256": plan.fingerprint,
        "cache_id": uuid.uuid4().hex,
        "infoplane_version": __version__,
        "layers": list(plan.layers),
        "splits": list(plan.splits),
        **plan.attrs,
    }


def _probe_index(plan: StorePlan) -> dict[str, np.ndarray]:
    """The dataset indices of each split's probe at its first captured step (when recorded)."""
    from infoplane.io.store import StoreReader

    reader = StoreReader(plan.path)
    found = {}
    for name, split in plan.splits.items():
        if len(split.rows) and "index" in reader._group(name)[0].array_keys():
            found[name] = np.asarray(reader.read(name, "index", int(split.rows[0])), np.int64)
    return found


def create_cache(
    path: str | Path, plan: StorePlan, storage: Mapping[str, str] | None = None
) -> None:
    """Pre-allocate an empty cache for ``plan`` (metadata only; every ``done`` is False).

    The probe's dataset indices (the first captured step's) are kept as ``<split>/index``.
    ``storage`` maps every layer and ``"x"`` to a form of :data:`STORAGE_FORMS` (default: all
    full, the layout of format 2); it is recorded in the root's ``storage`` attribute.
    Built beside ``path`` and moved into place, so a killed creation leaves no half cache.
    """
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    storage = check_storage(storage or full_storage(plan), plan)
    index = _probe_index(plan)
    with replacing(path, tag="creating") as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        root.attrs.update({**_cache_attrs(plan), "storage": storage})
        for split in plan.splits:
            # distances are full-entropy float64: compression would cost time and save little;
            # the checksum makes a truncated or corrupt chunk a decode error
            raw = {"compressors": (Crc32cCodec(),)}
            packed = {"compressors": (ZstdCodec(), Crc32cCodec())}
            template = _split_template(plan, split, index.get(split), storage)
            encoding = {name: raw for name in ("d2", "d2_x", *PACKED_VARIABLES)}
            encoding = {name: codec for name, codec in encoding.items() if name in template}
            names = ("y", "nonfinite", "nonfinite_x", "done", "step", "epoch")
            encoding.update({name: packed for name in names})
            template.to_zarr(
                str(tmp),
                group=split,
                mode="w",
                compute=False,
                consolidated=False,
                encoding=encoding,
                write_empty_chunks=True,  # the coordinates (step 0 alone equals the fill value)
            )
        # unwritten steps must read as missing, not as zero distances
        for split in plan.splits:
            group = zarr.open_group(str(tmp), mode="r+")[split]
            group["done"][...] = False
            group["nonfinite"][...] = False
            group["nonfinite_x"][...] = False
        # readers opening with xarray's defaults find consolidated metadata (no fallback
        # warning); tasks later write data only, so it never goes stale
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zarr: consolidated metadata is outside the v3 spec
            zarr.consolidate_metadata(str(tmp))


def storage_of(path: str | Path) -> dict[str, str]:
    """The storage form of every layer and of ``"x"`` (caches before format 3: all full)."""
    root = open_cache_root(path)
    kept = root.attrs.get("storage")
    if kept is None:
        return {name: "full" for name in (*root.attrs.get("layers", ()), "x")}
    return {str(k): str(v) for k, v in dict(kept).items()}


def layers_per_chunk(cache: str | Path, split: str) -> int:
    """Layers held by one chunk of ``d2`` (write them together, see :func:`write_layers`)."""
    return int(_open_group(cache)[split]["d2"].metadata.chunk_grid.chunk_shape[1])


def write_layers(
    cache: str | Path,
    split: str,
    index: int,
    first: int,
    values: Sequence[Any],
    forms: Sequence[str] | None = None,
) -> None:
    """Write the distances of layers ``first, first + 1, ...`` of step ``index``, as stored.

    ``values`` holds one entry per layer in the layer's storage form (``forms``, read from the
    cache when None): (N, N) float64 (full), the packed (N(N−1)/2,) upper triangle (float32) or
    None (recompute, nothing is written). Full layers sharing a chunk must come in one call (at
    small N every layer of a step is one chunk).
    """
    group = _open_group(cache, mode="r+")[split]
    if forms is None:
        storage = storage_of(cache)
        layers = list(open_cache_root(cache).attrs["layers"])
        forms = [storage[name] for name in layers[first : first + len(values)]]
    try:
        full = [k for k in range(len(values)) if forms[k] == "full"]
        if full:
            array = group["d2"].with_config({"write_empty_chunks": True})
            if full == list(range(len(values))):  # one block: one write of the shared chunk
                array[index, first : first + len(values)] = np.stack(values)
            else:
                for k in full:
                    array[index, first + k] = values[k]
        for k, value in enumerate(values):
            if forms[k] == "float32":
                array = group["d2_f32"].with_config({"write_empty_chunks": True})
                array[index, first + k] = value
    except OSError as exc:
        step = int(np.asarray(group["step"][index]))
        raise StoreError(
            f"distance cache {cache}, split {split!r}, step {step}: "
            + describe_os_error(exc, "the steps finished before are kept (marked done)")
        ) from None


def write_step(
    cache: str | Path,
    split: str,
    index: int,
    values: Mapping[str, Any],
    storage: Mapping[str, str] | None = None,
) -> None:
    """Write step ``index`` of ``split``: every array of :data:`STEP_VARIABLES`, then ``done``.

    ``d2`` (the layers, see :func:`write_layers`) may be left out when the layers were written
    by :func:`write_layers` already; ``d2_x`` is in the storage form of ``"x"`` (None when it is
    recomputed). ``storage`` is the cache's (:func:`storage_of`), read when None.
    """
    storage = storage if storage is not None else storage_of(cache)
    if "d2" in values:
        layers = list(open_cache_root(cache).attrs["layers"])
        write_layers(cache, split, index, 0, list(values["d2"]), [storage[n] for n in layers])
    group = _open_group(cache, mode="r+")[split]
    x_form = storage["x"]
    # every chunk is written, even one that equals the fill value (all-NaN distances of a
    # diverged layer, labels all 0): a reader can then tell a missing chunk from such data
    # (per array: zarr's global config is shared by the threads of a worker)
    try:
        for name in ("d2_x", *STEP_VARIABLES[2:], "done"):
            if name == "d2_x" and x_form == "recompute":
                continue
            target = _FORM_ARRAYS[x_form][1] if name == "d2_x" else name
            array = group[target].with_config({"write_empty_chunks": True})
            # last: a step counts as cached only once every variable of it is on disk
            array[index] = True if name == "done" else values[name]
    except OSError as exc:
        step = int(np.asarray(group["step"][index]))
        raise StoreError(
            f"distance cache {cache}, split {split!r}, step {step}: "
            + describe_os_error(
                exc, "the steps finished before are kept (marked done) and a rerun resumes"
            )
        ) from None


def check_compatible(path: str | Path, plan: StorePlan) -> None:
    """A cache can be resumed only for the same store, steps, layers and probe sizes."""
    root = open_cache_root(path)
    problems = []
    if list(root.attrs.get("layers", [])) != plan.layers:
        problems.append(f"layers {root.attrs.get('layers')} != store layers {plan.layers}")
    # a store trained again with other settings has the same steps but other activations
    if root.attrs.get("store_attrs_sha256", plan.fingerprint) != plan.fingerprint:
        problems.append(
            "the store's attributes (its run, seed and settings) differ from those the cache "
            "was computed from: it was trained again since"
        )
    for name, split in plan.splits.items():
        if name not in root:
            problems.append(f"split {name} missing")
            continue
        steps = _read_meta(root, name, "step", path)
        if not np.array_equal(steps, split.steps):
            problems.append(f"split {name}: cached steps differ from the store's captured steps")
        if root[name]["y"].shape[1] != split.n_samples:
            problems.append(f"split {name}: probe size differs")
    if problems:
        raise StoreError(
            f"distance cache {path} does not match store {plan.path}: {'; '.join(problems)}. "
            "Delete it or rerun with --overwrite."
        )
    if root.attrs.get("store") != plan.path:
        log.info("resuming %s, written from %s", path, root.attrs.get("store"))


def check_store(path: str | Path, plan: StorePlan, rows: Mapping[str, np.ndarray]) -> None:
    """The store an estimate reads beside the cache must be the one the cache was computed from.

    Compares the store's fingerprint (``store_attrs_sha256``), then per split the probe's
    dataset indices (``index``, caches of format 2) and the labels of the first cached step;
    ``rows`` gives the store rows of the cached steps of each split.
    """
    from infoplane.io.store import StoreReader

    root = open_cache_root(path)
    recorded = root.attrs.get("store", "?")
    remedy = (
        f"pass --store with the store the cache was computed from ({recorded}), or recompute "
        f"the cache from this store: `infoplane distances {plan.path} --out {path} --overwrite`"
    )
    if root.attrs.get("store_attrs_sha256") != plan.fingerprint:
        raise StoreError(
            f"store {plan.path} is not the store distance cache {path} was computed from: its "
            f"attributes (run {plan.attrs.get('run')!r}, seed {plan.attrs.get('seed')!r} and "
            f"settings) differ from those the cache recorded (run {root.attrs.get('run')!r}); "
            + remedy
        )
    reader = StoreReader(plan.path)
    for split, store_rows in rows.items():
        if not len(store_rows):
            continue
        group = root[split]
        checks = [("y", np.asarray(group["y"][0]))]
        if "index" in group:
            checks.insert(0, ("index", np.asarray(group["index"][...])))
        for name, cached in checks:
            if name == "index" and "index" not in reader._group(split)[0].array_keys():
                continue
            stored = np.asarray(reader.read(split, name, int(store_rows[0])))
            if not np.array_equal(stored.astype(np.int64), cached.astype(np.int64)):
                raise StoreError(
                    f"store {plan.path}, split {split!r}: the probe's {name} differs from the "
                    f"one distance cache {path} was computed with; " + remedy
                )


# --------------------------------------------------------------------------------------------
# reading


def open_cache_root(path: str | Path):
    """The cache's root Zarr group, checked to be a distance cache."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"distance cache {path} does not exist; run `infoplane distances` first")
    root = _open_group(path)
    if root.attrs.get("kind") != CACHE_KIND:
        raise StoreError(f"{path} is not a distance cache (attribute kind != {CACHE_KIND!r})")
    return root


def is_distance_cache(path: str | Path) -> bool:
    """Whether ``path`` is a distance cache (as opposed to an activation store)."""
    try:
        return _open_group(path).attrs.get("kind") == CACHE_KIND
    except StoreError:
        return False


def _read_meta(root: Any, split: str, name: str, path: str | Path) -> np.ndarray:
    """A whole per-split metadata array (``done``, ``step``, ``epoch``, ...), checked.

    From format 2 on, a missing ``step`` or ``epoch`` chunk is an error (they are written at
    creation, even when equal to the fill value); a chunk that does not decode always is.
    """
    try:
        array = root[split][name]
        if name in ("step", "epoch") and int(root.attrs.get("cache_schema_version", 1)) >= 2:
            per_chunk = max(1, int(array.metadata.chunk_grid.chunk_shape[0]))
            for row in range(0, array.shape[0], per_chunk):
                for chunk in chunk_files(array, Path(path), row):
                    if not chunk.is_file():
                        raise StoreError(
                            f"distance cache {path}, split {split!r}: the chunk file "
                            f"{chunk.relative_to(path)} of {name!r} is missing; {_RECOMPUTE}"
                        )
        return np.asarray(array[...])
    except StoreError:
        raise
    except Exception as exc:  # zarr raises several types for a damaged chunk or metadata
        raise StoreError(
            f"distance cache {path}, split {split!r}: {name!r} cannot be read "
            f"({type(exc).__name__}: {exc}); it is truncated or corrupt: {_RECOMPUTE}"
        ) from None


def cache_done(path: str | Path, split: str) -> np.ndarray:
    """The ``done(step)`` flags of one split."""
    return np.asarray(_read_meta(open_cache_root(path), split, "done", path), dtype=bool)


@dataclass(frozen=True)
class CacheSplit:
    """The cached steps of one split."""

    split: str
    steps: np.ndarray
    epochs: np.ndarray
    n_samples: int


@dataclass(frozen=True)
class CachePlan:
    """What an estimate needs to know of a complete cache (metadata only)."""

    path: str
    store: str  # the activation store the distances were computed from
    layers: tuple[str, ...]
    dims: tuple[int, ...]
    dim_x: int
    splits: dict[str, CacheSplit]
    attrs: dict[str, Any]  # provenance of the run (PROVENANCE_KEYS present) and ``store``


def read_cache_plan(path: str | Path, splits: Sequence[str] | None = None) -> CachePlan:
    """Read a cache's metadata; every step of the wanted splits must be done.

    Raises
    ------
    StoreError
        Not a cache, a split is missing, or a step is not computed yet.
    """
    path = Path(path)
    root = open_cache_root(path)
    attrs = dict(root.attrs)
    wanted = list(splits) if splits else [s for s in attrs.get("splits", SPLITS) if s in root]
    found: dict[str, CacheSplit] = {}
    dims: tuple[int, ...] = ()
    dim_x = 0
    for name in wanted:
        if name not in root:
            raise StoreError(f"distance cache {path} has no split {name!r}")
        group = root[name]
        done = np.asarray(_read_meta(root, name, "done", path), dtype=bool)
        step = np.asarray(_read_meta(root, name, "step", path), dtype=np.int64)
        if step.size and (step.min() < 0 or (np.diff(step) <= 0).any()):
            raise StoreError(
                f"distance cache {path}, split {name!r}: its steps {step[:10].tolist()} are not "
                f"distinct training iterations in increasing order (damaged); {_RECOMPUTE}"
            )
        if not done.all():
            missing = ", ".join(map(str, step[~done][:10]))
            raise StoreError(
                f"distance cache {path}, split {name}: steps {missing} are not computed yet; "
                f"rerun `infoplane distances {attrs.get('store', 'STORE')} --out {path}` "
                "to complete it"
            )
        epochs = np.asarray(_read_meta(root, name, "epoch", path), dtype=np.float64)
        found[name] = CacheSplit(name, step, epochs, int(group["y"].shape[1]))
        dims = tuple(int(d) for d in _read_meta(root, name, "dim", path))
        dim_x = int(_read_meta(root, name, "dim_x", path))
    keep = {k: attrs[k] for k in PROVENANCE_KEYS if k in attrs}
    keep["store"] = attrs.get("store")
    keep["store_attrs_sha256"] = attrs.get("store_attrs_sha256")
    return CachePlan(
        str(path.resolve()), str(attrs.get("store", "")), tuple(attrs["layers"]), dims, dim_x,
        found, keep,
    )  # fmt: skip


# Per-process handles of the cache's arrays: opening them costs as much as reading a step.
_held: dict[tuple[str, str], tuple[tuple[int, ...], _SplitHandles]] = {}
# One event loop per reading thread, for zarr's asynchronous reads (workers may run threads).
_loops = threading.local()


@dataclass(frozen=True)
class _SplitHandles:
    """What reading a step of one split needs: the arrays, and what to name in an error."""

    arrays: dict[str, Any]
    steps: np.ndarray
    layers: tuple[str, ...]
    run: str
    checked: tuple[str, ...]  # the arrays whose every done step has its chunk files
    storage: dict[str, str]  # the storage form of every layer and of "x"


def _step_arrays(path: str, split: str) -> _SplitHandles:
    """The cache's per-step arrays of ``split``, opened once per process.

    Reopened when the split's or ``d2``'s metadata file changes (a recreated cache).
    """
    import zarr

    group_path = Path(path) / split
    try:
        token = tuple(
            value
            for meta in (group_path / "zarr.json", group_path / "d2" / "zarr.json")
            for stat in [meta.stat()]
            for value in (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        )
        held = _held.get((path, split))
        if held is not None and held[0] == token:
            return held[1]
        # the split group itself: cheaper than the root's consolidated metadata
        group = zarr.open_group(str(group_path), mode="r", use_consolidated=False)
        present = set(group.array_keys())
        arrays = {n: group[n] for n in (*STEP_VARIABLES, *PACKED_VARIABLES) if n in present}
        steps = np.asarray(group["step"][...], dtype=np.int64)
        attrs = zarr.open_group(str(path), mode="r", use_consolidated=False).attrs
        layers, run = tuple(attrs.get("layers", ())), str(attrs.get("run", "?"))
        kept = attrs.get("storage")
        storage = (
            {str(k): str(v) for k, v in dict(kept).items()}
            if kept is not None
            else {name: "full" for name in (*layers, "x")}
        )
        # format 1 skipped chunks equal to the fill value (NaN distances, False flags); its
        # labels (fill 0) are checked all the same: a whole probe of class 0 is no probe
        version = int(attrs.get("cache_schema_version", 1))
        checked = (*STEP_VARIABLES, *PACKED_VARIABLES) if version >= 2 else ("y",)
    except Exception as exc:  # zarr raises several types for damaged metadata
        raise StoreError(
            f"distance cache {path}, split {split!r}: its metadata cannot be read "
            f"({type(exc).__name__}: {exc}); {_RECOMPUTE}"
        ) from None
    handles = _SplitHandles(arrays, steps, layers, run, checked, storage)
    if len(_held) >= 32:
        _held.clear()
    _held[(path, split)] = (token, handles)
    return handles


_RECOMPUTE = (
    "recompute the cache with `infoplane distances STORE --out CACHE --overwrite` "
    "(or delete it and rerun the workflow)"
)


def _chunks_of_step(array: Any, root: Path, index: int, name: str, layers: Sequence[str]):
    """``(chunk file, what it holds)`` of every chunk of step ``index`` of ``array``."""
    files = chunk_files(array, root, index)
    if name not in ("d2", "d2_f32"):
        return [(f, f"{name}") for f in files]
    per_chunk = int(array.metadata.chunk_grid.chunk_shape[1])
    named = []
    for k, f in enumerate(files):  # the (i, j) axes are one chunk: one file per layer block
        block = layers[k * per_chunk : (k + 1) * per_chunk]
        named.append((f, f"d2 of layer(s) {', '.join(block)}"))
    return named


def _where(path: Any, handles: _SplitHandles, split: str, index: int) -> str:
    step = int(handles.steps[index]) if index < len(handles.steps) else "?"
    return f"distance cache {path}, run {handles.run}, split {split!r}, step {step} (index {index})"


def _check_chunks(path: str, handles: _SplitHandles, split: str, index: int, names) -> None:
    """Every chunk file of step ``index`` must exist: zarr would read a missing one as zeros."""
    root = Path(path)
    for name in names:
        if name not in handles.checked:
            continue
        array = handles.arrays[name]
        for chunk, what in _chunks_of_step(array, root / split, index, name, handles.layers):
            if not chunk.is_file():
                raise StoreError(
                    f"{_where(path, handles, split, index)}: the chunk file "
                    f"{chunk.relative_to(root)} ({what}) is missing although the step is marked "
                    f"done; {_RECOMPUTE}"
                )


def _name_bad_chunk(path: str, handles: _SplitHandles, split: str, index: int, names, exc):
    """The StoreError of a step that did not decode, naming the chunk (read one by one)."""
    for name in names:
        array = handles.arrays[name]
        blocks = _chunks_of_step(array, Path(path) / split, index, name, handles.layers)
        layered = name in ("d2", "d2_f32")
        per = int(array.metadata.chunk_grid.chunk_shape[1]) if layered else 0
        for k, (chunk, what) in enumerate(blocks):
            try:
                if layered:
                    array[index, k * per : (k + 1) * per]
                else:
                    array[index]
            except Exception as inner:  # zarr raises several types for a damaged chunk
                return StoreError(
                    f"{_where(path, handles, split, index)}: the chunk file "
                    f"{chunk.relative_to(path)} ({what}) cannot be decoded "
                    f"({type(inner).__name__}: {inner}); it is truncated or corrupt. {_RECOMPUTE}"
                )
    return StoreError(
        f"{_where(path, handles, split, index)}: the step cannot be read "
        f"({type(exc).__name__}: {exc}); {_RECOMPUTE}"
    )


def read_step(
    path: str | Path, split: str, index: int, *, layers: bool = True, inputs: bool = True
) -> dict[str, np.ndarray]:
    """One cached step: ``d2`` (L, N, N), ``d2_x``, ``y``, ``nonfinite``, ``nonfinite_x``.

    The arrays are read concurrently with zarr's asynchronous API (the reads wait on I/O).
    ``layers=False`` skips the layer distances (``d2`` is then absent): presets that build their
    layer Grams from the activations do not need them, and a large point reads its layers one
    at a time with :func:`read_layer`. The inputs' distances come as stored: ``d2_x`` (N, N)
    when kept full, ``d2_x_f32`` (the packed upper triangle) when kept in float32, neither when
    they are recomputed (see :func:`storage_of`), neither when ``inputs`` is False.

    Raises
    ------
    StoreError
        A chunk of the step is missing, truncated or corrupt, or a label is negative; the
        message names the cache, run, split, step and layer. ``layers=True`` on a cache that
        keeps a layer other than full (read those with :func:`read_layer`).
    """
    path = str(path)
    handles = _step_arrays(path, split)
    x_form = handles.storage.get("x", "full")
    names: tuple[str, ...] = STEP_VARIABLES[2:]
    if x_form != "recompute" and inputs:
        names = (_FORM_ARRAYS[x_form][1], *names)
    if layers:
        other = [n for n in handles.layers if handles.storage.get(n, "full") != "full"]
        if other:
            raise StoreError(
                f"distance cache {path} keeps layer(s) {other} in another form than full "
                f"({ {n: handles.storage[n] for n in other} }); read them with read_layer"
            )
        names = ("d2", *names)
    _check_chunks(path, handles, split, index, names)

    async def rows() -> list[Any]:
        return await asyncio.gather(*(handles.arrays[n].async_array.getitem(index) for n in names))

    if getattr(_loops, "loop", None) is None:
        _loops.loop = asyncio.new_event_loop()
    try:
        values = _loops.loop.run_until_complete(rows())
    except Exception as exc:  # zarr raises several types for a damaged chunk
        raise _name_bad_chunk(path, handles, split, index, names, exc) from None
    data = {n: np.asarray(row) for n, row in zip(names, values, strict=True)}
    data["nonfinite"] = data["nonfinite"].astype(bool, copy=False)
    data["nonfinite_x"] = data["nonfinite_x"].astype(bool, copy=False)
    if data["y"].size and int(data["y"].min()) < 0:
        negative = sorted(set(data["y"][data["y"] < 0].tolist()))[:5]
        raise StoreError(
            f"{_where(path, handles, split, index)}: negative label(s) {negative} in y; labels "
            "are class numbers 0, 1, ...: fix the store's labels, then " + _RECOMPUTE
        )
    return data


def read_layer(path: str | Path, split: str, index: int, layer: int) -> np.ndarray:
    """The kept distances of one layer at one step, in its storage form.

    (N, N) float64 for a full layer, the packed (N(N−1)/2,) float32 upper triangle for a
    float32 one. Checked as :func:`read_step` (missing chunk file, checksum).

    Raises
    ------
    StoreError
        The layer is not kept (``recompute``), or its chunk is missing, truncated or corrupt.
    """
    path = str(path)
    handles = _step_arrays(path, split)
    name = handles.layers[layer]
    form = handles.storage.get(name, "full")
    if form == "recompute":
        raise StoreError(
            f"{_where(path, handles, split, index)}: the distances of layer {name!r} are not "
            "kept in the cache (storage: recompute); compute them from the activation store"
        )
    array = handles.arrays[_FORM_ARRAYS[form][0]]
    chunks = _chunks_of_step(array, Path(path) / split, index, array.basename, handles.layers)
    per = int(array.metadata.chunk_grid.chunk_shape[1])
    chunk, what = chunks[layer // per]
    if array.basename in handles.checked and not chunk.is_file():
        raise StoreError(
            f"{_where(path, handles, split, index)}: the chunk file "
            f"{chunk.relative_to(path)} ({what}) is missing although the step is marked "
            f"done; {_RECOMPUTE}"
        )
    try:
        return np.asarray(array[index, layer])
    except Exception as exc:  # zarr raises several types for a damaged chunk
        raise StoreError(
            f"{_where(path, handles, split, index)}: the chunk file {chunk.relative_to(path)} "
            f"({what}) cannot be decoded ({type(exc).__name__}: {exc}); it is truncated or "
            f"corrupt. {_RECOMPUTE}"
        ) from None


def nonfinite_points(path: str | Path) -> list[tuple[str, int, str]]:
    """``(split, step, layer)`` of every cached point with NaN/Inf activations ("x": input)."""
    root = open_cache_root(path)
    points = []
    for split in root.attrs.get("splits", SPLITS):
        steps = _read_meta(root, split, "step", path)
        layers = list(root.attrs["layers"])
        bad = np.asarray(_read_meta(root, split, "nonfinite", path), dtype=bool)
        bad_x = np.asarray(_read_meta(root, split, "nonfinite_x", path), dtype=bool)
        for t, step in enumerate(steps):
            names = (["x"] if bad_x[t] else []) + [
                n for n, b in zip(layers, bad[t], strict=True) if b
            ]
            points.extend((split, int(step), name) for name in names)
    return points


# --------------------------------------------------------------------------------------------
# alignment widths kept beside the distances

WIDTHS_GROUP = "widths"


@dataclass(frozen=True)
class AlignmentWidths:
    """The per-step argmax widths of one split, as an alignment search returned them."""

    sigma_star: np.ndarray  # (step, layer)
    boundary_hit: np.ndarray  # (step, layer) bool
    failures: list[tuple[int, str, str]]  # (step position, layer, reason)


def _widths_entry(cache: str | Path, split: str, search: Mapping[str, Any]) -> Path:
    from infoplane import __version__

    key = digest({"search": dict(search), "version": __version__})[:16]
    return Path(cache) / WIDTHS_GROUP / f"{split}-{key}"


def read_cached_widths(
    cache: str | Path,
    split: str,
    search: Mapping[str, Any],
    steps: np.ndarray,
    layers: Sequence[str],
) -> AlignmentWidths | None:
    """The kept result of ``search`` on ``split``, or None when there is none for these steps."""
    import zarr

    from infoplane import __version__

    entry = _widths_entry(cache, split, search)
    if not (entry / "zarr.json").is_file():
        return None
    try:
        group = zarr.open_group(str(entry), mode="r", use_consolidated=False)
        attrs = dict(group.attrs)
        owner = open_cache_root(cache).attrs.get("cache_id")
        if attrs.get("cache_id") != owner:
            log.warning(
                "ignoring the kept widths %s: they were searched on another distance cache "
                "(cache_id %s, this cache's is %s; copied or left from an earlier cache); "
                "searching again",
                entry, attrs.get("cache_id"), owner,
            )  # fmt: skip
            return None
        same = (
            attrs.get("search") == dict(search)
            and attrs.get("infoplane_version") == __version__
            and list(attrs.get("layers", [])) == list(layers)
            and np.array_equal(np.asarray(group["step"][...]), steps)
        )
        if not same:
            return None
        return AlignmentWidths(
            np.asarray(group["sigma_star"][...], dtype=np.float64),
            np.asarray(group["boundary_hit"][...], dtype=bool),
            [(int(k), str(layer), str(why)) for k, layer, why in attrs.get("failures", [])],
        )
    except Exception as exc:  # zarr raises several types for a damaged entry: search again
        log.warning("ignoring the kept widths %s, which cannot be read (%s)", entry, exc)
        return None


def write_cached_widths(
    cache: str | Path,
    split: str,
    search: Mapping[str, Any],
    steps: np.ndarray,
    layers: Sequence[str],
    widths: AlignmentWidths,
) -> None:
    """Keep the result of ``search`` on ``split`` for later presets; best effort.

    A cache that cannot be written (read-only, full disk) only costs the search next time, so
    the failure is logged, not raised. An entry that another estimate wrote meanwhile is kept.
    """
    import zarr

    from infoplane import __version__

    entry = _widths_entry(cache, split, search)
    try:
        if not (entry.parent / "zarr.json").is_file():
            zarr.open_group(str(entry.parent), mode="a", zarr_format=3)
        # an entry another estimate kept meanwhile is kept: it holds the same search
        with replacing(entry, keep_existing=True) as tmp:
            group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            group.attrs.update(
                {
                    "search": dict(search),
                    "layers": list(layers),
                    "infoplane_version": __version__,
                    # the cache the widths were searched on: a recreated cache has another
                    "cache_id": open_cache_root(cache).attrs.get("cache_id"),
                    "failures": [[int(k), layer, why] for k, layer, why in widths.failures],
                }
            )
            for name, values in (
                ("step", np.asarray(steps, dtype=np.int64)),
                ("sigma_star", np.asarray(widths.sigma_star, dtype=np.float64)),
                ("boundary_hit", np.asarray(widths.boundary_hit, dtype=bool)),
            ):
                group.create_array(name, data=values, compressors=None)
    except OSError as exc:
        log.warning(
            "could not keep the alignment widths in %s (%s); later presets search again",
            entry.parent,
            exc,
        )
