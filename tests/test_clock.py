"""The MediaClock on its own, on a virtual clock (no sleeps): ticks on a fixed schedule that does not drift,
lateness reported per tick, missed ticks released at once, ``advance`` moving the schedule sooner once."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.clock import MediaClock, TickQueue
from tests.virtual_time import run_virtual, virtual_loop

PERIOD_S = 0.040
EXACT = 1e-9  # virtual time is exact but for float rounding


class RecordingSource:
    """Records when each tick was asked for, on the loop's clock; ``work_s[index]``: how long that tick's
    picture takes (the virtual clock moves on by that much while it is made); ``fail``: ticks that raise."""

    def __init__(self, work_s: dict[int, float] | None = None, fail: set[int] | None = None) -> None:
        self.released: dict[int, float] = {}
        self.work_s = work_s or {}
        self.fail = fail or set()

    def tick(self, index: int):
        loop = virtual_loop()
        self.released[index] = loop.time()
        if index in self.fail:
            raise RuntimeError(f"tick {index} broke")
        loop.advance(self.work_s.get(index, 0.0))
        return np.full((2, 2, 3), index % 256, np.uint8), np.zeros(1920, np.float32)


async def _started_clock(source: RecordingSource | None = None):
    source, lags = source or RecordingSource(), []
    clock = MediaClock(source, fps=25, on_lag=lags.append)
    clock.start()
    return clock, source, lags


async def _until(clock: MediaClock, index: int, before_s: float) -> float:
    """Sleep until ``before_s`` before tick ``index`` is due; return the loop time then."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(clock._start + index * clock.period - before_s - loop.time())
    return loop.time()


def _run_for(seconds: float, source: RecordingSource | None = None):
    """A started clock left to tick for ``seconds``; returns (clock, source, lags)."""

    async def main():
        clock, source_, lags = await _started_clock(source)
        try:
            await asyncio.sleep(seconds)
        finally:
            await clock.stop()
        return clock, source_, lags

    return run_virtual(main)


def test_ticks_come_on_schedule_and_each_hands_both_tracks_the_same_index():
    clock, source, lags = _run_for(0.3)
    start = clock._start
    # Ticks 0..7 within 0.3 s (tick 7 is due at 0.28 s), each exactly at start + index * period.
    assert sorted(source.released) == list(range(8)) and clock.ticks == 8
    for index, at in source.released.items():
        assert at == pytest.approx(start + index * PERIOD_S, abs=EXACT)
    assert lags == pytest.approx([0.0] * 8, abs=EXACT)
    video = [clock.video._queue.get_nowait() for _ in range(len(clock.video))]
    audio = [clock.audio._queue.get_nowait() for _ in range(len(clock.audio))]
    assert [i for i, _ in video] == [i for i, _ in audio] == list(range(8))
    assert all(int(picture[0, 0, 0]) == i for i, picture in video)


def test_a_slow_tick_is_reported_late_and_the_missed_ticks_come_at_once_without_drift():
    # Tick 2's picture takes 100 ms (two and a half ticks): ticks 3 and 4 are then overdue.
    clock, source, lags = _run_for(0.5, RecordingSource(work_s={2: 0.100}))
    start = clock._start
    done_2 = start + 2 * PERIOD_S + 0.100
    # Audio must stay continuous: the missed ticks are released back to back, as soon as tick 2 is done ...
    assert source.released[3] == pytest.approx(done_2, abs=EXACT)
    assert source.released[4] == pytest.approx(done_2, abs=EXACT)
    # ... each reported as late as it was ...
    assert lags[3] == pytest.approx(done_2 - (start + 3 * PERIOD_S), abs=EXACT)  # 60 ms
    assert lags[4] == pytest.approx(done_2 - (start + 4 * PERIOD_S), abs=EXACT)  # 20 ms
    # ... and the schedule is the one from the start: tick 5 on after are on time, not 100 ms later.
    for index in range(5, 13):
        assert source.released[index] == pytest.approx(start + index * PERIOD_S, abs=EXACT)
        assert lags[index] == pytest.approx(0.0, abs=EXACT)
    assert len(lags) == len(source.released) == clock.ticks == 13


def test_a_tick_that_raises_is_skipped_and_the_clock_keeps_ticking(caplog):
    clock, source, lags = _run_for(0.2, RecordingSource(fail={1}))
    assert sorted(source.released) == list(range(5)) and clock.ticks == 5
    assert [i for i, _ in (clock.video._queue.get_nowait() for _ in range(len(clock.video)))] == [0, 2, 3, 4]
    assert "tick 1 failed" in caplog.text


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

    clock, source, lags, at = run_virtual(main)
    start = clock._start  # already the advanced start
    assert clock.advanced_s == pytest.approx(0.030)
    # The sleep for tick 3 was cut short: it came at its new time, not 30 ms later at its old one.
    assert source.released[3] == pytest.approx(at + 0.005, abs=EXACT)
    # The ticks after it keep the new schedule: 40 ms apart, 30 ms sooner than before the advance.
    for index in range(3, 10):
        assert source.released[index] == pytest.approx(start + index * PERIOD_S, abs=EXACT)
    assert lags == pytest.approx([0.0] * len(lags), abs=EXACT)
    assert len(lags) == len(source.released)


def test_a_tick_an_advance_leaves_in_the_past_is_released_at_once_and_not_counted_late():
    async def main():
        clock, source, lags = await _started_clock()
        try:
            at = await _until(clock, 3, before_s=0.005)
            clock.advance(0.035)  # tick 3 was due 30 ms ago on the new schedule
            await asyncio.sleep(0.200)
            return clock, source, lags, at
        finally:
            await clock.stop()

    clock, source, lags, at = run_virtual(main)
    assert source.released[3] == pytest.approx(at, abs=EXACT)
    # The loop released it as soon as it could: none of the 30 ms it was "overdue" counts as loop lag.
    assert lags[3] == pytest.approx(0.0, abs=EXACT)
    assert source.released[4] == pytest.approx(clock._start + 4 * PERIOD_S, abs=EXACT)


def test_an_advance_is_less_than_a_tick_and_does_nothing_before_the_start():
    clock = MediaClock(RecordingSource(), fps=25)
    with pytest.raises(ValueError, match="less than one tick"):
        clock.advance(0.040)
    with pytest.raises(ValueError):
        clock.advance(-0.001)
    clock.advance(0.010)
    assert clock.advanced_s == 0.0 and not clock.started


def test_tick_arithmetic_before_and_after_the_start():
    worker_now = [500.0]  # the worker's clock, unrelated to the loop's

    async def main():
        clock = MediaClock(RecordingSource(), fps=25, worker_clock=lambda: worker_now[0])
        before = (clock.current_tick(), clock.first_tick_after(0.1), clock.first_tick_after(0.08), clock.tick_time(3))
        clock.start()
        try:
            await asyncio.sleep(0.130)  # 3.25 ticks in
            worker_now[0] = 501.0
            after = (clock.current_tick(), clock.first_tick_after(0.0), clock.first_tick_after(0.030),
                     clock.first_tick_after(0.031), clock.tick_time(5))
        finally:
            await clock.stop()
        return before, after

    before, after = run_virtual(main)
    # Not started: tick 0 is "now", so 100 ms ahead is tick 3 (at 120 ms), 80 ms exactly tick 2; no tick is due.
    assert before == (0, 3, 2, float("inf"))
    current, next_now, next_30, next_31, due_5 = after
    assert (current, next_now, next_30, next_31) == (3, 4, 4, 5)
    # Tick 5 is due 70 ms after now (5 * 40 - 130), told on the worker's clock.
    assert due_5 == pytest.approx(501.070, abs=EXACT)


def test_stop_ends_the_ticks_and_flush_empties_both_queues():
    async def main():
        clock, source, _ = await _started_clock()
        await asyncio.sleep(0.1)
        await clock.stop()
        stopped_at = len(source.released)
        await asyncio.sleep(1.0)
        queued = (len(clock.video), len(clock.audio))
        clock.flush()
        return stopped_at, len(source.released), queued, (len(clock.video), len(clock.audio))

    stopped_at, later, queued, flushed = run_virtual(main)
    assert later == stopped_at == 3
    assert queued == (3, 3) and flushed == (0, 0)


def test_a_full_queue_drops_its_oldest_item_so_the_tracks_stay_within_its_bound():
    clock, source, _ = _run_for(1.0)  # 25 ticks, nobody sending them
    assert clock.ticks == 25
    assert [i for i, _ in (clock.video._queue.get_nowait() for _ in range(8))] == list(range(17, 25))
    assert clock.video.dropped == clock.audio.dropped == 17
    queue = TickQueue(maxsize=2)
    for index in range(3):
        queue.offer((index, np.zeros(1)))
    assert len(queue) == 2 and queue.dropped == 1
    assert asyncio.run(queue.get())[0] == 1
