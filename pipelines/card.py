"""The pipeline's model card (`README.md`) and its evaluation report (`eval_report.json`).

An evaluation report is a JSON object of metrics, either at the top level or under a
`"metrics"` key. Each metric is a plain number or an object with a numeric `"value"` and
any details beside it (e.g. `"feature_network"`, `"reference"`, `"n"`): they become the
columns of the card's metrics table. Other top-level scalars are listed under the table.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from trainkit.files import CheckpointError, atomic_write_text
from trainkit.hub import LIBRARY_NAME

MANIFEST_NAME = "pipeline.json"
EVAL_REPORT_NAME = "eval_report.json"
CARD_NAME = "README.md"
SAMPLES_NAME = "samples.png"

# Data sources the training commands know by a short name, and their hub dataset ids.
KNOWN_DATASETS = {"fashion_mnist": "zalando-datasets/fashion_mnist", "fashion-mnist": "zalando-datasets/fashion_mnist"}
_HUB_DATASET_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_dataset_id(dataset: str | None) -> str | None:
    """The hub id of a training data source (`data.dataset`), or None for local files and folders."""
    if not dataset:
        return None
    if dataset in KNOWN_DATASETS:
        return KNOWN_DATASETS[dataset]
    if _HUB_DATASET_ID.match(dataset) and not Path(dataset).expanduser().exists():
        return dataset
    return None


def load_eval_report(report: dict | str | os.PathLike) -> dict:
    """An evaluation report given as a dict or as the path of its JSON file."""
    if isinstance(report, dict):
        return report
    path = Path(report)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation report {str(path)!r} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"evaluation report {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"evaluation report {str(path)!r} must hold a JSON object of metrics")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def report_metrics(report: dict) -> tuple[list[tuple[str, float, dict]], dict]:
    """`(rows, notes)`: one `(name, value, details)` per metric, and the report's other scalar entries."""
    body = report.get("metrics") if isinstance(report.get("metrics"), dict) else report
    rows, notes = [], {}
    for name, entry in body.items():
        if _is_number(entry):
            rows.append((str(name), float(entry), {}))
        elif isinstance(entry, dict) and _is_number(entry.get("value")):
            rows.append((str(name), float(entry["value"]), {k: v for k, v in entry.items() if k != "value"}))
        elif isinstance(entry, (str, bool)) or entry is None:
            notes[str(name)] = entry
    if body is not report:
        notes.update({str(k): v for k, v in report.items() if k != "metrics" and (
            isinstance(v, (str, bool)) or _is_number(v))})
    return rows, notes


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.4e}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def metrics_table(report: dict) -> str:
    """A markdown table of the report's metrics (details as extra columns), plus its other entries."""
    rows, notes = report_metrics(report)
    lines = []
    if rows:
        columns: list[str] = []
        for _, _, details in rows:
            columns += [c for c in details if c not in columns]
        lines.append("| metric | value | " + " | ".join(c.replace("_", " ") for c in columns) + " |"
                     if columns else "| metric | value |")
        lines.append("| --- " * (2 + len(columns)) + "|")
        for name, value, details in rows:
            cells = [name, _fmt(value)] + [_fmt(details.get(c)) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
    else:
        lines.append("The evaluation report holds no numeric metrics.")
    if notes:
        lines.append("")
        lines += [f"- {key}: {_fmt(value)}" for key, value in notes.items()]
    return "\n".join(lines)


def _metric_id(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _title(repo_id: str | None) -> str:
    return repo_id.split("/")[-1] if repo_id else "Discrete image generator"


def _eval_results(rows: list[tuple[str, float, dict]], conditional: bool, datasets: list[str]
                  ) -> list[EvalResult]:
    """The report's metrics as model-index entries, on the training data; the metric details
    (feature network, reference set, N, ...) are the entries' `args`."""
    task = "Class-conditional image generation" if conditional else "Unconditional image generation"
    dataset = datasets[0] if datasets else "custom"
    return [
        EvalResult(task_type="image-generation", task_name=task, dataset_type=dataset, dataset_name=dataset,
                   metric_type=_metric_id(name), metric_name=name, metric_value=value, metric_args=details or None)
        for name, value, details in rows
    ]


def card_data(manifest: dict, report: dict | None = None, repo_id: str | None = None,
              license: str | None = None) -> ModelCardData:
    """The card's metadata: library, tags, training datasets, license, metric ids and the
    report's metrics as a model-index."""
    tokenizer = manifest["components"]["tokenizer"]
    conditional = manifest["num_classes"] > 0
    datasets = [d for d in manifest.get("datasets") or [] if d]
    rows = report_metrics(report)[0] if report else []
    title = _title(repo_id)
    return ModelCardData(
        library_name=LIBRARY_NAME,
        tags=[LIBRARY_NAME, "image-generation", "class-conditional" if conditional else "unconditional",
              "autoregressive", "discrete-tokens", "vq-vae" if tokenizer.get("quantizer") == "vq" else "dvae"],
        datasets=datasets or None,
        license=license or manifest.get("license"),
        metrics=sorted({_metric_id(name) for name, _, _ in rows}) or None,
        model_name=title if rows else None,
        eval_results=_eval_results(rows, conditional, datasets) or None,
    )


def _card_text(manifest: dict, report: dict | None, samples: str | None, samples_caption: str | None,
               repo_id: str | None) -> str:
    """The markdown body of the card: description, components, classes, usage, metrics, samples."""
    tokenizer = manifest["components"]["tokenizer"]
    prior = manifest["components"]["prior"]
    conditional = manifest["num_classes"] > 0
    quantizer = {"vq": "VQ-VAE", "gumbel": "Gumbel-softmax dVAE"}.get(tokenizer.get("quantizer"), "discrete")
    h, w = manifest["image_size"]
    gh, gw = manifest["grid"]
    colour = "grayscale" if manifest["channels"] == 1 else "RGB"
    names = manifest.get("class_names")
    source = repo_id or "OWNER/NAME"

    out = [f"# {_title(repo_id)}", ""]
    kind = "class-conditional" if conditional else "unconditional"
    out.append(
        f"A two-stage discrete image generator ({LIBRARY_NAME}). A {quantizer} tokenizer turns {h}x{w} "
        f"{colour} images into {gh}x{gw} grids of codes from a {manifest['codebook_size']}-entry codebook, "
        f"and {'an' if kind[0] in 'aeiou' else 'a'} {kind} {prior.get('language_model', 'transformer')} prior "
        "samples those grids code by code "
        f"(raster order, KV cache{', classifier-free guidance' if conditional else ''}); the tokenizer's "
        "decoder turns them back into images."
    )
    if manifest.get("datasets"):
        out += ["", "Trained on: " + ", ".join(f"`{d}`" for d in manifest["datasets"]) + "."]
    out += ["", "| component | class | parameters | folder |", "| --- | --- | --- | --- |"]
    for name, comp in (("tokenizer", tokenizer), ("prior", prior)):
        params = comp.get("num_parameters")
        out.append(f"| {name} | `{comp['class']}` | {_fmt(params) if params else ''} | `{comp['folder']}/` |")
    if conditional and names:
        out += ["", "Classes (`class_labels` take ids or names):", "", "| id | name |", "| --- | --- |"]
        out += [f"| {i} | {name} |" for i, name in enumerate(names)]
    elif conditional:
        out += ["", f"Classes: ids 0 to {manifest['num_classes'] - 1} (the training data named none)."]

    example = ""
    if conditional:
        label = repr(names[0]) if names else "0"
        example = f", class_labels=[{label}] * 8"
    guidance = manifest.get("default_guidance_scale", 1.0)
    out += [
        "", "## Usage", "",
        f"Install `{LIBRARY_NAME}`, then:", "",
        "```python",
        "from pipelines import Pipeline",
        "",
        f'pipe = Pipeline.from_pretrained("{source}")',
        f"images = pipe.generate(num_images=8{example}, seed=0)   # a list of PIL images",
        'images[0].save("sample.png")',
        "```", "",
        "```bash",
        f"imagegen-generate {source} {'--per-class 8' if conditional else '--num-images 64'} --seed 0 "
        "--output grid.png",
        "```", "",
    ]
    if conditional:
        ramp = (", rising linearly from 1 at the first code to that at the last"
                if manifest.get("default_guidance_schedule") == "linear" else "")
        out.append(f"With class labels, the default classifier-free guidance scale is {guidance:g}{ramp}.")
    out.append("The same seed gives the same images whatever the batch size.")

    out += ["", "## Evaluation", ""]
    out.append(metrics_table(report) if report else "No evaluation report was supplied with this pipeline.")
    if samples:
        out += ["", "## Samples", "", f"![samples]({samples})"]
        if samples_caption:
            out += ["", samples_caption]
    return "\n".join(out) + "\n"


def build_model_card(manifest: dict, report: dict | None = None, samples: str | None = None,
                     samples_caption: str | None = None, repo_id: str | None = None,
                     license: str | None = None) -> ModelCard:
    """The `ModelCard` of a pipeline: `card_data` as its YAML metadata, then the markdown body."""
    data = card_data(manifest, report, repo_id, license)
    order = ["library_name", "tags", "datasets", "license", "metrics"]
    text = _card_text(manifest, report, samples, samples_caption, repo_id)
    return ModelCard(f"---\n{data.to_yaml(original_order=order)}\n---\n\n{text}")


def render_model_card(manifest: dict, report: dict | None = None, samples: str | None = None,
                      samples_caption: str | None = None, repo_id: str | None = None,
                      license: str | None = None) -> str:
    """The `README.md` of a pipeline directory: YAML metadata, description, usage, metrics, samples."""
    return str(build_model_card(manifest, report, samples, samples_caption, repo_id, license))


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest of a pipeline directory; a clear `CheckpointError` when there is none."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        hint = ""
        if (directory / "config.json").is_file():
            hint = (" It holds a config.json: it looks like a single saved model (load it with "
                    "ImageTokenizer.from_pretrained or ImagePrior.from_pretrained).")
        raise CheckpointError(
            f"{str(directory)!r} is not a pipeline directory: it has no {MANIFEST_NAME}.{hint} Build a pipeline "
            "from a tokenizer and a prior with `imagegen-assemble --tokenizer DIR --prior DIR --output DIR` "
            "or Pipeline(tokenizer=..., prior=...).save_pretrained(DIR)"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}): re-save or re-download the pipeline") from None
    if not isinstance(manifest, dict) or manifest.get("_class_name") != "Pipeline":
        raise CheckpointError(f"{path} is not a pipeline manifest (no \"_class_name\": \"Pipeline\")")
    return manifest


def write_model_card(directory: str | os.PathLike, eval_report: dict | str | os.PathLike | None = None,
                     repo_id: str | None = None, license: str | None = None) -> Path:
    """(Re)write the `README.md` of a saved pipeline directory, e.g. once an evaluation report exists.

    `eval_report` (a dict or a JSON file) is stored as `eval_report.json`; without it, an
    `eval_report.json` already in the directory is used. `license` (a hub license id) goes
    into the card's metadata.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    report = None
    if eval_report is not None:
        report = load_eval_report(eval_report)
        atomic_write_text(directory / EVAL_REPORT_NAME, json.dumps(report, indent=2) + "\n")
    elif (directory / EVAL_REPORT_NAME).is_file():
        report = load_eval_report(directory / EVAL_REPORT_NAME)
    samples = manifest.get("samples")
    has_samples = bool(samples) and (directory / samples["file"]).is_file()
    card = render_model_card(manifest, report, samples["file"] if has_samples else None,
                             samples.get("caption") if has_samples else None, repo_id, license)
    atomic_write_text(directory / CARD_NAME, card)
    return directory / CARD_NAME
