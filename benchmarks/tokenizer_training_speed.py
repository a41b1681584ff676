"""Tokenizer training throughput: images/s of full optimizer steps, and the share of this CPU's
measured matrix-multiply peak that they reach, for a few ways of running the same step.

    python benchmarks/tokenizer_training_speed.py [--config configs/tokenizer/fashion_mnist_vq.yaml] [key=value ...]

A step is forward + loss + backward + AdamW update of the recipe's model on a batch of images
(Fashion-MNIST-sized random images unless the recipe says otherwise), under the recipe's
precision. FLOPs of one step are counted by `torch.utils.flop_counter.FlopCounterMode`
(convolutions and matrix products, forward and backward). The peak is the best of square
matrix products (n = 512 ... 2048) in fp32 at the same thread count, measured in the same run.

Variants: the trainer's setting (the recipe's channels_last, for-loop AdamW), channels-first,
AdamW with `foreach` and `fused`, and optionally (`--compile`) the model under `torch.compile`
with its compile time. Prints one JSON object with medians of `--repeats`, and the machine kind.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from machine import machine_kind, matmul_peak_gflops  # noqa: E402
from stage1_tokenizer import ImageTokenizer  # noqa: E402
from stage1_tokenizer.train import TokenizerTrainConfig  # noqa: E402
from trainkit.config import load_config  # noqa: E402
from trainkit.devices import resolve_mixed_precision, use_channels_last  # noqa: E402
from trainkit.trainer import compile_for_training  # noqa: E402


def build(cfg: TokenizerTrainConfig, channels_last: bool, optimizer: str, compile_model: bool):
    torch.manual_seed(0)
    model = ImageTokenizer(cfg.model).train()
    if channels_last:
        use_channels_last(model)
    kwargs = {"foreach": optimizer == "foreach", "fused": optimizer == "fused"} if optimizer != "default" else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, **kwargs)
    forward = compile_for_training(model) if compile_model else model
    return model, forward, opt


def images_batch(cfg: TokenizerTrainConfig, channels_last: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(cfg.train.batch_size, cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size,
                   generator=g) * 2 - 1
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def one_step(forward, opt, images: torch.Tensor, step: int, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = forward(images, step=step)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def step_flops(cfg: TokenizerTrainConfig) -> int:
    model, forward, opt = build(cfg, channels_last=False, optimizer="default", compile_model=False)
    images = images_batch(cfg, False)
    one_step(forward, opt, images, 0, False)   # the first step runs the codebook's k-means init
    counter = FlopCounterMode(display=False)
    with counter:
        out = forward(images, step=1)
        out.loss.backward()
    return counter.get_total_flops()


def time_variant(cfg: TokenizerTrainConfig, bf16: bool, steps: int, repeats: int, *, channels_last: bool,
                 optimizer: str, compile_model: bool) -> dict:
    model, forward, opt = build(cfg, channels_last, optimizer, compile_model)
    images = images_batch(cfg, channels_last)
    start = time.perf_counter()
    for step in range(3):   # k-means init, then (compiled) warm-up steps
        one_step(forward, opt, images, step, bf16)
    warmup = time.perf_counter() - start
    medians = []
    for r in range(repeats):
        times = []
        for i in range(steps):
            t = time.perf_counter()
            one_step(forward, opt, images, 3 + r * steps + i, bf16)
            times.append(time.perf_counter() - t)
        medians.append(statistics.median(times))
    result = {"step_seconds": statistics.median(medians)}
    if compile_model:
        result["warmup_seconds_incl_compile"] = warmup
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/tokenizer/fashion_mnist_vq.yaml")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time the model under torch.compile")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = parser.parse_args()

    cfg = load_config(TokenizerTrainConfig, args.config, args.overrides)
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)   # as the trainer runs
    bf16 = resolve_mixed_precision(cfg.train.mixed_precision) == "bf16"
    flops = step_flops(cfg)
    variants = {
        "trainer": dict(channels_last=cfg.train.channels_last, optimizer="default", compile_model=False),
        "channels_first": dict(channels_last=False, optimizer="default", compile_model=False),
        "adamw_foreach": dict(channels_last=cfg.train.channels_last, optimizer="foreach", compile_model=False),
        "adamw_fused": dict(channels_last=cfg.train.channels_last, optimizer="fused", compile_model=False),
    }
    if args.compile:
        variants["compiled"] = dict(channels_last=cfg.train.channels_last, optimizer="fused", compile_model=True)
    model = ImageTokenizer(cfg.model)
    report = {
        "machine_kind": machine_kind(),
        "torch": torch.__version__,
        "config": args.config, "overrides": args.overrides,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_size": cfg.train.batch_size,
        "precision": "bf16 autocast" if bf16 else "fp32", "deterministic": cfg.train.deterministic,
        "training_gflops_per_step": flops / 1e9,
        "threads": {},
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        peak = max(matmul_peak_gflops(torch.float32).values())
        row = {"matmul_peak_gflops_fp32": peak}
        for name, kwargs in variants.items():
            timing = time_variant(cfg, bf16, args.steps, args.repeats, **kwargs)
            s = timing["step_seconds"]
            row[name] = {**timing, "images_per_second": cfg.train.batch_size / s,
                         "achieved_gflops": flops / s / 1e9, "fraction_of_peak": flops / s / 1e9 / peak}
        report["threads"][str(threads)] = row
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
