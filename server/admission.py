"""Whether one more live session fits: a pure policy over the server's measured load (no I/O, no clock).

A session is refused (503 with ``Retry-After``) when it would make the running ones late. Sessions still
starting (admitted, their offers being answered) count as running, so a burst of offers is admitted one by one.
The animator is not all of a session's cost: its encoders and the network stack run on the same cores, so the
process's CPU use is projected too, each session counted at the learned cost or, before one is measured, at the
configured estimate (``server.session_cost_cores``), so that a burst cannot all slip in while the first of it
is still starting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from emo_stream.errors import OverloadedError

# One more session must keep the worker's busy fraction (scaled by sessions / running) at or under this.
MAX_WORKER_BUSY = 0.85
# Running sessions with more than this fraction of their frames late are late already: nothing more fits.
MAX_LATE_RATIO = 0.05
# One more session must keep the projected CPU use at or under this fraction of the cores the process may use.
MAX_CORES_FRACTION = 0.9
# Retry-After when the session limit is reached (sessions end on their own time) and when the load is too high.
RETRY_AFTER_LIMIT_S = 10
RETRY_AFTER_LOAD_S = 15

RefusalReason = Literal["limit", "load"]


@dataclass(frozen=True)
class AdmissionLimits:
    """What the configuration and the machine allow.

    Attributes:
        max_sessions: ``server.max_sessions``, sessions running or starting at once.
        session_cost_cores: ``server.session_cost_cores``, cores a session is counted at until one has been
            measured (0: only measured load is refused).
        cores: cores this process may run on; a session process counts its share of its siblings' cores.
    """

    max_sessions: int
    session_cost_cores: float
    cores: float


@dataclass(frozen=True)
class ServerLoad:
    """The load one more session would join.

    Attributes:
        sessions: sessions running.
        starting: sessions admitted and not yet running (their offers are being answered).
        utilization: the worker's busy fraction, smoothed.
        cpu_cores: the process's CPU use in cores, smoothed.
        late_ratio: late ticks / ticks over all sessions, smoothed.
        session_cost: cores one running session costs, learned; 0 before one has been measured.
    """

    sessions: int
    starting: int
    utilization: float
    cpu_cores: float
    late_ratio: float
    session_cost: float


@dataclass(frozen=True)
class Refusal:
    """Why one more session does not fit: ``reason`` labels the telemetry, the rest is the 503."""

    reason: RefusalReason
    message: str
    retry_after_s: int

    def error(self) -> OverloadedError:
        """The error the HTTP layer answers with (503, ``Retry-After: retry_after_s``)."""
        return OverloadedError(self.message, retry_after_s=self.retry_after_s)


def decide(load: ServerLoad, limits: AdmissionLimits) -> Refusal | None:
    """Admit one more session (None) or refuse it with the reason, message and Retry-After of the 503."""
    running = load.sessions + load.starting
    if running >= limits.max_sessions:
        return Refusal("limit", f"{running} sessions are running or starting, the limit is "
                                f"{limits.max_sessions}: try again later", RETRY_AFTER_LIMIT_S)
    if not running:
        return None  # nothing to make late
    # Each session costs about utilization / running of the worker: one more must fit.
    if load.utilization * (running + 1) / running > MAX_WORKER_BUSY:
        return Refusal("load", f"the animator is {load.utilization:.0%} busy with {running} sessions; one more "
                               "would make them late: try again later", RETRY_AFTER_LOAD_S)
    cost = load.session_cost or limits.session_cost_cores
    projected = max(load.cpu_cores * (running + 1) / running, cost * (running + 1))
    if load.late_ratio > MAX_LATE_RATIO or projected > MAX_CORES_FRACTION * limits.cores:
        return Refusal("load", f"{running} sessions use {load.cpu_cores:.1f} of {limits.cores:g} cores, about "
                               f"{cost:.2f} each ({load.late_ratio:.0%} of their frames late); one more would "
                               "make them late: try again later", RETRY_AFTER_LOAD_S)
    return None
