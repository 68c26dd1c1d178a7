"""Initial noise of a clip: Gaussian, AR(1)-correlated across frames and continued from the previous clip.

The one place this noise is made; every sampling path (offline clips, whole videos, streamed batches) draws it
here, so a seed gives the same noise whichever path samples it.
"""

from __future__ import annotations

import math

import torch
from diffusers.utils.torch_utils import randn_tensor


def ar1_noise(shape: tuple[int, ...], generator: torch.Generator | None, correlation: float = 0.0,
              previous: torch.Tensor | None = None, device: torch.device | str | None = None) -> torch.Tensor:
    """Unit-variance float32 noise of ``shape`` [B, C, F, h, w], an AR(1) process along the frames (axis 2).

    Frame f is ``correlation × frame(f-1) + sqrt(1 - correlation²) × fresh(f)``, so every frame keeps unit
    variance and neighbours correlate by ``correlation``. Frame 0 continues ``previous`` [B, C, h, w] (the last
    frame of the previous clip's noise) when given, else is fresh. ``correlation`` 0 is independent noise.
    The fresh draws come from ``generator`` in one call (the same draws whatever the correlation).
    """
    fresh = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    if correlation == 0.0:
        return fresh
    keep = math.sqrt(1.0 - correlation**2)
    frames = []
    last = None if previous is None else previous.float()
    for f in range(shape[2]):
        current = fresh[:, :, f] if last is None else correlation * last + keep * fresh[:, :, f]
        frames.append(current)
        last = current
    return torch.stack(frames, dim=2)
