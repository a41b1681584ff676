"""Train a tokenizer recipe for its step budget, then measure it on the held-out test split.

    python benchmarks/tokenizer_quality.py --recipe vq          # configs/tokenizer/fashion_mnist_vq.yaml
    python benchmarks/tokenizer_quality.py --recipe gumbel --steps 2000 [--minutes 10]
    python benchmarks/tokenizer_quality.py --recipe shapes32_vq # configs/tokenizer/shapes32_vq.yaml (RGB)
    python benchmarks/tokenizer_quality.py --model runs/tokenizer_vq/final   # evaluate only
    python benchmarks/tokenizer_quality.py --model runs/tokenizer_shapes32_vq/final --dataset shapes32

Prints one JSON object: the machine kind, the recipe, the budget, steps done and wall-clock time, and per-image PSNR (on [0, 1],
averaged over the test split: 10,000 Fashion-MNIST or 1,500 shapes32 images), MSE, for RGB tokenizers the colour
errors (chroma_error, mean_color_error), codebook usage and perplexity,
the shipped classifier's accuracy on the reconstructions (and on the originals), beside the Fashion-MNIST targets
(VQ: PSNR >= 25 dB and usage >= 95%; Gumbel: PSNR >= 22 dB, usage >= 60%; shapes32 has none yet).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"vq": "fashion_mnist_vq.yaml", "vq_long": "fashion_mnist_vq_long.yaml", "gumbel": "fashion_mnist_gumbel.yaml",
           "shapes32_vq": "shapes32_vq.yaml"}
TARGETS = {"vq": {"psnr": 25.0, "codebook_usage": 0.95}, "gumbel": {"psnr": 22.0, "codebook_usage": 0.60}}  # Fashion-MNIST


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="vq")
    parser.add_argument("--dataset", default=None, help="data.dataset to evaluate on (default: the recipe's)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's max_steps)")
    parser.add_argument("--minutes", type=float, default=None, help="optional training wall-clock cap")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and evaluation")
    parser.add_argument("--output-dir", default=None, help="default: runs/bench_tokenizer_<recipe>")
    parser.add_argument("--model", default=None, help="skip training; evaluate this saved tokenizer")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for the recipe")
    args = parser.parse_args()

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    recipe = REPO / "configs" / "tokenizer" / RECIPES[args.recipe]
    import torch

    torch.set_num_threads(args.threads)
    from evalkit.evaluate import evaluate_tokenizer
    from stage1_tokenizer import ImageTokenizer
    from trainkit.config import read_recipe
    from trainkit.data import DataConfig

    from machine import machine_kind  # this folder

    report: dict = {"benchmark": "tokenizer_quality", "machine_kind": machine_kind(), "recipe": args.recipe,
                    "threads": args.threads}
    if args.model is None:
        out = Path(args.output_dir or REPO / "runs" / f"bench_tokenizer_{args.recipe}")
        cmd = [sys.executable, "-m", "stage1_tokenizer.train",
               "--config", str(recipe),
               f"output_dir={out}", f"train.num_threads={args.threads}", "train.progress_bar=false",
               *([f"train.max_steps={args.steps}"] if args.steps else []),
               *([f"train.max_minutes={args.minutes}"] if args.minutes else []), *args.overrides]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=REPO, stdout=sys.stderr)  # keep stdout for the JSON report
        report.update(train_steps_budget=args.steps, train_minutes_cap=args.minutes, train_wall_seconds=round(time.perf_counter() - start, 1))
        state = json.loads((out / "final" / "eval_metrics.json").read_text())
        report["train_steps"] = state["step"]
        model_dir = out / "final"
    else:
        model_dir = Path(args.model)
    tokenizer = ImageTokenizer.from_pretrained(model_dir)
    report["model"] = str(model_dir)
    report["parameters"] = sum(p.numel() for p in tokenizer.parameters())
    report["grid"] = list(tokenizer.grid_size)
    report["codebook_size"] = tokenizer.codebook_size
    dataset = args.dataset or read_recipe(recipe)["data"]["dataset"]
    report["dataset"] = dataset
    data = DataConfig(dataset=dataset, channels=tokenizer.config.in_channels)
    # one reconstruction pass gives every figure; the class accuracy needs the classifier's input size
    classifiable = tokenizer.config.in_channels == 1 and tokenizer.config.image_size == 28
    start = time.perf_counter()
    figures = evaluate_tokenizer(tokenizer, data, "test", metrics=["mse", "psnr", "usage"] + ["accuracy"] * classifiable)
    reported = ("mse", "psnr", "chroma_error", "mean_color_error", "codebook_usage", "perplexity")
    metrics = {k: figures[k]["value"] for k in reported if k in figures}  # colour errors: RGB tokenizers only
    metrics.update(num_images=float(figures["psnr"]["num_samples"]), seconds=time.perf_counter() - start)
    report["test"] = {k: round(v, 5) for k, v in metrics.items()}
    if classifiable:
        accuracy = figures["accuracy"]
        report["test"]["class_accuracy"] = round(accuracy["value"], 5)
        report["test"]["class_accuracy_of_originals"] = round(accuracy["reference_value"], 5)
        report["test"]["class_accuracy_per_class"] = {k: round(v, 4) for k, v in accuracy["per_class"].items()}
    target = TARGETS[tokenizer.config.quantizer] if dataset == "fashion_mnist" else None
    report["targets"] = target
    report["meets_targets"] = None if target is None else all(metrics[k] >= v for k, v in target.items())
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
