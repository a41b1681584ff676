"""Inception FID on the Fashion-MNIST test split, beside the floor that real images reach at the same N.

    python benchmarks/fid_on_test_split.py [--pipeline runs/main/pipeline] [--num-images 1000] \\
        [--guidance-scale 2 --guidance-schedule constant --autoguidance-scale 0 --temperature 1 --top-k 0 \\
        --top-p 1] [--skip-samples]
    python benchmarks/fid_on_test_split.py --tokenizer runs/main/tokenizer/final    # floor and rFID only

Feature network: the standard FID Inception-v3 (2048-d pool features at 299x299). Sets of N
real images, with `--num-images` N:

- N <= 5,000: A and B are two disjoint random sets of N test images (seed 0). The floor is
  FID(B, A); the tokenizer's rFID is FID(reconstructions of B, A); the samples' FID is
  FID(N class-balanced samples, A).
- N = 10,000: A is the whole test split and B 10,000 training images (seed 0): the floor is
  train vs test, the rFID that of the reconstructed training images, the samples against A.

Every FID is printed with its ratio to the floor. The real sets' features are cached in
`--cache-dir` (keyed by the network's weights, the data and N). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from evalkit.evaluate import balanced_labels  # noqa: E402
from evalkit.features import InceptionFID  # noqa: E402
from evalkit.metrics import fid  # noqa: E402
from evalkit.reference import select_images  # noqa: E402
from stage2_prior.options import GUIDANCE_SCHEDULES  # noqa: E402
from machine import machine_kind  # noqa: E402  (this folder)
from pipelines import Pipeline  # noqa: E402
from stage1_tokenizer import ImageTokenizer  # noqa: E402
from trainkit.data import DataConfig  # noqa: E402

DATA = DataConfig(dataset="fashion_mnist", channels=1)


def real_sets(n: int) -> tuple[dict, dict]:
    """(A, B) as {"images": uint8 [N, 1, 28, 28], "describe": ...}, as the module docstring says."""
    test, _ = select_images(DATA, "test")
    if n == len(test):
        train, _ = select_images(DATA, "train", n, seed=0)
        return ({"images": test, "describe": f"the {n} test images"},
                {"images": train, "describe": f"{n} training images (seed 0)"})
    if not 1 <= 2 * n <= len(test):
        raise SystemExit(f"--num-images must be at most {len(test) // 2} (two disjoint test sets) or {len(test)}")
    order = torch.from_numpy(np.random.default_rng(0).permutation(len(test)))
    a, b = order[:n].sort().values, order[n:2 * n].sort().values
    return ({"images": test[a], "describe": f"{n} test images (seed 0)"},
            {"images": test[b], "describe": f"{n} other test images (seed 0)"})


def cached_features(network: InceptionFID, images: torch.Tensor, cache_dir: Path, name: str) -> torch.Tensor:
    key = hashlib.sha256(network.weights_hash.encode() + images.numpy().tobytes()).hexdigest()[:20]
    path = cache_dir / f"{network.name}-{name}-{len(images)}-{key}.safetensors"
    if path.is_file():
        return load_file(str(path))["features"]
    features = network.compute(images).features
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"features": features.contiguous()}, str(tmp))
    tmp.replace(path)
    return features


@torch.no_grad()
def reconstruct(tokenizer: ImageTokenizer, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """uint8 images -> the tokenizer's reconstructions as floats in [0, 1]."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].float() / 127.5 - 1
        out.append((tokenizer.decode(tokenizer.encode(batch)) + 1) / 2)
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="runs/main/pipeline")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer directory: floor and rFID only")
    parser.add_argument("--num-images", type=int, default=1000)
    parser.add_argument("--guidance-scale", type=float, default=None, help="default: the pipeline's")
    parser.add_argument("--guidance-schedule", choices=GUIDANCE_SCHEDULES, default=None,
                        help="default: the pipeline's")
    parser.add_argument("--autoguidance-scale", type=float, default=None, help="default: the pipeline's")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-samples", action="store_true", help="floor and rFID only")
    parser.add_argument("--cache-dir", default="runs/fid_cache")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    network = InceptionFID()
    n, cache = args.num_images, Path(args.cache_dir)
    set_a, set_b = real_sets(n)
    report: dict = {"benchmark": "fid_on_test_split", "machine_kind": machine_kind(),
                    "pipeline": None if args.tokenizer else args.pipeline,
                    "feature_network": network.fingerprint, "num_images": n,
                    "reference_A": set_a["describe"], "floor_set_B": set_b["describe"], "fid": {}}
    start = time.perf_counter()
    feats_a = cached_features(network, set_a["images"], cache, "A")
    feats_b = cached_features(network, set_b["images"], cache, "B")
    floor = fid(feats_b, feats_a)
    report["fid"]["floor_B_vs_A"] = {"value": round(floor, 3), "x_floor": 1.0}
    print(f"floor {floor:.2f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    pipe = None if args.tokenizer else Pipeline.from_pretrained(args.pipeline)
    tokenizer = ImageTokenizer.from_pretrained(args.tokenizer).eval() if args.tokenizer else pipe.tokenizer.eval()
    report["tokenizer"] = args.tokenizer or f"{args.pipeline}/tokenizer"
    start = time.perf_counter()
    recon = reconstruct(tokenizer, set_b["images"], args.batch_size)
    rfid = fid(network.compute(recon).features, feats_a)
    report["fid"]["tokenizer_reconstructions_of_B"] = {"value": round(rfid, 3), "x_floor": round(rfid / floor, 3)}
    print(f"rFID {rfid:.2f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    if pipe is not None and not args.skip_samples:
        start = time.perf_counter()
        labels = balanced_labels(n, pipe.prior.layout.num_classes)
        options = pipe.sampling_options(labels, None, guidance_scale=args.guidance_scale, temperature=args.temperature,
                                        top_k=args.top_k, top_p=args.top_p, seed=0, batch_size=args.batch_size,
                                        guidance_schedule=args.guidance_schedule,
                                        autoguidance_scale=args.autoguidance_scale)
        samples = pipe.generate(num_images=n, class_labels=labels, options=options, output_type="pt", progress=False)
        value = fid(network.compute(samples).features, feats_a)
        report["sampling"] = {"guidance_scale": options.guidance_scale, "guidance_schedule": options.guidance_schedule,
                              "autoguidance_scale": options.autoguidance_scale, "temperature": options.temperature,
                              "top_k": options.top_k, "top_p": options.top_p, "seed": 0,
                              "class_labels": "balanced" if labels else None}
        report["fid"]["samples"] = {"value": round(value, 3), "x_floor": round(value / floor, 3)}
        print(f"samples FID {value:.2f} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
