"""The live WebRTC core against a real server process and real aiortc peers (no mocks)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from emo_stream.audio import load_audio
from emo_stream.face import FaceMesh
from emo_stream.metrics import compute_video_metrics
from emo_stream.metrics.face_measures import mouth_opening
from tests import media
from tests.live_client import (
    RATE,
    LivePeer,
    audio_timeline,
    offer_sdp,
    received_fps,
    run_peers,
    wait_for_voice,
    write_recording,
)
from tests.servers import metric, run_server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server():
    # The default architecture on a machine of 2 cores: two session processes behind the router.
    with run_server({"server": {"processes": 2}}) as running:
        yield running.base


def wait_sessions(base: str, count: int, timeout_s: float) -> float:
    start = time.monotonic()
    while metric(base, "emo_stream_sessions_active") != count:
        assert time.monotonic() - start < timeout_s, f"sessions did not reach {count}"
        time.sleep(0.2)
    return time.monotonic() - start


@pytest.fixture(scope="module")
def speech48() -> np.ndarray:
    return load_audio(media.silence_then_speech("hello"), sample_rate=RATE)


@pytest.fixture(scope="module")
def one_session(server, speech48, tmp_path_factory):
    async def run():
        peer = LivePeer(server, speech48)
        answer = await peer.connect()
        await asyncio.sleep(len(speech48) / RATE + 1.0)
        await peer.close()
        return peer, answer

    peer, answer = asyncio.run(run())
    recording = write_recording(peer.received, tmp_path_factory.mktemp("live") / "recording.mp4")
    return peer, answer, recording


@pytest.fixture(scope="module")
def one_session_metrics(one_session):
    return compute_video_metrics(one_session[2])


def test_the_portrait_comes_back_lip_synced(one_session, one_session_metrics):
    peer, _, _ = one_session
    m = one_session_metrics
    assert received_fps(peer.received) >= 1  # frames flow (their rate is test_frame_rate_and_av_offset's)
    assert m.face_found >= 0.95
    assert m.lipsync_r >= 0.4, m


@pytest.mark.realtime
def test_frame_rate_and_av_offset(one_session, one_session_metrics):
    peer, _, _ = one_session
    assert received_fps(peer.received) >= 24
    assert abs(one_session_metrics.av_offset_ms) <= 40, one_session_metrics


def _returned_voice_lag(one_session, speech48, max_lag_s: float) -> tuple[float, float, float]:
    """(the returned voice's best correlation with the sent one, its lag behind it on the wall clock in
    seconds, the declared delay in seconds), searching lags up to ``max_lag_s``."""
    peer, answer, _ = one_session
    declared_s = answer["latency_ms"] / 1000
    recv_t0, received = audio_timeline(peer.received)
    sent_t0 = peer.mic.sent_at[0]
    hop = RATE // 100  # 10 ms envelopes

    def envelope(x):
        n = len(x) // hop
        return np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(axis=1))

    sent_env, recv_env = envelope(speech48), envelope(received)
    # lag (in hops) of received behind sent, on the shared wall clock
    base = int(round((recv_t0 - sent_t0) * 100))
    scores = {}
    for lag in range(0, int(max_lag_s * 100)):
        start = lag - base  # index in recv_env of sent sample 0 shifted by lag
        if start < 0 or start + len(sent_env) > len(recv_env):
            continue
        scores[lag] = np.corrcoef(sent_env, recv_env[start: start + len(sent_env)])[0, 1]
    best = max(scores, key=scores.get)
    return scores[best], best / 100, declared_s


def test_returned_voice_is_the_sent_voice_no_sooner_than_the_declared_delay(one_session, speech48):
    score, lag_s, declared_s = _returned_voice_lag(one_session, speech48, max_lag_s=3.0)
    assert score >= 0.9, score
    assert lag_s >= declared_s, (lag_s, declared_s)


@pytest.mark.realtime
def test_returned_voice_is_the_sent_voice_at_the_declared_delay(one_session, speech48):
    score, lag_s, declared_s = _returned_voice_lag(one_session, speech48, max_lag_s=0.6)
    assert score >= 0.9, score
    # the server adds exactly its declared delay; both peers' receive buffers add a little more
    assert declared_s <= lag_s <= declared_s + 0.3, (lag_s, declared_s)


@pytest.fixture(scope="module")
def interrupted(server):
    """A session interrupted mid-sentence: (the peer, when the interrupt was asked, when the server had done
    it), on the peer's clock."""
    long_speech = load_audio(media.espeak_wav("story"), sample_rate=RATE)
    samples = np.concatenate([np.zeros(RATE // 2, np.float32), long_speech])

    async def run():
        peer = LivePeer(server, samples)
        await peer.connect()
        await wait_for_voice(peer.received, seconds=1.0)  # (a busy machine may take a while to start)
        await asyncio.sleep(0.5)  # mid-sentence
        t_interrupt = time.monotonic()
        peer.mic.silence_from_now()
        await peer.interrupt()
        t_done = time.monotonic()
        await asyncio.sleep(2.5)
        await peer.close()
        return peer, t_interrupt, t_done

    return asyncio.run(run())


def test_interrupt_silences_voice_and_closes_mouth(interrupted):
    """What an interrupt does, with room for a busy machine: read from well after the server answered it."""
    peer, t_asked, t_done = interrupted
    _assert_silenced(peer, t_asked, t_done + 0.6, t_done + 2.0, t_done + 2.0)


@pytest.mark.realtime
def test_interrupt_silences_voice_and_closes_mouth_within_a_few_ticks(interrupted):
    peer, t_int, _ = interrupted
    transport = 0.25  # both peers' receive buffers and the network on loopback
    _assert_silenced(peer, t_int, t_int + transport + 0.08, t_int + 1.2, t_int + 1.0)


def _assert_silenced(peer: LivePeer, t_int: float, quiet_from: float, quiet_to: float, rest_to: float) -> None:
    """Loud voice and a moving mouth in the second before ``t_int``; from ``quiet_from``, no voice until
    ``quiet_to`` and the mouth at rest until ``rest_to``."""
    before = [a for t, a in peer.received.audio if t_int - 1.0 < t < t_int]
    after = [a for t, a in peer.received.audio if quiet_from < t < quiet_to]
    rms_before = float(np.sqrt(np.mean(np.concatenate(before) ** 2)))
    rms_after = float(np.sqrt(np.mean(np.concatenate(after) ** 2)))
    assert rms_before > 0.02 and rms_after < 0.1 * rms_before, (rms_before, rms_after)

    mesh = FaceMesh(static=True)
    rest = np.median([mouth_opening(mesh.detect(f)[0].points) for t, f in peer.received.video[:10]])
    talking = [mouth_opening(mesh.detect(f)[0].points) for t, f in peer.received.video if t_int - 1.0 < t < t_int]
    closed = [mouth_opening(mesh.detect(f)[0].points) for t, f in peer.received.video
              if quiet_from < t < rest_to]
    assert max(talking) - rest > 0.03
    assert max(abs(m - rest) for m in closed) < 0.25 * (max(talking) - rest), (rest, closed)


def test_datachannel_interrupt(server):
    samples = np.concatenate([np.zeros(RATE // 2, np.float32), load_audio(media.espeak_wav("weather"), sample_rate=RATE)])

    async def run():
        peer = LivePeer(server, samples)
        await peer.connect(data_channel=True)
        for _ in range(50):
            if peer.channel.readyState == "open":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)
        before = metric(server, "emo_stream_interrupts_total")
        peer.mic.silence_from_now()
        peer.channel.send('{"type": "interrupt"}')
        for _ in range(100):  # (a busy machine may take a while: only the count is asserted)
            await asyncio.sleep(0.1)
            after = metric(server, "emo_stream_interrupts_total")
            if after > before:
                break
        await peer.close()
        return before, after

    before, after = asyncio.run(run())
    assert after == before + 1


@pytest.mark.realtime
def test_four_sessions_hold_the_frame_rate(server, speech48):
    peers = asyncio.run(run_peers(server, speech48, 4, 6.0))
    rates = [received_fps(p.received) for p in peers]
    assert min(rates) >= 24, rates


CLIENT = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
import numpy as np
from tests.live_client import LivePeer
async def main():
    peer = LivePeer(sys.argv[1], np.zeros(48000 * 60, np.float32))
    await peer.connect()
    print("connected", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def killed_client(server, speech48):
    """A client killed without a goodbye: (seconds until its session was reaped, asyncio tasks and threads outside the default executor
    before and after, the peer of a session opened afterwards)."""
    wait_sessions(server, 0, 30)
    time.sleep(1.0)
    tasks_before = metric(server, "emo_stream_asyncio_tasks")
    threads_before = metric(server, "emo_stream_threads") - metric(server, "emo_stream_pool_threads")
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, server, str(media.REPO)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "connected"
    wait_sessions(server, 1, 10)
    time.sleep(1.0)
    proc.kill()  # no goodbye, no RTCP BYE
    proc.wait()
    reaped_after = wait_sessions(server, 0, 40)
    time.sleep(1.0)
    tasks_after = metric(server, "emo_stream_asyncio_tasks")
    threads_after = metric(server, "emo_stream_threads") - metric(server, "emo_stream_pool_threads")
    # asyncio's bound for each process's default executor (the router adds its session processes' up)
    processes = max(1.0, metric(server, "emo_stream_session_processes"))
    assert metric(server, "emo_stream_pool_threads") <= processes * min(32, (os.cpu_count() or 1) + 4)

    async def again():
        peer = LivePeer(server, speech48[: RATE * 2])
        await peer.connect()
        await asyncio.sleep(2.0)
        await peer.close()
        return peer

    return reaped_after, (tasks_before, tasks_after), (threads_before, threads_after), asyncio.run(again())


def test_killed_client_is_reaped_without_leaks(killed_client):
    _, (tasks_before, tasks_after), (threads_before, threads_after), peer = killed_client
    assert tasks_after <= tasks_before
    assert threads_after <= threads_before
    assert received_fps(peer.received, skip_s=0.5) >= 1  # and the server serves the next session


@pytest.mark.realtime
def test_killed_client_is_reaped_in_ten_seconds_and_the_next_session_has_its_rate(killed_client):
    reaped_after, _, _, peer = killed_client
    assert reaped_after <= 10.5
    assert received_fps(peer.received, skip_s=0.5) >= 20


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"sdp": "v=0\r\nthis is not sdp", "type": "offer"}, 400, "invalid_sdp"),
        ({"sdp": "hello", "type": "offer"}, 400, "invalid_sdp"),
        ("no-audio", 400, "invalid_sdp"),
        ("unknown-avatar", 404, "avatar_not_found"),
        ({"type": "offer"}, 400, "bad_request"),
        ("not json", 400, "bad_request"),
    ],
)
def test_bad_offers_get_json_errors_and_the_server_keeps_serving(server, body, status, code):
    if body == "no-audio":
        body = {"sdp": offer_sdp(audio=None), "type": "offer"}
    elif body == "unknown-avatar":
        body = {"sdp": offer_sdp(), "type": "offer", "avatar_id": "nobody"}
    if body == "not json":
        r = httpx.post(f"{server}/v1/sessions", content=b"{nope", headers={"content-type": "application/json"})
    else:
        r = httpx.post(f"{server}/v1/sessions", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert httpx.get(f"{server}/healthz").status_code == 200
    assert httpx.delete(f"{server}/v1/sessions/nope").status_code == 404


def test_whip_offer_and_routes(server):
    r = httpx.post(f"{server}/v1/sessions", content=offer_sdp(), headers={"content-type": "application/sdp"},
                   timeout=30)
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/sdp") and r.text.startswith("v=0")
    location = r.headers["location"]
    control = {"X-Control-Token": r.headers["x-control-token"]}
    # Controlling a session needs its control token.
    assert httpx.post(f"{server}{location}/interrupt").status_code == 401
    assert httpx.post(f"{server}{location}/interrupt", headers=control).status_code == 204
    assert httpx.delete(f"{server}{location}", headers={"X-Control-Token": "wrong"}).status_code == 401
    assert httpx.delete(f"{server}{location}", headers=control).status_code == 204
    assert isinstance(httpx.get(f"{server}/v1/ice-servers").json()["ice_servers"], list)
    assert "default" in [a["id"] for a in httpx.get(f"{server}/v1/avatars").json()["avatars"]]
    text = httpx.get(f"{server}/metrics").text
    for name in ("emo_stream_sessions_active", "emo_stream_frames_sent_total", "emo_stream_frames_late_total",
                 "emo_stream_worker_queue_depth", "emo_stream_stage_latency_seconds", "emo_stream_loop_lag_seconds",
                 "emo_stream_mic_packets_skipped_total"):
        assert name in text
