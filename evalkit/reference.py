"""Reference statistics of real images, cached on disk.

`reference_stats(network, data, split, num_images)` returns the features of `num_images`
real images of a split (all of them, or a fixed random subset), their mean and covariance,
and the logits when the network classifies. The result is cached in one safetensors file
under `cache_dir` (default `$XDG_CACHE_HOME/discrete-imagegen/eval`, i.e.
`~/.cache/discrete-imagegen/eval`), keyed by the feature network's name and weights hash,
the data layer's fingerprint of the split (source files, channels, image size and resize
mode), the number of images and the subset seed. Files are written to a temporary name and
renamed into place; a file that cannot be read or does not match its key is recomputed,
with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from trainkit.data import DataConfig, ImageData
from trainkit.files import save_state_dict

from .features import FeatureNetwork
from .metrics import GaussianStats, feature_stats

log = logging.getLogger(__name__)

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/discrete-imagegen/eval` (`~/.cache/discrete-imagegen/eval` when unset)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "discrete-imagegen" / "eval"


@dataclass
class ReferenceStats:
    """Features of real images and their Gaussian statistics, for one feature network."""

    network: FeatureNetwork
    dataset: str
    split: str
    num_images: int
    data_fingerprint: str
    stats: GaussianStats
    features: torch.Tensor            # [N, D] float32
    logits: torch.Tensor | None       # [N, K] float32, when the network classifies
    labels: torch.Tensor              # [N], -1 when unlabelled
    key: str
    path: Path | None = None
    reused: bool = False              # True when read from the cache

    def describe(self) -> dict:
        """What a figure computed against this reference depends on (for reports)."""
        return {"feature_network": self.network.fingerprint, "dataset": self.dataset, "split": self.split,
                "num_images": self.num_images}


def select_images(data: DataConfig, split: str, num_images: int | None = None, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images `[N, C, H, W]` and labels `[N]` of a split: all of it, or `num_images` of it
    chosen at random (fixed by `seed`, kept in split order)."""
    dataset = ImageData(data).split(split)
    total = len(dataset)
    if num_images is not None and not 1 <= num_images <= total:
        raise ValueError(f"asked for {num_images} reference images but split {split!r} of {data.dataset!r} "
                         f"holds {total}; choose at most {total}")
    if num_images is None or num_images == total:
        indices = torch.arange(total)
    else:
        indices = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(total)[:num_images]))
    if dataset.images_uint8 is not None:
        images = dataset.images_uint8[indices]
    else:
        floats, _ = dataset.get_batch(indices)
        images = ((floats + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return images, dataset.labels[indices]


def reference_key(network: FeatureNetwork, data: DataConfig, split: str, num_images: int | None, seed: int = 0
                  ) -> tuple[str, str]:
    """(cache key, data fingerprint) of a reference set, computed without decoding any image."""
    fingerprint = ImageData(data).fingerprint(split)
    text = json.dumps({"version": CACHE_VERSION, "network": network.fingerprint, "data": fingerprint,
                       "split": split, "num_images": num_images, "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest(), fingerprint


def cache_path(cache_dir: str | Path, network: FeatureNetwork, split: str, num_images: int | None, key: str) -> Path:
    return Path(cache_dir) / f"{network.name}-{split}-{num_images or 'all'}-{key[:16]}.safetensors"


def _read(path: Path, key: str, network: FeatureNetwork, num_images: int | None) -> dict | None:
    """The cached tensors and metadata when `path` holds a complete, consistent entry for `key`, else None."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        warnings.warn(f"reference statistics cache {path} is unreadable ({err}); recomputing it", stacklevel=3)
        return None
    problem = None
    n = tensors.get("features", torch.empty(0)).shape[0]
    d = network.feature_dim
    if meta.get("key") != key:
        problem = "its key does not match"
    elif not {"mean", "cov", "features", "labels"} <= set(tensors):
        problem = f"tensors missing (has {sorted(tensors)})"
    elif tuple(tensors["mean"].shape) != (d,) or tuple(tensors["cov"].shape) != (d, d) \
            or tuple(tensors["features"].shape) != (n, d) or tuple(tensors["labels"].shape) != (n,):
        problem = "tensor shapes do not match the feature network"
    elif num_images is not None and n != num_images:
        problem = f"it holds {n} images, not {num_images}"
    elif network.num_classes is not None and ("logits" not in tensors
                                              or tuple(tensors["logits"].shape) != (n, network.num_classes)):
        problem = "logits missing or of the wrong shape"
    elif not all(torch.isfinite(t).all() for k, t in tensors.items() if t.is_floating_point()):
        problem = "it holds non-finite values"
    if problem:
        warnings.warn(f"reference statistics cache {path} is inconsistent ({problem}); recomputing it", stacklevel=3)
        return None
    return {"tensors": tensors, "meta": json.loads(meta.get("description", "{}"))}


def reference_stats(
    network: FeatureNetwork,
    data: DataConfig,
    split: str = "train",
    num_images: int | None = 10_000,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> ReferenceStats:
    """Features and statistics of real images of `split` under `network`, from the cache or computed and cached.

    `num_images=None` takes the whole split; otherwise a random subset fixed by `seed`.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key, fingerprint = reference_key(network, data, split, num_images, seed)
    path = cache_path(cache_dir, network, split, num_images, key)
    cached = _read(path, key, network, num_images)
    if cached is not None:
        t = cached["tensors"]
        stats = GaussianStats(t["mean"], t["cov"], len(t["features"]))
        return ReferenceStats(network, data.dataset, split, len(t["features"]), fingerprint, stats,
                              t["features"], t.get("logits"), t["labels"], key, path, reused=True)
    images, labels = select_images(data, split, num_images, seed)
    log.info("computing %s reference features of %d %s images of %s", network.name, len(images), split, data.dataset)
    out = network.compute(images, batch_size=batch_size, progress=progress)
    stats = feature_stats(out.features)
    ref = ReferenceStats(network, data.dataset, split, len(images), fingerprint, stats, out.features, out.logits,
                         labels, key, path)
    tensors = {"mean": stats.mean, "cov": stats.cov, "features": out.features, "labels": labels}
    if out.logits is not None:
        tensors["logits"] = out.logits
    description = {**ref.describe(), "data_fingerprint": fingerprint, "seed": seed, "version": CACHE_VERSION}
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_state_dict(tensors, path, metadata={"key": key, "description": json.dumps(description)})
    return ref
