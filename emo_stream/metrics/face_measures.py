"""Per-frame face measures from face-mesh landmarks: mouth opening, eye openness, head rotation.

Every distance is divided by the eye span (outer eye corners, 33–263) so the measures do not
depend on the video's resolution or on how large the face is in the frame.
"""

from __future__ import annotations

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
    LIP_OUTER_TOP,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    NOSE_TIP,
    RIGHT_EYE_BOTTOM,
    RIGHT_EYE_TOP,
    RIGID_POINTS,
    eye_span,
)


def _dist(points: np.ndarray, a: int, b: int) -> float:
    return float(np.linalg.norm(points[a, :2] - points[b, :2]))


def mouth_opening(points: np.ndarray) -> float:
    """How far the mouth is open, in eye spans: the mean of the outer-lip gap and the nose-to-chin length.

    The outer-lip midpoints (0 top, 17 bottom) and the jaw (nose tip 1 to chin 152) are used, not
    the inner lips (13, 14): on paintings, cartoons and synthesized mouth interiors mediapipe often
    keeps the inner lips shut while the mouth visibly opens (docs/platform.md). Both distances contain a
    constant rest length, so only changes of this value are meaningful (the metrics use ranges).
    """
    span = eye_span(points)
    if span <= 0:
        return float("nan")
    lips = _dist(points, LIP_OUTER_TOP, LIP_OUTER_BOTTOM)
    jaw = _dist(points, NOSE_TIP, CHIN)
    return 0.5 * (lips + jaw) / span


def _dist3(points: np.ndarray, a: int, b: int) -> float:
    return float(np.linalg.norm(points[a].astype(np.float64) - points[b].astype(np.float64)))


def eye_spans_3d(points: np.ndarray, a: int, b: int) -> float:
    """The 3D distance from landmark ``a`` to ``b`` over the 3D eye span: no head turn changes it (NaN where the
    eyes coincide)."""
    span = _dist3(points, EYE_OUTER_RIGHT, EYE_OUTER_LEFT)
    return _dist3(points, a, b) / span if span > 0 else float("nan")


def lip_gap(points: np.ndarray) -> float:
    """How far the lips are apart, in eye spans, whatever the head's pose: the mean of the outer-lip (0 to 17) and
    inner-lip (13 to 14) gaps, as 3D distances over the 3D eye span.

    ``mouth_opening`` is a 2D length that includes the nose and the chin, so a nod changes it as much as speech
    does: on real talking video its range in pauses is 0.85 of that in speech. Distances in 3D do not change
    when the head turns, and the lips alone do not move with the head. The outer gap keeps the measure alive
    where the mesh holds the inner lips shut (``mouth_opening`` says where).
    """
    return 0.5 * (eye_spans_3d(points, LIP_OUTER_TOP, LIP_OUTER_BOTTOM)
                  + eye_spans_3d(points, LIP_INNER_TOP, LIP_INNER_BOTTOM))


def mouth_width(points: np.ndarray) -> float:
    """Corner-to-corner width of the mouth (61 to 291), in eye spans: wide for "ee", narrow for "oo"."""
    span = eye_span(points)
    return _dist(points, MOUTH_LEFT, MOUTH_RIGHT) / span if span > 0 else float("nan")


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Eye openness: lid-to-lid height over corner-to-corner width, averaged over both eyes.

    About 0.3–0.4 for an open eye, near 0 when shut. Both eyes are averaged so a wink counts half.
    """
    right_w = _dist(points, EYE_OUTER_RIGHT, EYE_INNER_RIGHT)
    left_w = _dist(points, EYE_OUTER_LEFT, EYE_INNER_LEFT)
    if right_w <= 0 or left_w <= 0:
        return float("nan")
    right = _dist(points, RIGHT_EYE_TOP, RIGHT_EYE_BOTTOM) / right_w
    left = _dist(points, LEFT_EYE_TOP, LEFT_EYE_BOTTOM) / left_w
    return 0.5 * (right + left)


def rigid_shape(points: np.ndarray) -> np.ndarray:
    """The rigid landmark subset (``RIGID_POINTS``) as a (K, 3) float64 array, for ``head_angles``."""
    return np.asarray(points[list(RIGID_POINTS)], dtype=np.float64)


def _normalise(shape: np.ndarray) -> np.ndarray:
    """Centre a (K, 3) shape and scale it to unit RMS radius: rotation is all that is left to compare."""
    centred = shape - shape.mean(axis=0)
    scale = np.sqrt((centred**2).sum(axis=1).mean())
    return centred / scale if scale > 0 else centred


def kabsch(reference: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """The proper rotation R (3×3) that best maps the centred ``reference`` onto ``shape`` (R @ ref ≈ shape).

    Both are (K, 3) and already centred and scaled (``_normalise``). The determinant check keeps
    R a rotation, never a reflection.
    """
    h = reference.T @ shape
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def euler_zyx_degrees(r: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of R = Rz(roll) · Ry(yaw) · Rx(pitch), in image axes.

    Image axes: x to the right, y down, z away from the camera (mediapipe's depth), a right-handed
    frame. Yaw turns about the vertical (y) axis, pitch about the horizontal (x) axis, roll in the
    image plane (z); a positive roll turns the face clockwise as displayed.
    """
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1.0, 1.0)))
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return float(yaw), float(pitch), float(roll)


def head_angles(shapes: np.ndarray) -> np.ndarray:
    """Head rotation of every frame relative to the clip's typical pose, as (N, 3) yaw/pitch/roll degrees.

    ``shapes`` is (N, K, 3): the rigid landmark subset of N frames that all have a face. Each
    frame is centred and scaled, then rotated onto a reference by Kabsch/Procrustes; the
    reference is the per-point median of the first-pass aligned shapes, so one odd frame (or
    the first one) does not set the zero. Translation and zoom are thereby ignored: only turns
    of the head count.
    """
    shapes = np.asarray(shapes, dtype=np.float64)
    if shapes.ndim != 3 or shapes.shape[0] == 0:
        return np.zeros((0, 3))
    normed = np.stack([_normalise(s) for s in shapes])
    # First pass: align all to the first frame, take the median shape; second pass: angles against it.
    first = normed[0]
    aligned = np.stack([s @ kabsch(first, s) for s in normed])  # rotate each back into the first's pose
    reference = _normalise(np.median(aligned, axis=0))
    return np.array([euler_zyx_degrees(kabsch(reference, s)) for s in normed])
