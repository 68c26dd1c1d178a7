"""How fast a client may send a session control messages (interrupts, PCM commands, events messages).

A token bucket per session: a burst of ``burst`` messages, then ``per_s`` a second. A client that keeps
sending far past the rate has its socket closed, so reading and refusing its messages cannot take the loop from
the session's own ticks. A flood is counted as refusals that leak away at the allowed rate (``FLOOD_DROPS``
outstanding), not refusals in a row: on a busy server a token comes back every ``1 / per_s`` seconds however
fast the client sends, and a run of refusals would be broken by it each time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from emo_stream.errors import RateLimitedError

CONTROL_PER_S = 20.0
CONTROL_BURST = 40
FLOOD_DROPS = 200  # refusals outstanding (each leaks away after 1 / per_s seconds): close the socket


class ControlRate:
    """A token bucket for one session's control messages.

    Args:
        per_s: messages a second, sustained.
        burst: messages at once after a quiet spell.
        clock: seconds, monotonic (tests inject their own).
    """

    def __init__(self, per_s: float = CONTROL_PER_S, burst: int = CONTROL_BURST,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_s = per_s
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()
        self._flood = 0.0
        self.refused = 0

    def take(self) -> None:
        """Spend one message's token.

        Raises:
            RateLimitedError: none left; the message is to be ignored.
        """
        now = self._clock()
        earned = (now - self._at) * self.per_s
        self._at = now
        self._tokens = min(float(self.burst), self._tokens + earned)
        self._flood = max(0.0, self._flood - earned)
        if self._tokens < 1.0:
            self._flood += 1.0
            self.refused += 1
            raise RateLimitedError(f"more than {self.per_s:.0f} control messages a second: this one is ignored")
        self._tokens -= 1.0

    @property
    def flooded(self) -> bool:
        """Whether the client keeps sending far past the rate (its socket is to be closed)."""
        return self._flood >= FLOOD_DROPS
