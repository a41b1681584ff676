"""`ImageData`: the one entry point to image data - datasets by split and their fingerprints."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from trainkit.data.config import DataConfig
from trainkit.data.dataset import DataSplits, ImageDataset, LazyImages, native_size
from trainkit.data.fingerprints import stable_hash
from trainkit.data.labels import label_info, labels_of
from trainkit.data.sources import open_source
from trainkit.data.splits import SplitPlan, split_rows
from trainkit.data.transforms import transform_for

log = logging.getLogger(__name__)


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


class ImageData:
    """The images `cfg` describes, prepared for a model whose sizes must divide by `downsample_factor`.

    Opening decodes at most one image (the first, for the native size when `data.image_size` is
    unset and the column does not declare it). `split(name)` gives one dataset: "train" (after any
    holdout), "val" (the validation part), or any split of the source (e.g. "test"); `splits()`
    gives train and val together; `fingerprint(*names)` is the stable cache key of splits, equal to
    the `.source` of what `split` / `splits` return, computed without loading the splits.
    """

    def __init__(self, cfg: DataConfig, downsample_factor: int = 1):
        _check(cfg, downsample_factor)
        self.cfg = cfg
        self.source = open_source(cfg)
        self.plan = SplitPlan.make(cfg, self.source)
        self._check_image_column()
        self.labels = label_info(cfg, self.source, self.plan.train)
        train_rows = self.source.splits[self.plan.train]
        native = None if cfg.image_size is not None else native_size(train_rows, cfg.image_column, cfg.channels)
        self.transform = transform_for(cfg.image_size, cfg.resize_mode, native, downsample_factor)
        h, w = self.transform.size
        self._key = (
            f"{self.source.description}|{'L' if cfg.channels == 1 else 'RGB'}|{h}x{w}|{self.transform.mode}"
            f"|image={cfg.image_column}|label={self.labels.column}"
        )

    @property
    def image_size(self) -> tuple[int, int]:
        """`(H, W)` of every image served."""
        return self.transform.size

    @property
    def channels(self) -> int:
        return self.cfg.channels

    @property
    def num_classes(self) -> int | None:
        return self.labels.num_classes

    @property
    def class_names(self) -> list[str] | None:
        return self.labels.class_names

    def fingerprint(self, *names: str) -> str:
        """Cache key of the named splits (default: train and val): `split(name).source` for one name,
        `splits().source` for ("train", "val")."""
        names = names or ("train", "val")
        descs = [self._rows(name)[2] for name in names]
        return self._fingerprint(descs if len(names) == 1 else [f"{n}={d}" for n, d in zip(names, descs)])

    def split(self, name: str) -> ImageDataset:
        """One split as a dataset, in memory when it fits `cfg.in_memory_max_mb`, else decoded lazily."""
        rows, indices, desc = self._rows(name)
        lazy = LazyImages(rows, self.cfg.image_column, self.cfg.channels, self.transform, indices)
        labels = labels_of(rows, indices, self.labels)
        n_bytes = int(np.prod(lazy.shape, dtype=np.int64))
        images: torch.Tensor | LazyImages = lazy
        if n_bytes <= self.cfg.in_memory_max_mb * 2**20:
            start = time.perf_counter()
            images = lazy.materialise(self.cfg.num_workers)
            log.info("%s %s: %d images %s in memory (%.1f MB, %.1fs)", self.source.description, desc,
                     len(images), list(images.shape[1:]), n_bytes / 2**20, time.perf_counter() - start)
        return ImageDataset(images, labels, self.labels.class_names, self._fingerprint([desc]))

    def splits(self) -> DataSplits:
        """Train and validation datasets with what the models need to know about them."""
        return DataSplits(
            train=self.split("train"),
            val=self.split("val"),
            num_classes=self.num_classes,
            class_names=self.class_names,
            channels=self.channels,
            image_size=self.image_size,
            source=self.fingerprint("train", "val"),
        )

    def _check_image_column(self) -> None:
        column = self.cfg.image_column
        for split, rows in self.source.splits.items():
            if column not in rows.column_names:
                raise ValueError(
                    f"image column {column!r} not found in split {split!r} of {self.source.description}; "
                    f"available columns: {rows.column_names}. Set data.image_column to the one holding the images."
                )

    def _rows(self, name: str):
        return split_rows(self.cfg, self.source, self.plan, name)

    def _fingerprint(self, parts: list[str]) -> str:
        text = f"{self._key}|{','.join(parts)}"
        return f"{text}#{stable_hash(text, self.source.stats)}"
