"""Typed configuration, loaded from YAML files in ``configs/``.

Every section is a dataclass; an unknown key or a value of the wrong type or range is a
``ConfigError`` that names the dotted key (``server.port: expected int, got 'x'``).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from emo_stream.errors import ConfigError, InputNotFoundError

BACKENDS = ("lite", "emo")


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    data_dir: str = "~/.cache/emo-stream"
    max_sessions: int = 6
    # Loopback needs none; a public deployment lists its STUN/TURN servers here.
    ice_servers: list[str] = field(default_factory=list)
    # A live window is shown on the first tick at least this long after it completes: the animator's
    # lookahead, then ``delay_margin_ticks`` whole ticks (a slow backend's compute), then
    # ``render_margin_ms``, the least time its frame has to be rendered. Where in a tick windows
    # complete varies, so a frame gets between render_margin_ms and one tick more.
    delay_margin_ticks: int = 0
    render_margin_ms: int = 20
    # Session processes: each runs its own sessions' peers, worker and animator, so sessions on different
    # processes do not share one interpreter's lock (README "The live server"). 1: all in the server's own
    # process; 0: one per core the server may use, at most 4 (the lite backend only: a GPU backend keeps one
    # worker per device).
    processes: int = 0
    # Cores a session is counted at until the running ones have been measured (3 s in): a burst of offers to
    # a fresh server gets in only as far as this fits. 0.35: four 512² lite sessions used 1.2–1.35 of this
    # machine's 2 cores (README "The live server"). 0: no estimate, only measured load is refused.
    session_cost_cores: float = 0.35

    def validate(self, prefix: str) -> None:
        _check(0 <= self.session_cost_cores <= 64, f"{prefix}.session_cost_cores",
               f"must be 0..64, got {self.session_cost_cores}")
        _check(0 <= self.processes <= 64, f"{prefix}.processes", f"must be 0..64, got {self.processes}")
        _check(0 <= self.port <= 65535, f"{prefix}.port", f"must be 0..65535, got {self.port}")
        _check(self.max_sessions >= 1, f"{prefix}.max_sessions", f"must be >= 1, got {self.max_sessions}")
        _check(0 <= self.delay_margin_ticks <= 10, f"{prefix}.delay_margin_ticks",
               f"must be 0..10, got {self.delay_margin_ticks}")
        _check(0 <= self.render_margin_ms <= 1000, f"{prefix}.render_margin_ms",
               f"must be 0..1000, got {self.render_margin_ms}")


@dataclass
class LimitsConfig:
    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 25 * 1024 * 1024
    min_face_px: int = 48

    def validate(self, prefix: str) -> None:
        for name in ("max_image_pixels", "max_image_bytes", "min_face_px"):
            value = getattr(self, name)
            _check(value > 0, f"{prefix}.{name}", f"must be positive, got {value}")


@dataclass
class AnimatorConfig:
    backend: str = "lite"
    size: int = 512
    fps: int = 25
    seed: int = 0
    motion: float = 1.0
    checkpoint: str | None = None
    device: str = "cpu"

    def validate(self, prefix: str) -> None:
        _check(self.backend in BACKENDS, f"{prefix}.backend", f"must be one of {BACKENDS}, got {self.backend!r}")
        _check(64 <= self.size <= 2048 and self.size % 2 == 0, f"{prefix}.size",
               f"must be an even number of pixels in 64..2048, got {self.size}")
        _check(1 <= self.fps <= 60, f"{prefix}.fps", f"must be 1..60, got {self.fps}")
        _check(0.0 <= self.motion <= 3.0, f"{prefix}.motion", f"must be 0..3, got {self.motion}")


@dataclass
class AudioConfig:
    sample_rate: int = 16_000
    window_ms: int = 40
    vad_threshold: float = 0.5

    def validate(self, prefix: str) -> None:
        _check(self.sample_rate in (8_000, 16_000), f"{prefix}.sample_rate",
               f"must be 8000 or 16000, got {self.sample_rate}")
        _check(self.window_ms > 0 and self.window_ms % 20 == 0, f"{prefix}.window_ms",
               f"must be a positive multiple of 20, got {self.window_ms}")
        _check(0.0 < self.vad_threshold < 1.0, f"{prefix}.vad_threshold",
               f"must be in (0, 1), got {self.vad_threshold}")


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    animator: AnimatorConfig = field(default_factory=AnimatorConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)

    def validate(self, prefix: str = "") -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


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


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{dotted}: unknown key (known: {', '.join(sorted(names))})")
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value, dotted)
        else:
            kwargs[key] = _coerce(value, annotation, dotted)
    return cls(**kwargs)


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


def config_from_dict(data: dict[str, Any] | None) -> Config:
    """Build and validate a Config from plain data (a parsed YAML document)."""
    config = _build(Config, data or {}, "")
    config.validate()
    return config


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML config file (or the defaults when ``path`` is None) and apply dotted overrides.

    Args:
        path: a YAML file; None means the built-in defaults (= configs/default.yaml).
        overrides: ``{"server.port": 9000}``-style values, e.g. from CLI flags.

    Raises:
        InputNotFoundError: the file does not exist.
        ConfigError: bad YAML, an unknown key or a bad value (the message names the key).
    """
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: expected a mapping")
        data[section][key] = value
    return config_from_dict(data)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def session_processes(config: Config) -> int:
    """``server.processes`` resolved: 0 is one per usable core (at most 4 and at most ``max_sessions``);
    backends other than lite always serve from one process (one worker per device)."""
    if config.animator.backend != "lite":
        return 1
    wanted = config.server.processes or min(4, usable_cores())
    return max(1, min(wanted, config.server.max_sessions))

