"""Train a prior over a tokenizer's code grids.

    accelerate launch -m stage2_prior.train --config configs/prior/fashion_mnist.yaml \\
        tokenizer=runs/tokenizer_vq/final output_dir=runs/prior key=value ...

The dataset is encoded once with the tokenizer and cached (`stage2_prior.tokens`); the model,
loss and evaluation are handed to the shared trainer (`trainkit.trainer`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field, replace

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from stage1_tokenizer import ImageTokenizer
from trainkit.config import console_script
from trainkit.data import DataConfig
from trainkit.trainer import HubConfig, TrainConfig, TrainTask, snapshot_dir, train_from_command_line

from .evaluate import bits_per_token
from .layout import TokenLayout
from .model import BLOCK_CLASSES, ImagePrior, PriorConfig
from .options import SamplingOptions
from .sampling import sample_codes
from .tokens import build_token_splits

logger = logging.getLogger(__name__)


@dataclass
class SamplingDefaults:
    """The `sampling:` section: the saved prior's sampling defaults (its `generation_config.json`),
    which the previews use too. `guidance_scale` and `guidance_schedule` ("constant" or "linear",
    see `SamplingOptions`) apply to class-conditional priors trained with class dropout (1.0
    otherwise); `top_k: 0` and `top_p: 1.0` mean no filter."""

    guidance_scale: float = 2.0
    guidance_schedule: str = "constant"
    autoguidance_scale: float = 0.0       # needs `guide_fraction`: the prior's early weights are its guide
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
                               autoguidance_scale=self.autoguidance_scale, temperature=self.temperature,
                               top_k=self.top_k, top_p=self.top_p)


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
    # The weights after this fraction of train.max_steps are saved with the final prior as its
    # guide, which `sampling.autoguidance_scale` steers away from (None: no guide).
    guide_fraction: float | None = None
    preview_per_class: int = 8               # preview grid: this many samples for each of up to 10 classes

    def __post_init__(self):
        if self.guide_fraction is not None and not 0 < self.guide_fraction < 1:
            raise ValueError(f"guide_fraction={self.guide_fraction} must lie in (0, 1) (the guide is the prior's "
                             "weights at that fraction of train.max_steps), or be null for no guide")
        if self.sampling.autoguidance_scale > 0 and self.guide_fraction is None:
            raise ValueError(f"sampling.autoguidance_scale={self.sampling.autoguidance_scale} needs a guide: set "
                             "guide_fraction (e.g. 0.25), or sampling.autoguidance_scale=0")

    @property
    def guide_step(self) -> int | None:
        """The step whose weights become the guide."""
        if self.guide_fraction is None:
            return None
        return max(1, round(self.guide_fraction * self.train.max_steps))


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
        layout = TokenLayout(tokens.codebook_size, tokens.grid, num_classes,
                             tokens.class_names if cfg.conditional else None)
        self._start(layout, tokens.train, tokens.val)

    @classmethod
    def on_codes(cls, cfg: PriorTrainConfig, layout: TokenLayout, train_dataset, val_dataset=None) -> "PriorTask":
        """The task on code datasets already at hand, without a tokenizer (so without previews:
        give no `val_dataset` to train it), e.g. to time the prior's steps."""
        task = cls.__new__(cls)
        task.config, task.tokenizer = cfg, None
        task._start(layout, train_dataset, val_dataset)
        return task

    def _start(self, layout: TokenLayout, train_dataset, val_dataset) -> None:
        """The model, its sampling defaults and the datasets, for the codes of `layout`."""
        cfg = self.config
        self.layout = layout
        # Building the token cache draws random numbers; reusing it does not. Seed again so the
        # initial weights are the same either way.
        set_seed(cfg.train.seed)
        self.model = ImagePrior.from_config(cfg.model, layout)
        if cfg.model.code_embedding_init == "codebook":
            if self.tokenizer is None:
                raise ValueError("model.code_embedding_init=codebook needs the tokenizer's code vectors: build "
                                 "the task with PriorTask(cfg), or set model.code_embedding_init=normal")
            projection = torch.Generator().manual_seed(cfg.train.seed)
            self.model.init_code_embeddings(self.tokenizer.code_vectors(), projection)
        self.sampling = cfg.sampling.options(layout.conditional, cfg.model.class_dropout_prob > 0)
        self.model.sampling_defaults = replace(self.sampling, autoguidance_scale=None)   # the guide comes later
        self._guide: ImagePrior | None = None
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset

    def snapshot_steps(self) -> tuple[int, ...]:
        """The guide's step: the trainer saves the prior as it is then."""
        return () if self.config.guide_step is None else (self.config.guide_step,)

    def guide(self) -> ImagePrior | None:
        """The saved guide, once training has passed `guide_step` (None before, or without one);
        read from its snapshot once, then kept."""
        step = self.config.guide_step
        if self._guide is None and step is not None and snapshot_dir(self.config.output_dir, step).is_dir():
            self._guide = ImagePrior.from_pretrained(snapshot_dir(self.config.output_dir, step))
        return self._guide

    def with_guide(self, prior: ImagePrior) -> ImagePrior:
        """The prior to sample and save: with its guide and the full sampling defaults once the guide
        exists; before that, alone and without autoguidance."""
        guide = self.guide()
        if guide is None:
            prior.sampling_defaults = replace(self.sampling, autoguidance_scale=None)
            return prior
        prior = ImagePrior(prior.lm, prior.layout, guide.to(next(prior.parameters()).device))
        prior.sampling_defaults = self.sampling
        return prior

    def save_final(self, model, directory) -> None:
        prior = self.with_guide(model)
        if prior.guide is None and self.config.guide_step is not None:
            logger.warning("the prior is saved without its guide: training has not reached its guide step %d "
                           "(yet, or before a wall-clock cap), so it samples without autoguidance",
                           self.config.guide_step)
        prior.save_pretrained(directory)

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
        """Decoded samples with the sampling defaults (autoguidance once the guide exists): one
        row per class, or 64 unconditional samples."""
        n = self.config.preview_per_class
        labels = None
        if self.layout.conditional:
            labels = [c for c in range(min(self.layout.num_classes, 10)) for _ in range(n)]
        prior = self.with_guide(prior)
        with accelerator.autocast():
            codes = sample_codes(prior, len(labels) if labels else 64, labels, seed=0)
            self.tokenizer.to(accelerator.device)
            return self.tokenizer.decode(codes.to(accelerator.device)).float()


def main(argv: list[str] | None = None) -> dict[str, float]:
    return train_from_command_line(PriorTrainConfig, PriorTask, prog="stage2_prior.train",
                                   description="Train a GPT-style prior over a tokenizer's code grids; set tokenizer=PATH_OR_REPO_ID.", argv=argv)


cli = console_script(main)


if __name__ == "__main__":
    main()
