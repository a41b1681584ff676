"""Image grids for previews and model cards."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save `[N, C, H, W]` images in [-1, 1] as one PNG grid."""
    images = to_unit_range(images.detach().cpu())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(make_grid(images, nrow=nrow, padding=2, pad_value=1.0), path)
    return path


def interleave_rows(top: torch.Tensor, bottom: torch.Tensor, per_row: int) -> torch.Tensor:
    """Stack originals and reconstructions row by row: `per_row` originals, then their reconstructions, ..."""
    chunks = []
    for i in range(0, top.shape[0], per_row):
        chunks += [top[i:i + per_row], bottom[i:i + per_row]]
    return torch.cat(chunks)
