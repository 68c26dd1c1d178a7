"""The live WebRTC core against a real server process and real aiortc peers (no mocks)."""

from __future__ import annotations

import asyncio
import re
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
from tests.live_client import RATE, LivePeer, audio_timeline, received_fps, run_peers, write_recording
from tests.servers import run_server

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def server():
    # The default architecture on a machine of 2 cores: two session processes behind the router.
    with run_server({"server": {"processes": 2}}) as running:
        yield running.base


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


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


def test_frame_rate_and_lip_sync(one_session):
    peer, _, recording = one_session
    assert received_fps(peer.received) >= 24
    m = compute_video_metrics(recording)
    assert m.face_found >= 0.95
    assert m.lipsync_r >= 0.4, m
    assert abs(m.av_offset_ms) <= 40, m


def test_returned_voice_is_the_sent_voice_at_the_declared_delay(one_session, speech48):
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
    for lag in range(0, 60):
        start = lag - base  # index in recv_env of sent sample 0 shifted by lag
        if start < 0 or start + len(sent_env) > len(recv_env):
            continue
        scores[lag] = np.corrcoef(sent_env, recv_env[start: start + len(sent_env)])[0, 1]
    best = max(scores, key=scores.get)
    assert scores[best] >= 0.9, scores[best]
    # the server adds exactly its declared delay; both peers' receive buffers add a little more
    assert declared_s <= best / 100 <= declared_s + 0.3, (best, declared_s)


def test_interrupt_silences_voice_and_closes_mouth(server):
    long_speech = load_audio(media.espeak_wav("story"), sample_rate=RATE)
    samples = np.concatenate([np.zeros(RATE // 2, np.float32), long_speech])

    async def run():
        peer = LivePeer(server, samples)
        await peer.connect()
        await asyncio.sleep(2.5)  # mid-sentence
        t_interrupt = time.monotonic()
        peer.mic.silence_from_now()
        await peer.interrupt()
        await asyncio.sleep(1.5)
        await peer.close()
        return peer, t_interrupt

    peer, t_int = asyncio.run(run())
    transport = 0.25  # both peers' receive buffers and the network on loopback
    before = [a for t, a in peer.received.audio if t_int - 1.0 < t < t_int]
    after = [a for t, a in peer.received.audio if t_int + transport + 0.08 < t < t_int + 1.2]
    rms_before = float(np.sqrt(np.mean(np.concatenate(before) ** 2)))
    rms_after = float(np.sqrt(np.mean(np.concatenate(after) ** 2)))
    assert rms_before > 0.02 and rms_after < 0.1 * rms_before, (rms_before, rms_after)

    mesh = FaceMesh(static=True)
    rest = np.median([mouth_opening(mesh.detect(f)[0].points) for t, f in peer.received.video[:10]])
    talking = [mouth_opening(mesh.detect(f)[0].points) for t, f in peer.received.video if t_int - 1.0 < t < t_int]
    closed = [mouth_opening(mesh.detect(f)[0].points) for t, f in peer.received.video
              if t_int + transport + 0.08 < t < t_int + 1.0]
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
        await asyncio.sleep(0.5)
        after = metric(server, "emo_stream_interrupts_total")
        await peer.close()
        return before, after

    before, after = asyncio.run(run())
    assert after == before + 1


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


def test_killed_client_is_reaped_without_leaks(server, speech48):
    wait_sessions(server, 0, 20)
    time.sleep(1.0)
    tasks_before = metric(server, "emo_stream_asyncio_tasks")
    threads_before = metric(server, "emo_stream_threads")
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, server, str(media.REPO)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "connected"
    wait_sessions(server, 1, 10)
    time.sleep(1.0)
    proc.kill()  # no goodbye, no RTCP BYE
    proc.wait()
    reaped_after = wait_sessions(server, 0, 12)
    assert reaped_after <= 10.5
    time.sleep(1.0)
    assert metric(server, "emo_stream_asyncio_tasks") <= tasks_before
    assert metric(server, "emo_stream_threads") <= threads_before

    async def again():
        peer = LivePeer(server, speech48[: RATE * 2])
        await peer.connect()
        await asyncio.sleep(2.0)
        await peer.close()
        return peer

    assert received_fps(asyncio.run(again()).received, skip_s=0.5) >= 20


def _offer_sdp(with_audio: bool = True) -> str:
    from aiortc import RTCPeerConnection

    async def make():
        pc = RTCPeerConnection()
        if with_audio:
            pc.addTransceiver("audio", direction="sendrecv")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


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
        body = {"sdp": _offer_sdp(with_audio=False), "type": "offer"}
    elif body == "unknown-avatar":
        body = {"sdp": _offer_sdp(), "type": "offer", "avatar_id": "nobody"}
    if body == "not json":
        r = httpx.post(f"{server}/v1/sessions", content=b"{nope", headers={"content-type": "application/json"})
    else:
        r = httpx.post(f"{server}/v1/sessions", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert httpx.get(f"{server}/healthz").status_code == 200
    assert httpx.delete(f"{server}/v1/sessions/nope").status_code == 404


def test_whip_offer_and_routes(server):
    r = httpx.post(f"{server}/v1/sessions", content=_offer_sdp(), headers={"content-type": "application/sdp"},
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
