"""Builders and assertions for testing code that writes activation stores or consumes results.

In the spirit of :mod:`xarray.testing`: small, deterministic inputs and assertions with readable
failure messages, for the tests of code around the pipeline (a training loop that writes its own
store, a reader of the estimates, a new estimator preset) as well as for infoplane's own tests.

- :func:`make_store` writes a small valid activation store (the on-disk contract of
  :mod:`infoplane.io.store`) whose layers depend on the inputs, so that the mutual information
  estimated from it is not trivial; options leave steps uncaptured (a killed run), put NaN at
  chosen points (a diverged run) or take the values of every step from a function of yours.
- :func:`assert_results_identical` and :func:`assert_results_allclose` compare two results (or
  any two xarray objects), NaN equal to NaN.
- :func:`assert_invariants` fails when a result breaks an invariant of
  :func:`infoplane.report.checks.check_result`, listing every violated one.

Importing this module is light (numpy only); xarray and zarr are imported by the functions that
use them.

Examples
--------
>>> from infoplane.testing import assert_invariants, make_store
>>> store = make_store(tmp_path / "activations.zarr", steps=(0, 10), n=8)  # doctest: +SKIP
>>> assert_invariants(my_estimate(store))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from infoplane.report.checks import DEFAULT_TOLERANCE

if TYPE_CHECKING:
    import xarray as xr

    from infoplane.io.store import ActivationDtype

__all__ = [
    "INPUT_SHAPE",
    "LAYERS",
    "assert_invariants",
    "assert_results_allclose",
    "assert_results_identical",
    "make_result",
    "make_store",
]

#: Default recorded layers of :func:`make_store`: a conv map (C, H, W), a vector layer and a
#: softmax-sized output.
LAYERS: dict[str, tuple[int, ...]] = {"conv": (2, 3, 3), "fc": (5,), "softmax": (3,)}
#: Default per-sample input shape of :func:`make_store`.
INPUT_SHAPE: tuple[int, ...] = (1, 4, 4)
_CLASSES = 3
#: Violations listed in full by :func:`assert_invariants` before the rest are counted.
_MAX_LISTED = 20

#: Values of one (split, step): ``index``, ``x``, ``y`` and ``activations`` (layer -> array), as
#: :meth:`infoplane.io.store.ActivationStoreWriter.write` takes them.
StepData = Callable[[str, int], Mapping[str, Any]]


# --------------------------------------------------------------------------------------------
# stores
# --------------------------------------------------------------------------------------------


def _default_attrs(run: str, seed: int) -> dict[str, Any]:
    return {
        "experiment": "tiny",
        "run": run,
        "seed": seed,
        "model": "toy",
        "dataset": "synthetic",
        "config": {"experiment": "tiny"},
        "device": "cpu",
    }


def _layer_values(x: np.ndarray, shape: tuple[int, ...], weights: np.ndarray) -> np.ndarray:
    flat = np.tanh(x.reshape(len(x), -1) @ weights)
    return flat.reshape((len(x), *shape))


def _with_nan(values: Any) -> np.ndarray:
    out = np.array(values, dtype=np.float64)
    out[0] = np.nan
    return out


def make_store(
    path: str | os.PathLike,
    *,
    n: int | Mapping[str, int] = 12,
    steps: Sequence[int] | np.ndarray = (0, 10, 20, 30),
    epochs: Sequence[float] | np.ndarray | None = None,
    layers: Mapping[str, Sequence[int]] = LAYERS,
    input_shape: Sequence[int] = INPUT_SHAPE,
    seed: int = 0,
    captured: Sequence[int] | np.ndarray | None = None,
    nan_points: Collection[tuple[str, int, str]] = (),
    dtype: ActivationDtype = "float32",
    run: str = "seed0",
    attrs: Mapping[str, Any] | None = None,
    data: StepData | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a small, valid activation store.

    By default every layer is ``tanh(x W)`` of the flattened inputs with Gaussian weights ``W``
    drawn afresh for every (step, split, layer) and scaled by ``1 + step / 10``; the inputs are
    uniform on [0, 1) and the labels ``0, 1, 2, 0, 1, ...``. The layers thus depend on the
    inputs and change with the step, and the values are a function of the arguments alone:
    the same arguments write the same bytes.

    Parameters
    ----------
    path
        Directory of the new store (``.../activations.zarr``).
    n
        Probe size, the same for both splits, or one per split (``{"train": 6}`` writes a
        train split only).
    steps
        The capture schedule: strictly increasing training iterations.
    epochs
        Epoch of each step; default ``step / 20``.
    layers
        Layer name -> per-sample activation shape, input side first.
    input_shape
        Per-sample shape of the network input ``x``.
    seed
        Seed of the default values (and the ``seed`` attribute unless ``attrs`` is given).
    captured
        Steps to write (default: all); the others stay uncaptured, as in a killed run. With the
        default values, the values of a step depend on the captured steps before it.
    nan_points
        ``(split, step, layer)`` points whose first sample is NaN in that layer (a diverged
        run); applied to the values of ``data`` too.
    dtype
        Storage dtype of the layer activations, ``"float32"`` or ``"float16"``.
    run
        The ``run`` attribute (unless ``attrs`` is given).
    attrs
        The root attributes in full (``experiment, run, seed, model, dataset, config,
        device``); they replace the defaults (experiment ``"tiny"``, model ``"toy"``, dataset
        ``"synthetic"``, device ``"cpu"``).
    data
        ``data(split, step)`` -> the values of one step (keys ``index``, ``x``, ``y``,
        ``activations``, as :meth:`~infoplane.io.store.ActivationStoreWriter.write` takes
        them), replacing the default values; it is called once per split of every captured
        step.
    overwrite
        Replace an existing store at ``path``.

    Returns
    -------
    Path
        ``path``; :func:`infoplane.io.store.open_writer` resumes writing it.

    Raises
    ------
    infoplane.errors.InputError, infoplane.errors.StoreError
        As :func:`infoplane.io.store.create_store` and the writer do for a bad layout, bad
        values or an existing ``path``; nothing is left at ``path`` after a bad layout.

    Examples
    --------
    A killed run, three steps of four captured, and a diverged point:

    >>> make_store(tmp_path / "a.zarr", captured=(0, 10, 20),
    ...            nan_points=[("test", 10, "fc")])  # doctest: +SKIP
    """
    from infoplane.io.store import create_store

    steps = list(steps)
    sizes = {"train": n, "test": n} if isinstance(n, (int, np.integer)) else dict(n)
    writer = create_store(
        path,
        steps=steps,
        epochs=[s / 20.0 for s in steps] if epochs is None else epochs,
        n_samples=sizes,
        input_shape=input_shape,
        layer_shapes=layers,
        attrs=_default_attrs(run, seed) if attrs is None else attrs,
        dtype=dtype,
        overwrite=overwrite,
    )
    nan_at = {(str(split), int(step), str(layer)) for split, step, layer in nan_points}
    to_write = [int(s) for s in (steps if captured is None else captured)]
    if data is None:
        _write_default_values(writer, sizes, to_write, layers, input_shape, seed, nan_at)
        return Path(path)
    for step in to_write:
        for split in sizes:
            values = dict(data(split, step))
            values["activations"] = {
                name: _with_nan(array) if (split, step, name) in nan_at else array
                for name, array in values["activations"].items()
            }
            writer.write(split, step, **values)
    return Path(path)


def _write_default_values(
    writer: Any,
    sizes: Mapping[str, int],
    steps: Sequence[int],
    layers: Mapping[str, Sequence[int]],
    input_shape: Sequence[int],
    seed: int,
    nan_at: Collection[tuple[str, int, str]],
) -> None:
    rng = np.random.default_rng(seed)
    input_shape = tuple(int(d) for d in input_shape)
    d_in = int(np.prod(input_shape))
    inputs = {s: rng.random((m, *input_shape), dtype=np.float32) for s, m in sizes.items()}
    labels = {s: np.arange(m) % _CLASSES for s, m in sizes.items()}
    for step in steps:
        for split, m in sizes.items():
            x = inputs[split]
            activations = {}
            for name, shape in layers.items():
                shape = tuple(int(d) for d in shape)
                w = rng.normal(size=(d_in, int(np.prod(shape)))) * (1 + step / 10)
                values = _layer_values(x, shape, w)
                if (split, step, name) in nan_at:
                    values = _with_nan(values)
                activations[name] = values.astype(np.float32)
            writer.write(
                split, step, index=np.arange(m), x=x, y=labels[split], activations=activations
            )


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


def _as_xarray(value: Any) -> Any:
    if isinstance(value, (str, os.PathLike)):
        from infoplane.io.results import open_result

        return open_result(value)
    return value


def make_result(
    *,
    n_steps: int = 3,
    layers: Sequence[str] = ("a", "b"),
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """A small result (splits train and test, steps 0, 10, ...) that satisfies every invariant.

    N = 8 (log2 N = 3 bits); H(X) = 2, H(Y) = 1.5, H(T) = 1, H(X,T) = 2.5 and H(T,Y) = 2 bits
    at every point, and the MI that follow from them. Change a point to test a consumer's
    handling of a broken or degenerate estimate.
    """
    import xarray as xr

    shape3, shape2 = (2, n_steps, len(layers)), (2, n_steps)
    hx, hy, ht, hxt, hty = 2.0, 1.5, 1.0, 2.5, 2.0
    dims3, dims2 = ("split", "step", "layer"), ("split", "step")
    return xr.Dataset(
        {
            "H_X": (dims2, np.full(shape2, hx)),
            "H_Y": (dims2, np.full(shape2, hy)),
            "H_T": (dims3, np.full(shape3, ht)),
            "H_XT": (dims3, np.full(shape3, hxt)),
            "H_TY": (dims3, np.full(shape3, hty)),
            "I_XT": (dims3, np.full(shape3, hx + ht - hxt)),
            "I_TY": (dims3, np.full(shape3, ht + hy - hty)),
            "n_samples": (("split",), np.array([8, 8])),
        },
        coords={"split": ["train", "test"], "step": np.arange(n_steps) * 10, "layer": list(layers)},
        attrs=dict(attrs or {}),
    )


def assert_results_identical(
    a: xr.Dataset | xr.DataArray | str | os.PathLike,
    b: xr.Dataset | xr.DataArray | str | os.PathLike,
    *,
    check_attrs: bool = False,
) -> None:
    """Assert that two results hold identical variables and coordinates, NaN equal to NaN.

    Built on :func:`xarray.testing.assert_identical`: names, dimensions, coordinates and
    values must match exactly.

    Parameters
    ----------
    a, b
        Result Datasets (or DataArrays, or paths of result files, opened with
        :func:`infoplane.io.results.open_result`).
    check_attrs
        Compare the attributes too (of the objects and of every variable). By default they are
        left out: two estimates of the same numbers may differ in ``store`` or ``source``.

    Raises
    ------
    AssertionError
        Naming what differs.
    """
    import xarray as xr

    a, b = _as_xarray(a), _as_xarray(b)
    if not check_attrs:
        a, b = a.drop_attrs(), b.drop_attrs()
    xr.testing.assert_identical(a, b)


def assert_results_allclose(
    a: xr.Dataset | xr.DataArray | str | os.PathLike,
    b: xr.Dataset | xr.DataArray | str | os.PathLike,
    *,
    rtol: float = 1e-10,
    atol: float = 1e-10,
) -> None:
    """Assert that two results agree within tolerances, NaN equal to NaN; attributes are ignored.

    Built on :func:`xarray.testing.assert_allclose`: names, dimensions and coordinates must
    match, values within ``atol + rtol * |b|``. For results computed from the same inputs in
    another order (another cluster, the cache instead of the store).

    Parameters
    ----------
    a, b
        Result Datasets (or DataArrays, or paths of result files).
    rtol, atol
        Relative and absolute tolerance.

    Raises
    ------
    AssertionError
        Naming what differs.
    """
    import xarray as xr

    a, b = _as_xarray(a), _as_xarray(b)
    xr.testing.assert_allclose(a.drop_attrs(), b.drop_attrs(), rtol=rtol, atol=atol)


def assert_invariants(
    result: xr.Dataset | str | os.PathLike,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_nan: bool = True,
) -> None:
    """Assert that every point of a result satisfies every invariant of the estimates.

    The invariants are those of :func:`infoplane.report.checks.check_result` (entropy bounds,
    joint-entropy bounds, MI bounds and the MI identity).

    Parameters
    ----------
    result
        A result Dataset or path, per run or stacked on ``run``.
    tolerance
        Absolute slack in bits.
    allow_nan
        NaN points (:func:`infoplane.report.checks.nan_points`) are not violations; with
        ``False`` they fail the assertion too, as ``infoplane check --fail-on-nan`` does.

    Raises
    ------
    AssertionError
        Listing every violated invariant with its point (and the NaN points when
        ``allow_nan`` is False).
    """
    from infoplane.report.checks import check_result, nan_points

    ds = _as_xarray(result)
    problems = [str(v) for v in check_result(ds, tolerance=tolerance)]
    broken = len(problems)
    missing = [] if allow_nan else nan_points(ds)
    problems += [
        "NaN at " + ", ".join(f"{key} {value}" for key, value in point.items()) for point in missing
    ]
    if not problems:
        return
    name = ds.attrs.get("estimator")
    run = ds.attrs.get("run")
    label = "result" + (f" {name!r}" if name else "") + (f" of run {run}" if run else "")
    counts = [f"{broken} invariant violation(s)"] if broken else []
    counts += [f"{len(missing)} NaN point(s)"] if missing else []
    listed = problems[:_MAX_LISTED]
    if len(problems) > _MAX_LISTED:
        listed.append(f"... and {len(problems) - _MAX_LISTED} more")
    raise AssertionError(
        f"{label}: {' and '.join(counts)} (tolerance {tolerance:g} bits):\n  " + "\n  ".join(listed)
    )
