"""The input timeline on a fake clock: which tick each window goes to, and the drop / advance / delay decisions.

No sleeps and no event loop: the fake clock's time only moves when a test moves it, so every lead is exact.
"""

from __future__ import annotations

import math

import pytest

from server.input_phase import PhaseAction
from server.input_timeline import (
    CATCH_UP_TICKS,
    QUIET_WINDOWS_TO_RESUME,
    InputTimeline,
    TickAnchors,
    base_lead_s,
)

FPS = 25
PERIOD_S = 1 / FPS
BASE_LEAD_S = 0.060  # one frame of lookahead (40 ms) and 20 ms to render
WINDOWS_PER_SECOND = FPS


class FakeClock:
    """MediaClock's schedule without the loop: tick ``i`` is due at ``start + i * period``; ``now`` is set."""

    def __init__(self, fps: int = FPS, now: float = 1.0) -> None:
        self.period = 1 / fps
        self.start = 0.0
        self.now = now
        self.advances: list[float] = []

    def current_tick(self) -> int:
        return max(0, int((self.now - self.start) / self.period))

    def first_tick_after(self, seconds: float) -> int:
        return max(0, math.ceil((self.now + seconds - self.start) / self.period - 1e-9))

    def tick_time(self, index: int) -> float:
        return self.start + index * self.period

    def advance(self, seconds: float) -> None:
        assert 0.0 <= seconds < self.period
        self.start -= seconds
        self.advances.append(seconds)


def _timeline(follows_phase: bool = True, now: float = 1.0) -> tuple[InputTimeline, FakeClock]:
    clock = FakeClock(now=now)
    return InputTimeline(clock, FPS, BASE_LEAD_S, follows_phase=follows_phase, now=lambda: clock.now), clock


def _window(timeline: InputTimeline, clock: FakeClock, at: float, quiet: bool = False, speaking: bool = False):
    """A window completed at ``at``: its voice placement and its engine twin's tick."""
    clock.now = at
    placement = timeline.place_voice_window(quiet, speaking)
    return placement, timeline.engine_window_tick()


def test_the_base_lead_is_lookahead_margin_ticks_and_render_time():
    assert base_lead_s(25, latency_frames=1) == pytest.approx(0.060)
    assert base_lead_s(25, latency_frames=1, delay_margin_ticks=2, render_margin_ms=50) == pytest.approx(0.170)
    assert base_lead_s(30, latency_frames=0, render_margin_ms=0) == 0.0


def test_anchors_map_windows_piecewise_and_a_new_segment_replaces_later_ones():
    anchors = TickAnchors()
    assert anchors.tick(0) is None
    anchors.set(0, 10)
    anchors.set(5, 11)
    assert [anchors.tick(i) for i in (0, 4, 5, 9)] == [10, 14, 16, 20]
    anchors.set(3, 20)  # re-anchored from window 3: the segment from 5 is gone
    assert [anchors.tick(i) for i in (2, 3, 9)] == [12, 23, 29]
    for k in range(20):  # only recent segments are kept
        anchors.set(10 + k, k)
    assert anchors.tick(0) is None and anchors.tick(29) == 29 + 19
    anchors.clear()
    assert anchors.tick(29) is None


@pytest.mark.parametrize("phase", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99])
def test_the_first_window_goes_to_the_first_tick_at_least_the_least_lead_after_it(phase):
    timeline, clock = _timeline()
    completed = 1.0 + phase * PERIOD_S
    placement, engine_tick = _window(timeline, clock, completed)
    lead = clock.tick_time(placement.tick) - completed
    assert BASE_LEAD_S - 1e-9 <= lead < BASE_LEAD_S + PERIOD_S
    assert placement.lead_s == pytest.approx(lead)
    assert engine_tick == placement.tick  # the engine window goes to its voice twin's tick
    assert timeline.latency_ms == round((BASE_LEAD_S + PERIOD_S) * 1000) == 100
    # The next windows, a tick apart, keep the anchor: one tick each.
    for n in range(1, 6):
        next_placement, next_engine = _window(timeline, clock, completed + n * PERIOD_S)
        assert next_placement.tick == next_engine == placement.tick + n
        assert not next_placement.caught_up
    assert timeline.last_mapped_tick == placement.tick + 5


def test_input_that_fell_behind_its_ticks_is_anchored_afresh():
    timeline, clock = _timeline()
    first, _ = _window(timeline, clock, 1.013)
    assert first.tick == 27  # 1.013 + 0.060 -> the tick at 1.080
    # A stall: the next window completes a second later, its old tick long past.
    late, engine_tick = _window(timeline, clock, 2.013)
    assert late.tick == 52 and engine_tick == 52 and not late.caught_up
    assert timeline.anchors.tick(1) == 52


def test_input_far_ahead_of_need_catches_up_in_a_pause_or_after_a_backlog():
    timeline, clock = _timeline()
    # Windows completing all at once (a burst after a stall) run ahead of their ticks, the first 2 ticks ahead;
    # while someone speaks they are kept up to CATCH_UP_TICKS beyond the most a window waits (3 ticks here).
    kept = 3 + CATCH_UP_TICKS - 1
    placements = [_window(timeline, clock, 1.013)[0] for _ in range(kept)]
    assert [p.tick for p in placements] == list(range(27, 27 + kept))
    assert not any(p.caught_up for p in placements)
    # One more is beyond that: re-anchored to the least lead, and what was mapped from there on is to be dropped.
    backlog, engine_tick = _window(timeline, clock, 1.013)
    assert backlog.caught_up and backlog.tick == engine_tick == 27
    assert timeline.last_mapped_tick == 27
    # In a pause the slack is only REANCHOR_SLACK_TICKS: the fifth quiet window of a burst (6 ticks ahead)
    # catches up; the next ones follow the new anchor.
    timeline, clock = _timeline()
    quiet = [_window(timeline, clock, 1.013, quiet=True)[0] for _ in range(7)]
    assert [p.caught_up for p in quiet] == [False] * 4 + [True, False, False]
    assert [p.tick for p in quiet] == [27, 28, 29, 30, 27, 28, 29]
    assert timeline.last_mapped_tick == 29  # the ticks mapped before from 27 on were given up


def _steady(timeline: InputTimeline, clock: FakeClock, lead_s: float, windows: int, quiet: bool = True,
            speaking: bool = False, from_tick: int = 40):
    """``windows`` windows, each completing ``lead_s`` before the tick the anchors give it (``from_tick`` for a
    first window; the clock's advances followed). Returns the placements."""
    placements = []
    for _ in range(windows):
        expected = timeline.anchors.tick(timeline.voice_windows)
        at = clock.tick_time(from_tick if expected is None else expected) - lead_s
        placements.append(_window(timeline, clock, at, quiet, speaking)[0])
    return placements


def test_a_second_of_pause_a_packet_above_the_least_lead_owes_a_quiet_packet_drop():
    timeline, clock = _timeline()
    # 23 ms above the least lead: a packet (20 ms) and the 2 ms tolerance, and 1 ms not worth an advance.
    placements = _steady(timeline, clock, BASE_LEAD_S + 0.023, WINDOWS_PER_SECOND)
    assert [p.action for p in placements[:-1]] == [None] * (WINDOWS_PER_SECOND - 1)
    assert placements[-1].action == PhaseAction("drop", 1)
    assert timeline.quiet_packets_owed == 1 and clock.advances == []
    # The drop is paid with a quiet packet; a loud one instead ends the pause, and nothing more is owed.
    assert timeline.drop_quiet_packet(quiet=True)
    assert timeline.quiet_packets_owed == 0 and not timeline.drop_quiet_packet(quiet=True)
    timeline.quiet_packets_owed = 2
    assert not timeline.drop_quiet_packet(quiet=False)
    assert timeline.quiet_packets_owed == 0


def test_nothing_moves_while_someone_speaks():
    timeline, clock = _timeline()
    placements = _steady(timeline, clock, BASE_LEAD_S + 0.023, 2 * WINDOWS_PER_SECOND, quiet=True, speaking=True)
    assert all(p.action is None for p in placements)
    placements = _steady(timeline, clock, BASE_LEAD_S + 0.023, 2 * WINDOWS_PER_SECOND, quiet=False)
    assert all(p.action is None for p in placements)
    assert timeline.quiet_packets_owed == 0 and clock.advances == []


def test_the_rest_of_a_packet_above_the_least_lead_advances_the_clock_once():
    timeline, clock = _timeline()
    placements = _steady(timeline, clock, BASE_LEAD_S + 0.013, WINDOWS_PER_SECOND)
    action = placements[-1].action
    assert action is not None and action.kind == "advance" and action.seconds == pytest.approx(0.011)
    assert clock.advances == [pytest.approx(0.011)]  # applied by the timeline itself
    assert timeline.quiet_packets_owed == 0
    # The next windows keep their ticks, now 11 ms sooner: 2 ms above the least, nothing more to do.
    later = _steady(timeline, clock, BASE_LEAD_S + 0.002, 2 * WINDOWS_PER_SECOND)
    assert all(p.action is None for p in later)
    assert later[0].tick == placements[-1].tick + 1


def test_a_lead_under_the_least_delays_the_next_windows_by_a_tick():
    timeline, clock = _timeline()
    placements = _steady(timeline, clock, BASE_LEAD_S - 0.005, WINDOWS_PER_SECOND)
    assert placements[-1].action == PhaseAction("delay")
    last = placements[-1].tick
    # The window after it goes one tick later than the anchor said (a tick of silence is played).
    after, engine_tick = _window(timeline, clock, clock.tick_time(last + 2) - BASE_LEAD_S - 0.035)
    assert after.tick == engine_tick == last + 2


def test_late_frames_raise_the_least_lead_and_a_pcm_timeline_keeps_the_base():
    timeline, clock = _timeline()
    lead = BASE_LEAD_S + 0.004  # within the tolerance and an advance's least: nothing to drop or advance
    first = _steady(timeline, clock, lead, WINDOWS_PER_SECOND)  # (late frames in the first second are start-up's)
    for _ in range(3):
        timeline.frame_late()
    # Of them the latest came 56 ms after its tick (now: the last window's completion): three packets' worth.
    timeline.frames_ready([first[-1].tick - 3])
    placements = _steady(timeline, clock, lead, WINDOWS_PER_SECOND)
    assert [p.action for p in placements if p.action] == [PhaseAction("raise", 3)]
    assert timeline.least_lead_s == pytest.approx(BASE_LEAD_S + 0.060)
    assert timeline.latency_ms == round((BASE_LEAD_S + 0.060 + PERIOD_S) * 1000)
    # The next pause's windows, now under the raised least lead, go a tick later.
    placements = _steady(timeline, clock, lead, WINDOWS_PER_SECOND)
    assert [p.action for p in placements if p.action] == [PhaseAction("delay")]
    # An agent's PCM is pulled on the ticks: no phase, no decisions, the least lead is the base.
    pcm, pcm_clock = _timeline(follows_phase=False)
    placements = _steady(pcm, pcm_clock, BASE_LEAD_S + 0.030, 3 * WINDOWS_PER_SECOND)
    assert {(p.action, p.lead_s) for p in placements} == {(None, None)}
    pcm.frame_late()
    pcm.frames_ready([1, 2])
    assert pcm.least_lead_s == BASE_LEAD_S and pcm_clock.advances == []


def test_an_interrupt_ignores_a_microphone_until_a_pause_then_anchors_afresh():
    timeline, clock = _timeline()
    first = _steady(timeline, clock, BASE_LEAD_S + 0.010, 5, quiet=False)
    timeline.interrupt(mute_until_quiet=True)
    assert timeline.last_mapped_tick == -1 and timeline.anchors.tick(0) is None
    at = clock.tick_time(first[-1].tick)
    # The cut utterance goes on: ignored, voice and engine windows alike; a quiet window in it does not count.
    for loud in (True, True, False, True, True):
        assert _window(timeline, clock, at, quiet=not loud) == (None, None)
        at += PERIOD_S
    # The speaker pauses: the first QUIET_WINDOWS_TO_RESUME - 1 quiet windows are still ignored...
    for _ in range(QUIET_WINDOWS_TO_RESUME - 1):
        assert _window(timeline, clock, at, quiet=True) == (None, None)
        at += PERIOD_S
    # ... then input counts again, anchored afresh at the least lead.
    placement, engine_tick = _window(timeline, clock, at, quiet=True)
    assert placement is not None and engine_tick == placement.tick and not placement.caught_up
    assert BASE_LEAD_S - 1e-9 <= clock.tick_time(placement.tick) - at < BASE_LEAD_S + PERIOD_S
    assert timeline.anchors.tick(timeline.voice_windows - 1) == placement.tick
    assert timeline.last_mapped_tick == placement.tick
    # An agent's interrupt drops its mappings only: its next window is placed at once.
    pcm, pcm_clock = _timeline(follows_phase=False)
    _steady(pcm, pcm_clock, BASE_LEAD_S, 3)
    pcm.interrupt(mute_until_quiet=False)
    placement, engine_tick = _window(pcm, pcm_clock, pcm_clock.now + PERIOD_S)
    assert placement is not None and engine_tick == placement.tick


def test_input_stops_a_tick_and_a_half_after_the_last_window():
    timeline, clock = _timeline()
    assert timeline.input_stopped()  # nothing yet
    _window(timeline, clock, 1.0)
    clock.now = 1.0 + 1.5 * PERIOD_S - 1e-6
    assert not timeline.input_stopped()
    clock.now = 1.0 + 1.5 * PERIOD_S + 1e-6
    assert timeline.input_stopped()


def test_an_engine_window_whose_tick_has_passed_is_not_animated():
    timeline, clock = _timeline()
    clock.now = 1.013
    placement = timeline.place_voice_window(quiet=False, speaking=False)
    assert placement is not None
    clock.now = clock.tick_time(placement.tick) + 0.001  # its tick came before the engine window was handed on
    assert timeline.engine_window_tick() is None
