"""InputPhase's decisions, driven window by window: it reads no clock (its time is the count of windows
observed, 25 a second), so each test is a scripted second-by-second history with no sleeps.

(test_session_timing.py has the drop / advance / delay scenarios and the raise-then-lower ones; these cover
the rules around them: when a decision may come, what lateness counts, the caps and the floors.)
"""

from __future__ import annotations

import pytest

from server.input_phase import (
    ADVANCE_MIN_S,
    CALM_SECONDS,
    LATE_PER_SECOND,
    TOLERANCE_S,
    WINDOWS,
    InputPhase,
    PhaseAction,
)

LEAST_S = 0.060
QUIET = LEAST_S + TOLERANCE_S  # a lead at the least and its tolerance: nothing to drop or advance


def _second(phase: InputPhase, lead_s: float = QUIET, pause: bool = False, late: int = 0,
            late_by_s: float | None = None, ready_s: float | None = None) -> list[PhaseAction]:
    """One second of windows at ``lead_s``: ``late`` of its frames late (``late_by_s`` after their tick when
    given, else never ready), the others ready ``ready_s`` before their tick (when given). The actions taken."""
    actions = []
    for k in range(WINDOWS):
        if k < late:
            phase.frame_late()
            if late_by_s is not None:
                phase.frame_ready(-late_by_s)
        elif ready_s is not None:
            phase.frame_ready(ready_s)
        action = phase.observe(lead_s, pause)
        if action is not None:
            actions.append(action)
    return actions


def test_the_least_lead_is_the_configured_one_plus_what_lateness_added():
    phase = InputPhase(least_lead_s=LEAST_S)
    assert (phase.base_lead_s, phase.extra_s, phase.least_lead_s) == (LEAST_S, 0.0, LEAST_S)
    phase.extra_s = 0.040
    assert phase.least_lead_s == pytest.approx(0.100)
    assert PhaseAction("delay") == PhaseAction("delay", 0, 0.0)


def test_no_decision_before_a_whole_second_of_leads_and_none_again_until_the_next():
    phase = InputPhase(least_lead_s=LEAST_S)
    far = LEAST_S + 0.045  # two packets and a bit above the least
    actions = [phase.observe(far, pause=True) for _ in range(WINDOWS)]
    assert actions[:-1] == [None] * (WINDOWS - 1) and actions[-1].kind == "drop"
    # The leads seen before the drop say nothing of the lead it left: another whole second is needed.
    assert [phase.observe(far, pause=True) for _ in range(WINDOWS - 1)] == [None] * (WINDOWS - 1)
    assert phase.observe(far, pause=True).kind == "drop"


def test_reset_forgets_the_leads_seen_before_a_new_anchor():
    phase = InputPhase(least_lead_s=LEAST_S)
    for _ in range(WINDOWS - 1):
        phase.observe(LEAST_S + 0.045, pause=True)
    phase.reset()
    assert [phase.observe(LEAST_S + 0.045, pause=True) for _ in range(WINDOWS - 1)] == [None] * (WINDOWS - 1)


def test_speech_at_the_decisive_window_defers_the_move_to_the_next_pause():
    phase = InputPhase(least_lead_s=LEAST_S)
    far = LEAST_S + 0.027
    assert [phase.observe(far, pause=False) for _ in range(3 * WINDOWS)] == [None] * (3 * WINDOWS)
    # 25 ms above the least and its tolerance: a packet, and the clock 5 ms sooner.
    assert phase.observe(far, pause=True) == PhaseAction("drop", 1, pytest.approx(0.005))


def test_the_packet_length_sets_how_many_packets_a_drop_takes():
    phase = InputPhase(least_lead_s=LEAST_S, packet_s=0.010)
    action = [phase.observe(LEAST_S + 0.037, pause=True) for _ in range(WINDOWS)][-1]
    # 35 ms above the least and its tolerance: three 10 ms packets, and the 5 ms left by advancing the clock.
    assert (action.kind, action.packets) == ("drop", 3) and action.seconds == pytest.approx(0.005)


def test_an_advance_under_its_least_worth_is_not_made():
    phase = InputPhase(least_lead_s=LEAST_S)
    just_under = LEAST_S + TOLERANCE_S + ADVANCE_MIN_S - 0.0005
    assert {phase.observe(just_under, pause=True) for _ in range(3 * WINDOWS)} == {None}
    phase.reset()
    just_over = LEAST_S + TOLERANCE_S + ADVANCE_MIN_S + 0.0005
    action = [phase.observe(just_over, pause=True) for _ in range(WINDOWS)][-1]
    assert action.kind == "advance" and action.seconds == pytest.approx(ADVANCE_MIN_S + 0.0005)


def test_a_lead_typically_below_the_least_delays_only_in_a_pause():
    phase = InputPhase(least_lead_s=LEAST_S)
    low = LEAST_S - 0.005
    assert {phase.observe(low, pause=False) for _ in range(2 * WINDOWS)} == {None}
    assert phase.observe(low, pause=True) == PhaseAction("delay")
    # A few low leads among steady ones (jitter) are not a slow microphone: the median decides.
    phase.reset()
    leads = [low if k % 5 == 0 else QUIET for k in range(WINDOWS)]
    assert {phase.observe(lead, pause=True) for lead in leads} == {None}


def test_late_frames_in_the_first_second_are_the_start_up_and_raise_nothing():
    phase = InputPhase(least_lead_s=LEAST_S)
    assert _second(phase, late=WINDOWS) == []
    assert phase.extra_s == 0.0
    assert _second(phase, late=LATE_PER_SECOND) == [PhaseAction("raise", 1)]


def test_lateness_is_counted_per_second_and_only_three_in_one_second_raise():
    phase = InputPhase(least_lead_s=LEAST_S)
    _second(phase)  # start-up
    # Two late frames a second, for five seconds: ten in all, but never three in one second.
    assert [a for _ in range(5) for a in _second(phase, late=LATE_PER_SECOND - 1)] == []
    assert phase.extra_s == 0.0
    assert _second(phase, late=LATE_PER_SECOND) == [PhaseAction("raise", 1)]
    assert phase.extra_s == pytest.approx(0.020)


def test_a_frame_that_never_came_raises_by_one_packet_and_one_that_came_late_by_what_it_needs():
    never = InputPhase(least_lead_s=LEAST_S)
    _second(never)
    assert _second(never, late=5) == [PhaseAction("raise", 1)]
    came = InputPhase(least_lead_s=LEAST_S)
    _second(came)
    # 37 ms late, with the 2 ms tolerance, needs two packets (40 ms).
    assert _second(came, late=5, late_by_s=0.037) == [PhaseAction("raise", 2)]
    # Exactly two packets' worth (38 + 2 ms) is still two, not three.
    exact = InputPhase(least_lead_s=LEAST_S)
    _second(exact)
    assert _second(exact, late=5, late_by_s=0.038) == [PhaseAction("raise", 2)]


def test_raises_stop_at_the_cap_and_then_lateness_asks_for_nothing_more():
    phase = InputPhase(least_lead_s=LEAST_S, max_extra_s=0.040)
    _second(phase)
    assert _second(phase, late=5, late_by_s=0.030) == [PhaseAction("raise", 2)]
    assert phase.extra_s == pytest.approx(0.040)
    assert [a for _ in range(3) for a in _second(phase, late=WINDOWS, late_by_s=0.100)] == []
    assert phase.least_lead_s == pytest.approx(LEAST_S + 0.040)
    never = InputPhase(least_lead_s=LEAST_S, max_extra_s=0.0)
    _second(never)
    assert _second(never, late=WINDOWS) == []


def test_a_raise_forgets_the_leads_seen_against_the_old_least():
    phase = InputPhase(least_lead_s=LEAST_S)
    _second(phase, lead_s=QUIET)
    # The raise comes at the second's first window; a decision on the new least needs a whole second more.
    actions = []
    for k in range(2 * WINDOWS):
        if k < LATE_PER_SECOND:
            phase.frame_late()
        action = phase.observe(QUIET, pause=True)
        actions.append(action)
    assert actions[WINDOWS - 1] == PhaseAction("raise", 1)
    # Against the new least (80 ms) the lead of 62 ms is low: a tick more, once a whole second has shown it.
    assert actions[2 * WINDOWS - 1] == PhaseAction("delay")
    assert [a for a in actions if a] == [PhaseAction("raise", 1), PhaseAction("delay")]


def test_a_calm_lowers_only_what_lateness_added_and_only_after_ten_seconds():
    phase = InputPhase(least_lead_s=LEAST_S)
    _second(phase)
    assert _second(phase, late=5, late_by_s=0.070) == [PhaseAction("raise", 4)]
    lead = LEAST_S + 0.080 + TOLERANCE_S
    seconds = [_second(phase, lead_s=lead, ready_s=0.100) for _ in range(CALM_SECONDS)]
    assert seconds[:-1] == [[]] * (CALM_SECONDS - 1)
    # 100 ms spare is four packets (with the tolerance); one stays as margin, so three go.
    assert seconds[-1] == [PhaseAction("lower", 3)] and phase.extra_s == pytest.approx(0.020)
    # The next calm takes the last packet lateness added, and no more.
    seconds = [_second(phase, lead_s=lead, ready_s=0.100) for _ in range(CALM_SECONDS)]
    assert [a for s in seconds for a in s] == [PhaseAction("lower", 1)]
    assert phase.extra_s == pytest.approx(0.0, abs=1e-9)
    # At the configured least, a calm lowers nothing more, however much time the frames have to spare.
    assert [a for _ in range(2 * CALM_SECONDS) for a in _second(phase, ready_s=0.500)] == []
    assert phase.least_lead_s == pytest.approx(LEAST_S)


def test_a_calm_without_a_packet_to_spare_lowers_nothing():
    phase = InputPhase(least_lead_s=LEAST_S)
    phase.extra_s = 0.040
    assert [a for _ in range(3 * CALM_SECONDS) for a in _second(phase, lead_s=0.102, ready_s=0.015)] == []
    # No frame reported ready at all: nothing is known of the spare time, so nothing is lowered either.
    silent = InputPhase(least_lead_s=LEAST_S)
    silent.extra_s = 0.040
    assert [a for _ in range(3 * CALM_SECONDS) for a in _second(silent, lead_s=0.102)] == []
    assert silent.extra_s == pytest.approx(0.040)
