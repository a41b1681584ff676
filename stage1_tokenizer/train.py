"""Train an image tokenizer.

    accelerate launch -m stage1_tokenizer.train --config configs/tokenizer/fashion_mnist_vq.yaml \\
        output_dir=runs/tokenizer train.max_steps=1000 key=value ...

Builds the model, data and loss and hands them to the shared trainer (`trainkit.trainer`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from accelerate import Accelerator
from torch.utils.data import DataLoader

from trainkit.config import ConfigError, console_script
from trainkit.data import DataConfig, ImageData
from trainkit.images import interleave_rows
from trainkit.trainer import HubConfig, TrainConfig, TrainTask, train_from_command_line

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
    preview_images: int = 32


class TokenizerTask(TrainTask):
    def __init__(self, cfg: TokenizerTrainConfig):
        splits = ImageData(cfg.data, downsample_factor=cfg.model.downsample_factor).splits()
        h, w = splits.image_size
        if h != w:
            raise ConfigError(f"the tokenizer needs square images, the data gives {h}x{w}: set data.image_size")
        cfg.model = dataclasses.replace(cfg.model, in_channels=splits.channels, image_size=h)
        self.config = cfg
        self.model = ImageTokenizer(cfg.model)
        self.train_dataset = splits.train
        self.val_dataset = splits.val

    def shard_blocks(self) -> tuple[str, ...]:
        """None: a convolutional model small enough to train data-parallel (`train.shard` refuses it)."""
        return ()

    def training_step(self, model, batch, step):
        images, _ = batch
        out = model(images, step=step)
        logs = {"recon_loss": out.recon_loss.detach(), "quantizer_loss": out.quantizer_loss.detach(), **out.stats}
        return out.loss, logs

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
