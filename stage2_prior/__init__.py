"""Stage 2: a GPT-style prior over the tokenizer's code grids."""

from .layout import TokenLayout
from .model import ImagePrior, PriorConfig, build_causal_lm
from .options import SamplingOptions
from .sampling import sample_codes

__all__ = ["ImagePrior", "PriorConfig", "SamplingOptions", "TokenLayout", "build_causal_lm", "sample_codes"]
