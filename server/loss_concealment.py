"""Lost microphone packets filled in, so a session's input keeps time.

A session counts its input by samples (``server.input_windows``): window ``i`` completes once ``i + 1`` windows
of audio have come. A packet the network lost (and ``InOrderAudioBuffer`` gave up) would pull every later sample
a packet earlier, so each loss left the windows after it completing a packet later against the ticks they were
mapped to. The input phase then had to delay the schedule a tick every loss or two: at 5 % loss the lead grew
by eight ticks (320 ms) in 20 s, and the mouth drifted from the voice by as much.

The decoded frames carry their RTP media time, so a gap in it shows what is missing. ``LossConcealer`` fills a
short gap as a receiver's concealment does: the last packet repeated, fading, and silence past that. The input
then keeps its time, the mouth keeps moving through a lost syllable, and the voice sent back keeps its length.
A long gap is not a loss but a sender that paused or an outage: it is left as it is, and the session's timeline
re-anchors as after any stop, rather than playing back a stretch of filler that would add its length to the
latency.
"""

from __future__ import annotations

from dataclasses import dataclass

import av
import numpy as np

MAX_GAP_S = 0.120  # longer gaps are a pause or an outage, not a loss to fill (six 20 ms packets)
REPEAT_GAIN = 0.7  # each repeat of the last packet at this share of the one before: a loss fades, never buzzes
REPEATS = 3  # repeats before the rest of a gap is silence


@dataclass
class ConcealmentStats:
    """``gaps``: gaps filled; ``seconds``: audio filled in; ``left``: gaps too long to fill (a pause or an
    outage)."""

    gaps: int = 0
    seconds: float = 0.0
    left: int = 0


class LossConcealer:
    """Decoded microphone frames in order → the frames that stand in for packets lost just before each one.

    Args:
        max_gap_s: the longest gap filled.
    """

    def __init__(self, max_gap_s: float = MAX_GAP_S) -> None:
        self.max_gap_s = max_gap_s
        self.stats = ConcealmentStats()
        self._next_s: float | None = None  # the media time the next frame should start at
        self._last: av.AudioFrame | None = None
        self._untaken_s = 0.0

    def take_filled_s(self) -> float:
        """Seconds filled in since the last call (for a counter that is exported in steps)."""
        taken, self._untaken_s = self._untaken_s, 0.0
        return taken

    def before(self, frame: av.AudioFrame) -> list[av.AudioFrame]:
        """The frames that fill the gap between the last frame and ``frame`` (none if it follows on, or carries
        no media time); to be pushed ahead of ``frame``. Call it before anything clears ``frame.pts``
        (``InputWindows.push`` does)."""
        start = _media_time(frame)
        if start is None or frame.sample_rate <= 0:
            self._next_s, self._last = None, None
            return []
        expected, last = self._next_s, self._last
        self._next_s = start + frame.samples / frame.sample_rate
        self._last = frame
        if expected is None or last is None:
            return []
        missing = int(round((start - expected) * frame.sample_rate))
        if missing <= 0:  # follows on (or overlaps: a sender's own rounding), nothing to fill
            return []
        if missing > round(self.max_gap_s * frame.sample_rate) or last.sample_rate != frame.sample_rate:
            self.stats.left += 1
            return []
        self.stats.gaps += 1
        self.stats.seconds += missing / frame.sample_rate
        self._untaken_s += missing / frame.sample_rate
        return [_filler(last, missing)]


def _media_time(frame: av.AudioFrame) -> float | None:
    if frame.pts is None or frame.time_base is None:
        return None
    return float(frame.pts * frame.time_base)


def _filler(last: av.AudioFrame, samples: int) -> av.AudioFrame:
    """``samples`` of ``last`` repeated ``REPEATS`` times, each ``REPEAT_GAIN`` of the one before, then silence;
    in ``last``'s format and layout."""
    planes = last.to_ndarray()  # packed: (1, samples × channels); planar: (channels, samples)
    channels = len(last.layout.channels)
    packed = not last.format.is_planar
    per_sample = channels if packed else 1
    repeats = []
    gain = 1.0
    for _ in range(REPEATS):
        gain *= REPEAT_GAIN
        repeats.append(planes * gain)
    body = np.concatenate(repeats, axis=1)
    length = samples * per_sample
    if body.shape[1] < length:
        body = np.concatenate([body, np.zeros((planes.shape[0], length - body.shape[1]))], axis=1)
    body = body[:, :length]
    if np.issubdtype(planes.dtype, np.integer):  # the gains are under 1: rounding cannot overflow
        body = np.round(body)
    filler = av.AudioFrame.from_ndarray(np.ascontiguousarray(body.astype(planes.dtype)), format=last.format.name,
                                        layout=last.layout.name)
    filler.sample_rate = last.sample_rate
    return filler
