"""Per-frame targets for the lite rig, measured on real talking video by the face mesh.

Raw measures (``raw_measures``) are taken per frame in eye spans, so the video's resolution and the face's
size do not enter. The openings (jaw, inner and outer lip gaps) are 3D distances over the 3D eye span, so no
head turn enters them: in 2D a nod shortens the nose-to-chin length, and on the real clips that length followed
head pitch (r −0.5 to −0.95) more than the sound. The lip shapes are taken in the face-aligned image frame (x
along the eye line), free of roll. ``rig_targets`` then normalises
them per speaker (one clip is one speaker): mouth opening above the speaker's closed-mouth floor, lip shape and
head pose against the speaker's neutral (median) frame, eye closure against the speaker's open eye.

Targets (``RIG_TARGET_NAMES``), one row per frame:
    jaw: chin drop, nose (subnasale) to chin in 3D, above the speaker's floor (eye spans).
    mouth_open: inner-lip gap in 3D above the speaker's closed-mouth floor (eye spans).
    lip_width: corner-to-corner width against the speaker's neutral (eye spans; + wide "ee", - narrow "oo").
    lip_round: lip-centre protrusion toward the camera against neutral (eye spans of mesh depth).
    upper_lip: upper inner lip above the corner line, against neutral (eye spans; + raised).
    lower_lip: lower inner lip below the corner line, against neutral (eye spans; + lowered).
    lips_apart: outer-lip gap (0 to 17) in 3D above the speaker's floor (eye spans): the mesh holds the outer lips better
        than the inner ones on small or blurred faces.
    blink: eye closure 0 (the speaker's open eye) .. 1 (shut).
    yaw, pitch, roll: head rotation in degrees against the speaker's median pose.
"""

from __future__ import annotations

import numpy as np

from emo_stream.face import (
    CHIN,
    LIP_INNER_BOTTOM,
    LIP_INNER_TOP,
    LIP_OUTER_BOTTOM,
    LIP_OUTER_TOP,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    eye_span,
)
from emo_stream.metrics.face_measures import eye_aspect_ratio, eye_spans_3d, head_angles

SUBNASALE = 2
EYE_OUTER = (33, 263)

RAW_NAMES: tuple[str, ...] = ("jaw", "mouth_open", "lip_width", "lip_round", "upper_lip", "lower_lip", "lips_apart",
                              "ear")
RIG_TARGET_NAMES: tuple[str, ...] = ("jaw", "mouth_open", "lip_width", "lip_round", "upper_lip", "lower_lip",
                                     "lips_apart", "blink", "yaw", "pitch", "roll")
MOUTH_TARGETS: tuple[str, ...] = RIG_TARGET_NAMES[:7]
HEAD_TARGETS: tuple[str, ...] = ("yaw", "pitch", "roll")
# The speaker's closed-mouth floor: a low percentile, not the minimum, so one mesh glitch does not set it.
FLOOR_PERCENTILE = 5.0
# The speaker's open eye: most frames show open eyes, blinks are a few percent of them.
OPEN_EYE_PERCENTILE = 70.0


def raw_measures(points: np.ndarray) -> np.ndarray:
    """``RAW_NAMES`` of one frame from (478, 3) mesh points, in eye spans (NaN where the eyes coincide)."""
    span = eye_span(points)
    if not span > 0:
        return np.full(len(RAW_NAMES), np.nan)
    xy = points[:, :2].astype(np.float64)
    right, left = xy[EYE_OUTER[0]], xy[EYE_OUTER[1]]
    ex = (left - right) / max(float(np.linalg.norm(left - right)), 1e-9)
    ey = np.array([-ex[1], ex[0]])  # image-down in the face's frame

    def down(i: int) -> float:
        return float(xy[i] @ ey)

    def across(i: int) -> float:
        return float(xy[i] @ ex)

    corners = 0.5 * (down(MOUTH_LEFT) + down(MOUTH_RIGHT))
    z = points[:, 2].astype(np.float64)
    protrusion = 0.5 * (z[MOUTH_LEFT] + z[MOUTH_RIGHT]) - 0.5 * (z[LIP_OUTER_TOP] + z[LIP_OUTER_BOTTOM])
    shapes = np.array([
        abs(across(MOUTH_RIGHT) - across(MOUTH_LEFT)),
        protrusion,  # mediapipe's z grows away from the camera
        corners - down(LIP_INNER_TOP),
        down(LIP_INNER_BOTTOM) - corners,
    ]) / span
    openings = [eye_spans_3d(points, a, b) for a, b in
                ((SUBNASALE, CHIN), (LIP_INNER_TOP, LIP_INNER_BOTTOM), (LIP_OUTER_TOP, LIP_OUTER_BOTTOM))]
    # RAW_NAMES order: jaw, mouth_open, the four shapes, lips_apart, then the EAR (a ratio already)
    return np.array([openings[0], openings[1], *shapes, openings[2], eye_aspect_ratio(points)])


def _fill(values: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames without a face (edges hold the nearest value)."""
    out = np.array(values, dtype=np.float64)
    idx = np.arange(len(out))
    for j in range(out.shape[1]):
        ok = found & np.isfinite(out[:, j])
        out[:, j] = np.interp(idx, idx[ok], out[ok, j]) if ok.any() else 0.0
    return out


def rig_targets(raw: np.ndarray, rigid: np.ndarray, found: np.ndarray) -> np.ndarray:
    """(T, len(RIG_TARGET_NAMES)) float32 targets of one speaker's clip.

    Args:
        raw: (T, len(RAW_NAMES)) from ``raw_measures`` (rows of frames without a face are ignored).
        rigid: (T, K, 3) rigid landmarks (``face.RIGID_POINTS``), for the head pose.
        found: (T,) bool, frames where the mesh found the face.
    """
    raw = np.asarray(raw, dtype=np.float64)
    found = np.asarray(found, dtype=bool) & np.isfinite(raw).all(axis=1)
    t = len(raw)
    out = np.zeros((t, len(RIG_TARGET_NAMES)), dtype=np.float64)
    if found.sum() < 2:
        return out.astype(np.float32)
    raw = _fill(raw, found)
    ok = raw[found]
    floor = np.percentile(ok, FLOOR_PERCENTILE, axis=0)
    neutral = np.median(ok, axis=0)
    col = RAW_NAMES.index
    out[:, 0] = raw[:, col("jaw")] - floor[col("jaw")]
    out[:, 1] = np.maximum(raw[:, col("mouth_open")] - floor[col("mouth_open")], 0.0)
    out[:, RIG_TARGET_NAMES.index("lips_apart")] = raw[:, col("lips_apart")] - floor[col("lips_apart")]
    for name in ("lip_width", "lip_round", "upper_lip", "lower_lip"):
        out[:, RIG_TARGET_NAMES.index(name)] = raw[:, col(name)] - neutral[col(name)]
    open_eye = max(float(np.percentile(ok[:, col("ear")], OPEN_EYE_PERCENTILE)), 1e-6)
    out[:, RIG_TARGET_NAMES.index("blink")] = np.clip(1.0 - raw[:, col("ear")] / open_eye, 0.0, 1.0)
    angles = np.full((t, 3), np.nan)
    angles[found] = head_angles(np.asarray(rigid, dtype=np.float64)[found])
    angles = _fill(angles, found)
    out[:, RIG_TARGET_NAMES.index("yaw"):] = angles - np.median(angles[found], axis=0)
    return out.astype(np.float32)
