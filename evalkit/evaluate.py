"""Metrics of a tokenizer or of a whole pipeline, and their report table (`imagegen-evaluate`
in `commands.evaluate` is the command line over these functions).

    imagegen-evaluate tokenizer runs/tokenizer_vq/final --split test --metrics mse,psnr,usage,rfid,accuracy
    imagegen-evaluate pipeline runs/pipeline --num-samples 10000 --metrics fid,is,pr,accuracy,nll
    imagegen-evaluate pipeline runs/pipeline --metrics bpd --nll-split test --bpd-fit-split holdout

Every figure in the report names the feature network (with its weights hash), the reference
set (dataset, split, number of images) and the number of samples it was computed from.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import DataLoader

from pipelines import check_components_fit
from stage2_prior.options import SamplingOptions
from trainkit.data import DataConfig, ImageDataset
from trainkit.images import to_unit_range

from .bits_per_dim import bits_per_dim, check_splits
from .features import FeatureNetwork, InceptionFID, check_images, get_feature_network
from .metrics import class_accuracy, fid, inception_score, precision_recall
from .reference import ReferenceStats, reference_stats, select_images

TOKENIZER_METRICS = ("mse", "psnr", "usage", "rfid", "pr", "accuracy", "inception_rfid")
PIPELINE_METRICS = ("fid", "is", "pr", "accuracy", "inception_fid", "nll", "bpd")
IMAGE_METRICS = ("fid", "is", "pr", "accuracy", "inception_fid")
# A tokenizer's reconstructions are measured as images against their originals.
RECONSTRUCTION_AS_IMAGE_METRIC = {"rfid": "fid", "pr": "pr", "accuracy": "accuracy", "inception_rfid": "inception_fid"}


def parse_metrics(text: str | Sequence[str], allowed: Sequence[str]) -> list[str]:
    """`"fid,is"` -> `["fid", "is"]`, checked against `allowed`."""
    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in names if m not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown metric(s) {unknown or names}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def _figure(value: float, reference: ReferenceStats | None, num_samples: int, **extra) -> dict:
    figure: dict = {"value": value}
    if reference is not None:
        ref = reference.describe()
        figure["feature_network"] = ref.pop("feature_network")
        figure["reference"] = ref
    figure["num_samples"] = num_samples
    figure.update(extra)
    return figure


# ----------------------------------------------------------------------------- images


def evaluate_images(
    images: torch.Tensor,
    labels: torch.Tensor | Sequence[int] | None,
    reference: ReferenceStats,
    metrics: Sequence[str] = ("fid", "is", "pr", "accuracy"),
    inception_reference: ReferenceStats | None = None,
    batch_size: int | None = None,
    k: int = 3,
    is_splits: int = 10,
    progress: bool = False,
    pr_reference: ReferenceStats | None = None,
) -> dict[str, dict]:
    """Metrics of images `[N, C, H, W]` in [0, 1] against real reference features.

    `reference` holds the domain feature network's features of real images: "fid" (Frechet
    distance of its features), "is" (Inception Score of its class predictions), "pr"
    (precision and recall on k-NN manifolds; on those of `pr_reference`, the same network's
    features of other real images, when given) and "accuracy" (the fraction of images it
    classifies as their `labels`, the classes they were generated for). "inception_fid" is the
    Frechet distance of Inception-v3 features against `inception_reference`. `reference` may be
    None when "inception_fid" is the only metric.
    """
    metrics = parse_metrics(metrics, IMAGE_METRICS)
    images = check_images(images)
    n = len(images)
    results: dict[str, dict] = {}
    domain = [m for m in metrics if m != "inception_fid"]
    if domain:
        network = reference.network
        out = network.compute(images, batch_size=batch_size, progress=progress)
        if "fid" in domain:
            results["fid"] = _figure(fid(out.features, reference.stats), reference, n)
        if "is" in domain:
            if out.logits is None:
                raise ValueError(f"the Inception Score needs class predictions; {network.name!r} gives none")
            splits = min(is_splits, n)
            mean, std = inception_score(out.logits, splits)
            real = inception_score(reference.logits, min(is_splits, reference.num_images))[0] \
                if reference.logits is not None else None
            results["is"] = _figure(mean, reference, n, std=std, splits=splits, reference_value=real)
        if "pr" in domain:
            real = pr_reference or reference
            precision, recall = precision_recall(real.features, out.features, k=k)
            results["precision"] = _figure(precision, real, n, k=k)
            results["recall"] = _figure(recall, real, n, k=k)
        if "accuracy" in domain:
            if out.logits is None:
                raise ValueError(f"class accuracy needs class predictions; {network.name!r} gives none")
            if labels is None:
                raise ValueError("class accuracy needs the labels the images were generated for (got labels=None)")
            accuracy, per_class = class_accuracy(out.logits, torch.as_tensor(labels), network.class_names)
            real = None
            if reference.logits is not None and bool((reference.labels >= 0).any()):
                real = class_accuracy(reference.logits, reference.labels)[0]
            results["accuracy"] = _figure(accuracy, reference, n, per_class=per_class, reference_value=real)
    if "inception_fid" in metrics:
        if inception_reference is None:
            raise ValueError("inception_fid needs an inception_reference (reference_stats(InceptionFID(), ...))")
        features = inception_reference.network.compute(images, progress=progress).features
        results["inception_fid"] = _figure(fid(features, inception_reference.stats), inception_reference, n)
    return results


# ----------------------------------------------------------------------------- tokenizer


def evaluate_tokenizer(
    tokenizer,
    data: DataConfig,
    split: str = "test",
    num_samples: int | None = None,
    batch_size: int = 500,
    metrics: Sequence[str] = ("mse", "psnr", "usage", "rfid"),
    feature_network: str | FeatureNetwork = "fashion_mnist_classifier",
    cache_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = False,
    pr_reference_split: str | None = None,
    pr_reference_size: int | None = 10_000,
) -> dict[str, dict]:
    """Reconstruction metrics of `tokenizer` on `num_samples` images of `split` (all when None).

    mse/psnr/usage come from `stage1_tokenizer.evaluate.reconstruction_metrics`; for RGB images
    "mse" also gives `chroma_error` and `mean_color_error` (BT.601 chroma MAE and the distance
    between mean colours, on [0, 1]); "rfid" is the Frechet distance between the domain network's
    features of the reconstructions and of the same original images, "inception_rfid" the same
    with Inception-v3 features; "pr" the precision and recall of the reconstructions' domain
    features on the originals' k-NN manifold (what the tokenizer leaves of the data's variety), or
    with `pr_reference_split` on that of `pr_reference_size` images of another split (the
    training images a pipeline's recall is measured against: a ceiling for that recall); "accuracy" is the domain classifier's accuracy on the
    reconstructions, beside its accuracy on the originals (what the tokenizer leaves of the class:
    a ceiling for a pipeline's class accuracy).
    """
    from stage1_tokenizer.evaluate import COLOR_KEYS, reconstruction_metrics

    metrics = parse_metrics(metrics, TOKENIZER_METRICS)
    images, labels = select_images(data, split, num_samples, seed)
    n = len(images)
    if "accuracy" in metrics and not bool((labels >= 0).all()):
        raise ValueError(f"the accuracy of reconstructions needs a labelled split; {split!r} of {data.dataset!r} "
                         "has unlabelled images (drop 'accuracy' from --metrics)")
    loader = DataLoader(ImageDataset(images, labels), batch_size=batch_size, shuffle=False)
    recons: list[torch.Tensor] = []
    image_metrics = [RECONSTRUCTION_AS_IMAGE_METRIC[m] for m in metrics if m in RECONSTRUCTION_AS_IMAGE_METRIC]
    collect = (lambda _x, recon: recons.append(to_unit_range(recon).cpu())) if image_metrics else None
    recon_metrics, _ = reconstruction_metrics(tokenizer.eval(), loader, on_batch=collect)
    where = {"reference": {"dataset": data.dataset, "split": split, "num_images": n}, "num_samples": n}
    results: dict[str, dict] = {}
    groups = (("mse", ["mse", *COLOR_KEYS]), ("psnr", ["psnr"]), ("usage", ["codebook_usage", "perplexity"]))
    for name, keys in groups:
        if name in metrics:
            for key in keys:
                if key in recon_metrics:  # the colour figures exist for RGB images only
                    results[key] = {"value": recon_metrics[key], **where}
    if not image_metrics:
        return results

    def stats(network: FeatureNetwork, split: str = split, size: int | None = num_samples) -> ReferenceStats:
        return reference_stats(network, data, split, size, cache_dir, seed=seed, progress=progress)

    network = get_feature_network(feature_network) if set(image_metrics) - {"inception_fid"} else None
    figures = evaluate_images(
        torch.cat(recons), labels, None if network is None else stats(network), metrics=image_metrics,
        inception_reference=stats(get_feature_network("inception")) if "inception_fid" in image_metrics else None,
        pr_reference=stats(network, pr_reference_split, pr_reference_size) if pr_reference_split and "pr" in image_metrics else None,
        progress=progress)
    as_reconstruction = {image: recon for recon, image in RECONSTRUCTION_AS_IMAGE_METRIC.items()}
    results.update({as_reconstruction.get(name, name): figure for name, figure in figures.items()})
    return results


# ----------------------------------------------------------------------------- prior NLL


@torch.no_grad()
def prior_nll(prior, tokenizer, data: DataConfig, split: str = "test", token_cache_dir: str | Path = "runs/token_cache",
              max_grids: int | None = None, batch_size: int = 256, progress: bool = False) -> dict:
    """The prior's NLL in bits per image token on held-out token grids (`split` encoded by `tokenizer`).

    The grids come from `stage2_prior.tokens.build_token_splits` (encoded once, cached in
    `token_cache_dir`, shared with prior training when the data settings agree).
    """
    from stage2_prior.evaluate import bits_per_token
    from stage2_prior.tokens import build_token_splits

    check_components_fit(tokenizer, prior)
    data = dataclasses.replace(data, val_split=split)
    held_out = build_token_splits(tokenizer, data, token_cache_dir, progress=progress).val
    layout = prior.layout
    n = len(held_out) if max_grids is None else min(max_grids, len(held_out))
    batches = (held_out.get_batch(torch.arange(start, min(start + batch_size, n))) for start in range(0, n, batch_size))
    bits, n = bits_per_token(prior, batches)
    return {"value": bits, "unit": "bits per token", "uniform_value": math.log2(layout.codebook_size),
            "reference": {"dataset": data.dataset, "split": split, "num_images": n}, "num_samples": n}


# ----------------------------------------------------------------------------- pipeline


def balanced_labels(num_images: int, num_classes: int) -> list[int] | None:
    """Class labels cycling through the classes (0, 1, ..., C-1, 0, ...), None for an unconditional model."""
    return [i % num_classes for i in range(num_images)] if num_classes else None


def _tokenizer_data(tokenizer, dataset: str) -> DataConfig:
    """The data settings of `dataset` as `tokenizer` takes it (channels, image size)."""
    config = tokenizer.config
    return DataConfig(dataset=dataset, channels=config.in_channels, image_size=config.image_size)


def evaluate_pipeline(
    path: str,
    num_samples: int = 10_000,
    batch_size: int = 256,
    seed: int = 0,
    guidance_scale: float | None = None,
    metrics: Sequence[str] = ("fid", "is", "pr", "accuracy"),
    dataset: str = "fashion_mnist",
    reference_split: str = "train",
    reference_size: int | None = 10_000,
    feature_network: str | FeatureNetwork = "fashion_mnist_classifier",
    cache_dir: str | Path | None = None,
    nll_split: str = "test",
    nll_samples: int | None = None,
    token_cache_dir: str | Path = "runs/token_cache",
    options: SamplingOptions | None = None,
    progress: bool = True,
    bpd_fit_split: str = "holdout",
    bpd_fit_samples: int | None = None,
    torch_dtype: str | torch.dtype | None = None,
) -> tuple[dict[str, dict], dict]:
    """Sample `num_samples` class-balanced images from a saved pipeline and measure them; returns
    (figures, settings). `options` holds further sampling options (guidance schedule, temperature,
    top-k, top-p);
    `seed`, `batch_size` and `guidance_scale` win over its fields when not None, and what is
    left unset uses the pipeline's defaults. The settings name the options the samples were
    drawn with (`top_k` 0 and `top_p` 1.0: no filter). "nll" and "bpd" score `nll_samples`
    images of `nll_split` (all when None); "bpd" fits the decoder's scale on `bpd_fit_samples`
    images of `bpd_fit_split` (see `evalkit.bits_per_dim`). `torch_dtype` is the prior's dtype
    (see `Pipeline.from_pretrained`)."""
    from pipelines import Pipeline

    metrics = parse_metrics(metrics, PIPELINE_METRICS)
    pipe = Pipeline.from_pretrained(path, torch_dtype=torch_dtype)
    num_classes = pipe.prior.layout.num_classes
    labels = balanced_labels(num_samples, num_classes)
    if labels is None and "accuracy" in metrics:
        raise ValueError("class accuracy needs a class-conditional pipeline; this one is unconditional "
                         "(drop 'accuracy' from --metrics)")
    held_out = _tokenizer_data(pipe.tokenizer, dataset) if {"nll", "bpd"} & set(metrics) else None
    if "bpd" in metrics:
        check_splits(held_out, nll_split, bpd_fit_split)
    options = pipe.sampling_options(labels, options, guidance_scale=guidance_scale, seed=seed, batch_size=batch_size)
    settings = {"num_samples": num_samples, "seed": options.seed, "guidance_scale": options.guidance_scale,
                "guidance_schedule": options.guidance_schedule,
                "autoguidance_scale": options.autoguidance_scale, "temperature": options.temperature,
                "top_k": options.top_k, "top_p": options.top_p,
                "class_labels": "balanced" if labels else None,
                "prior_dtype": str(pipe.prior.lm.dtype).removeprefix("torch.")}
    results: dict[str, dict] = {}
    image_metrics = [m for m in metrics if m in IMAGE_METRICS]
    if image_metrics:
        start = time.perf_counter()
        images = pipe.generate(num_images=num_samples, class_labels=labels, output_type="pt", progress=progress,
                               options=options)
        settings["sampling_seconds"] = round(time.perf_counter() - start, 1)
        images = check_images(torch.as_tensor(images))
        data = DataConfig(dataset=dataset, channels=images.shape[1], image_size=images.shape[-1])
        network = get_feature_network(feature_network)
        reference = reference_stats(network, data, reference_split, reference_size, cache_dir, progress=progress)
        inception_ref = None
        if "inception_fid" in image_metrics:
            inception_ref = reference_stats(InceptionFID(), data, reference_split, reference_size, cache_dir,
                                            progress=progress)
        results.update(evaluate_images(images, labels, reference, image_metrics, inception_ref, progress=progress))
    if "nll" in metrics:
        results["nll"] = prior_nll(pipe.prior, pipe.tokenizer, held_out, nll_split, token_cache_dir, nll_samples,
                                   progress=progress)
    if "bpd" in metrics:
        results["bpd"] = bits_per_dim(pipe.prior, pipe.tokenizer, held_out, nll_split, bpd_fit_split, nll_samples,
                                      bpd_fit_samples, batch_size, seed)
    return results, settings


# ----------------------------------------------------------------------------- report


def format_table(results: dict[str, dict]) -> str:
    """The figures as an aligned text table."""
    rows = [("metric", "value", "feature network", "reference", "N ref", "N samples")]
    for name, fig in results.items():
        value = fig["value"]
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        if "std" in fig:
            text += f" ± {fig['std']:.4f}"
        if fig.get("reference_value") is not None:
            text += f" (real: {fig['reference_value']:.4f})"
        if fig.get("uniform_value") is not None:
            text += f" (uniform: {fig['uniform_value']:.4f})"
        if "parts" in fig:
            text += " (" + " + ".join(f"{part} {bits:.4f}" for part, bits in fig["parts"].items()) + ")"
        ref = fig.get("reference", {})
        rows.append((name, text, fig.get("feature_network", "-"), f"{ref.get('dataset', '-')}:{ref.get('split', '-')}",
                     str(ref.get("num_images", "-")), str(fig.get("num_samples", "-"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
