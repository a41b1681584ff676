"""Train a prior over a tokenizer's code grids.

    accelerate launch -m stage2_prior.train --config configs/prior/fashion_mnist.yaml \\
        tokenizer=runs/tokenizer_vq/final output_dir=runs/prior key=value ...

The dataset is encoded once with the tokenizer and cached (`stage2_prior.tokens`); the model,
loss and evaluation are handed to the shared trainer (`trainkit.trainer`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from stage1_tokenizer import ImageTokenizer
from trainkit.config import console_script
from trainkit.data import DataConfig
from trainkit.trainer import HubConfig, TrainConfig, TrainTask, train_from_command_line

from .evaluate import bits_per_token
from .layout import TokenLayout
from .model import BLOCK_CLASSES, ImagePrior, PriorConfig
from .options import SamplingOptions
from .sampling import sample_codes
from .tokens import build_token_splits


@dataclass
class SamplingDefaults:
    """The `sampling:` section: the saved prior's sampling defaults (its `generation_config.json`),
    which the previews use too. `guidance_scale` and `guidance_schedule` ("constant" or "linear",
    see `SamplingOptions`) apply to class-conditional priors trained with class dropout (1.0
    otherwise); `top_k: 0` and `top_p: 1.0` mean no filter."""

    guidance_scale: float = 2.0
    guidance_schedule: str = "constant"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        self.options(conditional=True, class_dropout=True)   # SamplingOptions checks every field

    def options(self, conditional: bool, class_dropout: bool) -> SamplingOptions:
        """The defaults a prior stores: no guidance for an unconditional prior, none (1.0) for a
        conditional one trained without class dropout (it never saw the null class)."""
        guidance = (self.guidance_scale if class_dropout else 1.0) if conditional else None
        return SamplingOptions(guidance_scale=guidance, guidance_schedule=self.guidance_schedule,
                               temperature=self.temperature, top_k=self.top_k,
                               top_p=self.top_p)


@dataclass
class PriorTrainConfig:
    """A prior training run. `data.channels` / `data.image_size` follow the tokenizer unless set."""

    tokenizer: str | None = None             # a saved tokenizer directory or hub repo id (required)
    tokenizer_revision: str | None = None
    output_dir: str = "runs/prior"
    resume: str | None = None                # "latest" or a checkpoint directory
    conditional: bool = True                 # class-conditional (needs labels) or unconditional
    token_cache_dir: str = "runs/token_cache"
    model: PriorConfig = field(default_factory=PriorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    sampling: SamplingDefaults = field(default_factory=SamplingDefaults)
    preview_per_class: int = 8               # preview grid: this many samples for each of up to 10 classes


class PriorTask(TrainTask):
    def __init__(self, cfg: PriorTrainConfig):
        if not cfg.tokenizer:
            raise ValueError("set tokenizer=PATH_OR_REPO_ID: the prior is trained on a tokenizer's codes")
        self.config = cfg
        self.tokenizer = ImageTokenizer.from_pretrained(cfg.tokenizer, revision=cfg.tokenizer_revision)
        data = dataclasses.replace(cfg.data, channels=self.tokenizer.config.in_channels,
                                   image_size=cfg.data.image_size or self.tokenizer.config.image_size)
        if cfg.data.channels != data.channels:
            raise ValueError(f"data.channels={cfg.data.channels} but the tokenizer takes "
                             f"{data.channels}-channel images")
        tokens = build_token_splits(self.tokenizer, data, cfg.token_cache_dir)
        if cfg.conditional and not tokens.num_classes:
            raise ValueError(f"the data {data.dataset!r} has no class labels: set conditional=false "
                             "for an unconditional prior, or data.label_column")
        num_classes = tokens.num_classes if cfg.conditional else 0
        self.layout = TokenLayout(tokens.codebook_size, tokens.grid, num_classes,
                                  tokens.class_names if cfg.conditional else None)
        # Building the token cache draws random numbers; reusing it does not. Seed again so the
        # initial weights are the same either way.
        set_seed(cfg.train.seed)
        self.model = ImagePrior.from_config(cfg.model, self.layout)
        self.sampling = cfg.sampling.options(self.layout.conditional, cfg.model.class_dropout_prob > 0)
        self.model.sampling_defaults = self.sampling
        self.train_dataset = tokens.train
        self.val_dataset = tokens.val

    def shard_blocks(self) -> tuple[str, ...]:
        """The transformer blocks of both architectures: the units `train.shard=fsdp` shards."""
        return BLOCK_CLASSES

    def hidden_matrices(self, module) -> list[torch.nn.Parameter]:
        return module.hidden_matrices()

    def training_step(self, model, batch, step):
        codes, labels = batch
        loss = model(codes, labels if self.layout.conditional else None,     # checked once, in the token cache
                     drop_class_prob=self.config.model.class_dropout_prob, validate=False)
        return loss, {"bits_per_token": loss.detach() / math.log(2)}

    @torch.no_grad()
    def evaluate(self, model, loader: DataLoader, accelerator: Accelerator, step: int):
        prior = accelerator.unwrap_model(model)
        bits, count = bits_per_token(prior, loader, accelerator)
        uniform = math.log2(self.layout.codebook_size)
        metrics = {"bits_per_token": bits, "uniform_bits_per_token": uniform, "fraction_of_uniform": bits / uniform,
                   "num_images": float(count)}
        return metrics, self.preview(prior, accelerator)

    def preview(self, prior: ImagePrior, accelerator: Accelerator) -> torch.Tensor:
        """Decoded samples: one row per class (guided), or 64 unconditional samples."""
        n = self.config.preview_per_class
        labels = None
        if self.layout.conditional:
            labels = [c for c in range(min(self.layout.num_classes, 10)) for _ in range(n)]
        with accelerator.autocast():
            codes = sample_codes(prior, len(labels) if labels else 64, labels, seed=0, options=self.sampling)
            self.tokenizer.to(accelerator.device)
            return self.tokenizer.decode(codes.to(accelerator.device)).float()


def main(argv: list[str] | None = None) -> dict[str, float]:
    return train_from_command_line(PriorTrainConfig, PriorTask, prog="stage2_prior.train",
                                   description="Train a GPT-style prior over a tokenizer's code grids; set tokenizer=PATH_OR_REPO_ID.", argv=argv)


cli = console_script(main)


if __name__ == "__main__":
    main()
