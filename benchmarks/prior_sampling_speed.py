"""Prior sampling speed: `sample_codes` against `transformers`' `generate` (tokens only, its own
KV cache) and an uncached loop, for class-conditional images with and without guidance, and
against the matrix-multiply limit of this CPU.

    python benchmarks/prior_sampling_speed.py [--prior runs/prior/final] [--large-grid]

Without `--prior`, a randomly initialised prior of the prior recipe's architecture
(`configs/prior/fashion_mnist.yaml`, 1024 codes on a 7x7 grid, 10 classes) is timed.
`generate` samples with `do_sample=True` from a plain `GenerationConfig` (no stored defaults),
a logits processor restricting it to image-code ids, and for guidance its own CFG processor
(`guidance_scale` + `negative_prompt_ids` = the null class), i.e. on the doubled batch.

The limit: a token costs 2 x (transformer parameters + the image-code rows of the head)
multiply-adds per batch row (twice the rows with guidance); divided by the best fp32 matmul
rate measured in the same run at the same thread count, that is the time a sampler bound by
matrix products alone would take. `--large-grid` adds a 16x16 grid over 16,384 codes (a small
random prior): seconds and peak resident memory per image.

Prints one JSON object: images/s (median of `--repeats` runs after a warm-up, the methods
taking turns) at 1 and 2 torch threads, batch-1 latency, the rise of the peak resident memory
over the resident memory before each method, the ratios, and the machine kind.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import LogitsProcessor, LogitsProcessorList  # noqa: E402

from machine import bf16_units, machine_kind, matmul_peak_gflops  # noqa: E402
from transformers import GenerationConfig  # noqa: E402

from stage2_prior.layout import TokenLayout  # noqa: E402
from stage2_prior.model import ImagePrior, PriorConfig  # noqa: E402
from stage2_prior.sampling import sample_codes  # noqa: E402
from stage2_prior.train import PriorTrainConfig  # noqa: E402
from trainkit.config import load_config  # noqa: E402


class CodesOnly(LogitsProcessor):
    """Give every id that is not an image code a score of -inf."""

    def __init__(self, codebook_size: int, vocab_size: int):
        self.mask = torch.arange(vocab_size) >= codebook_size

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return scores.masked_fill(self.mask.to(scores.device), float("-inf"))


def rss_mb(field: str) -> float:
    """`VmRSS` / `VmHWM` of this process in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Return freed heap to the OS, then reset the kernel's peak-RSS counter (Linux >= 4.0).

    False if the counter cannot be reset.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)    # else memory freed by an earlier method hides this one's peak
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_measured(fn) -> tuple[float, float | None]:
    """Seconds of one call, and its peak RSS rise (MB) over the resident memory before it."""
    resettable = reset_peak_rss()
    before = rss_mb("VmRSS")
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    return seconds, (rss_mb("VmHWM") - before if resettable else None)


def time_interleaved(fns: dict, repeats: dict[str, int]) -> tuple[dict, dict]:
    """Warm up, then run the methods in turn `repeats` times (so load spikes hit them alike).

    Returns the median seconds and the largest peak RSS rise (MB) of each method.
    """
    for name, fn in fns.items():
        if repeats[name] > 1:
            fn()
    times = {name: [] for name in fns}
    peaks = {name: [] for name in fns}
    for r in range(max(repeats.values())):
        for name, fn in fns.items():
            if r < repeats[name]:
                seconds, peak = run_measured(fn)
                times[name].append(seconds)
                peaks[name].append(peak)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return medians, {name: None if None in p else max(p) for name, p in peaks.items()}


def generate_codes(prior: ImagePrior, num_images: int, labels: torch.Tensor | None, guidance_scale: float,
                   do_sample: bool = True, seed: int = 0) -> torch.Tensor:
    """Code grids from `prior.lm.generate` with its cache; guidance through generate's own CFG processor."""
    layout = prior.layout
    start = layout.condition_ids(labels, num_images)[:, None]
    kwargs = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
    if guidance_scale != 1.0:
        null = torch.full_like(start, layout.null_id)
        kwargs.update(guidance_scale=guidance_scale, negative_prompt_ids=null,
                      negative_prompt_attention_mask=torch.ones_like(null))
    torch.manual_seed(seed)
    plain = GenerationConfig(bos_token_id=layout.bos_id, eos_token_id=layout.bos_id, pad_token_id=layout.bos_id)
    out = prior.lm.generate(
        start, generation_config=plain, attention_mask=torch.ones_like(start), use_cache=True,
        max_new_tokens=layout.num_image_tokens,
        logits_processor=LogitsProcessorList([CodesOnly(layout.codebook_size, layout.vocab_size)]), **kwargs)
    return layout.to_codes(out)


def flops_per_token(prior: ImagePrior) -> float:
    """Multiply-add FLOPs of one token of one batch row: the transformer's matrices and the head's
    image-code rows (attention over at most h*w + 1 positions is small beside them)."""
    lm = prior.lm
    embedding = lm.get_input_embeddings().weight.numel()
    head = lm.get_output_embeddings().weight
    transformer = sum(p.numel() for p in lm.parameters()) - embedding - (0 if lm.config.tie_word_embeddings
                                                                         else head.numel())
    return 2.0 * (transformer + prior.layout.codebook_size * head.shape[1])


def recipe_prior(codebook_size: int, grid: tuple[int, int], num_classes: int, **model) -> ImagePrior:
    """A random prior of the prior recipe's architecture (`model` overrides its fields)."""
    cfg = load_config(PriorTrainConfig, "configs/prior/fashion_mnist.yaml")
    torch.manual_seed(0)
    config = PriorConfig(**{**cfg.model.__dict__, **model})
    return ImagePrior.from_config(config, TokenLayout(codebook_size, grid, num_classes)).eval()


def large_grid(num_images: int, repeats: int) -> dict:
    """Seconds and peak memory per image at a 16x16 grid over 16,384 codes (1 thread, unguided)."""
    prior = recipe_prior(16_384, (16, 16), 10, num_layers=4)
    labels = torch.arange(num_images) % 10
    torch.set_num_threads(1)
    seconds, peaks = time_interleaved(
        {"ours": lambda: sample_codes(prior, num_images, labels, guidance_scale=1.0, temperature=1.0, seed=0)},
        {"ours": repeats})
    T, K = prior.layout.num_image_tokens, prior.layout.codebook_size
    return {"grid": [16, 16], "codebook_size": K, "num_layers": 4, "parameters": sum(p.numel() for p in prior.parameters()),
            "num_images": num_images, "threads": 1,
            "seconds_per_image": round(seconds["ours"] / num_images, 4),
            "peak_rss_rise_mb_per_image": None if peaks["ours"] is None else round(peaks["ours"] / num_images, 2),
            "upfront_noise_mb_per_image_it_avoids": round(T * K * 4 / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", default=None, help="a saved prior directory (default: random, recipe size)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cache-repeats", type=int, default=1, help="timed runs of the slow uncached loop")
    parser.add_argument("--large-grid", action="store_true", help="also time a 16x16 grid over 16,384 codes")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="the prior's weights and activations, for ours and generate alike")
    args = parser.parse_args()

    load_start = round(os.getloadavg()[0], 2)
    prior = ImagePrior.from_pretrained(args.prior).eval() if args.prior else recipe_prior(1024, (7, 7), 10)
    prior.to(getattr(torch, args.dtype))
    layout, n = prior.layout, args.num_images
    labels = torch.arange(n) % layout.num_classes if layout.conditional else None
    modes = {"unguided": 1.0, "guided": args.guidance_scale} if layout.conditional else {"unguided": 1.0}

    # The peer is only a fair one if it samples the same distribution: greedy decoding must agree.
    check = labels[:4] if labels is not None else None
    greedy_match = {
        mode: bool(torch.equal(generate_codes(prior, len(check), check, scale, do_sample=False),
                               sample_codes(prior, len(check), check, guidance_scale=scale, temperature=0.0)))
        for mode, scale in modes.items()
    } if check is not None else {}

    def methods(count: int, with_no_cache: bool = True) -> dict:
        chosen = labels[:count] if labels is not None else None
        found = {
            "ours": lambda scale: lambda: sample_codes(prior, count, chosen, guidance_scale=scale, temperature=1.0,
                                                       seed=0),
            "generate": lambda scale: lambda: generate_codes(prior, count, chosen, scale),
        }
        if with_no_cache:
            found["no_cache"] = lambda scale: lambda: sample_codes(prior, count, chosen, guidance_scale=scale,
                                                                   temperature=1.0, seed=0, use_cache=False)
        return found

    flops = flops_per_token(prior)
    report: dict = {
        "benchmark": "prior_sampling_speed",
        "machine_kind": machine_kind(),
        "prior": args.prior or "random, the prior recipe's architecture",
        "arch": type(prior.lm).__name__,
        "parameters": sum(p.numel() for p in prior.parameters()),
        "flops_per_token_row": flops,
        "layout": {"codebook_size": layout.codebook_size, "grid": list(layout.grid),
                   "num_classes": layout.num_classes},
        "dtype": args.dtype, "cpu_bf16_units": bf16_units(),
        "num_images": n, "guidance_scale": args.guidance_scale, "temperature": 1.0, "top_k": None,
        "repeats": {"ours": args.repeats, "generate": args.repeats, "no_cache": args.no_cache_repeats},
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "generate_greedy_matches_ours": greedy_match,
        "baseline_rss_mb": round(rss_mb("VmRSS"), 1),
        "images_per_s": {}, "peak_rss_rise_mb": {}, "ratios": {}, "batch1_ms_per_image": {},
        "matmul_peak_gflops_fp32": {}, "matmul_peak_gflops_bf16": {},
    }
    repeats = {"ours": args.repeats, "generate": args.repeats, "no_cache": args.no_cache_repeats}
    with torch.inference_mode():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            peak = max(matmul_peak_gflops(torch.float32).values())
            report["matmul_peak_gflops_fp32"][str(threads)] = round(peak, 1)
            report["matmul_peak_gflops_bf16"][str(threads)] = round(max(matmul_peak_gflops(torch.bfloat16).values()), 1)
            for mode, scale in modes.items():
                key = f"{mode}_threads{threads}"
                seconds, peaks = time_interleaved({name: make(scale) for name, make in methods(n).items()}, repeats)
                speeds = {name: round(n / s, 2) for name, s in seconds.items()}
                rows = n * (2 if scale != 1.0 else 1)
                limit_s = rows * layout.num_image_tokens * flops / (peak * 1e9)
                report["images_per_s"][key] = speeds
                if threads == 1:
                    report["peak_rss_rise_mb"][mode] = {k: None if v is None else round(v, 1) for k, v in peaks.items()}
                report["ratios"][key] = {"ours_over_generate": round(speeds["ours"] / speeds["generate"], 2),
                                         "ours_over_no_cache": round(speeds["ours"] / speeds["no_cache"], 2),
                                         "ours_share_of_matmul_limit": round(limit_s / seconds["ours"], 3),
                                         "generate_share_of_matmul_limit": round(limit_s / seconds["generate"], 3)}
                one, _ = time_interleaved({name: make(scale) for name, make in methods(1, False).items()},
                                          {"ours": args.repeats, "generate": args.repeats})
                report["batch1_ms_per_image"][key] = {name: round(1000 * s, 1) for name, s in one.items()}
        if args.large_grid:
            report["large_grid"] = large_grid(16, max(1, args.repeats - 1))
    report["load_average_1min"] = {"start": load_start, "end": round(os.getloadavg()[0], 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
