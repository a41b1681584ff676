"""Reconstruction metrics of a tokenizer over a whole split: MSE and PSNR on [0, 1], colour
errors of RGB images, codebook usage and perplexity (the trainer's validation;
`imagegen-evaluate tokenizer` reports them too).
"""

from __future__ import annotations

from typing import Callable

import torch
from accelerate import Accelerator

from .model import ImageTokenizer
from .quantizers import perplexity

# BT.601 chroma (the Cb and Cr rows of RGB -> YCbCr, without their 0.5 offset) on the [0, 1] scale
_CHROMA = torch.tensor([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
COLOR_KEYS = ("chroma_error", "mean_color_error")   # the figures `color_errors` adds for RGB images


def color_errors(images: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image colour errors of RGB reconstructions `[B, 3, H, W]` (both in [-1, 1]), on the [0, 1] scale:
    the chroma error (mean absolute difference of Cb and Cr, BT.601, over both and every pixel)
    and the mean-colour error (L2 distance between the images' per-channel RGB means)."""
    diff = (recon.float() - images.float()) / 2
    chroma = torch.einsum("kc,bchw->bkhw", _CHROMA.to(diff.device), diff)
    return chroma.abs().flatten(1).mean(1), diff.flatten(2).mean(2).norm(dim=1)


def _per_image_errors(images: torch.Tensor, recon: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSE and PSNR on [0, 1] of each image, and its colour errors when the images are RGB."""
    mse = ((recon.float() - images.float()) / 2).pow(2).flatten(1).mean(1)
    errors = {"mse": mse, "psnr": 10 * torch.log10(1.0 / mse.clamp_min(1e-10))}
    if images.shape[1] == 3:
        errors.update(zip(COLOR_KEYS, color_errors(images, recon)))
    return errors


@torch.no_grad()
def reconstruction_metrics(
    tokenizer: ImageTokenizer, loader, accelerator: Accelerator | None = None, max_batches: int | None = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[dict[str, float], tuple[torch.Tensor, torch.Tensor]]:
    """MSE and PSNR on [0, 1] (per image, averaged), codebook usage and perplexity over a whole split;
    for RGB images also `chroma_error` and `mean_color_error` (see `color_errors`, averaged over images).

    Runs the inference path (`encode` then `decode`). Under several processes each rank
    encodes its shard and the figures are gathered, so every rank returns the same numbers.
    Also returns the first batch's images and reconstructions for previews. `on_batch(images,
    reconstructions)` (both in [-1, 1], this process's batch) is called for every batch, e.g.
    to collect reconstructions for further metrics.
    """
    K = tokenizer.codebook_size
    hist = torch.zeros(K, dtype=torch.long)
    sums: dict[str, float] = {}
    n = 0
    first = None
    for i, (images, _labels) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        if accelerator is not None:
            with accelerator.autocast():
                codes = tokenizer.encode(images)
                recon = tokenizer.decode(codes)
        else:
            codes = tokenizer.encode(images)
            recon = tokenizer.decode(codes)
        if on_batch is not None:
            on_batch(images, recon)
        per_image = _per_image_errors(images, recon)
        if accelerator is not None:
            values, codes = accelerator.gather_for_metrics((tuple(per_image.values()), codes))
            per_image = dict(zip(per_image, values))
        hist += torch.bincount(codes.flatten().cpu(), minlength=K)
        for key, value in per_image.items():
            sums[key] = sums.get(key, 0.0) + float(value.sum())
        n += per_image["mse"].numel()
        if first is None:
            first = (images[:32].cpu(), recon[:32].float().cpu())
    metrics = {"mse": 0.0, "psnr": 0.0, **{key: total / n for key, total in sums.items()}}
    metrics.update({
        "codebook_usage": float((hist > 0).float().mean()),
        "perplexity": perplexity(hist),
        "num_images": float(n),
    })
    return metrics, first

