"""Photometric and mirror augmentation of a training sample, the same for all of its frames.

A model trained on a handful of portraits can learn them by heart instead of learning to carry the reference
portrait's look into the frames it makes; then a portrait it has not seen comes out as one it has. Recolouring
(hue turn, saturation, contrast, brightness) and mirroring each sample differently takes that shortcut away.
The reference, motion and target frames of one sample get the same change (they are one person in one video);
the face mask gets the mirror; the audio is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# RGB ↔ YIQ (NTSC): the hue is the angle of (I, Q), the saturation their length.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


@dataclass(frozen=True)
class ColourJitter:
    """The ranges augmentation draws from (uniform in each).

    Attributes:
        hue_turn: largest hue rotation, in turns (0.5 = any hue).
        saturation: (low, high) chroma scale (0 = greyscale).
        contrast: (low, high) scale about mid-grey.
        brightness: (low, high) offset in [-1, 1] pixel units.
        flip: probability of a left-right mirror.
    """

    hue_turn: float = 0.5
    saturation: tuple[float, float] = (0.0, 1.4)
    contrast: tuple[float, float] = (0.7, 1.3)
    brightness: tuple[float, float] = (-0.15, 0.15)
    flip: float = 0.5


@dataclass(frozen=True)
class Augmentation:
    """One sample's change: ``pixels → matrix @ pixels + offset`` per RGB pixel (in [-1, 1]), then a mirror."""

    matrix: np.ndarray  # (3, 3)
    offset: np.ndarray  # (3,)
    flip: bool

    def pixels(self, x: torch.Tensor) -> torch.Tensor:
        """[3, ...] RGB in [-1, 1] → the same shape, changed and clamped to [-1, 1]; the last axis is width."""
        m = torch.as_tensor(self.matrix, dtype=x.dtype)
        b = torch.as_tensor(self.offset, dtype=x.dtype)
        shape = x.shape
        y = (m @ x.reshape(3, -1) + b[:, None]).reshape(shape).clamp_(-1.0, 1.0)
        return y.flip(-1) if self.flip else y

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if self.flip else x


def draw_augmentation(rng: np.random.Generator, jitter: ColourJitter = ColourJitter()) -> Augmentation:
    """A random ``Augmentation`` from ``rng`` (deterministic for its state)."""
    angle = 2.0 * np.pi * rng.uniform(-jitter.hue_turn, jitter.hue_turn)
    saturation = rng.uniform(*jitter.saturation)
    contrast = rng.uniform(*jitter.contrast)
    brightness = rng.uniform(*jitter.brightness)
    flip = bool(rng.random() < jitter.flip)
    c, s = np.cos(angle), np.sin(angle)
    chroma = saturation * np.array([[c, -s], [s, c]])
    in_yiq = np.eye(3)
    in_yiq[1:, 1:] = chroma
    matrix = contrast * (_YIQ_TO_RGB @ in_yiq @ _RGB_TO_YIQ)
    # Contrast about mid-grey (0 in [-1, 1] units), then the brightness offset on every channel.
    offset = np.full(3, brightness)
    return Augmentation(matrix=matrix.astype(np.float32), offset=offset.astype(np.float32), flip=flip)
