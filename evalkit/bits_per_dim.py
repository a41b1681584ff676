"""The two-stage variational bound on the likelihood of test images, in bits per dimension.

With the tokenizer's codes as a point-mass posterior `q(z | x)`, the bound is

    bpd(x) = [-log p(x | z_q) - log p(z_q | y)] / (D ln 2),   z_q = encode(x),  D = C*H*W,

an upper bound on `-log2 p(x | y) / D` (`y` is the image's class for a class-conditional prior;
an unconditional prior reads its condition token). `p(x | z)` is the decoder as a discretised
logistic (`stage1_tokenizer.likelihood`) whose per-channel scale is fitted on another split;
`p(z | y)` is the prior's NLL of the codes (`stage2_prior.evaluate.bits_per_token`).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.utils.data import DataLoader

from pipelines import check_components_fit
from stage1_tokenizer.likelihood import fit_log_scale, reconstruction_nll
from stage2_prior.evaluate import bits_per_token
from trainkit.data import DataConfig, ImageData, ImageDataset

from .reference import select_images

HOLDOUT = "holdout"      # the deterministic part held out of the train split (data.val_fraction)


def _split_sources(data: DataConfig, split: str, fit_split: str) -> list[tuple[DataConfig, str]]:
    """The data settings and served split name of `split` and of `fit_split`. When either is
    "holdout" both are read with the holdout taken out of train, so "train" is disjoint from it."""
    if HOLDOUT in (split, fit_split):
        data = dataclasses.replace(data, val_split=HOLDOUT)
    return [(data, "val" if name == HOLDOUT else name) for name in (split, fit_split)]


def check_splits(data: DataConfig, split: str, fit_split: str) -> None:
    """Raise a ValueError unless `split` and `fit_split` exist and are different images."""
    scored, fit = (ImageData(config).fingerprint(served) for config, served in _split_sources(data, split, fit_split))
    if scored == fit:
        raise ValueError(f"the decoder's scale must be fitted on other images than the ones scored, but the fit "
                         f"split {fit_split!r} is the test split {split!r}; fit on {HOLDOUT!r} (held out of train) "
                         "or another split")


def _images(source: tuple[DataConfig, str], num_images: int | None, seed: int) -> ImageDataset:
    images, labels = select_images(*source, num_images, seed)
    return ImageDataset(images, labels)


@torch.no_grad()
def _reconstruct(tokenizer, dataset: ImageDataset, batch_size: int):
    """(images, codes, reconstructions, labels) batch by batch, on the tokenizer's device."""
    device = next(tokenizer.parameters()).device
    for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        images = images.to(device)
        codes = tokenizer.encode(images)
        yield images, codes, tokenizer.decode(codes).float(), labels


def _check_components(prior, tokenizer, data: DataConfig) -> None:
    check_components_fit(tokenizer, prior)
    if data.channels != tokenizer.config.in_channels:
        raise ValueError(f"the data has {data.channels} channel(s) but the tokenizer takes "
                         f"{tokenizer.config.in_channels}: set data.channels to match")


@torch.no_grad()
def bits_per_dim(prior, tokenizer, data: DataConfig, split: str = "test", fit_split: str = HOLDOUT,
                 max_images: int | None = None, max_fit_images: int | None = None, batch_size: int = 256,
                 seed: int = 0) -> dict:
    """The bound in bits per dimension, averaged over `max_images` images of `split` (all when
    None), with its reconstruction and prior parts. The decoder's scale (one logistic scale per
    channel, on the [-1, 1] pixel range) is fitted by maximum likelihood on `max_fit_images`
    images of `fit_split`, which must hold other images ("holdout": the part held out of train;
    "train" then means the rest of it).
    Subsets are random, fixed by `seed`."""
    _check_components(prior, tokenizer, data)
    check_splits(data, split, fit_split)
    tokenizer = tokenizer.eval()
    test_source, fit_source = _split_sources(data, split, fit_split)
    fit_set = _images(fit_source, max_fit_images, seed)
    fitted = [(x.cpu(), recon.cpu()) for x, _codes, recon, _labels in _reconstruct(tokenizer, fit_set, batch_size)]
    log_scale = fit_log_scale(torch.cat([x for x, _ in fitted]), torch.cat([r for _, r in fitted]))
    del fitted

    test_set = _images(test_source, max_images, seed)
    if prior.layout.conditional and bool((test_set.labels < 0).any()):
        raise ValueError(f"a class-conditional prior scores codes given their class, but split {split!r} of "
                         f"{data.dataset!r} has unlabelled images; use a labelled split")
    recon_nats, grids = [], []
    for x, codes, recon, labels in _reconstruct(tokenizer, test_set, batch_size):
        recon_nats.append(reconstruction_nll(x, recon, log_scale.to(x.device)).double().cpu())
        grids.append((codes, labels.to(codes.device)))
    prior_bits, n = bits_per_token(prior, grids)

    dims = math.prod(test_set.image_shape)
    tokens = math.prod(prior.layout.grid)
    recon_bpd = float(torch.cat(recon_nats).mean()) / (dims * math.log(2))
    prior_bpd = prior_bits * tokens / dims
    return {"value": recon_bpd + prior_bpd, "unit": "bits per dim",
            "parts": {"reconstruction": recon_bpd, "prior": prior_bpd},
            "scale": [float(s) for s in log_scale.exp()],
            "scale_fit": {"distribution": "discretised logistic", "dataset": data.dataset, "split": fit_split,
                          "num_images": len(fit_set)},
            "dims_per_image": dims, "tokens_per_image": tokens,
            "reference": {"dataset": data.dataset, "split": split, "num_images": n}, "num_samples": n}
