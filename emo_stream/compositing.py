"""Backgrounds behind the person: original, a chroma-key green, or any #rrggbb colour."""

from __future__ import annotations

import re

import numpy as np

from emo_stream.errors import ConfigError
from emo_stream.types import Frame

CHROMA_GREEN = (0, 177, 64)  # the usual chroma-key green: far from skin and hair tones
_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")


def parse_background(spec: str) -> tuple[int, int, int] | None:
    """None for ``original``, else the RGB colour of ``green`` or ``#rrggbb``.

    Raises:
        ConfigError: anything else.
    """
    spec = spec.strip()
    if spec == "original":
        return None
    if spec == "green":
        return CHROMA_GREEN
    match = _HEX.match(spec)
    if match:
        value = int(match.group(1), 16)
        return (value >> 16) & 255, (value >> 8) & 255, value & 255
    raise ConfigError(f"background must be original, green or #rrggbb, got {spec!r}")


def composite(frame: Frame, colour: tuple[int, int, int] | None) -> np.ndarray:
    """The frame's picture over ``colour`` using its matte (unchanged when colour is None)."""
    if colour is None:
        return frame.rgb
    if frame.matte is None:
        raise ValueError("this frame has no matte to composite with")
    alpha = frame.matte.astype(np.float32)[..., None] / 255.0
    out = frame.rgb.astype(np.float32) * alpha + np.asarray(colour, np.float32) * (1.0 - alpha)
    return np.round(out).astype(np.uint8)
