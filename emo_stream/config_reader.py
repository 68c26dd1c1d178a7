"""The one reader of YAML config files: a typed dataclass tree from YAML, with dotted overrides and validation.

Every config (the engine's and server's ``configs/*.yaml``, training's ``configs/train/*.yaml``) is a tree of
dataclasses. A section checks its own values in ``validate(prefix)``; an unknown key, a value of the wrong
type or one out of range is a ``ConfigError`` whose message starts with the dotted key
(``server.port: expected int, got 'x'``), so a user sees which line of which file to fix.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from emo_stream.errors import ConfigError, InputNotFoundError


class ConfigSection(Protocol):
    """A dataclass of config values that checks them, naming bad keys under ``prefix``."""

    def validate(self, prefix: str) -> None: ...


SectionT = TypeVar("SectionT", bound=ConfigSection)


def check(ok: bool, key: str, message: str) -> None:
    """Raise ``ConfigError("<key>: <message>")`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {message}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; ``InputNotFoundError``/``ConfigError`` naming the path otherwise."""
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Set ``{"optim.steps": 10}``-style values (e.g. from CLI flags) in nested ``data``; None values are skipped."""
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        *sections, key = dotted.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{section}: expected a mapping")
        node[key] = value
    return data


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field's type; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {annotation}, got {value!r}")
    if origin is list:
        (item_type,) = typing.get_args(annotation)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value)]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if isinstance(annotation, type) and not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    return value


def _is_section_type(annotation: Any) -> bool:
    """Whether a field's type is a nested section (a dataclass) rather than a value."""
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def build(cls: type[SectionT], data: Any, prefix: str = "") -> SectionT:
    """An instance of the dataclass ``cls`` from plain data, nested dataclasses included (not yet validated).

    Keys absent from ``data`` keep the dataclass defaults. Raises ``ConfigError`` naming the dotted key of an
    unknown key or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{dotted}: unknown key (known: {', '.join(sorted(names))})")
        annotation = hints[key]
        if _is_section_type(annotation):
            kwargs[key] = build(annotation, value, dotted)
        else:
            kwargs[key] = _coerce(value, annotation, dotted)
    return cls(**kwargs)


def validate_sections(config: object, prefix: str = "") -> None:
    """Validate every dataclass field of ``config`` under its dotted name (a config's sections)."""
    for f in dataclasses.fields(config):  # type: ignore[arg-type]
        value = getattr(config, f.name)
        if _is_section_type(type(value)):
            value.validate(f"{prefix}.{f.name}" if prefix else f.name)


def load(cls: type[SectionT], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SectionT:
    """A validated ``cls`` from a YAML file (None: the dataclass defaults) plus dotted overrides.

    Raises:
        InputNotFoundError: the file does not exist.
        ConfigError: bad YAML, an unknown key or a bad value (the message starts with the key).
    """
    data = apply_overrides(read_yaml(path) if path is not None else {}, overrides)
    config = build(cls, data)
    config.validate("")
    return config
