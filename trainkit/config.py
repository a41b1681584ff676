"""Typed configuration: dataclasses built from YAML files and `key=value` overrides.

Every recipe in `configs/` is turned into the same dataclasses the code uses. Keys are
checked: an unknown key (in the YAML or on the command line) is an error that lists the
known ones, and values are converted to the field's declared type.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be turned into the typed config objects."""


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` to the annotated type `tp` (dataclasses, Optional, lists, scalars)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], where)
        for arg in options:
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin is typing.Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans
            spellings = ("no", "false", "off") if not value else ("yes", "true", "on")
            value = next((o for o in typing.get_args(tp) if o in spellings), value)
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=f"{where}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    raise ConfigError(f"{where}: unsupported config type {tp}")


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys raise `ConfigError`."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; "
            f"known keys here: {[prefix + k for k in types_]}"
        )
    kwargs = {k: _coerce(v, types_[k], prefix + k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # missing fields, or a dataclass's own checks
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {err}") from None


def to_dict(obj) -> dict:
    """A plain (JSON/YAML-serialisable) dict of a config dataclass."""
    return dataclasses.asdict(obj)


def parse_overrides(items: list[str]) -> dict:
    """Turn `["a.b=1", "c=x"]` into a nested dict; values are parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (dotted keys allowed)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    """Recursively merge `extra` into a copy of `base`."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


BASE_KEY = "base"   # a recipe's key naming the recipe it extends, relative to its own file


def read_recipe(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A YAML recipe as a dict. A recipe with `base: other.yaml` is that recipe (path relative
    to this file, itself possibly extending another) with this file's keys merged over it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found"
                          + (f" (the {BASE_KEY} of {str(_seen[-1])!r})" if _seen else ""))
    if path.resolve() in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path.resolve()))
        raise ConfigError(f"recipe {str(path)!r} extends itself through `{BASE_KEY}`: {chain}")
    loaded = yaml.safe_load(path.read_text())
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    data = dict(loaded or {})
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `{BASE_KEY}` must be the path of another recipe, got {base!r}")
    return deep_merge(read_recipe(path.parent / base, (*_seen, path.resolve())), data)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read a YAML recipe (optional; see `read_recipe` for `base:`), apply `key=value`
    overrides, return a typed `cls`."""
    data = read_recipe(path) if path is not None else {}
    data = deep_merge(data, parse_overrides(overrides or []))
    return from_dict(cls, data)


def console_script(main):
    """Wrap a command's `main(argv)` for `[project.scripts]`.

    A console script exits with the value its function returns, and treats anything but None
    or an int as an error message (exit status 1). Commands return useful objects to Python
    callers, so their console entry points go through this wrapper, which returns 0.
    """

    @functools.wraps(main)
    def entry(argv: list[str] | None = None) -> int:
        main(argv)
        return 0

    entry.console_script = True
    return entry
