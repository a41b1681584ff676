"""The whole recipe in one command: tokenizer, prior, pipeline, class grid, metrics.

    imagegen-main                                    # or: python -m pipelines.main_job
    imagegen-main --output-dir runs/main --launch-args "--multi_gpu --num_processes 8"

Stages, each in `--output-dir` (default `runs/main`):

1. `tokenizer/`: `stage1_tokenizer.train` with `configs/tokenizer/fashion_mnist_vq.yaml`
2. `prior/`: `stage2_prior.train` with `configs/prior/fashion_mnist.yaml` on the stage 1 tokenizer
   (its token dataset is cached in `token_cache/`)
3. `pipeline/`: the two assembled into a pipeline directory (manifest, model card, sample grid)
4. `class_grid.png`: one row per class (10 x 10 by default)
5. `metrics.json`: the training runs' final validation metrics and the pipeline evaluation

Training stages run as `accelerate launch` subprocesses (`--launch-args`, default one
process). A stage whose `final/` is complete is skipped; an interrupted stage resumes from its
last checkpoint (`resume=latest`). Assembly and the grid are redone when a stage below them
has changed. `--tokenizer-override` / `--prior-override` take `key=value` overrides of the
recipes (repeatable), e.g. `train.max_steps=2000` or `data.dataset=path/to/images`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from trainkit.checkpoint import find_checkpoint
from trainkit.config import console_script
from trainkit.hub import CheckpointError, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOKENIZER_CONFIG = REPO / "configs" / "tokenizer" / "fashion_mnist_vq.yaml"
DEFAULT_PRIOR_CONFIG = REPO / "configs" / "prior" / "fashion_mnist.yaml"
# One process using every core: `accelerate launch` alone gives a CPU process a single thread.
DEFAULT_LAUNCH_ARGS = (f"--num_processes 1 --num_machines 1 --num_cpu_threads_per_process {os.cpu_count() or 1} "
                       "--mixed_precision no --dynamo_backend no")
RESERVED_KEYS = {"output_dir", "tokenizer", "token_cache_dir"}   # set by the job from --output-dir


class StageFailed(RuntimeError):
    """A training stage's process ended with an error."""


DEFAULT_EVAL_METRICS = "fid,is,pr,accuracy"


def evaluate_pipeline(pipeline_dir: Path, output_dir: Path, seed: int = 0, num_samples: int = 2000,
                      metrics: str = DEFAULT_EVAL_METRICS, dataset: str | None = None) -> dict | None:
    """The pipeline's evaluation report (`evalkit`): class-balanced samples measured with the
    Fashion-MNIST classifier against 10,000 training images, every figure with its feature
    network, reference and N. None when `num_samples` is 0 or the data is not Fashion-MNIST
    (the default feature network only knows Fashion-MNIST; use `imagegen-evaluate` with
    `--feature-network` for other data)."""
    if num_samples <= 0:
        return None
    if (dataset or "fashion_mnist") != "fashion_mnist":
        print(f"[main] evaluation: skipped for data {dataset!r}; the default feature network is the "
              "Fashion-MNIST classifier (run imagegen-evaluate pipeline ... --feature-network)", flush=True)
        return None
    from evalkit.evaluate import evaluate_pipeline as evaluate

    print(f"[main] evaluation: {num_samples} samples, metrics {metrics}", flush=True)
    results, settings = evaluate(str(pipeline_dir), num_samples=num_samples, seed=seed, metrics=metrics.split(","),
                                 cache_dir=output_dir / "eval_cache", progress=True)
    return {"metrics": results, "settings": settings}


def stage_complete(run_dir: Path) -> bool:
    """A training run that has written its final model and final metrics (the last file it writes)."""
    final = run_dir / "final"
    return (final / "config.json").is_file() and (final / "model.safetensors").is_file() \
        and (final / "eval_metrics.json").is_file()


def launch_command(module: str, config: Path, overrides: list[str], launch_args: str) -> list[str]:
    """`accelerate launch <launch_args> -m <module> --config <config> <overrides>` with this interpreter."""
    return [sys.executable, "-m", "accelerate.commands.launch", *shlex.split(launch_args), "-m", module,
            "--config", str(config), *overrides]


def stage_env() -> dict[str, str]:
    """The environment of the training processes. Without a GPU, `ACCELERATE_USE_CPU=1` lets
    `--multi_gpu --num_processes N` start N cooperating CPU processes (unless already set)."""
    import torch

    env = dict(os.environ)
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if not torch.cuda.is_available() and not has_mps:
        env.setdefault("ACCELERATE_USE_CPU", "1")
    return env


def run_stage(name: str, module: str, config: Path, run_dir: Path, overrides: list[str], launch_args: str) -> bool:
    """Train one stage unless it is complete; returns True if it ran."""
    if stage_complete(run_dir):
        print(f"[main] {name}: {run_dir / 'final'} is complete, skipping", flush=True)
        return False
    resume_from = find_checkpoint(run_dir, "latest") if run_dir.is_dir() else None
    if resume_from is not None:
        print(f"[main] {name}: resuming from {resume_from}", flush=True)
    cmd = launch_command(module, config, [f"output_dir={run_dir}", "resume=latest", *overrides], launch_args)
    print(f"[main] {name}: {shlex.join(cmd)}", flush=True)
    start = time.monotonic()
    result = subprocess.run(cmd, env=stage_env())
    if result.returncode != 0 or not stage_complete(run_dir):
        raise StageFailed(
            f"the {name} stage failed (exit code {result.returncode}); see its output above and "
            f"{run_dir / 'metrics.jsonl'}. Fix the cause and rerun the same command: finished stages are "
            "skipped and this one resumes from its last checkpoint"
        )
    print(f"[main] {name}: done in {time.monotonic() - start:.0f} s", flush=True)
    return True


def _check_overrides(parser: argparse.ArgumentParser, flag: str, overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" not in item:
            parser.error(f"{flag} {item!r} is not of the form key=value")
        if key in RESERVED_KEYS:
            parser.error(f"{flag} {item!r}: {key} is set by the main job from --output-dir")


def _newer(path: Path, *sources: Path) -> bool:
    """`path` exists and was written after every source."""
    return path.exists() and all(path.stat().st_mtime >= s.stat().st_mtime for s in sources)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegen-main",
        description="Train the tokenizer and the prior, assemble the pipeline, draw a class grid and report "
                    "metrics. Defaults are the full Fashion-MNIST recipe (10 + 15 minutes of training).")
    parser.add_argument("--output-dir", default="runs/main", help="where every stage writes (default runs/main)")
    parser.add_argument("--data", default=None,
                        help="data.dataset for both stages: fashion_mnist (the recipes' default), an image "
                             "folder, parquet/arrow files or a hub dataset id")
    parser.add_argument("--tokenizer-config", type=Path, default=DEFAULT_TOKENIZER_CONFIG)
    parser.add_argument("--prior-config", type=Path, default=DEFAULT_PRIOR_CONFIG)
    parser.add_argument("--tokenizer-minutes", type=float, default=None,
                        help="wall-clock budget of the tokenizer (default: the recipe's, 10)")
    parser.add_argument("--prior-minutes", type=float, default=None,
                        help="wall-clock budget of the prior (default: the recipe's, 15)")
    parser.add_argument("--tokenizer-override", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of the tokenizer recipe (repeatable)")
    parser.add_argument("--prior-override", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="overrides of the prior recipe (repeatable)")
    parser.add_argument("--launch-args", default=DEFAULT_LAUNCH_ARGS,
                        help=f"arguments of `accelerate launch` for both training stages (default "
                             f"{DEFAULT_LAUNCH_ARGS!r}; e.g. '--multi_gpu --num_processes 8')")
    parser.add_argument("--per-class", type=int, default=10, help="grid columns per class (default 10)")
    parser.add_argument("--guidance-scale", type=float, default=None,
                        help="guidance of the class grid (default: the pipeline's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the class grid and the evaluation")
    parser.add_argument("--eval-samples", type=int, default=2000,
                        help="samples for the pipeline evaluation (default 2000; 0 skips it)")
    parser.add_argument("--eval-metrics", default=DEFAULT_EVAL_METRICS,
                        help=f"metrics of imagegen-evaluate pipeline (default {DEFAULT_EVAL_METRICS})")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch threads for assembly and sampling in this process")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_overrides(parser, "--tokenizer-override", args.tokenizer_override)
    _check_overrides(parser, "--prior-override", args.prior_override)
    for config in (args.tokenizer_config, args.prior_config):
        if not config.is_file():
            parser.error(f"recipe {str(config)!r} not found; pass --tokenizer-config / --prior-config")
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_run, prior_run = out / "tokenizer", out / "prior"
    pipeline_dir, grid_path = out / "pipeline", out / "class_grid.png"

    common = [f"data.dataset={args.data}"] if args.data else []
    tokenizer_overrides = [*common, *([f"train.max_minutes={args.tokenizer_minutes}"]
                                      if args.tokenizer_minutes is not None else []), *args.tokenizer_override]
    prior_overrides = [f"tokenizer={tokenizer_run / 'final'}", f"token_cache_dir={out / 'token_cache'}", *common,
                       *([f"train.max_minutes={args.prior_minutes}"] if args.prior_minutes is not None else []),
                       *args.prior_override]
    try:
        run_stage("tokenizer", "stage1_tokenizer.train", args.tokenizer_config, tokenizer_run, tokenizer_overrides,
                  args.launch_args)
        run_stage("prior", "stage2_prior.train", args.prior_config, prior_run, prior_overrides, args.launch_args)
    except StageFailed as err:
        sys.exit(f"imagegen-main: error: {err}")

    import torch

    from .card import EVAL_REPORT_NAME, load_eval_report, write_model_card
    from .pipeline import MANIFEST_NAME, Pipeline

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    weights = [tokenizer_run / "final" / "model.safetensors", prior_run / "final" / "model.safetensors"]
    try:
        pipe = None
        if _newer(pipeline_dir / MANIFEST_NAME, *weights):
            print(f"[main] pipeline: {pipeline_dir} is up to date, skipping", flush=True)
        else:
            (pipeline_dir / EVAL_REPORT_NAME).unlink(missing_ok=True)    # it described the previous components
            pipe = Pipeline.from_components(tokenizer_run / "final", prior_run / "final")
            pipe.save_pretrained(pipeline_dir)
            print(f"[main] pipeline: saved to {pipeline_dir}", flush=True)
        if _newer(grid_path, pipeline_dir / MANIFEST_NAME):
            print(f"[main] class grid: {grid_path} is up to date, skipping", flush=True)
        else:
            pipe = pipe or Pipeline.from_pretrained(pipeline_dir)
            pipe.sample_grid(grid_path, per_class=args.per_class, seed=args.seed, guidance_scale=args.guidance_scale,
                             progress=True)
            caption = pipe.grid_caption(args.per_class, args.seed, args.guidance_scale)
            print(f"[main] class grid: {grid_path} ({caption})", flush=True)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        sys.exit(f"imagegen-main: error: {err}")

    if _newer(pipeline_dir / EVAL_REPORT_NAME, pipeline_dir / MANIFEST_NAME):
        print(f"[main] evaluation: {pipeline_dir / EVAL_REPORT_NAME} is up to date, skipping", flush=True)
        report = load_eval_report(pipeline_dir / EVAL_REPORT_NAME)
    else:
        report = evaluate_pipeline(pipeline_dir, out, seed=args.seed, num_samples=args.eval_samples,
                                   metrics=args.eval_metrics, dataset=args.data)
        if report is not None:
            write_model_card(pipeline_dir, eval_report=report)
    metrics = {
        "tokenizer": _read_json(tokenizer_run / "final" / "eval_metrics.json"),
        "prior": _read_json(prior_run / "final" / "eval_metrics.json"),
        "pipeline": report,
        "artefacts": {"tokenizer": str(tokenizer_run / "final"), "prior": str(prior_run / "final"),
                      "pipeline": str(pipeline_dir), "class_grid": str(grid_path)},
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print("[main] metrics (training runs' final validation; pipeline evaluation):")
    print(json.dumps({k: metrics[k] for k in ("tokenizer", "prior", "pipeline")}, indent=2), flush=True)
    return metrics


cli = console_script(main)


if __name__ == "__main__":
    main()
