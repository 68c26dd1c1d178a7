"""The server's load, smoothed from once-a-second samples: what admission (``server.admission``) decides on.

Pure: the caller reads the clocks and counters and hands them in, so the smoothing is tested without a loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# How often the load is sampled (seconds of the caller's clock).
SAMPLE_INTERVAL_S = 1.0
# Exponential smoothing: the weight the previous value keeps at each sample (so a few seconds of memory).
UTILIZATION_KEEP = 0.6
CPU_KEEP = 0.6
LATE_KEEP = 0.5
SESSION_COST_KEEP = 0.8
# What the process burns with no session at all (event loop, telemetry), net of which a session is costed.
IDLE_CORES = 0.05
# A session counts toward the learned cost once it has run this long (its start-up burst is over).
SETTLED_S = 3


@dataclass
class LoadSample:
    """The cumulative counters at one instant.

    Attributes:
        time_s: the caller's clock.
        worker_busy_s: seconds the inference worker has been busy, in all.
        cpu_s: the process's user + system CPU seconds, in all.
        sessions: sessions running.
        settled: of those, the sessions that have run ``SETTLED_S`` or more.
        ticks: ticks of the running sessions, in all.
        late: late frames of the running sessions, in all.
    """

    time_s: float
    worker_busy_s: float
    cpu_s: float
    sessions: int
    settled: int
    ticks: int
    late: int


@dataclass
class LoadMeter:
    """Smoothed load: ``observe`` a ``LoadSample`` once ``due``; read the four figures.

    Attributes:
        utilization: the worker's busy fraction.
        cpu_cores: the process's CPU use in cores (worker, encoders, loop).
        late_ratio: late ticks / ticks over all sessions.
        session_cost: cores one running session costs; 0 until every running session has settled once.
    """

    start_time_s: float
    start_cpu_s: float
    utilization: float = 0.0
    cpu_cores: float = 0.0
    late_ratio: float = 0.0
    session_cost: float = 0.0
    _last: LoadSample = field(init=False)

    def __post_init__(self) -> None:
        self._last = LoadSample(self.start_time_s, 0.0, self.start_cpu_s, 0, 0, 0, 0)

    def due(self, now_s: float) -> bool:
        """Whether a sample is due at ``now_s`` (``SAMPLE_INTERVAL_S`` after the last)."""
        return now_s - self._last.time_s >= SAMPLE_INTERVAL_S

    def observe(self, sample: LoadSample) -> None:
        """Fold in the counters at ``sample.time_s`` (call when ``due``)."""
        last = self._last
        elapsed = sample.time_s - last.time_s
        busy = min(1.0, (sample.worker_busy_s - last.worker_busy_s) / elapsed)
        self.utilization = UTILIZATION_KEEP * self.utilization + (1 - UTILIZATION_KEEP) * busy
        self.cpu_cores = CPU_KEEP * self.cpu_cores + (1 - CPU_KEEP) * (sample.cpu_s - last.cpu_s) / elapsed
        if sample.settled and sample.settled == sample.sessions:
            cost = max(0.0, self.cpu_cores - IDLE_CORES) / sample.settled
            self.session_cost = (cost if not self.session_cost
                                 else SESSION_COST_KEEP * self.session_cost + (1 - SESSION_COST_KEEP) * cost)
        if sample.ticks > last.ticks:
            late = (sample.late - last.late) / (sample.ticks - last.ticks)
            self.late_ratio = LATE_KEEP * self.late_ratio + (1 - LATE_KEEP) * late
        elif not sample.sessions:
            self.late_ratio = 0.0
        self._last = sample
