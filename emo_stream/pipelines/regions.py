"""Regions of a portrait from its face box: what ``generate_region`` generates and what training weighs more."""

from __future__ import annotations

import torch


def face_region(face: torch.Tensor, region: str) -> torch.Tensor | None:
    """[1, 1, S, S] hard mask of ``region`` (``face``: the face box; ``lower_face``: its lower half, from the nose
    down, and a sixth of its height below the chin, where the jaw drops to) from a [1, 1, S, S] face-box mask.
    None when the mask has no box (empty, or the whole frame)."""
    plane = face[0, 0] > 0.5
    rows = torch.nonzero(plane.any(dim=1)).flatten()
    cols = torch.nonzero(plane.any(dim=0)).flatten()
    size = face.shape[-1]
    if len(rows) == 0 or (len(rows) == size and len(cols) == size):
        return None
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    if region == "lower_face":
        height = bottom - top
        top, bottom = top + height // 2, min(size, bottom + height // 6)
    elif region != "face":
        raise ValueError(f"region must be 'face' or 'lower_face', got {region!r}")
    mask = torch.zeros(1, 1, size, size, device=face.device)
    mask[..., top:bottom, left:right] = 1.0
    return mask
