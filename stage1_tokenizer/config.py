"""The tokenizer's configuration: one dataclass, serialised as `config.json`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ImageTokenizerConfig:
    """Architecture and quantizer of an `ImageTokenizer`.

    The encoder maps `[B, in_channels, H, W]` to a `[B, H / 2**num_downsamples, W / ...]`
    grid; `channel_mult` has one entry per resolution level (`num_downsamples + 1`).
    Fields prefixed `vq_` apply to `quantizer="vq"`, `gumbel_` to `quantizer="gumbel"`.
    """

    in_channels: int = 1
    image_size: int = 28
    base_channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    num_downsamples: int = 2
    latent_channels: int = 64
    norm: Literal["group", "none"] = "group"   # normalisation inside the residual blocks
    # "wide": each code sees most of the image; "local": only its own patch plus a small margin
    # (see `networks.Encoder`), so blank patches always get the same code and the prior has less to guess.
    encoder_context: Literal["wide", "local"] = "wide"
    # Where the decoder narrows from one level's width to the next (higher-resolution) one's:
    # "block": in the next level's first residual block, the conv after each 2x upsampling keeping
    # the lower level's width (as in taming-transformers); "upsample": in that conv itself, so every
    # conv at the higher resolution runs at the narrower width (fewer FLOPs per step).
    decoder_narrowing: Literal["block", "upsample"] = "block"
    quantizer: Literal["vq", "gumbel"] = "vq"
    codebook_size: int = 512
    recon_loss: Literal["mse", "l1"] = "mse"
    # RGB only: weight of the reconstruction error along the two chroma axes (orthogonal to grey)
    # against the grey axis; 1 is the plain RGB loss. Above 1, colour is learned sooner.
    chroma_weight: float = 1.0
    # Weight of a phase-blind term added to the reconstruction loss: the mean absolute difference
    # of the images' amplitude spectra (`model.spectrum_loss`). 0 leaves it out.
    spectrum_weight: float = 0.0
    # Weight of a mean-absolute-error term added to an "mse" reconstruction loss (chroma-weighted
    # as it is). 0 leaves it out.
    l1_weight: float = 0.0

    # VQ-VAE: nearest-neighbour lookup with a straight-through gradient.
    vq_beta: float = 0.25                 # commitment weight, on ||z_e - sg(e)||^2
    vq_codebook_dim: int | None = None    # low-dimensional lookup space (projection in/out); None = latent_channels
    vq_l2_normalize: bool = False         # look up l2-normalised vectors (cosine similarity)
    vq_ema: bool = True                   # EMA codebook updates instead of a codebook loss
    vq_ema_decay: float = 0.99
    vq_kmeans_init: bool = True           # initialise the codebook by k-means on the first batch
    vq_kmeans_iters: int = 10
    vq_restart_threshold: float = 1.0     # with vq_ema: codes whose EMA usage count falls below this restart
    vq_restart_every: int = 50            # training steps between dead-code checks (0 = never)
    vq_rotation_trick: bool = False       # rotate gradients onto the codes instead of passing them straight through

    # Gumbel-softmax dVAE: relaxed categorical posterior, KL to a uniform prior.
    gumbel_tau_start: float = 1.0
    gumbel_tau_end: float = 1.0 / 16
    gumbel_tau_steps: int = 5000          # exponential anneal length, in training steps
    gumbel_hard: bool = False             # straight-through one-hot samples
    gumbel_kl_weight: float = 1e-3
    gumbel_kl_warmup_steps: int = 1000
    gumbel_diversity_weight: float = 0.0  # pushes up the entropy of the batch's average posterior
    gumbel_logit_scale: float = 1.0

    def __post_init__(self):
        if self.encoder_context not in ("wide", "local"):
            raise ValueError(f"encoder_context must be 'wide' or 'local', got {self.encoder_context!r}")
        if self.decoder_narrowing not in ("block", "upsample"):
            raise ValueError(f"decoder_narrowing must be 'block' or 'upsample', got {self.decoder_narrowing!r}")
        if self.quantizer not in ("vq", "gumbel"):
            raise ValueError(f"quantizer must be 'vq' or 'gumbel', got {self.quantizer!r}")
        if len(self.channel_mult) != self.num_downsamples + 1:
            raise ValueError(
                f"channel_mult needs one entry per resolution level (num_downsamples + 1 = "
                f"{self.num_downsamples + 1}), got {self.channel_mult}"
            )
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {self.in_channels}")
        if self.image_size % self.downsample_factor:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by the downsampling factor "
                f"{self.downsample_factor} (2**num_downsamples)"
            )
        if self.chroma_weight <= 0:
            raise ValueError(f"chroma_weight must be positive, got {self.chroma_weight}")
        if self.spectrum_weight < 0:
            raise ValueError(f"spectrum_weight must be >= 0 (0 leaves the term out), got {self.spectrum_weight}")
        if self.l1_weight < 0:
            raise ValueError(f"l1_weight must be >= 0 (0 leaves the term out), got {self.l1_weight}")
        if self.l1_weight and self.recon_loss == "l1":
            raise ValueError("l1_weight adds an L1 term to the mse loss, but recon_loss is already l1; "
                             "set recon_loss=mse to mix the two, or l1_weight=0")
        if self.codebook_size < 2:
            raise ValueError(f"codebook_size must be at least 2, got {self.codebook_size}")

    @property
    def downsample_factor(self) -> int:
        return 2**self.num_downsamples

    @property
    def grid_size(self) -> tuple[int, int]:
        side = self.image_size // self.downsample_factor
        return (side, side)
