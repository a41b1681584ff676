"""Sharded training (`train.shard=fsdp`, torch's FSDP2): the launch check, sharding a model's
blocks, sharded checkpoints, and the full state gathered for saving."""

from __future__ import annotations

import copy
from typing import Any

import torch
from accelerate.utils import parse_flag_from_env


def check_shard_launch(accelerator: Any) -> None:
    """Fail loudly on launches asking for accelerate's sharding plugins: `train.shard` shards instead."""
    kind = accelerator.distributed_type.value
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise ValueError(
            f"this trainer shards models itself (train.shard=fsdp, torch's FSDP2), not through accelerate's "
            f"{kind} plugin: launch with `accelerate launch --multi_gpu --num_processes N ... train.shard=fsdp` "
            "(or without train.shard for data-parallel DDP)")
    if parse_flag_from_env("ACCELERATE_USE_FSDP") or parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        raise ValueError(
            f"the launch asks for accelerate's sharding plugin but accelerate runs {kind} (on CPU processes it "
            "silently falls back to data parallelism): drop --use_fsdp / ACCELERATE_USE_FSDP and set "
            "train.shard=fsdp to shard with torch's FSDP2")


def shard_model(model: torch.nn.Module, block_classes: tuple[str, ...], device_type: str,
                mixed_precision: str | None) -> list[torch.nn.Module]:
    """Shard `model` in place over all processes with FSDP2 (`fully_shard` on a 1-d device mesh).

    Every module whose class name is in `block_classes` is one sharding unit; then each direct
    child that still holds parameters (so that calling it alone, as evaluation and sampling call
    the language model, gathers what it needs), then the model itself if it holds parameters of
    its own. Under bf16 the gathered weights compute in bf16, gradients reduce in float32.
    Returns the sharded blocks.
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if not dist.is_initialized() or dist.get_world_size() < 2:
        raise ValueError(
            "train.shard=fsdp needs several processes to shard over, but this run has one: launch with "
            "`accelerate launch --multi_gpu --num_processes N` (on CPUs add ACCELERATE_USE_CPU=1), or drop train.shard")
    if mixed_precision == "fp16":
        raise ValueError("train.shard=fsdp does not support fp16 (it needs a sharded loss scaler): "
                         "use train.mixed_precision=bf16 or no")
    policy = MixedPrecisionPolicy()
    if mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    blocks = [m for m in model.modules() if type(m).__name__ in block_classes]
    if not blocks:
        found = sorted({type(m).__name__ for m in model.modules()})
        raise ValueError(f"train.shard=fsdp: the model has none of the block classes {list(block_classes)} "
                         f"the task names (its module classes: {found})")
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    sharded = set()
    for block in blocks:
        sharded.update(id(p) for p in block.parameters())
    for child in model.children():
        if any(id(p) not in sharded for p in child.parameters()):
            fully_shard(child, mesh=mesh, mp_policy=policy)
            sharded.update(id(p) for p in child.parameters())
    if any(id(p) not in sharded for p in model.parameters()):
        fully_shard(model, mesh=mesh, mp_policy=policy)
    return blocks


def local_numel(tensors) -> int:
    """Elements this process holds of `tensors` (the local shard of sharded ones)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel()
    return total


def shard_report(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """What this process holds of a (sharded) model and its optimizer at rest (every unit resharded,
    as between steps): elements and bytes."""
    for module in model.modules():
        if hasattr(module, "reshard"):   # an FSDP2 unit: a no-grad forward may leave the root gathered
            module.reshard()
    params = list(model.parameters())
    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.ndim > 0]
    full = sum(p.numel() for p in params)   # a sharded parameter reports its full shape
    return {"full_parameters": full, "local_parameters": local_numel(params),
            "local_parameter_bytes": sum((p.to_local() if hasattr(p, "to_local") else p).nbytes for p in params),
            "local_optimizer_state_bytes": sum((s.to_local() if hasattr(s, "to_local") else s).nbytes for s in states)}


def meta_twin(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose parameters are on the meta device (no memory) and whose buffers are
    real: the shell that `materialize` fills with gathered weights to save the model on one process."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = torch.nn.Parameter(torch.empty_like(param, device="meta"),
                                                              requires_grad=param.requires_grad)
    return twin


def materialize(twin: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Give a `meta_twin` the full weights of `state_dict` (strict: every key must match)."""
    twin.load_state_dict(state_dict, assign=True, strict=True)
    return twin


SHARDED_DIR = "sharded"   # the sharded model and optimizer inside a checkpoint directory


def save_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory) -> None:
    """All processes: write their shards of the model and optimizer to `directory/sharded`
    (torch.distributed.checkpoint; readable by a run with another process count)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(directory / SHARDED_DIR))


def load_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer, directory) -> None:
    """All processes: read back what `save_sharded` wrote, each process its own shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = directory / SHARDED_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"{directory} has no {SHARDED_DIR}/ directory: it was written by a run without "
                                "train.shard=fsdp; resume it with the same settings")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """All processes: the full (unsharded) weights of a sharded model, on the CPU of process 0
    (the other processes get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
