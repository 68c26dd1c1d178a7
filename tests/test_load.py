"""LoadMeter: the smoothed load admission decides on, fed hand-made samples (no loop, no real clock)."""

from __future__ import annotations

import pytest

from server.load import IDLE_CORES, SAMPLE_INTERVAL_S, LoadMeter, LoadSample


def sample(t: float, busy: float = 0.0, cpu: float = 0.0, sessions: int = 0, settled: int = 0, ticks: int = 0,
           late: int = 0) -> LoadSample:
    return LoadSample(time_s=t, worker_busy_s=busy, cpu_s=cpu, sessions=sessions, settled=settled, ticks=ticks,
                      late=late)


def test_a_sample_is_due_once_an_interval_has_passed():
    meter = LoadMeter(start_time_s=100.0, start_cpu_s=0.0)
    assert not meter.due(100.0 + SAMPLE_INTERVAL_S - 0.01)
    assert meter.due(100.0 + SAMPLE_INTERVAL_S)
    meter.observe(sample(101.0))
    assert not meter.due(101.5) and meter.due(102.0)


def test_a_steady_load_is_approached_and_the_worker_fraction_is_capped_at_one():
    meter = LoadMeter(start_time_s=0.0, start_cpu_s=10.0)
    for t in range(1, 30):
        meter.observe(sample(float(t), busy=0.5 * t, cpu=10.0 + 1.5 * t))
    assert meter.utilization == pytest.approx(0.5)
    assert meter.cpu_cores == pytest.approx(1.5)
    meter.observe(sample(31.0, busy=0.5 * 29 + 5.0, cpu=10.0 + 1.5 * 29))  # over-counted busy time
    assert meter.utilization <= 1.0


def test_the_session_cost_is_learned_only_when_every_session_has_settled():
    meter = LoadMeter(start_time_s=0.0, start_cpu_s=0.0)
    for t in range(1, 20):
        meter.observe(sample(float(t), cpu=1.05 * t, sessions=2, settled=1))
    assert meter.session_cost == 0.0  # one of the two is still starting
    meter.observe(sample(20.0, cpu=1.05 * 20, sessions=2, settled=2))
    assert meter.session_cost == pytest.approx((meter.cpu_cores - IDLE_CORES) / 2)  # the first figure, as is
    first = meter.session_cost
    meter.observe(sample(21.0, cpu=1.05 * 20 + 3.05, sessions=2, settled=2))  # a heavier second: smoothed
    assert first < meter.session_cost < (meter.cpu_cores - IDLE_CORES) / 2


def test_the_late_ratio_follows_late_ticks_and_clears_when_no_session_is_left():
    meter = LoadMeter(start_time_s=0.0, start_cpu_s=0.0)
    meter.observe(sample(1.0, sessions=1, ticks=25, late=5))
    assert meter.late_ratio == pytest.approx(0.5 * 5 / 25)
    meter.observe(sample(2.0, sessions=1, ticks=50, late=5))
    assert meter.late_ratio == pytest.approx(0.25 * 5 / 25)
    meter.observe(sample(3.0, sessions=1, ticks=50, late=5))  # no tick: unchanged
    assert meter.late_ratio == pytest.approx(0.25 * 5 / 25)
    meter.observe(sample(4.0, sessions=0, ticks=0, late=0))
    assert meter.late_ratio == 0.0
