"""Prior sampling speed: `sample_codes` (KV cache) against `transformers`' `generate` (its own
cache) and an uncached loop, for class-conditional images with and without guidance.

    python benchmarks/prior_sampling_speed.py [--prior runs/prior/final]

Without `--prior`, a randomly initialised prior of the default recipe size (`PriorConfig()`,
1024 codes on a 7x7 grid, 10 classes) is timed. `generate` samples with `do_sample=True`, a
logits processor restricting it to image-code ids, and for guidance its own CFG processor
(`guidance_scale` + `negative_prompt_ids` = the null class). Prints one JSON object: images/s
(median of `--repeats` runs after a warm-up, the methods taking turns) at 1 and 2 torch threads,
the rise of the peak resident memory over the resident memory before each method, and speed ratios.
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

from stage2_prior.layout import TokenLayout  # noqa: E402
from stage2_prior.model import ImagePrior, PriorConfig  # noqa: E402
from stage2_prior.sampling import sample_codes  # noqa: E402


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
    out = prior.lm.generate(
        start, attention_mask=torch.ones_like(start), use_cache=True, max_new_tokens=layout.num_image_tokens,
        logits_processor=LogitsProcessorList([CodesOnly(layout.codebook_size, layout.vocab_size)]),
        pad_token_id=layout.bos_id, **kwargs)
    return layout.to_codes(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", default=None, help="a saved prior directory (default: random, recipe size)")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--guidance-scale", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cache-repeats", type=int, default=1, help="timed runs of the slow uncached loop")
    args = parser.parse_args()

    load_start = round(os.getloadavg()[0], 2)
    if args.prior:
        prior = ImagePrior.from_pretrained(args.prior).eval()
    else:
        torch.manual_seed(0)
        prior = ImagePrior.from_config(PriorConfig(), TokenLayout(codebook_size=1024, grid=(7, 7), num_classes=10))
        prior = prior.eval()
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

    methods = {
        "ours": lambda scale: lambda: sample_codes(prior, n, labels, guidance_scale=scale, temperature=1.0, seed=0),
        "generate": lambda scale: lambda: generate_codes(prior, n, labels, scale),
        "no_cache": lambda scale: lambda: sample_codes(prior, n, labels, guidance_scale=scale, temperature=1.0,
                                                       seed=0, use_cache=False),
    }
    report: dict = {
        "benchmark": "prior_sampling_speed",
        "prior": args.prior or "random PriorConfig() (llama, hidden 256, 6 layers, 8 heads)",
        "arch": type(prior.lm).__name__,
        "parameters": sum(p.numel() for p in prior.parameters()),
        "layout": {"codebook_size": layout.codebook_size, "grid": list(layout.grid),
                   "num_classes": layout.num_classes},
        "num_images": n, "guidance_scale": args.guidance_scale, "temperature": 1.0, "top_k": None,
        "repeats": {"ours": args.repeats, "generate": args.repeats, "no_cache": args.no_cache_repeats},
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "generate_greedy_matches_ours": greedy_match,
        "baseline_rss_mb": round(rss_mb("VmRSS"), 1),
        "images_per_s": {}, "peak_rss_rise_mb": {}, "ratios": {},
    }
    repeats = {"ours": args.repeats, "generate": args.repeats, "no_cache": args.no_cache_repeats}
    with torch.inference_mode():
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for mode, scale in modes.items():
                key = f"{mode}_threads{threads}"
                seconds, peaks = time_interleaved({name: make(scale) for name, make in methods.items()}, repeats)
                speeds = {name: round(n / s, 2) for name, s in seconds.items()}
                report["images_per_s"][key] = speeds
                if threads == 1:
                    report["peak_rss_rise_mb"][mode] = {k: None if v is None else round(v, 1) for k, v in peaks.items()}
                report["ratios"][key] = {"ours_over_generate": round(speeds["ours"] / speeds["generate"], 2),
                                         "ours_over_no_cache": round(speeds["ours"] / speeds["no_cache"], 2)}
    report["load_average_1min"] = {"start": load_start, "end": round(os.getloadavg()[0], 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
