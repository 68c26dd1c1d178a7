"""The lite backend: a CPU landmark-warp animator that needs no weights (imports no torch).

Audio windows -> speech features (``audio.features``) -> FaceParams (``lite_motion``) ->
one remap of the portrait (``lite_warp``). Per-portrait set-up (``lite_rig``) is cached by the
avatar's content key. Latency: the feature extractor looks one frame ahead and the motion
controller one more (to anticipate openings and close the lips before a burst). Frame n
shows the audio at n/fps, the start of window n; the extractor needs window n itself (40 ms
past that time), the controller one window more, so frame n comes out with window n + 1.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from emo_stream.animators.base import Animator, check_avatar_size
from emo_stream.animators.learned_motion import LearnedMotionController, MouthGeometry
from emo_stream.animators.lite_motion import MotionController
from emo_stream.animators.lite_rig import AvatarRig, build_rig
from emo_stream.animators.lite_warp import FaceParams, LiteRenderer
from emo_stream.animators.motion_filter import DEFAULT_WEIGHTS, MotionFilter
from emo_stream.audio.features import FeatureExtractor, FrameFeatures, lookahead_frames
from emo_stream.config import LITE_MOTIONS
from emo_stream.errors import ConfigError
from emo_stream.face import eye_span
from emo_stream.streaming import frame_pts
from emo_stream.types import AudioWindow, Avatar, Frame

CONTROLLER_LOOKAHEAD_FRAMES = 1
RIG_CACHE_SIZE = 16


@dataclass
class LiteState:
    """One session's state: its avatar, renderer, feature extractor and motion controller."""

    avatar: Avatar
    renderer: LiteRenderer
    extractor: FeatureExtractor
    controller: MotionController | LearnedMotionController
    pending: deque[FrameFeatures] = field(default_factory=deque)
    frame_pts: deque[int] = field(default_factory=deque)
    last_pts: int | None = None
    last_params: FaceParams = field(default_factory=FaceParams)


class LiteAnimator(Animator[LiteState]):
    """The Animator contract on the CPU. One instance serves many sessions.

    Args:
        size: output side in pixels (the avatar must have been prepared at this size).
        fps: frames per second.
        motion: head, brow and gaze motion strength (0..3).
        lite_motion: ``learned`` (mouth, blinks and head fitted to real talking video, ``learned_motion``) or
            ``rules`` (the hand-tuned ``lite_motion``).
        motion_weights: the learned motion's file (default: the one shipped in the package).

    Raises:
        ConfigError: an unknown ``lite_motion``, or learned motion whose weights cannot be read.
    """

    name = "lite"
    batches_feeds = False  # feed_batch is feed one by one: a server need not hold one session's frames for another's

    def __init__(self, size: int = 512, fps: int = 25, motion: float = 1.0, lite_motion: str = "learned",
                 motion_weights: str | None = None) -> None:
        if lite_motion not in LITE_MOTIONS:
            raise ConfigError(f"lite motion must be one of {LITE_MOTIONS}, got {lite_motion!r}")
        self.size = size
        self.fps = fps
        self.motion = motion
        self.lite_motion = lite_motion
        self._model = MotionFilter.load(motion_weights or DEFAULT_WEIGHTS) if lite_motion == "learned" else None
        # The extractor's lookahead, counted from the frame's time, is covered by the frame's own
        # window for the first frame of it.
        self.latency_frames = max(0, lookahead_frames(fps) - 1) + CONTROLLER_LOOKAHEAD_FRAMES
        self._rigs: OrderedDict[str, AvatarRig] = OrderedDict()
        self._rigs_lock = threading.Lock()  # warm() runs off the thread that feeds

    def _rig(self, avatar: Avatar) -> AvatarRig:
        """The avatar's rig (face mesh, matte: the per-portrait work), built once and cached by its key."""
        with self._rigs_lock:
            rig = self._rigs.get(avatar.cache_key)
            if rig is not None:
                self._rigs.move_to_end(avatar.cache_key)
                return rig
        # Built outside the lock: a thread feeding other portraits must not wait on this one (~0.2 s).
        rig = build_rig(avatar)
        with self._rigs_lock:
            self._rigs[avatar.cache_key] = rig
            while len(self._rigs) > RIG_CACHE_SIZE:
                self._rigs.popitem(last=False)
        return rig

    def warm(self, avatar: Avatar) -> None:
        """The per-portrait work ``prepare`` needs, done now and cached: safe on any thread, so a server can
        run it beside the thread that feeds (``prepare`` then takes ~1 ms)."""
        check_avatar_size(avatar, self.size)
        self._rig(avatar)

    def prepare(self, avatar: Avatar, seed: int = 0) -> LiteState:
        """A session on ``avatar`` (its rig built once per portrait and cached)."""
        check_avatar_size(avatar, self.size)
        rig = self._rig(avatar)
        controller: MotionController | LearnedMotionController
        if self._model is not None:
            geometry = MouthGeometry(eye_span_px=eye_span(avatar.landmarks.points),
                                     mouth_half_width_px=rig.mouth.half_width)
            controller = LearnedMotionController(self._model, geometry, fps=self.fps, motion=self.motion, seed=seed)
        else:
            controller = MotionController(fps=self.fps, motion=self.motion, seed=seed)
        return LiteState(avatar=avatar, renderer=LiteRenderer(rig), extractor=FeatureExtractor(sample_rate=16_000,
                         fps=self.fps), controller=controller)

    def _frame(self, state: LiteState, feat: FrameFeatures | None, ahead: FrameFeatures | None) -> Frame:
        params = state.controller.step(feat, ahead)
        state.last_params = params
        pts = state.frame_pts.popleft() if state.frame_pts else (
            (state.last_pts + frame_pts(1, self.fps)) if state.last_pts is not None else 0)
        state.last_pts = pts
        rgb, matte = state.renderer.render(params)
        return Frame(rgb=rgb, pts=pts, matte=matte)

    def _drain(self, state: LiteState, keep: int) -> list[Frame]:
        frames = []
        while len(state.pending) > keep:
            feat = state.pending.popleft()
            ahead = state.pending[0] if state.pending else None
            frames.append(self._frame(state, feat, ahead))
        return frames

    def feed(self, window: AudioWindow, state: LiteState) -> list[Frame]:
        if window.sample_rate != 16_000:
            raise ValueError(f"the lite animator takes 16 kHz windows, got {window.sample_rate} Hz")
        state.frame_pts.append(window.start_pts)
        state.pending.extend(state.extractor.push(window.samples))
        return self._drain(state, keep=CONTROLLER_LOOKAHEAD_FRAMES)

    def idle(self, state: LiteState, pts: int) -> Frame:
        params = state.controller.step(None)
        state.last_params = params
        state.last_pts = pts
        rgb, matte = state.renderer.render(params)
        return Frame(rgb=rgb, pts=pts, matte=matte)

    def flush(self, state: LiteState) -> list[Frame]:
        state.pending.extend(state.extractor.flush())
        frames = self._drain(state, keep=0)
        state.frame_pts.clear()
        return frames

    def reset(self, state: LiteState) -> None:
        state.extractor.reset()
        state.pending.clear()
        state.frame_pts.clear()
        state.controller.reset_mouth()
