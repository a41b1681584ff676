"""`ImageTokenizer`: images <-> grids of integer codes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.hub import PretrainedMixin

from .config import ImageTokenizerConfig
from .networks import Decoder, Encoder
from .quantizers import build_quantizer


@dataclass
class TokenizerOutput:
    reconstruction: torch.Tensor     # [B, C, H, W], in [-1, 1] after clamping at decode time
    codes: torch.Tensor              # [B, h, w]
    loss: torch.Tensor               # recon_loss + quantizer_loss
    recon_loss: torch.Tensor
    quantizer_loss: torch.Tensor
    stats: dict[str, float] = field(default_factory=dict)


class ImageTokenizer(PretrainedMixin, nn.Module):
    """A discrete autoencoder: `encode(images) -> codes [B, h, w]`, `decode(codes) -> images`.

    Images are float tensors `[B, C, H, W]` in [-1, 1]. The quantizer is a VQ-VAE codebook
    or a Gumbel-softmax dVAE, chosen by `config.quantizer`.
    """

    config_class = ImageTokenizerConfig

    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.config = config
        enc_out = config.latent_channels if config.quantizer == "vq" else config.codebook_size
        self.encoder = Encoder(config, enc_out)
        self.quantizer = build_quantizer(config)
        self.decoder = Decoder(config)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.config.grid_size

    def _check_images(self, images: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor [B, {cfg.in_channels}, H, W], got {type(images).__name__}")
        if not images.is_floating_point():
            raise ValueError(
                f"images must be a float tensor in [-1, 1], got dtype {images.dtype}; "
                "convert uint8 pixels with images.float() / 127.5 - 1"
            )
        if images.ndim != 4 or images.shape[1] != cfg.in_channels:
            raise ValueError(
                f"images must have shape [B, {cfg.in_channels}, H, W] ({cfg.in_channels} channel(s)), "
                f"got {tuple(images.shape)}"
            )
        f = cfg.downsample_factor
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(
                f"image height and width must be divisible by {f} (2**num_downsamples), got "
                f"{tuple(images.shape[2:])}; resize or pad them (data.image_size)"
            )

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not isinstance(codes, torch.Tensor) or codes.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"codes must be an integer tensor [B, h, w], got {getattr(codes, 'dtype', type(codes))}")
        if codes.ndim != 3:
            raise ValueError(f"codes must have shape [B, h, w], got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got values in "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )

    def forward(self, images: torch.Tensor, step: int | None = None) -> TokenizerOutput:
        """Encode, quantize, decode; `step` drives the training schedules (Gumbel temperature)."""
        self._check_images(images)
        q = self.quantizer(self.encoder(images), step=step)
        recon = self.decoder(q.quantized)
        if self.config.recon_loss == "mse":
            recon_loss = F.mse_loss(recon.float(), images.float())
        else:
            recon_loss = F.l1_loss(recon.float(), images.float())
        return TokenizerOutput(recon, q.codes, recon_loss + q.loss, recon_loss, q.loss, q.stats)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images `[B, C, H, W]` in [-1, 1] -> codes `LongTensor[B, h, w]` (argmax / nearest code)."""
        self._check_images(images)
        return self.quantizer.codes(self.encoder(images))

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes `[B, h, w]` -> images `[B, C, H, W]` clamped to [-1, 1]."""
        self._check_codes(codes)
        return self.decoder(self.quantizer.embed(codes.long())).clamp(-1, 1)
