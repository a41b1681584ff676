"""Which rows serve as train and validation: split names, the source's split plan, the held-out part."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from trainkit.data.config import DataConfig

if TYPE_CHECKING:
    import datasets

    from trainkit.data.sources import Source

_SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}


def split_keyword(token: str) -> str | None:
    """"train", "validation" or "test" when `token` is a conventional name of it, else None."""
    token = token.lower()
    return next((split for split, words in _SPLIT_KEYWORDS.items() if token in words), None)


def find_split(name: str, available) -> str | None:
    """`name` itself or, for train/validation/test, a conventional alias of it."""
    if name in available:
        return name
    canonical = split_keyword(name)
    return next((s for s in available if canonical and split_keyword(s) == canonical), None)


@dataclass
class SplitPlan:
    """The source splits serving as train and validation."""

    train: str  # source split holding the training images
    val: str | None  # source split used for validation; None: holdout from train

    @classmethod
    def make(cls, cfg: DataConfig, source: Source) -> SplitPlan:
        names = list(source.splits)
        train = find_split("train", names) or (names[0] if len(names) == 1 else None)
        if train is None:
            raise ValueError(f"{source.description} has no 'train' split; available splits: {names}")
        if cfg.val_split == "holdout":
            return cls(train, None)
        if cfg.val_split == "auto":
            val = next((s for s in (find_split(n, names) for n in ("validation", "test")) if s and s != train), None)
            return cls(train, val)
        val = find_split(cfg.val_split, names)
        if val is None or val == train:
            raise ValueError(
                f"data.val_split={cfg.val_split!r} is not a separate split of {source.description}; "
                f"available splits: {names} (or use 'auto' / 'holdout')"
            )
        return cls(train, val)


def holdout_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic disjoint (train, val) index arrays, each sorted; depends only on n, fraction, seed."""
    if n < 2:
        raise ValueError(f"cannot hold out a validation part from a split of {n} image(s)")
    n_val = min(max(1, round(n * fraction)), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def split_rows(
    cfg: DataConfig, source: Source, plan: SplitPlan, split: str
) -> tuple[datasets.Dataset, np.ndarray | None, str]:
    """Rows of a requested split, the sorted row indices taken from them (None: all), and a description.

    "train" and the validation split ("val", or the source split serving as it) get the holdout
    and the max_*_samples caps; any other source split is returned whole.
    """
    named = find_split(split, source.splits)
    if split == "train":
        role = "train"
    elif split == "val" or named == plan.val or (named is None and split_keyword(split) == "validation"):
        role = "val"
    elif named is not None:
        return source.splits[named], None, named
    else:
        available = list(dict.fromkeys(["train", "val", *source.splits]))
        raise ValueError(f"split {split!r} not found in {source.description}; available: {available}")
    desc = plan.train if role == "train" or plan.val is None else plan.val
    rows, indices = source.splits[desc], None
    if plan.val is None:
        holdout = f"holdout({cfg.val_fraction},seed={cfg.split_seed})"
        train_idx, val_idx = holdout_indices(len(rows), cfg.val_fraction, cfg.split_seed)
        indices, desc = (train_idx, f"{desc}-{holdout}") if role == "train" else (val_idx, f"{desc}/{holdout}")
    limit = cfg.max_train_samples if role == "train" else cfg.max_val_samples
    if limit is not None and limit < (len(rows) if indices is None else len(indices)):
        indices = np.arange(limit) if indices is None else indices[:limit]
        desc += f"[:{limit}]"
    return rows, indices, desc
