"""Your own model and dataset in the workflow: ``{factory: "package.module:function", kwargs}``.

A factory is any callable named ``"package.module:function"`` (a dotted attribute after the colon
reaches a class method: ``"nets:ResNet.small"``). It is imported from the current directory (the
workflow's directory, where Snakemake runs the jobs) or from an installed package.

- A **model factory** returns the ``torch.nn.Module`` to train. It is called with its ``kwargs``,
  plus ``input_shape`` (one sample's shape) and ``n_classes`` when its signature takes them (or
  ``**kwargs``) and they are not given. It is called after ``torch.manual_seed``, so its weights
  are reproducible from the run's seed. The model returns logits (or a tuple / dict holding them,
  see :func:`infoplane.train.capture.model_output`).
- A **dataset factory** returns the data, as one of
  ``infoplane.train.datasets.Dataset``; a mapping with ``x_train, y_train, x_test, y_test``
  (and optionally ``classes``); a tuple ``(x_train, y_train, x_test, y_test)``; or a pair
  ``(train, test)`` where each is a ``torch.utils.data.Dataset`` of ``(x, y)`` items or an
  ``(x, y)`` pair of arrays. Inputs become float32 (token ids too: cast them back in
  ``forward``), labels int64 in ``0 .. classes - 1``.

Every problem is a :class:`~infoplane.errors.ConfigError` raised before any training: the module
cannot be imported, the attribute does not exist (close names listed), it is not callable, the
call fails or returns the wrong type. :func:`infoplane.config.factory_source` records which file
and which SHA-256 of its source a run was built with.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from infoplane.config import factory_source
from infoplane.errors import ConfigError, InfoplaneError
from infoplane.train.capture import close_matches


def import_factory(spec: str, *, key: str = "factory") -> Callable[..., Any]:
    """The callable named by ``"package.module:attribute"``.

    The current directory is searched first (it is put on ``sys.path`` if missing), then the
    installed packages.

    Raises
    ------
    ConfigError
        Malformed name, module not importable, attribute missing, or not callable; the message
        names ``key`` (e.g. ``experiments.mine.model.factory``).
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise ConfigError(f"{key}: {spec!r} is not of the form 'package.module:function'")
    module_name, attribute = spec.split(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{key}: cannot import module {module_name!r} of {spec!r} ({type(exc).__name__}: "
            f"{exc}); it must be importable from the workflow's directory ({cwd}) or an "
            "installed package"
        ) from None
    except Exception as exc:  # the user's module failed while it was imported
        raise ConfigError(
            f"{key}: importing module {module_name!r} of {spec!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            raise ConfigError(
                f"{key}: {getattr(target, '__name__', module_name)!r} has no attribute {part!r}"
                f"{close_matches(part, names)}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"{key}: {spec!r} is a {type(target).__name__}, not callable; name a function or "
            "class that returns the object"
        )
    return target


def _call(factory: Callable[..., Any], spec: str, kwargs: Mapping[str, Any], key: str) -> Any:
    try:
        return factory(**kwargs)
    except InfoplaneError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"{key}: calling {spec}(**{dict(kwargs)!r}) failed: {type(exc).__name__}: {exc}"
        ) from exc


def _accepts(factory: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def build_factory_model(
    spec: Mapping[str, Any],
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
    key: str = "model",
) -> Any:
    """The ``nn.Module`` of a model factory (``{factory, kwargs}``; module docstring).

    Raises
    ------
    ConfigError
        The factory cannot be imported or called, or returns something else than a module.
    """
    from torch import nn

    name = spec["factory"]
    factory = import_factory(name, key=f"{key}.factory")
    kwargs = dict(spec.get("kwargs") or {})
    for extra, value in (("input_shape", tuple(input_shape)), ("n_classes", int(n_classes))):
        if extra not in kwargs and _accepts(factory, extra):
            kwargs[extra] = value
    model = _call(factory, name, kwargs, f"{key}.factory")
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{key}.factory: {name} returned {type(model).__name__}, not a torch.nn.Module; "
            "return the network itself"
        )
    return model


def load_factory_dataset(spec: Mapping[str, Any], *, key: str = "dataset") -> Any:
    """The :class:`~infoplane.train.datasets.Dataset` of a dataset factory (module docstring).

    Raises
    ------
    ConfigError
        The factory cannot be imported or called, or returns none of the accepted forms.
    """
    from infoplane.train.datasets import Dataset

    name = spec["factory"]
    factory = import_factory(name, key=f"{key}.factory")
    data = _call(factory, name, dict(spec.get("kwargs") or {}), f"{key}.factory")
    where = f"{key}.factory: {name}"
    classes = None
    if isinstance(data, Dataset):
        return data
    if isinstance(data, Mapping):
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in data]
        if missing:
            raise ConfigError(f"{where} returned a mapping without {', '.join(missing)}")
        arrays = [data[k] for k in ("x_train", "y_train", "x_test", "y_test")]
        classes = data.get("classes")
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        arrays = list(data)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        arrays = [*_split_arrays(data[0], where, "train"), *_split_arrays(data[1], where, "test")]
    else:
        raise ConfigError(
            f"{where} returned {type(data).__name__}; return an infoplane Dataset, a mapping "
            "with x_train, y_train, x_test, y_test, a tuple of those four arrays, or a "
            "(train, test) pair of torch Datasets"
        )
    x_train, y_train, x_test, y_test = (_as_array(a, where) for a in arrays)
    for label, y in (("y_train", y_train), ("y_test", y_test)):
        if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or _integral(y)):
            raise ConfigError(
                f"{where}: {label} must be one integer class label per sample, got "
                f"{y.dtype} of shape {y.shape}"
            )
    if classes is None:
        classes = max(int(y_train.max(initial=0)), int(y_test.max(initial=0))) + 1
    try:
        return Dataset(
            name=name,
            x_train=x_train,
            y_train=y_train,
            x_test=x_test,
            y_test=y_test,
            classes=max(int(classes), 2),
            description={"factory": factory_source(name), "kwargs": dict(spec.get("kwargs") or {})},
        )
    except InfoplaneError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _integral(y: np.ndarray) -> bool:
    return np.issubdtype(y.dtype, np.floating) and bool(np.all(np.mod(y, 1) == 0))


def _as_array(value: Any, where: str) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as exc:
        what = type(value).__name__
        raise ConfigError(f"{where}: cannot read {what} as an array: {exc}") from None


def _split_arrays(part: Any, where: str, split: str) -> tuple[Any, Any]:
    """(x, y) of one split given as an (x, y) pair or a torch Dataset of (x, y) items."""
    import torch
    from torch.utils.data import Dataset as TorchDataset

    if isinstance(part, (tuple, list)) and len(part) == 2:
        return part[0], part[1]
    if isinstance(part, TorchDataset):
        try:
            items = [part[i] for i in range(len(part))]
        except Exception as exc:
            raise ConfigError(
                f"{where}: reading the {split} torch Dataset item by item failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not items or not all(isinstance(i, (tuple, list)) and len(i) == 2 for i in items):
            raise ConfigError(f"{where}: the {split} Dataset must yield (x, y) pairs")
        xs = [torch.as_tensor(x) for x, _ in items]
        ys = [int(y) for _, y in items]
        return torch.stack(xs), np.asarray(ys, dtype=np.int64)
    raise ConfigError(
        f"{where}: the {split} part is {type(part).__name__}; give a torch Dataset of (x, y) "
        "items or an (x, y) pair of arrays"
    )
