"""The information plane of one (split, step) point, from its arrays: pure, numpy in and out.

The point's distances and widths stay on the host; its Grams, entropies and spectra are computed
on whichever device ``to_device`` puts them (numpy when None; a torch GPU through
:mod:`infoplane.core.arrays`), by the same functions. Outputs are numpy and floats either way.

A point's inputs are the squared distances of its layers ``d2`` (L, N, N), of its inputs
``d2_x`` (N, N), its labels ``y`` (N,) and the flags ``nonfinite`` (L,) / ``nonfinite_x`` (a
layer's or the input's activations were NaN/Inf: no distances). :func:`search_step` returns the
alignment argmax widths σ* of every layer; :func:`estimate_step` the widths, entropies, MI and
diagnostics of every layer under an estimator preset (see :mod:`infoplane.presets`).

A point that cannot be estimated (non-finite activations, a failed width search, an unusable
Gram) is NaN, and the reason is returned in ``failures`` as ``(layer, reason)``: one bad layer
costs only its own value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from infoplane.core.arrays import namespace, to_numpy
from infoplane.core.entropy import information_plane, renyi_entropy
from infoplane.core.kernels import gaussian_gram, label_gram, multivariate_gram
from infoplane.core.spectra import layer_entropies, plane_factor, randomized_at
from infoplane.core.widths import alignment_width, select_width
from infoplane.errors import InputError

#: Per-layer outputs of :func:`estimate_step` (arrays (L,)).
LAYER_KEYS = (
    "I_XT",
    "I_TY",
    "H_T",
    "H_XT",
    "H_TY",
    "sigma",
    "sigma_star",
    "clipped_mass",
    "boundary_hit",
)
#: Per-point outputs of :func:`estimate_step` (floats).
STEP_KEYS = ("H_X", "H_Y", "sigma_x")
# the per-layer outputs of infoplane.core.entropy.information_plane
_PLANE_KEYS = ("I_XT", "I_TY", "H_T", "H_XT", "H_TY", "clipped_mass")

Failures = list[tuple[str, str]]
_JOINT_KEYS = ("H_T", "H_XT", "H_TY")
#: Moves a host (numpy) array to the device its Grams are computed on.
ToDevice = Callable[[np.ndarray], Any]


def _on_host(a: np.ndarray) -> np.ndarray:
    return a


def rule_width(rule: Mapping[str, Any], d2: np.ndarray, dim: int, gram_y: Any = None) -> Any:
    """The width of a preset's width rule (a mapping such as ``{"rule": "fixed", "sigma": 8}``).

    Binds the mapping's keys to :func:`infoplane.core.widths.select_width`, the one dispatcher
    of the width rules; returns the width only.
    """
    sigma, _ = select_width(
        d2,
        rule["rule"],
        sigma=rule.get("sigma"),
        dim=dim,
        gram_y=gram_y,
        grid=rule.get("grid", "linear"),
        points=rule.get("points", 100),
    )
    return sigma


def search_step(
    d2: np.ndarray,
    y: np.ndarray,
    nonfinite: np.ndarray,
    layers: Sequence[str],
    *,
    grid: Any,
    points: int,
) -> dict[str, Any]:
    """The alignment argmax σ* of every layer of one point.

    ``d2`` is anything indexed by layer that gives that layer's (N, N) squared distances: an
    (L, N, N) array, or a lazy sequence, so that only one layer's matrix is held at a time.

    Returns
    -------
    dict
        ``sigma_star`` (L,), ``boundary_hit`` (L,) bool and ``failures``.
    """
    sigma = np.full(len(layers), np.nan)
    hit = np.zeros(len(layers), dtype=bool)
    failures: Failures = [(layers[i], "non-finite activations") for i in np.flatnonzero(nonfinite)]
    gram_y = label_gram(y)
    # one layer at a time: ``d2`` may be a lazy sequence that reads or computes d2[i] on demand
    for i in np.flatnonzero(~np.asarray(nonfinite, dtype=bool)):
        try:
            sigma[i], hit[i] = alignment_width(d2[i], gram_y, grid=grid, points=points)
        except InputError as exc:
            failures.append((layers[i], str(exc)))
    return {"sigma_star": sigma, "boundary_hit": hit, "failures": failures}


def _tensor_gram(
    i: int,
    d2: np.ndarray,
    dim: int,
    rule: Mapping[str, Any],
    gram_y: np.ndarray,
    sigma: np.ndarray | None,
    out: dict[str, Any],
    to_device: ToDevice,
) -> Any:
    """Gram of layer ``i`` with the tensor kernel, on the device; fills its widths in ``out``."""
    if sigma is not None:
        out["sigma"][i] = sigma[i]
    elif rule["rule"] == "alignment":
        value, hit = select_width(
            d2, "alignment", gram_y=gram_y, grid=rule["grid"], points=rule["points"]
        )
        out["sigma"][i] = out["sigma_star"][i] = value
        out["boundary_hit"][i] = hit
    else:
        out["sigma"][i] = rule_width(rule, d2, dim)
    # a sensitivity factor on the chosen (smoothed) width; absent means 1
    if "scale" in rule:
        out["sigma"][i] *= rule["scale"]
    if not np.isfinite(out["sigma"][i]):
        return None
    return gaussian_gram(to_device(d2), out["sigma"][i])


def _multivariate_gram(
    i: int, d2c: np.ndarray, dim: int, rule: Mapping, out: dict, to_device: ToDevice
) -> Any:
    """Gram of layer ``i``: the Hadamard product of its per-channel Grams (Yu et al.)."""
    # the rules take a stack of matrices: one width per channel in one call
    widths = rule_width(rule, d2c, dim // d2c.shape[0])
    sigmas = np.broadcast_to(np.asarray(widths, dtype=np.float64), d2c.shape[:1])
    # the one shared width giving the same kernel when channels contribute equally
    out["sigma"][i] = float(np.mean(sigmas**-2.0) ** -0.5)
    return multivariate_gram(to_device(d2c), sigmas)


def _each_layer_gram(
    point: Mapping[str, np.ndarray],
    preset: Mapping[str, Any],
    layers: Sequence[str],
    dims: Sequence[int],
    gram_y: np.ndarray,
    sigma: np.ndarray | None,
    channel_d2: Callable[[int], np.ndarray] | None,
    out: dict[str, Any],
    failures: Failures,
    to_device: ToDevice,
) -> Iterator[tuple[int, Any]]:
    """``(i, Gram)`` of every estimable layer, one at a time; fills the widths in ``out``."""
    for i, layer in enumerate(layers):
        if point["nonfinite"][i]:
            failures.append((layer, "non-finite activations"))
            continue
        try:
            if preset["kernel"] == "multivariate":
                if channel_d2 is None:
                    raise InputError("the multivariate kernel needs per-channel distances")
                gram = _multivariate_gram(
                    i, channel_d2(i), dims[i], preset["channel_width"], out, to_device
                )  # fmt: skip
            else:
                rule = preset["layer_width"]
                gram = _tensor_gram(
                    i, point["d2"][i], dims[i], rule, gram_y, sigma, out, to_device
                )  # fmt: skip
        except InputError as exc:
            failures.append((layer, str(exc)))
            continue
        if gram is None:
            failures.append((layer, "no width (width search failed at this point)"))
            continue
        yield i, gram
        del gram  # the consumer holds the only reference: the next Gram replaces it


def _information_plane(
    gram_x: np.ndarray,
    grams: Mapping[int, np.ndarray],
    gram_y: np.ndarray,
    alpha: float,
    layers: Sequence[str],
    failures: Failures,
) -> dict[Any, Any]:
    """Per-layer results ``{layer index: {key: value}}`` plus ``H_X``/``H_Y`` when computed.

    All layers go through one batched call; if it fails, layers are retried one at a time so a
    single bad layer costs only its own point.
    """
    order = sorted(grams)
    if not order:
        return {}
    xp = namespace(gram_x)
    try:
        batches = [
            (order, information_plane(gram_x, xp.stack([grams[i] for i in order]), gram_y, alpha))
        ]
    except InputError:
        batches = []
        for i in order:
            try:
                batches.append(([i], information_plane(gram_x, grams[i][None], gram_y, alpha)))
            except InputError as exc:
                failures.append((layers[i], str(exc)))
    plane: dict[Any, Any] = {}
    for members, result in batches:
        plane["H_X"], plane["H_Y"] = float(result["H_X"]), float(result["H_Y"])
        for k, i in enumerate(members):
            plane[i] = {key: float(to_numpy(result[key])[k]) for key in _PLANE_KEYS}
    return plane


def estimate_step(
    point: Mapping[str, np.ndarray],
    preset: Mapping[str, Any],
    *,
    layers: Sequence[str],
    dims: Sequence[int],
    dim_x: int,
    sigma: np.ndarray | None = None,
    channel_d2: Callable[[int], np.ndarray] | None = None,
    spectrum: Mapping[str, Any] | None = None,
    seed: Sequence[int] = (0,),
    to_device: ToDevice | None = None,
) -> dict[str, Any]:
    """Entropies, MI and diagnostics of every layer of one point under ``preset``.

    Parameters
    ----------
    point
        ``d2`` (L, N, N; not needed by the multivariate kernel), ``d2_x``, ``y``,
        ``nonfinite`` and ``nonfinite_x`` (see the module docstring).
    preset
        A validated estimator preset.
    layers, dims
        Layer names and their features per sample; ``dim_x`` the input's.
    sigma
        (L,) layer widths to use (smoothed alignment widths); None computes them here.
    channel_d2
        ``i -> (C, N, N)`` per-channel squared distances of layer ``i``, for the multivariate
        kernel (called once per layer, so a caller can read them lazily).
    spectrum
        The preset's spectrum settings (:func:`infoplane.presets.spectrum_of`); None takes exact
        spectra everywhere. Where they take randomized spectra
        (:func:`infoplane.core.spectra.randomized_at`; never for α = 2, which needs none), the
        layers are estimated one at a time and ``randomized`` is True.
    seed
        Seeds the randomized spectra of this point (ints; the caller mixes in the preset's
        seed and the point's split and step, so that points are independent and reproducible
        in any order).
    to_device
        Moves a host array to the device the Grams and spectra are computed on (a torch GPU,
        see :func:`infoplane.estimate.devices.array_mover`); None computes them with numpy.
        Widths are chosen on the host either way.

    Returns
    -------
    dict
        :data:`LAYER_KEYS` as (L,) arrays, :data:`STEP_KEYS` as floats, ``spectral_error``
        (L,) (the largest error bar in bits among a layer's entropies: 0 where exact, NaN where
        not estimated), ``randomized`` and ``failures``.
    """
    out: dict[str, Any] = {name: np.full(len(layers), np.nan) for name in LAYER_KEYS}
    out["boundary_hit"] = np.zeros(len(layers), dtype=bool)
    out["spectral_error"] = np.full(len(layers), np.nan)
    out["randomized"] = False
    failures: Failures = []
    alpha = preset["alpha"]
    to_device = _on_host if to_device is None else to_device
    host_y = label_gram(point["y"])  # the widths are chosen on the host
    gram_y = to_device(host_y)
    out["H_X"] = out["sigma_x"] = np.nan
    if bool(point["nonfinite_x"]):
        out["H_Y"] = float(renyi_entropy(gram_y, alpha))
        out["failures"] = [(layer, "non-finite network inputs") for layer in layers]
        return out
    out["sigma_x"] = rule_width(preset["input_width"], point["d2_x"], dim_x)
    gram_x = gaussian_gram(to_device(point["d2_x"]), out["sigma_x"])
    each_gram = _each_layer_gram(
        point, preset, layers, dims, host_y, sigma, channel_d2, out, failures, to_device
    )  # fmt: skip
    if randomized_at(spectrum, gram_x.shape[0], alpha):
        out["randomized"] = True
        _plane_by_layer(gram_x, each_gram, gram_y, alpha, spectrum, seed, layers, out, failures)
        out["failures"] = failures
        return out
    plane = _information_plane(gram_x, dict(each_gram), gram_y, alpha, layers, failures)
    # H_X and H_Y from the same computation as the MI when there is one, so I = H + H - H holds
    out["H_X"] = plane.pop("H_X", None)
    out["H_Y"] = plane.pop("H_Y", None)
    if out["H_X"] is None:
        out["H_X"] = float(renyi_entropy(gram_x, alpha))
        out["H_Y"] = float(renyi_entropy(gram_y, alpha))
    for i, values in plane.items():
        for key in _PLANE_KEYS:
            out[key][i] = values[key]
        out["spectral_error"][i] = 0.0
    out["failures"] = failures
    return out


def _plane_by_layer(
    gram_x: np.ndarray,
    each_gram: Iterator[tuple[int, np.ndarray]],
    gram_y: np.ndarray,
    alpha: float,
    spectrum: Mapping[str, Any],
    seed: Sequence[int],
    layers: Sequence[str],
    out: dict[str, Any],
    failures: Failures,
) -> None:
    """The information plane with randomized spectra, one layer's Gram alive at a time.

    Fills ``out`` as :func:`estimate_step` does, and ``spectral_error``: the largest error bar
    among the five entropies of each layer (0 where all were exact).
    """
    x = plane_factor(gram_x, alpha, spectrum, [*seed, 0])
    y = plane_factor(gram_y, alpha, spectrum, [*seed, 1])
    out["H_X"], out["H_Y"] = x.entropy.value, y.entropy.value
    for i, gram in each_gram:
        try:
            h = layer_entropies(gram, x, y, alpha, spectrum, [*seed, 2 + i])
        except InputError as exc:
            failures.append((layers[i], str(exc)))
            continue
        del gram
        out["H_T"][i], out["H_XT"][i], out["H_TY"][i] = (h[k].value for k in _JOINT_KEYS)
        out["I_XT"][i] = out["H_X"] + out["H_T"][i] - out["H_XT"][i]
        out["I_TY"][i] = out["H_T"][i] + out["H_Y"] - out["H_TY"][i]
        terms = [x.entropy, y.entropy, *h.values()]
        out["clipped_mass"][i] = max(e.clipped for e in terms)
        out["spectral_error"][i] = max(e.error for e in terms)
