"""The MediaClock on its own: ticks on a fixed schedule, and ``advance`` moving that schedule sooner once."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.clock import MediaClock


class RecordingSource:
    """Records when each tick was asked for, on the loop's clock."""

    def __init__(self) -> None:
        self.released: dict[int, float] = {}

    def tick(self, index: int):
        self.released[index] = asyncio.get_running_loop().time()
        return np.zeros((2, 2, 3), np.uint8), np.zeros(1920, np.float32)


async def _started_clock():
    source, lags = RecordingSource(), []
    clock = MediaClock(source, fps=25, on_lag=lags.append)
    clock.start()
    return clock, source, lags


async def _until(clock: MediaClock, index: int, before_s: float) -> float:
    """Sleep until ``before_s`` before tick ``index`` is due; return the loop time then."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(clock._start + index * clock.period - before_s - loop.time())
    return loop.time()


def test_an_advance_brings_the_next_tick_sooner_and_keeps_the_new_phase():
    async def main():
        clock, source, lags = await _started_clock()
        try:
            at = await _until(clock, 3, before_s=0.035)
            clock.advance(0.030)  # tick 3 is now due 5 ms from here, not 35
            await asyncio.sleep(0.300)
            return clock, source, lags, at
        finally:
            await clock.stop()

    clock, source, lags, at = asyncio.run(main())
    start = clock._start
    assert clock.advanced_s == pytest.approx(0.030)
    # The sleep for tick 3 was cut short: it came at its new time, not 30 ms later at its old one.
    assert at + 0.005 - 0.001 <= source.released[3] < at + 0.030, source.released[3] - at
    # The ticks after it keep the new schedule (40 ms apart, 30 ms sooner than before the advance; on the old
    # one each would come 30 ms after its new time). The median: one stall of the machine's is not the clock's.
    later = [source.released[k] - (start + k * clock.period) for k in range(4, 9)]
    assert min(later) >= 0 and np.median(later) < 0.015, later
    assert len(lags) == len(source.released)


def test_a_tick_an_advance_leaves_in_the_past_is_released_at_once_and_not_counted_late():
    async def main():
        clock, source, lags = await _started_clock()
        try:
            at = await _until(clock, 3, before_s=0.005)
            clock.advance(0.035)  # tick 3 was due 30 ms ago on the new schedule
            await asyncio.sleep(0.200)
            return source, lags, at
        finally:
            await clock.stop()

    source, lags, at = asyncio.run(main())
    assert source.released[3] - at < 0.025
    # The loop released it as soon as it could: no 30 ms of loop lag is reported for it.
    assert lags[3] < 0.025, lags[3]


def test_an_advance_is_less_than_a_tick():
    clock = MediaClock(RecordingSource(), fps=25)
    with pytest.raises(ValueError, match="less than one tick"):
        clock.advance(0.040)
    with pytest.raises(ValueError):
        clock.advance(-0.001)
