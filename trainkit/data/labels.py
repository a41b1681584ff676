"""Labels: which column holds them, the class names, and int labels per row (-1 when unlabelled)."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from trainkit.data.config import DataConfig
from trainkit.data.sources import Source


@dataclass
class LabelInfo:
    """The label column of a source (None: unlabelled) and its classes."""

    column: str | None
    class_names: list[str] | None
    num_classes: int | None
    string_valued: bool = False


def _label_array(rows: datasets.Dataset, column: str) -> pa.Array:
    arr = rows.select_columns([column]).with_format("arrow")[:][column]
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def label_info(cfg: DataConfig, source: Source, train: str) -> LabelInfo:
    """Label column and classes, read from the train split's feature or from the values of all splits."""
    column = cfg.label_column
    if column is None or column not in source.splits[train].column_names:
        return LabelInfo(None, None, None)
    feature = source.splits[train].features[column]
    if isinstance(feature, datasets.ClassLabel):
        return LabelInfo(column, list(feature.names), feature.num_classes)
    arrays = [_label_array(d, column) for d in source.splits.values() if column in d.column_names]
    if all(pa.types.is_string(a.type) or pa.types.is_large_string(a.type) for a in arrays):
        names = sorted({v for a in arrays for v in a.unique().to_pylist() if v is not None})
        return LabelInfo(column, names, len(names), string_valued=True)
    if all(pa.types.is_integer(a.type) or pa.types.is_boolean(a.type) for a in arrays):
        top = max((int(pc.max(a).as_py() or -1) for a in arrays if len(a)), default=-1)
        return LabelInfo(column, None, top + 1 if top >= 0 else None)
    raise ValueError(
        f"data.label_column={column!r} holds {arrays[0].type} values; labels must be integers or class-name strings "
        "(set data.label_column=null for unlabelled training)"
    )


def labels_of(rows: datasets.Dataset, indices: np.ndarray | None, labels: LabelInfo) -> torch.Tensor:
    """int64 labels of the rows (or of `indices` of them); -1 for unlabelled rows or unknown class names."""
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
