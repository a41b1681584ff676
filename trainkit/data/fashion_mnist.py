"""The embedded Fashion-MNIST: Debian's IDX files read into `datasets.Dataset`s."""

from __future__ import annotations

import functools
import gzip
import os
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa

from trainkit.data.fingerprints import file_stats, stable_hash

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    try:
        with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt IDX file ({err})") from err
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: corrupt IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: corrupt IDX file (truncated header)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: corrupt IDX file (header says shape {shape}: {expected} bytes of data, found {len(raw) - header})"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _idx_path(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}.gz not found in {directory}. Install the data with "
        "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set FASHION_MNIST_DIR "
        "to a folder holding the four IDX files (train-/t10k-images-idx3-ubyte.gz, train-/t10k-labels-idx1-ubyte.gz)."
    )


def array2d_column(images: np.ndarray) -> pa.Array:
    """`[N, H, W]` numpy -> arrow storage of a `datasets.Array2D` column, without copying values."""
    n, h, w = images.shape
    values = pa.array(np.ascontiguousarray(images).reshape(-1))
    rows = pa.ListArray.from_arrays(pa.array(np.arange(0, n * h * w + 1, w, dtype=np.int32)), values)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * h + 1, h, dtype=np.int32)), rows)


def fashion_mnist_dir() -> Path:
    """`$FASHION_MNIST_DIR`, else where Debian's `dataset-fashion-mnist` installs the files."""
    return Path(os.environ.get("FASHION_MNIST_DIR") or FASHION_MNIST_DIR)


def _fashion_mnist_paths(directory: Path) -> dict[str, list[Path]]:
    return {split: [_idx_path(directory, stem) for stem in stems] for split, stems in _FASHION_MNIST_FILES.items()}


def load_fashion_mnist(directory: str | Path | None = None) -> dict[str, datasets.Dataset]:
    """Fashion-MNIST train (60k) / test (10k) as `datasets.Dataset`s with an `Array2D` uint8 image column."""
    paths = _fashion_mnist_paths(Path(directory) if directory else fashion_mnist_dir())
    stats = file_stats([p for pair in paths.values() for p in pair])
    return dict(_read_fashion_mnist(tuple((split, *pair) for split, pair in paths.items()), stats))


@functools.lru_cache(maxsize=1)
def _read_fashion_mnist(paths: tuple[tuple[str, Path, Path], ...], stats: str) -> dict[str, datasets.Dataset]:
    return {split: _read_split(split, image_path, label_path, stats) for split, image_path, label_path in paths}


def _read_split(split: str, image_path: Path, label_path: Path, stats: str) -> datasets.Dataset:
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{image_path}: corrupt IDX file (expected uint8 [N, H, W] images, got {images.shape})")
    if labels.ndim != 1 or labels.dtype != np.uint8 or len(labels) != len(images):
        raise ValueError(f"{label_path}: corrupt IDX file (expected {len(images)} uint8 labels, got {labels.shape})")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ValueError(f"{label_path}: corrupt IDX file (label {labels.max()} out of range)")
    features = datasets.Features({
        "image": datasets.Array2D(images.shape[1:], "uint8"),
        "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES),
    })
    table = pa.table({"image": array2d_column(images), "label": pa.array(labels.astype(np.int64))})
    table = table.cast(features.arrow_schema)
    return datasets.Dataset(
        datasets.table.InMemoryTable(table),
        info=datasets.DatasetInfo(features=features),
        split=datasets.NamedSplit(split),
        fingerprint=stable_hash("fashion_mnist", split, stats),
    )
