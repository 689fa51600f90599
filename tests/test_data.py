"""Dataset loaders: the official archive formats, built small here, parsed by the real code."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from restrained import data

RNG = np.random.default_rng(0)


def cifar_records(n: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    """``n`` records in the CIFAR-10 binary layout: label byte, then R, G, B planes."""
    labels = RNG.integers(0, 10, n).astype(np.uint8)
    images = RNG.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    planes = images.transpose(0, 3, 1, 2).reshape(n, -1)
    return np.concatenate([labels[:, None], planes], axis=1).tobytes(), images, labels


def make_cifar_archive(path: Path, per_batch: int = 3, extra: dict | None = None):
    """A small tarball with the official member names; returns the expected arrays."""
    parts = {}
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
        for name in names:
            raw, images, labels = cifar_records(per_batch)
            parts[name] = (images, labels)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
        for name, payload in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    x_train = np.concatenate([parts[n][0] for n in names[:5]])
    y_train = np.concatenate([parts[n][1] for n in names[:5]])
    return x_train, y_train, parts["test_batch.bin"][0], parts["test_batch.bin"][1]


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def make_fashion_files(root: Path, n_train: int = 5, n_test: int = 3) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": RNG.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": RNG.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte.gz": RNG.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": RNG.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        with gzip.open(root / name, "wb") as f:
            f.write(idx_bytes(array))
    return arrays


def test_cifar_parser_reads_channel_planes_row_major(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    want = make_cifar_archive(archive)
    got = data.parse_cifar10_binary(archive)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert got[0].shape == (15, 32, 32, 3) and got[2].shape == (3, 32, 32, 3)


def test_load_cifar10_normalises_and_verifies_the_checksum(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    x_train, y_train, _, y_test = make_cifar_archive(archive)
    split = data.load_cifar10(tmp_path, download=False, md5=data.md5sum(archive))
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int32
    mean, std = np.asarray(data.AUTHORS_MEAN), np.asarray(data.AUTHORS_STD)
    want = (x_train[4, 7, 9] / 255.0 - mean) / std
    np.testing.assert_allclose(split.x_train[4, 7, 9], want, rtol=1e-5)
    np.testing.assert_array_equal(split.y_train, y_train)
    np.testing.assert_array_equal(split.y_test, y_test)
    np.testing.assert_allclose(split.pad_value, -mean / std, rtol=1e-6)
    with pytest.raises(ValueError, match="checksum"):
        data.load_cifar10(tmp_path, download=False, md5="0" * 32)


def test_cifar_download_path_uses_a_local_url_and_checks_md5(tmp_path):
    source = tmp_path / "mirror" / "cifar.tar.gz"
    source.parent.mkdir()
    make_cifar_archive(source)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="checksum mismatch"):
        data.load_cifar10(cache, url=source.as_uri(), md5="f" * 32)
    assert not (cache / "cifar-10-binary.tar.gz").exists()
    split = data.load_cifar10(cache, url=source.as_uri(), md5=data.md5sum(source))
    assert (cache / "cifar-10-binary.tar.gz").exists() and split.x_test.shape[0] == 3


def test_cifar_parser_rejects_odd_members(tmp_path):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ValueError, match=r"data_batch_1\.bin"):
        data.parse_cifar10_binary(archive)
    truncated = tmp_path / "short.tar.gz"
    with tarfile.open(truncated, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_1.bin")
        info.size = 100
        tar.addfile(info, io.BytesIO(b"\0" * 100))
    with pytest.raises(ValueError, match="records"):
        data.parse_cifar10_binary(truncated)


def test_cifar_archive_extra_members_are_never_extracted(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    make_cifar_archive(archive, extra={"../escape.txt": b"x"})
    data.parse_cifar10_binary(archive)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_offline_without_cache_says_how_to_get_the_files(tmp_path):
    with pytest.raises(data.DatasetUnavailableError) as err:
        data.load_cifar10(tmp_path / "empty", download=False)
    message = str(err.value)
    assert data.CIFAR10_URL in message and data.CIFAR10_MD5 in message
    assert str(tmp_path / "empty" / "cifar-10-binary.tar.gz") in message
    assert "RESTRAINED_DATA_DIR" in message
    unreachable = (tmp_path / "nowhere" / "x.tar.gz").as_uri()
    with pytest.raises(data.DatasetUnavailableError, match="download failed"):
        data.load_cifar10(tmp_path / "empty", url=unreachable)
    with pytest.raises(data.DatasetUnavailableError, match="fashion"):
        data.load_fashion_mnist(tmp_path / "empty", download=False)


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("RESTRAINED_DATA_DIR", str(tmp_path / "here"))
    assert data.default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("RESTRAINED_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_cache_dir() == tmp_path / "xdg" / "restrained"


def test_fashion_mnist_reads_idx_gz_files(tmp_path):
    arrays = make_fashion_files(tmp_path / "fashion-mnist")
    sums = {name: data.md5sum(tmp_path / "fashion-mnist" / name) for name in arrays}
    split = data.load_fashion_mnist(tmp_path, download=False, md5=sums)
    assert split.x_train.shape == (5, 28, 28, 1) and split.x_test.shape == (3, 28, 28, 1)
    np.testing.assert_allclose(
        split.x_train[..., 0], arrays["train-images-idx3-ubyte.gz"] / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(split.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    with pytest.raises(ValueError, match="checksum"):
        data.load_fashion_mnist(tmp_path, download=False)  # the official sums do not match


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", "magic"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x07", "type code"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05\x07", "payload"),
    ],
)
def test_idx_parser_rejects_bad_headers(payload, match):
    with pytest.raises(ValueError, match=match):
        data.parse_idx(payload)


def test_mnist1d_is_generated_offline_with_the_documented_layout():
    split = data.load_mnist1d(num_samples=200, seed=3)
    assert split.x_train.shape == (160, 40, 1) and split.x_test.shape == (40, 40, 1)
    assert split.x_train.dtype == np.float32 and split.y_train.dtype == np.int32
    both = np.concatenate([split.x_train, split.x_test])
    assert abs(float(both.mean())) < 1e-4 and abs(float(both.std()) - 1) < 1e-4
    again = data.load_mnist1d(num_samples=200, seed=3)
    np.testing.assert_array_equal(split.x_train, again.x_train)


def test_synthetic_images_and_registry():
    split = data.load_dataset("synthetic", n_train=8, n_test=4)
    assert split.x_train.shape == (8, 32, 32, 3) and split.num_classes == 10
    with pytest.raises(ValueError, match="dataset"):
        data.load_dataset("imagenet")
    with pytest.raises(ValueError, match="num_samples"):
        data.load_mnist1d(num_samples=5)


def test_load_digits_is_unchanged():
    split = data.load_digits()
    assert split.x_train.shape == (1300, 8, 8, 1) and split.pad_value is None
