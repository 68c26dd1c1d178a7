"""A live session's timing on its own: which tick each input window goes to, and when its frame is wanted.

A real ``Session`` (its aiortc peer connection is made but never connected) with a real MediaClock and
InferenceWorker; the animator is a recording fake with one frame of lookahead, like the lite one.
"""

from __future__ import annotations

import asyncio
import time

import av
import numpy as np
import pytest

from emo_stream.types import Avatar, FaceLandmarks, Frame
from server.sessions import Session, SessionOptions
from server.telemetry import Telemetry
from server.worker import InferenceWorker

FPS = 25
PERIOD_S = 1 / FPS


class LookaheadAnimator:
    """One frame of lookahead: window ``n`` completes the frame of window ``n - 1``. Records when each
    window was fed and the deadline its job carried."""

    latency_frames = 1

    def __init__(self) -> None:
        self.fed: list[int] = []

    def prepare(self, avatar, seed=0):
        return {"last": None}

    def feed_batch(self, items):
        out = []
        for window, state in items:
            self.fed.append(window.start_pts)
            previous, state["last"] = state["last"], window.start_pts
            out.append([] if previous is None else [Frame(rgb=np.zeros((8, 8, 3), np.uint8), pts=previous)])
        return out

    def idle(self, state, pts):
        return Frame(rgb=np.zeros((8, 8, 3), np.uint8), pts=pts)

    def reset(self, state):
        state["last"] = None


def _avatar() -> Avatar:
    points = np.zeros((478, 3), np.float32)
    return Avatar(image=np.zeros((8, 8, 3), np.uint8), landmarks=FaceLandmarks(points=points, image_size=(8, 8)),
                  cache_key="timing", source_size=(8, 8))


def _packet(level: float) -> av.AudioFrame:
    """20 ms of 48 kHz stereo s16, as aiortc's opus decoder hands it over."""
    pcm = np.full((1, 2 * 960), int(level * 32767), np.int16)
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
    frame.sample_rate = 48_000
    return frame


@pytest.mark.parametrize("render_margin_ms", [20, 50])
def test_each_window_goes_to_the_first_tick_its_frame_can_make(render_margin_ms):
    """Whatever the phase of the microphone's packets against the clock, a window is shown between the
    least lead (lookahead + render margin) and one tick more after it completes, and never sooner; the
    declared latency is that upper bound; the 16 kHz window reaches the worker on the same packet."""

    async def main():
        loop = asyncio.get_running_loop()
        animator = LookaheadAnimator()
        worker = InferenceWorker(animator, loop)
        session = Session(_avatar(), SessionOptions(size=8, fps=FPS), worker, Telemetry(), [],
                          latency_frames=animator.latency_frames, render_margin_ms=render_margin_ms)
        try:
            await session.start()
            await asyncio.sleep(0.1)  # prepared on the worker
            leads = []
            # Packets at 7 phases across a tick, one utterance each (a pause re-anchors the next).
            for phase in range(7):
                start = session.clock.tick_time(session.clock.current_tick() + 3) + phase * PERIOD_S / 7
                for n in range(6):
                    await asyncio.sleep(max(0.0, start + n * 0.02 - time.perf_counter()))  # a steady 20 ms
                    fed_before = len(animator.fed)
                    session.push_audio_frame(_packet(0.3))
                    done = time.perf_counter()
                    if n % 2 == 1:  # a window completes
                        index = session._index48 - 1
                        tick = session._anchors.tick(index)
                        leads.append(session.clock.tick_time(tick) - done)
                        await asyncio.sleep(0.005)
                        assert len(animator.fed) == fed_before + 1, "the engine window waited for another packet"
                session._anchors.clear()  # as after a pause: the next utterance is anchored afresh
            return session, np.array(leads)
        finally:
            await session.close(reason="test")
            worker.stop()

    session, leads = asyncio.run(main())
    least = session.min_lead_s
    assert least == pytest.approx((PERIOD_S * 1000 + render_margin_ms) / 1000)
    assert session.latency_ms == round((least + PERIOD_S) * 1000)
    tolerance = 0.004  # the loop's own timing between a packet and the measurement
    assert leads.min() >= least - tolerance, leads
    assert leads.max() <= least + PERIOD_S + tolerance, leads
    # The phases spread across the tick, so the leads do too (one tick's worth, not a fixed value).
    assert leads.max() - leads.min() >= 0.5 * PERIOD_S, leads
