"""Shared ground for both stages: typed configs, image data, the accelerate training
loop, checkpoints, hub I/O and image grids."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("discrete-imagegen")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"
