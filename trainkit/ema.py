"""An exponential moving average of a model's weights, checkpointed beside the run."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .files import CheckpointError, load_state_dict_strict, save_state_dict


class WeightEMA:
    """An exponential moving average of a model's parameters (`torch.optim.swa_utils.AveragedModel`).

    Only what the optimizer trains is averaged. Buffers and parameters without gradients (kept
    by their own update rule, such as an EMA codebook whose dead codes are restarted) are copied
    from the live model whenever the average is used: averaging those would blend a restarted
    code with the one it replaced.
    Every process updates its own copy (the parameters are identical across processes), and
    checkpoints store it as `ema.safetensors`.
    """

    FILE = "ema.safetensors"

    def __init__(self, model: torch.nn.Module, decay: float):
        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)

    def update(self, model: torch.nn.Module) -> None:
        self.averaged.update_parameters(model)

    def module(self, live: torch.nn.Module) -> torch.nn.Module:
        """The averaged model, with the live model's current buffers and untrained parameters."""
        with torch.no_grad():
            for mine, theirs in zip(self.averaged.module.buffers(), live.buffers()):
                mine.copy_(theirs)
            for mine, theirs in zip(self.averaged.module.parameters(), live.parameters()):
                if not theirs.requires_grad:
                    mine.copy_(theirs)
        return self.averaged.module

    def save(self, directory: Path) -> None:
        save_state_dict(self.averaged.state_dict(), directory / self.FILE)

    def load(self, directory: Path) -> None:
        path = directory / self.FILE
        if not path.is_file():
            raise CheckpointError(f"{directory} has no {self.FILE}: it was written by a run without train.ema_decay; "
                                  "resume it with the same settings or start a new output_dir")
        load_state_dict_strict(self.averaged, path)
