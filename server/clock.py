"""The session's one clock: every 40 ms it releases one video frame and the 40 ms of audio that
frame shows, stamped with the same media time. The tracks only pull from it.

It never stalls: ``TickSource.tick`` always returns a picture (the frame if it is ready, else a
hold or idle frame, counted as late by the source) and the audio keeps playing. Deadlines are
computed from the start time, so ticks do not drift; if the loop falls behind, the missed ticks
are released at once (audio must stay continuous) and the lag is reported.

``advance`` moves every later tick earlier by less than a tick, once: a session whose microphone's
packets land just after its ticks brings its ticks to them (in a pause), instead of keeping up to a
packet of latency that buys nothing. The media times stay the tick indices, so a receiver sees one
frame come that much sooner, as network jitter would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)


class TickSource(Protocol):
    def tick(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The picture (H×W×3 uint8) and audio (float32 mono, one tick at 48 kHz) of tick ``index``."""
        ...


class TickQueue:
    """A bounded queue of (tick index, payload): the oldest item goes when a slow consumer lets it fill."""

    def __init__(self, maxsize: int) -> None:
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=maxsize)
        self.dropped = 0

    def offer(self, item: tuple[int, np.ndarray]) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
                self.dropped += 1
        self._queue.put_nowait(item)

    async def get(self) -> tuple[int, np.ndarray]:
        return await self._queue.get()

    def clear(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    def __len__(self) -> int:
        return self._queue.qsize()


class MediaClock:
    """Ticks at ``fps`` and hands each tick's picture and audio to the two tracks' queues.

    Args:
        source: where ticks come from (the session).
        fps: ticks per second.
        on_lag: called with the lateness in seconds of each tick (for metrics).
        worker_clock: the inference worker's clock, which ``tick_time`` answers on (tests pass a fake one;
            the clock's own schedule is the event loop's, which tests replace with a virtual-time loop).
    """

    def __init__(self, source: TickSource, fps: int = 25, on_lag: Callable[[float], None] | None = None,
                 worker_clock: Callable[[], float] = time.perf_counter) -> None:
        self.source = source
        self.worker_clock = worker_clock
        self.fps = fps
        self.period = 1.0 / fps
        # Equal bounds: if one sender falls behind, its oldest ticks go, so the two tracks
        # can never drift apart by more than this many ticks.
        self.video = TickQueue(maxsize=8)
        self.audio = TickQueue(maxsize=8)
        self.on_lag = on_lag
        self._start: float | None = None
        self._task: asyncio.Task | None = None
        self._sleep: asyncio.Future | None = None  # the wait for the next tick, cut short by ``advance``
        self.ticks = 0
        self.advanced_s = 0.0  # how far ``advance`` has moved the ticks, in all

    @property
    def started(self) -> bool:
        return self._start is not None

    def current_tick(self) -> int:
        """The tick being shown now (0 before the clock starts)."""
        if self._start is None:
            return 0
        return max(0, int((asyncio.get_running_loop().time() - self._start) / self.period))

    def first_tick_after(self, seconds: float) -> int:
        """The first tick due at least ``seconds`` from now."""
        if self._start is None:
            return max(0, math.ceil(seconds / self.period - 1e-9))
        ahead = asyncio.get_running_loop().time() + seconds - self._start
        return max(0, math.ceil(ahead / self.period - 1e-9))

    def tick_time(self, index: int) -> float:
        """When tick ``index`` is due, on the worker's clock (``time.perf_counter`` unless one was passed)."""
        if self._start is None:
            return float("inf")
        loop_now = asyncio.get_running_loop().time()
        return self.worker_clock() + (self._start + index * self.period - loop_now)

    def start(self) -> None:
        if self._task is None:
            self._start = asyncio.get_running_loop().time()
            self._task = asyncio.create_task(self._run(), name="media-clock")

    def advance(self, seconds: float) -> None:
        """Every tick not yet released comes ``seconds`` (0 to one tick) sooner."""
        if not 0.0 <= seconds < self.period:
            raise ValueError(f"a clock advances by less than one tick ({self.period * 1000:.0f} ms), "
                             f"not {seconds * 1000:.1f} ms")
        if self._start is None:
            return
        self._start -= seconds
        self.advanced_s += seconds
        if self._sleep is not None and not self._sleep.done():
            self._sleep.set_result(None)  # the next tick's deadline moved: wait for the new one

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def flush(self) -> None:
        """Barge-in: drop what the tracks have not sent yet."""
        self.video.clear()
        self.audio.clear()

    def _due(self, index: int) -> float:
        """When tick ``index`` is due on the loop's clock; only once started (``_run`` runs from ``start``)."""
        if self._start is None:
            raise RuntimeError("the media clock has not started")
        return self._start + index * self.period

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        index = 0
        advanced_at = -math.inf
        while True:
            deadline = self._due(index)
            if deadline > loop.time():
                self._sleep = loop.create_future()
                wake = loop.call_at(deadline, _resolve, self._sleep)
                try:
                    await self._sleep
                finally:
                    wake.cancel()
                if self._due(index) != deadline:
                    advanced_at = loop.time()  # a tick the advance left in the past is due now, not late
                    continue
            lag = loop.time() - max(deadline, advanced_at)
            if self.on_lag is not None:
                self.on_lag(lag)
            try:
                picture, audio = self.source.tick(index)
            except Exception:  # the clock must never die: log and keep ticking
                logger.exception("tick %d failed", index)
                index += 1
                continue
            self.video.offer((index, picture))
            self.audio.offer((index, audio))
            index += 1
            self.ticks = index


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
