"""The emo backend's fall-back: a lite animator state per session that follows the stream at all times.

Every window a session feeds also goes through its lite feature extractor and motion controller (about
0.3 ms a window on CPU), so the lite face parameters of every frame are ready when the emo path cannot deliver
a clip (late or failed); only then is the lite warp rendered. The lite rig needs at least ``LITE_MIN_SIZE``
pixels (its mouth-interior panel is 96 rows), so smaller outputs are rendered at that size and scaled down.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from emo_stream.animators.lite import CONTROLLER_LOOKAHEAD_FRAMES, LiteAnimator, LiteState
from emo_stream.animators.lite_warp import FaceParams
from emo_stream.types import Avatar, FaceLandmarks, Frame

LITE_MIN_SIZE = 128


def scaled_avatar(avatar: Avatar, size: int) -> Avatar:
    """``avatar`` resampled to ``size`` pixels (landmarks scaled with it), for a lite rig of that size."""
    if avatar.size == size:
        return avatar
    scale = size / avatar.size
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    image = cv2.resize(avatar.image, (size, size), interpolation=interpolation)
    landmarks = FaceLandmarks(points=(avatar.landmarks.points * np.float32(scale)).astype(np.float32),
                              image_size=(size, size))
    return Avatar(image=image, landmarks=landmarks, cache_key=f"{avatar.cache_key}@{size}",
                  source_size=avatar.source_size, faces=avatar.faces, warnings=avatar.warnings, name=avatar.name)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[0] == size and image.shape[1] == size:
        return image
    interpolation = cv2.INTER_AREA if image.shape[0] > size else cv2.INTER_CUBIC
    return cv2.resize(image, (size, size), interpolation=interpolation)


class LiteShadow:
    """One session's lite state, fed every window; renders lite frames on demand.

    Window ``index`` values are the emo stream's frame indices; ``None`` marks silence pushed only to drain
    the lite lookahead (no frame wanted).
    """

    def __init__(self, lite: LiteAnimator, avatar: Avatar, size: int, seed: int) -> None:
        self.lite = lite
        self.size = size
        self.state: LiteState = lite.prepare(scaled_avatar(avatar, lite.size), seed=seed)
        self._queue: deque[int | None] = deque()
        self.params: dict[int, FaceParams] = {}
        rig = self.state.renderer.rig
        self.matte = np.ascontiguousarray(resize_square(rig.atlas[:, :rig.size, 3], size))

    def push(self, samples: np.ndarray, index: int | None) -> None:
        """The next window's samples (silence for a phantom window)."""
        st = self.state
        self._queue.append(index)
        st.pending.extend(st.extractor.push(samples))
        while len(st.pending) > CONTROLLER_LOOKAHEAD_FRAMES:
            feat = st.pending.popleft()
            ahead = st.pending[0] if st.pending else None
            params = st.controller.step(feat, ahead)
            st.last_params = params
            done = self._queue.popleft() if self._queue else None
            if done is not None:
                self.params[done] = params

    def waiting(self) -> bool:
        """Windows pushed whose parameters are not out yet."""
        return any(i is not None for i in self._queue)

    def drain(self, samples_per_frame: int) -> None:
        """Push silence until every pushed window has its parameters (end of a segment)."""
        silence = np.zeros(samples_per_frame, np.float32)
        for _ in range(self.lite.latency_frames + 4):
            if not self.waiting():
                return
            self.push(silence, None)

    def forget_before(self, index: int) -> None:
        for key in [k for k in self.params if k < index]:
            del self.params[key]

    def frame(self, index: int, pts: int) -> Frame:
        """The lite frame for window ``index`` (its parameters, or the last ones if it has none)."""
        params = self.params.pop(index, None) or self.state.last_params
        rgb, matte = self.state.renderer.render(params)
        return Frame(rgb=resize_square(rgb, self.size), pts=pts, matte=resize_square(matte, self.size))

    def idle(self, pts: int) -> Frame:
        frame = self.lite.idle(self.state, pts)
        return Frame(rgb=resize_square(frame.rgb, self.size), pts=pts,
                     matte=None if frame.matte is None else resize_square(frame.matte, self.size))

    def reset(self) -> None:
        self.lite.reset(self.state)
        self._queue.clear()
        self.params.clear()
