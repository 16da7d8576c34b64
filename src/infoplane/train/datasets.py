"""Datasets for information-plane experiments, loaded into memory as numpy arrays.

:func:`load_dataset` returns a :class:`Dataset`: float32 inputs, images as ``(N, C, H, W)`` and
vectors as ``(N, D)``, int64 labels ``0 .. classes - 1``, and a JSON-serialisable ``description``
of where the data came from (files and their SHA-256, normalisation, split).

========== ======================================================================================
name       data
========== ======================================================================================
digits     scikit-learn's bundled 8×8 digits (1,797 images), offline; pixels 0–16 scaled to [0, 1]
mnist      MNIST from the original gzip'ed IDX files, downloaded into ``root/mnist`` (or read from
           ``path=``) and verified by SHA-256; pixels scaled to [0, 1] as in the paper
cifar10    CIFAR-10 from the *binary* archive ``cifar-10-binary.tar.gz``, downloaded into
           ``root/cifar10`` (or read from ``path=``) and verified by SHA-256; read straight
           from the tar, never unpickled
npz        a user's ``.npz`` file with arrays ``x`` and ``y`` (optionally ``x_test``, ``y_test``);
           kept as stored, or ``normalize: unit | standard`` (raw 0–255 pixels need ``unit``)
synthetic  class prototypes plus Gaussian noise, any shape, deterministic by seed
========== ======================================================================================

Downloads go through pooch: a file is written to a temporary name, its SHA-256 is checked and
only a matching file is moved into place, so a corrupt or substituted download is never used.
The base URL is the ``url=`` option, else ``$INFOPLANE_DATA_URL/<dataset>/`` (a mirror holding
``mnist/`` and ``cifar10/`` folders), else the standard location.
"""

from __future__ import annotations

import gzip
import hashlib
import inspect
import os
import struct
import tarfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from infoplane.errors import ConfigError, DataError

DATASET_NAMES = ("digits", "mnist", "cifar10", "npz", "synthetic")
NORMALIZATIONS = ("none", "unit", "standard")
DATA_URL_ENV = "INFOPLANE_DATA_URL"

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/"
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "t10k": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch.bin"

# SHA-256 of the standard distribution files, as pinned by many public loaders (TensorFlow
# Datasets, Keras, MLDatasets.jl); mirrors serve the same bytes.
KNOWN_SHA256 = {
    "train-images-idx3-ubyte.gz": (
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    ),
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "cifar-10-binary.tar.gz": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
}

Normalization = Literal["none", "unit", "standard"]
Size = int | float | None

_CIFAR_RECORD = 1 + 3 * 32 * 32
_DOWNLOAD_TIMEOUT_S = 60


@dataclass
class Dataset:
    """Train and test arrays of one dataset.

    Attributes
    ----------
    name : str
        Dataset name as passed to :func:`load_dataset`.
    x_train, x_test : np.ndarray
        float32 inputs, ``(N, C, H, W)`` for images or ``(N, D)`` for vectors.
    y_train, y_test : np.ndarray
        int64 labels in ``0 .. classes - 1``.
    classes : int
        Number of classes.
    description : dict
        JSON-serialisable provenance: source, files and SHA-256, normalisation, split.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int
    description: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.x_train = np.ascontiguousarray(self.x_train, dtype=np.float32)
        self.x_test = np.ascontiguousarray(self.x_test, dtype=np.float32)
        self.y_train = np.ascontiguousarray(self.y_train, dtype=np.int64)
        self.y_test = np.ascontiguousarray(self.y_test, dtype=np.int64)
        self.classes = int(self.classes)
        for split, x, y in (
            ("train", self.x_train, self.y_train),
            ("test", self.x_test, self.y_test),
        ):
            if x.ndim not in (2, 4):
                raise DataError(
                    f"dataset {self.name!r}, split {split}: inputs must be (N, D) or (N, C, H, W), "
                    f"got shape {x.shape}"
                )
            if y.shape != (len(x),):
                raise DataError(
                    f"dataset {self.name!r}, split {split}: {len(x)} inputs but labels of shape "
                    f"{y.shape}"
                )
            if len(y) and (y.min() < 0 or y.max() >= self.classes):
                raise DataError(
                    f"dataset {self.name!r}, split {split}: labels must lie in "
                    f"0..{self.classes - 1}"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: train inputs have sample shape {self.x_train.shape[1:]} "
                f"but test inputs {self.x_test.shape[1:]}"
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input sample, e.g. ``(1, 28, 28)``."""
        return tuple(self.x_train.shape[1:])


def _loader(name: str) -> Callable[..., Dataset]:
    loaders: dict[str, Callable[..., Dataset]] = {
        "digits": load_digits,
        "mnist": load_mnist,
        "cifar10": load_cifar10,
        "npz": load_npz,
        "synthetic": load_synthetic,
    }
    if name not in loaders:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    return loaders[name]


def check_dataset_options(name: str, options: Mapping[str, Any]) -> None:
    """Unknown dataset or option: ConfigError naming the allowed ones (nothing is read)."""
    allowed = [p for p in inspect.signature(_loader(name)).parameters if p != "root"]
    unknown = sorted(set(options) - set(allowed) - {"root"})
    if unknown:
        raise ConfigError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for dataset {name!r}; "
            f"allowed: {', '.join(allowed)}"
        )


#: Sizes (train, test), sample shape and classes of the downloaded datasets' standard splits.
_STANDARD_SPLITS = {
    "mnist": ((60000, 10000), (1, 28, 28), 10),
    "cifar10": ((50000, 10000), (3, 32, 32), 10),
}


def dataset_layout(
    name: str, options: Mapping[str, Any]
) -> tuple[int, int, tuple[int, ...], int] | None:
    """``(n_train, n_test, sample shape, classes)`` of a dataset, cheaply; None when unknown.

    No download and no image is read: digits and synthetic data are computed from their
    options, MNIST and CIFAR-10 from the sizes of their standard files, an npz file from its
    array headers (None while the file is absent).
    """
    root = options.get("root", "data")
    options = {k: v for k, v in options.items() if k != "root"}
    check_dataset_options(name, options)
    _check_option_types(name, root, options)
    if name == "digits":
        data = load_digits(**options)
        return len(data.y_train), len(data.y_test), tuple(data.x_train.shape[1:]), data.classes
    if name == "synthetic":
        shape = tuple(options.get("shape", (3, 32, 32)))
        sizes = (int(options.get("train_size", 1000)), int(options.get("test_size", 200)))
        return sizes[0], sizes[1], shape, int(options.get("classes", 10))
    if name in _STANDARD_SPLITS:
        (n_train, n_test), shape, classes = _STANDARD_SPLITS[name]
        test = _resolve_test_size(
            options.get("test_size"), options.get("test_fraction"), default=None
        )
        train = options.get("train_size")
        if name == "mnist" and options.get("source", "full") == "t10k":
            n = n_test
            n_test = _count(0.2 if test is None else test, n, "test_size")
            n_train = n - n_test if train is None else _count(train, n, "train_size")
        else:
            n_train = n_train if train is None else _count(train, n_train, "train_size")
            n_test = n_test if test is None else _count(test, n_test, "test_size")
        return n_train, n_test, shape, classes
    return None  # npz: its arrays are read when the run starts


def load_dataset(name: str, *, root: str | os.PathLike = "data", **options: Any) -> Dataset:
    """Load a dataset by name.

    Parameters
    ----------
    name : {"digits", "mnist", "cifar10", "npz", "synthetic"}
        Which dataset.
    root : path-like
        Folder for downloads; files go to ``root/<name>/`` and are reused when present and valid.
    **options
        Dataset options; see ``load_digits``, ``load_mnist``, ``load_cifar10``, ``load_npz`` and
        ``load_synthetic`` for each one's keywords.

    Returns
    -------
    Dataset

    Raises
    ------
    ConfigError
        Unknown dataset or option, or an invalid option value.
    DataError
        Files missing, corrupt, failing verification or not downloadable.
    """
    loader = _loader(name)
    check_dataset_options(name, options)
    _check_option_types(name, root, options)
    return loader(root=root, **options)


def _check_option_types(dataset: str, root: Any, options: Mapping[str, Any]) -> None:
    """Type checks of the options several loaders share (paths, URL, seeds)."""
    paths = {"root": root}
    if options.get("path") is not None:
        paths["path"] = options["path"]
    for key, value in paths.items():
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{dataset}: {key} must be a path (a string), got {value!r}")
    url = options.get("url")
    if url is not None and not isinstance(url, str):
        raise ConfigError(f"{dataset}: url must be a string, got {url!r}")
    for key in ("split_seed", "seed"):
        if key in options:
            _check_seed(options[key], f"{dataset}: {key}")


# ---------------------------------------------------------------------------------------------
# Dataset loaders


def load_digits(
    *,
    root: str | os.PathLike = "data",
    test_size: Size = None,
    test_fraction: float | None = None,
    train_size: Size = None,
    split_seed: int = 0,
) -> Dataset:
    """scikit-learn's bundled 8×8 digits as ``(N, 1, 8, 8)`` images in [0, 1].

    The 1,797 images are split once, stratified by class, with a fixed seed; by default 20 % go to
    the test split. ``test_size``/``train_size`` take a count (int) or a fraction (float);
    ``test_fraction`` is the same as a float ``test_size``. ``root`` is unused (the data ships
    with scikit-learn).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # The bundled pixels are integer counts 0..16 (4×4 blocks of the 32×32 originals).
    x = (bunch.images[:, None, :, :] / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    test = _resolve_test_size(test_size, test_fraction, default=0.2)
    train_idx, test_idx = stratified_split(
        y, test_size=test, train_size=train_size, seed=split_seed
    )
    return Dataset(
        name="digits",
        x_train=x[train_idx],
        y_train=y[train_idx],
        x_test=x[test_idx],
        y_test=y[test_idx],
        classes=10,
        description={
            "source": "sklearn.datasets.load_digits",
            "scaling": "pixel / 16 -> [0, 1]",
            "split": _split_record(test, train_size, split_seed),
        },
    )


def load_mnist(
    *,
    root: str | os.PathLike = "data",
    source: Literal["full", "t10k"] = "full",
    path: str | os.PathLike | None = None,
    url: str | None = None,
    sha256: Mapping[str, str] | None = None,
    normalize: Normalization = "unit",
    test_size: Size = None,
    test_fraction: float | None = None,
    train_size: Size = None,
    split_seed: int = 0,
) -> Dataset:
    """MNIST from the original gzip'ed IDX files, images ``(N, 1, 28, 28)``.

    Parameters
    ----------
    source : {"full", "t10k"}
        ``"full"``: the 60,000 training and 10,000 test images (all four files). ``"t10k"``: only
        the two test-set files, split into train and test (default 8,000 / 2,000, stratified by
        class with ``split_seed``); for machines that hold only the test set.
    path : path-like, optional
        A folder that already holds the ``.gz`` files; used as is (verified, never downloaded to).
    url : str, optional
        Base URL of a mirror holding the ``.gz`` files (default ``$INFOPLANE_DATA_URL/mnist/``,
        else the standard mirror).
    sha256 : mapping, optional
        ``{file name: hex digest}`` replacing the built-in digests, for files that differ from the
        standard ones on purpose (a repacked mirror, a test fixture).
    normalize : {"unit", "none", "standard"}
        ``"unit"`` (default, the paper's /255) scales to [0, 1]; ``"none"`` keeps 0–255;
        ``"standard"`` subtracts the training-split mean and divides by its standard deviation.
    test_size, train_size, test_fraction : int or float, optional
        With ``source="t10k"``: sizes of the split (count or fraction; default test 0.2, train the
        rest). With ``source="full"``: optional stratified subsets of the standard splits.
    split_seed : int
        Seed of the stratified split or subset.
    """
    if source not in ("full", "t10k"):
        raise ConfigError(f"mnist: unknown source {source!r}; choose 'full' or 't10k'")
    _check_normalize(normalize, "mnist")
    wanted = MNIST_FILES["t10k"] if source == "t10k" else MNIST_FILES["train"] + MNIST_FILES["t10k"]
    files = fetch_files(wanted, dataset="mnist", root=root, path=path, url=url, sha256=sha256)
    x_t10k, y_t10k = read_mnist_pair(files[wanted[-2]], files[wanted[-1]])
    test = _resolve_test_size(test_size, test_fraction, default=None)
    if source == "t10k":
        test = 0.2 if test is None else test
        train_idx, test_idx = stratified_split(
            y_t10k, test_size=test, train_size=train_size, seed=split_seed
        )
        x_tr, y_tr, x_te, y_te = (
            x_t10k[train_idx],
            y_t10k[train_idx],
            x_t10k[test_idx],
            y_t10k[test_idx],
        )
    else:
        x_tr, y_tr = read_mnist_pair(files[wanted[0]], files[wanted[1]])
        x_te, y_te = x_t10k, y_t10k
        x_tr, y_tr = _subset(x_tr, y_tr, train_size, split_seed, "train_size")
        x_te, y_te = _subset(x_te, y_te, test, split_seed, "test_size")
    x_train, x_test = normalize_images(x_tr[:, None], x_te[:, None], normalize)
    return Dataset(
        name="mnist",
        x_train=x_train,
        y_train=y_tr,
        x_test=x_test,
        y_test=y_te,
        classes=10,
        description={
            "source": source,
            **_file_provenance("mnist", wanted, sha256, path, url, MNIST_URL),
            "normalize": normalize,
            "split": _split_record(test, train_size, split_seed),
        },
    )


def load_cifar10(
    *,
    root: str | os.PathLike = "data",
    path: str | os.PathLike | None = None,
    url: str | None = None,
    sha256: Mapping[str, str] | None = None,
    normalize: Normalization = "unit",
    test_size: Size = None,
    test_fraction: float | None = None,
    train_size: Size = None,
    split_seed: int = 0,
) -> Dataset:
    """CIFAR-10 (binary version), images ``(N, 3, 32, 32)``.

    The batches are read directly from ``cifar-10-binary.tar.gz`` (records of one label byte and
    3,072 pixel bytes, channel-major), never unpickled and never extracted to disk.

    Parameters
    ----------
    path, url, sha256
        As for :func:`load_mnist`; ``path`` must hold ``cifar-10-binary.tar.gz``.
    normalize : {"unit", "none", "standard"}
        ``"unit"`` (default) scales pixels to [0, 1], the same scale as MNIST, so that the input
        kernel width σ_X = 8 of the paper preset sees real structure. ``"none"`` keeps raw 0–255
        values, as the original code did: pairwise distances are then so large that the input
        Gram matrix K_X is the identity in floating point, H(X) = log2 N and I(X;T) = H(T) for
        every layer; use it only to reproduce the original figures. ``"standard"`` subtracts the
        per-channel training mean and divides by the per-channel standard deviation (the usual
        choice for training; distances grow again, so K_X is again close to the identity).
    test_size, train_size, test_fraction : int or float, optional
        Optional stratified subsets of the 50,000 / 10,000 standard splits.
    split_seed : int
        Seed of the subsets.
    """
    _check_normalize(normalize, "cifar10")
    files = fetch_files(
        (CIFAR10_ARCHIVE,), dataset="cifar10", root=root, path=path, url=url, sha256=sha256
    )
    (x_tr, y_tr), (x_te, y_te) = read_cifar10_binary(files[CIFAR10_ARCHIVE])
    test = _resolve_test_size(test_size, test_fraction, default=None)
    x_tr, y_tr = _subset(x_tr, y_tr, train_size, split_seed, "train_size")
    x_te, y_te = _subset(x_te, y_te, test, split_seed, "test_size")
    x_train, x_test = normalize_images(x_tr, x_te, normalize)
    return Dataset(
        name="cifar10",
        x_train=x_train,
        y_train=y_tr,
        x_test=x_test,
        y_test=y_te,
        classes=10,
        description={
            "source": "cifar-10 binary",
            **_file_provenance("cifar10", (CIFAR10_ARCHIVE,), sha256, path, url, CIFAR10_URL),
            "normalize": normalize,
            "split": _split_record(test, train_size, split_seed),
        },
    )


def load_npz(
    *,
    root: str | os.PathLike = "data",
    path: str | os.PathLike | None = None,
    classes: int | None = None,
    normalize: Normalization = "none",
    test_size: Size = None,
    test_fraction: float | None = None,
    train_size: Size = None,
    split_seed: int = 0,
) -> Dataset:
    """A user's ``.npz`` file with arrays ``x`` and ``y`` (and optionally ``x_test``, ``y_test``).

    ``x`` is ``(N, D)``, ``(N, H, W)`` (a channel axis is added) or ``(N, C, H, W)``, any real
    dtype; ``y`` is ``(N,)`` with non-negative integer labels. Without ``x_test``/``y_test`` the
    file is split, stratified by class (default 20 % test). ``classes`` defaults to the largest
    label + 1. The file is read with ``allow_pickle=False``; ``path`` is relative to the working
    directory, not to ``root``.

    ``normalize`` is MNIST's option (see :func:`normalize_images`), with the training split's own
    range in place of 0–255: ``"none"`` (default) keeps the stored values; ``"unit"`` maps the
    training split's smallest and largest input to 0 and 1 (for pixels spanning 0–255 that is
    MNIST's /255; the test split is scaled alike and may leave [0, 1] slightly); ``"standard"``
    subtracts the training mean and divides by its standard deviation, per channel (images) or
    per feature (vectors). Raw 0–255 pixels with the paper's σ_X = 8 make every input its own
    cluster (H(X) = log2 N at every step); ``"unit"`` is the remedy.
    """
    if path is None:
        raise ConfigError("dataset 'npz' needs path=<file.npz> holding arrays 'x' and 'y'")
    _check_normalize(normalize, "npz")
    arrays = _read_npz(Path(path))
    where = f"npz file {path}"
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise DataError(
            f"{where} lacks array(s) {', '.join(map(repr, missing))}; it holds "
            f"{sorted(arrays) or 'nothing'}. Save it with np.savez(path, x=inputs, y=labels)"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{where}: 'x_test' and 'y_test' must be given together or not at all")
    x, y = _checked_xy(arrays["x"], arrays["y"], f"{where}, arrays 'x'/'y'")
    if "x_test" in arrays:
        if test_size is not None or test_fraction is not None or train_size is not None:
            raise ConfigError(
                f"{where} holds its own test split; drop test_size/test_fraction/train_size"
            )
        x_test, y_test = _checked_xy(
            arrays["x_test"], arrays["y_test"], f"{where}, arrays 'x_test'/'y_test'"
        )
        split: dict[str, Any] = {"from_file": True}
    else:
        test = _resolve_test_size(test_size, test_fraction, default=0.2)
        train_idx, test_idx = stratified_split(
            y, test_size=test, train_size=train_size, seed=split_seed
        )
        x, y, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]
        split = _split_record(test, train_size, split_seed)
    x, x_test = normalize_images(x, x_test, normalize, unit_range=_value_range(x))
    largest = int(max(y.max(initial=0), y_test.max(initial=0)))
    if classes is None:
        classes = largest + 1
    elif _is_int(classes) and classes > largest:
        classes = int(classes)
    else:
        raise ConfigError(
            f"{where}: classes={classes!r} but the labels go up to {largest}; "
            f"set classes to at least {largest + 1} or leave it out"
        )
    return Dataset(
        name="npz",
        x_train=x,
        y_train=y,
        x_test=x_test,
        y_test=y_test,
        classes=classes,
        description={
            "source": str(path),
            "sha256": _sha256_file(Path(path)),
            "split": split,
            **({"normalize": normalize} if normalize != "none" else {}),
        },
    )


def load_synthetic(
    *,
    root: str | os.PathLike = "data",
    shape: Sequence[int] = (3, 32, 32),
    classes: int = 10,
    train_size: int = 1000,
    test_size: int = 200,
    noise: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """Class prototypes plus Gaussian noise, for benchmarks and tests.

    Each class c has a prototype m_c with entries drawn uniformly from [0, 1]; a sample of class
    c is ``m_c + noise * ε`` with ε standard normal. Classes are balanced (as far as the sizes
    allow) and the whole dataset is a function of ``seed``. With D input features two class
    means lie about 0.41·√D apart, i.e. 0.41·√D / ``noise`` noise standard deviations: at the
    default noise the classes of a 3×8×8 input are nearly separable (≈ 5.7) and those of a
    CIFAR-shaped input trivially so; lower ``noise`` for inputs of a few dozen features.

    Parameters
    ----------
    shape : sequence of int
        Shape of one sample: ``(D,)`` or ``(C, H, W)``; default CIFAR-like ``(3, 32, 32)``.
    classes : int
        Number of classes (≥ 2).
    train_size, test_size : int
        Number of samples per split.
    noise : float
        Standard deviation of the noise (≥ 0).
    seed : int
        Seed of the generator.
    """
    shape = (shape,) if _is_int(shape) else tuple(shape) if isinstance(shape, Sequence) else shape
    if (
        not isinstance(shape, tuple)
        or len(shape) not in (1, 3)
        or not all(_is_int(s) and s > 0 for s in shape)
    ):
        raise ConfigError(
            f"synthetic: shape must be (D,) or (C, H, W) of positive ints, got {shape!r}"
        )
    if not _is_int(classes) or classes < 2:
        raise ConfigError(f"synthetic: classes must be an int >= 2, got {classes!r}")
    for key, value in (("train_size", train_size), ("test_size", test_size)):
        if not _is_int(value) or value < 1:
            raise ConfigError(f"synthetic: {key} must be a positive int, got {value!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < np.inf:
        raise ConfigError(f"synthetic: noise must be a finite number >= 0, got {noise!r}")
    _check_seed(seed, "synthetic: seed")
    rng = np.random.default_rng(seed)
    dim = int(np.prod(shape))
    prototypes = rng.uniform(0.0, 1.0, size=(classes, dim)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n) % classes).astype(np.int64)
        eps = rng.standard_normal((n, dim), dtype=np.float32)
        return (prototypes[y] + np.float32(noise) * eps).reshape((n, *shape)), y

    x_train, y_train = draw(int(train_size))
    x_test, y_test = draw(int(test_size))
    return Dataset(
        name="synthetic",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        classes=int(classes),
        description={
            "source": "prototypes U(0,1) + noise * N(0,1)",
            "shape": list(shape),
            "noise": float(noise),
            "seed": int(seed),
        },
    )


# ---------------------------------------------------------------------------------------------
# Splits


def stratified_split(
    y: np.ndarray, *, test_size: int | float, train_size: Size = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified train/test indices.

    Each class contributes to each split in proportion to its frequency (largest-remainder
    rounding, so the sizes are exact); which samples go where is drawn with ``seed``.

    Parameters
    ----------
    y : np.ndarray
        (N,) labels.
    test_size, train_size : int or float
        Counts (int) or fractions of N (float in (0, 1)); ``train_size=None`` takes the rest.
    seed : int
        Seed of the draw.

    Returns
    -------
    train_idx, test_idx : np.ndarray
        Sorted, disjoint int64 index arrays.
    """
    _check_seed(seed, "split seed")
    y = np.asarray(y)
    n = len(y)
    n_test = _count(test_size, n, "test_size")
    n_train = n - n_test if train_size is None else _count(train_size, n, "train_size")
    if n_test < 1 or n_train < 1 or n_train + n_test > n:
        raise ConfigError(
            f"cannot split {n} samples into {n_train} train and {n_test} test; "
            "choose train_size + test_size <= N, each at least 1"
        )
    rng = np.random.default_rng(seed)
    _, codes = np.unique(y, return_inverse=True)
    counts = np.bincount(codes)
    members = [rng.permutation(np.flatnonzero(codes == c)) for c in range(len(counts))]
    test_per_class = _allocate(counts, n_test)
    train_per_class = _allocate(counts - test_per_class, n_train)
    test_idx = np.concatenate([m[:t] for m, t in zip(members, test_per_class, strict=True)])
    train_idx = np.concatenate(
        [m[t : t + r] for m, t, r in zip(members, test_per_class, train_per_class, strict=True)]
    )
    return np.sort(train_idx).astype(np.int64), np.sort(test_idx).astype(np.int64)


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``counts`` (largest remainder, exact sum)."""
    quotas = counts * (total / counts.sum())
    base = np.minimum(np.floor(quotas).astype(np.int64), counts)
    order = np.argsort(-(quotas - base), kind="stable")
    for i in order[: total - base.sum()]:
        base[i] += 1
    return base


def _subset(
    x: np.ndarray, y: np.ndarray, size: Size, seed: int, key: str
) -> tuple[np.ndarray, np.ndarray]:
    """A stratified subset of ``size`` samples (all of them when ``size`` is None)."""
    if size is None:
        return x, y
    n = _count(size, len(y), key)
    if not 1 <= n <= len(y):
        raise ConfigError(f"{key}={size!r} must select between 1 and {len(y)} samples")
    if n == len(y):
        return x, y
    _, idx = stratified_split(y, test_size=n, seed=seed)
    return x[idx], y[idx]


def _count(value: int | float, n: int, key: str) -> int:
    if _is_int(value):
        return int(value)
    if isinstance(value, (float, np.floating)) and 0.0 < value < 1.0:
        return round(value * n)
    raise ConfigError(
        f"{key} must be a positive int (a count) or a float in (0, 1) (a fraction), got {value!r}"
    )


def _resolve_test_size(
    test_size: Size, test_fraction: float | None, *, default: float | None
) -> int | float | None:
    if test_fraction is not None:
        if test_size is not None:
            raise ConfigError("give test_size or test_fraction, not both")
        if isinstance(test_fraction, bool) or not (
            isinstance(test_fraction, (float, int)) and 0 < test_fraction < 1
        ):
            raise ConfigError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
        return float(test_fraction)
    return default if test_size is None else test_size


def _split_record(test: Size, train: Size, seed: int) -> dict[str, Any]:
    return {"test_size": test, "train_size": train, "seed": int(seed), "stratified": True}


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_seed(seed: object, what: str) -> None:
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"{what} must be an int >= 0, got {seed!r}")


# ---------------------------------------------------------------------------------------------
# Files: download, verification, parsing


def fetch_files(
    names: Sequence[str],
    *,
    dataset: str,
    root: str | os.PathLike = "data",
    path: str | os.PathLike | None = None,
    url: str | None = None,
    sha256: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Local, SHA-256-verified copies of a dataset's raw files.

    With ``path`` the files must already be in that folder (they are verified, nothing is
    written there). Otherwise each file is downloaded into ``root/<dataset>/`` unless a copy
    with the right digest is there already.

    Returns
    -------
    dict
        ``{file name: path}``.
    """
    digests = _expected_digests(names, sha256)
    if path is not None:
        folder = Path(path)
        found = {}
        for name in names:
            file = folder / name
            if not file.is_file():
                raise DataError(
                    f"{dataset}: {name} not found in {folder}; that folder must hold "
                    f"{', '.join(names)} (or drop path= to download them into {root})"
                )
            verify_sha256(file, digests[name])
            found[name] = file
        return found
    base = _base_url(dataset, url, {"mnist": MNIST_URL, "cifar10": CIFAR10_URL}.get(dataset))
    dest = Path(root) / dataset
    return {name: _download(base + name, dest, name, digests[name]) for name in names}


def _expected_digests(names: Sequence[str], sha256: Mapping[str, str] | None) -> dict[str, str]:
    if not isinstance(sha256, (Mapping, type(None))):
        raise ConfigError(f"sha256 must be a mapping of file name to hex digest, got {sha256!r}")
    overrides = dict(sha256 or {})
    digests = {}
    for name in names:
        digest = str(overrides.get(name, KNOWN_SHA256.get(name, ""))).lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ConfigError(
                f"no valid SHA-256 for {name} ({digest or 'none known'}); unverified files are "
                f"not used: pass sha256={{{name!r}: '<64 hex digits>'}}"
            )
        digests[name] = digest
    return digests


def _file_provenance(
    dataset: str,
    names: Sequence[str],
    sha256: Mapping[str, str] | None,
    path: str | os.PathLike | None,
    url: str | None,
    default_url: str,
) -> dict[str, Any]:
    """The verified files of a downloaded dataset and where they came from."""
    location = str(path) if path is not None else _base_url(dataset, url, default_url)
    return {"files": _expected_digests(names, sha256), "location": location}


def _base_url(dataset: str, url: str | None, default: str | None) -> str:
    if url is None:
        mirror = os.environ.get(DATA_URL_ENV)
        url = f"{mirror.rstrip('/')}/{dataset}/" if mirror else default
    if not url:
        raise ConfigError(f"{dataset}: no download URL; pass url= or path=")
    return url if url.endswith("/") else url + "/"


def _download(url: str, folder: Path, name: str, digest: str) -> Path:
    import pooch
    import requests

    try:
        # pooch streams to a temporary file and moves it into place only if the digest matches.
        file = pooch.retrieve(
            url,
            known_hash=f"sha256:{digest}",
            fname=name,
            path=folder,
            progressbar=False,
            downloader=pooch.HTTPDownloader(timeout=_DOWNLOAD_TIMEOUT_S),
        )
    except ValueError as err:
        raise DataError(
            f"{name} from {url} failed verification and was not used: {err}. The server or "
            f"mirror holds a different file; use the standard one or pass sha256= for it"
        ) from None
    except (OSError, requests.RequestException) as err:
        raise DataError(
            f"could not download {name} from {url}: {err}. Point url= or ${DATA_URL_ENV} at a "
            f"mirror, or pass path= to a folder that holds the files"
        ) from None
    return Path(file)


def verify_sha256(file: str | os.PathLike, digest: str) -> None:
    """Raise DataError unless ``file`` has SHA-256 ``digest``."""
    actual = _sha256_file(Path(file))
    if actual != digest.lower():
        raise DataError(
            f"SHA-256 of {file} is {actual}, expected {digest}; the file is corrupt, truncated or "
            f"not the standard one. Replace it, or pass sha256={{{Path(file).name!r}: {actual!r}}} "
            "if it is meant to differ"
        )


def _sha256_file(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(file: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (as used by MNIST), gzip-compressed or not.

    Raises
    ------
    DataError
        Bad gzip stream, bad magic number, or a data size that disagrees with the header.
    """
    raw = Path(file).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(
                f"{file} is not a valid gzip file ({err}); delete it and retry"
            ) from None
    return parse_idx(raw, source=str(file))


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an (uncompressed) IDX file into a native-endian array."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{source} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{source}: IDX header is truncated or declares {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"{source}: header declares shape {dims} ({expected} bytes) but {len(data) - header} "
            "bytes follow; the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def read_mnist_pair(
    images_file: str | os.PathLike, labels_file: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST images (N, 28, 28) uint8 and labels (N,) int64 from an IDX pair, with checks."""
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{images_file}: expected uint8 images of shape (N, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{labels_file}: expected uint8 labels (N,), got {labels.dtype} {labels.shape}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels"
        )
    if len(labels) and labels.max() > 9:
        raise DataError(f"{labels_file}: labels must be digits 0-9, found {labels.max()}")
    return images, labels.astype(np.int64)


def read_cifar10_binary(
    archive: str | os.PathLike,
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Train and test arrays from ``cifar-10-binary.tar.gz``.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        uint8 images (N, 3, 32, 32) and int64 labels.
    """
    wanted = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    raw: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            # Members are read in archive order: seeking back in a gzip stream would decompress
            # the archive again from its start for every batch.
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in wanted:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        raw[name] = handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{archive} is not a readable tar.gz archive ({err})") from None
    missing = [n for n in wanted if n not in raw]
    if missing:
        raise DataError(
            f"{archive} lacks {', '.join(missing)}; is it the CIFAR-10 *binary* archive?"
        )
    train = [_parse_cifar_batch(raw.pop(n), f"{archive}:{n}") for n in CIFAR10_TRAIN_BATCHES]
    test = _parse_cifar_batch(raw.pop(CIFAR10_TEST_BATCH), f"{archive}:{CIFAR10_TEST_BATCH}")
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return (x_train, y_train), test


def _parse_cifar_batch(data: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DataError(
            f"{source}: {len(data)} bytes is not a whole number of {_CIFAR_RECORD}-byte records"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{source}: labels must be 0-9, found {labels.max()}")
    return records[:, 1:].reshape(-1, 3, 32, 32).copy(), labels


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    import zipfile

    try:
        # numpy reads a file that is neither a zip nor an .npy as a pickle, and refuses it as
        # "object data": say what it is instead
        if file.is_file() and not zipfile.is_zipfile(file):
            raise DataError(
                f"{file} is not a .npz file (not a zip archive); write it with numpy.savez or "
                "numpy.savez_compressed"
            )
        with np.load(file, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise DataError(f"npz file {file} not found") from None
    except ValueError as err:
        raise DataError(
            f"npz file {file} holds object arrays, which are not loaded (no pickle): {err}"
        ) from None
    except (OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{file} is not a readable .npz file ({err})") from None


def _checked_xy(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype == bool or not (
        np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    ):
        raise DataError(f"{where}: inputs must be real numbers, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]  # (N, H, W) grey images get their channel axis
    if x.ndim not in (2, 4):
        raise DataError(f"{where}: inputs must be (N, D), (N, H, W) or (N, C, H, W), got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: {len(x)} inputs need labels of shape ({len(x)},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{where}: labels must have an integer dtype, got {y.dtype}; "
            "save them with y.astype(np.int64) (class indices 0..K-1)"
        )
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: labels must be non-negative class indices, found {y.min()}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: inputs contain NaN or Inf")
    return x, y.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Normalisation


def _check_normalize(normalize: str, dataset: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise ConfigError(
            f"{dataset}: unknown normalize={normalize!r}; choose one of {', '.join(NORMALIZATIONS)}"
        )


def normalize_images(
    x_train: np.ndarray,
    x_test: np.ndarray,
    mode: Normalization,
    *,
    unit_range: tuple[float, float] = (0.0, 255.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Scale images ``(N, C, H, W)`` (uint8 pixels by default) or vectors ``(N, D)`` to float32.

    ``"none"``: the values as floats; ``"unit"``: ``unit_range`` mapped to [0, 1] (by default
    divided by 255); ``"standard"``: per-channel (per-feature for vectors) ``(x - mean) / std``
    with mean and std of the training split (applied to both splits).
    """
    _check_normalize(mode, "images")
    # float32 throughout: CIFAR-10's training split alone is 600 MB as float32.
    if mode == "none":
        return x_train.astype(np.float32), x_test.astype(np.float32)
    if mode == "unit":
        low, high = (float(v) for v in unit_range)
        if (low, high) == (0.0, 255.0):
            return x_train / np.float32(255), x_test / np.float32(255)
        scale = np.float32(1.0 / (high - low)) if high > low else np.float32(1.0)
        return (x_train - np.float32(low)) * scale, (x_test - np.float32(low)) * scale
    axes = tuple(i for i in range(x_train.ndim) if i != 1)
    mean = x_train.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = x_train.std(axis=axes, dtype=np.float64, keepdims=True)
    std = np.where(std > 0, std, 1.0)  # a constant channel stays at zero instead of NaN
    mean, scale = mean.astype(np.float32), (1.0 / std).astype(np.float32)
    return (x_train - mean) * scale, (x_test - mean) * scale


def _value_range(x: np.ndarray) -> tuple[float, float]:
    """Smallest and largest entry of ``x`` ((0, 1) for an empty array)."""
    if x.size == 0:
        return 0.0, 1.0
    return float(x.min()), float(x.max())
