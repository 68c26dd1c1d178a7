"""A session's input audio as one-frame windows at several rates, completed together.

A session cuts its decoded input into windows of one video frame twice: at 48 kHz for the voice it sends back
and at 16 kHz for the engine. Both must complete on the same input frame. A resampler holds back the few
samples its filter still needs (16 of the first 320 at 48 → 16 kHz). A window of the 16 kHz stream then lacks
them, and it completes one input frame later than its 48 kHz twin: 20 ms later for a microphone's opus
packets, a whole tick for an agent's PCM. That delay comes out of the time the frame has to be rendered. So the
first frame's shortfall is padded with silence in front (the stream then runs that many samples, ~1 ms, late),
and windows are handed out in tuples, one per rate, once every rate has completed one.
"""

from __future__ import annotations

from collections import deque

import av
import numpy as np

from emo_stream.streaming import AudioWindowBuffer


class InputWindows:
    """Decoded audio frames (any rate or layout) → tuples of mono float32 windows, one per rate.

    Args:
        rates: the output sample rates, in the order of each tuple.
        fps: video frames per second (one window per frame).
    """

    def __init__(self, rates: tuple[int, ...], fps: int) -> None:
        self.rates = rates
        self._resamplers = [av.AudioResampler(format="flt", layout="mono", rate=rate) for rate in rates]
        self._buffers = [AudioWindowBuffer(rate, fps) for rate in rates]
        self._done: list[deque[np.ndarray]] = [deque() for _ in rates]
        self._started = False

    def push(self, frame: av.AudioFrame) -> list[tuple[np.ndarray, ...]]:
        """Add one decoded frame; return the windows every rate has now completed, oldest first."""
        frame.pts = None  # a peer's timestamps are not ours: windows are counted by samples
        for resampler, buffer, done in zip(self._resamplers, self._buffers, self._done, strict=True):
            chunks = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
            if not self._started:
                short = round(frame.samples * buffer.sample_rate / frame.sample_rate) - sum(len(c) for c in chunks)
                if short > 0:
                    chunks.insert(0, np.zeros(short, np.float32))
            for chunk in chunks:
                done.extend(window.samples for window in buffer.push(chunk))
        self._started = True
        ready = min(len(done) for done in self._done)
        return [tuple(done.popleft() for done in self._done) for _ in range(ready)]

    def clear(self) -> None:
        """Drop buffered samples and windows not handed out yet (barge-in)."""
        for buffer, done in zip(self._buffers, self._done, strict=True):
            buffer.clear()
            done.clear()
