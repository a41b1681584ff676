"""The training recipes shipped with the package: the repository's `configs/` directory,
installed as the data package `imagegen_recipes` and read with `importlib.resources`."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

RECIPES_PACKAGE = "imagegen_recipes"


def recipe_path(name: str) -> Path:
    """A recipe file by its name under `configs/`, e.g. `recipe_path("tokenizer/fashion_mnist_vq.yaml")`:
    from the installed `imagegen_recipes`, or from `configs/` of a source checkout that runs
    without being installed."""
    parts = name.split("/")
    try:
        found = importlib.resources.files(RECIPES_PACKAGE)
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1].joinpath("configs", *parts)
    for part in parts:           # one step at a time: a namespace package's root is not a plain path
        found = found / part
    return Path(str(found))
