"""Tokenizer speed: encode + decode throughput of a trained model on the test set, and the
quantizer alone against a straightforward reference implementation at the same shapes.

    python benchmarks/tokenizer_speed.py --model runs/bench_tokenizer_vq/final

Prints one JSON object. Each figure is the median of `--repeats` timed runs after a warm-up,
with torch's thread count set explicitly (1 and 2 threads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from machine import machine_kind  # noqa: E402  (this folder)
from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig  # noqa: E402
from stage1_tokenizer.quantizers import VectorQuantizer  # noqa: E402
from trainkit.data import DataConfig, ImageData  # noqa: E402


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_quantize(z: torch.Tensor, codebook: torch.Tensor, beta: float):
    """The textbook VQ step: broadcast differences, argmin, gather, straight-through, losses."""
    B, D, h, w = z.shape
    flat = z.permute(0, 2, 3, 1).reshape(-1, D)
    dist = ((flat[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)
    codes = dist.argmin(1)
    e = codebook[codes]
    loss = F.mse_loss(e, flat.detach()) + beta * F.mse_loss(flat, e.detach())
    st = flat + (e - flat).detach()
    return st.reshape(B, h, w, D).permute(0, 3, 1, 2), codes.reshape(B, h, w), loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a trained tokenizer directory (or hub repo id)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tokenizer = ImageTokenizer.from_pretrained(args.model).eval()
    cfg = tokenizer.config
    test = ImageData(DataConfig(dataset="fashion_mnist", channels=cfg.in_channels),
                     downsample_factor=cfg.downsample_factor).split("test")
    images = test.get_batch(range(len(test)))[0]
    report: dict = {"benchmark": "tokenizer_speed", "machine_kind": machine_kind(), "model": args.model,
                    "num_images": len(images),
                    "batch_size": args.batch_size, "encode_decode": {}, "quantizer": {}}

    def encode_decode(autocast: bool):
        def run():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                for i in range(0, len(images), args.batch_size):
                    tokenizer.decode(tokenizer.encode(images[i:i + args.batch_size]))
        return run

    for threads in (1, 2):
        torch.set_num_threads(threads)
        for precision, autocast in (("fp32", False), ("bf16", True)):
            seconds = timed(encode_decode(autocast), max(1, args.repeats - 1))
            report["encode_decode"][f"{precision}_threads{threads}"] = {
                "images_per_s": round(len(images) / seconds, 1), "seconds": round(seconds, 3)}

    # The quantizer alone: a training step's forward + backward at the recipe's shapes.
    qcfg = ImageTokenizerConfig(**{**cfg.__dict__, "vq_ema": False, "vq_kmeans_init": False,
                                   "vq_restart_every": 0, "vq_codebook_dim": None, "vq_l2_normalize": False})
    quantizer = VectorQuantizer(qcfg).train()
    h, w = cfg.grid_size
    for batch in (128, 500):
        z = torch.randn(batch, cfg.latent_channels, h, w)

        def ours():
            zz = z.clone().requires_grad_()
            out = quantizer(zz)
            (out.quantized.sum() + out.loss).backward()

        def reference():
            zz = z.clone().requires_grad_()
            cb = quantizer.codebook.detach().clone().requires_grad_()
            quantized, _, loss = reference_quantize(zz, cb, qcfg.vq_beta)
            (quantized.sum() + loss).backward()

        with torch.no_grad():  # same codes as the reference
            same = torch.equal(quantizer.codes(z), reference_quantize(z, quantizer.codebook, 0.25)[1])
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t_ours, t_ref = timed(ours, args.repeats), timed(reference, args.repeats)
            report["quantizer"][f"batch{batch}_threads{threads}"] = {
                "vectors": batch * h * w, "codebook": list(quantizer.codebook.shape),
                "ours_ms": round(t_ours * 1e3, 2), "reference_ms": round(t_ref * 1e3, 2),
                "speedup": round(t_ref / t_ours, 2), "same_codes": same}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
