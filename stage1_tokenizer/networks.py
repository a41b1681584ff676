"""Residual convolutional encoder and decoder."""

from __future__ import annotations

import torch
from torch import nn

from .config import ImageTokenizerConfig


def _norm(channels: int, kind: str) -> nn.Module:
    """GroupNorm (8 groups), or nothing: without it a step is about twice as fast on a CPU."""
    if kind == "none":
        return nn.Identity()
    return nn.GroupNorm(8 if channels % 8 == 0 else 1, channels, eps=1e-6)


class ResBlock(nn.Module):
    """norm -> SiLU -> conv, twice, plus a (1x1-projected if needed) skip.

    The branch's last conv starts at zero, so every block starts as the identity; this
    keeps deep stacks stable when there is no normalisation.
    """

    def __init__(self, in_ch: int, out_ch: int, norm: str = "group", kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.block = nn.Sequential(
            _norm(in_ch, norm), nn.SiLU(), nn.Conv2d(in_ch, out_ch, kernel_size, padding=pad),
            _norm(out_ch, norm), nn.SiLU(), nn.Conv2d(out_ch, out_ch, kernel_size, padding=pad),
        )
        nn.init.zeros_(self.block[-1].weight)
        nn.init.zeros_(self.block[-1].bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)


class Encoder(nn.Module):
    """Image `[B, C, H, W]` -> features `[B, out_channels, H / 2**n, W / 2**n]`.

    With `encoder_context="local"` only the full-resolution level has 3x3 convs; after it the
    downsampling is non-overlapping (2x2, stride 2) and the blocks are 1x1, so a code is a
    function of its own patch plus a margin of `Encoder.local_margin(config)` pixels (and the
    encoder has no normalisation, whose statistics would span the whole image).
    """

    def __init__(self, config: ImageTokenizerConfig, out_channels: int):
        super().__init__()
        local = config.encoder_context == "local"
        norm = "none" if local else config.norm  # GroupNorm's statistics would span the whole image
        chans = [config.base_channels * m for m in config.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(config.in_channels, chans[0], 3, padding=1)]
        for level, ch in enumerate(chans):
            prev = chans[max(level - 1, 0)] if level else chans[0]
            kernel = 1 if local and level else 3
            for i in range(config.num_res_blocks):
                layers.append(ResBlock(prev if i == 0 else ch, ch, norm, kernel))
            if level < config.num_downsamples:
                layers.append(nn.Conv2d(ch, ch, 2, stride=2) if local else nn.Conv2d(ch, ch, 4, stride=2, padding=1))
        layers += [ResBlock(chans[-1], chans[-1], norm, 1 if local else 3), _norm(chans[-1], norm),
                   nn.SiLU(), nn.Conv2d(chans[-1], out_channels, 1)]
        self.net = nn.Sequential(*layers)

    @staticmethod
    def local_margin(config: ImageTokenizerConfig) -> int:
        """Pixels beyond its own patch that a "local" encoder's code depends on, on each side."""
        return 1 + 2 * config.num_res_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """Latents `[B, latent_channels, h, w]` -> image `[B, C, h * 2**n, w * 2**n]` (unbounded)."""

    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        chans = [config.base_channels * m for m in config.channel_mult][::-1]
        layers: list[nn.Module] = [nn.Conv2d(config.latent_channels, chans[0], 3, padding=1),
                                   ResBlock(chans[0], chans[0], config.norm)]
        narrow_in_upsample = config.decoder_narrowing == "upsample"
        width = chans[0]   # of the features entering each level
        for level, ch in enumerate(chans):
            for _ in range(config.num_res_blocks):
                layers.append(ResBlock(width, ch, config.norm))
                width = ch
            if level < config.num_downsamples:
                out = chans[level + 1] if narrow_in_upsample else ch
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, out, 3, padding=1)]
                width = out
        layers += [_norm(chans[-1], config.norm), nn.SiLU(), nn.Conv2d(chans[-1], config.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
