"""The datasets models train on: `LazyImages` (decode on access), `ImageDataset` and `DataSplits`."""

from __future__ import annotations

from dataclasses import dataclass

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainkit.data.decode import arrow_images, convert_channels, decode_image, hwc, uint8_array_shape
from trainkit.data.transforms import ImageTransform

_BATCH = 1024


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
        a = decode_image(self.rows[row][self.column], self.channels)
        return self._transform(a[None])[0]

    def _transform(self, a: np.ndarray) -> torch.Tensor:
        """uint8 `[B, H, W, c]` -> transformed `[B, C, H, W]`; gray is resized before being repeated to RGB."""
        a = convert_channels(a, 1 if a.shape[-1] == 1 else self.channels)
        x = torch.from_numpy(a if a.flags.writeable else a.copy()).permute(0, 3, 1, 2)
        return self.transform(x).expand(-1, self.channels, -1, -1)

    def materialise(self, num_workers: int = 0) -> torch.Tensor:
        """All images as one uint8 tensor `[N, C, H, W]` (vectorised for uint8 array columns)."""
        out = torch.empty(self.shape, dtype=torch.uint8)
        shape = uint8_array_shape(self.rows.features[self.column])
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
                a = arrow_images(table[start:stop][self.column], shape)
            else:  # sorted indices: read the covering contiguous rows, then pick
                wanted = self.indices[start:stop]
                a = arrow_images(table[int(wanted[0]):int(wanted[-1]) + 1][self.column], shape)[wanted - wanted[0]]
            out[start:stop] = self._transform(hwc(a, batched=True))
        return out


def native_size(rows: datasets.Dataset, column: str, channels: int) -> tuple[int, int]:
    """`(H, W)` of the images in `column`: from the feature's shape, else from the first image."""
    shape = uint8_array_shape(rows.features[column])
    if shape is not None:
        return hwc(np.empty(shape, np.uint8)).shape[:2]
    if len(rows) == 0:
        raise ValueError("the training split is empty")
    return decode_image(rows.select_columns([column])[0][column], channels).shape[:2]


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
