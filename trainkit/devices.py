"""Where and how a run computes: process count checks, mixed precision, memory layout
(sharding is `trainkit.sharding`)."""

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
    """`"auto"` -> `"bf16"` on a GPU with bf16 or a CPU with bf16 matrix instructions
    (AVX512-BF16 or AMX, see `bf16_computes_fast`), else `"no"`.

    Without them (AVX2 CPUs) bf16 matrix products are emulated and slower than fp32 ones (the
    figures are in benchmarks/README.md), so autocast would slow training down. Any other
    value is returned unchanged.
    """
    if value != "auto":
        return value
    on_gpu = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
    return "bf16" if bf16_computes_fast("cuda" if on_gpu else "cpu") else "no"


def bf16_computes_fast(device: str | torch.device = "cpu") -> bool:
    """Whether `device` has bf16 matrix units: a GPU with bf16, or a CPU with AVX512-BF16 or AMX.

    Elsewhere (AVX2 CPUs) bf16 products are emulated and slower than float32 ones.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(check is not None and check() for check in checks)


def inference_dtype(value: str | torch.dtype | None, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype a model infers in: `"auto"` -> bf16 where `bf16_computes_fast(device)`, else float32;
    None -> float32; `"float32"`, `"bfloat16"`, `"float16"` or a floating `torch.dtype` as given."""
    if value is None:
        return torch.float32
    if value == "auto":
        return torch.bfloat16 if bf16_computes_fast(device) else torch.float32
    dtype = getattr(torch, value, None) if isinstance(value, str) else value
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be 'auto', 'float32', 'bfloat16', 'float16' or a floating torch.dtype, "
                         f"got {value!r}")
    return dtype


def use_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store the 4-d weights of `model` in channels-last (NHWC) order, in place.

    Convolutions then run on oneDNN's / cuDNN's NHWC kernels and pass NHWC activations along.
    The state dict stays in the usual contiguous layout, so safetensors checkpoints and
    `from_pretrained` are unaffected.
    """
    model.to(memory_format=torch.channels_last)
    if not getattr(model, "_saves_contiguous_state", False):   # the hook once, however often this is called
        model.register_state_dict_post_hook(_contiguous_state)
        model._saves_contiguous_state = True
    return model


def _contiguous_state(module, state_dict, prefix, local_metadata) -> None:
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[key] = value.contiguous()
