"""The admission policy: one more session is refused (503, Retry-After) only when it would make the running ones
late. Pure: every figure is handed in, nothing is measured."""

from __future__ import annotations

import pytest

from emo_stream.errors import OverloadedError
from server.admission import (
    MAX_CORES_FRACTION,
    MAX_LATE_RATIO,
    MAX_WORKER_BUSY,
    RETRY_AFTER_LIMIT_S,
    RETRY_AFTER_LOAD_S,
    AdmissionLimits,
    ServerLoad,
    decide,
)

LIMITS = AdmissionLimits(max_sessions=6, session_cost_cores=0.0, cores=4.0)


def load(sessions: int = 1, starting: int = 0, utilization: float = 0.0, cpu_cores: float = 0.0,
         late_ratio: float = 0.0, session_cost: float = 0.0) -> ServerLoad:
    return ServerLoad(sessions=sessions, starting=starting, utilization=utilization, cpu_cores=cpu_cores,
                      late_ratio=late_ratio, session_cost=session_cost)


def test_a_light_load_is_admitted():
    assert decide(load(sessions=2, utilization=0.3, cpu_cores=1.0), LIMITS) is None


def test_the_session_limit_counts_starting_sessions_and_asks_to_retry_later():
    assert decide(load(sessions=3, starting=2), LIMITS) is None
    refusal = decide(load(sessions=4, starting=2), LIMITS)
    assert refusal is not None and refusal.reason == "limit" and refusal.retry_after_s == RETRY_AFTER_LIMIT_S
    assert refusal.message == "6 sessions are running or starting, the limit is 6: try again later"


def test_the_first_session_is_admitted_whatever_the_figures_say():
    heavy = load(sessions=0, utilization=1.0, cpu_cores=9.0, late_ratio=1.0, session_cost=9.0)
    assert decide(heavy, AdmissionLimits(max_sessions=6, session_cost_cores=9.0, cores=1.0)) is None


def test_a_worker_one_more_session_would_overfill_is_refused():
    # 2 sessions at 0.55: 3 would take 0.825 of the worker, fits; at 0.6, 0.9 does not.
    assert decide(load(sessions=2, utilization=0.55), LIMITS) is None
    refusal = decide(load(sessions=1, starting=1, utilization=0.6), LIMITS)
    assert refusal is not None and refusal.reason == "load" and refusal.retry_after_s == RETRY_AFTER_LOAD_S
    assert refusal.message == ("the animator is 60% busy with 2 sessions; one more would make them late: "
                               "try again later")
    exactly = MAX_WORKER_BUSY * 2 / 3  # lands on the threshold: still fits
    assert decide(load(sessions=2, utilization=exactly), LIMITS) is None


def test_sessions_already_late_refuse_one_more():
    assert decide(load(late_ratio=MAX_LATE_RATIO), LIMITS) is None
    refusal = decide(load(late_ratio=0.2, cpu_cores=0.5), LIMITS)
    assert refusal is not None and refusal.reason == "load" and refusal.retry_after_s == RETRY_AFTER_LOAD_S
    assert refusal.message == ("1 sessions use 0.5 of 4 cores, about 0.00 each (20% of their frames late); "
                               "one more would make them late: try again later")


def test_measured_cpu_one_more_session_would_not_fit_is_refused():
    # 2 sessions on 2.4 cores: 3 would use 3.6 = 0.9 of 4, fits; 2.5 would project 3.75.
    assert decide(load(sessions=2, cpu_cores=2.4), LIMITS) is None
    refusal = decide(load(sessions=2, cpu_cores=2.5, session_cost=1.25), LIMITS)
    assert refusal is not None and refusal.reason == "load"
    assert "2 sessions use 2.5 of 4 cores, about 1.25 each (0% of their frames late)" in refusal.message


def test_a_burst_is_counted_at_the_configured_estimate_until_a_cost_is_learned():
    """As the burst test sees it: at 0.4 of the cores a session, two get in and the third is refused."""
    cores = 2.0
    estimate = 0.4 * cores
    limits = AdmissionLimits(max_sessions=6, session_cost_cores=estimate, cores=cores)
    assert decide(load(sessions=0, starting=1), limits) is None  # the second offer: 2 x 0.8 = 1.6 <= 1.8
    refusal = decide(load(sessions=0, starting=2), limits)  # the third: 3 x 0.8 = 2.4 > 1.8
    assert refusal is not None and refusal.reason == "load"
    assert f"about {estimate:.2f} each" in refusal.message
    assert refusal.message.startswith("2 sessions use 0.0 of 2 cores")


def test_a_learned_cost_replaces_the_estimate():
    limits = AdmissionLimits(max_sessions=6, session_cost_cores=1.5, cores=4.0)
    assert decide(load(sessions=2), limits) is not None  # 3 x 1.5 = 4.5 > 3.6
    assert decide(load(sessions=2, session_cost=1.0), limits) is None  # 3 x 1.0 = 3.0
    refusal = decide(load(sessions=2, session_cost=1.3), limits)  # 3 x 1.3 = 3.9
    assert refusal is not None and "about 1.30 each" in refusal.message


def test_without_an_estimate_only_measured_load_refuses():
    limits = AdmissionLimits(max_sessions=6, session_cost_cores=0.0, cores=1.0)
    assert decide(load(sessions=5), limits) is None


def test_a_session_process_counts_its_share_of_the_cores():
    share = AdmissionLimits(max_sessions=6, session_cost_cores=0.0, cores=2 / 4)  # 2 cores, 4 processes
    assert decide(load(sessions=1, cpu_cores=0.2), share) is None
    refusal = decide(load(sessions=1, cpu_cores=0.3), share)  # 2 x 0.3 = 0.6 > 0.45
    assert refusal is not None and "of 0.5 cores" in refusal.message
    assert 0.6 > MAX_CORES_FRACTION * share.cores


def test_a_refusal_is_answered_as_overloaded_with_its_retry_after():
    refusal = decide(load(sessions=6), LIMITS)
    assert refusal is not None
    error = refusal.error()
    assert isinstance(error, OverloadedError) and error.code == "overloaded"
    assert error.retry_after_s == RETRY_AFTER_LIMIT_S and error.message == refusal.message


@pytest.mark.parametrize("limit", [1, 3])
def test_the_limit_applies_before_any_load_figure(limit):
    refusal = decide(load(sessions=limit, utilization=1.0, late_ratio=1.0),
                     AdmissionLimits(max_sessions=limit, session_cost_cores=0.0, cores=4.0))
    assert refusal is not None and refusal.reason == "limit"
