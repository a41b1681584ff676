"""Where and how a run computes: process count checks, mixed precision, memory layout."""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate.utils import parse_flag_from_env


def check_world_size(accelerator: Any) -> None:
    """Fail loudly when the launcher and accelerate (an `Accelerator` or a `PartialState`) disagree
    on the number of processes."""
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise RuntimeError(
            f"launched with WORLD_SIZE={expected} but accelerate runs {accelerator.num_processes} process(es): "
            "each process would train alone. On a CPU-only machine launch several processes with "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`"
        )


def resolve_mixed_precision(value: str | None) -> str | None:
    """`"auto"` -> `"bf16"` on a GPU with bf16 or a CPU with AMX matrix units, else `"no"`.

    Without AMX a CPU computes bf16 matrix products slower than fp32 ones (the README's
    benchmarks give the figures), so autocast would slow training down. Any other value is
    returned unchanged.
    """
    if value != "auto":
        return value
    if torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU"):
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "bf16" if amx is not None and amx() else "no"


def use_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store the 4-d weights of `model` in channels-last (NHWC) order, in place.

    Convolutions then run on oneDNN's / cuDNN's NHWC kernels and pass NHWC activations along.
    The state dict stays in the usual contiguous layout, so safetensors checkpoints and
    `from_pretrained` are unaffected.
    """
    model.to(memory_format=torch.channels_last)

    def contiguous_state(module, state_dict, prefix, local_metadata) -> None:
        for key, value in state_dict.items():
            if isinstance(value, torch.Tensor) and not value.is_contiguous():
                state_dict[key] = value.contiguous()

    model.register_state_dict_post_hook(contiguous_state)
    return model
