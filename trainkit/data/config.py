"""`DataConfig`: which images to train on and how to prepare them (no imports beyond the standard library)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DataConfig:
    """Which images to train on and how to prepare them."""

    # "fashion_mnist" | "shapes32" | image folder | parquet/arrow file(s), glob or folder | hub id
    dataset: str = "fashion_mnist"
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
    num_workers: int = 0  # workers that decode and transform images while a split is materialised
    in_memory_max_mb: int = 2048  # materialise a transformed split as one uint8 tensor when it fits
