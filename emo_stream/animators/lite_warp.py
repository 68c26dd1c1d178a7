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

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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


class _Luts:
    """Functions of ``u`` tabulated every quarter pixel: a per-pixel lookup is one index
    computation and a gather per function instead of np.interp's float64 search."""

    STEP = 0.25

    def __init__(self, lo: float, hi: float, **functions) -> None:
        self.lo = lo
        grid = np.arange(lo, hi + self.STEP, self.STEP, dtype=np.float64)
        self.n = len(grid)
        self.tables = {name: np.asarray(fn(grid), dtype=np.float32) for name, fn in functions.items()}

    def index(self, u: np.ndarray) -> np.ndarray:
        i = ((u - self.lo) * (1.0 / self.STEP) + 0.5).astype(np.int32)
        return np.clip(i, 0, self.n - 1, out=i)

    def __getitem__(self, key: tuple[str, np.ndarray]) -> np.ndarray:
        name, idx = key
        return self.tables[name][idx]


MAP_SCALE = 2  # the map is built at 1/MAP_SCALE resolution and upsampled


class LiteRenderer:
    """Renders FaceParams for one rig; holds the reusable full-resolution grids."""

    def __init__(self, rig: AvatarRig) -> None:
        self.rig = rig
        s = rig.size
        # Centres of the half-resolution map's cells, in full-resolution pixels (as cv2.resize
        # aligns them when it upsamples the map).
        coords = (np.arange(s // MAP_SCALE, dtype=np.float32) + 0.5) * MAP_SCALE - 0.5
        self._lx, self._ly = np.meshgrid(coords, coords)
        self._mouth_box = self._box_for_mouth(rig.mouth)
        self._eye_boxes = [self._box_for_eye(e) for e in rig.eyes]
        # The cavity lies between the lips' inner contours, opened by the jaw (see _cavity_box).
        self._cavity_span = (float(rig.mouth.inner_upper.v.min()), float(rig.mouth.inner_lower.v.max()))
        m = rig.mouth
        hw, reach = m.half_width, m.jaw_half_width * 1.3 + 0.3 * rig.face_height
        self._mouth_luts = _Luts(
            -reach, reach,
            upper=m.inner_upper, lower=m.inner_lower,
            mid=lambda u: 0.5 * (m.inner_upper(u) + m.inner_lower(u)),
            lens=lambda u: np.sqrt(np.clip(1 - (u / hw) ** 2, 0, 1)) ** 0.8,
            chin_fall=lambda u: 1 - _smoothstep((np.abs(u) - 0.8 * hw) / max(m.jaw_half_width - 0.8 * hw, 1.0)),
            horiz=lambda u: np.where(np.abs(u) <= hw, u / hw, np.sign(u) * (1 - _smoothstep((np.abs(u) - hw) / hw))))
        self._eye_luts = []
        for e in rig.eyes:
            ehw, reach = e.half_width, e.brow_half_width * 2.0 + 0.2 * rig.face_height
            self._eye_luts.append(_Luts(
                -reach, reach, upper=e.upper_lid, lower=e.lower_lid, brow=e.brow,
                inside=lambda u, ehw=ehw: np.sqrt(np.clip(1 - (u / ehw) ** 2, 0, 1)) ** 0.5,
                brow_fall=lambda u, e=e: 1 - _smoothstep((np.abs(u) - e.brow_half_width) / (0.4 * e.brow_half_width))))

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
    def head_field(self, p: FaceParams, out_size: int | None = None) -> np.ndarray | None:
        """Backward displacement (2×n×n, in full-resolution pixels) of head motion on an n×n
        grid (n = ``out_size``, default the frame size), or None when the head is still."""
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
        n = out_size or rig.size
        return np.stack([cv2.resize(f, (n, n), interpolation=cv2.INTER_LINEAR) for f in field])

    # ------------------------------------------------------------------ mouth
    def _mouth(self, p: FaceParams, X: np.ndarray, Y: np.ndarray, cavity_only: bool = False):
        """The mouth's map at positions (X, Y); with ``cavity_only``, the new cavity's alpha and
        its interior-panel coordinates instead."""
        m = self.rig.mouth
        f = m.frame
        hw = m.half_width
        dxp, dyp = X - np.float32(f.c[0]), Y - np.float32(f.c[1])
        u = dxp * f.ex[0] + dyp * f.ex[1]
        v = dxp * f.ey[0] + dyp * f.ey[1]

        luts = self._mouth_luts
        # 1. Lip width: corners move out ("ee") or in ("oo"), fading away from the lips.
        gain = 0.14 if p.spread >= 0 else 0.2
        corner_shift = p.spread * gain * hw
        if abs(corner_shift) > 1e-3:
            i = luts.index(u)
            vert = np.exp(-(((v - luts["mid", i]) * (1.0 / (0.8 * hw))) ** 2))
            us = u - corner_shift * luts["horiz", i] * vert
        else:
            us = u

        # 2. Per column (at the source column us): lids of the lips, jaw drop and closure.
        i = luts.index(us)
        a = luts["upper", i]
        b = luts["lower", i]
        g = np.maximum(b - a, 0.0)
        lens = luts["lens", i]
        chin_fall = luts["chin_fall", i]
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
        if cavity_only:
            return self._cavity(m, v, us, up_int_end, low_int_start)
        # the new cavity between the lips maps to the lip line, where both interior halves
        # end: the map stays continuous, and the cavity is painted over it at full resolution
        sel = (v >= up_int_end) & (v < low_int_start)
        vs = np.where(sel, 0.5 * (a + b), vs)
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

        return sx, sy

    def _cavity(self, m: MouthRig, v: np.ndarray, us: np.ndarray, top: np.ndarray, bottom: np.ndarray):
        """Alpha (anti-aliased edges) and interior-panel coordinates of the cavity between the
        lips: teeth under the upper lip, tongue and lower teeth above the lower lip, dark between."""
        hw = m.half_width
        height = np.maximum(bottom - top, 1e-3)
        # Anti-aliased edges; a cavity thinner than a pixel (toward the corners) fades out.
        alpha = np.clip(np.minimum(v - top, bottom - v) + 0.5, 0.0, 1.0) * np.clip(height - 0.5, 0.0, 1.0)
        alpha *= np.abs(us) < hw
        depth_top = v - top
        depth_bottom = bottom - v
        teeth = 0.0 if m.own_teeth else 0.28 * hw
        lower_teeth = 0.2 * hw * np.clip((height - teeth) / (0.5 * hw), 0, 1)
        rows = PANEL_ROWS
        py = np.where(
            depth_top < teeth, depth_top / max(teeth, 1e-3) * (rows - 1),
            np.where(depth_bottom < lower_teeth,
                     2 * rows + (1 - depth_bottom / np.maximum(lower_teeth, 1e-3)) * (rows - 1),
                     rows + np.clip((depth_top - teeth) / np.maximum(height - teeth - lower_teeth, 1e-3), 0, 1)
                     * (rows - 1)))
        px = (np.clip(us / hw, -1, 1) * 0.5 + 0.5) * (PANEL_W - 1)
        return alpha.astype(np.float32), px.astype(np.float32), np.clip(py, 0, 3 * rows - 1).astype(np.float32)

    # ------------------------------------------------------------------ eyes
    def _eye(self, e: EyeRig, luts: _Luts, blink: float, p: FaceParams, X: np.ndarray, Y: np.ndarray):
        f = e.frame
        dxp, dyp = X - f.c[0], Y - f.c[1]
        u = dxp * f.ex[0] + dyp * f.ex[1]
        v = dxp * f.ey[0] + dyp * f.ey[1]
        hw = e.half_width
        i = luts.index(u)
        a = luts["upper", i]
        b = luts["lower", i]
        brow = luts["brow", i]
        # A little past the lower lid landmarks, which sit just below the visible lid edge.
        lid = a + luts["inside", i] * (b - a) * (float(np.clip(blink, 0, 1)) * 1.15)
        raise_px = (p.brow * 0.2 * hw) * luts["brow_fall", i]
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
    def render(self, p: FaceParams) -> tuple[np.ndarray, np.ndarray]:
        """The frame for ``p``: RGB (size×size×3 uint8) and the person's matte (size×size uint8).

        The map is built at half resolution (it is smooth but for the lips' and lids' edges)
        and upsampled; the cavity between the lips is painted at full resolution over it.
        """
        s, k = self.rig.size, MAP_SCALE
        n = s // k
        field = self.head_field(p, n)
        if field is None:
            X, Y = self._lx.copy(), self._ly.copy()
            margin = 0
        else:
            X, Y = self._lx - field[0], self._ly - field[1]
            margin = int(math.ceil(float(np.abs(field).max()) / k)) + 1
        head_x, head_y = X.copy(), Y.copy()
        mouth_active = max(p.jaw, abs(p.spread), p.close) > 1e-3  # else the mouth is as in the photo
        # (box, the map's source positions for the box's positions) per moving part
        regions: list[tuple[tuple[int, int, int, int], Callable[[np.ndarray, np.ndarray], Any]]] = []
        if mouth_active:
            regions.append((self._mouth_box, lambda x, y: self._mouth(p, x, y)))
        for eye, luts, blink, box in zip(self.rig.eyes, self._eye_luts, (p.blink_right, p.blink_left),
                                         self._eye_boxes, strict=True):
            if blink < 1e-3 and p.brow < 1e-3 and abs(p.gaze_x) < 1e-3 and abs(p.gaze_y) < 1e-3:
                continue  # the eye is at rest: the head-moved positions are the map
            regions.append((box, functools.partial(self._eye, eye, luts, blink, p)))
        for (x0, y0, x1, y1), mapping in regions:
            x0, y0 = max(0, x0 // k - margin), max(0, y0 // k - margin)
            x1, y1 = min(n, -(-x1 // k) + margin), min(n, -(-y1 // k) + margin)
            sx, sy = mapping(X[y0:y1, x0:x1], Y[y0:y1, x0:x1])
            X[y0:y1, x0:x1] = sx
            Y[y0:y1, x0:x1] = sy
        X = cv2.resize(X, (s, s), interpolation=cv2.INTER_LINEAR)
        Y = cv2.resize(Y, (s, s), interpolation=cv2.INTER_LINEAR)
        rgba = cv2.remap(self.rig.atlas, X, Y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        if mouth_active:
            self._paint_cavity(p, rgba, head_x, head_y, margin * k)
        return cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB), cv2.extractChannel(rgba, 3)

    def _cavity_box(self, drop: float) -> tuple[int, int, int, int]:
        """The image box the cavity can cover at jaw drop ``drop`` (px): from the upper lip, raised by at most
        0.1 × drop, to the lower lip, lowered by at most drop; within ±1.3 half-widths (the widest "ee" moves a corner 0.2)."""
        m = self.rig.mouth
        top, bottom = self._cavity_span
        cu = np.array([-1.3, 1.3, -1.3, 1.3]) * m.half_width
        cv = np.array([top - 0.1 * drop] * 2 + [bottom + drop] * 2)
        xs, ys = m.frame.to_image(cu, cv)
        return self._clip_box(np.asarray(xs), np.asarray(ys), margin=2)

    def _paint_cavity(self, p: FaceParams, rgba: np.ndarray, head_x: np.ndarray, head_y: np.ndarray,
                      margin: int) -> None:
        s, k = self.rig.size, MAP_SCALE
        drop = p.jaw * 0.8 * self.rig.mouth.half_width  # as in _mouth
        if 1.1 * drop <= 0.5:
            return  # the cavity (1.1 × drop high at most, _cavity) is under half a pixel: alpha is 0 everywhere
        x0, y0, x1, y1 = self._cavity_box(drop)
        x0, y0 = max(0, x0 - margin), max(0, y0 - margin)
        x1, y1 = min(s, x1 + margin), min(s, y1 + margin)
        if x1 <= x0 or y1 <= y0:
            return
        # Full-resolution head-moved positions in the box, sampled from the half-resolution ones.
        gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        lx, ly = (gx + 0.5) / k - 0.5, (gy + 0.5) / k - 0.5
        X = cv2.remap(head_x, lx, ly, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        Y = cv2.remap(head_y, lx, ly, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        alpha, px, py = self._mouth(p, X, Y, cavity_only=True)
        if not (alpha > 0).any():
            return
        panel = self.rig.atlas[: 3 * PANEL_ROWS, self.rig.panel_x0: self.rig.panel_x0 + PANEL_W]
        interior = cv2.remap(panel, px, py, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        patch = rgba[y0:y1, x0:x1].astype(np.float32)
        a = alpha[..., None]
        rgba[y0:y1, x0:x1] = np.round(patch * (1 - a) + interior.astype(np.float32) * a).astype(np.uint8)
