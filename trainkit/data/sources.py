"""Opening a data source: the embedded Fashion-MNIST, the generated shapes32, an image folder, parquet/arrow
files, or a hub dataset id."""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

from trainkit.data.config import DataConfig
from trainkit.data.fashion_mnist import fashion_mnist_dir, load_fashion_mnist
from trainkit.data.fingerprints import file_stats, split_fingerprints, tree_stats
from trainkit.data.shapes import load_shapes32
from trainkit.data.splits import split_keyword

_TABLE_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class Source:
    """The splits of one opened source, with what identifies it."""

    kind: str  # fashion_mnist | shapes32 | imagefolder | parquet | arrow | hub
    location: str
    splits: dict[str, datasets.Dataset]
    stats: str = ""  # extra fingerprint material (file sizes/mtimes, hub fingerprints)

    @property
    def description(self) -> str:
        return f"{self.kind}:{self.location}"


def open_source(cfg: DataConfig) -> Source:
    """The source `cfg.dataset` names, opened without decoding any image."""
    name = cfg.dataset
    if name in ("fashion_mnist", "fashion-mnist"):
        splits = load_fashion_mnist(fashion_mnist_dir())
        return Source("fashion_mnist", str(fashion_mnist_dir()), splits, split_fingerprints(splits))
    if name == "shapes32":
        splits = load_shapes32()
        return Source("shapes32", "generated", splits, split_fingerprints(splits))
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
        return _open_folder(path.resolve())
    if _looks_like_path(name):
        raise FileNotFoundError(f"data.dataset={name!r}: no such file or directory")
    return _open_hub(cfg)


def _open_folder(path: Path) -> Source:
    tables = sorted(p for p in path.rglob("*") if p.suffix.lower() in _TABLE_SUFFIXES and p.is_file())
    if tables:
        return _open_table_files(tables, str(path))
    loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
    return Source("imagefolder", str(path), dict(loaded), tree_stats(path))


def _open_hub(cfg: DataConfig) -> Source:
    name = cfg.dataset
    loaded = datasets.load_dataset(name, name=cfg.config_name, revision=cfg.revision)
    if isinstance(loaded, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise ValueError(f"data.dataset={name!r}: streaming datasets are not supported")
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    location = f"{name}[{cfg.config_name or 'default'}]@{cfg.revision or 'main'}"
    return Source("hub", location, splits, split_fingerprints(splits))


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or Path(name).suffix.lower() in (*_TABLE_SUFFIXES, ".png", ".jpg", ".jpeg")
        or not _HUB_ID.match(name)
    )


def _open_table_files(files: list[Path], location: str) -> Source:
    kinds = {_TABLE_SUFFIXES.get(f.suffix.lower()) for f in files}
    if None in kinds or len(kinds) != 1:
        raise ValueError(
            f"data.dataset={location!r}: expected only .parquet or only .arrow files, "
            f"got {sorted({f.suffix for f in files})}"
        )
    kind = kinds.pop()
    loaded = datasets.load_dataset(kind, data_files=_group_table_files(files))
    return Source(kind, location, dict(loaded), file_stats(files))


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


def _infer_split(path: Path, root: Path) -> str | None:
    """Split named by a file's name tokens (`train-0000.parquet`) or, failing that, its folders."""
    parts = path.relative_to(root).parts
    for part in [parts[-1].split(".")[0], *reversed(parts[:-1])]:
        for token in re.split(r"[-_.\s]+", part):
            if split := split_keyword(token):
                return split
    return None
