"""The server's typed configuration: ``configs/*.yaml`` whole, the engine's sections plus ``server`` and ``limits``.

Read by ``emo_stream.config_reader`` like every config: an unknown key or a value of the wrong type or range is a
``ConfigError`` that names the dotted key (``server.port: expected int, got 'x'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emo_stream.config import EngineConfig, usable_cores
from emo_stream.config_reader import check, load
from server.ice_servers import parse_ice_servers


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token: str | None = None
    data_dir: str = "~/.cache/emo-stream"
    max_sessions: int = 6
    # Loopback needs none; a public deployment lists its STUN/TURN servers here, one URL each:
    # "stun:host:3478", "turn:user:password@host:3478?transport=udp" (server.ice_servers).
    ice_servers: list[str] = field(default_factory=list)
    # A live window is shown on the first tick at least this long after it completes: the animator's
    # lookahead, then ``delay_margin_ticks`` whole ticks (a slow backend's compute), then
    # ``render_margin_ms``, the least time its frame has to be rendered. Where in a tick windows
    # complete varies, so a frame gets between render_margin_ms and one tick more.
    delay_margin_ticks: int = 0
    render_margin_ms: int = 20
    # Session processes: each runs its own sessions' peers, worker and animator, so sessions on different
    # processes do not share one interpreter's lock (docs/server.md, "Session processes"). 1: all in the
    # server's own process; 0: one per core the server may use, at most 4 (the lite backend only: a GPU
    # backend keeps one worker per device).
    processes: int = 0
    # Cores a session is counted at until the running ones have been measured (3 s in): a burst of offers to
    # a fresh server gets in only as far as this fits. 0.35: four 512² lite sessions used 1.2–1.35 of this
    # machine's 2 cores (docs/benchmarks.md, "Four sessions, 40 s rounds"). 0: no estimate, only measured
    # load is refused.
    session_cost_cores: float = 0.35
    # A/V-sync diagnostics (server/av_probe.py): the frame of each tick whose returned voice holds a 1 kHz test
    # tone gets a magenta corner. Never on in production.
    av_probe: bool = False

    def validate(self, prefix: str) -> None:
        check(0 <= self.session_cost_cores <= 64, f"{prefix}.session_cost_cores",
              f"must be 0..64, got {self.session_cost_cores}")
        check(0 <= self.processes <= 64, f"{prefix}.processes", f"must be 0..64, got {self.processes}")
        check(0 <= self.port <= 65535, f"{prefix}.port", f"must be 0..65535, got {self.port}")
        check(self.max_sessions >= 1, f"{prefix}.max_sessions", f"must be >= 1, got {self.max_sessions}")
        check(0 <= self.delay_margin_ticks <= 10, f"{prefix}.delay_margin_ticks",
              f"must be 0..10, got {self.delay_margin_ticks}")
        check(0 <= self.render_margin_ms <= 1000, f"{prefix}.render_margin_ms",
              f"must be 0..1000, got {self.render_margin_ms}")
        parse_ice_servers(self.ice_servers)  # a ConfigError names a bad entry


@dataclass
class LimitsConfig:
    """What the server takes from a client (uploaded portraits)."""

    max_image_pixels: int = 40_000_000
    max_image_bytes: int = 25 * 1024 * 1024
    min_face_px: int = 48

    def validate(self, prefix: str) -> None:
        for name in ("max_image_pixels", "max_image_bytes", "min_face_px"):
            value = getattr(self, name)
            check(value > 0, f"{prefix}.{name}", f"must be positive, got {value}")


@dataclass
class Config(EngineConfig):
    """A whole config file: the engine's ``animator`` and ``audio`` sections plus the server's."""

    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load a YAML config file (or the defaults when ``path`` is None) and apply dotted overrides.

    Args:
        path: a YAML file; None means the built-in defaults (= configs/default.yaml).
        overrides: ``{"server.port": 9000}``-style values, e.g. from CLI flags (None values are skipped).

    Raises:
        InputNotFoundError: the file does not exist.
        ConfigError: bad YAML, an unknown key or a bad value (the message names the key).
    """
    return load(Config, path, overrides)


def session_processes(config: Config) -> int:
    """``server.processes`` resolved: 0 is one per usable core (at most 4 and at most ``max_sessions``);
    backends other than lite always serve from one process (one worker per device)."""
    if config.animator.backend != "lite":
        return 1
    wanted = config.server.processes or min(4, usable_cores())
    return max(1, min(wanted, config.server.max_sessions))
