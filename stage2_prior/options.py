"""`SamplingOptions`, the knobs of one sampling call, and their stored form: the prior's
`generation_config.json` (a `transformers.GenerationConfig`).

The generation config holds the prior's sampling defaults in transformers' own fields, so
`AutoModelForCausalLM.from_pretrained(prior_dir).generate(condition_ids)` samples a whole grid
of image codes with them:

- `do_sample`, `temperature`, `top_k`, `top_p`: temperature 0 is stored as `do_sample=false`
  (greedy). "No top-k" is stored as `top_k=0` (transformers otherwise applies its default 50)
  and "no top-p" as `top_p=1.0`.
- `max_new_tokens` = `min_new_tokens` = h*w, `suppress_tokens` = every id that is not an image
  code (class tokens, null class, BOS), BOS = EOS = pad = the layout's BOS: sequences never end
  early and only image codes come out.
- The default classifier-free guidance is stored under `class_guidance_scale`, and
  transformers' `guidance_scale` is left unset. transformers reads `guidance_scale != 1` as a
  request for its own CFG logits processor, which runs an unconditional branch from
  `negative_prompt_ids`; without them it feeds the prompt's last token - here the class token
  itself - so a plain `generate` would run twice the compute and mix identical logits. A user
  of `generate` gets our guidance by passing `guidance_scale=config.class_guidance_scale` and
  `negative_prompt_ids` = the null-class id, one per row.
- The default guidance schedule is stored under `class_guidance_schedule` ("constant" or
  "linear"); transformers' CFG processor knows only a constant scale, so `generate` reproduces
  our sampler's guidance only for the constant schedule.
- The default autoguidance scale is stored under `autoguidance_scale`: a number (0: off) when
  the prior was saved with its guide (the `guide/` folder, see `ImagePrior`), absent otherwise.
  `generate` knows nothing of it.

Fields missing from a stored config (priors saved before it carried sampling defaults) read as
the built-in defaults: temperature 1, no top-k, no top-p, no stored guidance, a constant
guidance schedule.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from trainkit.files import CheckpointError, atomic_write_text

from .layout import TokenLayout

GENERATION_CONFIG_NAME = "generation_config.json"
GUIDANCE_KEY = "class_guidance_scale"
SCHEDULE_KEY = "class_guidance_schedule"
AUTOGUIDANCE_KEY = "autoguidance_scale"
GUIDANCE_SCHEDULES = ("constant", "linear")


@dataclass(frozen=True)
class SamplingOptions:
    """Options of a sampling call; a field left None is not set, and the next layer's value
    applies (the caller's overrides, then the pipeline's or prior's defaults, then the built-in
    defaults: no guidance, temperature 1, no top-k, no top-p, a random seed, one batch).

    `guidance_scale` s mixes class and null-class logits as `u + s * (c - u)` (1: none);
    `guidance_schedule` says how s varies over the raster positions: "constant", or "linear",
    rising from 1 (no guidance) at the first image code to `guidance_scale` at the last, so the
    first codes (the layout of the image) are drawn as the prior's conditional distribution has
    them and guidance sharpens the details;
    `autoguidance_scale` a adds `a * (c - g)`, where g are the logits of the prior's guide (a
    weaker version of the same prior, for one its weights early in training) for the same
    condition: it pushes the samples away from what the weaker model gets wrong (autoguidance,
    Karras et al., 2024), 0: off;
    `temperature` 0 is greedy; `top_k` 0 and `top_p` 1.0 switch those filters off explicitly
    (useful to override a stored default); `seed` makes the result reproducible whatever
    `batch_size` (images sampled together).
    """

    guidance_scale: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    batch_size: int | None = None
    guidance_schedule: str | None = None
    autoguidance_scale: float | None = None

    def __post_init__(self):
        problems = []
        if self.guidance_scale is not None and not math.isfinite(self.guidance_scale):
            problems.append(f"guidance_scale must be a finite number, got {self.guidance_scale}")
        if self.guidance_schedule is not None and self.guidance_schedule not in GUIDANCE_SCHEDULES:
            problems.append(f"guidance_schedule must be one of {list(GUIDANCE_SCHEDULES)}, "
                            f"got {self.guidance_schedule!r}")
        if self.autoguidance_scale is not None and not (math.isfinite(self.autoguidance_scale)
                                                        and self.autoguidance_scale >= 0):
            problems.append(f"autoguidance_scale must be a finite number >= 0 (0: off), got {self.autoguidance_scale}")
        if self.temperature is not None and not self.temperature >= 0:
            problems.append(f"temperature must be >= 0 (0: greedy), got {self.temperature}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or int(self.top_k) != self.top_k
                                       or self.top_k < 0):
            problems.append(f"top_k must be an integer >= 1 (0: no top-k), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            problems.append(f"top_p must lie in (0, 1] (1: no top-p), got {self.top_p}")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be positive (or None for one batch), got {self.batch_size}")
        if problems:
            raise ValueError("; ".join(problems))

    def set_fields(self) -> dict:
        """The fields that are set (not None)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def merged(self, overrides: SamplingOptions | None = None, **changes) -> SamplingOptions:
        """A copy in which the fields set in `overrides`, then those of `changes` that are not
        None, replace this object's."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown sampling option(s) {sorted(unknown)}: use {[f.name for f in fields(self)]}")
        values = {**self.set_fields(), **(overrides.set_fields() if overrides is not None else {}),
                  **{k: v for k, v in changes.items() if v is not None}}
        return replace(SamplingOptions(), **values)


def read_sampling_defaults(config) -> SamplingOptions:
    """The sampling defaults a `GenerationConfig` stores (see the module docstring)."""
    if getattr(config, "do_sample", None) is False:
        temperature = 0.0
    else:
        temperature = 1.0 if getattr(config, "temperature", None) is None else float(config.temperature)
    top_k = getattr(config, "top_k", None) or None
    top_p = getattr(config, "top_p", None)
    guidance = getattr(config, GUIDANCE_KEY, None)
    auto = getattr(config, AUTOGUIDANCE_KEY, None)
    return SamplingOptions(guidance_scale=None if guidance is None else float(guidance),
                           guidance_schedule=getattr(config, SCHEDULE_KEY, None), temperature=temperature,
                           autoguidance_scale=None if auto is None else float(auto),
                           top_k=None if top_k is None else int(top_k),
                           top_p=None if top_p is None or top_p >= 1.0 else float(top_p))


def generation_config(layout: TokenLayout, defaults: SamplingOptions, base=None):
    """A `GenerationConfig` (a copy of `base`, or a new one) holding `defaults` and the settings
    that make `generate` emit exactly one grid of image codes. Only the stored fields of
    `defaults` are used: a seed or batch size is not a property of the prior."""
    from transformers import GenerationConfig

    if defaults.seed is not None or defaults.batch_size is not None:
        raise ValueError("a prior stores no default seed or batch size: pass them with each sampling call")
    if not layout.conditional and defaults.guidance_scale not in (None, 1.0):
        raise ValueError(f"an unconditional prior takes no guidance: its default guidance_scale must be None or 1.0, "
                         f"got {defaults.guidance_scale}")
    config = copy.deepcopy(base) if base is not None else GenerationConfig()
    temperature = 1.0 if defaults.temperature is None else float(defaults.temperature)
    sampling = temperature > 0
    config.do_sample = sampling
    config.temperature = temperature if sampling else None
    config.top_k = (defaults.top_k or 0) if sampling else None
    config.top_p = (defaults.top_p or 1.0) if sampling else None
    config.guidance_scale = None
    setattr(config, GUIDANCE_KEY, defaults.guidance_scale)
    setattr(config, SCHEDULE_KEY, defaults.guidance_schedule)
    setattr(config, AUTOGUIDANCE_KEY, defaults.autoguidance_scale)
    config.max_new_tokens = config.min_new_tokens = layout.num_image_tokens
    config.suppress_tokens = list(range(layout.codebook_size, layout.vocab_size))
    config.bos_token_id = config.eos_token_id = config.pad_token_id = layout.bos_id
    config._from_model_config = False      # transformers would otherwise rebuild it from the model's config
    return config


def save_generation_config(directory: str | os.PathLike, config) -> Path:
    """Check `config` as transformers does before saving, and write it atomically as
    `generation_config.json` in `directory`; returns the file's path."""
    try:
        config.validate(strict=True)
    except ValueError as err:
        raise ValueError(f"the prior's generation config is not valid: {err}") from None
    path = Path(directory) / GENERATION_CONFIG_NAME
    atomic_write_text(path, config.to_json_string(use_diff=True, keys_to_pop=["compile_config"]))
    return path


def load_generation_config(directory: str | os.PathLike):
    """The `GenerationConfig` saved in `directory`, or None when it has no `generation_config.json`
    (a prior saved before the file existed: it samples with the built-in defaults)."""
    from transformers import GenerationConfig

    path = Path(directory) / GENERATION_CONFIG_NAME
    if not path.is_file():
        return None
    try:
        return GenerationConfig.from_pretrained(directory)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read the prior's sampling defaults {str(path)!r} ({err}); fix or delete the file "
            "(without it the prior samples with the built-in defaults)"
        ) from None
