"""The prior's likelihood on held-out token grids, in bits per image token."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch

from .model import ImagePrior


@torch.no_grad()
def bits_per_token(prior: ImagePrior, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   accelerator: Any | None = None) -> tuple[float, int]:
    """Mean NLL in bits per image token over `(codes, labels)` batches, and the number of grids.

    With an `accelerate.Accelerator` the batches are each process's shard of a prepared loader:
    the NLLs are gathered (padding dropped) and every process returns the same figures.
    """
    conditional = prior.layout.conditional
    total, count = 0.0, 0
    for codes, labels in batches:
        with accelerator.autocast() if accelerator is not None else contextlib.nullcontext():
            nll = prior.image_nll(codes, labels if conditional else None).float()
        if accelerator is not None:
            nll = accelerator.gather_for_metrics(nll)
        total += float(nll.sum())
        count += nll.numel()
    return total / max(count, 1) / math.log(2), count
