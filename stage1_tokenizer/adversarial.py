"""Adversarial training of the tokenizer's decoder: a PatchGAN discriminator and its losses.

The discriminator scores patches of real images and of (detached) reconstructions; the
decoder gets a generator term that pushes its reconstructions towards what the discriminator
calls real. The term's weight ramps up after the discriminator starts and, by default, is
scaled by the ratio of the gradient norms of the reconstruction loss and the generator term
at the decoder's last layer (the adaptive weight), so neither term swamps the other. An
optional LeCam regulariser keeps the discriminator's outputs near their running means.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LossKind = Literal["hinge", "non_saturating"]


@dataclass
class AdversarialConfig:
    """The `adversarial:` section of a tokenizer run; `weight: 0` (the default) turns it off."""

    weight: float = 0.0                  # the generator term's weight once ramped up; 0 = no discriminator
    start_step: int = 2000               # optimizer step at which the discriminator starts training
    ramp_steps: int = 1000               # the generator term ramps linearly from 0 over these steps after start_step
    loss: LossKind = "hinge"
    adaptive_weight: bool = True         # scale the term by ||grad recon_loss|| / ||grad g_loss|| at the decoder's last layer
    max_adaptive_weight: float = 1e4
    lecam_weight: float = 0.0            # LeCam regulariser on the discriminator (0 = off)
    lecam_decay: float = 0.99            # decay of the running means of D(real) and D(fake) it compares with
    lr: float | None = None              # the discriminator's peak learning rate; None = train.lr
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    channels: int = 64                   # width of the discriminator's first layer (doubling per layer, up to 8x)
    num_layers: int = 3                  # strided 4x4 convolutions: each halves the image
    norm: Literal["group", "none"] = "group"

    def __post_init__(self):
        checks = [
            (self.weight >= 0, f"adversarial.weight must be >= 0 (0 turns the discriminator off), got {self.weight}"),
            (self.start_step >= 0, f"adversarial.start_step must be >= 0, got {self.start_step}"),
            (self.ramp_steps >= 0, f"adversarial.ramp_steps must be >= 0 (0 = the full weight at once), "
                                   f"got {self.ramp_steps}"),
            (self.loss in ("hinge", "non_saturating"),
             f"adversarial.loss must be 'hinge' or 'non_saturating', got {self.loss!r}"),
            (self.max_adaptive_weight > 0, f"adversarial.max_adaptive_weight must be > 0, e.g. 1e4, "
                                           f"got {self.max_adaptive_weight}"),
            (self.lecam_weight >= 0, f"adversarial.lecam_weight must be >= 0 (0 = off), got {self.lecam_weight}"),
            (0 < self.lecam_decay < 1, f"adversarial.lecam_decay must be in (0, 1), e.g. 0.99, got {self.lecam_decay}"),
            (self.lr is None or self.lr > 0, f"adversarial.lr must be > 0 (or null for train.lr), got {self.lr}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"adversarial.betas must be two numbers in [0, 1), e.g. [0.5, 0.9], got {self.betas}"),
            (self.channels >= 1, f"adversarial.channels must be >= 1, e.g. 64, got {self.channels}"),
            (self.num_layers >= 1, f"adversarial.num_layers must be >= 1, e.g. 3, got {self.num_layers}"),
            (self.norm in ("group", "none"), f"adversarial.norm must be 'group' or 'none', got {self.norm!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def enabled(self) -> bool:
        return self.weight > 0


def _group_norm(channels: int) -> nn.GroupNorm:
    """Per-sample normalisation (no batch statistics: real and fake share one forward pass)."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class PatchDiscriminator(nn.Module):
    """Images `[B, C, H, W]` -> real/fake logits `[B, 1, H / 2**num_layers, W / 2**num_layers]`.

    `num_layers` strided 4x4 convolutions (LeakyReLU 0.2; GroupNorm or none after all but the
    first), then a 3x3 convolution to one logit per patch.
    """

    def __init__(self, in_channels: int, channels: int = 64, num_layers: int = 3, norm: str = "group"):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for i in range(num_layers):
            out = channels * min(2**i, 8)
            layers.append(nn.Conv2d(width, out, 4, stride=2, padding=1))
            if i > 0 and norm == "group":
                layers.append(_group_norm(out))
            layers.append(nn.LeakyReLU(0.2))
            width = out
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.num_layers = num_layers

    def check_image_size(self, size: int) -> None:
        """A clear error where `num_layers` halvings would leave no patch of a `size`-pixel image."""
        if size >> self.num_layers < 1:
            deepest = size.bit_length() - 1
            raise ValueError(f"adversarial.num_layers={self.num_layers} halves {size}x{size} images to nothing: "
                             f"use adversarial.num_layers <= {deepest}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


class LeCamEMA(nn.Module):
    """Running means of the discriminator's outputs on real and fake images, in buffers (so they
    are checkpointed and resumed with the discriminator)."""

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("real", torch.zeros(()))
        self.register_buffer("fake", torch.zeros(()))

    @torch.no_grad()
    def update(self, logits_real: torch.Tensor, logits_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold in this batch's means (averaged over the processes, so every rank holds the same
        values) and return copies of the updated means."""
        means = torch.stack([logits_real.float().mean(), logits_fake.float().mean()])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(means)
            means /= torch.distributed.get_world_size()
        self.real.lerp_(means[0], 1 - self.decay)
        self.fake.lerp_(means[1], 1 - self.decay)
        return self.real.clone(), self.fake.clone()


class Discriminator(nn.Module):
    """The module the trainer optimises: a `PatchDiscriminator` plus the LeCam running means."""

    def __init__(self, in_channels: int, cfg: AdversarialConfig):
        super().__init__()
        self.patch = PatchDiscriminator(in_channels, cfg.channels, cfg.num_layers, cfg.norm)
        self.lecam = LeCamEMA(cfg.lecam_decay)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.patch(images)


def discriminator_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """The discriminator's loss, the mean of its real and fake halves (computed in float32).

    hinge: relu(1 - D(real)) and relu(1 + D(fake)); non_saturating: softplus(-D(real)) and
    softplus(D(fake)), i.e. binary cross-entropy on the logits.
    """
    real, fake = logits_real.float(), logits_fake.float()
    if kind == "hinge":
        return 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def generator_loss(logits_fake: torch.Tensor, kind: LossKind) -> torch.Tensor:
    """The decoder's adversarial term: -D(fake) (hinge) or softplus(-D(fake)) (non-saturating)."""
    fake = logits_fake.float()
    if kind == "hinge":
        return -fake.mean()
    return F.softplus(-fake).mean()


def lecam_penalty(logits_real: torch.Tensor, logits_fake: torch.Tensor, ema_real: torch.Tensor,
                  ema_fake: torch.Tensor) -> torch.Tensor:
    """LeCam regulariser: mean(relu(D(real) - ema_fake)^2) + mean(relu(ema_real - D(fake))^2)."""
    real, fake = logits_real.float(), logits_fake.float()
    return F.relu(real - ema_fake).pow(2).mean() + F.relu(ema_real - fake).pow(2).mean()


def adaptive_weight(recon_loss: torch.Tensor, gen_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float) -> torch.Tensor:
    """||d recon_loss / d last_layer|| / (||d gen_loss / d last_layer|| + 1e-4), clamped to
    [0, max_weight] and detached. Both graphs are kept for the backward pass that follows."""
    (recon_grad,) = torch.autograd.grad(recon_loss, last_layer, retain_graph=True)
    (gen_grad,) = torch.autograd.grad(gen_loss, last_layer, retain_graph=True)
    ratio = recon_grad.float().norm() / (gen_grad.float().norm() + 1e-4)
    return ratio.clamp(0.0, max_weight).detach()


def ramp(step: int, cfg: AdversarialConfig) -> float:
    """The generator term's weight factor at `step`: 0 until `start_step`, then linear up to 1
    over `ramp_steps` steps (at once when `ramp_steps` is 0)."""
    if step < cfg.start_step:
        return 0.0
    if cfg.ramp_steps == 0:
        return 1.0
    return min(1.0, (step - cfg.start_step) / cfg.ramp_steps)
