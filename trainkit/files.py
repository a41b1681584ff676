"""Files that appear whole or not at all, and weights that load exactly or not at all.

Every saved file goes through here: `atomic_write_text` and `save_state_dict` write beside the
target and rename over it; `publish_dir` does the same for a whole directory. Loading is strict:
a truncated file, a missing or unexpected tensor, or a shape mismatch is a `CheckpointError`
that names the problem, never a silent partial load.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    """A weights file or pretrained directory that cannot be loaded as asked."""


@contextlib.contextmanager
def _written_beside(path: Path) -> Iterator[str]:
    """A temporary file's name beside `path`, renamed over `path` when the block ends without an
    error and removed when it raises: readers see the old or the new file, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never a mix."""
    with _written_beside(Path(path)) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Atomically write tensors to a safetensors file (shared storage is cloned)."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with _written_beside(Path(path)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt", **(metadata or {})})


def file_sha256(path: str | Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def replace_dir(staging: str | Path, target: str | Path, keep_old_files: bool = False) -> None:
    """Rename the complete directory `staging` to `target`, replacing the directory there.

    The old `target` is first renamed aside, so a crash leaves it intact under a hidden
    sibling name. With `keep_old_files`, entries of the old directory that `staging` does not
    hold are carried over into the new one.
    """
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(target, old)
    os.replace(staging, target)
    if old is None:
        return
    if keep_old_files:
        for entry in old.iterdir():
            if not (target / entry.name).exists():
                os.replace(entry, target / entry.name)
    shutil.rmtree(old, ignore_errors=True)


def _replace_entries(staging: Path, target: Path) -> None:
    """Move each entry of `staging` over the same name in `target` (for a target that cannot be renamed)."""
    for entry in staging.iterdir():
        dest = target / entry.name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(entry, dest)


@contextlib.contextmanager
def publish_dir(target: str | os.PathLike, keep_old_files: bool = False) -> Iterator[Path]:
    """Write a directory atomically: yields an empty staging directory beside `target`, renamed
    into place when the block ends without an error (and removed when it raises).

    See `replace_dir` for `keep_old_files`. A target that holds the working directory cannot be
    renamed away: its entries are then replaced one by one instead (other entries stay).
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{str(target)!r} exists and is not a directory")
    full = target.resolve()
    full.parent.mkdir(parents=True, exist_ok=True)
    staging = full.parent / f".{full.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        yield staging
        cwd = Path.cwd()
        if full == cwd or full in cwd.parents:
            _replace_entries(staging, full)
        else:
            replace_dir(staging, full, keep_old_files=keep_old_files)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def load_state_dict_strict(module: torch.nn.Module, path: str | Path) -> None:
    """Load a safetensors file into `module`, requiring exactly matching names and shapes."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"cannot read weights file {str(path)!r} ({err}); it is truncated or not a safetensors file: "
            "re-save or re-download it"
        ) from None
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if wrong:
            parts.append(f"shape mismatches {wrong[:8]}")
        raise CheckpointError(
            f"weights file {str(path)!r} does not match {type(module).__name__} built from its config: "
            + "; ".join(parts)
        )
    module.load_state_dict(state, strict=True)
