"""The window stream: audio cut into one window per video frame (40 ms at 25 fps) on one clock.

Window ``n`` holds the samples ``[n·spf, (n+1)·spf)`` (spf = samples per frame) and carries the
media time of its first sample. An animator with a lookahead of ``latency_frames`` emits frame
``n`` once window ``n + latency_frames`` has arrived; ``flush`` emits the rest at the end.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from emo_stream.types import PTS_CLOCK_RATE, AudioWindow


def samples_per_frame(sample_rate: int, fps: int) -> int:
    if sample_rate % fps:
        raise ValueError(f"{sample_rate} Hz does not divide into {fps} frames per second")
    return sample_rate // fps


def frame_pts(index: int, fps: int) -> int:
    """Media time of frame ``index`` in ``PTS_CLOCK_RATE`` ticks."""
    return index * PTS_CLOCK_RATE // fps


class AudioWindowBuffer:
    """Cut a stream of mono float32 samples into consecutive one-frame AudioWindows.

    Args:
        sample_rate: input rate (16 kHz in the engine).
        fps: video frame rate; one window per frame.
        start_pts: media time of the first sample.
    """

    def __init__(self, sample_rate: int = 16_000, fps: int = 25, start_pts: int = 0) -> None:
        self.sample_rate = sample_rate
        self.fps = fps
        self.window_samples = samples_per_frame(sample_rate, fps)
        self._pending = np.zeros(0, np.float32)
        self._next_index = 0
        self._start_pts = start_pts

    @property
    def buffered_samples(self) -> int:
        return len(self._pending)

    def _window(self, samples: np.ndarray, is_speech: bool) -> AudioWindow:
        pts = self._start_pts + frame_pts(self._next_index, self.fps)
        self._next_index += 1
        return AudioWindow(samples=samples, sample_rate=self.sample_rate, start_pts=pts, is_speech=is_speech)

    def push(self, samples: np.ndarray, is_speech: bool = True) -> list[AudioWindow]:
        """Add samples; return every window that is now complete."""
        data = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(self._pending):
            data = np.concatenate([self._pending, data])
        n = len(data) // self.window_samples
        windows = [self._window(data[i * self.window_samples:(i + 1) * self.window_samples].copy(), is_speech)
                   for i in range(n)]
        self._pending = data[n * self.window_samples:].copy()
        return windows

    def flush(self, is_speech: bool = True) -> list[AudioWindow]:
        """The last partial window, padded with silence (none if nothing is buffered)."""
        if not len(self._pending):
            return []
        padded = np.zeros(self.window_samples, np.float32)
        padded[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, np.float32)
        return [self._window(padded, is_speech)]

    def clear(self) -> None:
        """Drop buffered samples (barge-in); the clock keeps counting."""
        self._pending = np.zeros(0, np.float32)


def iter_windows(chunks: Iterable[np.ndarray], sample_rate: int = 16_000, fps: int = 25) -> Iterator[AudioWindow]:
    """Windows of a finite chunk stream (e.g. ``iter_audio``), the last one padded."""
    buffer = AudioWindowBuffer(sample_rate, fps)
    for chunk in chunks:
        yield from buffer.push(chunk)
    yield from buffer.flush()
