"""`ImageTokenizer`: images <-> grids of integer codes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from trainkit.devices import use_channels_last
from trainkit.hub import PretrainedMixin

from .config import ImageTokenizerConfig
from .networks import Decoder, Encoder
from .quantizers import build_quantizer


# An orthonormal colour basis: the grey axis, then two chroma axes orthogonal to it.
_COLOR_AXES = torch.tensor([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0], [1.0, 1.0, -2.0]])
_COLOR_AXES = _COLOR_AXES / _COLOR_AXES.norm(dim=1, keepdim=True)


def reconstruction_loss(recon: torch.Tensor, images: torch.Tensor, kind: str = "mse",
                        chroma_weight: float = 1.0) -> torch.Tensor:
    """Mean squared (`"mse"`) or absolute (`"l1"`) error per pixel value.

    With `chroma_weight != 1` (RGB images) the error is measured along the grey axis and two
    chroma axes of an orthonormal colour basis, the chroma terms weighted by `chroma_weight`.
    The basis is a rotation, so the MSE of a grey error is the plain RGB one at any weight
    (an L1 error, not rotation invariant, is measured along the axes once they are weighted).
    """
    diff = recon.float() - images.float()
    per_value = diff.pow(2) if kind == "mse" else diff.abs()
    if chroma_weight == 1.0:
        return per_value.mean()
    rotated = torch.einsum("ij,bjhw->bihw", _COLOR_AXES.to(diff.device), diff)
    per_axis = (rotated.pow(2) if kind == "mse" else rotated.abs()).mean(dim=(0, 2, 3))
    return (per_axis[0] + chroma_weight * (per_axis[1] + per_axis[2])) / 3


def spectrum_loss(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the 2-D amplitude spectra (orthonormal FFT per image and channel).

    The term is blind to phase: a texture drawn a pixel off its place costs little here, while
    in a pixel loss it costs about as much as leaving the texture out, which is what makes
    pixel losses alone settle on blur. Leaving it out costs its whole amplitude here.
    """
    def amplitude(x: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft2(x.float(), norm="ortho").abs()

    return (amplitude(recon) - amplitude(images)).abs().mean()


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
        if config.chroma_weight != 1.0 and config.in_channels != 3:
            raise ValueError(f"chroma_weight={config.chroma_weight} weighs colour errors, but the images have "
                             f"{config.in_channels} channel(s): leave it at 1 for grayscale data")
        self.config = config
        enc_out = config.latent_channels if config.quantizer == "vq" else config.codebook_size
        self.encoder = Encoder(config, enc_out)
        self.quantizer = build_quantizer(config)
        self.decoder = Decoder(config)

    @classmethod
    def _from_pretrained(cls, **kwargs) -> "ImageTokenizer":
        """Loaded with channels-last (NHWC) convolution weights, whose kernels encode and decode
        faster on CPUs; the saved weights stay in the usual layout."""
        return use_channels_last(super()._from_pretrained(**kwargs))

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
        recon_loss = reconstruction_loss(recon, images, self.config.recon_loss, self.config.chroma_weight)
        stats = q.stats
        if self.config.l1_weight:
            l1 = reconstruction_loss(recon, images, "l1", self.config.chroma_weight)
            recon_loss = recon_loss + self.config.l1_weight * l1
            stats = {**stats, "l1_loss": l1.detach()}
        if self.config.spectrum_weight:
            spectrum = spectrum_loss(recon, images)
            recon_loss = recon_loss + self.config.spectrum_weight * spectrum
            stats = {**stats, "spectrum_loss": spectrum.detach()}
        return TokenizerOutput(recon, q.codes, recon_loss + q.loss, recon_loss, q.loss, stats)

    @torch.no_grad()
    def code_vectors(self) -> torch.Tensor:
        """`[K, D]`: the latent vector the decoder reads for each code (float32)."""
        codes = torch.arange(self.codebook_size, device=self.quantizer.codebook.device)
        return self.quantizer.embed(codes.view(1, -1, 1))[0, :, :, 0].t().float()

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
