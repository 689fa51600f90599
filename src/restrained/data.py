"""Datasets as NumPy arrays with a documented layout, normalisation and fixed split.

Layout: images are ``float32`` arrays of shape ``(N, H, W, C)`` (channels last, the
Flax convention), 1-D signals ``(N, L, C)``; labels are ``int32`` arrays of shape ``(N,)``.

* Offline, nothing downloaded: scikit-learn's 8x8 digits (they ship inside the package)
  and MNIST-1D (generated procedurally by the ``mnist1d`` package, never its download
  path), plus CIFAR-shaped synthetic data for throughput checks.
* Downloaded once, checksum-verified and cached: CIFAR-10 (the official binary archive)
  and Fashion-MNIST (the official gz files). They are parsed with NumPy: nothing is
  unpickled, and archive members are read in memory, never extracted to disk. The cache
  directory is the ``cache_dir`` argument, else ``$RESTRAINED_DATA_DIR``, else
  ``$XDG_CACHE_HOME/restrained`` (``~/.cache/restrained``).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Split:
    """A train/test split. ``x_*`` are ``float32 (N, H, W, C)``, ``y_*`` are ``int32 (N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str
    pad_value: tuple[float, ...] | None = None  # a black pixel after normalisation

    def __post_init__(self) -> None:
        for part in ("train", "test"):
            x, y = getattr(self, f"x_{part}"), getattr(self, f"y_{part}")
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"x_{part} and y_{part} disagree on the number of examples")


def load_digits(test_size: int = 497, seed: int = 0) -> Split:
    """scikit-learn's 1,797 handwritten digits, 8x8x1, pixel values divided by 16 into [0, 1].

    The split is a fixed permutation drawn from ``numpy.random.default_rng(seed)``: the
    last ``test_size`` examples of it are the test set (1,300 / 497 by default).
    """
    from sklearn.datasets import load_digits as _sk_digits

    n_total = 1797
    if not 0 < test_size < n_total:
        raise ValueError(f"test_size must lie in (0, {n_total}), got {test_size}")
    bunch = _sk_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[..., None]
    y = bunch.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(y))
    train, test = order[:-test_size], order[-test_size:]
    return Split(x[train], y[train], x[test], y[test], num_classes=10, name="digits")


def load_mnist1d(num_samples: int = 5000, seed: int = 42) -> Split:
    """MNIST-1D (Greydanus, 2020), generated on the spot: no download.

    The ``mnist1d`` generator draws ``num_samples`` length-40 signals of 10 classes
    (its standard settings otherwise), standardises the whole set to mean 0 and std 1,
    and splits it 80 / 20 in generation order; ``seed`` 42 with 5,000 samples is the
    published standard set. Layout ``(N, 40, 1)``. Note: the generator seeds NumPy's
    global random state.
    """
    if num_samples < 20:
        raise ValueError(f"num_samples must be >= 20, got {num_samples}")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.seed = int(num_samples), int(seed)
    d = make_dataset(args)
    return Split(
        d["x"].astype(np.float32)[..., None],
        d["y"].astype(np.int32),
        d["x_test"].astype(np.float32)[..., None],
        d["y_test"].astype(np.int32),
        num_classes=10,
        name="mnist1d",
    )


def synthetic_images(
    n_train: int = 1024,
    n_test: int = 256,
    shape: tuple[int, int, int] = (32, 32, 3),
    num_classes: int = 10,
    seed: int = 0,
) -> Split:
    """CIFAR-shaped stand-in data for throughput checks on machines without the dataset.

    Each class has a fixed random template; an example is its class template plus
    standard normal noise, so a network can learn it. Not a benchmark of accuracy.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(num_classes, *shape)).astype(np.float32)
    y = rng.integers(0, num_classes, n_train + n_test).astype(np.int32)
    x = templates[y] + rng.normal(size=(n_train + n_test, *shape)).astype(np.float32)
    return Split(
        x[:n_train], y[:n_train], x[n_train:], y[n_train:], num_classes, "synthetic", (0.0,) * 3
    )


# ---------------------------------------------------------------- downloaded datasets

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
CIFAR10_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"
CIFAR10_DIR = "cifar-10-batches-bin"
# The authors' main6.py normalises CIFAR-10 with these (CIFAR-100) statistics.
AUTHORS_MEAN = (0.507, 0.487, 0.441)
AUTHORS_STD = (0.267, 0.256, 0.276)

FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}


class DatasetUnavailableError(FileNotFoundError):
    """A dataset is neither cached nor downloadable; the message says how to get it."""


def default_cache_dir() -> Path:
    """``$RESTRAINED_DATA_DIR``, else ``$XDG_CACHE_HOME/restrained`` (``~/.cache/restrained``)."""
    if os.environ.get("RESTRAINED_DATA_DIR"):
        return Path(os.environ["RESTRAINED_DATA_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "restrained"


def md5sum(path: Path) -> str:
    """Hex MD5 digest of a file (the checksum the datasets' authors publish)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, path: Path, md5: str | None, download: bool = True) -> Path:
    """Return ``path``, downloading ``url`` there first if it is missing.

    The file is checked against ``md5`` (skipped when ``None``). A download goes to a
    temporary name and is renamed only once its checksum matches.

    Raises:
        DatasetUnavailableError: the file is missing and cannot be downloaded.
        ValueError: the file's checksum is wrong.
    """
    path = Path(path)
    if not path.exists():
        how = (
            f"{path.name} is not in the cache {path.parent}. Download {url} "
            + (f"(MD5 {md5}) " if md5 else "")
            + f"and put it at {path}, or point the cache elsewhere with the cache_dir "
            "argument or the RESTRAINED_DATA_DIR environment variable."
        )
        if not download:
            raise DatasetUnavailableError(how + " (download=False)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
        except (urllib.error.URLError, OSError) as err:
            tmp.unlink(missing_ok=True)
            raise DatasetUnavailableError(f"{how} The download failed: {err}") from err
        if md5 is not None and md5sum(tmp) != md5:
            got = md5sum(tmp)
            tmp.unlink()
            raise ValueError(f"checksum mismatch for {url}: MD5 {got}, expected {md5}")
        tmp.rename(path)
    if md5 is not None and md5sum(path) != md5:
        raise ValueError(
            f"checksum mismatch for {path}: MD5 {md5sum(path)}, expected {md5}. "
            "Delete the file to download it again."
        )
    return path


def parse_cifar10_binary(archive: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the official CIFAR-10 binary tarball: ``uint8`` (N, 32, 32, 3) images and labels.

    Each record is 1 label byte followed by 3,072 pixel bytes: the 1,024 red values of the
    32x32 image in row-major order, then green, then blue. Only the six expected regular
    files are read, into memory.
    """
    record = 1 + 32 * 32 * 3
    parts: dict[str, np.ndarray] = {}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    with tarfile.open(archive, "r:gz") as tar:
        for name in names:
            try:
                member = tar.getmember(f"{CIFAR10_DIR}/{name}")
            except KeyError as err:
                raise ValueError(f"{archive} has no member {CIFAR10_DIR}/{name}") from err
            if not member.isfile() or member.size % record:
                raise ValueError(f"{name} in {archive} is not a file of {record}-byte records")
            raw = tar.extractfile(member).read()
            parts[name] = np.frombuffer(raw, np.uint8).reshape(-1, record)

    def split(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels = rows[:, 0].astype(np.int32)
        if labels.max(initial=0) > 9:
            raise ValueError("CIFAR-10 labels must lie in 0..9")
        return rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels

    x_train, y_train = split(np.concatenate([parts[n] for n in names[:5]]))
    x_test, y_test = split(parts["test_batch.bin"])
    return x_train, y_train, x_test, y_test


def load_cifar10(
    cache_dir: str | Path | None = None,
    download: bool = True,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
) -> Split:
    """CIFAR-10, the official split (50,000 / 10,000), 32x32x3.

    Pixels are scaled to [0, 1], then standardised per channel with the authors' mean
    (0.507, 0.487, 0.441) and std (0.267, 0.256, 0.276) (CIFAR-100 statistics, as in their
    ``main6.py``). ``pad_value`` is a black pixel after that map, so that crop padding
    matches PyTorch's pad-then-normalise order.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    archive = fetch(url, root / "cifar-10-binary.tar.gz", md5, download)
    x_train, y_train, x_test, y_test = parse_cifar10_binary(archive)
    mean, std = np.asarray(AUTHORS_MEAN, np.float32), np.asarray(AUTHORS_STD, np.float32)

    def norm(x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float32) / np.float32(255.0)) - mean) / std

    pad = tuple(float(v) for v in (-mean / std))
    return Split(norm(x_train), y_train, norm(x_test), y_test, 10, "cifar10", pad)


def parse_idx(data: bytes) -> np.ndarray:
    """Decode an (uncompressed) IDX file of unsigned bytes, e.g. MNIST's.

    Header: two zero bytes, the type code 0x08 (uint8), the number of dimensions, then
    each dimension as a big-endian 32-bit integer.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError("not an IDX file: the magic number must start with two zero bytes")
    if data[2] != 0x08:
        raise ValueError(f"IDX type code {data[2]:#04x} is not 0x08 (unsigned byte)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise ValueError(f"IDX payload has {len(data) - header} bytes, expected {np.prod(dims)}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(
    cache_dir: str | Path | None = None,
    download: bool = True,
    url: str = FASHION_URL,
    md5: dict[str, str] | None = None,
) -> Split:
    """Fashion-MNIST, the official split (60,000 / 10,000), 28x28x1, pixels / 255 in [0, 1]."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sums = FASHION_MD5 if md5 is None else md5
    arrays = {}
    for name in FASHION_MD5:
        path = fetch(
            url.rstrip("/") + "/" + name, root / "fashion-mnist" / name, sums[name], download
        )
        with gzip.open(path, "rb") as f:
            arrays[name.split("-")[0] + "-" + name.split("-")[1]] = parse_idx(f.read())
    x_train, y_train = arrays["train-images"], arrays["train-labels"].astype(np.int32)
    x_test, y_test = arrays["t10k-images"], arrays["t10k-labels"].astype(np.int32)
    if x_train.ndim != 3 or x_train.shape[0] != y_train.shape[0]:
        raise ValueError(
            f"Fashion-MNIST images {x_train.shape} do not match labels {y_train.shape}"
        )

    def norm(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) / np.float32(255.0))[..., None]

    return Split(norm(x_train), y_train, norm(x_test), y_test, 10, "fashion_mnist", (0.0,))


DATASETS = ("digits", "mnist1d", "cifar10", "fashion_mnist", "synthetic")


def load_dataset(name: str, **kwargs) -> Split:
    """Load a dataset by name (one of :data:`DATASETS`); keyword arguments go to its loader."""
    loaders = {
        "digits": load_digits,
        "mnist1d": load_mnist1d,
        "cifar10": load_cifar10,
        "fashion_mnist": load_fashion_mnist,
        "synthetic": synthetic_images,
    }
    if name not in loaders:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    return loaders[name](**kwargs)
