"""Image data shared by both stages: sources, splits and labels, transforms, datasets.

Sources: the embedded Fashion-MNIST (Debian's IDX files), the generated RGB shapes32, an image folder, parquet/arrow
files, or a hub dataset id. Images are converted to L/RGB, brought to one size and served
as float32 `[C, H, W]` tensors in [-1, 1] with int labels (-1 when unlabelled).
`ImageData(cfg, downsample_factor)` is the entry point: `.split(name)`, `.splits()`, `.fingerprint(*names)`.

Names are imported from their submodules on first use, so `trainkit.data.transforms` (torch and
torchvision only) and `DataConfig` can be used without loading `datasets` or `pyarrow`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "DataConfig": "config",
    "FASHION_MNIST_CLASSES": "fashion_mnist",
    "FASHION_MNIST_DIR": "fashion_mnist",
    "array2d_column": "fashion_mnist",
    "fashion_mnist_dir": "fashion_mnist",
    "load_fashion_mnist": "fashion_mnist",
    "read_idx": "fashion_mnist",
    "SHAPES32_CLASSES": "shapes",
    "export_shapes32": "shapes",
    "load_shapes32": "shapes",
    "holdout_indices": "splits",
    "ImageTransform": "transforms",
    "LazyImages": "dataset",
    "ImageDataset": "dataset",
    "DataSplits": "dataset",
    "ImageData": "image_data",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:
    from trainkit.data.config import DataConfig
    from trainkit.data.dataset import DataSplits, ImageDataset, LazyImages
    from trainkit.data.fashion_mnist import (
        FASHION_MNIST_CLASSES,
        FASHION_MNIST_DIR,
        array2d_column,
        fashion_mnist_dir,
        load_fashion_mnist,
        read_idx,
    )
    from trainkit.data.image_data import ImageData
    from trainkit.data.shapes import SHAPES32_CLASSES, export_shapes32, load_shapes32
    from trainkit.data.splits import holdout_indices
    from trainkit.data.transforms import ImageTransform
