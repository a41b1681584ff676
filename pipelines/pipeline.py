"""`Pipeline`: an image tokenizer and a prior over its code grids, used and saved as one thing.

A pipeline directory (or hub repo) holds

    pipeline.json      the manifest: component classes, library version, image size and
                       channels, grid, codebook size, classes and their names, the default
                       guidance (a copy for the model card; the prior's generation config holds it)
    tokenizer/         an `ImageTokenizer` (config.json + model.safetensors)
    prior/             an `ImagePrior` (transformers config.json + model.safetensors + token_layout.json
                       + generation_config.json, the sampling defaults; + guide/, a weaker prior
                       for autoguidance, when it has one)
    README.md          a model card with usage, metrics and a sample grid
    samples.png        the sample grid (fixed seed, one row per class)
    eval_report.json   the evaluation report, when one was supplied

Images given to the pipeline and returned by it are in [0, 1] (floats) or [0, 255] (uint8 and
PIL images); the components themselves work in [-1, 1].
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import PIL.Image
import torch

from stage1_tokenizer import ImageTokenizer
from stage2_prior import ImagePrior, SamplingOptions, TokenLayout, sample_codes
from stage2_prior.options import save_generation_config
from stage2_prior.sampling import resolve_options
from trainkit import __version__
from trainkit.devices import inference_dtype, use_channels_last
from trainkit.files import CheckpointError, publish_dir
from trainkit.hub import push_folder_to_hub, resolve_pretrained_dir
from trainkit.images import save_grid, to_unit_range

from .card import (
    CARD_NAME, EVAL_REPORT_NAME, LIBRARY_NAME, MANIFEST_NAME, SAMPLES_NAME, hub_dataset_id, load_eval_report,
    read_manifest, render_model_card,
)

FORMAT_VERSION = 1
TOKENIZER_FOLDER = "tokenizer"
PRIOR_FOLDER = "prior"
COMPONENT_CLASSES = {"tokenizer": "stage1_tokenizer.ImageTokenizer", "prior": "stage2_prior.ImagePrior"}
OUTPUT_TYPES = ("pil", "pt", "np", "codes")
# Codes are decoded in chunks of exactly this many grids (the last one padded), so an image's
# pixels never depend on how many images were decoded with it.
DECODE_CHUNK = 16

OutputType = Literal["pil", "pt", "np", "codes"]
ImageInput = Any  # PIL image(s), uint8 or float tensors / arrays; see `Pipeline.encode`


def check_components_fit(tokenizer: ImageTokenizer, prior: ImagePrior) -> None:
    """Raise a `ValueError` naming both sides when the prior was not made for the tokenizer's codes."""
    if not isinstance(tokenizer, ImageTokenizer):
        raise TypeError(f"tokenizer must be an ImageTokenizer, got {type(tokenizer).__name__}")
    if not isinstance(prior, ImagePrior):
        raise TypeError(f"prior must be an ImagePrior, got {type(prior).__name__}")
    t_codes, (th, tw) = tokenizer.codebook_size, tokenizer.grid_size
    p_codes, (ph, pw) = prior.layout.codebook_size, prior.layout.grid
    if (t_codes, th, tw) != (p_codes, ph, pw):
        raise ValueError(
            f"the tokenizer and the prior do not fit: the tokenizer has {t_codes} codes and a {th}x{tw} grid "
            f"but the prior expects {p_codes} codes on a {ph}x{pw} grid. Use the prior trained on this "
            "tokenizer's codes (stage2_prior.train tokenizer=...)"
        )


def format_images(images: torch.Tensor, output_type: str):
    """float32 images `[N, C, H, W]` in [0, 1] -> "pt" (as is), "np" (`[N, H, W, C]`) or "pil" (L / RGB images)."""
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).numpy()
    if output_type == "np":
        return array
    if output_type != "pil":
        raise ValueError(f"cannot format images as {output_type!r}: use 'pil', 'pt' or 'np'")
    pixels = (array * 255).round().astype(np.uint8)
    if pixels.shape[-1] == 1:
        return [PIL.Image.fromarray(p[..., 0]) for p in pixels]
    return [PIL.Image.fromarray(p) for p in pixels]


class Pipeline:
    """Generate, encode, decode and complete images with a tokenizer and a prior that fit together.

    `sampling_defaults` are the options `generate`, `complete` and `sample_grid` use where a call
    leaves them unset: the prior's stored defaults (`ImagePrior.sampling_defaults`, taken when the
    pipeline is built) with the pipeline's `default_guidance_scale`, the classifier-free guidance
    used when class labels are given. `default_guidance_scale` overrides the prior's; when both
    are None (a prior saved without sampling defaults) it is 2.0 for a class-conditional prior and
    1.0 (no guidance) for an unconditional one. Saving writes these defaults into the saved prior's
    `generation_config.json`. `datasets` names the training data for the model card.
    """

    def __init__(self, tokenizer: ImageTokenizer, prior: ImagePrior, default_guidance_scale: float | None = None,
                 datasets: Sequence[str] | None = None, eval_report: dict | None = None):
        check_components_fit(tokenizer, prior)
        self.tokenizer = use_channels_last(tokenizer.eval())   # as `ImageTokenizer.from_pretrained` loads it
        self.prior = prior.eval()
        stored = prior.sampling_defaults
        self.sampling_defaults = stored if default_guidance_scale is None else \
            replace(stored, guidance_scale=default_guidance_scale)
        self.datasets = list(datasets or [])
        self.eval_report = eval_report

    # ------------------------------------------------------------------------------------ properties

    @property
    def layout(self) -> TokenLayout:
        return self.prior.layout

    @property
    def sampling_defaults(self) -> SamplingOptions:
        return self._sampling_defaults

    @sampling_defaults.setter
    def sampling_defaults(self, defaults: SamplingOptions) -> None:
        """Set the defaults; a guidance scale of None becomes 2.0 for a class-conditional prior and
        1.0 for an unconditional one, which takes no other."""
        guidance = defaults.guidance_scale
        if guidance is None:
            guidance = 2.0 if self.conditional else 1.0
        if not self.conditional and guidance != 1.0:
            raise ValueError("an unconditional prior takes no guidance: the default guidance scale must be 1.0")
        self._sampling_defaults = replace(defaults, guidance_scale=float(guidance))

    @property
    def default_guidance_scale(self) -> float:
        return self.sampling_defaults.guidance_scale

    @property
    def conditional(self) -> bool:
        return self.layout.conditional

    @property
    def num_classes(self) -> int:
        return self.layout.num_classes

    @property
    def class_names(self) -> list[str] | None:
        return list(self.layout.class_names) if self.layout.class_names is not None else None

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.tokenizer.config.image_size, self.tokenizer.config.image_size)

    @property
    def channels(self) -> int:
        return self.tokenizer.config.in_channels

    @property
    def grid(self) -> tuple[int, int]:
        return self.layout.grid

    @property
    def codebook_size(self) -> int:
        return self.layout.codebook_size

    @property
    def device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "Pipeline":
        """Move both components to `device`; `dtype` (e.g. `torch.bfloat16`) casts the prior's
        transformer, where reduced precision pays off; the tokenizer stays in float32 (its
        quantizer computes in float32). Returns the pipeline."""
        self.tokenizer.to(device=device)
        self.prior.to(device=device, dtype=dtype)
        return self

    def __repr__(self) -> str:
        h, w = self.image_size
        kind = f"{self.num_classes} classes" if self.conditional else "unconditional"
        return (f"Pipeline({h}x{w}x{self.channels} images <-> {self.grid[0]}x{self.grid[1]} grids of "
                f"{self.codebook_size} codes, {kind}, device={self.device})")

    # ------------------------------------------------------------------------------------ generation

    def _check_output_type(self, output_type: str) -> None:
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}")

    def _num_images(self, num_images: int | None, class_labels) -> int:
        if num_images is not None:
            return int(num_images)
        if class_labels is None or isinstance(class_labels, (int, str)):
            return 1
        if isinstance(class_labels, torch.Tensor) and class_labels.ndim == 0:
            return 1
        return len(class_labels)

    def sampling_options(self, class_labels=None, options: SamplingOptions | None = None, **overrides
                         ) -> SamplingOptions:
        """The options a sampling call of this pipeline runs with: the `overrides` that are not
        None, then the fields `options` sets, then `sampling_defaults` (whose guidance applies
        only with class labels), then the built-in defaults."""
        chosen = (options or SamplingOptions()).merged(**overrides)
        return resolve_options(self.prior, class_labels, chosen, defaults=self.sampling_defaults)

    def generate(
        self,
        num_images: int | None = None,
        class_labels: Sequence[int | str] | torch.Tensor | int | str | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        output_type: OutputType = "pil",
        progress: bool = True,
        options: SamplingOptions | None = None,
        guidance_schedule: str | None = None,
        autoguidance_scale: float | None = None,
    ):
        """Sample images.

        `class_labels`: one per image (ids or names), one for all, or None (unconditional; a
        class-conditional prior then samples from its null class). `num_images` defaults to
        the number of labels (1 without labels). The sampling options come as keywords or as
        one `options` object (keywords that are not None win); what both leave unset comes from
        `sampling_defaults`: `guidance_scale` from `default_guidance_scale` when labels are given
        (1.0, none, otherwise), `guidance_schedule` ("constant", or "linear": rising from 1 at the
        first code to `guidance_scale` at the last), `autoguidance_scale` (steering away from the
        prior's guide, when it has one; 0: off), `temperature`, `top_k`, `top_p` from the prior's stored defaults
        (temperature 1 and no filters unless it stores others; `top_k=0` / `top_p=1.0` switch a
        stored filter off). `seed` makes the result reproducible, whatever `batch_size` (images
        sampled together; None: all at once). Output: "pil" a list of PIL images (mode L or RGB),
        "pt" a float32 tensor `[N, C, H, W]` in [0, 1], "np" a float32 array `[N, H, W, C]` in
        [0, 1], "codes" the sampled `LongTensor[N, h, w]`; tensors and arrays are on the CPU.
        """
        self._check_output_type(output_type)
        n = self._num_images(num_images, class_labels)
        chosen = self.sampling_options(class_labels, options, guidance_scale=guidance_scale, temperature=temperature,
                                       top_k=top_k, top_p=top_p, seed=seed, batch_size=batch_size,
                                       guidance_schedule=guidance_schedule, autoguidance_scale=autoguidance_scale)
        codes = sample_codes(self.prior, n, class_labels=class_labels, options=chosen, progress=progress)
        return self.decode(codes, output_type=output_type)

    def sample_grid(self, path: str | os.PathLike | None = None, per_class: int = 8,
                    class_labels: Sequence[int | str] | None = None, seed: int | None = None,
                    guidance_scale: float | None = None, temperature: float | None = None, top_k: int | None = None,
                    top_p: float | None = None, batch_size: int | None = None, progress: bool = False,
                    options: SamplingOptions | None = None, guidance_schedule: str | None = None) -> torch.Tensor:
        """A grid of samples: one row of `per_class` images per class (all classes, or `class_labels`),
        or `per_class` rows of `per_class` images for an unconditional prior. Returns the images
        `[N, C, H, W]` in [0, 1] and, with `path`, saves them as one PNG with `per_class` columns.
        Sampling options are those of `generate`, with seed 0 unless `seed` or `options` gives one."""
        if per_class < 1:
            raise ValueError(f"per_class must be positive, got {per_class}")
        if self.conditional:
            classes = range(self.num_classes) if class_labels is None else class_labels
            labels = [self.layout.class_index(c) for c in classes for _ in range(per_class)]
        elif class_labels is not None:
            raise ValueError("this pipeline's prior is unconditional: it takes no class labels")
        else:
            labels = None
        chosen = SamplingOptions(seed=0).merged(options, guidance_scale=guidance_scale, temperature=temperature,
                                                top_k=top_k, top_p=top_p, seed=seed, batch_size=batch_size,
                                                guidance_schedule=guidance_schedule)
        images = self.generate(num_images=len(labels) if labels else per_class * per_class, class_labels=labels,
                               output_type="pt", progress=progress, options=chosen)
        if path is not None:
            save_grid(images * 2 - 1, path, nrow=per_class)
        return images

    def grid_caption(self, per_class: int, seed: int | None, guidance_scale: float | None = None,
                     options: SamplingOptions | None = None) -> str:
        """A one-line description of what `sample_grid` shows with these options."""
        chosen = self.sampling_options([0] if self.conditional else None, options, guidance_scale=guidance_scale)
        filters = "".join([f", top-k {chosen.top_k}" if chosen.top_k else "",
                           f", top-p {chosen.top_p:g}" if chosen.top_p < 1.0 else ""])
        settings = f"temperature {chosen.temperature:g}{filters}."
        if self.conditional:
            names = self.class_names or [str(i) for i in range(self.num_classes)]
            rows = ", ".join(f"{i} {name}" if name != str(i) else name for i, name in enumerate(names))
            ramp = " (rising linearly from 1)" if chosen.guidance_schedule == "linear" else ""
            auto = f", autoguidance {chosen.autoguidance_scale:g}" if chosen.autoguidance_scale else ""
            return (f"{per_class} samples per class, one row per class ({rows}); seed {seed}, "
                    f"guidance scale {chosen.guidance_scale:g}{ramp}{auto}, {settings}")
        return f"{per_class * per_class} unconditional samples; seed {seed}, {settings}"

    # ------------------------------------------------------------------------------------ images <-> codes

    def _to_unit_batch(self, images: ImageInput) -> torch.Tensor:
        """Any accepted image input -> float32 `[B, C, H, W]` in [0, 1] on the CPU."""
        if isinstance(images, PIL.Image.Image):
            return self._to_unit_batch([images])
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("no images given")
            if all(isinstance(im, PIL.Image.Image) for im in images):
                return torch.cat([self._pil_to_unit(im) for im in images])
            return torch.cat([self._to_unit_batch(self._single(im)) for im in images])
        if isinstance(images, np.ndarray):
            a = images
            if a.ndim == 2:
                a = a[None, ..., None]
            elif a.ndim == 3:
                a = a[None] if a.shape[-1] == self.channels else a[..., None]
            if a.ndim != 4:
                raise ValueError(f"numpy images must be [B, H, W, C], [H, W, C] or [H, W], got shape {images.shape}")
            return self._tensor_to_unit(torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2), "numpy array")
        if isinstance(images, torch.Tensor):
            x = images.detach().cpu()
            if x.ndim == 3:
                x = x[None]
            if x.ndim != 4:
                raise ValueError(f"image tensors must be [B, C, H, W] or [C, H, W], got shape {tuple(images.shape)}")
            return self._tensor_to_unit(x, "tensor")
        raise ValueError(f"images must be PIL images, torch tensors or numpy arrays, got {type(images).__name__}")

    def _single(self, image) -> Any:
        """A list item as a batch of one (tensors [C, H, W], arrays [H, W, C] or [H, W])."""
        if isinstance(image, torch.Tensor) and image.ndim == 3:
            return image[None]
        if isinstance(image, np.ndarray) and image.ndim in (2, 3):
            return image[None] if image.ndim == 3 else image[None, ..., None]
        raise ValueError(f"a list of images must hold PIL images, [C, H, W] tensors or [H, W(, C)] arrays, "
                         f"got {type(image).__name__} {getattr(image, 'shape', '')}")

    def _pil_to_unit(self, image: PIL.Image.Image) -> torch.Tensor:
        from trainkit.data.transforms import ImageTransform   # the training data's center-crop + resize

        a = np.asarray(image.convert("L" if self.channels == 1 else "RGB"))
        x = torch.from_numpy(a.copy()).reshape(a.shape[0], a.shape[1], -1).permute(2, 0, 1)[None]
        x = ImageTransform(self.image_size, "resize")(x)
        return x.float() / 255.0

    def _tensor_to_unit(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise ValueError(
                f"the {what} has {x.shape[1]} channel(s) (shape {tuple(x.shape)}), the pipeline's tokenizer "
                f"takes {self.channels}: pass [B, {self.channels}, H, W] tensors or [B, H, W, {self.channels}] "
                "arrays, or PIL images (converted automatically)"
            )
        if x.dtype == torch.uint8:
            return x.float() / 255.0
        if not x.is_floating_point():
            raise ValueError(f"the {what} must be uint8 (0..255) or float (0..1), got {x.dtype}")
        x = x.float()
        if x.numel() and (float(x.min()) < -1e-3 or float(x.max()) > 1 + 1e-3):
            raise ValueError(
                f"float images must lie in [0, 1], got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]; "
                "map [-1, 1] images with (x + 1) / 2, or call pipeline.tokenizer.encode on them directly"
            )
        return x.clamp(0, 1)

    @torch.no_grad()
    def encode(self, images: ImageInput) -> torch.Tensor:
        """Images -> codes `LongTensor[B, h, w]` (on the CPU).

        Accepted: a PIL image or a list of them (converted to the pipeline's mode, L or RGB,
        then center-cropped and resized to its image size); uint8 (0..255) or float (0..1)
        torch tensors `[B, C, H, W]` / `[C, H, W]` and numpy arrays `[B, H, W, C]` /
        `[H, W, C]` / `[H, W]`, channel counts as the tokenizer's. Tensors and arrays are not
        resized: their size must divide by the tokenizer's downsampling factor, and a size
        other than the pipeline's gives a grid other than the prior's.
        """
        x = self._to_unit_batch(images)
        x = (x * 2 - 1).to(device=self.device, dtype=next(self.tokenizer.parameters()).dtype)
        return self.tokenizer.encode(x).cpu()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, output_type: OutputType = "pil"):
        """Codes `[B, h, w]` (or one grid `[h, w]`) -> images, in the form `output_type` says (see `generate`)."""
        self._check_output_type(output_type)
        codes = torch.as_tensor(codes)
        if codes.ndim == 2:
            codes = codes[None]
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid:
            raise ValueError(f"codes must have shape [B, {self.grid[0]}, {self.grid[1]}] (the pipeline's grid), "
                             f"got {tuple(codes.shape)}")
        if output_type == "codes":
            return codes.long().cpu()
        parts = []
        for start in range(0, codes.shape[0], DECODE_CHUNK):
            chunk = codes[start:start + DECODE_CHUNK]
            real = chunk.shape[0]
            if real < DECODE_CHUNK:
                chunk = torch.cat([chunk, chunk[-1:].expand(DECODE_CHUNK - real, *self.grid)])
            images = self.tokenizer.decode(chunk.to(self.device))
            parts.append(images[:real].float().cpu())
        images = to_unit_range(torch.cat(parts))
        return format_images(images, output_type)

    def complete(
        self,
        images: ImageInput,
        keep_rows: int,
        class_labels: Sequence[int | str] | torch.Tensor | int | str | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        batch_size: int | None = None,
        output_type: OutputType = "pil",
        progress: bool = True,
        options: SamplingOptions | None = None,
        guidance_schedule: str | None = None,
        autoguidance_scale: float | None = None,
    ):
        """Complete images from their top: encode them, keep the first `keep_rows` rows of codes
        (of the `h` rows of the grid), sample the rest with the prior, decode.

        Images are taken as by `encode` and must come out at the pipeline's grid. Sampling
        options are those of `generate`; pass an image several times for several completions.
        """
        self._check_output_type(output_type)
        h, w = self.grid
        if not 0 <= keep_rows <= h:
            raise ValueError(f"keep_rows must lie in [0, {h}] (rows of the {h}x{w} code grid), got {keep_rows}")
        codes = self.encode(images)
        if tuple(codes.shape[1:]) != self.grid:
            raise ValueError(
                f"the images encode to a {codes.shape[1]}x{codes.shape[2]} grid, the prior takes {h}x{w}: give "
                f"{self.image_size[0]}x{self.image_size[1]} images (PIL images are resized automatically)"
            )
        prefix = codes.flatten(1)[:, :keep_rows * w]
        chosen = self.sampling_options(class_labels, options, guidance_scale=guidance_scale, temperature=temperature,
                                       top_k=top_k, top_p=top_p, seed=seed, batch_size=batch_size,
                                       guidance_schedule=guidance_schedule, autoguidance_scale=autoguidance_scale)
        sampled = sample_codes(self.prior, codes.shape[0], class_labels=class_labels, options=chosen,
                               progress=progress, prefix=prefix)
        return self.decode(sampled, output_type=output_type)

    # ------------------------------------------------------------------------------------ persistence

    def manifest(self) -> dict:
        """The `pipeline.json` content describing this pipeline."""
        lm = self.prior.lm
        return {
            "_class_name": "Pipeline",
            "format_version": FORMAT_VERSION,
            "library": LIBRARY_NAME,
            "library_version": __version__,
            "components": {
                "tokenizer": {"class": COMPONENT_CLASSES["tokenizer"], "folder": TOKENIZER_FOLDER,
                              "quantizer": self.tokenizer.config.quantizer,
                              "num_parameters": sum(p.numel() for p in self.tokenizer.parameters())},
                "prior": {"class": COMPONENT_CLASSES["prior"], "folder": PRIOR_FOLDER,
                          "language_model": type(lm).__name__,
                          "num_parameters": sum(p.numel() for p in lm.parameters()),
                          "guide": self.prior.guide is not None},
            },
            "image_size": list(self.image_size),
            "channels": self.channels,
            "grid": list(self.grid),
            "codebook_size": self.codebook_size,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "default_guidance_scale": self.default_guidance_scale,
            "default_guidance_schedule": self.sampling_defaults.guidance_schedule or "constant",
            "datasets": self.datasets,
        }

    def _save_sampling_defaults(self, prior_directory: Path) -> None:
        """Write the pipeline's `sampling_defaults` as the saved prior's `generation_config.json`."""
        save_generation_config(prior_directory, self.prior.generation_config_to_save(self.sampling_defaults))

    def save_pretrained(self, save_directory: str | os.PathLike, eval_report: dict | str | os.PathLike | None = None,
                        samples: bool = True, samples_per_class: int = 8, repo_id: str | None = None) -> Path:
        """Write the pipeline directory (see the module docstring); returns its path.

        The directory is built beside the target and renamed into place, so it is complete or
        absent. Saving over an existing pipeline directory replaces it and keeps the files this
        method does not write. `eval_report` (a dict or a JSON file) fills the card's metrics
        table; without it, the pipeline's own report or an `eval_report.json` already in the
        target is used. `samples` renders `samples.png` (seed 0) for the card; `repo_id` is
        the hub id shown in the card's usage snippet.
        """
        target = Path(save_directory)
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{str(target)!r} exists and is not a directory")
        existing = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
        if existing and MANIFEST_NAME not in existing and existing != [EVAL_REPORT_NAME]:
            raise FileExistsError(
                f"{str(target)!r} exists and is not a pipeline directory (it holds {existing[:5]}); "
                "save into a new or empty directory"
            )
        if eval_report is not None:
            report = load_eval_report(eval_report)
        elif self.eval_report is not None:
            report = self.eval_report
        elif EVAL_REPORT_NAME in existing:
            report = load_eval_report(target / EVAL_REPORT_NAME)
        else:
            report = None
        with publish_dir(target, keep_old_files=True) as staging:
            self.tokenizer.save_pretrained(staging / TOKENIZER_FOLDER)
            self.prior.save_pretrained(staging / PRIOR_FOLDER)
            self._save_sampling_defaults(staging / PRIOR_FOLDER)
            manifest = self.manifest()
            if samples:
                self.sample_grid(staging / SAMPLES_NAME, per_class=samples_per_class, seed=0)
                manifest["samples"] = {"file": SAMPLES_NAME, "seed": 0, "per_class": samples_per_class,
                                       "caption": self.grid_caption(samples_per_class, seed=0)}
            (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            if report is not None:
                (staging / EVAL_REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
            card = render_model_card(manifest, report, SAMPLES_NAME if samples else None,
                                     manifest.get("samples", {}).get("caption"), repo_id)
            (staging / CARD_NAME).write_text(card)
        return target

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None,
                        cache_dir: str | None = None, device: str | torch.device = "cpu",
                        torch_dtype: str | torch.dtype | None = None) -> "Pipeline":
        """Load a pipeline directory or hub repo (downloaded once, then read from the cache;
        `HF_HUB_OFFLINE=1` works from the cache alone).

        `torch_dtype` is the prior's dtype (the tokenizer stays float32, see `to`): None or
        `"float32"` (the default), `"bfloat16"`, or `"auto"`, i.e. bf16 where the device has bf16
        matrix units (a GPU, or a CPU with AVX512-BF16 or AMX), which samples faster there.
        """
        dtype = inference_dtype(torch_dtype, device)
        directory = resolve_pretrained_dir(path_or_repo_id, revision=revision, cache_dir=cache_dir)
        manifest = read_manifest(directory)
        if manifest.get("format_version", 1) > FORMAT_VERSION:
            raise CheckpointError(
                f"{str(directory)!r} was saved in pipeline format {manifest['format_version']} by "
                f"{LIBRARY_NAME} {manifest.get('library_version')}; this version ({__version__}) reads format "
                f"{FORMAT_VERSION}: upgrade {LIBRARY_NAME}"
            )
        components = manifest.get("components", {})
        for name, expected in COMPONENT_CLASSES.items():
            found = components.get(name, {}).get("class")
            if found != expected:
                raise CheckpointError(f"{directory / MANIFEST_NAME}: the {name} must be a {expected}, "
                                      f"the manifest names {found!r}")
        loaded = {}
        for name, loader in (("tokenizer", ImageTokenizer), ("prior", ImagePrior)):
            folder = directory / components[name].get("folder", name)
            if not folder.is_dir():
                raise CheckpointError(f"pipeline {str(directory)!r} has no {folder.name}/ folder: it is incomplete; "
                                      "re-save or re-download it")
            try:
                loaded[name] = loader.from_pretrained(folder, map_location=device)
            except CheckpointError as err:
                raise CheckpointError(f"cannot load the pipeline's {name}: {err}") from None
            except (FileNotFoundError, ValueError) as err:
                raise CheckpointError(f"cannot load the pipeline's {name} from {str(folder)!r}: {err}") from None
        report = None
        if (directory / EVAL_REPORT_NAME).is_file():
            try:
                report = load_eval_report(directory / EVAL_REPORT_NAME)
            except ValueError as err:
                warnings.warn(f"ignoring the pipeline's evaluation report: {err}", stacklevel=2)
        try:
            stored = loaded["prior"].sampling_defaults.guidance_scale     # None: saved before the prior held it
            pipe = cls(loaded["tokenizer"], loaded["prior"],
                       default_guidance_scale=manifest.get("default_guidance_scale") if stored is None else None,
                       datasets=manifest.get("datasets"), eval_report=report)
        except ValueError as err:
            raise CheckpointError(f"pipeline {str(directory)!r}: {err}") from None
        found = {"grid": list(pipe.grid), "codebook_size": pipe.codebook_size, "num_classes": pipe.num_classes,
                 "channels": pipe.channels, "image_size": list(pipe.image_size)}
        differs = {k: (manifest.get(k), v) for k, v in found.items() if k in manifest and manifest[k] != v}
        if differs:
            detail = "; ".join(f"{k}: manifest {a}, components {b}" for k, (a, b) in differs.items())
            raise CheckpointError(f"pipeline {str(directory)!r}: its manifest does not describe its components "
                                  f"({detail}); re-save the pipeline from its components")
        return pipe.to(dtype=dtype) if dtype != torch.float32 else pipe

    @classmethod
    def from_components(cls, tokenizer: str | os.PathLike, prior: str | os.PathLike,
                        default_guidance_scale: float | None = None, device: str | torch.device = "cpu"
                        ) -> "Pipeline":
        """Load a saved tokenizer and prior (directories or hub repo ids) and check that they fit.

        When the prior is a training run's `final/` directory, its `run_config.json` beside it
        names the training data (for the model card). For a prior from a run older than the
        `sampling:` section (no stored guidance; its run config has `preview_guidance_scale`), the
        default guidance is that of the run's previews (1.0 if it never dropped classes), unless
        `default_guidance_scale` is given.
        """
        tok = ImageTokenizer.from_pretrained(tokenizer, map_location=device)
        pri = ImagePrior.from_pretrained(prior, map_location=device)
        datasets = []
        run_config = Path(prior).parent / "run_config.json"
        if Path(prior).is_dir() and run_config.is_file():
            try:
                run = json.loads(run_config.read_text())
            except json.JSONDecodeError:
                run = {}
            dataset = hub_dataset_id(run.get("data", {}).get("dataset"))
            datasets = [dataset] if dataset else []
            stored = pri.sampling_defaults.guidance_scale
            if default_guidance_scale is None and stored is None and pri.layout.conditional \
                    and "preview_guidance_scale" in run:
                dropped = run.get("model", {}).get("class_dropout_prob", 0.0) > 0
                default_guidance_scale = float(run["preview_guidance_scale"]) if dropped else 1.0
        return cls(tok, pri, default_guidance_scale=default_guidance_scale, datasets=datasets)

    def push_to_hub(self, repo_id: str, private: bool = False, commit_message: str | None = None,
                    eval_report: dict | str | os.PathLike | None = None) -> str:
        """Save to a temporary directory and upload it to `repo_id` (created if needed) in one
        commit; returns the commit URL."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "pipeline", eval_report=eval_report, repo_id=repo_id)
            return push_folder_to_hub(folder, repo_id, private=private,
                                      commit_message=commit_message or "Upload pipeline")
