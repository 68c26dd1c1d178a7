"""The lite animator's renderer: FaceParams -> one backward map -> one ``cv2.remap``.

For each output pixel the map says where to sample the atlas (portrait + mouth-interior
panel). It is built in three steps:
1. head motion (roll, yaw/pitch with depth parallax, sway, breathing) as a smooth field,
   computed on a 64² grid and upsampled — the background outside the head mask stays still;
2. the mouth: in a frame along the lips, each column is a piecewise-linear map of v — the
   upper lip region, the photo's own mouth interior split between the lips, a new cavity
   (mapped into the interior panel: teeth, dark cavity, tongue), the lower lip and chin
   moving with the jaw, and the neck taking up the stretch;
3. the eyes: lids closing over the eye (blinks), brows rising, the iris shifting (gaze).
Steps 2 and 3 are evaluated at the head-moved positions, so no map is ever interpolated
across the lip or lid edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from emo_stream.animators.lite_rig import LOW_RES, PANEL_ROWS, PANEL_W, AvatarRig, EyeRig, MouthRig


@dataclass
class FaceParams:
    """One frame's expression and pose.

    Attributes:
        jaw: jaw opening, 0 (closed) .. 1 (wide "aa").
        spread: lip width, -1 (round "oo") .. 1 (wide "ee").
        close: lips pressed together (m/b/p), 0 .. 1; closes a photo's open mouth too.
        brow: brow raise, 0 .. 1.
        blink_left, blink_right: lid closure, 0 (open) .. 1 (shut).
        gaze_x, gaze_y: iris shift, -1 .. 1 of its range.
        yaw, pitch, roll: head rotation in degrees (pitch > 0 looks down).
        shift_x, shift_y: head sway in pixels; breath: shoulders' rise, 0 .. 1.
    """

    jaw: float = 0.0
    spread: float = 0.0
    close: float = 0.0
    brow: float = 0.0
    blink_left: float = 0.0
    blink_right: float = 0.0
    gaze_x: float = 0.0
    gaze_y: float = 0.0
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    breath: float = 0.0


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


class LiteRenderer:
    """Renders FaceParams for one rig; holds the reusable full-resolution grids."""

    def __init__(self, rig: AvatarRig) -> None:
        self.rig = rig
        s = rig.size
        self._gx, self._gy = np.meshgrid(np.arange(s, dtype=np.float32), np.arange(s, dtype=np.float32))
        self._mouth_box = self._box_for_mouth(rig.mouth)
        self._eye_boxes = [self._box_for_eye(e) for e in rig.eyes]

    # ------------------------------------------------------------------ regions
    def _clip_box(self, xs: np.ndarray, ys: np.ndarray, margin: float) -> tuple[int, int, int, int]:
        s = self.rig.size
        x0 = int(max(0, math.floor(xs.min() - margin)))
        y0 = int(max(0, math.floor(ys.min() - margin)))
        x1 = int(min(s, math.ceil(xs.max() + margin)))
        y1 = int(min(s, math.ceil(ys.max() + margin)))
        return x0, y0, x1, y1

    def _box_for_mouth(self, m: MouthRig) -> tuple[int, int, int, int]:
        u = np.array([-m.jaw_half_width, m.jaw_half_width] * 2) * 1.05
        v = np.array([m.v_top, m.v_top, m.v_neck, m.v_neck])
        xs, ys = m.frame.to_image(u, v)
        return self._clip_box(np.asarray(xs), np.asarray(ys), margin=0.12 * self.rig.face_height)

    def _box_for_eye(self, e: EyeRig) -> tuple[int, int, int, int]:
        lower = float(e.lower_lid.v.max())
        u = np.array([-e.brow_half_width, e.brow_half_width] * 2) * 1.5
        v = np.array([e.v_forehead, e.v_forehead, lower + 0.4 * e.half_width, lower + 0.4 * e.half_width])
        xs, ys = e.frame.to_image(u, v)
        return self._clip_box(np.asarray(xs), np.asarray(ys), margin=0.08 * self.rig.face_height)

    # ------------------------------------------------------------------ head
    def head_field(self, p: FaceParams) -> np.ndarray | None:
        """Backward displacement (2×H×W) of head motion, or None when the head is still."""
        rig = self.rig
        if max(abs(p.yaw), abs(p.pitch), abs(p.roll), abs(p.shift_x), abs(p.shift_y), abs(p.breath)) < 1e-4:
            return None
        coords = (np.arange(LOW_RES, dtype=np.float32) + 0.5) * rig.size / LOW_RES - 0.5
        gx, gy = np.meshgrid(coords, coords)
        dx, dy = gx - rig.pivot[0], gy - rig.pivot[1]
        roll = math.radians(p.roll)
        cos_r, sin_r = math.cos(roll), math.sin(roll)
        rot_x = cos_r * dx - sin_r * dy - dx
        rot_y = sin_r * dx + cos_r * dy - dy
        yaw, pitch = math.radians(p.yaw), math.radians(p.pitch)
        reach = rig.head_radius + rig.depth  # distance from the turning axis, per pixel
        fx = rot_x + yaw * reach + p.shift_x
        fy = rot_y + pitch * reach + p.shift_y
        m = rig.head_mask
        field_x = m * fx
        field_y = m * fy - p.breath * 0.012 * rig.face_height * rig.torso_mask * (1 - m)
        field = np.stack([field_x, field_y]).astype(np.float32)
        s = rig.size
        return np.stack([cv2.resize(f, (s, s), interpolation=cv2.INTER_LINEAR) for f in field])

    # ------------------------------------------------------------------ mouth
    def _mouth(self, p: FaceParams, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = self.rig.mouth
        f = m.frame
        hw = m.half_width
        dxp, dyp = X - f.c[0], Y - f.c[1]
        u = dxp * f.ex[0] + dyp * f.ex[1]
        v = dxp * f.ey[0] + dyp * f.ey[1]

        # 1. Lip width: corners move out ("ee") or in ("oo"), fading away from the lips.
        lip_mid = 0.5 * (m.inner_upper(u) + m.inner_lower(u))
        gain = 0.14 if p.spread >= 0 else 0.2
        corner_shift = p.spread * gain * hw
        vert = np.exp(-(((v - lip_mid) / (0.8 * hw)) ** 2))
        horiz = np.where(np.abs(u) <= hw, u / hw, np.sign(u) * (1 - _smoothstep((np.abs(u) - hw) / hw)))
        us = u - corner_shift * horiz * vert

        # 2. Per column (at the source column us): lids of the lips, jaw drop and closure.
        a = m.inner_upper(us)
        b = m.inner_lower(us)
        g = np.maximum(b - a, 0.0)
        mid = 0.5 * (a + b)
        lens = np.sqrt(np.clip(1 - (us / hw) ** 2, 0, 1)) ** 0.8
        chin_fall = 1 - _smoothstep((np.abs(us) - 0.8 * hw) / max(m.jaw_half_width - 0.8 * hw, 1.0))
        drop = p.jaw * 0.8 * hw
        c = float(np.clip(p.close, 0, 1))
        s_up = -0.1 * drop * lens + c * g / 2
        s_lip = drop * lens - c * g / 2
        s_chin = drop * chin_fall
        keep = max(1 - c, 1e-3)
        v_top, v_chin, v_neck = m.v_top, m.v_chin, m.v_neck

        up_end = a + s_up
        up_int_end = up_end + g / 2 * (1 - c)
        low_int_start = b + s_lip - g / 2 * (1 - c)
        low_start = b + s_lip
        chin_out = v_chin + s_chin

        vs = v.copy()
        # upper lip region: [v_top, a] -> [v_top, a + s_up]
        sel = (v >= v_top) & (v < up_end)
        vs = np.where(sel, v_top + (v - v_top) * (a - v_top) / np.maximum(up_end - v_top, 1e-3), vs)
        # the photo's own interior, upper half, attached to the upper lip
        sel = (v >= up_end) & (v < up_int_end)
        vs = np.where(sel, a + (v - up_end) / keep, vs)
        # the new cavity between the lips
        cavity = (v >= up_int_end) & (v < low_int_start)
        # the photo's own interior, lower half, attached to the lower lip
        sel = (v >= low_int_start) & (v < low_start)
        vs = np.where(sel, b - (low_start - v) / keep, vs)
        # lower lip and chin: shift blends from s_lip at the lip to s_chin at the chin
        k = (s_chin - s_lip) / np.maximum(v_chin - b, 1.0)
        sel = (v >= low_start) & (v < chin_out)
        vs = np.where(sel, (v - s_lip + k * b) / np.maximum(1 + k, 0.2), vs)
        # neck takes up the stretch
        sel = (v >= chin_out) & (v < v_neck)
        vs = np.where(sel, v_neck - (v_neck - v) * (v_neck - v_chin) / np.maximum(v_neck - chin_out, 1.0), vs)
        # outside the mouth's reach nothing moves
        outside = np.abs(u) > m.jaw_half_width * 1.05
        us = np.where(outside, u, us)
        vs = np.where(outside, v, vs)

        sx, sy = f.to_image(us, vs)
        sx = sx.astype(np.float32)
        sy = sy.astype(np.float32)

        # 3. Cavity pixels sample the interior panel: teeth under the upper lip, tongue and
        #    lower teeth above the lower lip, dark in between.
        if cavity.any():
            top = up_int_end
            height = np.maximum(low_int_start - top, 1e-3)
            depth_top = v - top
            depth_bottom = low_int_start - v
            teeth = 0.0 if m.own_teeth else 0.28 * hw
            lower_teeth = 0.2 * hw * np.clip((height - teeth) / (0.5 * hw), 0, 1)
            rows = PANEL_ROWS
            py = np.where(
                depth_top < teeth, depth_top / max(teeth, 1e-3) * (rows - 1),
                np.where(depth_bottom < lower_teeth,
                         2 * rows + (1 - depth_bottom / np.maximum(lower_teeth, 1e-3)) * (rows - 1),
                         rows + np.clip((depth_top - teeth) / np.maximum(height - teeth - lower_teeth, 1e-3), 0, 1)
                         * (rows - 1)))
            px = self.rig.panel_x0 + (np.clip(us / hw, -1, 1) * 0.5 + 0.5) * (PANEL_W - 1)
            sx = np.where(cavity, px, sx).astype(np.float32)
            sy = np.where(cavity, py, sy).astype(np.float32)
        return sx, sy

    # ------------------------------------------------------------------ eyes
    def _eye(self, e: EyeRig, blink: float, p: FaceParams, X: np.ndarray, Y: np.ndarray):
        f = e.frame
        dxp, dyp = X - f.c[0], Y - f.c[1]
        u = dxp * f.ex[0] + dyp * f.ex[1]
        v = dxp * f.ey[0] + dyp * f.ey[1]
        hw = e.half_width
        a = e.upper_lid(u)
        b = e.lower_lid(u)
        brow = e.brow(u)
        inside = np.sqrt(np.clip(1 - (u / hw) ** 2, 0, 1)) ** 0.5
        lid = a + inside * (b - a) * float(np.clip(blink, 0, 1)) * 0.97
        raise_px = p.brow * 0.2 * hw * (1 - _smoothstep((np.abs(u) - e.brow_half_width) / (0.4 * e.brow_half_width)))
        brow_out = brow - raise_px
        fore = e.v_forehead

        vs = v.copy()
        sel = (v >= fore) & (v < brow_out)
        vs = np.where(sel, fore + (v - fore) * (brow - fore) / np.maximum(brow_out - fore, 1e-3), vs)
        sel = (v >= brow_out) & (v < lid)
        vs = np.where(sel, brow + (v - brow_out) * (a - brow) / np.maximum(lid - brow_out, 1e-3), vs)

        us = u
        if abs(p.gaze_x) > 1e-3 or abs(p.gaze_y) > 1e-3:
            # The iris slides inside the visible eye; the shift fades at the iris' edge.
            r = e.iris_radius * 1.6
            d2 = ((u - e.iris[0]) ** 2 + (v - e.iris[1]) ** 2) / (r * r)
            w = np.exp(-d2 * 2) * ((v >= lid) & (v <= b))
            us = u - p.gaze_x * 0.3 * hw * w
            vs = np.where(w > 0, vs - p.gaze_y * 0.12 * hw * w, vs)
        sx, sy = f.to_image(us, vs)
        return sx.astype(np.float32), sy.astype(np.float32)

    # ------------------------------------------------------------------ all
    def render(self, p: FaceParams) -> np.ndarray:
        """The frame for ``p`` (size×size×3 uint8)."""
        field = self.head_field(p)
        if field is None:
            X, Y = self._gx.copy(), self._gy.copy()
            margin = 0
        else:
            X, Y = self._gx - field[0], self._gy - field[1]
            margin = int(math.ceil(float(np.abs(field).max()))) + 1
        s = self.rig.size
        regions = [(self._mouth_box, lambda x, y: self._mouth(p, x, y))]
        for eye, blink, box in zip(self.rig.eyes, (p.blink_right, p.blink_left), self._eye_boxes, strict=True):
            regions.append((box, lambda x, y, eye=eye, blink=blink: self._eye(eye, blink, p, x, y)))
        for (x0, y0, x1, y1), mapping in regions:
            x0, y0 = max(0, x0 - margin), max(0, y0 - margin)
            x1, y1 = min(s, x1 + margin), min(s, y1 + margin)
            sx, sy = mapping(X[y0:y1, x0:x1], Y[y0:y1, x0:x1])
            X[y0:y1, x0:x1] = sx
            Y[y0:y1, x0:x1] = sy
        return cv2.remap(self.rig.atlas, X, Y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
