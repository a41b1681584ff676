"""Reconstruction metrics of a trained tokenizer over a whole split.

    python -m stage1_tokenizer.evaluate runs/tokenizer_vq/final --split test

prints (and optionally writes) JSON: MSE and PSNR on [0, 1], codebook usage and perplexity.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from trainkit.config import console_script
from trainkit.data import DataConfig, ImageData

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


def evaluate_split(tokenizer: ImageTokenizer, data: DataConfig, split: str = "test", batch_size: int = 500
                   ) -> dict[str, float]:
    """Reconstruction metrics of `tokenizer` on a named split of `data`."""
    dataset = ImageData(data, downsample_factor=tokenizer.config.downsample_factor).split(split)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    start = time.perf_counter()
    metrics, _ = reconstruction_metrics(tokenizer.eval(), loader)
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(prog="stage1_tokenizer.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a saved tokenizer directory or hub repo id")
    parser.add_argument("--dataset", default="fashion_mnist", help="data source (see data.dataset)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", help="also write the JSON report here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = ImageTokenizer.from_pretrained(args.model)
    data = DataConfig(dataset=args.dataset, channels=tokenizer.config.in_channels,
                      image_size=tokenizer.config.image_size)
    metrics = evaluate_split(tokenizer, data, args.split, args.batch_size)
    report = {"model": str(args.model), "dataset": args.dataset, "split": args.split, **metrics}
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return report


cli = console_script(main)


if __name__ == "__main__":
    main()
