"""Bringing uint8 image batches to the size the tokenizer needs: center-crop + resize, or pad.

Imports only torch and torchvision, so the inference path can use it without the data stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF


@dataclass(frozen=True)
class ImageTransform:
    """Brings uint8 `[B, C, h, w]` batches to `size` ("resize", "pad", or "native": sizes must already match).

    "resize" crops the centred square (the extra pixel of an odd margin goes to the bottom/right)
    and resizes it bicubically with antialiasing; "pad" adds a centred black border.
    """

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
            return _pad_to(x, H, W)
        return _crop_and_resize(x, H, W)


def _pad_to(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    (h, w) = x.shape[-2:]
    if h > H or w > W:
        raise ValueError(
            f"image of size {h}x{w} does not fit data.image_size={H} with data.resize_mode=pad; "
            "use a larger data.image_size or data.resize_mode=resize"
        )
    top, left = (H - h) // 2, (W - w) // 2
    return TF.pad(x, [left, top, W - w - left, H - h - top], fill=0)


def _crop_and_resize(x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    (h, w) = x.shape[-2:]
    side = min(h, w)
    x = TF.crop(x, (h - side) // 2, (w - side) // 2, side, side)
    if (side, side) == (H, W):
        return x.contiguous()
    y = TF.resize(x.float(), [H, W], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def next_multiple(n: int, factor: int) -> int:
    """The smallest multiple of `factor` that is >= `n`."""
    return -(-n // factor) * factor


def transform_for(image_size: int | None, resize_mode: str, native: tuple[int, int] | None,
                  factor: int) -> ImageTransform:
    """The transform to `image_size` (square), or to the `native` size when it is None; either must
    divide by the model's downsampling `factor`."""
    if image_size is not None:
        if image_size % factor:
            raise ValueError(
                f"data.image_size={image_size} is not divisible by the model's downsampling factor {factor}; "
                f"set data.image_size to a multiple of {factor} (e.g. {next_multiple(image_size, factor)})"
            )
        return ImageTransform((image_size, image_size), resize_mode)
    h, w = native
    if h % factor or w % factor:
        raise ValueError(
            f"image size {h}x{w} is not divisible by the model's downsampling factor {factor}; set data.image_size "
            f"to a multiple of {factor} (e.g. {next_multiple(max(h, w), factor)}) with data.resize_mode=pad "
            "(black border, pixels kept) or data.resize_mode=resize"
        )
    return ImageTransform((h, w), "native")
