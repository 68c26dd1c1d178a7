"""Backgrounds behind the person: original, a chroma-key green, any #rrggbb colour, or
transparent (the matte travels beside the picture, since VP8 over WebRTC carries no alpha)."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from emo_stream.errors import ConfigError
from emo_stream.types import Frame

CHROMA_GREEN = (0, 177, 64)  # the usual chroma-key green: far from skin and hair tones
_HEX = re.compile(r"^#([0-9a-fA-F]{6})$")


@dataclass(frozen=True)
class Background:
    """``kind`` is original, colour or transparent; ``colour`` is RGB for colour."""

    kind: str = "original"
    colour: tuple[int, int, int] | None = None


def parse_background(spec: str) -> Background:
    """``original``, ``transparent``, ``green`` or ``#rrggbb``.

    Raises:
        ConfigError: anything else.
    """
    spec = (spec or "").strip()
    if spec in ("original", "transparent"):
        return Background(kind=spec)
    if spec == "green":
        return Background(kind="colour", colour=CHROMA_GREEN)
    match = _HEX.match(spec)
    if match:
        value = int(match.group(1), 16)
        return Background(kind="colour", colour=((value >> 16) & 255, (value >> 8) & 255, value & 255))
    raise ConfigError(f"background must be original, transparent, green or #rrggbb, got {spec!r}")


def _need_matte(frame: Frame) -> np.ndarray:
    if frame.matte is None:
        raise ValueError("this frame has no matte to composite with")
    return frame.matte


def over_colour(frame: Frame, colour: tuple[int, int, int]) -> np.ndarray:
    """The picture over a flat colour, by the person's matte."""
    alpha = _need_matte(frame).astype(np.float32)[..., None] / 255.0
    out = frame.rgb.astype(np.float32) * alpha + np.asarray(colour, np.float32) * (1.0 - alpha)
    return np.round(out).astype(np.uint8)


def side_by_side(frame: Frame) -> np.ndarray:
    """Picture and matte in one frame twice as wide (matte as grey on the right): a page
    recombines them into RGBA, since WebRTC's VP8 carries no alpha."""
    matte = _need_matte(frame)
    return np.concatenate([frame.rgb, np.repeat(matte[..., None], 3, axis=2)], axis=1)


def rgba(frame: Frame) -> np.ndarray:
    return np.dstack([frame.rgb, _need_matte(frame)])


def composite(frame: Frame, background: Background) -> np.ndarray:
    """The picture to send or encode for ``background``."""
    if background.kind == "original":
        return frame.rgb
    if background.kind == "colour":
        if background.colour is None:
            raise ValueError("a colour background needs its colour")
        return over_colour(frame, background.colour)
    return side_by_side(frame)
