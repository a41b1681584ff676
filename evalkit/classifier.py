"""A small CNN classifier used as a domain feature network, and the command that trains it.

    python -m evalkit.classifier --output evalkit/weights

trains on the train split of Fashion-MNIST (or `--dataset`), measures accuracy on the test
split once at the end, and writes `<name>.safetensors` plus `<name>.json` (architecture,
class names, test accuracy, training settings) into `--output`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.config import ConfigError, from_dict, to_dict
from trainkit.files import CheckpointError, atomic_write_text, file_sha256, load_state_dict_strict, save_state_dict
from trainkit.hub import HubModel

DEFAULT_NAME = "fashion_mnist_classifier"
FORMAT_VERSION = 1


@dataclass
class ClassifierConfig:
    """Architecture of a `SmallCNN`: stages of 3x3 conv-BN-ReLU blocks, 2x max-pooling between stages,
    global average pooling to the feature vector, then dropout and a linear head."""

    in_channels: int = 1
    image_size: int = 28                 # inputs of another size are resized to this
    num_classes: int = 10
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])  # channels of each stage
    blocks_per_stage: list[int] = field(default_factory=lambda: [2, 2, 1])
    dropout: float = 0.2
    class_names: list[str] | None = None

    def __post_init__(self):
        if len(self.widths) != len(self.blocks_per_stage) or not self.widths:
            raise ValueError(f"widths {self.widths} and blocks_per_stage {self.blocks_per_stage} "
                             "must be non-empty lists of equal length")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]


class SmallCNN(HubModel, nn.Module):
    """Images `[B, C, H, W]` in [0, 1] -> (penultimate features `[B, D]`, logits `[B, num_classes]`).

    Saved as `<name>.safetensors` (float32) and `<name>.json` (architecture, the sha256 of the
    weights file, and `info`: class names, test accuracy, training settings), `name` being
    `DEFAULT_NAME` unless given to `save_pretrained` / `from_pretrained`.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        self.info: dict = {}
        layers: list[nn.Module] = []
        channels = config.in_channels
        for stage, (width, blocks) in enumerate(zip(config.widths, config.blocks_per_stage)):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(blocks):
                layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                channels = width
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(channels, config.num_classes)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(images * 2 - 1).mean(dim=(2, 3))
        return features, self.head(self.dropout(features))

    def _save_pretrained(self, save_directory: Path, name: str = DEFAULT_NAME, info: dict | None = None) -> None:
        weights, config = weights_paths(save_directory, name)
        save_state_dict({k: v.float() if v.is_floating_point() else v for k, v in self.state_dict().items()},
                        weights)
        payload = {"format_version": FORMAT_VERSION, "architecture": "SmallCNN", "config": to_dict(self.config),
                   "weights_sha256": file_sha256(weights), **(self.info if info is None else info)}
        atomic_write_text(config, json.dumps(payload, indent=2) + "\n")
        for path in (weights, config):
            path.chmod(0o644)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, map_location: str | torch.device = "cpu", name: str = DEFAULT_NAME
                         ) -> "SmallCNN":
        model, _ = load_classifier(model_id, name)
        return model.to(map_location)


# ----------------------------------------------------------------------------- files


def weights_paths(directory: str | Path, name: str = DEFAULT_NAME) -> tuple[Path, Path]:
    """(`<name>.safetensors`, `<name>.json`) inside `directory`."""
    directory = Path(directory)
    return directory / f"{name}.safetensors", directory / f"{name}.json"


_LOAD_HINT = "retrain it with `python -m evalkit.classifier --output DIR` or reinstall the package that ships it"
_DESCRIPTION_KEYS = ("format_version", "architecture", "config", "weights_sha256")


def save_classifier(model: SmallCNN, directory: str | Path, name: str = DEFAULT_NAME, info: dict | None = None
                    ) -> tuple[Path, Path]:
    """Write the weights (float32 safetensors) and the JSON description beside them, atomically."""
    model.save_pretrained(directory, name=name, info=info)
    return weights_paths(directory, name)


def load_classifier(directory: str | Path, name: str = DEFAULT_NAME) -> tuple[SmallCNN, dict]:
    """A `SmallCNN` loaded strictly from the local `directory`, in eval mode, and its JSON description."""
    weights, config_path = weights_paths(directory, name)
    if not weights.is_file() or not config_path.is_file():
        missing = weights if not weights.is_file() else config_path
        raise CheckpointError(f"classifier file {str(missing)!r} not found; {_LOAD_HINT}")
    try:
        info = json.loads(config_path.read_text())
        config = from_dict(ClassifierConfig, info["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError, ValueError) as err:
        raise CheckpointError(f"{str(config_path)!r} is not a valid classifier description ({err}); "
                              f"{_LOAD_HINT}") from None
    model = SmallCNN(config)
    try:
        load_state_dict_strict(model, weights)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; {_LOAD_HINT}") from None
    digest = file_sha256(weights)
    if info.setdefault("weights_sha256", digest) != digest:
        raise CheckpointError(f"weights file {str(weights)!r} is not the one described by {str(config_path)!r} "
                              f"(sha256 {digest[:16]}..., recorded {str(info['weights_sha256'])[:16]}...): it was "
                              f"corrupted or replaced; {_LOAD_HINT}")
    model.info = {k: v for k, v in info.items() if k not in _DESCRIPTION_KEYS}
    return model.eval(), info


# ----------------------------------------------------------------------------- training


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 2, flip: bool = True) -> torch.Tensor:
    """Random crops of the zero-padded images (shifts of up to `pad` pixels) and random horizontal flips."""
    b, c, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(b, c, h, w)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(b, c, h, w)
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        flipped = torch.rand(b, generator=generator) < 0.5
        out = torch.where(flipped[:, None, None, None], out.flip(-1), out)
    return out


@torch.no_grad()
def accuracy(model: SmallCNN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of `model` on uint8 images `[N, C, H, W]`."""
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        _, logits = model(images[start:start + batch_size].float() / 255)
        correct += int((logits.argmax(1) == labels[start:start + batch_size]).sum())
    return correct / max(len(images), 1)


def train_classifier(
    dataset: str = "fashion_mnist",
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 5e-4,
    seed: int = 0,
    precision: str = "bf16",
    config: ClassifierConfig | None = None,
    max_train_samples: int | None = None,
    log_every: int = 100,
) -> tuple[SmallCNN, dict]:
    """Train a `SmallCNN` on the train split of `dataset`; returns the model and a summary with the test accuracy.

    AdamW with a one-cycle schedule (linear warm-up, cosine decay), random crops and horizontal
    flips. The test split is used once, after training, for the reported accuracy.
    """
    from trainkit.data import DataConfig, ImageData

    if precision not in ("bf16", "no"):
        raise ValueError(f"precision must be 'bf16' or 'no', got {precision!r}")
    torch.manual_seed(seed)
    data = ImageData(DataConfig(dataset=dataset, channels=(config.in_channels if config else 1),
                                max_train_samples=max_train_samples)).splits()
    if not data.num_classes:
        raise ValueError(f"the data {dataset!r} has no class labels: a classifier needs labelled images")
    test = ImageData(DataConfig(dataset=dataset, channels=data.channels)).split("test")
    images, labels = _uint8(data.train), data.train.labels
    config = config or ClassifierConfig()
    config = ClassifierConfig(**{**to_dict(config), "in_channels": data.channels, "image_size": data.image_size[0],
                                 "num_classes": data.num_classes, "class_names": data.class_names})
    if data.image_size[0] != data.image_size[1]:
        raise ValueError(f"the classifier takes square images, the data gives {data.image_size}")
    model = SmallCNN(config)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = len(images) // batch_size
    total = epochs * steps_per_epoch
    warmup = max(1, total // 20)

    def lr_factor(s: int) -> float:
        return (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(steps_per_epoch):
            index = order[i * batch_size:(i + 1) * batch_size]
            x = augment(images[index].float() / 255, generator)
            y = labels[index]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                _, logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if log_every and step % log_every == 0:
                print(f"epoch {epoch + 1}/{epochs} step {step}/{total} loss {loss_sum / seen:.4f} "
                      f"train acc {correct / seen:.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
        print(f"epoch {epoch + 1}/{epochs}: train loss {loss_sum / max(seen, 1):.4f}, train acc "
              f"{correct / max(seen, 1):.4f} ({time.perf_counter() - start:.0f}s)", flush=True)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    test_acc = accuracy(model, _uint8(test), test.labels)
    summary = {
        "test_accuracy": test_acc,
        "test_images": len(test),
        "dataset": dataset,
        "train_images": len(images),
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                  "seed": seed, "precision": precision, "augmentation": "random crop (pad 2) + horizontal flip",
                  "threads": torch.get_num_threads(), "seconds": round(seconds, 1),
                  "cpu_seconds": round(cpu_seconds, 1)},
    }
    return model.eval(), summary


def _uint8(dataset) -> torch.Tensor:
    """A dataset's images as one uint8 tensor `[N, C, H, W]`."""
    if dataset.images_uint8 is not None:
        return dataset.images_uint8
    images, _ = dataset.get_batch(torch.arange(len(dataset)))
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="evalkit.classifier", description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, help="directory for <name>.safetensors and <name>.json")
    parser.add_argument("--name", default=DEFAULT_NAME, help="file name stem of the weights and description")
    parser.add_argument("--dataset", default="fashion_mnist", help="a labelled data source (see data.dataset)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["bf16", "no"], default="bf16", help="autocast dtype for training")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--max-train-samples", type=int, default=None, help="train on the first N images only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, summary = train_classifier(args.dataset, args.epochs, args.batch_size, args.lr, args.weight_decay,
                                      args.seed, args.precision, max_train_samples=args.max_train_samples)
    weights, config = save_classifier(model, args.output, args.name, summary)
    train = summary["train"]
    print(f"test accuracy {summary['test_accuracy']:.4f} on {summary['test_images']} images; "
          f"{train['seconds']:.0f}s of training ({train['cpu_seconds']:.0f}s CPU); "
          f"wrote {weights} ({weights.stat().st_size / 1024:.0f} KB) and {config}")
    return summary


if __name__ == "__main__":
    main()
