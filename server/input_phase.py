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
- ``"advance"``: what is left, under a packet (a drop carries it too, as ``seconds``). The session's clock
  brings its ticks that much sooner, once (``MediaClock.advance``). Without it a session keeps whatever part
  of a packet the handshake's timing left between its microphone's packets and its ticks: one session ran
  near the least lead and the next, alike, 10–20 ms above it. Only while the least lead is the configured
  one: a session that lateness has raised keeps that part of a packet as margin.
- ``"delay"``: the typical lead of the last second is below the least (the microphone runs slow against
  our clock). The next windows go one tick later (40 ms more lead; a tick of silence is played).

The least lead itself adapts to the machine, like a jitter buffer's target. A second with three or more late
frames raises it (``"raise"``, up to ``max_extra_s`` above the configured least; a stall that makes one or two
frames late does not) by as many packets as the latest of those frames came after its tick (at least one: a
frame that never came says nothing of how late it was), so a session that starts on a busy machine gets the
lead it needs in one step instead of one packet a second. Ten seconds without a late frame, in which every
frame was ready at least a packet before its tick, lower it (``"lower"``) by the whole packets every frame had
to spare, less one kept as margin (at least one packet). Raising and lowering change nothing at
once: the next pauses delay or drop to the new least. So one session on an idle machine runs at the
configured least, and a loaded one buys the render time it needs with latency.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

WINDOWS = 25  # one second of windows at 25 fps between decisions
TOLERANCE_S = 0.002  # network jitter on a packet's arrival
ADVANCE_MIN_S = 0.003  # less is not worth moving the clock for
CALM_SECONDS = 10  # seconds without a late frame before the least lead is lowered
LATE_PER_SECOND = 3  # late frames within one second that raise the least lead (a stall of a tick or two does not)


@dataclass(frozen=True)
class PhaseAction:
    """``kind``: "drop" (``packets`` quiet packets, and the clock ``seconds`` sooner), "advance" (the clock
    ``seconds`` sooner), "delay" (the next windows one tick later), "raise" / "lower" (the least lead up / down
    by ``packets``)."""

    kind: str
    packets: int = 0
    seconds: float = 0.0


class InputPhase:
    """Args: least_lead_s: the configured least lead a window needs; packet_s: one input packet's duration;
    max_extra_s: how far lateness may raise the least lead."""

    def __init__(self, least_lead_s: float, packet_s: float = 0.020, max_extra_s: float = 0.080) -> None:
        self.base_lead_s = least_lead_s
        self.packet_s = packet_s
        self.max_extra_s = max_extra_s
        self.extra_s = 0.0
        self._excess: deque[float] = deque(maxlen=WINDOWS)
        self._windows = 0
        self._late = 0  # late frames in the current second
        self._calm = 0  # seconds since the last late frame or change of the least lead
        self._least_slack = math.inf  # the least time a frame was ready before its tick, over those seconds
        self._most_late_s = 0.0  # how long after its tick the latest frame of the current second came

    @property
    def least_lead_s(self) -> float:
        return self.base_lead_s + self.extra_s

    def reset(self) -> None:
        """Re-anchored: the leads seen so far no longer apply."""
        self._excess.clear()

    def frame_late(self) -> None:
        """A tick's frame was not ready."""
        self._late += 1

    def frame_ready(self, slack_s: float) -> None:
        """A frame was ready ``slack_s`` before its tick (negative: after it; its tick was counted late)."""
        self._least_slack = min(self._least_slack, slack_s)
        self._most_late_s = max(self._most_late_s, -slack_s)

    def observe(self, lead_s: float, pause: bool) -> PhaseAction | None:
        """One window's lead (its tick's time less the time it completed); ``pause``: nobody is speaking."""
        adapted = self._adapt()
        if adapted is not None:
            return adapted
        self._excess.append(lead_s - self.least_lead_s)
        if not pause or len(self._excess) < WINDOWS:
            return None
        excess = np.asarray(self._excess)
        spare = excess.min() - TOLERANCE_S
        packets = int(spare // self.packet_s)
        rest = spare - packets * self.packet_s if spare > 0 else 0.0
        # Where lateness has raised the least lead, the rest stays as margin: there the lead's spare part of a
        # packet averts late frames, and the raise, not the rest, sets the latency.
        rest = rest if rest >= ADVANCE_MIN_S and self.extra_s < 1e-9 else 0.0
        if packets >= 1 or rest:
            self._excess.clear()  # the next second shows the lead the drop or advance left
            return PhaseAction("drop", packets, rest) if packets >= 1 else PhaseAction("advance", 0, rest)
        if np.median(excess) < -TOLERANCE_S:
            self._excess.clear()
            return PhaseAction("delay")
        return None

    def _adapt(self) -> PhaseAction | None:
        """Once a second: move the least lead by a packet if lateness (or a long calm) says so."""
        self._windows += 1
        if self._windows % WINDOWS:
            return None
        late, self._late = self._late, 0
        most_late, self._most_late_s = self._most_late_s, 0.0
        if self._windows == WINDOWS:
            return None  # the session's first second: its first frames wait on the avatar's preparation
        if late >= LATE_PER_SECOND:
            self._calm, self._least_slack = 0, math.inf
            wanted = max(1, math.ceil((most_late + TOLERANCE_S) / self.packet_s - 1e-9))
            room = int((self.max_extra_s - self.extra_s + 1e-9) // self.packet_s)
            packets = min(wanted, room)
            if packets >= 1:
                self.extra_s += packets * self.packet_s
                self._excess.clear()
                return PhaseAction("raise", packets)
            return None
        if late:  # a hiccup: the calm starts again, and so does the spare time it is judged on
            self._calm, self._least_slack = 0, math.inf
            return None
        self._calm += 1
        if self._calm < CALM_SECONDS:
            return None
        spare = int((self._least_slack - TOLERANCE_S) // self.packet_s) if math.isfinite(self._least_slack) else 0
        self._calm, self._least_slack = 0, math.inf
        if self.extra_s > 1e-9 and spare >= 1:
            # A packet of the spare time stays as margin; a raise for a passing stall (a session's start-up)
            # then comes back in one calm spell, not one packet per spell.
            packets = min(max(1, spare - 1), round(self.extra_s / self.packet_s))
            self.extra_s = max(0.0, self.extra_s - packets * self.packet_s)
            self._excess.clear()
            return PhaseAction("lower", packets)
        return None
