"""The lite animator's learned motion: FaceParams from a model fitted to real talking video.

- Mouth: ``motion_filter`` turns the speech features into the real mouth's opening and width (eye spans), and
  ``MouthGeometry`` turns those into the renderer's jaw and spread for this portrait, so the portrait's mouth
  opens as far, in its own eye spans, as the real mouths did; in pauses it moves half as much. The lips'
  closure before b/p/m stays the rules'.
- Blinks: a renewal process with the real clips' rate and interval spread, each blink playing their mean
  closure profile.
- Head: per axis an AR(2) process with the real clips' spectrum and std, livelier in speech by the real
  clips' ratio, plus the fitted nod (pitch) after stressed syllables.
- Brows, gaze, breathing, sway and the singing style come from the rules controller (``lite_motion``).
Every random draw comes from the session's own seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from emo_stream.animators.lite_motion import MotionController
from emo_stream.animators.lite_warp import FaceParams
from emo_stream.animators.motion_filter import SILENT_FRAME, MotionFilter, frame_vector
from emo_stream.audio.features import FrameFeatures

HEAD_AXES = ("yaw", "pitch", "roll")
# In pauses the filter's openings are scaled down toward PAUSE_GAIN (full below loudness 0, none from
# PAUSE_FULL_LOUDNESS up). Real mouths do move between phrases, but an avatar that mouths in its pauses reads
# as mumbling. Leave-speakers-out (4 folds, before rendering) the opening's range in quiet frames fell from 0.53
# to 0.29 of that in speech, for 0.01 less r against the real mouths.
PAUSE_GAIN = 0.5
PAUSE_FULL_LOUDNESS = 0.1
# The renderer's mouth (lite_warp): the jaw drops 0.8 mouth half-widths at jaw = 1, and each corner moves
# 0.14 half-widths out at spread = 1 and 0.2 in at spread = -1.
JAW_DROP_PER_HALF_WIDTH = 0.8
SPREAD_GAIN_OUT, SPREAD_GAIN_IN = 0.14, 0.2


@dataclass(frozen=True)
class MouthGeometry:
    """The portrait's eye span and mouth half-width in pixels: what converts eye spans to renderer units."""

    eye_span_px: float
    mouth_half_width_px: float

    def jaw(self, opening_spans: float) -> float:
        return opening_spans * self.eye_span_px / (JAW_DROP_PER_HALF_WIDTH * self.mouth_half_width_px)

    def spread(self, width_change_spans: float) -> float:
        gain = SPREAD_GAIN_OUT if width_change_spans >= 0 else SPREAD_GAIN_IN
        return width_change_spans * self.eye_span_px / (2.0 * gain * self.mouth_half_width_px)


class _HeadAxis:
    """One head angle: AR(2) with the fitted coefficients, scaled to the fitted std."""

    def __init__(self, stats: dict[str, Any], rng: np.random.Generator) -> None:
        a1, a2 = (float(v) for v in stats["ar"])
        if not (abs(a2) < 1 and abs(a1) < 1 - a2):  # not stationary: fall back to a smooth stable one
            a1, a2 = 1.7, -0.75
        self.a1, self.a2 = a1, a2
        var_unit = (1 - a2) / ((1 + a2) * ((1 - a2) ** 2 - a1 ** 2))  # stationary variance per unit innovation
        self.innovation = float(stats["std_deg"]) / math.sqrt(var_unit)
        self.speech_gain = float(stats.get("speech_vs_pause", 1.0))
        self.rng = rng
        self.x1 = self.x2 = 0.0

    def step(self, activity: float) -> float:
        # Innovation scaled so the std over a mix of speech and pauses stays the fitted one.
        gain = (1.0 + (self.speech_gain - 1.0) * activity) / math.sqrt(0.5 * (1.0 + self.speech_gain ** 2))
        x = self.a1 * self.x1 + self.a2 * self.x2 + self.innovation * gain * float(self.rng.normal())
        self.x2, self.x1 = self.x1, x
        return x


class LearnedMotionController:
    """``MotionController``'s interface (``step``, ``reset_mouth``) with the mouth, blinks and head learned.

    Args:
        model: the fitted filter and statistics (``MotionFilter.load()``).
        geometry: the portrait's mouth geometry.
        fps: frames per second.
        motion: strength of head, brow and gaze motion, as for the rules (0 keeps the mouth and blinks only).
        seed: the session's seed.
    """

    def __init__(self, model: MotionFilter, geometry: MouthGeometry, fps: int = 25, motion: float = 1.0,
                 seed: int = 0) -> None:
        self.model = model
        self.geometry = geometry
        self.fps = fps
        self.motion = motion
        self.rules = MotionController(fps=fps, motion=motion, seed=seed)
        self.rng = np.random.default_rng([seed, 1])  # apart from the rules' stream
        names = model.output_names
        self._lips, self._jaw, self._width = (names.index(n) for n in ("lips_apart", "jaw", "lip_width"))
        self._context = model.initial_state()
        self._ahead: np.ndarray | None = None
        head = model.stats.get("head", {})
        self._head = [_HeadAxis(head.get(a, {"std_deg": 2.0, "ar": [1.7, -0.75]}), self.rng) for a in HEAD_AXES]
        self._nod_kernel = np.asarray(head.get("nod_kernel_deg", [0.0]), np.float64)
        self._stress = np.zeros(len(self._nod_kernel))
        self._nod = 0.0
        blink = model.stats.get("blink", {})
        self._blink_profile = [float(v) for v in blink.get("profile", [0.55, 1.0, 1.0, 0.65, 0.3, 0.08])]
        self._blink_mean_s = float(blink.get("interval_mean_s", 3.0))
        self._blink_shape = float(blink.get("interval_gamma_shape", 2.0))
        self._blink_phase = -1
        self._frames_to_blink = self._next_blink()

    def _next_blink(self) -> int:
        seconds = float(self.rng.gamma(self._blink_shape, self._blink_mean_s / self._blink_shape))
        # At least a blink's length plus 0.2 s open between blinks, as in the real clips' shortest intervals.
        return max(len(self._blink_profile) + round(0.2 * self.fps), round(seconds * self.fps))

    def reset_mouth(self) -> None:
        """Barge-in: the mouth closes at once (the filter forgets the audio); idle motion carries on."""
        self.rules.reset_mouth()
        self._context = self.model.initial_state()
        self._ahead = None

    def _mouth(self, feat: FrameFeatures | None, ahead: FrameFeatures | None) -> np.ndarray:
        now = frame_vector(feat) if feat is not None else SILENT_FRAME
        nxt = frame_vector(ahead) if ahead is not None else SILENT_FRAME
        y, self._context = self.model.step(np.concatenate([now, nxt]), self._context)
        # The next frame's loudness too, so the mouth may open just before a syllable it already hears.
        loudness = max(feat.loudness if feat is not None else 0.0, ahead.loudness if ahead is not None else 0.0)
        gain = PAUSE_GAIN + (1.0 - PAUSE_GAIN) * min(max(loudness / PAUSE_FULL_LOUDNESS, 0.0), 1.0)
        return (y - self.model.rest) * gain  # openings from the mouth at rest

    def _blink(self) -> float:
        if self._blink_phase >= 0:
            value = self._blink_profile[self._blink_phase]
            self._blink_phase += 1
            if self._blink_phase >= len(self._blink_profile):
                self._blink_phase = -1
                self._frames_to_blink = self._next_blink()
            return value
        self._frames_to_blink -= 1
        if self._frames_to_blink <= 0:
            self._blink_phase = 0
            return self._blink()
        return 0.0

    def step(self, feat: FrameFeatures | None, ahead: FrameFeatures | None = None) -> FaceParams:
        """FaceParams for the next frame; ``feat`` None means no audio (idle)."""
        rules = self.rules.step(feat, ahead)
        y = self._mouth(feat, ahead)
        g = self.geometry
        opening = 0.5 * (y[self._lips] + y[self._jaw])
        jaw = float(np.clip(g.jaw(opening), 0.0, 1.0)) * (1.0 - 0.9 * rules.close)
        spread = float(np.clip(g.spread(float(y[self._width])), -1.0, 1.0)) * (1.0 - rules.close)

        blink = self._blink()
        activity = self.rules.state.activity
        singing = self.rules.state.singing
        self._stress = np.roll(self._stress, 1)
        self._stress[0] = feat.stress if feat is not None else 0.0
        self._nod = 0.9 * self._nod + float(self._nod_kernel @ self._stress)  # velocity kernel, leaky integral
        yaw, pitch, roll = (axis.step(activity) for axis in self._head)
        m = self.motion
        # Singing keeps the rules' rhythmic sway on top.
        return replace(rules, jaw=jaw, spread=spread, blink_left=blink, blink_right=blink,
                       yaw=m * yaw + singing * rules.yaw, pitch=m * (pitch + self._nod) + singing * rules.pitch,
                       roll=m * roll + singing * rules.roll)
