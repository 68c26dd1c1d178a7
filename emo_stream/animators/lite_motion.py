"""The lite animator's motion: speech features -> FaceParams, frame by frame.

Mouth: jaw, lip width/rounding and closure from the features, smoothed with co-articulation
(attack faster than release, opening anticipated one frame ahead). Beyond the lips: brows
on stressed syllables and pitch peaks; blinks as an irregular renewal process (~17/min in
speech, more in pauses); gaze saccades; head pose from slow random motion plus nods on stress,
larger and rhythmic when singing; breathing and sway in silence, so the portrait never freezes.
Every random draw comes from the session's own seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from emo_stream.animators.lite_warp import FaceParams
from emo_stream.audio.features import FrameFeatures

# Blink shape over frames at 25 fps: close in 2, hold 1, open in 3 (about 240 ms in all).
BLINK_SHAPE = (0.55, 1.0, 1.0, 0.65, 0.3, 0.08)
BLINK_MEAN_INTERVAL_SPEECH_S = 3.5   # ≈ 17 a minute once the minimum gap and the blink itself are added
BLINK_MEAN_INTERVAL_PAUSE_S = 2.8    # ≈ 22 a minute: people blink more in pauses
BLINK_MIN_INTERVAL_S = 0.7
JAW_GAIN = 0.7


def _follow(current: float, target: float, attack: float, release: float) -> float:
    """One-pole smoothing with separate rates up (attack) and down (release), per frame."""
    rate = attack if target > current else release
    return current + rate * (target - current)


@dataclass
class _Oscillators:
    """Sums of slow sinusoids with random frequencies and phases: smooth, never-repeating motion."""

    freqs: np.ndarray
    phases: np.ndarray
    weights: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator, n: int, low_hz: float, high_hz: float) -> _Oscillators:
        freqs = rng.uniform(low_hz, high_hz, n)
        weights = rng.uniform(0.5, 1.0, n)
        return _Oscillators(freqs=freqs, phases=rng.uniform(0, 2 * math.pi, n), weights=weights / weights.sum())

    def __call__(self, t: float) -> float:
        return float(np.sum(self.weights * np.sin(2 * math.pi * self.freqs * t + self.phases))) * 1.6


@dataclass
class MotionState:
    jaw: float = 0.0
    spread: float = 0.0
    close: float = 0.0
    brow: float = 0.0
    activity: float = 0.0
    singing: float = 0.0
    nod: float = 0.0
    nod_velocity: float = 0.0
    gaze: list[float] = field(default_factory=lambda: [0.0, 0.0])
    gaze_target: list[float] = field(default_factory=lambda: [0.0, 0.0])
    frames_to_saccade: int = 30
    frames_to_blink: int = 50
    blink_phase: int = -1


class MotionController:
    """Turns one frame of features (and the next one, for anticipation) into FaceParams.

    Args:
        fps: frames per second.
        motion: strength of head, brow and gaze motion (EMO's speed layers): 0 keeps only the
            mouth and blinks, 1 is natural, up to 3 is animated.
        seed: the session's seed.
    """

    def __init__(self, fps: int = 25, motion: float = 1.0, seed: int = 0) -> None:
        self.fps = fps
        self.motion = motion
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.yaw_osc = _Oscillators.draw(self.rng, 3, 0.04, 0.3)
        self.pitch_osc = _Oscillators.draw(self.rng, 3, 0.05, 0.35)
        self.roll_osc = _Oscillators.draw(self.rng, 3, 0.03, 0.25)
        self.sway_osc = _Oscillators.draw(self.rng, 2, 0.03, 0.15)
        self.breath_hz = float(self.rng.uniform(0.22, 0.3))
        self.frame_index = 0
        self.state = MotionState()
        self.state.frames_to_blink = self._next_blink_interval(speaking=False)

    # ------------------------------------------------------------------ helpers
    def _next_blink_interval(self, speaking: bool) -> int:
        mean = BLINK_MEAN_INTERVAL_SPEECH_S if speaking else BLINK_MEAN_INTERVAL_PAUSE_S
        # Gamma with shape 2.5: irregular but not memoryless, like real blink intervals.
        seconds = max(BLINK_MIN_INTERVAL_S, float(self.rng.gamma(2.5, mean / 2.5)))
        return max(1, round(seconds * self.fps))

    def reset_mouth(self) -> None:
        """Barge-in: the mouth closes at once; idle motion carries on."""
        s = self.state
        s.jaw = s.spread = s.close = 0.0
        s.activity *= 0.5

    # ------------------------------------------------------------------ step
    def step(self, feat: FrameFeatures | None, ahead: FrameFeatures | None = None) -> FaceParams:
        """FaceParams for the next frame; ``feat`` None means no audio (idle)."""
        s = self.state
        t = self.frame_index / self.fps
        self.frame_index += 1
        motion = self.motion

        # 1. Mouth: targets from the features, anticipating the next frame's opening.
        if feat is None:
            jaw_t = spread_t = close_t = loud = stress = singing = pitch_st = onset = 0.0
        else:
            loud, stress, singing = feat.loudness, feat.stress, feat.singing
            pitch_st, onset = feat.pitch_st, feat.onset
            # Everyday speech uses about half the jaw's range; loud open vowels reach ~0.7.
            jaw_t = JAW_GAIN * feat.jaw ** 1.3
            if ahead is not None:
                jaw_t = max(jaw_t, 0.45 * JAW_GAIN * ahead.jaw ** 1.3)  # co-articulation: open a little early
            close_t = feat.closure
            jaw_t *= 1.0 - 0.9 * close_t
            spread_t = feat.spread * min(1.0, 2.0 * feat.voicing) * (1.0 - close_t)
        s.jaw = _follow(s.jaw, jaw_t, attack=0.8, release=0.45)
        s.spread = _follow(s.spread, spread_t, attack=0.5, release=0.35)
        s.close = _follow(s.close, close_t, attack=0.9, release=0.55)
        s.activity = _follow(s.activity, loud, attack=0.15, release=0.03)
        s.singing = _follow(s.singing, singing, attack=0.08, release=0.03)
        speaking = s.activity > 0.25

        # 2. Brows: rise on stressed syllables and pitch peaks, settle slowly.
        brow_t = min(1.0, 0.8 * stress + 0.12 * max(0.0, pitch_st)) * min(1.0, motion)
        s.brow = _follow(s.brow, brow_t, attack=0.35, release=0.08)

        # 3. Blinks: a renewal process; a blink in progress plays its shape.
        blink = 0.0
        if s.blink_phase >= 0:
            blink = BLINK_SHAPE[s.blink_phase]
            s.blink_phase += 1
            if s.blink_phase >= len(BLINK_SHAPE):
                s.blink_phase = -1
                # Now and then a quick second blink follows.
                s.frames_to_blink = 3 if self.rng.random() < 0.08 else self._next_blink_interval(speaking)
        else:
            s.frames_to_blink -= 1
            if s.frames_to_blink <= 0:
                s.blink_phase = 0
                blink = BLINK_SHAPE[0]
                s.blink_phase = 1

        # 4. Gaze: small saccades every 1-4 s, mostly back toward the camera.
        s.frames_to_saccade -= 1
        if s.frames_to_saccade <= 0:
            if self.rng.random() < 0.45:
                s.gaze_target = [0.0, 0.0]
            else:
                s.gaze_target = [float(self.rng.normal(0, 0.35)), float(self.rng.normal(0, 0.25))]
            s.frames_to_saccade = int(self.rng.uniform(1.0, 4.0) * self.fps)
        for i in range(2):
            s.gaze[i] = _follow(s.gaze[i], s.gaze_target[i], attack=0.6, release=0.6)

        # 5. Head: slow motion, livelier while speaking, nods on stress; singing sways in rhythm.
        if onset > 0.5 and stress > 0.4:
            s.nod_velocity += 0.9 * stress
        # a damped spring pulls the nod back (critically damped, ~0.4 s)
        s.nod_velocity += -0.09 * s.nod - 0.55 * s.nod_velocity
        s.nod += s.nod_velocity
        liveliness = 0.6 + 0.8 * s.activity + 1.2 * s.singing
        sing_sway = s.singing * math.sin(2 * math.pi * 0.5 * t)
        yaw = motion * (2.2 * liveliness * self.yaw_osc(t) + 2.5 * sing_sway)
        pitch = motion * (1.3 * liveliness * self.pitch_osc(t) + 2.2 * s.nod - 0.25 * s.singing * max(0.0, pitch_st))
        roll = motion * (1.0 * liveliness * self.roll_osc(t) + 2.0 * sing_sway)
        shift_x = motion * 1.5 * self.sway_osc(t)
        breath = 0.5 + 0.5 * math.sin(2 * math.pi * self.breath_hz * t)
        breath *= 1.0 if not speaking else 0.5

        return FaceParams(
            jaw=float(np.clip(s.jaw, 0, 1)), spread=float(np.clip(s.spread, -1, 1)), close=float(np.clip(s.close, 0, 1)),
            brow=float(np.clip(s.brow, 0, 1)), blink_left=blink, blink_right=blink,
            gaze_x=s.gaze[0] * min(1.0, motion), gaze_y=s.gaze[1] * min(1.0, motion),
            yaw=yaw, pitch=pitch, roll=roll, shift_x=shift_x, shift_y=0.0, breath=breath * min(1.0, motion + 0.3))
