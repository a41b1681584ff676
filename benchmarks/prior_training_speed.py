"""Prior training throughput: tokens/s of full optimizer steps, and the share of this CPU's
measured matrix-multiply peak that it reaches.

    python benchmarks/prior_training_speed.py [--config configs/prior/fashion_mnist.yaml] [key=value ...]

The model, batch size and precision come from the prior recipe (1024 codes on a 7x7 grid, 10
classes unless overridden). A step is forward + backward + the update of the recipe's optimizer
(`train.optimizer`) on random code grids, under bf16 autocast when the recipe says so. Training
FLOPs per token are counted as 6 x (non-embedding parameters) + 6 x layers x sequence length x
hidden size (attention scores and values, forward and backward). The peak is the best of square
matrix products (n = 512 ... 2048) in the same dtype and thread count. With `--compile` the
step's forward also runs under `torch.compile`, timed after its compile (reported apart, once;
torch's on-disk compile cache shortens a second run's). Prints one JSON object with medians of
`--repeats` and the machine kind.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

from stage2_prior.layout import TokenLayout  # noqa: E402
from stage2_prior.model import ImagePrior  # noqa: E402
from stage2_prior.train import PriorTrainConfig  # noqa: E402
from trainkit.config import load_config  # noqa: E402
from trainkit.devices import resolve_mixed_precision  # noqa: E402
from trainkit.optim import build_optimizer  # noqa: E402
from trainkit.trainer import compile_for_training  # noqa: E402

from machine import machine_kind, matmul_peak_gflops  # noqa: E402  (this folder)


def training_flops_per_token(prior: ImagePrior) -> float:
    cfg = prior.lm.config
    embedding = prior.lm.get_input_embeddings().weight.numel()
    non_embedding = sum(p.numel() for p in prior.parameters()) - embedding
    return 6 * non_embedding + 6 * cfg.num_hidden_layers * prior.layout.seq_len * cfg.hidden_size


def time_steps(prior: ImagePrior, batch_size: int, bf16: bool, steps: int, warmup: int, optimizer: str,
               forward=None) -> list[float]:
    """Seconds of each of `steps` optimizer steps after `warmup` ones; `forward` (default: the
    prior itself) computes the loss, e.g. a compiled prior."""
    layout = prior.layout
    forward = prior if forward is None else forward
    opt = build_optimizer(optimizer, [{"params": list(prior.parameters()), "lr": 1e-4}], prior.hidden_matrices(),
                          betas=(0.9, 0.99), mixed_precision="bf16" if bf16 else "no")
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, layout.codebook_size, (batch_size, *layout.grid), generator=g)
    labels = torch.randint(0, max(layout.num_classes, 1), (batch_size,), generator=g) if layout.conditional else None
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = forward(codes, labels, drop_class_prob=0.1, validate=False)   # as the trainer calls it
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/prior/fashion_mnist.yaml")
    parser.add_argument("--codebook-size", type=int, default=1024)
    parser.add_argument("--grid", type=int, nargs=2, default=[7, 7])
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = parser.parse_args()

    cfg = load_config(PriorTrainConfig, args.config, args.overrides)
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)   # as the trainer runs
    layout = TokenLayout(args.codebook_size, tuple(args.grid), args.num_classes if cfg.conditional else 0)
    torch.manual_seed(0)
    prior = ImagePrior.from_config(cfg.model, layout).train()
    bf16 = resolve_mixed_precision(cfg.train.mixed_precision) == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    flops_token = training_flops_per_token(prior)
    tokens_step = cfg.train.batch_size * layout.num_image_tokens
    result = {
        "machine_kind": machine_kind(),
        "model": {"arch": cfg.model.arch, "hidden_size": cfg.model.hidden_size, "num_layers": cfg.model.num_layers,
                  "parameters": sum(p.numel() for p in prior.parameters()),
                  "training_flops_per_token": flops_token},
        "batch_size": cfg.train.batch_size, "optimizer": cfg.train.optimizer, "tokens_per_step": tokens_step,
        "precision": "bf16 autocast" if bf16 else "fp32", "deterministic": cfg.train.deterministic,
        "torch": torch.__version__,
        "threads": {},
    }
    compiled = compile_for_training(prior) if args.compile else None

    def timing(peak: float, forward=None) -> dict:
        step_s = statistics.median(
            statistics.median(time_steps(prior, cfg.train.batch_size, bf16, args.steps, warmup=2,
                                         optimizer=cfg.train.optimizer, forward=forward))
            for _ in range(args.repeats)
        )
        achieved = tokens_step * flops_token / step_s / 1e9
        return {"step_seconds": step_s, "tokens_per_second": tokens_step / step_s, "achieved_gflops": achieved,
                "fraction_of_peak": achieved / peak}

    for threads in args.threads:
        torch.set_num_threads(threads)
        peak = max(matmul_peak_gflops(dtype).values())
        row = {**timing(peak), f"matmul_peak_gflops_{'bf16' if bf16 else 'fp32'}": peak}
        if compiled is not None:
            if "compile" not in result:   # compiled once, at the first thread count
                first = time_steps(prior, cfg.train.batch_size, bf16, 1, warmup=0, optimizer=cfg.train.optimizer,
                                   forward=compiled)[0]
                result["compile"] = {"first_step_seconds_incl_compile": first, "threads": threads}
            row["compiled"] = timing(peak, compiled)
        result["threads"][str(threads)] = row
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
