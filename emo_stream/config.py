"""The engine's typed configuration: the ``animator`` and ``audio`` sections of ``configs/*.yaml``.

Every section is a dataclass read by ``emo_stream.config_reader``; an unknown key or a value of the wrong type
or range is a ``ConfigError`` that names the dotted key (``animator.size: expected int, got 'big'``). The
server's own sections (``server``, ``limits``) and the whole file's ``Config`` live in ``server/config.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from emo_stream.config_reader import check, validate_sections

BACKENDS = ("lite", "emo")
LITE_MOTIONS = ("learned", "rules")


@dataclass
class AnimatorConfig:
    backend: str = "lite"
    size: int = 512
    fps: int = 25
    seed: int = 0
    motion: float = 1.0
    lite_motion: str = "learned"  # the lite mouth, blinks and head: fitted to real video, or the hand-tuned rules
    checkpoint: str | None = None
    device: str = "cpu"

    def validate(self, prefix: str) -> None:
        check(self.backend in BACKENDS, f"{prefix}.backend", f"must be one of {BACKENDS}, got {self.backend!r}")
        check(64 <= self.size <= 2048 and self.size % 2 == 0, f"{prefix}.size",
              f"must be an even number of pixels in 64..2048, got {self.size}")
        check(1 <= self.fps <= 60, f"{prefix}.fps", f"must be 1..60, got {self.fps}")
        check(0.0 <= self.motion <= 3.0, f"{prefix}.motion", f"must be 0..3, got {self.motion}")
        check(self.lite_motion in LITE_MOTIONS, f"{prefix}.lite_motion",
              f"must be one of {LITE_MOTIONS}, got {self.lite_motion!r}")


@dataclass
class AudioConfig:
    sample_rate: int = 16_000
    window_ms: int = 40
    vad_threshold: float = 0.5

    def validate(self, prefix: str) -> None:
        check(self.sample_rate in (8_000, 16_000), f"{prefix}.sample_rate",
              f"must be 8000 or 16000, got {self.sample_rate}")
        check(self.window_ms > 0 and self.window_ms % 20 == 0, f"{prefix}.window_ms",
              f"must be a positive multiple of 20, got {self.window_ms}")
        check(0.0 < self.vad_threshold < 1.0, f"{prefix}.vad_threshold",
              f"must be in (0, 1), got {self.vad_threshold}")


@dataclass
class EngineConfig:
    """The engine's sections of a config file; ``server.config.Config`` adds the server's."""

    animator: AnimatorConfig = field(default_factory=AnimatorConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)

    def validate(self, prefix: str = "") -> None:
        validate_sections(self, prefix)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity; ``os.cpu_count()`` where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
