"""A session's events for its subscribers (the events WebSocket): speaking state, stats each second, closing.

Each subscriber has a bounded queue: a slow reader loses its oldest events, never holds up the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from server.telemetry import Telemetry

SUBSCRIBER_QUEUE = 64  # events a subscriber may fall behind by before its oldest go
STATS_PERIOD_S = 1.0


@dataclass
class SessionStats:
    """A session's counters (read by the admission policy, the watchdog and the stats events)."""

    created: float = field(default_factory=time.monotonic)
    ticks: int = 0
    frames_sent: int = 0
    frames_late: int = 0
    windows_in: int = 0
    last_input: float | None = None  # time.monotonic() of the last input (media or PCM)
    speaking: bool = False


class EventHub:
    """Publishes a session's events to its subscribers and keeps its speaking state.

    Args:
        stats: the session's counters (``speaking`` is kept here).
        telemetry: the process's metrics (its ``speaking`` gauge counts speaking sessions).
    """

    def __init__(self, stats: SessionStats, telemetry: Telemetry) -> None:
        self.stats = stats
        self.telemetry = telemetry
        self._subscribers: list[asyncio.Queue[dict[str, Any]]] = []

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A new subscriber's queue, the current state first."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers.append(queue)
        queue.put_nowait(_state_event(self.stats.speaking))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)

    def publish(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to every subscriber (a full queue loses its oldest event)."""
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def set_speaking(self, speaking: bool) -> None:
        """The speaker started or stopped: count it and tell the subscribers (nothing if unchanged)."""
        if speaking == self.stats.speaking:
            return
        self.stats.speaking = speaking
        self.telemetry.speaking.inc() if speaking else self.telemetry.speaking.dec()
        self.publish(_state_event(speaking))

    def closed(self, reason: str) -> None:
        """The session closed: it no longer counts as speaking; the subscribers hear why."""
        if self.stats.speaking:
            self.telemetry.speaking.dec()
        self.publish({"type": "closed", "reason": reason})

    async def publish_stats(self, latency_ms: Callable[[], int], buffered_audio_s: Callable[[], float],
                            is_open: Callable[[], bool]) -> None:
        """Every second while ``is_open()``: a ``stats`` event (frames sent and late, the latency now, ...)."""
        last_sent, last_late = self.stats.frames_sent, self.stats.frames_late
        while is_open():
            await asyncio.sleep(STATS_PERIOD_S)
            sent, late = self.stats.frames_sent, self.stats.frames_late
            self.publish({"type": "stats", "fps": sent - last_sent, "frames_sent": sent, "late_frames": late,
                          "late_frames_per_s": late - last_late, "latency_ms": latency_ms(),
                          "speaking": self.stats.speaking, "buffered_audio_s": round(buffered_audio_s(), 3)})
            last_sent, last_late = sent, late


def _state_event(speaking: bool) -> dict[str, Any]:
    return {"type": "state", "state": "speaking" if speaking else "idle"}
