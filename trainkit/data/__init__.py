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


if TYPE_CHECKING:  # for type checkers and linters; `X as X` marks each name as re-exported
    from trainkit.data.config import DataConfig as DataConfig
    from trainkit.data.dataset import DataSplits as DataSplits
    from trainkit.data.dataset import ImageDataset as ImageDataset
    from trainkit.data.dataset import LazyImages as LazyImages
    from trainkit.data.fashion_mnist import FASHION_MNIST_CLASSES as FASHION_MNIST_CLASSES
    from trainkit.data.fashion_mnist import FASHION_MNIST_DIR as FASHION_MNIST_DIR
    from trainkit.data.fashion_mnist import array2d_column as array2d_column
    from trainkit.data.fashion_mnist import fashion_mnist_dir as fashion_mnist_dir
    from trainkit.data.fashion_mnist import load_fashion_mnist as load_fashion_mnist
    from trainkit.data.fashion_mnist import read_idx as read_idx
    from trainkit.data.image_data import ImageData as ImageData
    from trainkit.data.shapes import SHAPES32_CLASSES as SHAPES32_CLASSES
    from trainkit.data.shapes import export_shapes32 as export_shapes32
    from trainkit.data.shapes import load_shapes32 as load_shapes32
    from trainkit.data.splits import holdout_indices as holdout_indices
    from trainkit.data.transforms import ImageTransform as ImageTransform
