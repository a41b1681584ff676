"""`save_pretrained` / `from_pretrained` / `push_to_hub` for our torch modules.

A pretrained directory (or hub repo) holds `config.json` (the model's config dataclass
plus the class name and library version) and `model.safetensors`. Loading is strict: a
truncated file, a missing or unexpected tensor, or a shape mismatch is an error that
names the problem, never a silent partial load. Writes are atomic.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .config import ConfigError, from_dict, to_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class CheckpointError(ValueError):
    """A weights file or pretrained directory that cannot be loaded as asked."""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_state_dict(state: dict[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Atomically write tensors to a safetensors file (shared storage is cloned)."""
    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt", **(metadata or {})})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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


def resolve_pretrained_dir(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | None = None,
    allow_patterns: list[str] | None = None,
) -> Path:
    """A local directory as is, or a hub repo id downloaded (or read from cache) as a snapshot."""
    local = Path(path_or_repo_id)
    if local.is_dir():
        return local
    text = str(path_or_repo_id)
    if local.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep + os.sep in text:
        raise FileNotFoundError(
            f"{text!r} is not a directory and does not look like a hub repo id (owner/name)"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    try:
        return Path(
            snapshot_download(text, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns)
        )
    except RevisionNotFoundError:
        raise FileNotFoundError(f"hub repo {text!r} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(
            f"{text!r} is neither a local directory nor a hub repo that exists (or that your token can see)"
        ) from None
    except HFValidationError as err:
        raise FileNotFoundError(f"{text!r} is not a local directory nor a valid hub repo id: {err}") from None
    except LocalEntryNotFoundError:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        raise FileNotFoundError(
            f"{text!r} is not a local directory, and as a hub repo id it is not in the local cache and "
            + ("cannot be downloaded with HF_HUB_OFFLINE=1: unset it to download once" if offline else
               "the hub could not be reached: check the path, or your connection and HF_ENDPOINT")
        ) from None


def push_folder_to_hub(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    commit_message: str | None = None,
    path_in_repo: str | None = None,
    repo_type: str = "model",
) -> str:
    """Create `repo_id` if needed and upload `folder` in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type=repo_type,
        path_in_repo=path_in_repo,
        commit_message=commit_message or f"Upload {Path(folder).name}",
    )
    return str(info.commit_url if hasattr(info, "commit_url") else info)


class PretrainedMixin:
    """Adds save/load/push to an `nn.Module` whose constructor takes one config dataclass.

    Subclasses set `config_class` and keep the config at `self.config`.
    """

    config_class: ClassVar[type]

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write `config.json` and `model.safetensors` into `save_directory` (created if needed)."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        payload = {
            "_class_name": type(self).__name__,
            "_library_version": __version__,
            **to_dict(self.config),
        }
        save_state_dict(self.state_dict(), save_directory / WEIGHTS_NAME)
        atomic_write_text(save_directory / CONFIG_NAME, json.dumps(payload, indent=2) + "\n")
        return save_directory

    @classmethod
    def load_config_file(cls, directory: str | Path):
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise CheckpointError(
                f"{str(directory)!r} has no {CONFIG_NAME}: it is not a saved {cls.__name__}"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path} is not valid JSON: {err}") from None
        class_name = data.pop("_class_name", None)
        data.pop("_library_version", None)
        if class_name is not None and class_name != cls.__name__:
            raise CheckpointError(f"{str(directory)!r} holds a {class_name}, not a {cls.__name__}")
        try:
            return from_dict(cls.config_class, data)
        except ConfigError as err:
            raise CheckpointError(f"{path}: {err}") from None

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | None = None,
        map_location: str | torch.device = "cpu",
    ):
        """Load from a local directory or a hub repo id (downloaded once, then cached)."""
        directory = resolve_pretrained_dir(path_or_repo_id, revision=revision, cache_dir=cache_dir)
        config = cls.load_config_file(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{str(directory)!r} has no {WEIGHTS_NAME}")
        model = cls(config)
        load_state_dict_strict(model, weights)
        return model.to(map_location).eval()

    def push_to_hub(
        self, repo_id: str, private: bool = False, commit_message: str | None = None
    ) -> str:
        """Save to a temporary directory and upload it to `repo_id` in one commit."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save_pretrained(tmp)
            return push_folder_to_hub(
                tmp, repo_id, private=private,
                commit_message=commit_message or f"Upload {type(self).__name__}",
            )
