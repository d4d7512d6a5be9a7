"""Config loading: ml_collections files, `:variant` selection and `--config.key=value` overrides.

A config file is a Python module with `get_config(variant: str | None = None)` returning a
`ml_collections.ConfigDict` that starts from `lmfuse.schema.base_config()`. It is named as
`path.py` or `path.py:variant`. A variant is one option or several joined by commas, in any
order: `configs/lm_transformer.py:tiny`, `configs/lm_rnn.py:lstm`, `configs/lm_rnn.py:lstm,tiny`,
`configs/fusion.py:deep,tiny`; each file's docstring lists its options. While a config file
runs, its directory and the one above it come first on `sys.path`, so it can import the
helpers next to it (`from presets import lm_config`, also from configs/carlson/).

Overrides are dotted paths into that dict. Every user mistake (a missing file, an unknown
variant, an unknown key, a value of the wrong type) raises a one-line `LmfuseError` naming the
key, never a traceback from inside ml_collections.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections

from lmfuse.errors import LmfuseError

OVERRIDE_PREFIX = "--config."


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `path.py[:variant]`, applies `--config.key=value` overrides and locks the result."""
    path_text, _, variant = spec.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise LmfuseError(f"config file {path_text!r} not found; pass --config=configs/<name>.py[:variant]")
    module = _import_file(path)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise LmfuseError(f"config file {path_text!r} has no get_config() function")
    takes_variant = bool(inspect.signature(get_config).parameters)
    if variant and not takes_variant:
        raise LmfuseError(f"config file {path_text!r} has no variants, but {variant!r} was asked for")
    try:
        config = get_config(variant or None) if takes_variant else get_config()
    except LmfuseError:
        raise
    except (KeyError, ValueError) as e:
        raise LmfuseError(f"config {path_text!r}: {e}") from None
    config = ml_collections.ConfigDict(config, type_safe=True)
    for override in overrides:
        apply_override(config, override)
    config.lock()
    return config


def split_override_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates `--config.key=value` (and `--config.key value`) from the other arguments."""
    overrides, rest = [], []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith(OVERRIDE_PREFIX):
            if "=" not in arg:
                if i + 1 >= len(args):
                    raise LmfuseError(f"override {arg} has no value; write {arg}=VALUE")
                arg = f"{arg}={args[i + 1]}"
                i += 1
            overrides.append(arg)
        else:
            rest.append(arg)
        i += 1
    return overrides, rest


def apply_override(config: ml_collections.ConfigDict, override: str) -> None:
    """Applies one `--config.a.b=value` (the `--config.` prefix is optional) in place."""
    text = override[len(OVERRIDE_PREFIX):] if override.startswith(OVERRIDE_PREFIX) else override
    key, sep, raw_value = text.partition("=")
    if not sep or not key:
        raise LmfuseError(f"cannot parse override {override!r}; write --config.key=value")
    *parents, leaf = key.split(".")
    node = config
    for depth, part in enumerate(parents):
        node = _child(node, part, ".".join(parents[: depth + 1]))
        if not isinstance(node, ml_collections.ConfigDict):
            raise LmfuseError(f"config key {'.'.join(parents[: depth + 1])!r} is a value, not a group")
    current = _child(node, leaf, key)
    value = _parse_value(raw_value, current)
    try:
        # ConfigDict is type-safe: it refuses e.g. a string for an int field.
        setattr(node, leaf, value)
    except TypeError:
        expected = type(current).__name__
        raise LmfuseError(
            f"config key {key!r} expects {expected}, got {raw_value!r} ({type(value).__name__})"
        ) from None


def _child(node: ml_collections.ConfigDict, name: str, full_key: str) -> Any:
    if name not in node:
        known = ", ".join(sorted(node.keys()))
        raise LmfuseError(f"unknown config key {full_key!r} (known here: {known})")
    return node[name]


def _parse_value(raw: str, current: Any) -> Any:
    """Parses a command-line value, guided by the type of the value it replaces."""
    if isinstance(current, str):
        return raw
    if isinstance(current, bool):
        lowered = raw.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        return raw  # leave it to the type check, which names the key
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def _import_file(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"lmfuse_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    folder = path.resolve().parent
    search = [str(folder), str(folder.parent)]
    before = set(sys.modules)
    sys.path[:0] = search
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise LmfuseError(f"config file {str(path)!r} has a syntax error at line {e.lineno}") from None
    finally:
        for entry in search:
            sys.path.remove(entry)
        # Helpers imported from these folders are imported afresh by the next config file, so
        # a file elsewhere with a helper of the same name gets its own.
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None) or ""
            if Path(origin).parent in (folder, folder.parent):
                del sys.modules[name]
    return module
