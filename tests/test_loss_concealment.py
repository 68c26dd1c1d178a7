"""A microphone's lost packets are filled in, so the session's input keeps its time (server.loss_concealment)."""

from __future__ import annotations

import asyncio
import fractions
import time

import av
import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from server.loss_concealment import MAX_GAP_S, REPEAT_GAIN, LossConcealer
from server.sessions import Session, SessionOptions
from server.telemetry import Telemetry
from server.vad import EnergyVAD
from server.worker import InferenceWorker
from tests.test_session_timing import FPS, LookaheadAnimator, _avatar

PACKET = 960  # 20 ms at 48 kHz, as aiortc's opus decoder hands it over


def _packet(index: int, level: float = 0.3) -> av.AudioFrame:
    """Packet ``index`` of a 48 kHz stereo s16 stream: a ramp, so a copy is told from the original; media time
    ``index`` × 20 ms."""
    ramp = np.linspace(0.2, 1.0, PACKET) * level * 32767
    pcm = np.repeat(ramp.astype(np.int16), 2)[None, :]
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
    frame.sample_rate = 48_000
    frame.pts, frame.time_base = index * PACKET, fractions.Fraction(1, 48_000)
    return frame


def test_a_lost_packet_is_filled_with_the_last_one_fading():
    concealer = LossConcealer()
    assert concealer.before(_packet(0)) == [] and concealer.before(_packet(1)) == []
    fillers = concealer.before(_packet(3))  # packet 2 lost
    assert len(fillers) == 1
    filler = fillers[0]
    assert (filler.samples, filler.sample_rate, filler.format.name, filler.layout.name) == (PACKET, 48_000, "s16",
                                                                                            "stereo")
    last = _packet(1).to_ndarray().astype(float)
    np.testing.assert_allclose(filler.to_ndarray(), last * REPEAT_GAIN, atol=1)
    assert concealer.stats.gaps == 1 and concealer.stats.seconds == pytest.approx(0.02)


def test_a_run_of_losses_fades_to_silence_and_a_long_gap_is_left_alone():
    concealer = LossConcealer()
    concealer.before(_packet(0))
    (filler,) = concealer.before(_packet(6))  # five lost: 100 ms, under the longest gap filled
    body = np.abs(filler.to_ndarray().astype(float)).reshape(5, -1).max(axis=1)
    assert filler.samples == 5 * PACKET
    assert body[0] > body[1] > body[2] > 0 and body[3] == body[4] == 0  # three fading repeats, then silence
    most = round(MAX_GAP_S / 0.02)  # the longest gap filled, in packets
    after = 6 + most + 1  # ``most`` lost after packet 6: filled
    (filler,) = concealer.before(_packet(after))
    assert filler.samples == most * PACKET
    resumed = after + most + 2  # one packet more lost: a sender that paused, left alone
    assert concealer.before(_packet(resumed)) == []
    assert concealer.stats.left == 1 and concealer.stats.gaps == 2
    assert concealer.before(_packet(resumed + 1)) == []  # and it follows on from there
    assert concealer.take_filled_s() == pytest.approx((5 + most) * 0.02) and concealer.take_filled_s() == 0


def test_frames_without_a_media_time_or_going_back_get_nothing():
    concealer = LossConcealer()
    concealer.before(_packet(10))
    assert concealer.before(_packet(5)) == []  # a restarted sender
    frame = _packet(8)
    frame.pts = None
    assert concealer.before(frame) == [] and concealer.before(_packet(9)) == []


class _LossyMicrophone(MediaStreamTrack):
    """A microphone paced in real time (20 ms packets) whose every ``lose_every``-th packet the network lost."""

    kind = "audio"

    def __init__(self, packets: int, lose_every: int, start: float) -> None:
        super().__init__()
        self.packets, self.lose_every, self.start = packets, lose_every, start
        self._next = 0

    async def recv(self) -> av.AudioFrame:
        while self._next < self.packets and self._next % self.lose_every == self.lose_every - 1:
            self._next += 1  # lost on the way: the receiver never sees it
        if self._next >= self.packets:
            raise MediaStreamError
        index, self._next = self._next, self._next + 1
        await asyncio.sleep(max(0.0, self.start + (index + 1) * 0.02 - time.perf_counter()))
        return _packet(index)


@pytest.mark.realtime  # paced by real sleeps
def test_the_windows_after_lost_packets_keep_their_ticks():
    """Three seconds of voice with one packet in ten lost: every window still completes, on the tick it was
    mapped to when the input started, with the lead the first windows had (without the filler each loss made
    every later window complete a packet later, until they ran past their ticks and were re-anchored)."""

    async def main():
        loop = asyncio.get_running_loop()
        animator = LookaheadAnimator()
        worker = InferenceWorker(animator, loop)
        session = Session(_avatar(), SessionOptions(size=8, fps=FPS), worker, Telemetry(), [],
                          latency_frames=animator.latency_frames, render_margin_ms=20, vad_factory=EnergyVAD)
        session.timeline.phase.max_extra_s = 0.0  # the least lead stays the configured one
        try:
            await session.start()
            await asyncio.sleep(0.1)
            packets = 151  # the last one arrives: every loss has a packet after it
            mic = _LossyMicrophone(packets, lose_every=10, start=time.perf_counter())
            leads = []
            windows = session.timeline.voice_windows
            consume = asyncio.ensure_future(session._consume_mic(mic))
            while not consume.done():
                await asyncio.sleep(0.005)
                while session.timeline.voice_windows > windows:
                    tick = session.timeline.anchors.tick(windows)
                    leads.append((windows, tick, session.clock.tick_time(tick) - time.perf_counter()))
                    windows += 1
            return session, leads, packets
        finally:
            await session.close(reason="test")
            worker.stop()

    session, leads, packets = asyncio.run(main())
    assert len(leads) == packets // 2  # every window completed, the lost packets' ones too
    assert session.concealer.stats.gaps == packets // 10
    first_index, first_tick, _ = leads[0]
    assert all(tick == first_tick + index - first_index for index, tick, _ in leads)  # never re-anchored
    early = np.median([lead for _, _, lead in leads[:10]])
    late = np.median([lead for _, _, lead in leads[-10:]])
    assert abs(late - early) < 0.015, f"the lead moved from {early * 1000:.0f} to {late * 1000:.0f} ms"
