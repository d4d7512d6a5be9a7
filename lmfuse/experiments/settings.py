"""Named experiment settings: `--set name=value`, typed by the setting's default.

    parse_settings({'fractions': (1.0, 5.0), 'eval_sentences': 200}, {'fractions': '5,20'})
      -> {'fractions': (5.0, 20.0), 'eval_sentences': 200}

A tuple default takes a comma list of its element type (of str when the default is empty);
int, float, bool and str defaults take one value. Every mistake is a one-line `LmfuseError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lmfuse.errors import LmfuseError


def split_assignments(assignments: Sequence[str]) -> dict[str, str]:
    """['a=1', 'b=x,y'] -> {'a': '1', 'b': 'x,y'} (a later assignment of a name wins)."""
    given: dict[str, str] = {}
    for text in assignments:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise LmfuseError(f"cannot parse --set {text!r}; write --set name=value")
        given[name.strip()] = value.strip()
    return given


def parse_settings(defaults: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, Any]:
    """The defaults with the given values parsed in; unknown names list the valid ones."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise LmfuseError(f"unknown setting {unknown[0]!r}; valid settings: "
                          f"{', '.join(sorted(defaults))}")
    settings = dict(defaults)
    for name, raw in given.items():
        settings[name] = _parse(name, raw, defaults[name])
    return settings


def check_at_least(settings: Mapping[str, Any], least: Mapping[str, int]) -> None:
    """Each named numeric setting is at least its bound."""
    for name, bound in least.items():
        if settings[name] < bound:
            raise LmfuseError(f"setting {name}={settings[name]} must be at least {bound}")


def _parse(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, tuple):
        kind = type(default[0]) if default else str
        items = [item.strip() for item in raw.split(",") if item.strip()]
        if not items:
            raise LmfuseError(f"setting {name} needs at least one value, e.g. --set {name}=a,b")
        return tuple(_scalar(name, item, kind) for item in items)
    return _scalar(name, raw, type(default))


def _scalar(name: str, raw: str, kind: type) -> Any:
    if kind is bool:
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise LmfuseError(f"setting {name} expects true or false, got {raw!r}")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise LmfuseError(f"setting {name} expects {kind.__name__} values, got {raw!r}") from None
    return raw
