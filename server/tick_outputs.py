"""What a session has for each coming clock tick: the voice, the animated frame, when its input arrived.

Windows are mapped to ticks ahead of time and their frames come back from the worker in any order; the clock
takes each tick's share when it comes, and whatever is left for a passed tick is stale.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emo_stream.types import Frame


@dataclass
class TickShare:
    """One tick's share: the voice (None: silence), the frame (None: not ready), when its input window arrived
    (``time.perf_counter``; None: an idle frame's tick), whether an idle frame was asked for it."""

    voice: np.ndarray | None
    frame: Frame | None
    arrived: float | None
    idle_requested: bool


class TickOutputs:
    """Voice, frames and input arrival times by tick, and the ticks an idle frame was asked for."""

    def __init__(self) -> None:
        self.voice: dict[int, np.ndarray] = {}
        self.frames: dict[int, Frame] = {}
        self.arrived: dict[int, float] = {}
        self.idle_requested: set[int] = set()

    def take(self, tick: int) -> TickShare:
        """The tick's share, and everything for it and earlier ticks forgotten."""
        share = TickShare(self.voice.pop(tick, None), self.frames.pop(tick, None), self.arrived.pop(tick, None),
                          tick in self.idle_requested)
        self.idle_requested.discard(tick)
        self._drop(lambda k: k <= tick)
        return share

    def drop_from(self, tick: int) -> None:
        """Forget the voice, frames and arrivals of ``tick`` and later (windows given up while catching up)."""
        self._drop(lambda k: k >= tick)

    def clear(self) -> None:
        """Forget everything (barge-in)."""
        self.voice.clear()
        self.frames.clear()
        self.arrived.clear()
        self.idle_requested.clear()

    def _drop(self, stale: Callable[[int], bool]) -> None:
        for store in (self.voice, self.frames, self.arrived):
            for key in [k for k in store if stale(k)]:
                del store[key]
