"""The whole recipe in one command: tokenizer, prior, pipeline, class grid, metrics.

    imagegen-main                                    # or: python -m commands.main_job
    imagegen-main --recipe long                      # the long recipe pair, in runs/long
    imagegen-main --output-dir runs/main --launch-args "--multi_gpu --num_processes 8"

Stages, each in `--output-dir` (default `runs/<recipe>`):

1. `tokenizer/`: `stage1_tokenizer.train` with the recipe `configs/tokenizer/fashion_mnist_vq.yaml`
   (`--recipe long`: `fashion_mnist_vq_long.yaml`)
2. `prior/`: `stage2_prior.train` with the recipe `configs/prior/fashion_mnist.yaml` (`--recipe long`:
   `fashion_mnist_long.yaml`) on the stage 1 tokenizer
   (its token dataset is cached in `token_cache/`)
3. `pipeline/`: the two assembled into a pipeline directory (manifest, model card, sample grid)
4. `class_grid.png`: one row per class (10 x 10 by default)
5. `metrics.json`: the training runs' final validation metrics and the pipeline evaluation

Training stages run as `accelerate launch` subprocesses (`--launch-args`, default one
process). The recipes ship with the package (`imagegen_recipes`, the repository's `configs/`).
A stage is reused only when its configuration, resolved here as the training command will
resolve it, matches the `run_config.json` of its earlier run (and, for the prior, when the
tokenizer's weights are the ones it was trained on): a complete stage is skipped, an
interrupted one resumes from its last checkpoint (`resume=latest`). When they differ the job
stops and names the changed keys (the prior recipe's `sampling:` defaults are not compared:
they are applied when the pipeline is assembled); `--retrain-changed` moves the stale stage
and every stage above it into `replaced/` and trains again. The pipeline, the class grid and the evaluation
are redone when the components or the settings they were made from changed (records beside
them: `pipeline_inputs.json`, `class_grid.json`, `evaluation_settings.json`).
`--tokenizer-override` / `--prior-override` take `key=value` overrides of the recipes
(repeatable), e.g. `model.codebook_size=512` or `data.dataset=path/to/images`. A stage's budget
is its recipe's step count (`--tokenizer-steps` / `--prior-steps` change it), so the same command
and seed train the same models on any machine; `--tokenizer-minutes` / `--prior-minutes` add an
optional wall-clock cap.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from trainkit.checkpoint import find_checkpoint
from trainkit.config import ConfigError, console_script, load_config, to_dict
from trainkit.files import CheckpointError, atomic_write_text

from . import reuse
from .recipes import recipe_path

# `--recipe` names: the (tokenizer, prior) recipe pair under `configs/`.
RECIPES = {"main": ("tokenizer/fashion_mnist_vq.yaml", "prior/fashion_mnist.yaml"),
           "long": ("tokenizer/fashion_mnist_vq_long.yaml", "prior/fashion_mnist_long.yaml")}
DEFAULT_TOKENIZER_CONFIG, DEFAULT_PRIOR_CONFIG = (recipe_path(name) for name in RECIPES["main"])
# One process using every core: `accelerate launch` alone gives a CPU process a single thread.
DEFAULT_LAUNCH_ARGS = (f"--num_processes 1 --num_machines 1 --num_cpu_threads_per_process {os.cpu_count() or 1} "
                       "--mixed_precision no --dynamo_backend no")
RESERVED_KEYS = ("output_dir", "tokenizer", "token_cache_dir")   # set by the job from --output-dir
# What a pipeline's samples depend on: its manifest and components (not its card or evaluation report).
PIPELINE_CONTENT = ("pipeline.json", "tokenizer", "prior")


# The prior recipe's sampling defaults do not change its weights: they are applied when the
# pipeline is assembled, so a change re-assembles the pipeline instead of retraining the prior.
PRIOR_ASSEMBLY_KEYS = ("sampling",)
# Set by the tokenizer's training task from the data (`data.*` is compared instead).
TOKENIZER_DERIVED_KEYS = ("model.in_channels", "model.image_size")
TOKENIZER_WEIGHTS_KEY = "tokenizer weights (sha256)"


class StageFailed(RuntimeError):
    """A training stage's process ended with an error."""


class StageChanged(RuntimeError):
    """A stage's earlier run in the output directory was trained with other settings."""


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


def stage_arguments(run_dir: Path, overrides: list[str]) -> list[str]:
    """The `key=value` arguments of a stage's training command."""
    return [f"output_dir={run_dir}", "resume=latest", *overrides]


def run_stage(name: str, module: str, config: Path, run_dir: Path, overrides: list[str], launch_args: str) -> bool:
    """Train one stage unless it is complete; returns True if it ran."""
    if stage_complete(run_dir):
        print(f"[main] {name}: {run_dir / 'final'} is complete, skipping", flush=True)
        return False
    resume_from = find_checkpoint(run_dir, "latest") if run_dir.is_dir() else None
    if resume_from is not None:
        print(f"[main] {name}: resuming from {resume_from}", flush=True)
    cmd = launch_command(module, config, stage_arguments(run_dir, overrides), launch_args)
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


def has_run(run_dir: Path) -> bool:
    """An earlier run of a stage left something to reuse or resume in `run_dir`."""
    return run_dir.is_dir() and ((run_dir / "final").exists() or (run_dir / reuse.RUN_CONFIG_NAME).exists()
                                 or find_checkpoint(run_dir, "latest") is not None)


def resolve_stage_config(config_cls: type, recipe: Path, overrides: list[str]) -> dict:
    """The stage's configuration as its training command resolves it (`load_config` + `to_dict`)."""
    return to_dict(load_config(config_cls, recipe, overrides))


def stage_changed_message(name: str, run_dir: Path, lines: list[str], out: Path) -> str:
    return (f"the {name} stage in {run_dir} was trained with other settings than this run asks for:\n  "
            + "\n  ".join(lines)
            + f"\nTo keep that run, pass another --output-dir (e.g. {out}-new). To replace it, rerun with "
              f"--retrain-changed: the stale {name} stage and every stage above it are moved to "
              f"{out / 'replaced'}/ and trained again")


def check_stage(name: str, run_dir: Path, config: dict, inputs: dict, ignore: tuple[str, ...], out: Path,
                replace: bool, above: list[Path], config_cls: type) -> None:
    """Raise `StageChanged` when the stage's earlier run differs from the one asked for (settings
    newer than the run count only away from their `config_cls` defaults); with `replace`, move it
    and the outputs `above` it aside instead."""
    lines = reuse.stage_changes(run_dir, config, inputs, has_run(run_dir), ignore, to_dict(config_cls()))
    if not lines:
        return
    if not replace:
        raise StageChanged(stage_changed_message(name, run_dir, lines, out))
    print(f"[main] {name}: trained with other settings ({'; '.join(lines)}): retraining", flush=True)
    move_aside(out, [run_dir, *above])


def move_aside(out: Path, paths: list[Path]) -> Path:
    """Move the existing `paths` into `out/replaced/<UTC time>/`; returns that directory."""
    target = out / "replaced" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    for path in paths:
        if path.exists():
            target.mkdir(parents=True, exist_ok=True)
            path.rename(target / path.name)
            print(f"[main] moved {path} to {target / path.name}", flush=True)
    return target


def _check_overrides(parser: argparse.ArgumentParser, flag: str, overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" not in item:
            parser.error(f"{flag} {item!r} is not of the form key=value")
        if key in RESERVED_KEYS:
            parser.error(f"{flag} {item!r}: {key} is set by the main job from --output-dir")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegen-main",
        description="Train the tokenizer and the prior, assemble the pipeline, draw a class grid and report "
                    "metrics. Defaults are the full Fashion-MNIST recipe (its step budgets: the same model on any machine).")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="main",
                        help="the recipe pair: main (the default, 2,250 + 4,000 steps) or long (8,000 + 6,000 "
                             "steps of a larger prior, about 4x the time)")
    parser.add_argument("--output-dir", default=None, help="where every stage writes (default runs/<recipe>)")
    parser.add_argument("--data", default=None,
                        help="data.dataset for both stages: fashion_mnist (the recipes' default), an image "
                             "folder, parquet/arrow files or a hub dataset id")
    parser.add_argument("--tokenizer-config", type=Path, default=None,
                        help="the tokenizer's recipe file (default: the --recipe pair's)")
    parser.add_argument("--prior-config", type=Path, default=None,
                        help="the prior's recipe file (default: the --recipe pair's)")
    parser.add_argument("--tokenizer-steps", type=int, default=None,
                        help="optimizer steps of the tokenizer (default: the recipe's train.max_steps); the "
                             "recipe's discriminator then starts and ramps at the same fractions of them")
    parser.add_argument("--prior-steps", type=int, default=None,
                        help="optimizer steps of the prior (default: the recipe's train.max_steps)")
    parser.add_argument("--tokenizer-minutes", type=float, default=None,
                        help="optional wall-clock cap of the tokenizer's training (default: none)")
    parser.add_argument("--prior-minutes", type=float, default=None,
                        help="optional wall-clock cap of the prior's training (default: none)")
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
    parser.add_argument("--retrain-changed", action="store_true",
                        help="when a stage in --output-dir was trained with other settings, move it and every "
                             "stage above it to OUTPUT_DIR/replaced/ and train again (default: stop and say what "
                             "changed)")
    return parser


@dataclass(frozen=True)
class JobPaths:
    """Where every stage of the job writes, under `--output-dir`."""

    out: Path
    tokenizer_run: Path
    prior_run: Path
    pipeline_dir: Path
    grid: Path
    grid_record: Path          # the settings the grid was drawn with
    pipeline_record: Path      # the component weights the pipeline was assembled from
    eval_record: Path          # the settings of the evaluation

    @classmethod
    def under(cls, out: Path) -> "JobPaths":
        return cls(out, out / "tokenizer", out / "prior", out / "pipeline", out / "class_grid.png",
                   out / "class_grid.json", out / "pipeline_inputs.json", out / "evaluation_settings.json")

    def derived(self) -> list[Path]:
        """What is made from the trained stages, and is replaced with them."""
        return [self.pipeline_dir, self.grid, self.grid_record, self.pipeline_record, self.eval_record]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_overrides(parser, "--tokenizer-override", args.tokenizer_override)
    _check_overrides(parser, "--prior-override", args.prior_override)
    for flag, value in [("--tokenizer-steps", args.tokenizer_steps), ("--prior-steps", args.prior_steps),
                        ("--tokenizer-minutes", args.tokenizer_minutes), ("--prior-minutes", args.prior_minutes)]:
        if value is not None and value <= 0:
            parser.error(f"{flag} must be positive, got {value}")
    tokenizer_recipe, prior_recipe = RECIPES[args.recipe]
    args.tokenizer_config = args.tokenizer_config or recipe_path(tokenizer_recipe)
    args.prior_config = args.prior_config or recipe_path(prior_recipe)
    args.output_dir = args.output_dir or f"runs/{args.recipe}"
    for config in (args.tokenizer_config, args.prior_config):
        if not config.is_file():
            parser.error(f"recipe {str(config)!r} not found; pass --tokenizer-config / --prior-config (the default "
                         "recipes come with the package: reinstall it if they are missing)")
    return args


def stage_overrides(args: argparse.Namespace, paths: JobPaths) -> tuple[list[str], list[str]]:
    """The `key=value` overrides of the tokenizer's and the prior's recipes."""
    common = [f"data.dataset={args.data}"] if args.data else []
    tokenizer = [*common, *_budget(args.tokenizer_steps, args.tokenizer_minutes),
                 *_scaled_discriminator(args.tokenizer_config, args.tokenizer_steps), *args.tokenizer_override]
    prior = [f"tokenizer={paths.tokenizer_run / 'final'}", f"token_cache_dir={paths.out / 'token_cache'}", *common,
             *_budget(args.prior_steps, args.prior_minutes), *args.prior_override]
    return tokenizer, prior


def _scaled_discriminator(recipe: Path, steps: int | None) -> list[str]:
    """With another step budget than the recipe's, its discriminator's start and ramp at the same
    fractions of the budget (as the long recipe's are 4x the main one's)."""
    from stage1_tokenizer.train import TokenizerTrainConfig

    if steps is None:
        return []
    cfg = load_config(TokenizerTrainConfig, recipe)
    if not cfg.adversarial.enabled:
        return []
    scale = steps / cfg.train.max_steps
    return [f"adversarial.start_step={round(cfg.adversarial.start_step * scale)}",
            f"adversarial.ramp_steps={round(cfg.adversarial.ramp_steps * scale)}"]


def _budget(steps: int | None, minutes: float | None) -> list[str]:
    """The overrides of a stage's step budget and optional wall-clock cap that its flags set."""
    return ([f"train.max_steps={steps}"] if steps is not None else []) + \
        ([f"train.max_minutes={minutes}"] if minutes is not None else [])


def train_stages(args: argparse.Namespace, paths: JobPaths) -> dict:
    """Train (or reuse, or resume) the tokenizer, then the prior on its codes; returns what the
    pipeline is assembled from: the sha256 of each stage's final weights (and of the prior's
    guide, if it has one) and the prior recipe's `sampling:` defaults."""
    from stage1_tokenizer.train import TokenizerTrainConfig
    from stage2_prior.model import GUIDE_FOLDER
    from stage2_prior.train import PriorTrainConfig, SamplingDefaults

    tokenizer_overrides, prior_overrides = stage_overrides(args, paths)
    tokenizer_run, prior_run = paths.tokenizer_run, paths.prior_run
    config = resolve_stage_config(TokenizerTrainConfig, args.tokenizer_config,
                                  stage_arguments(tokenizer_run, tokenizer_overrides))
    check_stage("tokenizer", tokenizer_run, config, {}, (*reuse.IGNORED_KEYS, *TOKENIZER_DERIVED_KEYS), paths.out,
                args.retrain_changed, [prior_run, *paths.derived()], TokenizerTrainConfig)
    run_stage("tokenizer", "stage1_tokenizer.train", args.tokenizer_config, tokenizer_run, tokenizer_overrides,
              args.launch_args)
    config = resolve_stage_config(PriorTrainConfig, args.prior_config, stage_arguments(prior_run, prior_overrides))
    tokenizer_weights = reuse.file_sha256(tokenizer_run / "final" / "model.safetensors")
    inputs = {TOKENIZER_WEIGHTS_KEY: tokenizer_weights}
    check_stage("prior", prior_run, config, inputs, (*reuse.IGNORED_KEYS, *RESERVED_KEYS, *PRIOR_ASSEMBLY_KEYS),
                paths.out, args.retrain_changed, paths.derived(), PriorTrainConfig)
    prior_run.mkdir(parents=True, exist_ok=True)
    reuse.write_json(prior_run / reuse.STAGE_INPUTS_NAME, inputs)
    run_stage("prior", "stage2_prior.train", args.prior_config, prior_run, prior_overrides, args.launch_args)
    sampling = SamplingDefaults(**config["sampling"]).options(config["conditional"],
                                                              config["model"]["class_dropout_prob"] > 0)
    guide = prior_run / "final" / GUIDE_FOLDER / "model.safetensors"
    return {"tokenizer": tokenizer_weights, "prior": reuse.file_sha256(prior_run / "final" / "model.safetensors"),
            "guide": reuse.file_sha256(guide) if guide.is_file() else None, "sampling": asdict(sampling)}


def assemble(paths: JobPaths, components: dict):
    """The pipeline directory with the prior recipe's sampling defaults, rebuilt when a component
    (`{name: weights sha256}`) or those defaults changed; returns the pipeline when it was
    (re)built (else None) and the fingerprint of what its samples depend on."""
    from pipelines.card import EVAL_REPORT_NAME
    from pipelines.pipeline import MANIFEST_NAME, Pipeline
    from stage2_prior import SamplingOptions

    pipe = None
    if (paths.pipeline_dir / MANIFEST_NAME).is_file() and reuse.settings_match(paths.pipeline_record, components):
        print(f"[main] pipeline: {paths.pipeline_dir} is up to date, skipping", flush=True)
    else:
        (paths.pipeline_dir / EVAL_REPORT_NAME).unlink(missing_ok=True)    # it described the previous components
        pipe = Pipeline.from_components(paths.tokenizer_run / "final", paths.prior_run / "final")
        pipe.sampling_defaults = SamplingOptions(**components["sampling"])
        pipe.save_pretrained(paths.pipeline_dir)
        reuse.write_json(paths.pipeline_record, components)
        print(f"[main] pipeline: saved to {paths.pipeline_dir}", flush=True)
    return pipe, reuse.tree_fingerprint(paths.pipeline_dir, PIPELINE_CONTENT)


def draw_class_grid(args: argparse.Namespace, paths: JobPaths, pipe, pipeline_id: str) -> None:
    """`class_grid.png`, redrawn when the pipeline or the grid's settings changed."""
    from pipelines.pipeline import Pipeline

    settings = {"pipeline": pipeline_id, "per_class": args.per_class, "seed": args.seed,
                "guidance_scale": args.guidance_scale}
    if paths.grid.is_file() and reuse.settings_match(paths.grid_record, settings):
        print(f"[main] class grid: {paths.grid} is up to date, skipping", flush=True)
        return
    pipe = pipe or Pipeline.from_pretrained(paths.pipeline_dir)
    pipe.sample_grid(paths.grid, per_class=args.per_class, seed=args.seed, guidance_scale=args.guidance_scale,
                     progress=True)
    reuse.write_json(paths.grid_record, settings)
    caption = pipe.grid_caption(args.per_class, args.seed, args.guidance_scale)
    print(f"[main] class grid: {paths.grid} ({caption})", flush=True)


def evaluate(args: argparse.Namespace, paths: JobPaths, pipeline_id: str) -> dict | None:
    """The pipeline's evaluation report, redone when the pipeline or the evaluation's settings changed."""
    from pipelines.card import EVAL_REPORT_NAME, load_eval_report, write_model_card

    settings = {"pipeline": pipeline_id, "seed": args.seed, "num_samples": args.eval_samples,
                "metrics": args.eval_metrics, "dataset": args.data}
    report_path = paths.pipeline_dir / EVAL_REPORT_NAME
    if report_path.is_file() and reuse.settings_match(paths.eval_record, settings):
        print(f"[main] evaluation: {report_path} is up to date, skipping", flush=True)
        return load_eval_report(report_path)
    report = evaluate_pipeline(paths.pipeline_dir, paths.out, seed=args.seed, num_samples=args.eval_samples,
                               metrics=args.eval_metrics, dataset=args.data)
    if report is not None:
        write_model_card(paths.pipeline_dir, eval_report=report)
        reuse.write_json(paths.eval_record, settings)
    return report


def write_metrics(paths: JobPaths, report: dict | None) -> dict:
    """`metrics.json`: the training runs' final validation metrics and the pipeline's evaluation."""
    metrics = {
        "tokenizer": reuse.read_json(paths.tokenizer_run / "final" / "eval_metrics.json"),
        "prior": reuse.read_json(paths.prior_run / "final" / "eval_metrics.json"),
        "pipeline": report,
        "artefacts": {"tokenizer": str(paths.tokenizer_run / "final"), "prior": str(paths.prior_run / "final"),
                      "pipeline": str(paths.pipeline_dir), "class_grid": str(paths.grid)},
    }
    atomic_write_text(paths.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print("[main] metrics (training runs' final validation; pipeline evaluation):")
    print(json.dumps({k: metrics[k] for k in ("tokenizer", "prior", "pipeline")}, indent=2), flush=True)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    """Train both stages, assemble the pipeline, draw the class grid, evaluate; returns the metrics."""
    args = parse_args(argv)
    paths = JobPaths.under(Path(args.output_dir).resolve())
    paths.out.mkdir(parents=True, exist_ok=True)
    try:
        components = train_stages(args, paths)
    except (ConfigError, StageFailed, StageChanged) as err:
        sys.exit(f"imagegen-main: error: {err}")
    if args.num_threads:
        import torch

        torch.set_num_threads(args.num_threads)
    try:
        pipe, pipeline_id = assemble(paths, components)
        draw_class_grid(args, paths, pipe, pipeline_id)
    except (ValueError, FileNotFoundError, CheckpointError) as err:
        sys.exit(f"imagegen-main: error: {err}")
    return write_metrics(paths, evaluate(args, paths, pipeline_id))


cli = console_script(main)


if __name__ == "__main__":
    main()
