"""The one trainer both stages use, on `accelerate`.

A stage describes its job as a `TrainTask` (the model, any further modules it trains with
their own optimizers, datasets, the loss of one batch, an evaluation, how to save the final
model) and hands it to `Trainer`. The trainer gives it: any number of processes, mixed
precision, gradient accumulation, warm-up + cosine learning rates over a step budget (and an
optional wall-clock cap), a progress bar, tensorboard and `metrics.jsonl`, preview images,
atomic checkpoints with `resume=latest`, a guard against NaN/inf gradients, a weight average,
snapshots of the model at the steps the task names (`output_dir/snapshots/step-N`), the final
model in `output_dir/final` and optional hub pushes.

A run goes through named phases: `setup` (processes, data, models, optimizers, resume),
`train_step` (one micro-batch: loss, backward; on accumulation boundaries, the checked
optimizer steps), `evaluate`, `checkpoint` and `finish` (final model, push).
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
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from .config import ConfigError, load_config, to_dict
from . import sharding
from .devices import check_world_size, resolve_mixed_precision, use_channels_last
from .ema import WeightEMA
from .files import CheckpointError, atomic_write_text
from .hub import push_folder_to_hub
from .images import save_grid
from .optim import build_optimizer

logger = logging.getLogger(__name__)

MAIN_PART = "model"


@dataclass
class TrainConfig:
    """Optimisation, budgets and bookkeeping of a training run (the `train:` section)."""

    batch_size: int = 128                 # per process and micro-batch
    grad_accum_steps: int = 1
    max_steps: int = 10_000               # optimizer steps: the run's budget
    max_minutes: float | None = None      # optional wall-clock cap (evaluations and checkpoints count too)
    lr: float = 1e-3
    min_lr_ratio: float = 0.05            # cosine floor, as a fraction of lr
    warmup_steps: int = 200
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    # "muon": Muon for the model's hidden weight matrices (`TrainTask.hidden_matrices`), AdamW for
    # the rest at the same lr and weight decay (see `trainkit.optim`); other parts keep AdamW
    optimizer: Literal["adamw", "muon"] = "adamw"
    grad_clip: float | None = 1.0
    ema_decay: float | None = None        # keep an exponential moving average of the weights (e.g. 0.999);
                                          # evaluations and the final model then use the averaged weights
    # None: as `accelerate launch` says; "auto": bf16 where it is faster than fp32 (see `resolve_mixed_precision`)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] | None = None
    channels_last: bool = False           # convolutional models: NHWC weights and activations (see `use_channels_last`)
    # the training steps call the main model through `torch.compile` (evaluation, checkpoints and the
    # final model use the model itself, whose weights the compiled module shares)
    compile: bool = False
    # torch's deterministic algorithms (warn-only where an op has none): the same config and seed
    # train the same weights run after run, compiled steps too (whose scatter-adds would otherwise
    # sum in the order their threads race); false may be faster on a GPU
    deterministic: bool = True
    # None: data-parallel (DDP, a full model per process); "fsdp": shard the model, its gradients and
    # optimizer state over the processes (torch's FSDP2, on the blocks the task names: `TrainTask.shard_blocks`)
    shard: Literal["fsdp"] | None = None
    seed: int = 0
    num_threads: int | None = None        # torch intra-op threads per process (None: torch's default)
    num_workers: int = 0
    log_every: int = 25
    eval_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    progress_bar: bool = True

    def __post_init__(self):
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"train.optimizer must be adamw or muon, got {self.optimizer!r}")
        if self.optimizer == "muon" and self.shard == "fsdp":
            raise ValueError("train.optimizer=muon does not shard: use train.optimizer=adamw with train.shard=fsdp")
        if self.compile and self.shard == "fsdp":
            raise ValueError("train.compile does not combine with train.shard=fsdp: set train.compile=false")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in (0, 1), e.g. 0.999 (or null for none); got {self.ema_decay}")


@dataclass
class HubConfig:
    """Optional pushes of the trained model to the Hugging Face hub (the `hub:` section)."""

    repo_id: str | None = None
    strategy: Literal["end", "every_save"] = "end"   # the final model, or every checkpoint too
    private: bool = False


@dataclass
class Part:
    """A module a task trains with an optimizer of its own (e.g. a GAN's discriminator).

    Unset fields follow the `train:` section. The part is optimised from `start_step` on; its
    warm-up counts from there, its cosine follows the run's progress like the model's.
    """

    name: str
    module: torch.nn.Module
    lr: float | None = None
    betas: list[float] | None = None
    weight_decay: float | None = None
    warmup_steps: int | None = None
    start_step: int = 0


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite."""


class TrainTask:
    """What a stage provides to the trainer. Subclasses implement `training_step` and `evaluate`.

    `model` is the run's result: it is evaluated, averaged (`train.ema_decay`) and saved.
    `extra_parts` adds modules with optimizers of their own; `training_step` then receives them
    (wrapped for the run's processes) as keyword arguments named after the parts and returns
    one loss per part it wants stepped.
    """

    model: torch.nn.Module
    train_dataset: Dataset
    val_dataset: Dataset | None

    def shard_blocks(self) -> tuple[str, ...]:
        """The class names of the model's repeated blocks, the units `train.shard=fsdp` shards;
        empty when the task cannot be sharded (it then trains data-parallel only)."""
        return ()

    def extra_parts(self) -> list[Part]:
        """Modules besides `model` that the trainer optimises, checkpoints and resumes."""
        return []

    def snapshot_steps(self) -> tuple[int, ...]:
        """Steps after which the trained model is saved as it is then, in its `from_pretrained`
        format, to `snapshot_dir(output_dir, step)` (e.g. an early model the final one uses)."""
        return ()

    def training_step(self, model: torch.nn.Module, batch: Any, step: int, **parts: torch.nn.Module
                      ) -> tuple[torch.Tensor | dict[str, torch.Tensor], dict[str, torch.Tensor | float]]:
        """The loss of one micro-batch (a scalar tensor, or `{part name: loss}` with `"model"` for the
        model) and scalars to log. Return tensors rather than Python numbers: the trainer turns
        them into numbers only when it logs, so that the step never waits for the device."""
        raise NotImplementedError

    def evaluate(self, model: torch.nn.Module, loader: DataLoader, accelerator: Accelerator, step: int
                 ) -> tuple[dict[str, float], torch.Tensor | None]:
        """Validation metrics (identical on every process) and an optional preview image batch."""
        raise NotImplementedError

    def save_final(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the unwrapped model in its `from_pretrained` format."""
        model.save_pretrained(directory)

    def param_groups(self, module: torch.nn.Module, weight_decay: float) -> list[dict]:
        """Optimizer groups: decay on matrices and kernels, none on biases, norms and embeddings."""
        decay, no_decay = [], []
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            (decay if p.ndim >= 2 and "embed" not in name and "codebook" not in name else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

    def hidden_matrices(self, module: torch.nn.Module) -> list[torch.nn.Parameter]:
        """The model's weight matrices between its input embedding and its output layer, which
        `train.optimizer=muon` trains with Muon; none unless the task names them."""
        return []


def snapshot_dir(output_dir: str | Path, step: int) -> Path:
    """Where the trainer saves the model after `step` when the task asks (`TrainTask.snapshot_steps`)."""
    return Path(output_dir) / "snapshots" / f"step-{step:07d}"


def _keeping_rng(batches):
    """The batches of a resumed, part-consumed epoch, with the CPU RNG left as it was before they
    started. Starting a loader draws its base seed from that RNG: the uninterrupted run made that
    draw at the epoch's start, before the checkpoint, so the resumed run must not make it again, or
    random ops in the steps (e.g. the prior's class dropout) would run one draw ahead."""
    state = torch.get_rng_state()
    iterator = iter(batches)
    first = next(iterator, None)
    torch.set_rng_state(state)
    if first is not None:
        yield first
        yield from iterator


def lr_factor(progress: float, step: int, cfg: TrainConfig | Any, warmup_steps: int | None = None) -> float:
    """The learning rate of optimizer step `step` (0-based) as a fraction of the peak: linear warm-up
    over `warmup_steps` (the first step runs at 1/warmup_steps of the peak), then cosine from 1 to
    `cfg.min_lr_ratio` as the run's progress goes 0 -> 1."""
    warmup = cfg.warmup_steps if warmup_steps is None else warmup_steps
    warm = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    cosine = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return warm * cosine


def expected_total_steps(step: int, elapsed_seconds: float, cfg: TrainConfig) -> int:
    """The step at which the run will end: `max_steps`, or earlier where the wall-clock cap will
    stop it first at the pace so far (what the progress bar counts to)."""
    if not cfg.max_minutes or step == 0 or elapsed_seconds <= 0:
        return cfg.max_steps
    at_cap = math.ceil(step * cfg.max_minutes * 60 / elapsed_seconds)
    return max(step, min(cfg.max_steps, at_cap))


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


class RunningMeans:
    """Sums of logged scalars over the micro-batches since the last log, kept on the device.
    Each scalar is averaged over the micro-batches that logged it (a part that starts late
    logs from its start on)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor | float]) -> None:
        for key, value in values.items():
            if isinstance(value, torch.Tensor):   # a copy: the value may alias a weight the next step changes
                value = value.detach().to(torch.float32, copy=True)
            else:
                value = float(value)
            self.sums[key] = self.sums[key] + value if key in self.sums else value
            self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        """The means as Python numbers (the one place that waits for the device), and a reset."""
        means = {key: float(value) / self.counts[key] for key, value in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


@dataclass
class _Optimised:
    """A part as the trainer runs it: the prepared module, its optimizer and its schedule."""

    part: Part
    module: torch.nn.Module
    optimizer: torch.optim.Optimizer

    backward_kwargs: dict = field(default_factory=dict)

    def lr(self, cfg: TrainConfig, step: int, progress: float) -> float:
        peak = cfg.lr if self.part.lr is None else self.part.lr
        return peak * lr_factor(progress, step - self.part.start_step, cfg, self.part.warmup_steps)


def compile_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile(model)` for the training steps. A step may take gradients of the model's
    graph more than once (the tokenizer's adaptive adversarial weight uses `retain_graph`), which
    torch's donated backward buffers refuse, so they are turned off (they only save memory)."""
    if hasattr(torch._functorch.config, "donated_buffer"):
        torch._functorch.config.donated_buffer = False
    return torch.compile(model)


class Trainer:
    """Runs a `TrainTask` as a `TrainConfig` says; `fit()` returns the last validation metrics."""

    def __init__(self, task: TrainTask, cfg: TrainConfig, output_dir: str | Path, resume: str | None = None,
                 hub: HubConfig | None = None, run_config: dict | None = None):
        self.task, self.cfg = task, cfg
        self.output_dir = Path(output_dir)
        self.checkpoints = self.output_dir / "checkpoints"
        self.resume, self.hub, self.run_config = resume, hub or HubConfig(), run_config
        self.state = ckpt.TrainerState()
        self.last_eval: dict[str, float] = {}
        self.means = RunningMeans()

    # ------------------------------------------------------------------------------- setup

    def setup(self) -> None:
        """Processes, run files, data loaders, models and optimizers (all through accelerate), resume."""
        cfg = self.cfg
        self.accelerator = accelerator = Accelerator(
            gradient_accumulation_steps=cfg.grad_accum_steps,
            mixed_precision=resolve_mixed_precision(cfg.mixed_precision),
            log_with="tensorboard",
            project_dir=str(self.output_dir),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )
        check_world_size(accelerator)
        sharding.check_shard_launch(accelerator)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        set_seed(cfg.seed)
        torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
        self._write_run_files()
        train_loader, val_loader = self._loaders()

        parts = [Part(MAIN_PART, self.task.model), *self.task.extra_parts()]
        names = [p.name for p in parts]
        if len(set(names)) != len(names):
            raise ValueError(f"the task's parts need distinct names, got {names}")
        if len(parts) > 1 and accelerator.mixed_precision == "fp16":
            raise ValueError(f"this task trains {names} with optimizers of their own, which fp16's single loss "
                             "scaler cannot serve: use train.mixed_precision=bf16 or no")
        if cfg.shard == "fsdp":
            self._shard(parts)
        optimizers = []
        for part in parts:
            if cfg.channels_last:
                use_channels_last(part.module)
            decay = cfg.weight_decay if part.weight_decay is None else part.weight_decay
            main = part.name == MAIN_PART
            optimizers.append(build_optimizer(cfg.optimizer if main else "adamw",
                                              self.task.param_groups(part.module, decay),
                                              self.task.hidden_matrices(part.module) if main else [],
                                              betas=tuple(part.betas or cfg.betas),
                                              mixed_precision=accelerator.mixed_precision))
        if cfg.shard == "fsdp":   # the model is sharded already; accelerate shards the data only
            modules, self.train_loader = [p.module for p in parts], accelerator.prepare(train_loader)
        else:
            prepared = accelerator.prepare(*[p.module for p in parts], *optimizers, train_loader)
            modules, optimizers = prepared[:len(parts)], prepared[len(parts):2 * len(parts)]
            self.train_loader = prepared[-1]
        self.val_loader = accelerator.prepare(val_loader) if val_loader is not None else None
        self.parts = {p.name: _Optimised(p, m, o) for p, m, o in zip(parts, modules, optimizers)}
        if len(parts) > 1:   # each part's loss fills the gradients of that part's parameters only
            for part in self.parts.values():
                part.backward_kwargs = {"inputs": [p for p in part.module.parameters() if p.requires_grad]}
        self.model = self.parts[MAIN_PART].module
        self.step_model = compile_for_training(self.model) if cfg.compile else self.model   # what the steps call

        self.ema = WeightEMA(accelerator.unwrap_model(self.model), cfg.ema_decay) if cfg.ema_decay else None
        resume_from = ckpt.find_checkpoint(self.output_dir, self.resume) if self.resume else None
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        accelerator.init_trackers("tensorboard")
        self.metrics = MetricsWriter(accelerator, self.output_dir, self.state.step if resume_from else None)

    def _shard(self, parts: list[Part]) -> None:
        """`train.shard=fsdp`: check the task can be sharded, keep an empty twin of the model for the
        final save (process 0), and shard the model over the processes."""
        cfg, task, accelerator = self.cfg, self.task, self.accelerator
        blocks = task.shard_blocks()
        if not blocks:
            raise ValueError(f"train.shard=fsdp: {type(task).__name__} cannot be sharded (it names no blocks to "
                             "shard; convolutional models train data-parallel): drop train.shard and launch "
                             "with `accelerate launch --multi_gpu` as usual")
        if len(parts) > 1:
            raise ValueError(f"train.shard=fsdp shards the model alone, but this task also trains "
                             f"{[p.name for p in parts[1:]]}: drop train.shard")
        if cfg.ema_decay:
            raise ValueError("train.ema_decay is not supported with train.shard=fsdp (the average would be a full "
                             "copy of the model on every process): set train.ema_decay=null or drop train.shard")
        self._twin = sharding.meta_twin(task.model) if accelerator.is_main_process else None
        sharding.shard_model(task.model, blocks, accelerator.device.type, accelerator.mixed_precision)

    def _write_shard_report(self) -> None:
        """`shards/rank-N.json`: what this process holds of the model and its optimizer state."""
        report = {"rank": self.accelerator.process_index, "num_processes": self.accelerator.num_processes,
                  **sharding.shard_report(self.model, self.parts[MAIN_PART].optimizer)}
        folder = self.output_dir / "shards"
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"rank-{report['rank']}.json", json.dumps(report, indent=2) + "\n")

    def _write_run_files(self) -> None:
        accelerator = self.accelerator
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            if self.run_config is not None:
                (self.output_dir / "run_config.json").write_text(json.dumps(self.run_config, indent=2) + "\n")
            info = {"num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
                    "device": str(accelerator.device), "torch_threads": torch.get_num_threads()}
            (self.output_dir / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
        accelerator.wait_for_everyone()

    def _loaders(self) -> tuple[DataLoader, DataLoader | None]:
        cfg, task, world = self.cfg, self.task, self.accelerator.num_processes
        if len(task.train_dataset) < cfg.batch_size * world:
            raise ValueError(
                f"the training set has {len(task.train_dataset)} images, fewer than one batch "
                f"(train.batch_size={cfg.batch_size} x {world} process(es)); lower train.batch_size"
            )
        train = DataLoader(task.train_dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                           num_workers=cfg.num_workers)
        val = None
        if task.val_dataset is not None and len(task.val_dataset):
            val = DataLoader(task.val_dataset, batch_size=cfg.batch_size * 2, shuffle=False,
                             num_workers=cfg.num_workers)
        return train, val

    def _load_checkpoint(self, directory: Path) -> None:
        try:
            if self.cfg.shard == "fsdp":   # first: the RNG states accelerate restores must be the last word
                sharding.load_sharded(self.model, self.parts[MAIN_PART].optimizer, directory)
            self.accelerator.load_state(str(directory))
        except Exception as err:  # truncated files, or a checkpoint of another model
            raise CheckpointError(
                f"cannot resume from {directory}: {type(err).__name__}: {err}. The checkpoint is damaged or "
                "was written by a run with a different model or optimizer; resume from another "
                "checkpoints/step-* directory or start a new output_dir"
            ) from err
        self.state = ckpt.TrainerState.load(directory)
        if self.ema is not None:
            self.ema.load(directory)
        self.accelerator.print(f"resumed from {directory} at step {self.state.step}")

    # ------------------------------------------------------------------------------- the loop

    def fit(self) -> dict[str, float]:
        """setup, then steps (with evaluations and checkpoints on their schedules) until the budget
        is spent, then finish."""
        self.setup()
        self.bar = tqdm(total=expected_total_steps(self.state.step, self.state.elapsed_seconds, self.cfg),
                        initial=self.state.step, desc="train", dynamic_ncols=True,
                        disable=not (self.cfg.progress_bar and self.accelerator.is_local_main_process))
        for module in self._modules():
            module.train()
        self._clock = time.monotonic()
        while not self._budget_spent():
            self.train_loader.set_epoch(self.state.epoch)
            batches = self.train_loader
            if self.state.batches_in_epoch:
                batches = _keeping_rng(self.accelerator.skip_first_batches(self.train_loader,
                                                                           self.state.batches_in_epoch))
            for batch in batches:
                if self.train_step(batch):
                    self._after_optimizer_step()
                    if self._budget_spent():
                        break
            else:
                self.state.epoch += 1
                self.state.batches_in_epoch = 0
        self.bar.close()
        return self.finish()

    def _modules(self) -> list[torch.nn.Module]:
        return [p.module for p in self.parts.values()]

    def train_step(self, batch: Any) -> bool:
        """One micro-batch: the task's losses, their backward passes and, where gradients are
        complete, the optimizer steps. Returns whether the optimizers stepped."""
        accelerator, step = self.accelerator, self.state.step
        extra = {name: p.module for name, p in self.parts.items() if name != MAIN_PART}
        with accelerator.accumulate(*self._modules()):
            losses, logs = self.task.training_step(self.step_model, batch, step, **extra)
            if isinstance(losses, torch.Tensor):
                losses = {MAIN_PART: losses}
            unknown = sorted(set(losses) - set(self.parts))
            if unknown:
                raise ValueError(f"training_step returned losses for unknown parts {unknown}; "
                                 f"the task's parts are {sorted(self.parts)}")
            named = {("loss" if name == MAIN_PART else f"{name}_loss"): loss for name, loss in losses.items()}
            self.means.add({**named, **(logs or {})})
            active = [self.parts[name] for name in losses if step >= self.parts[name].part.start_step]
            for part in active:
                accelerator.backward(losses[part.part.name], **part.backward_kwargs)
            if accelerator.sync_gradients:
                self._optimizer_steps(active, losses)
        self.state.batches_in_epoch += 1
        self.state.samples_seen += self.cfg.batch_size * accelerator.num_processes
        return accelerator.sync_gradients

    def _optimizer_steps(self, active: list[_Optimised], losses: dict[str, torch.Tensor]) -> None:
        """Clip, check and apply the complete gradients of every active part. The gradient norms
        are of gradients already averaged over the processes, so every process decides alike."""
        accelerator, cfg = self.accelerator, self.cfg
        accelerator.unscale_gradients()   # fp16 only; once for all optimizers
        norms = [torch.nn.utils.clip_grad_norm_(p.module.parameters(), cfg.grad_clip or math.inf) for p in active]
        norms = [n.full_tensor() if hasattr(n, "full_tensor") else n for n in norms]   # sharded: the global norm
        if norms and not bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
            detail = ", ".join(f"{p.part.name}: loss {float(losses[p.part.name].detach()):.4g}, gradient norm {float(n):.4g}"
                               for p, n in zip(active, norms))
            raise TrainingDiverged(
                f"training diverged at step {self.state.step} ({detail}); stopping before the step is applied. "
                f"The last good checkpoint is kept in {self.checkpoints} (resume=latest): lower train.lr, raise "
                "train.warmup_steps, or try train.mixed_precision=no"
            )
        progress = self._progress()
        for part in active:
            lr = part.lr(cfg, self.state.step, progress)
            for group in part.optimizer.param_groups:
                group["lr"] = lr
            part.optimizer.step()
        for part in self.parts.values():
            part.optimizer.zero_grad(set_to_none=True)
        self.current_lr = self.parts[MAIN_PART].lr(cfg, self.state.step, progress)

    def _after_optimizer_step(self) -> None:
        """Average, count, log, evaluate and checkpoint on their schedules."""
        cfg, state = self.cfg, self.state
        if self.ema is not None:
            self.ema.update(self.accelerator.unwrap_model(self.model))
        state.step += 1
        self._tick()
        self.bar.total = expected_total_steps(state.step, state.elapsed_seconds, cfg)
        self.bar.update(1)
        if state.step % cfg.log_every == 0:
            self._log_training()
        last = self._budget_spent()
        if state.step % cfg.eval_every == 0 and not last:
            self.evaluate()
        if state.step in self.task.snapshot_steps():
            self.snapshot()
        if state.step % cfg.checkpoint_every == 0 or last:
            self.checkpoint()

    def _tick(self) -> None:
        """Advance the run's clock; with a wall-clock cap every process must agree on it."""
        now = time.monotonic()
        self.state.elapsed_seconds += now - self._clock
        self._clock = now
        if self.cfg.max_minutes and self.accelerator.num_processes > 1:
            elapsed = torch.tensor(self.state.elapsed_seconds, device=self.accelerator.device)
            self.state.elapsed_seconds = float(self.accelerator.reduce(elapsed, reduction="mean"))

    def _progress(self) -> float:
        """How far the run is, 0 -> 1: steps over max_steps, or time over the cap if that is further."""
        cfg, state = self.cfg, self.state
        p = state.step / max(cfg.max_steps, 1)
        return max(p, state.elapsed_seconds / (cfg.max_minutes * 60)) if cfg.max_minutes else p

    def _budget_spent(self) -> bool:
        cfg, state = self.cfg, self.state
        return state.step >= cfg.max_steps or bool(cfg.max_minutes and state.elapsed_seconds >= cfg.max_minutes * 60)

    def _log_training(self) -> None:
        values = {f"train/{k}": v for k, v in self.means.pop().items()}
        values["train/lr"] = self.current_lr
        values["train/samples_seen"] = self.state.samples_seen
        self.metrics.log(values, self.state.step)
        self.bar.set_postfix(loss=f"{values.get('train/loss', float('nan')):.4f}", lr=f"{self.current_lr:.2e}")

    # ------------------------------------------------------------------------------- evaluate, checkpoint, finish

    def trained_model(self) -> torch.nn.Module | None:
        """The model to evaluate, save and push: the weight average when there is one. Sharded, a
        collective call: the full model on process 0 and None on the others."""
        if self.cfg.shard == "fsdp":
            state = sharding.gather_full_state(self.model)
            return sharding.materialize(self._twin, state) if self.accelerator.is_main_process else None
        live = self.accelerator.unwrap_model(self.model)
        return self.ema.module(live) if self.ema is not None else live

    def evaluate(self) -> None:
        """The task's validation metrics (logged as `val/...`) and preview grid."""
        if self.val_loader is None:
            return
        accelerator = self.accelerator
        evaluated = self.model if self.ema is None else self.trained_model()
        evaluated.eval()
        values, preview = self.task.evaluate(evaluated, self.val_loader, accelerator, self.state.step)
        evaluated.train()
        self.last_eval = values
        self.metrics.log({f"val/{k}": v for k, v in values.items()}, self.state.step)
        if accelerator.is_main_process:
            summary = " ".join(f"{k}={v:.4g}" for k, v in values.items())
            accelerator.print(f"step {self.state.step} validation: {summary}")
            if preview is not None:
                save_grid(preview, self.output_dir / "samples" / f"step-{self.state.step:07d}.png", nrow=8)

    def checkpoint(self) -> None:
        """Every part's weights and optimizer, RNG and data position, the weight average and the
        trainer state, written to a temporary directory and renamed into place when complete."""
        accelerator, state = self.accelerator, self.state
        tmp = ckpt.temp_dir(self.checkpoints, state.step)
        accelerator.save_state(str(tmp), safe_serialization=True)
        if self.cfg.shard == "fsdp":
            sharding.save_sharded(self.model, self.parts[MAIN_PART].optimizer, tmp)
        if self.ema is not None and accelerator.is_main_process:
            self.ema.save(tmp)
        accelerator.wait_for_everyone()
        push = self.hub.repo_id and self.hub.strategy == "every_save"
        model = self.trained_model() if push and self.cfg.shard == "fsdp" else None   # every process gathers
        if accelerator.is_main_process:
            final = ckpt.finalize(self.checkpoints, state.step, state, self.cfg.keep_checkpoints)
            accelerator.print(f"checkpoint {final}")
            if push:
                self._push(f"step {state.step}", model)
        accelerator.wait_for_everyone()

    def snapshot(self) -> None:
        """The trained model as it is after this step, saved atomically to `snapshot_dir` (before
        the step's checkpoint, so a run resumed from that checkpoint finds it)."""
        model = self.trained_model()   # every process takes part in a sharded gather
        if self.accelerator.is_main_process:
            model.save_pretrained(snapshot_dir(self.output_dir, self.state.step))
        self.accelerator.wait_for_everyone()

    def finish(self) -> dict[str, float]:
        """A last evaluation, the final model in `output_dir/final` (+ its metrics), the hub push."""
        self.evaluate()
        accelerator = self.accelerator
        model = None
        if self.cfg.shard == "fsdp":
            self._write_shard_report()
            model = self.trained_model()   # every process takes part in the gather
        if accelerator.is_main_process:
            final_dir = self.output_dir / "final"
            model = model if model is not None else self.trained_model()
            self.task.save_final(model, final_dir)
            (final_dir / "eval_metrics.json").write_text(
                json.dumps({"step": self.state.step, **self.last_eval}, indent=2) + "\n")
            accelerator.print(f"final model saved to {final_dir}")
            if self.hub.repo_id:
                self._push(f"final model (step {self.state.step})", model)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return self.last_eval

    def _push(self, message: str, model: torch.nn.Module | None = None) -> None:
        """Main process: save `model` (default: `trained_model()`) to a staging folder and push it."""
        with tempfile.TemporaryDirectory(dir=self.output_dir) as staging:
            self.task.save_final(model if model is not None else self.trained_model(), Path(staging))
            url = push_folder_to_hub(staging, self.hub.repo_id, private=self.hub.private, commit_message=message)
        logger.info("pushed %s to %s", message, url)


def run_training(task: TrainTask, cfg: TrainConfig, output_dir: str | Path, resume: str | None = None,
                 hub: HubConfig | None = None, run_config: dict | None = None) -> dict[str, float]:
    """Train `task` as `cfg` says; returns the last validation metrics."""
    return Trainer(task, cfg, output_dir, resume=resume, hub=hub, run_config=run_config).fit()


def train_from_command_line(config_cls: type, build_task: Callable[[Any], TrainTask], prog: str,
                            description: str, argv: list[str] | None = None) -> dict[str, float]:
    """The body of every `<stage>.train` command.

    `--config YAML` plus `key=value` overrides -> a typed `config_cls` (with `train`, `hub`,
    `output_dir` and `resume` fields); seeds, builds the task (bad settings end the command with
    a one-line error, not a traceback) and runs the trainer.
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=f"{description} Extra arguments are key=value overrides of the YAML "
        "(dotted keys, e.g. train.lr=3e-4 train.max_steps=2000).")
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
    metrics = run_training(task, cfg.train, cfg.output_dir, resume=cfg.resume, hub=cfg.hub, run_config=to_dict(cfg))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _end_launched_process()
    return metrics


def _end_launched_process() -> None:
    """End a finished process of a multi-process launch without the interpreter's teardown.

    Everything is saved and the process group is destroyed by now, but torch's distributed C++
    state (gloo's worker threads, the work and sharded tensors they hold) can still abort the
    process while the interpreter tears it down, and the launcher then reports a finished run as
    failed. Streams and log handlers are flushed first."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
