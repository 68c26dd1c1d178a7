"""Test-only image edits of a still portrait: open the mouth, close the eyes, roll the head.

They make clips whose motion is known exactly, so the metrics can be checked against the truth.
Landmarks are found once on the still portrait; every frame is the still warped with cv2.remap
by a smooth displacement field, so nothing but the intended region moves.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from emo_stream.face import (
    CHIN,
    EYE_INNER_LEFT,
    EYE_INNER_RIGHT,
    EYE_OUTER_LEFT,
    EYE_OUTER_RIGHT,
    LEFT_EYE_BOTTOM,
    LEFT_EYE_TOP,
    LIP_INNER_BOTTOM,
    LIP_INNER_TOP,
    LIP_OUTER_BOTTOM,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    RIGHT_EYE_BOTTOM,
    RIGHT_EYE_TOP,
    FaceMesh,
    eye_span,
)

CAVITY_RGB = np.array([45, 18, 22], dtype=np.float32)  # dark red-brown: a mouth interior in shadow


@dataclass(frozen=True)
class PortraitRig:
    """A still portrait and the landmark positions the edits are anchored to."""

    rgb: np.ndarray
    points: np.ndarray  # (478, 3) landmarks of the still

    @classmethod
    def from_image(cls, rgb: np.ndarray) -> PortraitRig:
        with FaceMesh(static=True) as mesh:
            faces = mesh.detect(rgb)
        if not faces:
            raise ValueError("no face in the test portrait")
        return cls(rgb=np.ascontiguousarray(rgb), points=faces[0].points)

    @property
    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.rgb.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        return xs, ys


def open_mouth(rig: PortraitRig, opening: float, max_drop: float = 0.28) -> np.ndarray:
    """The portrait with its jaw dropped by ``opening × max_drop × eye span`` pixels.

    Everything below the mouth line (lower lip, chin, jaw) moves down, most at the mouth's
    centre and fading towards the cheeks (Gaussian across, zero above the mouth line, easing
    back to zero on the neck); the gap that opens between the lips is painted as a dark
    cavity. mediapipe then sees the lower lip (17) and the chin (152) move.
    """
    opening = float(np.clip(opening, 0.0, 1.0))
    if opening <= 0.0:
        return rig.rgb.copy()
    p = rig.points
    xs, ys = rig.grid
    span = eye_span(p)
    drop = opening * max_drop * span
    cx = 0.5 * (p[MOUTH_LEFT, 0] + p[MOUTH_RIGHT, 0])
    half_width = 0.5 * abs(p[MOUTH_RIGHT, 0] - p[MOUTH_LEFT, 0])
    mouth_y = 0.5 * (p[LIP_INNER_TOP, 1] + p[LIP_INNER_BOTTOM, 1])
    chin_y = p[CHIN, 1]
    lip_y = p[LIP_OUTER_BOTTOM, 1]
    # Across: at the mouth line the opening is lens-shaped (the corners stay put, nothing moves beside
    # them, so the cheeks do not tear); by the lower lip's edge it has widened into a Gaussian under
    # the whole jaw, so the chin drops as one piece.
    dx = (xs - cx) / half_width
    lens = np.sqrt(np.clip(1.0 - dx**2, 0.0, 1.0))
    jaw = np.exp(-0.5 * (dx / 0.9) ** 2)
    blend = np.clip((ys - mouth_y) / max(lip_y - mouth_y, 1.0), 0.0, 1.0)
    across = lens + (jaw - lens) * blend
    # Down: nothing above the mouth line, all of it from the lips to the chin, easing to 0 on the neck.
    fade = 1.2 * (chin_y - mouth_y)
    below = np.clip(1 - (ys - chin_y) / fade, 0, 1)
    down = np.where(ys < mouth_y, 0.0, np.where(ys <= chin_y, 1.0, 0.5 - 0.5 * np.cos(np.pi * below)))
    dy = (drop * across * down).astype(np.float32)
    out = cv2.remap(rig.rgb, xs, ys - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # The cavity: the rows between the mouth line and where the lower lip now starts, column by
    # column (the lower lip at column x sampled from mouth_y now sits at mouth_y + gap(x)).
    gap = drop * lens[0]
    inside = (ys >= mouth_y) & (ys < mouth_y + gap[None, :])
    alpha = cv2.GaussianBlur(inside.astype(np.float32), (0, 0), 0.8)[..., None]
    return (out * (1 - alpha) + CAVITY_RGB * alpha).astype(np.uint8)


def close_eyes(rig: PortraitRig, closure: float) -> np.ndarray:
    """The portrait with both upper eyelids pulled down over the eyes by ``closure`` (0 open, 1 shut).

    Inside each eye's ellipse the image is sampled from above the eye (the lid's skin is
    stretched down), and a dark lash line is drawn where the lid meets the lower rim.
    """
    closure = float(np.clip(closure, 0.0, 1.0))
    if closure <= 0.0:
        return rig.rgb.copy()
    out = rig.rgb.astype(np.float32)
    p = rig.points
    for outer, inner, top, bottom in ((EYE_OUTER_RIGHT, EYE_INNER_RIGHT, RIGHT_EYE_TOP, RIGHT_EYE_BOTTOM),
                                      (EYE_OUTER_LEFT, EYE_INNER_LEFT, LEFT_EYE_TOP, LEFT_EYE_BOTTOM)):
        out = _close_one_eye(out, p, outer, inner, top, bottom, closure)
    return np.clip(out, 0, 255).astype(np.uint8)


def _close_one_eye(img: np.ndarray, p: np.ndarray, outer: int, inner: int, top: int, bottom: int,
                   closure: float) -> np.ndarray:
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = 0.5 * (p[outer, 0] + p[inner, 0])
    cy = 0.5 * (p[top, 1] + p[bottom, 1])
    rx = 0.5 * abs(p[inner, 0] - p[outer, 0]) * 1.25
    ry = max(abs(p[bottom, 1] - p[top, 1]), 3.0) * 1.1
    lid = max(abs(p[bottom, 1] - p[top, 1]), 3.0)
    ell = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2
    # Displacement: pull skin from above the eye down by the lid's travel; smooth fall-off at the rim.
    weight = np.clip(1.0 - ell, 0.0, 1.0) ** 0.5
    dy = (closure * 1.6 * lid * weight).astype(np.float32)
    warped = cv2.remap(img, xs, ys - dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # Skin colour over the eye ball: the mean of a band above the eye, blended in as the lid closes.
    band = img[int(max(cy - 3 * ry, 0)):int(max(cy - 1.5 * ry, 1)), int(cx - rx):int(cx + rx)]
    skin = band.reshape(-1, 3).mean(axis=0) if band.size else np.array([180, 140, 120], np.float32)
    inside = (ell < 1.0).astype(np.float32)
    alpha = cv2.GaussianBlur(inside, (0, 0), 1.2)[..., None] * closure
    out = warped * (1 - alpha) + skin * alpha
    # Lash line along the lower half of the ellipse when (nearly) shut.
    lash = np.exp(-0.5 * ((ys - (cy + 0.3 * lid)) / 1.0) ** 2) * (np.abs(xs - cx) < rx * 0.95)
    lash = (lash * max(closure - 0.5, 0) * 2)[..., None]
    return out * (1 - 0.7 * lash) + np.array([30, 20, 20], np.float32) * 0.7 * lash


def roll(rgb: np.ndarray, degrees: float, center: tuple[float, float]) -> np.ndarray:
    """The image rotated in its plane by ``degrees`` (counter-clockwise as displayed) about ``center``."""
    m = cv2.getRotationMatrix2D(center, degrees, 1.0)
    h, w = rgb.shape[:2]
    return cv2.warpAffine(rgb, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
