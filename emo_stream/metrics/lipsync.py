"""Lip-sync score: how well the per-frame mouth opening follows the loudness of the audio, and at what lag.

The audio is reduced to a loudness envelope (RMS in 40 ms windows every 10 ms, square-rooted
so quiet syllables still count next to loud ones), streamed so a long file takes flat memory.
For each candidate lag in ±200 ms (5 ms steps, finer than a 40 ms frame) the envelope is read
at the frame times minus the lag, and Pearson's r with the mouth opening is taken; the lag
with the highest r is the A/V offset.

Sign: a POSITIVE offset means the video is LATE: the mouth at media time t shows the sound of
time t − offset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emo_stream.audio.decode import ENGINE_SAMPLE_RATE, iter_audio

HOP_S = 0.010      # envelope step: fine enough to place a lag between frames
WINDOW_HOPS = 4    # 40 ms RMS window: one video frame's worth of sound
MAX_LAG_S = 0.200
LAG_STEP_S = 0.005


@dataclass(frozen=True)
class Envelope:
    """Audio loudness on a regular grid.

    Attributes:
        values: sqrt of the RMS of each window (float64; silence is 0).
        start_s: media time of the first value's window centre.
        hop_s: time between values.
    """

    values: np.ndarray
    start_s: float
    hop_s: float

    def at(self, times: np.ndarray) -> np.ndarray:
        """Envelope at arbitrary times (linear interpolation); 0 (silence) outside the audio."""
        grid = self.start_s + self.hop_s * np.arange(len(self.values))
        return np.interp(times, grid, self.values, left=0.0, right=0.0)


@dataclass(frozen=True)
class LipSync:
    """Result of the lag search.

    Attributes:
        r: Pearson r at the best lag; 0.0 when the mouth or the sound never changes (nothing
            to correlate), None when there are too few frames with a face.
        offset_ms: the best lag (positive = video late); None when r could not pick one.
    """

    r: float | None
    offset_ms: float | None


def audio_envelope(path: str | Path, start_s: float = 0.0, sample_rate: int = ENGINE_SAMPLE_RATE) -> Envelope:
    """The loudness envelope of a file's first audio track, whose first sample plays at ``start_s``.

    Raises the audio decoder's typed errors (NoAudioStreamError, CorruptAudioError, ...).
    """
    hop = round(HOP_S * sample_rate)
    energies: list[np.ndarray] = []  # mean square of each hop-long block: 100 floats per second
    carry = np.zeros(0, dtype=np.float32)
    for chunk in iter_audio(path, sample_rate=sample_rate, chunk_samples=sample_rate):
        samples = np.concatenate([carry, chunk]) if len(carry) else chunk
        n = len(samples) // hop * hop
        if n:
            blocks = samples[:n].astype(np.float64).reshape(-1, hop)
            energies.append((blocks**2).mean(axis=1))
        carry = samples[n:]
    if len(carry):  # a last, partial block: pad with silence rather than drop up to 10 ms
        energies.append(np.array([float((carry.astype(np.float64) ** 2).sum()) / hop]))
    block = np.concatenate(energies) if energies else np.zeros(0)
    if len(block) < WINDOW_HOPS:
        block = np.pad(block, (0, WINDOW_HOPS - len(block)))
    # Window k spans blocks k .. k+WINDOW_HOPS-1; its centre lies WINDOW_HOPS/2 hops after block k's start.
    window = np.convolve(block, np.ones(WINDOW_HOPS) / WINDOW_HOPS, mode="valid")
    values = np.sqrt(np.sqrt(np.maximum(window, 0.0)))  # RMS, then sqrt to compress loud against quiet
    hop_s = hop / sample_rate
    return Envelope(values=values, start_s=start_s + hop_s * WINDOW_HOPS / 2, hop_s=hop_s)


def _flat(x: np.ndarray) -> bool:
    """True when ``x`` only varies by float rounding: it has no variance to correlate."""
    return float(np.abs(x - x.mean()).max()) <= 1e-9 * (float(np.abs(x).max()) + 1e-12)


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if _flat(a) or _flat(b):
        return None
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def lipsync(frame_times: np.ndarray, mouth: np.ndarray, envelope: Envelope,
            max_lag_s: float = MAX_LAG_S, step_s: float = LAG_STEP_S, min_frames: int = 10) -> LipSync:
    """Best-lag Pearson r between mouth opening and loudness.

    Args:
        frame_times: media time of each frame, seconds.
        mouth: per-frame mouth opening; NaN where no face was found (those frames are left out).
        envelope: the audio's loudness (``audio_envelope``).
        max_lag_s, step_s: the lag search range (±) and step.
        min_frames: fewer frames with a face than this gives r = None.
    """
    times = np.asarray(frame_times, dtype=np.float64)
    mouth = np.asarray(mouth, dtype=np.float64)
    keep = np.isfinite(mouth)
    if keep.sum() < min_frames:
        return LipSync(r=None, offset_ms=None)
    times, mouth = times[keep], mouth[keep]
    steps = int(round(max_lag_s / step_s))
    lags = np.arange(-steps, steps + 1) * step_s
    best_r: float | None = None
    best_lag = 0.0  # read only once best_r is set
    for lag in lags:
        r = _pearson(mouth, envelope.at(times - lag))
        # Ties (e.g. a flat stretch) go to the lag nearest 0: the smallest claim of an offset.
        if r is not None and (best_r is None or r > best_r + 1e-12
                              or (abs(r - best_r) <= 1e-12 and abs(lag) < abs(best_lag))):
            best_r, best_lag = r, lag
    if best_r is None:  # the mouth or the sound never changed: nothing follows anything
        return LipSync(r=0.0, offset_ms=None)
    return LipSync(r=best_r, offset_ms=round(best_lag * 1000.0, 1))


def level_at_frames(frame_times: np.ndarray, envelope: Envelope, offset_ms: float | None) -> np.ndarray:
    """Loudness each frame shows: the envelope at frame time minus the found offset (0 if none)."""
    lag = (offset_ms or 0.0) / 1000.0
    return envelope.at(np.asarray(frame_times, dtype=np.float64) - lag)
