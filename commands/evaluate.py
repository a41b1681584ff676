"""`imagegen-evaluate`: metrics of a tokenizer or of a whole pipeline, as a JSON report and a table.

    imagegen-evaluate tokenizer runs/tokenizer_vq/final --split test --metrics mse,psnr,usage,rfid,pr,accuracy
    imagegen-evaluate pipeline runs/pipeline --num-samples 10000 --metrics fid,is,pr,accuracy,nll
    imagegen-evaluate pipeline runs/pipeline --metrics bpd --nll-split test --bpd-fit-split holdout

The evaluation itself lives in `evalkit.evaluate`; this module parses the command line,
prints the table and writes the JSON report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from evalkit.evaluate import (
    PIPELINE_METRICS, TOKENIZER_METRICS, evaluate_pipeline, evaluate_tokenizer, format_table, parse_metrics,
)
from evalkit.reference import default_cache_dir
from stage2_prior import SamplingOptions
from stage2_prior.options import GUIDANCE_SCHEDULES
from trainkit.data import DataConfig
from trainkit.files import atomic_write_text


def _write_report(report: dict, output: str | None) -> None:
    print(format_table(report["metrics"]))
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output, json.dumps(report, indent=2) + "\n")
        print(f"wrote {output}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagegen-evaluate", description=__doc__.split("\n")[0].split(": ", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dataset", default="fashion_mnist", help="real data source (see data.dataset)")
        p.add_argument("--feature-network", default="fashion_mnist_classifier",
                       help="domain feature network: a registered name or package.module:attribute")
        p.add_argument("--cache-dir", default=None, help=f"reference statistics cache (default {default_cache_dir()})")
        p.add_argument("--batch-size", type=int, default=None)
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
        p.add_argument("--output", default=None, help="write the JSON report here")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    tok = sub.add_parser("tokenizer", help="reconstruction metrics of a saved tokenizer")
    tok.add_argument("model", help="a saved tokenizer directory or hub repo id")
    tok.add_argument("--split", default="test")
    tok.add_argument("--num-samples", type=int, default=None, help="images of the split (default: all)")
    tok.add_argument("--seed", type=int, default=0, help="seed of the random subset when --num-samples is set")
    tok.add_argument("--pr-reference-split", default=None,
                     help="pr against this split's images (e.g. train, as a pipeline's recall) instead of the "
                          "reconstructions' own originals")
    tok.add_argument("--pr-reference-size", type=int, default=10_000, help="images of --pr-reference-split")
    tok.add_argument("--metrics", default="mse,psnr,usage,rfid",
                     help=f"comma-separated: {','.join(TOKENIZER_METRICS)} "
                          "(for RGB images mse also reports chroma_error and mean_color_error)")
    common(tok)

    pipe = sub.add_parser("pipeline", help="sample quality of a saved pipeline (tokenizer + prior)")
    pipe.add_argument("model", help="a saved pipeline directory or hub repo id")
    pipe.add_argument("--num-samples", type=int, default=10_000)
    pipe.add_argument("--seed", type=int, default=0)
    pipe.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's")
    pipe.add_argument("--guidance-schedule", choices=GUIDANCE_SCHEDULES, default=None,
                      help="constant, or rising linearly from 1 to --guidance-scale (default: the pipeline's)")
    pipe.add_argument("--autoguidance-scale", type=float, default=None,
                      help="steer away from the prior's guide, a weaker prior saved with it "
                           "(0: off; default: the pipeline's)")
    pipe.add_argument("--temperature", type=float, default=None)
    pipe.add_argument("--top-k", type=int, default=None)
    pipe.add_argument("--top-p", type=float, default=None)
    pipe.add_argument("--metrics", default="fid,is,pr,accuracy", help=f"comma-separated: {','.join(PIPELINE_METRICS)}")
    pipe.add_argument("--reference-split", default="train")
    pipe.add_argument("--reference-size", type=int, default=10_000, help="real images in the reference set")
    pipe.add_argument("--nll-split", default="test", help="held-out split for the prior's NLL and for bpd")
    pipe.add_argument("--nll-samples", type=int, default=None,
                      help="held-out grids for the NLL, images for bpd (a random subset; default: all)")
    pipe.add_argument("--bpd-fit-split", default="holdout",
                      help="split the decoder's scale is fitted on for bpd, not the --nll-split one "
                           "('holdout': the part held out of train, data.val_fraction)")
    pipe.add_argument("--bpd-fit-samples", type=int, default=None,
                      help="images of --bpd-fit-split for the scale fit (a random subset; default: all)")
    pipe.add_argument("--token-cache-dir", default="runs/token_cache")
    pipe.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "auto"),
                      help="the prior's dtype (auto: bfloat16 where the device has bf16 matrix units)")
    common(pipe)
    return parser


def run(argv: list[str] | None = None) -> dict:
    """Parse the command line, evaluate, print the table, write the report; returns the report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    progress = not args.no_progress and sys.stderr.isatty()
    try:
        if args.command == "tokenizer":
            from stage1_tokenizer import ImageTokenizer

            metrics = parse_metrics(args.metrics, TOKENIZER_METRICS)
            tokenizer = ImageTokenizer.from_pretrained(args.model)
            data = DataConfig(dataset=args.dataset, channels=tokenizer.config.in_channels,
                              image_size=tokenizer.config.image_size)
            results = evaluate_tokenizer(
                tokenizer, data, split=args.split, num_samples=args.num_samples, batch_size=args.batch_size or 500,
                metrics=metrics, feature_network=args.feature_network, cache_dir=args.cache_dir, seed=args.seed,
                progress=progress, pr_reference_split=args.pr_reference_split,
                pr_reference_size=args.pr_reference_size)
            settings = {"split": args.split, "num_samples": args.num_samples, "seed": args.seed}
        else:
            metrics = parse_metrics(args.metrics, PIPELINE_METRICS)
            options = SamplingOptions(guidance_schedule=args.guidance_schedule, temperature=args.temperature,
                                      top_k=args.top_k, top_p=args.top_p,
                                      autoguidance_scale=args.autoguidance_scale)
            results, settings = evaluate_pipeline(
                args.model, num_samples=args.num_samples, batch_size=args.batch_size or 256, seed=args.seed,
                guidance_scale=args.guidance_scale, metrics=metrics, dataset=args.dataset,
                reference_split=args.reference_split, reference_size=args.reference_size,
                feature_network=args.feature_network, cache_dir=args.cache_dir, nll_split=args.nll_split,
                nll_samples=args.nll_samples, token_cache_dir=args.token_cache_dir, options=options,
                progress=progress, bpd_fit_split=args.bpd_fit_split, bpd_fit_samples=args.bpd_fit_samples,
                torch_dtype=args.dtype)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    report = {"command": args.command, "model": str(args.model), "dataset": args.dataset, "settings": settings,
              "metrics": results, "seconds": round(time.perf_counter() - start, 1)}
    _write_report(report, args.output)
    return report


def main(argv: list[str] | None = None) -> int:
    """The `imagegen-evaluate` entry point (exit status 0 on success)."""
    run(argv)
    return 0


if __name__ == "__main__":
    main()
