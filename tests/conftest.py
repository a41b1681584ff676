"""Test settings shared by every test module: explicit thread counts on a shared, noisy machine."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

torch.set_num_threads(1)

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# A tiny tokenizer recipe for 8x8 digits: one 2x downsampling -> a 4x4 grid over 32 codes.
TINY_TOKENIZER = [
    "model.base_channels=8", "model.channel_mult=[1,2]", "model.num_downsamples=1", "model.latent_channels=8",
    "model.codebook_size=32", "model.vq_restart_every=10", "train.batch_size=32", "train.warmup_steps=5",
    "train.lr=3e-3", "train.log_every=5", "train.eval_every=20", "train.checkpoint_every=20",
    "train.progress_bar=false", "train.max_minutes=null", "train.mixed_precision=no", "train.num_threads=1",
    "data.val_split=auto", "adversarial.weight=0",   # the recipe's discriminator: tests/test_adversarial.py
]


@pytest.fixture(scope="session")
def digits_parquet(tmp_path_factory) -> Path:
    """scikit-learn's 8x8 digits (1,797 real images, 10 classes) as train/test parquet files."""
    import datasets
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    folder = tmp_path_factory.mktemp("digits")
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[str(i) for i in range(10)])})
    for split, part in [("train", slice(0, 1500)), ("test", slice(1500, None))]:
        rows = {"image": [Image.fromarray(p, mode="L") for p in pixels[part]],
                "label": digits.target[part].tolist()}
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(folder / f"{split}-00000.parquet"))
    return folder


def free_port() -> int:
    """A TCP port nothing listens on now, for a launcher's rendezvous (chosen by the OS, so it never
    collides with the other servers and launches of the test run)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_module(args: list[str], env: dict[str, str | None] | None = None, timeout: int = 600, check: bool = True,
               launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run `python -m ...` (or a launcher such as `accelerate launch`) in a fresh process."""
    import os

    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None removes a variable
    cmd = (launcher or [sys.executable]) + args
    result = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if check:
        assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


TINY_PRIOR = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "train.batch_size=32",
    "train.warmup_steps=5", "train.lr=3e-3", "train.log_every=5", "train.eval_every=20",
    "train.checkpoint_every=20", "train.progress_bar=false", "train.max_minutes=null",
    "train.mixed_precision=no", "train.num_threads=1", "data.val_split=auto", "preview_per_class=2",
    "train.compile=false",   # the recipe compiles; test_short_conditional_run_nll_falls keeps that on
]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A small (untrained) VQ tokenizer for 8x8 grayscale images: a 4x4 grid over 32 codes."""
    import torch

    from stage1_tokenizer import ImageTokenizer, ImageTokenizerConfig

    torch.manual_seed(0)
    cfg = ImageTokenizerConfig(in_channels=1, image_size=8, base_channels=8, channel_mult=[1, 2],
                               num_downsamples=1, latent_channels=8, codebook_size=32, vq_kmeans_init=False)
    return ImageTokenizer(cfg).save_pretrained(tmp_path_factory.mktemp("tokenizer"))
