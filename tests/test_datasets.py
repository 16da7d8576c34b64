"""Datasets: splits, synthetic data, npz files, IDX/CIFAR parsing, verified downloads, real MNIST.

Downloads are tested against a throw-away HTTP server on 127.0.0.1 serving tiny files made here;
nothing touches the internet.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import socket
import struct
import tarfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from infoplane.errors import ConfigError, DataError
from infoplane.train.datasets import (
    DATA_URL_ENV,
    KNOWN_SHA256,
    Dataset,
    load_dataset,
    parse_idx,
    read_idx,
    stratified_split,
)

MNIST_TEST_HISTOGRAM = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --- helpers that write the raw formats independently of the code under test ----------------


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(dtype).tobytes()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_tiny_mnist(folder: Path, rng: np.random.Generator, n_train=40, n_test=30) -> dict:
    """Tiny IDX/gz files under the standard names; returns arrays and their digests."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
        arrays[prefix] = (images, labels)
    digests = {p.name: sha256(p) for p in folder.iterdir()}
    return {"arrays": arrays, "sha256": digests}


def cifar_batch(rng: np.random.Generator, n: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    return records.tobytes(), images, labels


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def write_tiny_cifar(folder: Path, rng: np.random.Generator, per_batch=4, n_test=6) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    members, train_x, train_y = {}, [], []
    for i in range(1, 6):
        members[f"data_batch_{i}.bin"], x, y = cifar_batch(rng, per_batch)
        train_x.append(x)
        train_y.append(y)
    members["test_batch.bin"], test_x, test_y = cifar_batch(rng, n_test)
    members["batches.meta.txt"] = b"airplane\nautomobile\n"
    archive = folder / "cifar-10-binary.tar.gz"
    write_tar(archive, members)
    return {
        "train": (np.concatenate(train_x), np.concatenate(train_y)),
        "test": (test_x, test_y),
        "sha256": {archive.name: sha256(archive)},
    }


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture(autouse=True)
def _no_mirror_or_proxy(monkeypatch):
    monkeypatch.delenv(DATA_URL_ENV, raising=False)
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server(tmp_path):
    """(served folder, base URL) of an HTTP server on 127.0.0.1, stopped after the test."""
    served = tmp_path / "www"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# --- splits ------------------------------------------------------------------------------------


def test_stratified_split_exact_sizes_disjoint_and_proportional(rng):
    y = rng.choice(5, size=503, p=[0.4, 0.3, 0.15, 0.1, 0.05])
    train, test = stratified_split(y, test_size=0.2, seed=3)
    assert len(test) == round(0.2 * 503) and len(train) == 503 - len(test)
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(503))
    for c in range(5):
        assert abs(np.sum(y[test] == c) - 0.2 * np.sum(y == c)) < 1
    again = stratified_split(y, test_size=0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, test), again, strict=True))
    other = stratified_split(y, test_size=0.2, seed=4)
    assert not np.array_equal(test, other[1])


def test_stratified_split_with_train_size(rng):
    y = rng.integers(0, 3, size=100)
    train, test = stratified_split(y, test_size=20, train_size=50, seed=0)
    assert (len(train), len(test)) == (50, 20)
    assert np.intersect1d(train, test).size == 0


@pytest.mark.parametrize(
    ("test_size", "train_size"), [(0, None), (1.0, None), (60, 50), ("a", None), (True, None)]
)
def test_stratified_split_rejects_bad_sizes(test_size, train_size):
    with pytest.raises(ConfigError):
        stratified_split(np.arange(100) % 2, test_size=test_size, train_size=train_size)


# --- digits ------------------------------------------------------------------------------------


def test_digits_shapes_range_and_stratified_split():
    d = load_dataset("digits")
    assert d.name == "digits" and d.classes == 10
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.shape[1:] == (1, 8, 8) and d.input_shape == (1, 8, 8)
    assert len(d.x_train) + len(d.x_test) == 1797
    assert len(d.x_test) == round(0.2 * 1797)
    both = np.concatenate([d.x_train, d.x_test])
    assert both.min() == 0.0 and both.max() == 1.0
    counts = np.bincount(np.concatenate([d.y_train, d.y_test]))
    assert np.all(np.abs(np.bincount(d.y_test, minlength=10) - 0.2 * counts) < 1)


def test_digits_split_is_deterministic_and_configurable():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    c = load_dataset("digits", test_size=300, split_seed=1)
    assert len(c.x_test) == 300 and len(c.x_train) == 1497
    assert len(load_dataset("digits", test_fraction=0.5).x_test) == round(0.5 * 1797)
    with pytest.raises(ConfigError, match="not both"):
        load_dataset("digits", test_size=0.3, test_fraction=0.3)


def test_unknown_dataset_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="digits, mnist, cifar10, npz, synthetic"):
        load_dataset("imagenet")
    with pytest.raises(ConfigError, match=r"'colour'.*allowed: test_size"):
        load_dataset("digits", colour=True)


# --- synthetic ---------------------------------------------------------------------------------


def test_synthetic_is_deterministic_by_seed():
    a = load_dataset("synthetic", shape=(3, 8, 8), train_size=50, test_size=20, seed=7)
    b = load_dataset("synthetic", shape=(3, 8, 8), train_size=50, test_size=20, seed=7)
    c = load_dataset("synthetic", shape=(3, 8, 8), train_size=50, test_size=20, seed=8)
    assert a.x_train.shape == (50, 3, 8, 8) and a.x_test.shape == (20, 3, 8, 8)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert np.array_equal(np.bincount(a.y_train, minlength=10), np.full(10, 5))


def test_synthetic_default_is_cifar_shaped():
    d = load_dataset("synthetic", train_size=10, test_size=10)
    assert d.input_shape == (3, 32, 32) and d.classes == 10


def test_synthetic_classes_are_learnable():
    d = load_dataset("synthetic", shape=(3, 8, 8), classes=4, train_size=400, test_size=200)
    x_train, x_test = d.x_train.reshape(400, -1), d.x_test.reshape(200, -1)
    means = np.stack([x_train[d.y_train == c].mean(axis=0) for c in range(4)])
    nearest = np.argmin(((x_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == d.y_test) > 0.9


@pytest.mark.parametrize(
    "options", [{"shape": (3, 8)}, {"classes": 1}, {"train_size": 0}, {"noise": -1.0}]
)
def test_synthetic_rejects_bad_options(options):
    with pytest.raises(ConfigError):
        load_dataset("synthetic", **options)


# --- npz ---------------------------------------------------------------------------------------


def test_npz_split_and_channel_axis(tmp_path, rng):
    x = rng.random((50, 6, 6))
    y = np.arange(50) % 5
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = load_dataset("npz", path=tmp_path / "d.npz", test_size=10)
    assert d.x_train.shape == (40, 1, 6, 6) and d.x_test.shape == (10, 1, 6, 6)
    assert d.classes == 5 and np.array_equal(np.bincount(d.y_test), np.full(5, 2))
    restored = np.concatenate([d.x_train, d.x_test])[:, 0]
    assert np.allclose(np.sort(restored, axis=None), np.sort(x.astype(np.float32), axis=None))


def test_npz_with_own_test_split(tmp_path, rng):
    np.savez(
        tmp_path / "d.npz",
        x=rng.random((8, 3)),
        y=np.array([0, 1] * 4),
        x_test=rng.random((4, 3)),
        y_test=np.array([0, 1, 2, 2]),
    )
    d = load_dataset("npz", path=str(tmp_path / "d.npz"))
    assert d.x_train.shape == (8, 3) and d.x_test.shape == (4, 3) and d.classes == 3
    assert load_dataset("npz", path=tmp_path / "d.npz", classes=5).classes == 5


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 2))}, "lacks array.*'y'"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3, dtype=int)}, "labels of shape"),
        ({"x": np.zeros((4, 2)), "y": np.array([0.0, 1.0, 0.0, 1.0])}, "integer dtype"),
        ({"x": np.zeros((4, 2)), "y": np.array([0, -1, 0, 1])}, "non-negative"),
        ({"x": np.full((4, 2), np.nan), "y": np.array([0, 1, 0, 1])}, "NaN"),
        (
            {"x": np.zeros((4, 2)), "y": np.array([0, 1, 0, 1]), "x_test": np.zeros((2, 2))},
            "together",
        ),
        ({"x": np.array(["a"] * 4), "y": np.array([0, 1, 0, 1])}, "real numbers"),
    ],
)
def test_npz_errors_name_the_problem(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_dataset("npz", path=tmp_path / "bad.npz")


def test_npz_missing_file_path_and_small_classes(tmp_path):
    with pytest.raises(ConfigError, match="path="):
        load_dataset("npz")
    with pytest.raises(DataError, match="not found"):
        load_dataset("npz", path=tmp_path / "nope.npz")
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 2)), y=np.arange(10) % 3)
    with pytest.raises(ConfigError, match="labels go up to 2"):
        load_dataset("npz", path=tmp_path / "d.npz", classes=2)


def test_npz_object_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(DataError, match="object arrays"):
        load_dataset("npz", path=tmp_path / "o.npz")


def test_dataset_rejects_labels_outside_classes():
    with pytest.raises(DataError, match=r"0\.\.1"):
        Dataset("t", np.zeros((2, 3)), np.array([0, 2]), np.zeros((1, 3)), np.array([0]), 2)


# --- raw formats -------------------------------------------------------------------------------


def test_idx_round_trip_types_and_compression(tmp_path, rng):
    ints = rng.integers(-1000, 1000, size=(3, 4)).astype(np.int32)
    assert np.array_equal(parse_idx(idx_bytes(ints, 0x0C)), ints)
    floats = rng.random((2, 2, 2)).astype(np.float32)
    assert np.array_equal(parse_idx(idx_bytes(floats, 0x0D)), floats)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(ints, 0x0C)))
    (tmp_path / "a").write_bytes(idx_bytes(ints, 0x0C))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), read_idx(tmp_path / "a"))


def test_idx_rejects_bad_magic_truncation_and_bad_gzip(tmp_path):
    good = idx_bytes(np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match="magic"):
        parse_idx(b"\x01\x00" + good[2:])
    with pytest.raises(DataError, match="truncated"):
        parse_idx(good[:-5])
    with pytest.raises(DataError, match="truncated"):
        parse_idx(good[:6])
    (tmp_path / "bad.gz").write_bytes(gzip.compress(good)[:30])
    with pytest.raises(DataError, match="gzip"):
        read_idx(tmp_path / "bad.gz")


# --- MNIST and CIFAR-10 from a local HTTP server -----------------------------------------------


def test_mnist_download_verifies_parses_and_caches(server, tmp_path, rng):
    served, url = server
    tiny = write_tiny_mnist(served / "mnist", rng)
    root = tmp_path / "data"
    d = load_dataset("mnist", root=root, url=url + "mnist", sha256=tiny["sha256"])
    images, labels = tiny["arrays"]["train"]
    assert d.x_train.shape == (40, 1, 28, 28) and d.x_test.shape == (30, 1, 28, 28)
    assert np.array_equal(d.x_train[:, 0], images / np.float32(255))
    assert np.array_equal(d.y_train, labels) and np.array_equal(d.y_test, tiny["arrays"]["t10k"][1])
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(tiny["sha256"])
    assert d.description["files"] == tiny["sha256"]
    # A second load uses the verified files in root, with no server behind the URL.
    again = load_dataset("mnist", root=root, url=closed_port_url(), sha256=tiny["sha256"])
    assert np.array_equal(again.x_test, d.x_test)


def test_mnist_mirror_from_environment(server, tmp_path, rng, monkeypatch):
    served, url = server
    tiny = write_tiny_mnist(served / "mnist", rng)
    monkeypatch.setenv(DATA_URL_ENV, url.rstrip("/"))
    d = load_dataset("mnist", root=tmp_path / "data", source="t10k", sha256=tiny["sha256"])
    assert len(d.x_train) + len(d.x_test) == 30
    assert (tmp_path / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    assert not (tmp_path / "data" / "mnist" / "train-images-idx3-ubyte.gz").exists()


def test_download_with_wrong_checksum_is_refused_and_not_kept(server, tmp_path, rng):
    served, url = server
    write_tiny_mnist(served / "mnist", rng)
    root = tmp_path / "data"
    # The tiny files are not the standard ones, so the built-in digests reject them.
    with pytest.raises(DataError, match="failed verification"):
        load_dataset("mnist", root=root, url=url + "mnist/", source="t10k")
    assert not any(p.is_file() for p in root.rglob("*"))


def test_corrupt_cached_file_is_replaced_by_a_verified_download(server, tmp_path, rng):
    served, url = server
    tiny = write_tiny_mnist(served / "mnist", rng)
    cache = tmp_path / "data" / "mnist"
    cache.mkdir(parents=True)
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"garbage")
    d = load_dataset(
        "mnist", root=tmp_path / "data", url=url + "mnist/", source="t10k", sha256=tiny["sha256"]
    )
    assert np.array_equal(
        np.sort(np.concatenate([d.y_train, d.y_test])), np.sort(tiny["arrays"]["t10k"][1])
    )
    assert (
        sha256(cache / "t10k-labels-idx1-ubyte.gz") == tiny["sha256"]["t10k-labels-idx1-ubyte.gz"]
    )


def test_unreachable_server_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="could not download"):
        load_dataset("mnist", root=tmp_path, url=closed_port_url(), source="t10k")


def test_local_mnist_folder_is_verified_and_split(tmp_path, rng):
    tiny = write_tiny_mnist(tmp_path / "raw", rng, n_test=50)
    with pytest.raises(DataError, match="SHA-256"):
        load_dataset("mnist", path=tmp_path / "raw", source="t10k")
    d = load_dataset(
        "mnist", path=tmp_path / "raw", source="t10k", test_size=10, sha256=tiny["sha256"]
    )
    assert (len(d.x_train), len(d.x_test)) == (40, 10)
    assert np.array_equal(np.bincount(d.y_test, minlength=10), np.ones(10))
    assert not (tmp_path / "data").exists()  # a local folder is used as is, nothing downloaded
    (tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz not found"):
        load_dataset("mnist", path=tmp_path / "raw", source="t10k", sha256=tiny["sha256"])


def test_mnist_rejects_wrong_image_size_and_mismatched_counts(tmp_path, rng):
    folder = tmp_path / "raw"
    folder.mkdir()
    images = folder / "t10k-images-idx3-ubyte.gz"
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    images.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 8, 8), dtype=np.uint8))))
    labels.write_bytes(gzip.compress(idx_bytes(np.zeros(4, dtype=np.uint8))))
    digests = {p.name: sha256(p) for p in (images, labels)}
    with pytest.raises(DataError, match=r"\(N, 28, 28\)"):
        load_dataset("mnist", path=folder, source="t10k", sha256=digests)
    images.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8))))
    digests[images.name] = sha256(images)
    with pytest.raises(DataError, match="5 images but"):
        load_dataset("mnist", path=folder, source="t10k", sha256=digests)


def test_bad_options_for_mnist(tmp_path):
    with pytest.raises(ConfigError, match="full"):
        load_dataset("mnist", source="train", root=tmp_path)
    with pytest.raises(ConfigError, match="normalize"):
        load_dataset("mnist", normalize="zscore", root=tmp_path)
    with pytest.raises(ConfigError, match="SHA-256"):
        load_dataset("mnist", sha256={"t10k-images-idx3-ubyte.gz": "abc"}, path=tmp_path)
    with pytest.raises(ConfigError, match="mapping"):
        load_dataset("mnist", sha256="abc", path=tmp_path)


def test_cifar10_download_and_normalisations(server, tmp_path, rng):
    served, url = server
    tiny = write_tiny_cifar(served / "cifar10", rng)
    root = tmp_path / "data"
    raw = load_dataset(
        "cifar10", root=root, url=url + "cifar10/", sha256=tiny["sha256"], normalize="none"
    )
    x_train, y_train = tiny["train"]
    assert raw.x_train.shape == (20, 3, 32, 32) and raw.x_test.shape == (6, 3, 32, 32)
    assert np.array_equal(raw.x_train, x_train.astype(np.float32))
    assert np.array_equal(raw.y_train, y_train) and np.array_equal(raw.y_test, tiny["test"][1])
    unit = load_dataset("cifar10", root=root, url=url + "cifar10/", sha256=tiny["sha256"])
    assert np.allclose(unit.x_test, tiny["test"][0] / 255.0)
    std = load_dataset(
        "cifar10", root=root, url=url + "cifar10/", sha256=tiny["sha256"], normalize="standard"
    )
    assert np.allclose(std.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    assert np.allclose(std.x_train.std(axis=(0, 2, 3)), 1, atol=1e-4)
    sub = load_dataset(
        "cifar10", root=root, url=url, sha256=tiny["sha256"], train_size=10, test_size=3
    )
    assert (len(sub.x_train), len(sub.x_test)) == (10, 3)


def test_cifar10_archive_checks(tmp_path, rng):
    folder = tmp_path / "raw"
    folder.mkdir()
    archive = folder / "cifar-10-binary.tar.gz"
    data, _, _ = cifar_batch(rng, 2)
    write_tar(archive, {f"data_batch_{i}.bin": data for i in range(1, 6)})
    with pytest.raises(DataError, match=r"lacks test_batch.bin"):
        load_dataset("cifar10", path=folder, sha256={archive.name: sha256(archive)})
    write_tar(
        archive,
        {n: data[:-1] for n in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]},
    )
    with pytest.raises(DataError, match="3073-byte records"):
        load_dataset("cifar10", path=folder, sha256={archive.name: sha256(archive)})
    archive.write_bytes(b"not a tar")
    with pytest.raises(DataError, match=r"tar.gz"):
        load_dataset("cifar10", path=folder, sha256={archive.name: sha256(archive)})


def test_known_digests_are_well_formed():
    assert set(KNOWN_SHA256) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
        "cifar-10-binary.tar.gz",
    }
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in KNOWN_SHA256.values())


# --- real MNIST --------------------------------------------------------------------------------


@pytest.mark.mnist
def test_real_mnist_test_set_loads_verified_and_splits(mnist_dir):
    d = load_dataset("mnist", path=mnist_dir, source="t10k")
    assert (len(d.x_train), len(d.x_test)) == (8000, 2000)
    assert d.x_train.shape[1:] == (1, 28, 28) and d.x_train.dtype == np.float32
    both_x = np.concatenate([d.x_train, d.x_test])
    assert both_x.min() == 0.0 and both_x.max() == 1.0
    both_y = np.concatenate([d.y_train, d.y_test])
    assert np.bincount(both_y).tolist() == MNIST_TEST_HISTOGRAM
    assert np.all(np.abs(np.bincount(d.y_test) - 0.2 * np.array(MNIST_TEST_HISTOGRAM)) < 1)
    assert (
        d.description["files"]["t10k-images-idx3-ubyte.gz"]
        == KNOWN_SHA256["t10k-images-idx3-ubyte.gz"]
    )
    again = load_dataset("mnist", path=mnist_dir, source="t10k")
    assert np.array_equal(again.x_test, d.x_test) and np.array_equal(again.y_train, d.y_train)


@pytest.mark.mnist
def test_real_mnist_full_needs_the_training_files(mnist_dir, tmp_path):
    if (mnist_dir / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("this folder holds the training files too")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz not found"):
        load_dataset("mnist", path=mnist_dir)


def _raw_pixel_npz(path: Path, rng: np.random.Generator) -> Path:
    """40 grey 12×12 images of 0–255 pixels in 4 classes (prototypes plus noise), as uint8."""
    prototypes = rng.integers(0, 256, size=(4, 12, 12))
    y = np.arange(40) % 4
    noise = rng.normal(0.0, 40.0, size=(40, 12, 12))
    x = np.clip(prototypes[y] + noise, 0, 255).astype(np.uint8)
    x[0, 0, 0], x[1, 0, 0] = 0, 255  # the training split spans the full range
    np.savez(path, x=x, y=y, x_test=x[:8], y_test=y[:8])
    return path


def _input_entropy(x: np.ndarray) -> float:
    """H(X) of the paper preset's input kernel (σ_X = 8) on the inputs ``x``."""
    from infoplane.core.distances import squared_distances
    from infoplane.core.entropy import renyi_entropy
    from infoplane.core.kernels import gaussian_gram
    from infoplane.core.plane import rule_width
    from infoplane.presets import resolve_preset

    preset = resolve_preset(None, "paper")
    d2 = squared_distances(x.reshape(len(x), -1).astype(np.float64))
    sigma = rule_width(preset["input_width"], d2, int(np.prod(x.shape[1:])))
    return float(renyi_entropy(gaussian_gram(d2, sigma), preset["alpha"]))


def test_npz_normalize_unit_ends_the_saturated_input_entropy(tmp_path, rng):
    path = _raw_pixel_npz(tmp_path / "raw.npz", rng)
    raw = load_dataset("npz", path=path)
    unit = load_dataset("npz", path=path, normalize="unit")
    ceiling = np.log2(len(raw.x_train))
    assert raw.x_train.max() == 255.0 and "normalize" not in raw.description
    assert _input_entropy(raw.x_train) >= ceiling - 1e-2  # every image its own cluster
    # the same scale as MNIST's /255, on the training split's own range
    np.testing.assert_array_equal(unit.x_train, raw.x_train / np.float32(255))
    assert unit.description["normalize"] == "unit"
    h_unit = _input_entropy(unit.x_train)
    assert 0.5 < h_unit < ceiling - 0.5


def test_npz_normalize_options(tmp_path, rng):
    x = rng.normal(50.0, 4.0, size=(30, 3)).astype(np.float32)
    x[:, 2] = 7.0  # a constant feature stays finite under standard
    np.savez(tmp_path / "v.npz", x=x, y=np.arange(30) % 3)
    d = load_dataset("npz", path=tmp_path / "v.npz", normalize="standard", test_size=6)
    assert np.allclose(d.x_train.mean(axis=0), 0.0, atol=1e-4)
    assert np.allclose(d.x_train[:, :2].std(axis=0), 1.0, atol=1e-4)
    assert np.isfinite(d.x_test).all() and not d.x_train[:, 2].any()
    u = load_dataset("npz", path=tmp_path / "v.npz", normalize="unit", test_size=6)
    assert u.x_train.min() == 0.0 and u.x_train.max() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="npz: unknown normalize"):
        load_dataset("npz", path=tmp_path / "v.npz", normalize="minmax")
