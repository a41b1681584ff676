"""`ImagePrior`: a `transformers` causal LM over token grids, plus its token layout.

The language model is a real `LlamaForCausalLM` (RoPE positions) or `GPT2LMHeadModel`
(learned absolute positions) built from `PriorConfig`, so a saved prior directory loads with
`AutoModelForCausalLM.from_pretrained` and works with `generate` like any other. The prior's
sampling defaults live in the language model's `generation_config` (saved as
`generation_config.json`; see `stage2_prior.options`). A prior may carry a guide for
autoguidance: a weaker prior over the same layout (for one, its own weights early in training),
saved in its `guide/` folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from safetensors import SafetensorError

from trainkit.files import CheckpointError
from trainkit.hub import HubModel

from .layout import TokenLayout
from .options import (SamplingOptions, generation_config, load_generation_config, read_sampling_defaults,
                      save_generation_config)

GUIDE_FOLDER = "guide"


@dataclass
class PriorConfig:
    """Architecture of the prior's transformer (the `model:` section of a prior recipe)."""

    arch: Literal["llama", "gpt2"] = "llama"   # llama: RoPE positions; gpt2: learned absolute positions
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 8
    intermediate_size: int | None = None       # None: 4x hidden (gpt2), ~8/3x hidden rounded to 64 (llama)
    dropout: float = 0.0
    class_dropout_prob: float = 0.1            # conditional training: class -> null token, for guidance
    tie_word_embeddings: bool = False
    # Attention kernel while training. For these short sequences on a CPU, the plain ("eager")
    # attention trains faster than "sdpa" (figures in benchmarks/README.md). Saved priors load with
    # transformers' default.
    attn_implementation: Literal["eager", "sdpa"] = "eager"
    # The image codes' input embeddings at the start of training: "normal", the architecture's own
    # random init, or "codebook", a fixed random projection of the tokenizer's code vectors, so that
    # codes the decoder reads alike start alike (`ImagePrior.init_code_embeddings`).
    code_embedding_init: Literal["normal", "codebook"] = "normal"

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if not 0 <= self.class_dropout_prob < 1:
            raise ValueError(f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}")


def build_causal_lm(config: PriorConfig, layout: TokenLayout):
    """A freshly initialised `transformers` causal LM sized for `layout`."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    # Sequences never end early and are never padded: EOS is BOS and there is no pad id.
    common = dict(vocab_size=layout.vocab_size, bos_token_id=layout.bos_id, eos_token_id=layout.bos_id,
                  pad_token_id=None, tie_word_embeddings=config.tie_word_embeddings,
                  attn_implementation=config.attn_implementation)
    if config.arch == "llama":
        inner = config.intermediate_size or 64 * math.ceil(config.hidden_size * 8 / 3 / 64)
        hf = LlamaConfig(hidden_size=config.hidden_size, intermediate_size=inner,
                         num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
                         num_key_value_heads=config.num_heads, max_position_embeddings=layout.seq_len,
                         attention_dropout=config.dropout, **common)
        return LlamaForCausalLM(hf)
    hf = GPT2Config(n_embd=config.hidden_size, n_layer=config.num_layers, n_head=config.num_heads,
                    n_inner=config.intermediate_size, n_positions=layout.seq_len, resid_pdrop=config.dropout,
                    embd_pdrop=config.dropout, attn_pdrop=config.dropout, **common)
    return GPT2LMHeadModel(hf)


# The repeated transformer block of each architecture (FSDP's units, Muon's matrices)
BLOCK_CLASSES = ("LlamaDecoderLayer", "GPT2Block")


class ImagePrior(HubModel, nn.Module):
    """Causal LM + `TokenLayout`. `forward(codes, labels)` gives the NLL of the image tokens.

    `guide`: an optional weaker `ImagePrior` over the same layout, which sampling with an
    `autoguidance_scale` > 0 steers away from (see `SamplingOptions`); it is not trained."""

    def __init__(self, lm: nn.Module, layout: TokenLayout, guide: "ImagePrior | None" = None):
        super().__init__()
        self.lm = lm
        self.layout = layout
        if lm.config.vocab_size != layout.vocab_size:
            raise ValueError(
                f"the language model has {lm.config.vocab_size} ids but the token layout needs {layout.vocab_size}"
            )
        if guide is not None and guide.layout != layout:
            raise ValueError(f"the guide's token layout {guide.layout} is not the prior's {layout}: a guide must be "
                             "a prior over the same codes and classes (e.g. the prior's own early weights)")
        self.guide = guide
        # Through the setter: the language model's generation config is rewritten with the settings
        # that make `generate` emit exactly one grid, keeping the sampling defaults it holds.
        self.sampling_defaults = read_sampling_defaults(lm.generation_config)

    @classmethod
    def from_config(cls, config: PriorConfig, layout: TokenLayout) -> "ImagePrior":
        return cls(build_causal_lm(config, layout), layout)

    @torch.no_grad()
    def init_code_embeddings(self, vectors: torch.Tensor, generator: torch.Generator | None = None) -> None:
        """Set the image codes' input embeddings to `vectors [K, D]` (the tokenizer's code vectors),
        centred and mapped to the embedding width by a random Gaussian matrix drawn from `generator`,
        which keeps their distances up to a common factor; scaled to the embeddings' present spread.
        The class, null and BOS tokens keep theirs."""
        table = self.lm.get_input_embeddings().weight
        size = self.layout.codebook_size
        if vectors.ndim != 2 or vectors.shape[0] != size:
            raise ValueError(f"need one vector per image code, [{size}, D]; got {list(vectors.shape)}")
        vectors = vectors.float().cpu()
        projection = torch.randn(vectors.shape[1], table.shape[1], generator=generator)
        rows = (vectors - vectors.mean(0)) @ projection
        rows = rows * (table[:size].float().std() / rows.std().clamp_min(1e-12))
        table[:size] = rows.to(table)

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The transformer blocks' weight matrices (attention and MLP projections): what
        `train.optimizer=muon` trains with Muon. Embeddings, output layer and norms are not among them."""
        blocks = [m for m in self.lm.modules() if type(m).__name__ in BLOCK_CLASSES]
        return [p for m in blocks for p in m.parameters() if p.ndim == 2]

    def sequences(self, codes: torch.Tensor, labels: torch.Tensor | None, drop_class_prob: float = 0.0,
                  generator: torch.Generator | None = None, validate: bool = True) -> torch.Tensor:
        """Token ids `[B, 1 + h*w]`; with `drop_class_prob`, classes are replaced by the null token."""
        layout = self.layout
        if layout.conditional:
            if labels is None:
                raise ValueError("a class-conditional prior needs class labels for training")
            conditions = layout.class_id(labels, validate=validate).to(codes.device)
            if drop_class_prob > 0:
                drop = torch.rand(conditions.shape, generator=generator, device=codes.device) < drop_class_prob
                conditions = torch.where(drop, torch.full_like(conditions, layout.null_id), conditions)
        else:
            conditions = layout.condition_ids(None, codes.shape[0]).to(codes.device)
        return layout.to_sequences(codes, conditions)

    def image_nll(self, codes: torch.Tensor, labels: torch.Tensor | None = None, drop_class_prob: float = 0.0,
                  validate: bool = True) -> torch.Tensor:
        """NLL per image `[B]`, in nats per image token, given the condition (which is never a target).
        `validate=False` skips the range checks of codes and labels, which wait for the device."""
        if codes.ndim != 3 or (validate and (int(codes.min()) < 0 or int(codes.max()) >= self.layout.codebook_size)):
            raise ValueError(f"codes must be [B, h, w] ids in [0, {self.layout.codebook_size})")
        ids = self.sequences(codes, labels, drop_class_prob, validate=validate)
        logits = self.lm(input_ids=ids[:, :-1]).logits            # position t predicts token t + 1
        nll = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")
        return nll.mean(1)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None, drop_class_prob: float = 0.0,
                validate: bool = True) -> torch.Tensor:
        """Mean NLL (nats per image token) of a batch: the training loss."""
        return self.image_nll(codes, labels, drop_class_prob, validate=validate).mean()

    # ---------------------------------------------------------------- sampling defaults

    @property
    def sampling_defaults(self) -> SamplingOptions:
        """The defaults of `sample_codes` (and of a pipeline built on this prior) for the options a
        call leaves unset, read from `self.lm.generation_config`; assign a `SamplingOptions`
        (no seed or batch size) to change them, e.g. the guidance scale of the training previews."""
        return read_sampling_defaults(self.lm.generation_config)

    @sampling_defaults.setter
    def sampling_defaults(self, defaults: SamplingOptions) -> None:
        self.lm.generation_config = generation_config(self.layout, defaults, base=self.lm.generation_config)

    # ---------------------------------------------------------------- persistence

    def generation_config_to_save(self, defaults: SamplingOptions | None = None):
        """The generation config a save writes: `defaults` (None: the prior's own) with the guide
        declared, as a default autoguidance scale (0 at least) with a guide and none without."""
        defaults = self.sampling_defaults if defaults is None else defaults
        declared = (defaults.autoguidance_scale or 0.0) if self.guide is not None else None
        return generation_config(self.layout, replace(defaults, autoguidance_scale=declared),
                                 base=self.lm.generation_config)

    def _save_pretrained(self, save_directory: Path) -> None:
        """`config.json` + `model.safetensors` (transformers format) + `token_layout.json` +
        `generation_config.json` (the sampling defaults) + the guide, if any, in `guide/`.
        The generation config declares the guide (a default autoguidance scale, 0 at least),
        so that a `guide/` folder left by an earlier save is never taken for this prior's."""
        self.lm.save_pretrained(save_directory, safe_serialization=True)
        self.layout.save(save_directory)
        save_generation_config(save_directory, self.generation_config_to_save())
        if self.guide is not None:
            (save_directory / GUIDE_FOLDER).mkdir()
            self.guide._save_pretrained(save_directory / GUIDE_FOLDER)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str | torch.device = "cpu") -> "ImagePrior":
        from transformers import AutoModelForCausalLM

        directory = Path(model_id)
        layout = TokenLayout.load(directory)
        try:
            lm, info = AutoModelForCausalLM.from_pretrained(directory, output_loading_info=True)
        except (OSError, ValueError, SafetensorError) as err:
            raise CheckpointError(
                f"cannot load the prior's language model from {str(directory)!r} ({err}); its config.json or "
                "model.safetensors is missing, truncated or corrupted: re-save or re-download it"
            ) from None
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if problems:
            raise CheckpointError(f"weights in {str(directory)!r} do not match the model's config: {problems}")
        stored = load_generation_config(directory)     # None for priors saved before it existed
        if stored is not None:
            lm.generation_config = stored
        guide = None
        if read_sampling_defaults(lm.generation_config).autoguidance_scale is not None:   # saved with a guide
            if not (directory / GUIDE_FOLDER).is_dir():
                raise CheckpointError(f"the prior in {str(directory)!r} was saved with a guide, but its "
                                      f"{GUIDE_FOLDER}/ folder is missing: re-save or re-download the whole directory")
            guide = cls._from_pretrained(model_id=str(directory / GUIDE_FOLDER), map_location=map_location)
        return cls(lm, layout, guide).to(map_location).eval()
