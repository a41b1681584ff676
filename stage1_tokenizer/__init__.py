"""Stage 1: the discrete image tokenizer (VQ-VAE or Gumbel-softmax dVAE)."""

from .config import ImageTokenizerConfig
from .model import ImageTokenizer, TokenizerOutput
from .quantizers import GumbelQuantizer, VectorQuantizer

__all__ = ["ImageTokenizer", "ImageTokenizerConfig", "TokenizerOutput", "VectorQuantizer", "GumbelQuantizer"]
