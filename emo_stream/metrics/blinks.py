"""Blink events from the per-frame eye aspect ratio (EAR): one event per dip below the clip's open-eye level.

The threshold is relative to the clip's median EAR (eyes are open most of the time), so it
adapts to eye shape, stylisation and head pose. Hysteresis — a dip starts below ``close_ratio``
× median and ends only above ``open_ratio`` × median — keeps one blink, with its jittery
landmarks, from counting twice. mediapipe's tracked lids rarely meet on a closed eye (a
shut eye reads at ~0.6 of the open EAR on photos and renders alike), so a dip to 0.7 of the
median is a blink; frame-to-frame jitter of an open eye stays within a few percent.
"""

from __future__ import annotations

import numpy as np


def blink_events(ear: np.ndarray, close_ratio: float = 0.7, open_ratio: float = 0.85) -> list[tuple[int, int]]:
    """(first, last) frame index of each blink found in ``ear``.

    Args:
        ear: per-frame eye aspect ratio; NaN where no face was found. NaN frames neither start
            nor end a blink (a face lost mid-blink does not split it in two).
        close_ratio: a blink starts when EAR falls below this fraction of the median.
        open_ratio: it ends when EAR climbs back above this fraction.

    A dip still open at the end of the clip counts too (the eyes did close).
    """
    ear = np.asarray(ear, dtype=np.float64)
    valid = np.isfinite(ear)
    if not valid.any():
        return []
    median = float(np.median(ear[valid]))
    if median <= 0:
        return []
    low, high = close_ratio * median, open_ratio * median
    events: list[tuple[int, int]] = []
    start: int | None = None
    last_closed = -1
    for i, value in enumerate(ear):
        if not np.isfinite(value):
            continue
        if start is None and value < low:
            start, last_closed = i, i
        elif start is not None:
            if value > high:
                events.append((start, last_closed))
                start = None
            else:
                last_closed = i
    if start is not None:
        events.append((start, last_closed))
    return events

