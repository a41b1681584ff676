"""Image data shared by both stages: sources, splits and transforms.

Sources: the embedded Fashion-MNIST (Debian's IDX files), an image folder, parquet/arrow
files, or a hub dataset id. Images are converted to L/RGB, brought to one size and served
as float32 `[C, H, W]` tensors in [-1, 1] with int labels (-1 when unlabelled).
"""

from __future__ import annotations

import functools
import glob
import gzip
import hashlib
import io
import logging
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import PIL.Image
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
_FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
_TABLE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_BATCH = 1024


@dataclass
class DataConfig:
    """Which images to train on and how to prepare them."""

    dataset: str = "fashion_mnist"  # "fashion_mnist" | image folder | parquet/arrow file(s), glob or folder | hub id
    config_name: str | None = None  # hub dataset config
    revision: str | None = None  # hub dataset revision
    image_column: str = "image"
    label_column: str | None = "label"  # None or missing column -> unlabelled
    channels: int = 1  # 1 (grayscale) or 3 (RGB)
    image_size: int | None = None  # None: native size (must divide by the model's downsampling factor)
    resize_mode: str = "resize"  # "resize" (center-crop to square, bicubic/antialias) | "pad" (centred black padding)
    val_split: str = "auto"  # "auto" (validation, else test, else holdout) | "holdout" | a split name
    val_fraction: float = 0.05  # size of the deterministic holdout
    split_seed: int = 0
    max_train_samples: int | None = None  # first N after the split
    max_val_samples: int | None = None
    num_workers: int = 0  # DataLoader workers (also decode images while materialising)
    in_memory_max_mb: int = 2048  # materialise a transformed split as one uint8 tensor when it fits


# ----------------------------------------------------------------------------- IDX / Fashion-MNIST

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
    stats = _file_stats([p for pair in paths.values() for p in pair])
    return dict(_read_fashion_mnist(tuple((split, *pair) for split, pair in paths.items()), stats))


@functools.lru_cache(maxsize=1)
def _read_fashion_mnist(paths: tuple[tuple[str, Path, Path], ...], stats: str) -> dict[str, datasets.Dataset]:
    splits = {}
    for split, image_path, label_path in paths:
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
        splits[split] = datasets.Dataset(
            datasets.table.InMemoryTable(table),
            info=datasets.DatasetInfo(features=features),
            split=datasets.NamedSplit(split),
            fingerprint=_hash("fashion_mnist", split, stats),
        )
    return splits


# ----------------------------------------------------------------------------- sources


@dataclass
class _Source:
    kind: str  # fashion_mnist | imagefolder | parquet | arrow | hub
    location: str
    splits: dict[str, datasets.Dataset]
    stats: str = ""  # extra fingerprint material (file sizes/mtimes, hub fingerprints)

    @property
    def description(self) -> str:
        return f"{self.kind}:{self.location}"


def _hash(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _file_stats(paths) -> str:
    stats = [(str(p), st.st_size, st.st_mtime_ns) for p in paths for st in [os.stat(p)]]
    return _hash(*sorted(stats))


def _fingerprints(splits: dict[str, datasets.Dataset]) -> str:
    return _hash(*(f"{name}={getattr(d, '_fingerprint', '')}" for name, d in sorted(splits.items())))


def _tree_stats(root: Path) -> str:
    count = total = latest = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.stat(os.path.join(dirpath, name))
            count, total, latest = count + 1, total + st.st_size, max(latest, st.st_mtime_ns)
    return f"{count}-{total}-{latest}"


def _split_keyword(token: str) -> str | None:
    token = token.lower()
    return next((split for split, words in _SPLIT_KEYWORDS.items() if token in words), None)


def _infer_split(path: Path, root: Path) -> str | None:
    """Split named by a file's name tokens (`train-0000.parquet`) or, failing that, its folders."""
    parts = path.relative_to(root).parts
    for part in [parts[-1].split(".")[0], *reversed(parts[:-1])]:
        for token in re.split(r"[-_.\s]+", part):
            if split := _split_keyword(token):
                return split
    return None


def _group_table_files(files: list[Path]) -> dict[str, list[str]]:
    if len(files) == 1:
        return {"train": [str(files[0])]}
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    groups: dict[str, list[str]] = {}
    unknown = []
    for f in files:
        split = _infer_split(f, root)
        (groups.setdefault(split, []) if split else unknown).append(str(f))
    if not groups:
        return {"train": [str(f) for f in files]}
    if unknown:
        raise ValueError(
            f"Cannot tell the split of {unknown[:3]}{'...' if len(unknown) > 3 else ''} while other files name one "
            f"({sorted(groups)}); name every file train-*/validation-*/test-* or point data.dataset at specific files."
        )
    return groups


def _open_table_files(files: list[Path], location: str) -> _Source:
    kinds = {_TABLE_SUFFIXES.get(f.suffix.lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(
            f"data.dataset={location!r}: expected only .parquet or only .arrow files, "
            f"got {sorted({f.suffix for f in files})}"
        )
    kind = kinds.pop()
    loaded = datasets.load_dataset(kind, data_files=_group_table_files(files))
    return _Source(kind, location, dict(loaded), _file_stats(files))


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or Path(name).suffix.lower() in (*_TABLE_SUFFIXES, ".png", ".jpg", ".jpeg")
        or not _HUB_ID.match(name)
    )


def _open_source(cfg: DataConfig) -> _Source:
    name = cfg.dataset
    if name in ("fashion_mnist", "fashion-mnist"):
        splits = load_fashion_mnist(fashion_mnist_dir())
        return _Source("fashion_mnist", str(fashion_mnist_dir()), splits, _fingerprints(splits))
    if re.search(r"[*?[]", name):
        matches = glob.glob(os.path.expanduser(name), recursive=True)
        files = sorted(Path(p).resolve() for p in matches if os.path.isfile(p))
        if not files:
            raise FileNotFoundError(f"data.dataset={name!r}: no files match this pattern")
        return _open_table_files(files, name)
    path = Path(name).expanduser()
    if path.is_file():
        return _open_table_files([path.resolve()], str(path.resolve()))
    if path.is_dir():
        path = path.resolve()
        tables = sorted(p for p in path.rglob("*") if p.suffix.lower() in _TABLE_SUFFIXES and p.is_file())
        if tables:
            return _open_table_files(tables, str(path))
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        return _Source("imagefolder", str(path), dict(loaded), _tree_stats(path))
    if _looks_like_path(name):
        raise FileNotFoundError(f"data.dataset={name!r}: no such file or directory")
    loaded = datasets.load_dataset(name, name=cfg.config_name, revision=cfg.revision)
    if isinstance(loaded, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise ValueError(f"data.dataset={name!r}: streaming datasets are not supported")
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    location = f"{name}[{cfg.config_name or 'default'}]@{cfg.revision or 'main'}"
    return _Source("hub", location, splits, _fingerprints(splits))


# ----------------------------------------------------------------------------- splits


def _find_split(name: str, available) -> str | None:
    """`name` itself or, for train/validation/test, a conventional alias of it."""
    if name in available:
        return name
    canonical = _split_keyword(name)
    return next((s for s in available if canonical and _split_keyword(s) == canonical), None)


@dataclass
class _Plan:
    train: str  # source split holding the training images
    val: str | None  # source split used for validation; None: holdout from train

    @classmethod
    def make(cls, cfg: DataConfig, source: _Source) -> _Plan:
        names = list(source.splits)
        train = _find_split("train", names) or (names[0] if len(names) == 1 else None)
        if train is None:
            raise ValueError(f"{source.description} has no 'train' split; available splits: {names}")
        if cfg.val_split == "holdout":
            return cls(train, None)
        if cfg.val_split == "auto":
            val = next((s for s in (_find_split(n, names) for n in ("validation", "test")) if s and s != train), None)
            return cls(train, val)
        val = _find_split(cfg.val_split, names)
        if val is None or val == train:
            raise ValueError(
                f"data.val_split={cfg.val_split!r} is not a separate split of {source.description}; "
                f"available splits: {names} (or use 'auto' / 'holdout')"
            )
        return cls(train, val)


def holdout_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic disjoint (train, val) index arrays, each sorted; depends only on n, fraction, seed."""
    if n < 2:
        raise ValueError(f"cannot hold out a validation part from a split of {n} image(s)")
    n_val = min(max(1, round(n * fraction)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _split_rows(
    cfg: DataConfig, source: _Source, plan: _Plan, split: str
) -> tuple[datasets.Dataset, np.ndarray | None, str]:
    """Rows of a requested split, the sorted row indices taken from them (None: all), and a description.

    "train" and the validation split ("val", or the source split serving as it) get the holdout
    and the max_*_samples caps; any other source split is returned whole.
    """
    named = _find_split(split, source.splits)
    if split == "train":
        role = "train"
    elif split == "val" or named == plan.val or (named is None and _split_keyword(split) == "validation"):
        role = "val"
    elif named is not None:
        return source.splits[named], None, named
    else:
        available = list(dict.fromkeys(["train", "val", *source.splits]))
        raise ValueError(f"split {split!r} not found in {source.description}; available: {available}")
    desc = plan.train if role == "train" or plan.val is None else plan.val
    rows, indices = source.splits[desc], None
    if plan.val is None:
        holdout = f"holdout({cfg.val_fraction},seed={cfg.split_seed})"
        train_idx, val_idx = holdout_indices(len(rows), cfg.val_fraction, cfg.split_seed)
        indices, desc = (train_idx, f"{desc}-{holdout}") if role == "train" else (val_idx, f"{desc}/{holdout}")
    limit = cfg.max_train_samples if role == "train" else cfg.max_val_samples
    if limit is not None and limit < (len(rows) if indices is None else len(indices)):
        indices = np.arange(limit) if indices is None else indices[:limit]
        desc += f"[:{limit}]"
    return rows, indices, desc


# ----------------------------------------------------------------------------- labels


@dataclass
class _Labels:
    column: str | None  # None: unlabelled
    class_names: list[str] | None
    num_classes: int | None
    string_valued: bool = False


def _label_array(rows: datasets.Dataset, column: str) -> pa.Array:
    arr = rows.select_columns([column]).with_format("arrow")[:][column]
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def _label_info(cfg: DataConfig, source: _Source, train: str) -> _Labels:
    column = cfg.label_column
    if column is None or column not in source.splits[train].column_names:
        return _Labels(None, None, None)
    feature = source.splits[train].features[column]
    if isinstance(feature, datasets.ClassLabel):
        return _Labels(column, list(feature.names), feature.num_classes)
    arrays = [_label_array(d, column) for d in source.splits.values() if column in d.column_names]
    if all(pa.types.is_string(a.type) or pa.types.is_large_string(a.type) for a in arrays):
        names = sorted({v for a in arrays for v in a.unique().to_pylist() if v is not None})
        return _Labels(column, names, len(names), string_valued=True)
    if all(pa.types.is_integer(a.type) or pa.types.is_boolean(a.type) for a in arrays):
        top = max((int(pc.max(a).as_py() or -1) for a in arrays if len(a)), default=-1)
        return _Labels(column, None, top + 1 if top >= 0 else None)
    raise ValueError(
        f"data.label_column={column!r} holds {arrays[0].type} values; labels must be integers or class-name strings "
        "(set data.label_column=null for unlabelled training)"
    )


def _labels_of(rows: datasets.Dataset, indices: np.ndarray | None, labels: _Labels) -> torch.Tensor:
    n = len(rows) if indices is None else len(indices)
    if labels.column is None or labels.column not in rows.column_names:
        return torch.full((n,), -1, dtype=torch.long)
    arr = _label_array(rows, labels.column)
    if labels.string_valued:
        values = np.asarray(arr.fill_null("").to_pylist(), dtype=object)
        codes = np.searchsorted(np.asarray(labels.class_names, dtype=object), values)
        out = np.where(np.isin(values, labels.class_names), codes, -1).astype(np.int64)
    else:
        out = arr.cast(pa.int64()).fill_null(-1).to_numpy(zero_copy_only=False)
    return torch.from_numpy(np.array(out if indices is None else out[indices], dtype=np.int64))


# ----------------------------------------------------------------------------- decoding and transforms


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating) and a.size and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a) if np.issubdtype(a.dtype, np.floating) else a, 0, 255).astype(np.uint8)


def _hwc(a: np.ndarray, batched: bool = False) -> np.ndarray:
    """Array image(s) `[..., H, W]`, `[..., H, W, C]` or `[..., C, H, W]` -> `[..., H, W, C]`."""
    dims = a.ndim - batched
    if dims == 2:
        return a[..., None]
    if dims == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[-3] in (1, 3, 4):
        return np.moveaxis(a, -3, -1)
    if dims == 3 and a.shape[-1] in (1, 3, 4):
        return a
    raise ValueError(f"cannot interpret an array of shape {a.shape[batched:]} as an image")


def _convert_channels(a: np.ndarray, channels: int) -> np.ndarray:
    """uint8 `[..., H, W, c]` -> `[..., H, W, channels]`; RGB->L uses PIL's ITU-R 601-2 luma."""
    if a.shape[-1] == 4:
        a = a[..., :3]
    if a.shape[-1] == channels:
        return a
    if channels == 3:
        return np.repeat(a, 3, axis=-1)
    rgb = a.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def _decode(value, channels: int) -> np.ndarray:
    """One stored image (PIL image, encoded dict or array) -> uint8 `[H, W, channels]`."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        value = PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    if isinstance(value, PIL.Image.Image):
        a = np.asarray(value.convert("L" if channels == 1 else "RGB"))
        return a[..., None] if a.ndim == 2 else a
    return _convert_channels(_hwc(_to_uint8(np.asarray(value))), channels)


def _fast_array_shape(feature) -> tuple[int, ...] | None:
    """Shape of a uint8 `Array2D`/`Array3D` feature, which can be read in vectorised batches."""
    is_array = isinstance(feature, (datasets.Array2D, datasets.Array3D))
    if is_array and feature.dtype == "uint8" and None not in feature.shape:
        return tuple(feature.shape)
    return None


def _arrow_images(arr, shape: tuple[int, ...]) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    for _ in shape:
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).reshape(-1, *shape)


@dataclass(frozen=True)
class ImageTransform:
    """Brings uint8 `[B, C, h, w]` batches to `size` ("resize", "pad", or "native": sizes must already match)."""

    size: tuple[int, int]
    mode: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (H, W) = x.shape[-2:], self.size
        if (h, w) == (H, W):
            return x
        if self.mode == "native":
            raise ValueError(
                f"images have different sizes ({H}x{W} and {h}x{w}) and data.image_size is not set; "
                f"set data.image_size (e.g. {max(H, W, h, w)}) with data.resize_mode=resize or pad"
            )
        if self.mode == "pad":
            if h > H or w > W:
                raise ValueError(
                    f"image of size {h}x{w} does not fit data.image_size={H} with data.resize_mode=pad; "
                    "use a larger data.image_size or data.resize_mode=resize"
                )
            top, left = (H - h) // 2, (W - w) // 2
            return F.pad(x, (left, W - w - left, top, H - h - top))
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        x = x[..., top:top + side, left:left + side]
        if (side, side) == (H, W):
            return x.contiguous()
        y = F.interpolate(x.float(), size=(H, W), mode="bicubic", antialias=True, align_corners=False)
        return y.round_().clamp_(0, 255).to(torch.uint8)


class LazyImages:
    """Images of a `datasets.Dataset` (optionally a sorted subset of its rows), decoded, converted and
    transformed on access: item -> uint8 `[C, H, W]`."""

    def __init__(
        self,
        rows: datasets.Dataset,
        column: str,
        channels: int,
        transform: ImageTransform,
        indices: np.ndarray | None = None,
    ):
        self.rows = rows.select_columns([column])
        self.column, self.channels, self.transform, self.indices = column, channels, transform, indices

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), self.channels, *self.transform.size)

    def __len__(self) -> int:
        return len(self.rows) if self.indices is None else len(self.indices)

    def __getitem__(self, index: int) -> torch.Tensor:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        row = index % len(self) if self.indices is None else int(self.indices[index])
        a = _decode(self.rows[row][self.column], self.channels)
        return self._transform(a[None])[0]

    def _transform(self, a: np.ndarray) -> torch.Tensor:
        """uint8 `[B, H, W, c]` -> transformed `[B, C, H, W]`; gray is resized before being repeated to RGB."""
        a = _convert_channels(a, 1 if a.shape[-1] == 1 else self.channels)
        x = torch.from_numpy(a if a.flags.writeable else a.copy()).permute(0, 3, 1, 2)
        return self.transform(x).expand(-1, self.channels, -1, -1)

    def materialise(self, num_workers: int = 0) -> torch.Tensor:
        """All images as one uint8 tensor `[N, C, H, W]` (vectorised for uint8 array columns)."""
        out = torch.empty(self.shape, dtype=torch.uint8)
        shape = _fast_array_shape(self.rows.features[self.column])
        if shape is None:
            loader = DataLoader(self, batch_size=64, num_workers=num_workers, collate_fn=torch.stack)
            start = 0
            for batch in loader:
                out[start:start + len(batch)] = batch
                start += len(batch)
            return out
        table = self.rows.with_format("arrow")
        for start in range(0, len(self), _BATCH):
            stop = min(start + _BATCH, len(self))
            if self.indices is None:
                a = _arrow_images(table[start:stop][self.column], shape)
            else:  # sorted indices: read the covering contiguous rows, then pick
                wanted = self.indices[start:stop]
                a = _arrow_images(table[int(wanted[0]):int(wanted[-1]) + 1][self.column], shape)[wanted - wanted[0]]
            out[start:stop] = self._transform(_hwc(a, batched=True))
        return out


def _native_size(rows: datasets.Dataset, column: str, channels: int) -> tuple[int, int]:
    shape = _fast_array_shape(rows.features[column])
    if shape is not None:
        return _hwc(np.empty(shape, np.uint8)).shape[:2]
    if len(rows) == 0:
        raise ValueError("the training split is empty")
    return _decode(rows.select_columns([column])[0][column], channels).shape[:2]


def _next_multiple(n: int, factor: int) -> int:
    return -(-n // factor) * factor


def _transform_for(cfg: DataConfig, native: tuple[int, int] | None, factor: int) -> ImageTransform:
    if cfg.image_size is not None:
        if cfg.image_size % factor:
            raise ValueError(
                f"data.image_size={cfg.image_size} is not divisible by the model's downsampling factor {factor}; "
                f"set data.image_size to a multiple of {factor} (e.g. {_next_multiple(cfg.image_size, factor)})"
            )
        return ImageTransform((cfg.image_size, cfg.image_size), cfg.resize_mode)
    h, w = native
    if h % factor or w % factor:
        raise ValueError(
            f"image size {h}x{w} is not divisible by the model's downsampling factor {factor}; set data.image_size "
            f"to a multiple of {factor} (e.g. {_next_multiple(max(h, w), factor)}) with data.resize_mode=pad "
            "(black border, pixels kept) or data.resize_mode=resize"
        )
    return ImageTransform((h, w), "native")


# ----------------------------------------------------------------------------- datasets


class ImageDataset(Dataset):
    """Images as float32 `[C, H, W]` in [-1, 1] with int labels (-1 when unlabelled).

    Backed by one uint8 tensor `[N, C, H, W]` (`images_uint8`) or by `LazyImages` decoding per item.
    """

    def __init__(
        self,
        images: torch.Tensor | LazyImages,
        labels: torch.Tensor | None = None,
        class_names: list[str] | None = None,
        source: str = "",
    ):
        if isinstance(images, torch.Tensor) and (images.dtype != torch.uint8 or images.ndim != 4):
            raise ValueError(f"expected uint8 images [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        n = len(images)
        self._images = images
        self.labels = torch.full((n,), -1, dtype=torch.long) if labels is None else torch.as_tensor(labels).long()
        if len(self.labels) != n:
            raise ValueError(f"{n} images but {len(self.labels)} labels")
        self.class_names, self.source = class_names, source

    @property
    def images_uint8(self) -> torch.Tensor | None:
        return self._images if isinstance(self._images, torch.Tensor) else None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._images.shape[1:])

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _to_float(self._images[index]), int(self.labels[index])

    def get_batch(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images `[B, C, H, W]` in [-1, 1] and labels `[B]` for a sequence/tensor of indices."""
        indices = torch.as_tensor(indices, dtype=torch.long)
        if self.images_uint8 is not None:
            images = self.images_uint8[indices]
        else:
            images = torch.stack([self._images[i] for i in indices.tolist()])
        return _to_float(images), self.labels[indices]

    def __repr__(self) -> str:
        kind = "in memory" if self.images_uint8 is not None else "lazy"
        return f"ImageDataset({len(self)} x {list(self.image_shape)}, {kind}, source={self.source!r})"


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(127.5).sub_(1.0)


@dataclass
class DataSplits:
    """Train/validation datasets plus what the models need to know about them."""

    train: ImageDataset
    val: ImageDataset
    num_classes: int | None
    class_names: list[str] | None
    channels: int
    image_size: tuple[int, int]
    source: str  # stable fingerprint of source + split + transform (a cache key)


def _check(cfg: DataConfig, downsample_factor: int) -> None:
    if cfg.channels not in (1, 3):
        raise ValueError(f"data.channels must be 1 or 3, got {cfg.channels}")
    if cfg.resize_mode not in ("resize", "pad"):
        raise ValueError(f"data.resize_mode must be 'resize' or 'pad', got {cfg.resize_mode!r}")
    if cfg.image_size is not None and cfg.image_size < 1:
        raise ValueError(f"data.image_size must be positive, got {cfg.image_size}")
    if not 0 < cfg.val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in (0, 1), got {cfg.val_fraction}")
    if downsample_factor < 1:
        raise ValueError(f"downsample_factor must be >= 1, got {downsample_factor}")


class _Loader:
    """One opened source with its split plan, label info and transform."""

    def __init__(self, cfg: DataConfig, downsample_factor: int):
        _check(cfg, downsample_factor)
        self.cfg = cfg
        self.source = _open_source(cfg)
        self.plan = _Plan.make(cfg, self.source)
        train_rows = self.source.splits[self.plan.train]
        for split, rows in self.source.splits.items():
            if cfg.image_column not in rows.column_names:
                raise ValueError(
                    f"image column {cfg.image_column!r} not found in split {split!r} of {self.source.description}; "
                    f"available columns: {rows.column_names}. Set data.image_column to the one holding the images."
                )
        self.labels = _label_info(cfg, self.source, self.plan.train)
        native = None if cfg.image_size is not None else _native_size(train_rows, cfg.image_column, cfg.channels)
        self.transform = _transform_for(cfg, native, downsample_factor)
        h, w = self.transform.size
        self.key = (
            f"{self.source.description}|{'L' if cfg.channels == 1 else 'RGB'}|{h}x{w}|{self.transform.mode}"
            f"|image={cfg.image_column}|label={self.labels.column}"
        )

    def fingerprint(self, *split_descs: str) -> str:
        text = f"{self.key}|{','.join(split_descs)}"
        return f"{text}#{_hash(text, self.source.stats)}"

    def dataset(self, split: str) -> tuple[ImageDataset, str]:
        rows, indices, desc = _split_rows(self.cfg, self.source, self.plan, split)
        lazy = LazyImages(rows, self.cfg.image_column, self.cfg.channels, self.transform, indices)
        labels = _labels_of(rows, indices, self.labels)
        n_bytes = int(np.prod(lazy.shape, dtype=np.int64))
        images: torch.Tensor | LazyImages = lazy
        if n_bytes <= self.cfg.in_memory_max_mb * 2**20:
            start = time.perf_counter()
            images = lazy.materialise(self.cfg.num_workers)
            log.info("%s %s: %d images %s in memory (%.1f MB, %.1fs)", self.source.description, desc,
                     len(images), list(images.shape[1:]), n_bytes / 2**20, time.perf_counter() - start)
        return ImageDataset(images, labels, self.labels.class_names, self.fingerprint(desc)), desc


def load_splits(cfg: DataConfig, downsample_factor: int = 1) -> DataSplits:
    """Train and validation datasets for `cfg`; sizes must be divisible by `downsample_factor`."""
    loader = _Loader(cfg, downsample_factor)
    train, train_desc = loader.dataset("train")
    val, val_desc = loader.dataset("val")
    return DataSplits(
        train=train,
        val=val,
        num_classes=loader.labels.num_classes,
        class_names=loader.labels.class_names,
        channels=cfg.channels,
        image_size=loader.transform.size,
        source=loader.fingerprint(f"train={train_desc}", f"val={val_desc}"),
    )


def load_split(cfg: DataConfig, split: str, downsample_factor: int = 1) -> ImageDataset:
    """One split: "train" (after any holdout), "val" (the validation part), or any split of the source (e.g. "test")."""
    return _Loader(cfg, downsample_factor).dataset(split)[0]


def splits_fingerprint(cfg: DataConfig, downsample_factor: int = 1) -> tuple[str, tuple[int, int]]:
    """`load_splits(cfg, downsample_factor).source` and the image size, without decoding any image."""
    loader = _Loader(cfg, downsample_factor)
    descs = [_split_rows(cfg, loader.source, loader.plan, split)[2] for split in ("train", "val")]
    return loader.fingerprint(f"train={descs[0]}", f"val={descs[1]}"), loader.transform.size


def split_fingerprint(cfg: DataConfig, split: str, downsample_factor: int = 1) -> tuple[str, tuple[int, int]]:
    """`load_split(cfg, split, downsample_factor).source` and the image size, without decoding any image."""
    loader = _Loader(cfg, downsample_factor)
    return loader.fingerprint(_split_rows(cfg, loader.source, loader.plan, split)[2]), loader.transform.size
