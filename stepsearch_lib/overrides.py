"""Flat overrides of nested frozen config dataclasses: ``{"section.field": value}`` or a unique bare ``field``.

Values are type-checked against the field annotations (ints widen to floats, lists become
tuples); an unknown or ambiguous key, or a wrong type, is an error naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import fields, replace
from typing import Any, Mapping


def _field_index(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check (and minimally coerce) an override value against a field's annotation."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if not isinstance(value, bool):
            raise TypeError(f"config field {key!r} expects a bool, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"config field {key!r} expects an int, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"config field {key!r} expects a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, (str, os.PathLike)):
            raise TypeError(f"config field {key!r} expects a string, got {value!r}")
        return os.fspath(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"config field {key!r} expects a list, got {value!r}")
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        return tuple(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _sections(cls: type) -> list[str]:
    return [n for n, hint in _hints(cls).items() if dataclasses.is_dataclass(hint)]


def _split_key(cls: type, key: str) -> tuple[str | None, str]:
    """`section.field` -> (section, field); a bare name must be unique across the config."""
    sections = _sections(cls)
    if "." in key:
        section, name = key.split(".", 1)
        if section not in sections:
            raise KeyError(f"unknown config section {section!r} in {key!r}; sections: {', '.join(sections)}")
        if name not in _field_index(_hints(cls)[section]):
            raise KeyError(f"unknown config field {key!r}")
        return section, name
    if key in _field_index(cls) and key not in sections:
        return None, key
    owners = [s for s in sections if key in _field_index(_hints(cls)[s])]
    if not owners:
        raise KeyError(f"unknown config field {key!r}")
    if len(owners) > 1:
        raise KeyError(f"config field {key!r} is ambiguous ({', '.join(owners)}); write it as section.field")
    return owners[0], key


def apply_overrides(cfg, overrides: Mapping[str, Any]):
    """Return a copy of ``cfg`` with flat ``{"section.field" | "field": value}`` overrides applied."""
    top: dict[str, Any] = {}
    per_section: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, name = _split_key(type(cfg), key)
        if section is None:
            top[name] = _coerce(value, _hints(type(cfg))[name], key)
        else:
            sub = _hints(type(cfg))[section]
            per_section.setdefault(section, {})[name] = _coerce(value, _hints(sub)[name], key)
    for section, changes in per_section.items():
        top[section] = replace(getattr(cfg, section), **changes)
    return replace(cfg, **top)


def parse_cli_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.steps=3", "model.policy=tiny-random"]`` -> overrides; values are read as JSON
    (numbers, booleans, lists) and fall back to plain strings.

    >>> parse_cli_overrides(["train.steps=3", "model.policy=tiny-random", "model.load_in_4bit=true"])
    {'train.steps': 3, 'model.policy': 'tiny-random', 'model.load_in_4bit': True}
    """
    import json

    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} is not of the form section.field=value")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out
