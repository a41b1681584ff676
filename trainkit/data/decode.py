"""Stored image values (PIL images, encoded bytes, arrays, arrow columns) -> uint8 `[..., H, W, C]` arrays."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pyarrow as pa
import PIL.Image


def _to_uint8(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating) and a.size and a.max() <= 1.0:
        a = a * 255.0
    return np.clip(np.rint(a) if np.issubdtype(a.dtype, np.floating) else a, 0, 255).astype(np.uint8)


def hwc(a: np.ndarray, batched: bool = False) -> np.ndarray:
    """Array image(s) `[..., H, W]`, `[..., H, W, C]` or `[..., C, H, W]` -> `[..., H, W, C]`."""
    dims = a.ndim - batched
    if dims == 2:
        return a[..., None]
    if dims == 3 and a.shape[-1] not in (1, 3, 4) and a.shape[-3] in (1, 3, 4):
        return np.moveaxis(a, -3, -1)
    if dims == 3 and a.shape[-1] in (1, 3, 4):
        return a
    raise ValueError(f"cannot interpret an array of shape {a.shape[batched:]} as an image")


def convert_channels(a: np.ndarray, channels: int) -> np.ndarray:
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


def decode_image(value, channels: int) -> np.ndarray:
    """One stored image (PIL image, encoded dict or array) -> uint8 `[H, W, channels]`."""
    if isinstance(value, dict) and ("bytes" in value or "path" in value):
        value = PIL.Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"])
    if isinstance(value, PIL.Image.Image):
        a = np.asarray(value.convert("L" if channels == 1 else "RGB"))
        return a[..., None] if a.ndim == 2 else a
    return convert_channels(hwc(_to_uint8(np.asarray(value))), channels)


def uint8_array_shape(feature) -> tuple[int, ...] | None:
    """Shape of a uint8 `Array2D`/`Array3D` feature, which can be read in vectorised batches; else None."""
    is_array = isinstance(feature, (datasets.Array2D, datasets.Array3D))
    if is_array and feature.dtype == "uint8" and None not in feature.shape:
        return tuple(feature.shape)
    return None


def arrow_images(arr, shape: tuple[int, ...]) -> np.ndarray:
    """An arrow column of a uint8 array feature of `shape` -> numpy `[N, *shape]`."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    for _ in shape:
        arr = arr.flatten()
    return arr.to_numpy(zero_copy_only=False).reshape(-1, *shape)
