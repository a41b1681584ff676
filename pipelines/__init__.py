"""Pipelines: a tokenizer and a prior used, saved, loaded and pushed as one."""

from .card import write_model_card
from .pipeline import Pipeline, check_components_fit

__all__ = ["Pipeline", "check_components_fit", "write_model_card"]
