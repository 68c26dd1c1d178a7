"""Keep a microphone's windows a steady lead before their ticks.

A session sends input window ``i`` to tick ``i + anchor``, chosen when input starts as the first tick at
least the least lead (lookahead + render margin) after the window completes. Where in a tick the
microphone's packets land is chance, so that lead is anything up to one tick more than the least, and it
stays so for the whole session: up to 40 ms of latency that buys nothing. The microphone's clock also
drifts against ours, slowly moving the lead either way.

``InputPhase`` watches the lead of every window and, in a pause only (where 20 ms of silence more or less
is not heard), moves it back:

- ``"drop"``: every lead of the last second is at least one packet above the least. The session drops
  that many quiet packets (as many whole packets as the smallest lead has above the least), so the windows
  after them complete that much later against the same ticks. A lead far above the least comes from a stall
  while the session anchored (the window's completion was seen late); it goes in one pause.
- ``"delay"``: the typical lead of the last second is below the least (the microphone runs slow against
  our clock). The next windows go one tick later (40 ms more lead; a tick of silence is played).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

WINDOWS = 25  # one second of windows at 25 fps between decisions
TOLERANCE_S = 0.002  # network jitter on a packet's arrival


@dataclass(frozen=True)
class PhaseAction:
    """``kind``: "drop" (``packets`` quiet packets) or "delay" (the next windows one tick later)."""

    kind: str
    packets: int = 0


class InputPhase:
    """Args: least_lead_s: the least lead a window needs; packet_s: one input packet's duration."""

    def __init__(self, least_lead_s: float, packet_s: float = 0.020) -> None:
        self.least_lead_s = least_lead_s
        self.packet_s = packet_s
        self._excess: deque[float] = deque(maxlen=WINDOWS)

    def reset(self) -> None:
        """Re-anchored: the leads seen so far no longer apply."""
        self._excess.clear()

    def observe(self, lead_s: float, pause: bool) -> PhaseAction | None:
        """One window's lead (its tick's time less the time it completed); ``pause``: nobody is speaking."""
        self._excess.append(lead_s - self.least_lead_s)
        if not pause or len(self._excess) < WINDOWS:
            return None
        excess = np.asarray(self._excess)
        packets = int((excess.min() - TOLERANCE_S) // self.packet_s)
        if packets >= 1:
            self._excess.clear()  # the next second shows the lead the drop left
            return PhaseAction("drop", packets)
        if np.median(excess) < -TOLERANCE_S:
            self._excess.clear()
            return PhaseAction("delay")
        return None
