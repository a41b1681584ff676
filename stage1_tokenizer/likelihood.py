"""The decoder as a likelihood: a discretised logistic over the 256 levels of 8-bit pixels.

Images are float in [-1, 1] (uint8 `v` as `v / 127.5 - 1`), so the levels sit 2/255 apart. The
probability of a level is the logistic mass of its bin, centred on the decoder's output (the
reconstruction, clamped to [-1, 1]); the first and last bins take the tails, so the 256
probabilities of a pixel sum to one. The scale is one scalar per channel, fitted by maximum
likelihood (`fit_log_scale`) on images the evaluation does not score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LEVELS = 256
LOG_PROB_FLOOR = math.log(1e-12)       # no level is ever less likely than this
LOG_SCALE_RANGE = (math.log(1e-4), math.log(4.0))


def levels(images: torch.Tensor) -> torch.Tensor:
    """The 8-bit level `[0, 255]` (int64) of each value of images in [-1, 1]."""
    return ((images.float() + 1) * ((LEVELS - 1) / 2)).round().clamp(0, LEVELS - 1).long()


def _edge(odd: torch.Tensor) -> torch.Tensor:
    """The bin edge `odd / 255 - 1` on [-1, 1] between two levels (`odd` = 2 * level +- 1)."""
    return odd.float() / (LEVELS - 1) - 1


def _channel_view(log_scale: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """`log_scale` as a tensor broadcasting against `[B, C, H, W]` (a scalar or one value per channel)."""
    log_scale = torch.as_tensor(log_scale, dtype=torch.float32, device=like.device)
    if log_scale.ndim == 1 and like.ndim == 4:
        if len(log_scale) != like.shape[1]:
            raise ValueError(f"{len(log_scale)} log-scales for {like.shape[1]} channel(s): give one per channel")
        return log_scale.view(1, -1, 1, 1)
    return log_scale


def discretized_logistic_log_prob(images: torch.Tensor, mean: torch.Tensor,
                                  log_scale: torch.Tensor | float) -> torch.Tensor:
    """Log-probability (nats) of every value of `images` (in [-1, 1], on the 8-bit grid) under a
    discretised logistic of centre `mean` (clamped to [-1, 1]) and scale `exp(log_scale)`;
    `log_scale` is a scalar, one value per channel or a tensor broadcasting against the images."""
    if images.shape != mean.shape:
        raise ValueError(f"images {tuple(images.shape)} and means {tuple(mean.shape)} differ in shape")
    level = levels(images)
    mean = mean.float().clamp(-1, 1)
    inv_scale = torch.exp(-_channel_view(log_scale, images))
    # the standardised edges of each level's bin; level k's upper edge is level k+1's lower one, bit for bit
    upper = inv_scale * (_edge(2 * level + 1) - mean)
    lower = inv_scale * (_edge(2 * level - 1) - mean)
    log_cdf_upper = F.logsigmoid(upper)         # log P(X <= upper edge): the first level's mass
    log_sf_lower = F.logsigmoid(-lower)         # log P(X > lower edge): the last level's mass
    # log(sigmoid(u) - sigmoid(l)) = logsigmoid(u) + logsigmoid(-l) + log(1 - exp(l - u)), u > l
    inner = log_cdf_upper + log_sf_lower + torch.log(-torch.expm1(lower - upper))
    log_prob = torch.where(level == 0, log_cdf_upper, torch.where(level == LEVELS - 1, log_sf_lower, inner))
    return log_prob.clamp_min(LOG_PROB_FLOOR)


def reconstruction_nll(images: torch.Tensor, reconstructions: torch.Tensor,
                       log_scale: torch.Tensor | float) -> torch.Tensor:
    """`-log p(x | z)` per image `[B]` in nats: the discretised logistic over all C*H*W values."""
    return -discretized_logistic_log_prob(images, reconstructions, log_scale).flatten(1).sum(1)


def _golden_section(f, low: float, high: float, tol: float) -> float:
    """The minimiser of a unimodal `f` on [low, high], to within `tol`."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = low + (1 - ratio) * (high - low), low + ratio * (high - low)
    fa, fb = f(a), f(b)
    while high - low > tol:
        if fa <= fb:
            high, b, fb = b, a, fa
            a = low + (1 - ratio) * (high - low)
            fa = f(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = f(b)
    return (low + high) / 2


def _fit_one(images: torch.Tensor, mean: torch.Tensor, bounds: tuple[float, float], grid: int, tol: float) -> float:
    """Maximum-likelihood log-scale of one channel's values (flat tensors)."""
    def nll(log_scale: float) -> float:
        return -float(discretized_logistic_log_prob(images, mean, log_scale).double().sum())

    points = torch.linspace(bounds[0], bounds[1], grid).tolist()
    values = [nll(p) for p in points]
    best = min(range(grid), key=values.__getitem__)
    low, high = points[max(best - 1, 0)], points[min(best + 1, grid - 1)]
    return _golden_section(nll, low, high, tol)


def fit_log_scale(images: torch.Tensor, reconstructions: torch.Tensor,
                  bounds: tuple[float, float] = LOG_SCALE_RANGE, grid: int = 41, tol: float = 1e-4) -> torch.Tensor:
    """Per-channel log-scales `[C]` maximising the likelihood of `images` `[N, C, H, W]` given
    their `reconstructions`: the NLL separates by channel, so each is a 1-D search over log-scale
    in `bounds` (a grid of `grid` points, then golden-section search between the best one's
    neighbours, to `tol`)."""
    if images.ndim != 4 or images.shape != reconstructions.shape:
        raise ValueError(f"images and reconstructions must both be [N, C, H, W], got {tuple(images.shape)} and "
                         f"{tuple(reconstructions.shape)}")
    if len(images) == 0:
        raise ValueError("fitting the decoder's scale needs at least one image")
    if not bounds[0] < bounds[1] or grid < 3:
        raise ValueError(f"need bounds low < high and grid >= 3, got bounds={bounds}, grid={grid}")
    fitted = [_fit_one(images[:, c].reshape(-1), reconstructions[:, c].reshape(-1), bounds, grid, tol)
              for c in range(images.shape[1])]
    return torch.tensor(fitted, dtype=torch.float32)
