"""End-to-end speed of `Pipeline.generate`: prior sampling with the KV cache plus decoding.

    python benchmarks/pipeline_speed.py [--pipeline runs/main/pipeline] [--num-images 64]

Class-balanced images with the pipeline's default guidance (and, for comparison, without),
`output_type="pt"`, one batch; images/s as the median of `--repeats` timed runs after a
warm-up, at 1 and 2 torch threads. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

from machine import machine_kind  # noqa: E402  (this folder)
from pipelines import Pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="runs/main/pipeline")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    pipe = Pipeline.from_pretrained(args.pipeline)
    labels = [i % pipe.num_classes for i in range(args.num_images)] if pipe.conditional else None
    scales = {"guided": pipe.default_guidance_scale, "unguided": 1.0} if pipe.conditional else {"unguided": 1.0}
    result = {"pipeline": args.pipeline, "machine_kind": machine_kind(), "num_images": args.num_images,
              "torch": torch.__version__, "runs": {}}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, scale in scales.items():
            def run(seed: int) -> float:
                start = time.perf_counter()
                pipe.generate(num_images=args.num_images, class_labels=labels, guidance_scale=scale, seed=seed,
                              output_type="pt", progress=False)
                return time.perf_counter() - start

            run(0)
            seconds = statistics.median(run(i + 1) for i in range(args.repeats))
            result["runs"][f"{name}, {threads} thread(s)"] = {
                "guidance_scale": scale, "seconds": seconds, "images_per_second": args.num_images / seconds}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
