"""Reconstruction metrics of a tokenizer over a whole split: MSE and PSNR on [0, 1], codebook
usage and perplexity (the trainer's validation; `imagegen-evaluate tokenizer` reports them too).
"""

from __future__ import annotations

from typing import Callable

import torch
from accelerate import Accelerator

from .model import ImageTokenizer
from .quantizers import perplexity


@torch.no_grad()
def reconstruction_metrics(
    tokenizer: ImageTokenizer, loader, accelerator: Accelerator | None = None, max_batches: int | None = None,
    on_batch: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> tuple[dict[str, float], torch.Tensor]:
    """MSE and PSNR on [0, 1] (per image, averaged), codebook usage and perplexity over a whole split.

    Runs the inference path (`encode` then `decode`). Under several processes each rank
    encodes its shard and the figures are gathered, so every rank returns the same numbers.
    Also returns the first batch's images and reconstructions for previews. `on_batch(images,
    reconstructions)` (both in [-1, 1], this process's batch) is called for every batch, e.g.
    to collect reconstructions for further metrics.
    """
    K = tokenizer.codebook_size
    hist = torch.zeros(K, dtype=torch.long)
    sq_err, psnr_sum, n = 0.0, 0.0, 0
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
        mse = ((recon.float() - images.float()) / 2).pow(2).flatten(1).mean(1)  # on [0, 1]
        if accelerator is not None:
            mse, codes = accelerator.gather_for_metrics((mse, codes))
        hist += torch.bincount(codes.flatten().cpu(), minlength=K)
        sq_err += float(mse.sum())
        psnr_sum += float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).sum())
        n += mse.numel()
        if first is None:
            first = (images[:32].cpu(), recon[:32].float().cpu())
    metrics = {
        "mse": sq_err / max(n, 1),
        "psnr": psnr_sum / max(n, 1),
        "codebook_usage": float((hist > 0).float().mean()),
        "perplexity": perplexity(hist),
        "num_images": float(n),
    }
    return metrics, first
