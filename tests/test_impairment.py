"""The user-space UDP impairment relay (tests/impairment.py), and live sessions through it."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest

from emo_stream.audio import load_audio
from tests import media
from tests.impairment import ImpairedPath, Impairment, UdpRelay, first_host_candidate
from tests.live_client import RATE, LivePeer, received_fps
from tests.servers import metric, run_server

pytestmark = pytest.mark.timeout(240)


class FakeLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.scheduled: list[tuple[float, bytes]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback, data: bytes) -> None:
        self.scheduled.append((when, data))


def run_path(impairment: Impairment, count: int, gap_s: float = 0.02, size: int = 100, seed: int = 1):
    """Datagrams i = 0..count-1 submitted every ``gap_s``: (kept indices in departure order, departures by index)."""
    loop, sent = FakeLoop(), []
    path = ImpairedPath(impairment, sent.append, random.Random(seed))
    for i in range(count):
        loop.now = i * gap_s
        path.submit(i.to_bytes(4, "big") + b"\0" * (size - 4), loop)
    departures = {int.from_bytes(d[:4], "big"): t for t, d in loop.scheduled}
    departures.update({int.from_bytes(d[:4], "big"): i * gap_s for i, d in enumerate(sent)})
    return sorted(departures, key=lambda i: (departures[i], i)), departures, path


def test_independent_loss_drops_its_share():
    kept, _, path = run_path(Impairment(loss=0.05), 20_000)
    assert path.stats.dropped / 20_000 == pytest.approx(0.05, abs=0.006)
    assert len(kept) == 20_000 - path.stats.dropped


def test_burst_loss_keeps_the_share_and_drops_in_runs():
    kept, _, path = run_path(Impairment(loss=0.05, burst=4), 40_000)
    lost = sorted(set(range(40_000)) - set(kept))
    runs = 1 + sum(1 for a, b in zip(lost[:-1], lost[1:], strict=True) if b != a + 1)
    assert len(lost) / 40_000 == pytest.approx(0.05, abs=0.01)
    assert len(lost) / runs == pytest.approx(4, rel=0.2)


def test_delay_and_jitter_delay_every_datagram_and_reorder_some():
    kept, departures, _ = run_path(Impairment(delay_ms=30, jitter_ms=10), 2_000)
    delays = np.array([departures[i] - i * 0.02 for i in range(2_000)])
    assert delays.min() >= 0.030 - 1e-9 and 0.032 < delays.mean() < 0.036  # 30 + E[max(0, N(0, 10))] = 34 ms
    assert kept != sorted(kept)  # 20 ms apart with 10 ms of jitter: some overtake
    in_order, _, _ = run_path(Impairment(delay_ms=30, jitter_ms=10, reorder=False), 2_000)
    assert in_order == sorted(in_order)


def test_a_bandwidth_cap_serialises_datagrams():
    _, departures, _ = run_path(Impairment(rate_kbit=1000), 100, gap_s=0.0, size=1250)  # 100 x 10 kbit at once
    assert departures[99] == pytest.approx(1.0)


def test_impairments_parse_from_the_command_line_form():
    assert Impairment.parse("loss=0.05,delay_ms=30,jitter_ms=10") == Impairment(loss=0.05, delay_ms=30, jitter_ms=10)
    assert Impairment.parse("") == Impairment()
    with pytest.raises(ValueError):
        Impairment.parse("lose=0.1")
    with pytest.raises(ValueError):
        Impairment(loss=1.5)


# ------------------------------------------------------------------ live sessions through the relay


@pytest.fixture(scope="module")
def server():
    with run_server() as running:
        yield running


async def _session_through(base: str, impairment: Impairment, samples: np.ndarray, seconds: float):
    relay = UdpRelay(to_server=impairment, to_client=impairment, seed=3)
    peer = LivePeer(base, samples, relay=relay)
    await relay.start("127.0.0.1")
    await peer.connect()
    await asyncio.sleep(seconds)
    await peer.close()
    relay.close()
    return peer, relay


def test_a_session_runs_through_a_clean_relay_and_only_through_it(server):
    speech = load_audio(media.silence_then_speech("hello"), sample_rate=RATE)
    peer, relay = asyncio.run(_session_through(server.base, Impairment(), speech, 4.0))
    assert received_fps(peer.received) >= 10
    assert relay.up.stats.sent > 100 and relay.down.stats.sent > 100  # media crossed it both ways
    assert relay.client == first_host_candidate(peer.pc.localDescription.sdp)


def test_under_five_percent_loss_only_lost_microphone_packets_are_given_up_and_filled_in(server):
    skipped_before = metric(server.base, "emo_stream_mic_packets_skipped_total")
    concealed_before = metric(server.base, "emo_stream_mic_concealed_seconds_total")
    speech = load_audio(media.silence_then_speech("hello"), sample_rate=RATE)
    peer, relay = asyncio.run(_session_through(
        server.base, Impairment(loss=0.05, delay_ms=30, jitter_ms=10), np.tile(speech, 3), 8.0))
    skipped = metric(server.base, "emo_stream_mic_packets_skipped_total") - skipped_before
    concealed = metric(server.base, "emo_stream_mic_concealed_seconds_total") - concealed_before
    assert received_fps(peer.received) >= 10  # the session runs through loss and jitter
    assert relay.up.stats.dropped > 5
    # Every datagram the relay dropped towards the server was at most one microphone packet: giving up good
    # packets with each gap (83 for 39 lost, before) would exceed it.
    assert 0 < skipped <= relay.up.stats.dropped
    # ... and each one given up was filled in (20 ms a packet), so the input kept its time
    assert concealed == pytest.approx(skipped * 0.02, abs=0.041)
