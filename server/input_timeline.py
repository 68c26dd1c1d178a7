"""Which clock tick each input window is shown on: the anchors, and the decisions that keep the lead steady.

Input window ``i`` is shown at clock tick ``i + anchor``. The anchor is set when input starts (or resumes after a
gap, or after an interrupt): the window goes to the first tick due at least the least lead after it completed.
The base lead (the configured least) is the animator's lookahead (its frame waits for that many more windows),
any margin ticks (``server.delay_margin_ticks``) and the least time the frame then has to be rendered
(``server.render_margin_ms``). Where in its tick a window completes varies, so a window is shown between the
least lead and one tick more after it completes; that upper bound is the declared ``latency_ms``. The voice goes
on the same tick, so picture and sound leave together.

For a microphone, ``server.input_phase.InputPhase`` then keeps the lead near the least (dropping quiet packets,
advancing the clock by the rest of a packet or adding a tick, in pauses) and raises or lowers the least lead
above the base with the lateness the session sees. An agent's PCM is pulled on the ticks themselves, so its
lead is fixed by the tick: no phase, and the least lead stays the base.

``InputTimeline`` holds no audio and does no I/O: it is told each window's quietness, reads and advances an
injected clock, and returns where each window goes and what the session must do about it.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from server.input_phase import InputPhase, PhaseAction

REANCHOR_SLACK_TICKS = 2  # input this far ahead of need, at a quiet moment: catch up
CATCH_UP_TICKS = 12  # input this far ahead of need catches up even in speech (a stall's backlog)
IDLE_AFTER_TICKS = 1.5  # no input window for this long: the input has stopped
QUIET_WINDOWS_TO_RESUME = 5  # after a barge-in, this many quiet windows in a row end the cut utterance
ANCHOR_SEGMENTS_KEPT = 8  # only recent segments of the anchor map matter


class TimelineClock(Protocol):
    """What the timeline needs of ``server.clock.MediaClock``."""

    def current_tick(self) -> int:
        """The tick being shown now."""
        ...

    def first_tick_after(self, seconds: float) -> int:
        """The first tick due at least ``seconds`` from now."""
        ...

    def tick_time(self, index: int) -> float:
        """When tick ``index`` is due, on the timeline's ``now`` clock."""
        ...

    def advance(self, seconds: float) -> None:
        """Bring every tick not yet released ``seconds`` (under a tick) sooner."""
        ...


def base_lead_s(fps: int, latency_frames: int, delay_margin_ticks: int = 0, render_margin_ms: int = 20) -> float:
    """The configured least time from a window's completion to its tick: lookahead, margin ticks, render time."""
    period_ms = 1000 / fps
    return ((latency_frames + delay_margin_ticks) * period_ms + render_margin_ms) / 1000


class TickAnchors:
    """Piecewise map from input window index to clock tick: ``tick = index + anchor``."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._anchors: list[int] = []

    def set(self, from_index: int, anchor: int) -> None:
        """From window ``from_index`` on, ``tick = index + anchor`` (later segments are replaced)."""
        while self._starts and self._starts[-1] >= from_index:
            self._starts.pop()
            self._anchors.pop()
        self._starts.append(from_index)
        self._anchors.append(anchor)
        del self._starts[:-ANCHOR_SEGMENTS_KEPT], self._anchors[:-ANCHOR_SEGMENTS_KEPT]

    def tick(self, index: int) -> int | None:
        """The tick of window ``index`` (None: before the first anchor)."""
        i = bisect_right(self._starts, index) - 1
        return None if i < 0 else index + self._anchors[i]

    def clear(self) -> None:
        self._starts.clear()
        self._anchors.clear()


@dataclass(frozen=True)
class VoicePlacement:
    """Where a voice window goes, and what the session must do about it.

    Attributes:
        tick: the clock tick it is shown on.
        caught_up: the input ran too far ahead and was re-anchored sooner: whatever was already mapped at or
            after ``tick`` (windows of a quiet stretch) must be dropped, worker state included.
        action: the input phase's decision on its lead (already applied to the clock and the anchors; a
            ``"drop"`` is owed as ``InputTimeline.quiet_packets_owed``), or None.
        lead_s: its lead (its tick's time less its completion) where a phase watches it, else None.
    """

    tick: int
    caught_up: bool = False
    action: PhaseAction | None = None
    lead_s: float | None = None


class InputTimeline:
    """The map from a session's input windows to clock ticks, kept a steady lead ahead.

    Each input window comes twice, as a voice window (the audio sent back) and an engine window (what the
    animator hears), completed together; the voice window is placed first, and its twin goes to the same tick.

    Args:
        clock: the session's clock (ticks, their times, ``advance``).
        fps: ticks (and windows) per second.
        base_lead_s: the configured least lead (``base_lead_s()``).
        follows_phase: keep the lead near the least and adapt the least (a microphone; not an agent's PCM).
        now: the time on the clock ``clock.tick_time`` answers in.
    """

    def __init__(self, clock: TimelineClock, fps: int, base_lead_s: float, follows_phase: bool,
                 now: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.fps = fps
        self.base_lead_s = base_lead_s
        self.phase = InputPhase(base_lead_s) if follows_phase else None
        self._now = now
        self.anchors = TickAnchors()
        self.voice_windows = 0  # voice windows seen (placed or not)
        self.engine_windows = 0
        self.quiet_packets_owed = 0  # an InputPhase "drop" not yet taken out of the input
        self.muted_until_quiet = False  # a barge-in cut the utterance: its rest is ignored until a pause
        self._quiet_run = 0
        self.last_mapped_tick = -1
        self._last_window_at = -math.inf  # when the last voice window was placed (``now``)

    # ------------------------------------------------------------------ leads
    @property
    def least_lead_s(self) -> float:
        """The least time from a window's completion to its tick now (a microphone's adapts to lateness)."""
        return self.phase.least_lead_s if self.phase is not None else self.base_lead_s

    @property
    def latency_ms(self) -> int:
        """The most time from a window's completion to its tick now: the least lead and one tick more."""
        return round((self.least_lead_s + 1 / self.fps) * 1000)

    # ------------------------------------------------------------------ windows
    def place_voice_window(self, quiet: bool, speaking: bool) -> VoicePlacement | None:
        """The next voice window completed now: its tick (None: ignored, the rest of a cut utterance).

        Args:
            quiet: the window is quiet (``server.vad.level_dbfs`` under the session's threshold).
            speaking: the session's VAD says someone is speaking (no pause to move the lead in).
        """
        index = self.voice_windows
        self.voice_windows += 1
        if self.muted_until_quiet:
            self._quiet_run = self._quiet_run + 1 if quiet else 0
            if self._quiet_run < QUIET_WINDOWS_TO_RESUME:
                return None
            self.muted_until_quiet = False
            self.anchors.clear()
        tick, caught_up = self._map(index, quiet)
        self._last_window_at = self._now()
        action = lead = None
        if self.phase is not None:
            lead = self.clock.tick_time(tick) - self._last_window_at
            action = self.phase.observe(lead, pause=quiet and not speaking)
            if action is not None:
                if action.kind == "drop":
                    self.quiet_packets_owed = action.packets
                if action.seconds:
                    self.clock.advance(action.seconds)
                if action.kind == "delay":
                    self.anchors.set(index + 1, tick - index + 1)
        self.last_mapped_tick = max(self.last_mapped_tick, tick)
        return VoicePlacement(tick, caught_up, action, lead)

    def engine_window_tick(self) -> int | None:
        """The next engine window's tick: its voice twin's, or None where that was ignored or is already past."""
        index = self.engine_windows
        self.engine_windows += 1
        if self.muted_until_quiet:
            return None
        tick = self.anchors.tick(index)
        if tick is None or tick <= self.clock.current_tick():
            return None  # its audio was dropped or is already past: do not animate it
        return tick

    def drop_quiet_packet(self, quiet: bool) -> bool:
        """Whether to drop this short input packet to pay an owed InputPhase "drop" (the windows after it then
        complete one packet later). ``quiet``: the packet is quiet and nobody is speaking. A packet that is not
        ends the pause the drop was decided in: never cut into speech (the next pause decides again)."""
        if not self.quiet_packets_owed:
            return False
        if quiet:
            self.quiet_packets_owed -= 1
            return True
        self.quiet_packets_owed = 0
        return False

    def _map(self, index: int, quiet: bool) -> tuple[int, bool]:
        """The tick for input window ``index``: re-anchored when input starts, when it fell behind
        (a stall), and — at a quiet moment, where skipping a little silence is not heard — when
        it runs further ahead than the pipeline needs, so a stall does not raise the latency
        for good. Also whether it caught up (re-anchored sooner)."""
        tick = self.anchors.tick(index)
        now = self.clock.current_tick()
        ahead = None if tick is None else tick - now
        most = math.ceil(self.latency_ms * self.fps / 1000 - 1e-9)  # the most ticks a window waits
        catch_up = ahead is not None and (ahead > most + CATCH_UP_TICKS
                                          or (quiet and ahead > most + REANCHOR_SLACK_TICKS))
        if ahead is None or ahead <= 0 or catch_up:
            tick = self.clock.first_tick_after(self.least_lead_s)
            if catch_up:
                self.last_mapped_tick = min(self.last_mapped_tick, tick - 1)
            self.anchors.set(index, tick - index)
            if self.phase is not None:
                self.phase.reset()
            self.quiet_packets_owed = 0
        assert tick is not None
        return tick, catch_up

    # ------------------------------------------------------------------ state
    def input_stopped(self) -> bool:
        """No voice window has been placed for ``IDLE_AFTER_TICKS``."""
        return self._now() - self._last_window_at > IDLE_AFTER_TICKS / self.fps

    def frames_ready(self, ticks: Iterable[int]) -> None:
        """Frames for these ticks are ready now: their spare time feeds the least lead's adaptation."""
        if self.phase is None:
            return
        now = self._now()
        for tick in ticks:
            self.phase.frame_ready(self.clock.tick_time(tick) - now)

    def frame_late(self) -> None:
        """A tick's frame was not ready."""
        if self.phase is not None:
            self.phase.frame_late()

    def interrupt(self, mute_until_quiet: bool) -> None:
        """Barge-in: forget every mapping; the next window is anchored afresh (with ``mute_until_quiet``, only
        after a pause: a microphone keeps sending the cut utterance)."""
        self.anchors.clear()
        self.last_mapped_tick = -1
        self.muted_until_quiet = mute_until_quiet
        self._quiet_run = 0
