"""Per-portrait set-up of the lite animator: local face frames, lip and lid contours, masks,
a depth map for head-turn parallax and the synthesized mouth-interior panel.

Computed once per avatar (cached by its content key); every frame then only evaluates
closed-form maps on small regions (see ``lite_warp``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from emo_stream.face import CHIN, FOREHEAD, MOUTH_LEFT, MOUTH_RIGHT
from emo_stream.matte import FACE_OVAL, person_matte
from emo_stream.types import Avatar

# mediapipe face-mesh contours, ordered corner to corner.
INNER_UPPER_LIP = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LOWER_LIP = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
OUTER_UPPER_LIP = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
OUTER_LOWER_LIP = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
SUBNASALE = 2
JAW_LEFT, JAW_RIGHT = 172, 397  # lower jaw, either side, about mouth level
# Eyes: (outer corner, inner corner, upper lid, lower lid, brow, iris centre, iris edge).
RIGHT_EYE = (33, 133, (246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155),
             (70, 63, 105, 66, 107), 468, 469)
LEFT_EYE = (263, 362, (466, 388, 387, 386, 385, 384, 398), (249, 390, 373, 374, 380, 381, 382),
            (300, 293, 334, 296, 336), 473, 474)
PANEL_W = 96  # columns of the mouth-interior panel: u from -1 to 1 across the mouth
PANEL_ROWS = 32  # rows per section: upper teeth, cavity, tongue and lower teeth
LOW_RES = 64  # grid of the smooth head-motion field


@dataclass
class LocalFrame:
    """An oriented frame on the face: ``u`` along ``ex``, ``v`` along ``ey`` (image-down), origin ``c``."""

    c: np.ndarray
    ex: np.ndarray
    ey: np.ndarray

    def __post_init__(self) -> None:
        # float32 so per-pixel maps stay float32 (cv2.remap's map type) without copies.
        self.c = np.asarray(self.c, np.float32)
        self.ex = np.asarray(self.ex, np.float32)
        self.ey = np.asarray(self.ey, np.float32)

    @staticmethod
    def through(left: np.ndarray, right: np.ndarray) -> LocalFrame:
        ex = (right - left) / max(float(np.linalg.norm(right - left)), 1e-6)
        return LocalFrame(c=(left + right) / 2, ex=ex, ey=np.array([-ex[1], ex[0]]))

    def to_local(self, pts: np.ndarray) -> np.ndarray:
        d = pts - self.c
        return np.stack([d @ self.ex, d @ self.ey], axis=-1)

    def to_image(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        c, ex, ey = self.c, self.ex, self.ey
        return (c[0] + u * ex[0] + v * ey[0], c[1] + u * ex[1] + v * ey[1])


@dataclass
class Curve:
    """A contour sampled as v(u) on a fixed u grid (np.interp outside clamps to the end values)."""

    u: np.ndarray
    v: np.ndarray

    @staticmethod
    def from_points(local: np.ndarray) -> Curve:
        order = np.argsort(local[:, 0])
        u, v = local[order, 0], local[order, 1]
        u, keep = np.unique(u, return_index=True)
        return Curve(u=u, v=v[keep])

    def __call__(self, u: np.ndarray) -> np.ndarray:
        return np.interp(u, self.u, self.v).astype(np.float32)


@dataclass
class MouthRig:
    frame: LocalFrame
    half_width: float
    inner_upper: Curve
    inner_lower: Curve
    v_top: float
    v_chin: float
    v_neck: float
    jaw_half_width: float
    own_teeth: bool  # the photo shows its teeth: keep them, draw no synthetic ones


@dataclass
class EyeRig:
    frame: LocalFrame
    half_width: float
    upper_lid: Curve
    lower_lid: Curve
    brow: Curve
    brow_half_width: float
    v_forehead: float
    iris: np.ndarray  # (u, v) of the iris centre
    iris_radius: float


@dataclass
class AvatarRig:
    """Everything the per-frame warp needs for one portrait."""

    size: int
    atlas: np.ndarray  # RGBA: the portrait (alpha = person matte), the mouth-interior panel to its right
    mouth: MouthRig
    eyes: tuple[EyeRig, EyeRig]
    face_height: float
    face_center: np.ndarray
    pivot: np.ndarray  # neck base: the centre of head roll
    head_mask: np.ndarray  # LOW_RES² weights of the head (1) fading to the still background (0)
    torso_mask: np.ndarray  # LOW_RES² weights of the shoulders for breathing
    depth: np.ndarray  # LOW_RES² depth toward the camera (pixels) for turn parallax
    head_radius: float
    panel_x0: int


def _contour(frame: LocalFrame, pts: np.ndarray, idx: tuple[int, ...]) -> np.ndarray:
    return frame.to_local(pts[list(idx)])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _lip_colour(rgb: np.ndarray, pts: np.ndarray) -> np.ndarray:
    mask = np.zeros(rgb.shape[:2], np.uint8)
    outer = np.concatenate([pts[list(OUTER_UPPER_LIP)], pts[list(OUTER_LOWER_LIP[::-1])]])
    inner = np.concatenate([pts[list(INNER_UPPER_LIP)], pts[list(INNER_LOWER_LIP[::-1])]])
    cv2.fillPoly(mask, [np.round(outer).astype(np.int32)], (1,))
    cv2.fillPoly(mask, [np.round(inner).astype(np.int32)], (0,))
    if mask.sum() < 5:
        cv2.fillPoly(mask, [np.round(outer).astype(np.int32)], (1,))
    return np.median(rgb[mask > 0], axis=0).astype(np.float32) if mask.sum() else np.array([150, 80, 80], np.float32)


def _interior_panel(lip: np.ndarray, brightness: float) -> np.ndarray:
    """The synthesized mouth interior, three sections stacked: upper teeth, dark cavity,
    tongue with lower teeth. Colours come from the portrait's own lips and brightness, and
    are desaturated as much as the portrait is (greyscale photos get grey interiors)."""
    w, r = PANEL_W, PANEL_ROWS
    u = np.linspace(-1, 1, w, dtype=np.float32)[None, :]
    corner_shade = 1.0 - 0.55 * np.abs(u) ** 2  # darker toward the mouth corners
    t = np.linspace(0, 1, r, dtype=np.float32)[:, None]

    # How colourful the lips are decides how much warm tint the interior gets: none for a
    # greyscale portrait, full for a colour photo.
    hsv = cv2.cvtColor(np.clip(lip, 0, 255).astype(np.uint8)[None, None, :], cv2.COLOR_RGB2HSV)[0, 0]
    colourful = min(1.0, float(hsv[1]) / 255.0 * 2.5)
    # Teeth take some of the lips' tint, so they sit in the photo's light rather than look blue.
    teeth_base = (0.65 * np.array([248, 244, 232], np.float32) + 0.35 * lip) * (0.55 + 0.45 * brightness)
    # Incisor gaps: faint darker lines at fixed positions across the mouth.
    gaps = 1.0 - 0.18 * np.exp(-((np.abs(u) % 0.28 - 0.14) / 0.018) ** 2) * (np.abs(u) < 0.9)
    upper_shade = (1.0 - 0.25 * t ** 2) * corner_shade * gaps  # teeth edges fade into the cavity
    upper = teeth_base[None, None, :] * upper_shade[..., None]

    cavity_colour = lip * 0.3 + np.array([28, 4, 8], np.float32) * colourful
    cavity = cavity_colour[None, None, :] * (corner_shade * (1.0 - 0.3 * t))[..., None]

    tongue_colour = lip * 0.8 + np.array([35, 0, 10], np.float32) * colourful
    tongue_w = np.clip(1.0 - (u / 0.75) ** 2, 0, 1) * _smoothstep(t * 2.0)
    lower = cavity_colour[None, None, :] * (corner_shade * 0.8)[..., None]
    lower = lower * (1 - tongue_w[..., None]) + tongue_colour[None, None, :] * tongue_w[..., None] * corner_shade[..., None]
    lower_teeth = (t > 0.78) * (np.abs(u) < 0.7)
    lower = np.where(lower_teeth[..., None], teeth_base * 0.8 * corner_shade[..., None], lower)

    panel = np.concatenate([upper, cavity, lower], axis=0)
    grey = panel.mean(axis=2, keepdims=True)
    panel = grey + (panel - grey) * colourful
    return np.clip(panel, 0, 255).astype(np.uint8)


def _low_res_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    # Sample positions of the low-res grid in full-res pixel coordinates (cell centres as
    # cv2.resize with INTER_LINEAR maps them).
    coords = (np.arange(LOW_RES, dtype=np.float32) + 0.5) * size / LOW_RES - 0.5
    gx, gy = np.meshgrid(coords, coords)
    return gx, gy


def build_rig(avatar: Avatar) -> AvatarRig:
    """Measure the portrait once: frames, contours, masks, depth, interior panel."""
    rgb = avatar.image
    size = avatar.size
    pts3 = avatar.landmarks.points.astype(np.float64)
    pts = pts3[:, :2]
    face_height = float(np.linalg.norm(pts[CHIN] - pts[FOREHEAD]))

    # 1. Mouth: a frame through the corners, lip contours as v(u), jaw and neck levels.
    mf = LocalFrame.through(pts[MOUTH_LEFT], pts[MOUTH_RIGHT])
    half_width = float(np.linalg.norm(pts[MOUTH_RIGHT] - pts[MOUTH_LEFT]) / 2)
    inner_upper = Curve.from_points(_contour(mf, pts, INNER_UPPER_LIP))
    inner_lower = Curve.from_points(_contour(mf, pts, INNER_LOWER_LIP))
    gap = float(inner_lower(np.array([0.0]))[0] - inner_upper(np.array([0.0]))[0])
    v_chin = float(mf.to_local(pts[CHIN][None])[0, 1])
    v_nose = float(mf.to_local(pts[SUBNASALE][None])[0, 1])
    jaw_u = np.abs(mf.to_local(pts[[JAW_LEFT, JAW_RIGHT]])[:, 0])
    mouth = MouthRig(
        frame=mf, half_width=half_width, inner_upper=inner_upper, inner_lower=inner_lower,
        v_top=min(v_nose, float(inner_upper(np.array([0.0]))[0]) - 0.5 * half_width),
        v_chin=v_chin, v_neck=v_chin + 0.55 * face_height,
        jaw_half_width=max(float(jaw_u.mean()), 1.6 * half_width), own_teeth=gap > 0.12 * half_width)

    # 2. Eyes: a frame through each eye's corners, lids and brow as v(u).
    eyes = []
    for outer, inner, upper, lower, brow, iris, iris_edge in (RIGHT_EYE, LEFT_EYE):
        left, right = (pts[outer], pts[inner]) if pts[outer][0] < pts[inner][0] else (pts[inner], pts[outer])
        ef = LocalFrame.through(left, right)
        eye_half = float(np.linalg.norm(right - left) / 2)
        upper_c = Curve.from_points(_contour(ef, pts, (outer, *upper, inner)))
        lower_c = Curve.from_points(_contour(ef, pts, (outer, *lower, inner)))
        brow_local = _contour(ef, pts, brow)
        brow_c = Curve.from_points(brow_local)
        v_brow_min = float(brow_local[:, 1].min())
        eyes.append(EyeRig(
            frame=ef, half_width=eye_half, upper_lid=upper_c, lower_lid=lower_c, brow=brow_c,
            brow_half_width=max(float(np.abs(brow_local[:, 0]).max()), eye_half) * 1.1,
            v_forehead=v_brow_min - 1.2 * abs(v_brow_min), iris=ef.to_local(pts[iris][None])[0],
            iris_radius=float(np.linalg.norm(pts[iris_edge] - pts[iris]))))

    # 3. Head and torso masks, and depth for parallax, on a low-res grid.
    gx, gy = _low_res_grid(size)
    oval = pts[list(FACE_OVAL)]
    face_center = oval.mean(axis=0)
    face_width = float(oval[:, 0].max() - oval[:, 0].min())
    hair_center = face_center - np.array([0, 0.12 * face_height])
    ex = (gx - hair_center[0]) / (0.62 * face_width + 0.08 * face_height)
    ey = (gy - hair_center[1]) / (0.72 * face_height)
    r = np.sqrt(ex ** 2 + ey ** 2)
    head = 1.0 - _smoothstep((r - 0.9) / 0.45)
    chin = pts[CHIN]
    neck_w = 0.42 * face_width
    below = (gy - chin[1]) / (0.6 * face_height)
    neck = (1.0 - _smoothstep(np.abs(gx - chin[0]) / neck_w - 0.5)) * (1.0 - _smoothstep(below)) * (gy > chin[1] - 0.2 * face_height)
    head_mask = np.maximum(head, neck * 0.9).astype(np.float32)
    shoulders = _smoothstep((gy - chin[1] - 0.2 * face_height) / (0.5 * face_height))
    torso_mask = (shoulders * (1.0 - _smoothstep(np.abs(gx - chin[0]) / (1.4 * face_width) - 0.3))).astype(np.float32)

    z = -pts3[:, 2]
    z = z - np.median(z[list(FACE_OVAL)])
    sigma = 0.06 * face_height
    d2 = (gx.reshape(-1, 1) - pts[:, 0]) ** 2 + (gy.reshape(-1, 1) - pts[:, 1]) ** 2
    weights = np.exp(-d2 / (2 * sigma ** 2))
    depth = (weights @ z) / (weights.sum(axis=1) + 1e-6)
    oval_mask = np.zeros((LOW_RES, LOW_RES), np.uint8)
    cv2.fillPoly(oval_mask, [np.round((oval + 0.5) * LOW_RES / size - 0.5).astype(np.int32)], (1,))
    inside = cv2.GaussianBlur(oval_mask.astype(np.float32), (5, 5), 0)
    depth = (np.clip(depth.reshape(LOW_RES, LOW_RES), 0, None) * inside).astype(np.float32)

    # 4. The atlas: portrait, then the mouth-interior panel (sampled by the cavity's map).
    lip = _lip_colour(rgb, pts)
    brightness = float(np.mean(rgb)) / 255.0
    panel = _interior_panel(lip, min(1.0, 0.4 + brightness))
    # Its fourth channel is the person's matte, warped by the same map as the picture.
    # At least as tall as the panel: small outputs (< 96 px) still hold the whole interior.
    atlas = np.zeros((max(size, panel.shape[0]), size + PANEL_W + 4, 4), np.uint8)
    atlas[:size, :size, :3] = rgb
    atlas[:size, :size, 3] = person_matte(rgb, avatar.landmarks)
    atlas[: panel.shape[0], size + 2: size + 2 + PANEL_W, :3] = panel
    atlas[: panel.shape[0], size + 2: size + 2 + PANEL_W, 3] = 255

    return AvatarRig(size=size, atlas=atlas, mouth=mouth, eyes=(eyes[0], eyes[1]), face_height=face_height,
                     face_center=face_center, pivot=chin + np.array([0, 0.35 * face_height]),
                     head_mask=head_mask, torso_mask=torso_mask, depth=depth,
                     head_radius=0.45 * face_width, panel_x0=size + 2)
