"""When the main job may reuse what an earlier run left in its output directory.

A training stage is reused (or resumed) only when its resolved configuration, and for the
prior the tokenizer's weights, are the ones it was trained with. The pipeline, the class grid
and the evaluation are redone when the components or settings they were made from changed.
Each comparison reads a small JSON record written beside the output.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

from trainkit.files import atomic_write_text, file_sha256

RUN_CONFIG_NAME = "run_config.json"          # the trainer's resolved configuration, in the run directory
STAGE_INPUTS_NAME = "main_job_inputs.json"   # what the main job trained a stage on beyond its configuration

# Configuration keys that cannot change a trained model (a key and everything under it).
IGNORED_KEYS = ("output_dir", "resume", "hub", "train.progress_bar", "train.num_workers", "data.num_workers",
                "train.log_every", "train.keep_checkpoints")


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; values are normalised through JSON (tuples become lists)."""
    flat: dict[str, Any] = {}
    for key, value in json.loads(json.dumps(config)).items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in ignore)


def changes(recorded: dict, wanted: dict, ignore: Sequence[str] = (), defaults: dict | None = None) -> list[str]:
    """The differing keys of two flat dicts as `key: old -> new` lines (`(absent)` for a missing key).
    A key the recorded run does not have, wanted at its value in `defaults`, is no change: the run
    predates the setting, whose default keeps what the run did."""
    defaults = defaults or {}
    lines = []
    for key in sorted(set(recorded) | set(wanted)):
        if _ignored(key, ignore):
            continue
        if key not in recorded and key in defaults and wanted.get(key) == defaults[key]:
            continue
        old, new = recorded.get(key, "(absent)"), wanted.get(key, "(absent)")
        if old != new:
            lines.append(f"{key}: {json.dumps(old)} -> {json.dumps(new)}")
    return lines


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def tree_fingerprint(root: Path, names: Sequence[str]) -> str:
    """sha256 over the relative paths and bytes of every file under `root / name` for each name."""
    h = hashlib.sha256()
    for name in names:
        entry = root / name
        files = sorted(p for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else [entry]
        for path in files:
            h.update(f"|{path.relative_to(root).as_posix()}|{file_sha256(path) if path.is_file() else '-'}".encode())
    return h.hexdigest()


def stage_changes(run_dir: Path, config: dict, inputs: dict, has_run: bool, ignore: Sequence[str],
                  defaults: dict | None = None) -> list[str]:
    """What differs between a stage's earlier run in `run_dir` and the run now asked for
    (`config` resolved as the training command will, `inputs` beyond the configuration, `defaults`
    the configuration class's own); empty when there is no earlier run (`has_run` False) or
    nothing differs."""
    if not has_run:
        return []
    recorded = read_json(run_dir / RUN_CONFIG_NAME)
    if recorded is None:
        return [f"{RUN_CONFIG_NAME}: missing or unreadable, so the run's settings are unknown"]
    recorded_inputs = read_json(run_dir / STAGE_INPUTS_NAME) or {}
    return changes({**flatten(recorded), **recorded_inputs}, {**flatten(config), **inputs}, ignore,
                   flatten(defaults or {}))


def settings_match(record: Path, settings: dict) -> bool:
    """The JSON record beside an output holds exactly `settings`."""
    return read_json(record) == json.loads(json.dumps(settings))
