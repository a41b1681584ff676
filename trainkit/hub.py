"""Persistence of every saved component: `save_pretrained` / `from_pretrained` / `push_to_hub`.

`HubModel` builds on huggingface_hub's `ModelHubMixin`: a component implements
`_save_pretrained(directory)` (write its files) and `_from_pretrained(model_id=DIR, ...)`
(read them back from a local directory) and gets the rest. `save_pretrained` writes the whole
directory through `publish_dir`, so it appears complete or not at all; `from_pretrained`
takes a local directory or a hub repo id (revision, cache_dir, offline from the cache).
`PretrainedMixin` is the `HubModel` of a module built from one config dataclass:
`config.json` (the config plus the class name and library version) and `model.safetensors`.
Loading is strict (`files.load_state_dict_strict`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import ModelHubMixin

from . import __version__
from .config import ConfigError, from_dict, to_dict
from .files import CheckpointError, atomic_write_text, load_state_dict_strict, publish_dir, save_state_dict

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LIBRARY_NAME = "discrete-imagegen"


def resolve_pretrained_dir(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | None = None,
    allow_patterns: list[str] | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
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
            snapshot_download(text, revision=revision, cache_dir=cache_dir, allow_patterns=allow_patterns,
                              token=token, force_download=force_download, local_files_only=local_files_only)
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


class HubModel(ModelHubMixin):
    """`save_pretrained` / `from_pretrained` / `push_to_hub` for a component.

    Subclasses implement `_save_pretrained(directory, **save_kwargs)`, which writes every file
    of the saved directory, and the classmethod `_from_pretrained(*, model_id, map_location,
    **model_kwargs)`, which loads from `model_id` (here always a local directory: hub repos are
    downloaded first) and raises `CheckpointError` for files that cannot be loaded as they are.
    Extra keywords of `save_pretrained` / `from_pretrained` go to these two methods.
    """

    def save_pretrained(self, save_directory: str | os.PathLike, *, config: Any = None,
                        model_card_kwargs: dict | None = None, **save_kwargs) -> Path:
        """Write the saved directory atomically (see `publish_dir`); files of an existing
        directory that this save does not write are kept. Returns its path.

        `config` and `model_card_kwargs` belong to `ModelHubMixin.push_to_hub`'s call: the
        config is the component's own and its saved directory holds no model card.
        """
        if config is not None:
            raise TypeError(f"{type(self).__name__}.save_pretrained saves the model's own config; pass none")
        target = Path(save_directory)
        with publish_dir(target, keep_old_files=True) as staging:
            self._save_pretrained(staging, **save_kwargs)
        return target

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        cache_dir: str | None = None,
        map_location: str | torch.device = "cpu",
        *,
        token: str | bool | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        **model_kwargs,
    ):
        """Load from a local directory or a hub repo id (downloaded once, then cached;
        `HF_HUB_OFFLINE=1` works from the cache alone)."""
        directory = resolve_pretrained_dir(path_or_repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                           force_download=force_download, local_files_only=local_files_only)
        return cls._from_pretrained(model_id=str(directory), map_location=map_location, **model_kwargs)

    def push_to_hub(self, repo_id: str, *, commit_message: str | None = None, private: bool | None = None,
                    **kwargs) -> str:
        """Save to a temporary directory and upload it to `repo_id` (created if needed) in one
        commit; returns the commit URL. Other keywords as `ModelHubMixin.push_to_hub`."""
        return str(super().push_to_hub(repo_id, commit_message=commit_message or f"Upload {type(self).__name__}",
                                       private=private, **kwargs))


class PretrainedMixin(HubModel):
    """The `HubModel` of an `nn.Module` whose constructor takes one config dataclass:
    `config.json` and `model.safetensors`.

    Subclasses set `config_class` and keep the config at `self.config`.
    """

    config_class: ClassVar[type]

    def _save_pretrained(self, save_directory: Path) -> None:
        payload = {
            "_class_name": type(self).__name__,
            "_library_version": __version__,
            **to_dict(self.config),
        }
        save_state_dict(self.state_dict(), save_directory / WEIGHTS_NAME)
        atomic_write_text(save_directory / CONFIG_NAME, json.dumps(payload, indent=2) + "\n")

    @classmethod
    def load_config_file(cls, directory: str | Path):
        """The config of a saved directory, checked strictly (unknown keys, another class)."""
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
    def _from_pretrained(cls, *, model_id: str, map_location: str | torch.device = "cpu"):
        directory = Path(model_id)
        config = cls.load_config_file(directory)
        weights = directory / WEIGHTS_NAME
        if not weights.is_file():
            raise CheckpointError(f"{str(directory)!r} has no {WEIGHTS_NAME}")
        model = cls(config)
        load_state_dict_strict(model, weights)
        return model.to(map_location).eval()

