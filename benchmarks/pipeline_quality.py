"""Sample quality of a pipeline (by default the main job's), with `evalkit`.

    python benchmarks/pipeline_quality.py [--pipeline runs/main/pipeline] [--num-samples 10000]
        [--inception-samples 1000]

Three evaluations of class-balanced samples (seed 0), each figure carrying its feature
network, reference set and N:

- guided (the pipeline's default guidance scale): FID, Inception Score, precision/recall and
  class accuracy with the Fashion-MNIST classifier against `--num-samples` training images,
  plus the prior's NLL in bits per token on the test split's token grids;
- unguided (scale 1): the same image metrics;
- the standard Inception-v3 FID of `--inception-samples` guided samples against as many
  training images (about 3-9 images/s on a CPU).

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

from evalkit.evaluate import evaluate_pipeline  # noqa: E402
from machine import machine_kind  # noqa: E402  (this folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="runs/main/pipeline")
    parser.add_argument("--num-samples", type=int, default=10_000)
    parser.add_argument("--inception-samples", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=None, help="reference statistics cache (default: evalkit's)")
    parser.add_argument("--token-cache-dir", default="runs/token_cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    common = dict(batch_size=args.batch_size, seed=0, cache_dir=args.cache_dir, progress=False)
    result = {"pipeline": args.pipeline, "machine_kind": machine_kind(), "threads": args.threads, "runs": {}}
    runs = {
        "guided": dict(num_samples=args.num_samples, reference_size=args.num_samples,
                       metrics=["fid", "is", "pr", "accuracy", "nll"], token_cache_dir=args.token_cache_dir),
        "unguided": dict(num_samples=args.num_samples, reference_size=args.num_samples, guidance_scale=1.0,
                         metrics=["fid", "is", "pr", "accuracy"]),
        "inception": dict(num_samples=args.inception_samples, reference_size=args.inception_samples,
                          metrics=["inception_fid"]),
    }
    for name, settings in runs.items():
        start = time.perf_counter()
        figures, used = evaluate_pipeline(args.pipeline, **settings, **common)
        result["runs"][name] = {"settings": used, "metrics": figures, "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
