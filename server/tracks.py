"""The two outgoing tracks: they only pull from the session's MediaClock, so they cannot drift.

Both carry the tick index as media time: video at 90 kHz (tick × 3600 at 25 fps), audio at
48 kHz (tick × 1920). aiortc's sender paces on ``recv()``, and ``recv()`` waits for the clock.
"""

from __future__ import annotations

import fractions
import time
from collections.abc import Callable

import av
import cv2
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.clock import TickQueue

VIDEO_CLOCK_RATE = 90_000
AUDIO_RATE = 48_000


class AvatarVideoTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, queue: TickQueue, fps: int = 25, on_sent: Callable[[int], None] | None = None,
                 on_encoded: Callable[[float], None] | None = None) -> None:
        super().__init__()
        self._queue = queue
        self._on_encoded = on_encoded
        self._returned_at: float | None = None
        self._ticks_to_pts = VIDEO_CLOCK_RATE // fps
        self._time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        self._on_sent = on_sent

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._returned_at is not None and self._on_encoded is not None:
            # aiortc's sender encodes (on an executor thread) and sends the last frame before
            # asking for the next: the gap is the encode + packetize + send stage.
            self._on_encoded(time.perf_counter() - self._returned_at)
        index, rgb = await self._queue.get()
        if rgb.shape[0] % 2 or rgb.shape[1] % 2:  # I420 needs even sides: let the encoder convert
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        else:  # I420 here, not in the encoder: OpenCV's conversion costs 0.2 ms at 512², PyAV's swscale 1.5 ms
            yuv = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).astype(np.uint8, copy=False)  # uint8 already: no copy
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = index * self._ticks_to_pts
        frame.time_base = self._time_base
        if self._on_sent is not None:
            self._on_sent(index)
        self._returned_at = time.perf_counter()
        return frame


class AvatarAudioTrack(MediaStreamTrack):
    """The voice, one tick at a time, handed out as 20 ms frames: aiortc's sender gives all the
    opus packets of one frame a single RTP timestamp, so a frame must hold exactly one packet."""

    kind = "audio"
    PACKET_SAMPLES = 960  # 20 ms at 48 kHz

    def __init__(self, queue: TickQueue, fps: int = 25) -> None:
        super().__init__()
        self._queue = queue
        self._samples = AUDIO_RATE // fps
        self._time_base = fractions.Fraction(1, AUDIO_RATE)
        self._pending: list[tuple[int, np.ndarray]] = []

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if not self._pending:
            index, samples = await self._queue.get()
            pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
            start = index * self._samples
            n = self.PACKET_SAMPLES
            self._pending = [(start + i, pcm[i:i + n]) for i in range(0, len(pcm), n)]
        pts, pcm = self._pending.pop(0)
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = pts
        frame.time_base = self._time_base
        return frame

    def clear(self) -> None:
        self._pending = []
