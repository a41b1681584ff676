"""Atomic training checkpoints on top of `Accelerator.save_state`.

Layout under `<output_dir>/checkpoints/`: `step-000500/` (a complete `save_state` directory
plus `trainer_state.json`), and `latest`, a one-line file naming the newest complete one.
A checkpoint is written to a hidden temporary directory and renamed into place only when
every process has finished writing, so a kill during a save never breaks the latest one.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from .files import atomic_write_text

STATE_NAME = "trainer_state.json"
LATEST_NAME = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """What the loop needs, besides model/optimizer/RNG state, to continue a run exactly."""

    step: int = 0                 # optimizer steps done
    epoch: int = 0
    batches_in_epoch: int = 0     # micro-batches of the current epoch already consumed
    elapsed_seconds: float = 0.0  # training wall clock over all sessions of this run
    samples_seen: int = 0

    def save(self, directory: Path) -> None:
        atomic_write_text(directory / STATE_NAME, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "TrainerState":
        return cls(**json.loads((directory / STATE_NAME).read_text()))


def is_complete(directory: Path) -> bool:
    return directory.is_dir() and (directory / STATE_NAME).is_file()


def step_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f"step-{step:07d}"


def temp_dir(checkpoints: Path, step: int) -> Path:
    return checkpoints / f".tmp-step-{step:07d}"


def finalize(checkpoints: Path, step: int, state: TrainerState, keep: int) -> Path:
    """Main process only: seal the temporary directory of `step`, point `latest` at it, prune."""
    tmp, final = temp_dir(checkpoints, step), step_dir(checkpoints, step)
    state.save(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(checkpoints / LATEST_NAME, final.name + "\n")
    complete = sorted(p for p in checkpoints.iterdir() if _STEP_DIR.match(p.name) and is_complete(p))
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in checkpoints.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def find_checkpoint(output_dir: Path, resume: str) -> Path | None:
    """`resume="latest"`: the newest complete checkpoint of `output_dir` (None if there is none);
    otherwise `resume` is a checkpoint directory, which must be complete."""
    if resume != "latest":
        path = Path(resume)
        if not is_complete(path):
            raise FileNotFoundError(
                f"resume={resume!r} is not a complete checkpoint directory (it needs {STATE_NAME}); "
                "use resume=latest or a path like OUTPUT_DIR/checkpoints/step-0001000"
            )
        return path
    checkpoints = output_dir / "checkpoints"
    pointer = checkpoints / LATEST_NAME
    if pointer.is_file():
        candidate = checkpoints / pointer.read_text().strip()
        if is_complete(candidate):
            return candidate
    if not checkpoints.is_dir():
        return None
    complete = sorted(p for p in checkpoints.iterdir() if _STEP_DIR.match(p.name) and is_complete(p))
    return complete[-1] if complete else None
