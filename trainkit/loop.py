"""The one training loop both stages use, on `accelerate`.

A stage describes its job as a `TrainTask` (model, datasets, the loss of one batch, an
evaluation, how to save the final model) and hands it to `run_training`. The loop gives it:
any number of processes, mixed precision, gradient accumulation, warm-up + cosine LR over
a step budget and/or a wall-clock budget, a progress bar, tensorboard and `metrics.jsonl`,
preview images, atomic checkpoints with `resume=latest`, a guard against NaN/inf losses,
the final model in `output_dir/final` and optional hub pushes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, parse_flag_from_env, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import ConfigError, load_config, to_dict
from .hub import CheckpointError, push_folder_to_hub
from .images import save_grid

logger = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    """Optimisation, budgets and bookkeeping of a training run (the `train:` section)."""

    batch_size: int = 128                 # per process and micro-batch
    grad_accum_steps: int = 1
    max_steps: int = 10_000               # optimizer steps
    max_minutes: float | None = None      # wall-clock budget (evaluations and checkpoints count too)
    lr: float = 1e-3
    min_lr_ratio: float = 0.05            # cosine floor, as a fraction of lr
    warmup_steps: int = 200
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    grad_clip: float | None = 1.0
    ema_decay: float | None = None        # keep an exponential moving average of the weights (e.g. 0.999);
                                          # evaluations and the final model then use the averaged weights
    # None: as `accelerate launch` says; "auto": bf16 where it is faster than fp32 (see `resolve_mixed_precision`)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] | None = None
    channels_last: bool = False           # convolutional models: NHWC weights and activations (see `use_channels_last`)
    seed: int = 0
    num_threads: int | None = None        # torch intra-op threads per process (None: torch's default)
    num_workers: int = 0
    log_every: int = 25
    eval_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    progress_bar: bool = True

    def __post_init__(self):
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in (0, 1), e.g. 0.999 (or null for none); got {self.ema_decay}")


@dataclass
class HubConfig:
    """Optional pushes of the trained model to the Hugging Face hub (the `hub:` section)."""

    repo_id: str | None = None
    strategy: Literal["end", "every_save"] = "end"   # the final model, or every checkpoint too
    private: bool = False


class WeightEMA:
    """An exponential moving average of a model's parameters (`torch.optim.swa_utils.AveragedModel`).

    Buffers are not averaged: they are copied from the live model whenever the average is used.
    Every process updates its own copy (the parameters are identical across processes), and
    checkpoints store it as `ema.safetensors`.
    """

    FILE = "ema.safetensors"

    def __init__(self, model: torch.nn.Module, decay: float):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)

    def update(self, model: torch.nn.Module) -> None:
        self.averaged.update_parameters(model)

    def module(self, live: torch.nn.Module) -> torch.nn.Module:
        """The averaged model, with the live model's current buffers."""
        with torch.no_grad():
            for mine, theirs in zip(self.averaged.module.buffers(), live.buffers()):
                mine.copy_(theirs)
        return self.averaged.module

    def save(self, directory: Path) -> None:
        from .hub import save_state_dict

        save_state_dict(self.averaged.state_dict(), directory / self.FILE)

    def load(self, directory: Path) -> None:
        from .hub import load_state_dict_strict

        path = directory / self.FILE
        if not path.is_file():
            raise CheckpointError(f"{directory} has no {self.FILE}: it was written by a run without train.ema_decay; "
                                  "resume it with the same settings or start a new output_dir")
        load_state_dict_strict(self.averaged, path)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainTask:
    """What a stage provides to the loop. Subclasses implement the four methods."""

    model: torch.nn.Module
    train_dataset: Dataset
    val_dataset: Dataset | None

    def training_step(self, model: torch.nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one micro-batch (a scalar tensor) and scalars to log."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, step: int
                 ) -> tuple[dict[str, float], torch.Tensor | None]:
        """Validation metrics (identical on every process) and an optional preview image batch."""
        raise NotImplementedError

    def save_final(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the unwrapped model in its `from_pretrained` format."""
        model.save_pretrained(directory)

    def param_groups(self, model: torch.nn.Module, weight_decay: float) -> list[dict]:
        """Optimizer groups: decay on matrices and kernels, none on biases, norms and embeddings."""
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and "embed" not in name and "codebook" not in name else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_factor(progress: float, step: int, cfg: LoopConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine from 1 to `min_lr_ratio` as progress goes 0 -> 1."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
    cosine = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return warm * cosine


def check_world_size(accelerator: Accelerator | Any) -> None:
    """Fail loudly when the launcher and accelerate (an `Accelerator` or a `PartialState`) disagree
    on the number of processes."""
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != expected:
        raise RuntimeError(
            f"launched with WORLD_SIZE={expected} but accelerate runs {accelerator.num_processes} process(es): "
            "each process would train alone. On a CPU-only machine launch several processes with "
            "`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ...`"
        )


class MetricsWriter:
    """`metrics.jsonl` (one JSON object per logged step) plus the accelerate trackers."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, resume_step: int | None):
        self.accelerator = accelerator
        self.path = output_dir / "metrics.jsonl"
        if accelerator.is_main_process and resume_step is not None and self.path.exists():
            # Drop lines past the checkpoint we resume from: those steps will be run again.
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(k + "\n" for k in kept))

    def log(self, values: dict[str, float], step: int) -> None:
        self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, **values}) + "\n")


def _push_model(task: TrainTask, model: torch.nn.Module, hub: HubConfig, message: str, output_dir: Path) -> None:
    with tempfile.TemporaryDirectory(dir=output_dir) as staging:
        task.save_final(model, Path(staging))
        url = push_folder_to_hub(staging, hub.repo_id, private=hub.private, commit_message=message)
    logger.info("pushed %s to %s", message, url)


def resolve_mixed_precision(value: str | None) -> str | None:
    """`"auto"` -> `"bf16"` on a GPU with bf16 or a CPU with AMX matrix units, else `"no"`.

    On a CPU without AMX, bf16 matrix products run at about half the fp32 rate (measured on
    an AVX-512 Xeon: 185 vs 373 GFLOP/s), so autocast would slow a transformer down.
    Any other value is returned unchanged.
    """
    if value != "auto":
        return value
    if torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU"):
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "bf16" if amx is not None and amx() else "no"


def use_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """Store the 4-d weights of `model` in channels-last (NHWC) order, in place.

    Convolutions then run on oneDNN's / cuDNN's NHWC kernels and pass NHWC activations along; a
    VQ tokenizer trains 1.3x faster in fp32 on a 2-core Xeon. The state dict stays in the usual
    contiguous layout, so safetensors checkpoints and `from_pretrained` are unaffected.
    """
    model.to(memory_format=torch.channels_last)

    def contiguous_state(module, state_dict, prefix, local_metadata) -> None:
        for key, value in state_dict.items():
            if isinstance(value, torch.Tensor) and not value.is_contiguous():
                state_dict[key] = value.contiguous()

    model.register_state_dict_post_hook(contiguous_state)
    return model


def run_training(
    task: TrainTask,
    loop: LoopConfig,
    output_dir: str | Path,
    resume: str | None = None,
    hub: HubConfig | None = None,
    run_config: dict | None = None,
) -> dict[str, float]:
    """Train `task.model` as `loop` says; returns the last validation metrics."""
    output_dir = Path(output_dir)
    hub = hub or HubConfig()
    accelerator = Accelerator(
        gradient_accumulation_steps=loop.grad_accum_steps,
        mixed_precision=resolve_mixed_precision(loop.mixed_precision),
        log_with="tensorboard",
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    check_world_size(accelerator)
    if accelerator.distributed_type.value in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise ValueError(
            f"this training loop supports data-parallel runs (DDP: `accelerate launch --multi_gpu`, any number of "
            f"processes and machines), not {accelerator.distributed_type.value}: its evaluations, samples and final "
            "save read the full model on each process. Launch without the sharding plugin"
        )
    if loop.num_threads:
        torch.set_num_threads(loop.num_threads)
    set_seed(loop.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        if run_config is not None:
            (output_dir / "run_config.json").write_text(json.dumps(run_config, indent=2) + "\n")
        info = {"num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
                "device": str(accelerator.device), "torch_threads": torch.get_num_threads()}
        (output_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    accelerator.wait_for_everyone()

    model = task.model
    if loop.channels_last:
        use_channels_last(model)
    optimizer = torch.optim.AdamW(
        task.param_groups(model, loop.weight_decay), lr=loop.lr, betas=tuple(loop.betas)
    )
    if len(task.train_dataset) < loop.batch_size * accelerator.num_processes:
        raise ValueError(
            f"the training set has {len(task.train_dataset)} images, fewer than one batch "
            f"(train.batch_size={loop.batch_size} x {accelerator.num_processes} process(es)); lower train.batch_size"
        )
    train_loader = DataLoader(task.train_dataset, batch_size=loop.batch_size, shuffle=True, drop_last=True,
                              num_workers=loop.num_workers)
    val_loader = None
    if task.val_dataset is not None and len(task.val_dataset):
        val_loader = DataLoader(task.val_dataset, batch_size=loop.batch_size * 2, shuffle=False,
                                num_workers=loop.num_workers)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    ema = WeightEMA(accelerator.unwrap_model(model), loop.ema_decay) if loop.ema_decay else None
    state = ckpt.TrainerState()
    checkpoints = output_dir / "checkpoints"
    resume_from = ckpt.find_checkpoint(output_dir, resume) if resume else None
    if resume_from is not None:
        try:
            accelerator.load_state(str(resume_from))
        except Exception as err:  # truncated files, or a checkpoint of another model
            raise CheckpointError(
                f"cannot resume from {resume_from}: {type(err).__name__}: {err}. The checkpoint is damaged or "
                "was written by a run with a different model or optimizer; resume from another "
                "checkpoints/step-* directory or start a new output_dir"
            ) from err
        state = ckpt.TrainerState.load(resume_from)
        if ema is not None:
            ema.load(resume_from)
        accelerator.print(f"resumed from {resume_from} at step {state.step}")
    accelerator.init_trackers("tensorboard")
    metrics = MetricsWriter(accelerator, output_dir, state.step if resume_from else None)

    budget_s = loop.max_minutes * 60 if loop.max_minutes else None

    def progress() -> float:
        p = state.step / max(loop.max_steps, 1)
        return max(p, state.elapsed_seconds / budget_s) if budget_s else p

    def trained_model() -> torch.nn.Module:
        """The model to evaluate, save and push: the weight average when there is one."""
        live = accelerator.unwrap_model(model)
        return ema.module(live) if ema is not None else live

    def save_checkpoint() -> None:
        tmp = ckpt.temp_dir(checkpoints, state.step)
        accelerator.save_state(str(tmp), safe_serialization=True)
        if ema is not None and accelerator.is_main_process:
            ema.save(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            final = ckpt.finalize(checkpoints, state.step, state, loop.keep_checkpoints)
            accelerator.print(f"checkpoint {final}")
            if hub.repo_id and hub.strategy == "every_save":
                _push_model(task, trained_model(), hub, f"step {state.step}", output_dir)
        accelerator.wait_for_everyone()

    last_eval: dict[str, float] = {}

    def evaluate() -> None:
        nonlocal last_eval
        if val_loader is None:
            return
        evaluated = model if ema is None else trained_model()
        evaluated.eval()
        values, preview = task.evaluate(evaluated, val_loader, accelerator, state.step)
        evaluated.train()
        last_eval = values
        metrics.log({f"val/{k}": v for k, v in values.items()}, state.step)
        if accelerator.is_main_process:
            summary = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            accelerator.print(f"step {state.step} validation: {summary}")
            if preview is not None:
                save_grid(preview, output_dir / "samples" / f"step-{state.step:07d}.png", nrow=8)

    bar = tqdm(total=loop.max_steps, initial=state.step, disable=not (loop.progress_bar and accelerator.is_local_main_process),
               desc="train", dynamic_ncols=True)
    model.train()
    stop = state.step >= loop.max_steps
    window: dict[str, float] = {}
    window_n = 0
    t_last = time.monotonic()
    while not stop:
        train_loader.set_epoch(state.epoch)
        batches = train_loader
        if state.batches_in_epoch:
            batches = accelerator.skip_first_batches(train_loader, state.batches_in_epoch)
        for batch in batches:
            with accelerator.accumulate(model):
                loss, logs = task.training_step(model, batch, state.step)
                finite = torch.isfinite(loss.detach()).float()
                if accelerator.reduce(finite, reduction="sum").item() < accelerator.num_processes:
                    raise TrainingDiverged(
                        f"the loss became {loss.item()} at step {state.step}; stopping. The last good checkpoint "
                        f"is kept in {checkpoints} (resume=latest): lower train.lr, raise train.warmup_steps, "
                        "or try train.mixed_precision=no"
                    )
                accelerator.backward(loss)
                if accelerator.sync_gradients and loop.grad_clip:
                    accelerator.clip_grad_norm_(model.parameters(), loop.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.batches_in_epoch += 1
            state.samples_seen += loop.batch_size * accelerator.num_processes
            for k, v in {"loss": float(loss.detach()), **logs}.items():
                window[k] = window.get(k, 0.0) + v
            window_n += 1
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.update(accelerator.unwrap_model(model))

            state.step += 1
            now = time.monotonic()
            state.elapsed_seconds += now - t_last
            t_last = now
            if budget_s:  # every process must agree on when the budget runs out
                elapsed = torch.tensor(state.elapsed_seconds, device=accelerator.device)
                state.elapsed_seconds = float(accelerator.reduce(elapsed, reduction="mean"))
            lr = loop.lr * lr_factor(progress(), state.step, loop)
            for group in optimizer.param_groups:
                group["lr"] = lr
            bar.update(1)

            if state.step % loop.log_every == 0:
                values = {f"train/{k}": v / window_n for k, v in window.items()}
                values["train/lr"] = lr
                values["train/samples_seen"] = state.samples_seen
                metrics.log(values, state.step)
                bar.set_postfix(loss=f"{values['train/loss']:.4f}", lr=f"{lr:.2e}")
                window, window_n = {}, 0
            stop = state.step >= loop.max_steps or (budget_s is not None and state.elapsed_seconds >= budget_s)
            if state.step % loop.eval_every == 0 and not stop:
                evaluate()
            if state.step % loop.checkpoint_every == 0 or stop:
                save_checkpoint()
            if stop:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    bar.close()

    evaluate()
    if accelerator.is_main_process:
        final_dir = output_dir / "final"
        task.save_final(trained_model(), final_dir)
        (final_dir / "eval_metrics.json").write_text(json.dumps({"step": state.step, **last_eval}, indent=2) + "\n")
        accelerator.print(f"final model saved to {final_dir}")
        if hub.repo_id:
            _push_model(task, trained_model(), hub, f"final model (step {state.step})", output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return last_eval


def train_from_command_line(config_cls: type, build_task: Callable[[Any], TrainTask], prog: str,
                            description: str, argv: list[str] | None = None) -> dict[str, float]:
    """The body of every `<stage>.train` command.

    `--config YAML` plus `key=value` overrides -> a typed `config_cls` (with `train`, `hub`,
    `output_dir` and `resume` fields); seeds, builds the task (bad settings end the command with
    a one-line error, not a traceback) and runs the loop.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=f"{description} Extra arguments are key=value overrides of the YAML "
        "(dotted keys, e.g. train.lr=3e-4 train.max_minutes=30).")
    parser.add_argument("--config", help="a YAML recipe from configs/")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
    except ConfigError as err:
        parser.error(str(err))
    set_seed(cfg.train.seed)  # the model's initial weights depend on it
    try:
        task = build_task(cfg)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"{prog}: error: {err}")
    return run_training(task, cfg.train, cfg.output_dir, resume=cfg.resume, hub=cfg.hub, run_config=to_dict(cfg))
