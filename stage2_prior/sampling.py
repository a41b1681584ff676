"""Sampling token grids from an `ImagePrior`: KV cache, temperature / top-k / top-p,
classifier-free guidance. One sampler serves training previews, the pipeline and benchmarks.

Randomness is drawn per image from a seed, with the Gumbel-max trick (`argmax(logits / T + g)`
is an exact sample of `softmax(logits / T)`). The uniform numbers come from a counter-based
generator (`uniform_noise`), one `[batch, codes]` draw per step on the model's device, so an
image depends on its seed only, not on the batch it was sampled in, cached and uncached
sampling see the same noise, and memory does not grow with the grid.

The options a call leaves unset come from the prior's stored defaults (`ImagePrior.sampling_defaults`,
its `generation_config.json`); `resolve_options` is the one place where they are merged.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import replace

import inspect

import torch
from tqdm.auto import tqdm

from .model import ImagePrior
from .options import GUIDANCE_SCHEDULES, SamplingOptions

__all__ = ["SamplingOptions", "filter_logits", "guidance_scales", "pick_tokens", "resolve_options", "sample_codes"]

# What a call samples with where neither it nor the stored defaults say otherwise.
BUILT_IN_DEFAULTS = SamplingOptions(guidance_scale=1.0, guidance_schedule="constant", temperature=1.0, top_k=0,
                                    top_p=1.0, autoguidance_scale=0.0)


def guidance_scales(guidance_scale: float, schedule: str, num_positions: int) -> list[float]:
    """The guidance scale at each raster position: `guidance_scale` everywhere ("constant"), or
    rising linearly from 1 at the first position to `guidance_scale` at the last ("linear")."""
    if schedule == "constant" or num_positions == 1:
        return [float(guidance_scale)] * num_positions
    if schedule == "linear":
        return [1.0 + (guidance_scale - 1.0) * t / (num_positions - 1) for t in range(num_positions)]
    raise ValueError(f"unknown guidance schedule {schedule!r}: use one of {list(GUIDANCE_SCHEDULES)}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
                  temperature: float = 1.0) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus of softmax(logits / T).

    The most likely token always survives.
    """
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits / max(temperature, 1e-8), dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs       # mass strictly before each token
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def pick_tokens(logits: torch.Tensor, temperature: float, uniform: torch.Tensor | None) -> torch.Tensor:
    """Greedy at temperature 0, else Gumbel-max with the given uniform noise `[B, V]`."""
    if temperature <= 0 or uniform is None:
        return logits.argmax(-1)
    eps = torch.finfo(uniform.dtype).eps
    gumbel = -torch.log(-torch.log(uniform.clamp(eps, 1 - eps)))
    return (logits / temperature + gumbel).argmax(-1)


def _int64(value: int) -> int:
    """An unsigned 64-bit constant as the signed int64 with the same bits."""
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = _int64(0x9E3779B97F4A7C15), _int64(0xBF58476D1CE4E5B9), _int64(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's `>>` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def uniform_noise(seeds: torch.Tensor, position: int, size: int) -> torch.Tensor:
    """Uniform numbers in (0, 1), `[len(seeds), size]` float32, for one position of each image.

    A counter-based generator (the splitmix64 finaliser of seed + counter): the value for
    (image seed, position, code) is fixed, computed on the seeds' device, with O(batch x codes)
    work and memory per step. So an image's noise depends on its seed alone, whatever batch it
    is drawn in and whether the sampler caches.
    """
    counters = torch.arange(size, device=seeds.device, dtype=torch.int64) + (position * size + 1)
    z = seeds[:, None] + counters * _GOLDEN
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    z = z ^ _shift_right(z, 31)
    return ((_shift_right(z, 11).double() + 0.5) * 2.0 ** -53).float()


@contextmanager
def _eval_mode(module: torch.nn.Module):
    """Put `module` in eval mode for the block, then restore its training flag."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def _image_seeds(num_images: int, seed: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """One seed per image: from `seed`, else from `generator`, else from torch's global generator."""
    if generator is None and seed is not None:
        generator = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, 2**62, (num_images,), generator=generator)


def _check_inputs(prior: ImagePrior, class_labels, guidance_scale: float, num_images: int) -> torch.Tensor | None:
    layout = prior.layout
    if isinstance(class_labels, torch.Tensor) and class_labels.ndim == 0:
        class_labels = int(class_labels)
    if class_labels is None:
        if guidance_scale != 1.0:
            raise ValueError("guidance needs class_labels and a class-conditional prior (it mixes class and "
                             "null-class predictions); use guidance_scale=1")
        return None
    if not layout.conditional:
        raise ValueError("this prior is unconditional: it takes no class labels (pass class_labels=None)")
    if isinstance(class_labels, (int, str)):
        class_labels = [class_labels] * num_images
    labels = torch.tensor([layout.class_index(c) for c in class_labels], dtype=torch.long)
    if len(labels) != num_images:
        raise ValueError(f"{len(labels)} class labels for {num_images} images: give one per image (or one for all)")
    layout.class_id(labels)  # range check with a clear message
    return labels


def _check_guide(prior: ImagePrior, autoguidance_scale: float) -> ImagePrior | None:
    """The guide that autoguidance at this scale runs: None at scale 0; an error when the prior has none."""
    if autoguidance_scale == 0:
        return None
    if prior.guide is None:
        raise ValueError(f"autoguidance_scale={autoguidance_scale} needs a prior saved with a guide (train it with "
                         "guide_fraction, see stage2_prior.train); this prior has none: use autoguidance_scale=0")
    return prior.guide


def _check_prefix(prior: ImagePrior, prefix: torch.Tensor | None, num_images: int) -> torch.Tensor:
    """The given codes as a CPU `LongTensor[N, n]` (n = 0 without a prefix)."""
    layout = prior.layout
    if prefix is None:
        return torch.empty(num_images, 0, dtype=torch.long)
    if not isinstance(prefix, torch.Tensor) or prefix.is_floating_point() or prefix.is_complex() \
            or prefix.dtype == torch.bool:
        got = getattr(prefix, "dtype", type(prefix).__name__)
        raise ValueError(f"prefix must be an integer tensor [N, n] of image codes, got {got}")
    if prefix.ndim != 2 or prefix.shape[0] != num_images or prefix.shape[1] > layout.num_image_tokens:
        raise ValueError(
            f"prefix must have shape [num_images={num_images}, n] with n <= {layout.num_image_tokens} "
            f"(h*w codes in raster order), got {tuple(prefix.shape)}"
        )
    if prefix.numel() and (int(prefix.min()) < 0 or int(prefix.max()) >= layout.codebook_size):
        raise ValueError(
            f"prefix codes must lie in [0, {layout.codebook_size}), got values in "
            f"[{int(prefix.min())}, {int(prefix.max())}]"
        )
    return prefix.detach().to("cpu", torch.long)


def resolve_options(prior: ImagePrior, class_labels=None, options: SamplingOptions | None = None,
                    defaults: SamplingOptions | None = None) -> SamplingOptions:
    """The options a call samples with: the fields `options` sets, else those of `defaults`
    (None: the prior's `sampling_defaults`), else the built-in ones (no guidance, temperature 1).

    A default guidance scale applies only when class labels are given; unconditional sampling
    is unguided unless `options` asks for guidance (which `sample_codes` then rejects). In the
    result `guidance_scale`, `guidance_schedule`, `autoguidance_scale`, `temperature`, `top_k` and
    `top_p` are set (`top_k=0` and `top_p=1.0` when off), so resolving it again gives it back
    whatever the defaults.
    """
    defaults = prior.sampling_defaults if defaults is None else defaults
    if class_labels is None:
        defaults = replace(defaults, guidance_scale=None)
    return BUILT_IN_DEFAULTS.merged(defaults).merged(options)


@torch.no_grad()
def sample_codes(
    prior: ImagePrior,
    num_images: int,
    class_labels: Sequence[int | str] | torch.Tensor | int | str | None = None,
    guidance_scale: float | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    use_cache: bool = True,
    progress: bool = False,
    prefix: torch.Tensor | None = None,
    options: SamplingOptions | None = None,
    guidance_schedule: str | None = None,
    autoguidance_scale: float | None = None,
) -> torch.Tensor:
    """Sample `num_images` code grids `LongTensor[N, h, w]`.

    `class_labels`: one per image (ids or names), one for all, or None (unconditional; a
    class-conditional prior then samples from its null class). `guidance_scale` s mixes the
    conditional and null-class logits as `u + s * (c - u)` (1 = plain conditional sampling);
    both rows run in one doubled batch; `guidance_schedule` "linear" ramps s from 1 at the first
    position to `guidance_scale` at the last (`guidance_scales`). `autoguidance_scale` a adds
    `a * (c - g)` with g the logits of the prior's guide (`ImagePrior.guide`) for the same
    condition, which runs beside the prior with its own cache (0: off). Only image-code ids are
    ever emitted.

    The sampling options (`guidance_scale`, `guidance_schedule`, `autoguidance_scale`,
    `temperature`, `top_k`, `top_p`, `seed`, `batch_size`) may come as keywords or as one
    `options` object; keywords that are not None win over `options`, and what both leave unset
    comes from the prior's `sampling_defaults` (see `resolve_options`). `top_k=0` / `top_p=1.0`
    switch a stored filter off.

    `prefix`: optional given codes `LongTensor[N, n]` (the first n positions in raster order,
    0 <= n <= h*w) that are kept verbatim; only positions n.. are sampled. With the KV cache
    the prefix is read in one forward pass. Position t always uses the same noise, so an
    image still depends only on its seed, index and prefix.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    overrides = (options or SamplingOptions()).merged(guidance_scale=guidance_scale, temperature=temperature,
                                                      top_k=top_k, top_p=top_p, seed=seed, batch_size=batch_size,
                                                      guidance_schedule=guidance_schedule,
                                                      autoguidance_scale=autoguidance_scale)
    chosen = resolve_options(prior, class_labels, overrides)
    guidance_scale, temperature = chosen.guidance_scale, chosen.temperature
    top_k, top_p = chosen.top_k or None, (chosen.top_p if chosen.top_p < 1.0 else None)
    seed, batch_size = chosen.seed, chosen.batch_size
    layout, lm = prior.layout, prior.lm
    labels = _check_inputs(prior, class_labels, guidance_scale, num_images)
    prefix = _check_prefix(prior, prefix, num_images)
    n = prefix.shape[1]
    guided = labels is not None and guidance_scale != 1.0
    seeds = _image_seeds(num_images, seed, generator)
    device = next(lm.parameters()).device
    T = layout.num_image_tokens
    scales = guidance_scales(guidance_scale, chosen.guidance_schedule, T) if guided else None
    guide = _check_guide(prior, chosen.autoguidance_scale)
    batch_size = batch_size or num_images
    out = torch.empty(num_images, T, dtype=torch.long)
    bar = tqdm(total=num_images * (T - n), disable=not progress, desc="sampling", unit="tok")
    with _eval_mode(lm):                               # no dropout while sampling (e.g. training previews)
        for start in range(0, num_images, batch_size):
            stop = min(start + batch_size, num_images)
            codes = _sample_batch(prior, labels[start:stop] if labels is not None else None,
                                  prefix[start:stop], seeds[start:stop].to(device), scales,
                                  (guide, chosen.autoguidance_scale), temperature, top_k, top_p, use_cache, bar)
            out[start:stop] = codes.cpu()
    bar.close()
    return out.reshape(num_images, *layout.grid)


class _Decoder:
    """Feeds a causal LM one step at a time: `step(ids [B, s])` appends the ids (s > 1 only for the
    first step: the condition token and a prefix) and returns the next token's logits over the
    first `num_logits` ids, in float32. With `use_cache` only the new ids are fed, with
    transformers' KV cache; without it the whole sequence, kept in one preallocated buffer on the
    model's device."""

    def __init__(self, lm: torch.nn.Module, batch: int, max_len: int, num_logits: int, use_cache: bool = True):
        self.lm, self.num_logits = lm, num_logits
        # `cache` in recent transformers releases, `past_key_values` in earlier ones and unrenamed architectures
        self.cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        self.ids = None if use_cache else torch.empty(batch, max_len, dtype=torch.long,
                                                      device=next(lm.parameters()).device)
        self.length, self.past = 0, None

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        if self.ids is None:
            result = self.lm(input_ids=ids, use_cache=True, **{self.cache_kw: self.past})
            self.past = result[self.cache_kw]
        else:
            start, self.length = self.length, self.length + ids.shape[1]
            self.ids[:, start:self.length] = ids
            result = self.lm(input_ids=self.ids[:, :self.length], use_cache=False)
        return result.logits[:, -1, :self.num_logits].float()


def _sample_batch(prior: ImagePrior, labels: torch.Tensor | None, prefix: torch.Tensor, seeds: torch.Tensor,
                  scales: list[float] | None, autoguidance: tuple[ImagePrior | None, float], temperature: float,
                  top_k: int | None, top_p: float | None, use_cache: bool, bar) -> torch.Tensor:
    """Codes `[B, T]` (on the prior's device) for one batch: a condition token and the given
    prefix read in one step, then one step per sampled position. With guidance (`scales`: one
    scale per position) the batch is doubled (conditional rows, then null-class rows) and both
    halves take the mixed choice. With a guide (`autoguidance`: the guide, or None, and its
    scale) the guide reads the conditional rows' ids too."""
    layout, lm = prior.layout, prior.lm
    B, n = prefix.shape
    K, T = layout.codebook_size, layout.num_image_tokens
    device = seeds.device
    cond = layout.condition_ids(None, B) if labels is None else layout.class_id(labels, validate=False)
    guided = scales is not None
    rows = 2 * B if guided else B
    if guided:
        cond = torch.cat([cond, torch.full_like(cond, layout.null_id)])
    codes = torch.empty(B, T, dtype=torch.long, device=device)
    codes[:, :n] = prefix.to(device)
    decoder = _Decoder(lm, rows, 1 + T, K, use_cache=use_cache)
    guide, auto_scale = autoguidance
    guide_decoder = _Decoder(guide.lm, B, 1 + T, K, use_cache=use_cache) if guide is not None else None
    given = codes[:, :n].repeat(2, 1) if guided else codes[:, :n]
    step_ids = torch.cat([cond[:, None].to(device), given], dim=1)
    for t in range(n, T):
        logits = decoder.step(step_ids)
        c = logits[:B]
        if guided:
            logits = torch.lerp(logits[B:], c, scales[t])         # u + s (c - u)
        if guide_decoder is not None:
            logits = logits + auto_scale * (c - guide_decoder.step(step_ids[:B]))
        logits = filter_logits(logits, top_k, top_p, temperature)
        noise = uniform_noise(seeds, t, K) if temperature > 0 else None
        nxt = pick_tokens(logits, temperature, noise)
        codes[:, t] = nxt
        step_ids = (nxt.repeat(2) if guided else nxt)[:, None]
        bar.update(B)
    return codes
