"""Training speed through the trainer against the bare step, for both stages' recipes.

    python benchmarks/trainer_overhead.py --stage tokenizer [--steps 60] [key=value ...]
    python benchmarks/trainer_overhead.py --stage prior

The bare step is forward + backward + gradient clipping + AdamW on one batch held in memory,
in the recipe's precision, compiled if the recipe compiles: what the hardware allows for this
model. The trainer step is the same recipe run by `trainkit.trainer.run_training` on the real
data (data loading, logging, the finite check and the schedule included; no evaluation or
checkpoint inside the timed steps), timed between consecutive calls of the task's
`training_step`. The tokenizer trains on Fashion-MNIST; the prior on random code grids of the
recipe's shape (1024 codes on 7x7, 10 classes), since its data are code grids either way.
Prints one JSON object: medians over the steps after `--warmup`, and their ratio, with the
machine kind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

from stage1_tokenizer.train import TokenizerTask, TokenizerTrainConfig  # noqa: E402
from stage2_prior.layout import TokenLayout  # noqa: E402
from stage2_prior.tokens import TokenDataset  # noqa: E402
from stage2_prior.train import PriorTask, PriorTrainConfig  # noqa: E402
from trainkit.config import load_config  # noqa: E402
from trainkit.devices import resolve_mixed_precision, use_channels_last  # noqa: E402
from trainkit.trainer import TrainTask, compile_for_training, run_training  # noqa: E402

from machine import machine_kind  # noqa: E402  (this folder)

RECIPES = {"tokenizer": "configs/tokenizer/fashion_mnist_vq.yaml", "prior": "configs/prior/fashion_mnist.yaml"}


def prior_task(cfg: PriorTrainConfig, num_grids: int = 8192) -> PriorTask:
    """The recipe's prior task on random code grids (no tokenizer or token cache needed)."""
    layout = TokenLayout(1024, (7, 7), 10)
    g = torch.Generator().manual_seed(0)
    cfg.guide_fraction = None   # the guide is a save of the weights, outside the timed steps
    codes = torch.randint(0, layout.codebook_size, (num_grids, *layout.grid), generator=g)
    labels = torch.randint(0, 10, (num_grids,), generator=g)
    return PriorTask.on_codes(cfg, layout, TokenDataset(codes, labels, layout.codebook_size))


def build_task(stage: str, overrides: list[str]) -> tuple[TrainTask, object]:
    if stage == "tokenizer":
        cfg = load_config(TokenizerTrainConfig, RECIPES[stage], overrides)
        return TokenizerTask(cfg), cfg
    cfg = load_config(PriorTrainConfig, RECIPES[stage], overrides)
    return prior_task(cfg), cfg


def bare_step_seconds(task: TrainTask, cfg, steps: int, warmup: int) -> float:
    """The recipe's step on one in-memory batch, without the trainer."""
    model = task.model.train()
    if cfg.train.channels_last:
        use_channels_last(model)
    step_model = compile_for_training(model) if cfg.train.compile else model
    opt = torch.optim.AdamW(task.param_groups(model, cfg.train.weight_decay), lr=cfg.train.lr,
                            betas=tuple(cfg.train.betas))
    loader = torch.utils.data.DataLoader(task.train_dataset, batch_size=cfg.train.batch_size, shuffle=True)
    batch = next(iter(loader))
    bf16 = resolve_mixed_precision(cfg.train.mixed_precision) == "bf16"
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = task.training_step(step_model, batch, i)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:])


def trainer_step_seconds(task: TrainTask, cfg, steps: int, warmup: int) -> float:
    """The same recipe through the trainer, timed between consecutive training steps."""
    stamps = []
    inner = task.training_step

    def timed(*args, **kwargs):
        stamps.append(time.perf_counter())
        return inner(*args, **kwargs)

    task.training_step = timed
    train = cfg.train
    train.max_steps, train.max_minutes, train.progress_bar = warmup + steps + 1, None, False
    train.eval_every = train.checkpoint_every = 10 ** 9
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):   # stdout is the JSON
        task.val_dataset = None
        run_training(task, train, out)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return statistics.median(gaps[warmup:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=sorted(RECIPES), required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [*args.overrides, f"train.num_threads={args.threads}"]

    torch.manual_seed(0)
    task, cfg = build_task(args.stage, overrides)
    bare = bare_step_seconds(task, cfg, args.steps, args.warmup)
    torch.manual_seed(0)
    task, cfg = build_task(args.stage, overrides)
    through_trainer = trainer_step_seconds(task, cfg, args.steps, args.warmup)
    print(json.dumps({
        "stage": args.stage, "recipe": RECIPES[args.stage], "machine_kind": machine_kind(), "threads": args.threads,
        "precision": resolve_mixed_precision(cfg.train.mixed_precision) or "no", "batch_size": cfg.train.batch_size,
        "bare_step_seconds": bare, "trainer_step_seconds": through_trainer,
        "trainer_over_bare": through_trainer / bare, "torch": torch.__version__,
    }, indent=2))


if __name__ == "__main__":
    main()
