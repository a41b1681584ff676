"""Train an image tokenizer.

    accelerate launch -m stage1_tokenizer.train --config configs/tokenizer/fashion_mnist_vq.yaml \\
        output_dir=runs/tokenizer train.max_steps=1000 key=value ...

Builds the model, data and loss and hands them to the shared trainer (`trainkit.trainer`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import extract_model_from_parallel
from torch.utils.data import DataLoader

from trainkit.config import ConfigError, console_script
from trainkit.data import DataConfig, ImageData
from trainkit.images import interleave_rows
from trainkit.trainer import HubConfig, Part, TrainConfig, TrainTask, train_from_command_line

from . import adversarial as adv
from .adversarial import AdversarialConfig, Discriminator
from .config import ImageTokenizerConfig
from .model import ImageTokenizer
from .evaluate import reconstruction_metrics


@dataclass
class TokenizerTrainConfig:
    """A tokenizer training run. `model.in_channels` and `model.image_size` follow the data."""

    output_dir: str = "runs/tokenizer"
    resume: str | None = None            # "latest" or a checkpoint directory
    model: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)   # off unless weight > 0
    preview_images: int = 32

    def __post_init__(self):
        gan = self.adversarial
        if gan.enabled and gan.start_step >= self.train.max_steps:
            raise ValueError(f"adversarial.start_step={gan.start_step} is not before train.max_steps="
                             f"{self.train.max_steps}, so the discriminator would never train: lower "
                             "adversarial.start_step, or set adversarial.weight=0 to train without it")


class TokenizerTask(TrainTask):
    def __init__(self, cfg: TokenizerTrainConfig):
        splits = ImageData(cfg.data, downsample_factor=cfg.model.downsample_factor).splits()
        h, w = splits.image_size
        if h != w:
            raise ConfigError(f"the tokenizer needs square images, the data gives {h}x{w}: set data.image_size")
        cfg.model = dataclasses.replace(cfg.model, in_channels=splits.channels, image_size=h)
        self.config = cfg
        self.model = ImageTokenizer(cfg.model)
        self.discriminator = None
        if cfg.adversarial.enabled:
            self.discriminator = Discriminator(cfg.model.in_channels, cfg.adversarial)
            self.discriminator.patch.check_image_size(h)
        self.train_dataset = splits.train
        self.val_dataset = splits.val

    def extra_parts(self) -> list[Part]:
        """The discriminator, when `adversarial.weight > 0`; it is trained from `adversarial.start_step`."""
        if self.discriminator is None:
            return []
        cfg = self.config.adversarial
        return [Part("discriminator", self.discriminator, lr=cfg.lr, betas=list(cfg.betas), start_step=cfg.start_step)]

    def training_step(self, model, batch, step, discriminator=None):
        images, _ = batch
        out = model(images, step=step)
        logs = {"recon_loss": out.recon_loss.detach(), "quantizer_loss": out.quantizer_loss.detach(), **out.stats}
        if discriminator is None:
            return out.loss, logs
        if step < self.config.adversarial.start_step:   # the trainer does not step it yet: do not run it
            logs["gen_weight"] = torch.zeros((), device=images.device)
            return out.loss, logs
        model_loss, disc_loss = self._adversarial_losses(model, discriminator, images, out, step, logs)
        return {"model": model_loss, "discriminator": disc_loss}, logs

    def _adversarial_losses(self, model, discriminator, images, out, step, logs):
        """From the start step on: the model's loss (plus the weighted generator term) and the
        discriminator's loss, in float32.

        The (wrapped) discriminator scores the detached reconstructions and the real images in
        one call. The generator term reads the unwrapped discriminator, so its gradient reaches
        the decoder only; it is skipped while its ramped weight is 0.
        """
        cfg = self.config.adversarial
        critic = extract_model_from_parallel(discriminator)
        logits = discriminator(torch.cat([out.reconstruction.detach(), images])).float()
        fake, real = logits.chunk(2)
        disc_loss = adv.discriminator_loss(real, fake, cfg.loss)
        if cfg.lecam_weight > 0:
            ema_real, ema_fake = critic.lecam.update(real, fake)
            lecam = adv.lecam_penalty(real, fake, ema_real, ema_fake)
            disc_loss = disc_loss + cfg.lecam_weight * lecam
            logs["lecam_penalty"] = lecam.detach()
        logs.update(d_real=real.detach().mean(), d_fake=fake.detach().mean(),
                    gen_loss=adv.generator_loss(fake.detach(), cfg.loss))

        factor = adv.ramp(step, cfg)
        if factor == 0:
            logs["gen_weight"] = torch.zeros((), device=images.device)
            return out.loss, disc_loss
        gen_loss = adv.generator_loss(critic(out.reconstruction).float(), cfg.loss)
        weight = torch.ones((), device=images.device)
        if cfg.adaptive_weight:
            last_layer = extract_model_from_parallel(model).decoder.net[-1].weight
            weight = adv.adaptive_weight(out.recon_loss, gen_loss, last_layer, cfg.max_adaptive_weight)
            logs["adaptive_weight"] = weight
        weight = cfg.weight * factor * weight
        logs["gen_weight"] = weight
        return out.loss + weight * gen_loss, disc_loss

    def evaluate(self, model, loader: DataLoader, accelerator: Accelerator, step: int):
        tokenizer = accelerator.unwrap_model(model)
        metrics, (images, recon) = reconstruction_metrics(tokenizer, loader, accelerator)
        if tokenizer.config.quantizer == "gumbel":
            metrics["temperature"] = tokenizer.quantizer.temperature(step)
        else:
            metrics["dead_codes_restarted"] = float(tokenizer.quantizer.restarted_total)
        if accelerator.num_processes > 1:  # every rank must hold the same codebook
            gathered = accelerator.gather(tokenizer.quantizer.codebook.detach()[None])
            metrics["codebook_rank_max_diff"] = float((gathered - gathered[:1]).abs().max())
        k = min(self.config.preview_images, images.shape[0])
        return metrics, interleave_rows(images[:k], recon[:k], per_row=8)


def main(argv: list[str] | None = None) -> dict[str, float]:
    return train_from_command_line(TokenizerTrainConfig, TokenizerTask, prog="stage1_tokenizer.train",
                                   description="Train a discrete image tokenizer (VQ-VAE or Gumbel dVAE).", argv=argv)


cli = console_script(main)


if __name__ == "__main__":
    main()
