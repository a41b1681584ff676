"""The prior's token layout: which ids are image codes, class tokens, the null class and BOS.

    ids [0, K)            image codes (the tokenizer's codebook)
    ids [K, K + C)        one token per class            (class-conditional priors only)
    id  K + C             the null class, for guidance   (class-conditional priors only)
    id  last              BOS, the condition of unconditional sequences

A sequence is one condition token followed by the h*w codes in raster order. The layout is
saved beside the model as `token_layout.json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

LAYOUT_NAME = "token_layout.json"


@dataclass(frozen=True)
class TokenLayout:
    codebook_size: int
    grid: tuple[int, int]
    num_classes: int = 0                       # 0: unconditional
    class_names: tuple[str, ...] | None = field(default=None, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if self.codebook_size < 2 or self.num_classes < 0 or min(self.grid) < 1:
            raise ValueError(f"invalid token layout {self}")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def null_id(self) -> int | None:
        return self.codebook_size + self.num_classes if self.conditional else None

    @property
    def bos_id(self) -> int:
        return self.codebook_size + self.num_classes + (1 if self.conditional else 0)

    @property
    def vocab_size(self) -> int:
        return self.bos_id + 1

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def seq_len(self) -> int:
        return 1 + self.num_image_tokens

    def class_id(self, labels: torch.Tensor, validate: bool = True) -> torch.Tensor:
        """Class labels `[B]` (ints in [0, C)) -> their condition token ids. `validate=False` skips
        the range check, which waits for the device (training batches are checked once, at load)."""
        if not self.conditional:
            raise ValueError("this prior is unconditional: it takes no class labels (pass class_labels=None)")
        labels = torch.as_tensor(labels, dtype=torch.long)
        if validate and labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(
                f"class labels must lie in [0, {self.num_classes}), got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        return labels + self.codebook_size

    def condition_ids(self, labels: torch.Tensor | None, batch_size: int | None = None) -> torch.Tensor:
        """The first token of each sequence: the class token, or BOS for an unconditional prior."""
        if labels is None:
            if self.conditional:
                if batch_size is None:
                    raise ValueError("batch_size is needed for null-class conditions")
                return torch.full((batch_size,), self.null_id, dtype=torch.long)
            return torch.full((batch_size or 0,), self.bos_id, dtype=torch.long)
        return self.class_id(labels)

    def to_sequences(self, codes: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        """codes `[B, h, w]` + condition ids `[B]` -> token ids `[B, 1 + h*w]`."""
        if tuple(codes.shape[1:]) != self.grid:
            raise ValueError(f"codes have grid {tuple(codes.shape[1:])}, the layout expects {self.grid}")
        return torch.cat([conditions[:, None].to(codes.device), codes.flatten(1).long()], dim=1)

    def to_codes(self, sequences: torch.Tensor) -> torch.Tensor:
        """token ids `[B, 1 + h*w]` (or just the `h*w` image tokens) -> codes `[B, h, w]`."""
        image = sequences[:, -self.num_image_tokens:]
        if int(image.min()) < 0 or int(image.max()) >= self.codebook_size:
            raise ValueError("the image part of the sequences holds ids that are not image codes")
        return image.reshape(-1, *self.grid)

    def class_index(self, label: int | str) -> int:
        """A class given by index or by name -> its index."""
        if isinstance(label, str):
            if not self.class_names or label not in self.class_names:
                raise ValueError(f"unknown class name {label!r}; known: {list(self.class_names or [])}")
            return self.class_names.index(label)
        if int(label) != label:
            raise ValueError(f"class label {label!r} is not an integer")
        return int(label)

    def save(self, directory: str | Path) -> None:
        data = asdict(self)
        data["grid"] = list(self.grid)
        data["class_names"] = list(self.class_names) if self.class_names is not None else None
        data.update(null_id=self.null_id, bos_id=self.bos_id, vocab_size=self.vocab_size)
        Path(directory, LAYOUT_NAME).write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> "TokenLayout":
        path = Path(directory, LAYOUT_NAME)
        if not path.is_file():
            raise FileNotFoundError(f"{str(directory)!r} has no {LAYOUT_NAME}: it is not a saved image prior")
        data = json.loads(path.read_text())
        layout = cls(codebook_size=data["codebook_size"], grid=tuple(data["grid"]),
                     num_classes=data["num_classes"], class_names=data.get("class_names"))
        if (layout.bos_id, layout.vocab_size) != (data["bos_id"], data["vocab_size"]):
            raise ValueError(f"{path} is inconsistent: its ids do not follow from its sizes")
        return layout
