"""Production server: agent PCM over WebSocket, events, avatar uploads, admission control,
auth and TLS, and a bounded fuzz of the HTTP API. Real server processes, real aiortc peers."""

from __future__ import annotations

import asyncio
import io
import json
import random
import time

import httpx
import numpy as np
import pytest
import websockets
from PIL import Image

from emo_stream.audio import load_audio
from emo_stream.config import usable_cores
from tests import bad_inputs, media
from tests.live_client import (
    RATE,
    LivePeer,
    audio_by_media_time,
    audio_timeline,
    received_fps,
    recent_voice_rms,
    wait_for_voice,
    websocket_close_code,
)
from tests.servers import run_server

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    with run_server({"server": {"data_dir": str(data), "max_sessions": 4}}) as running:
        running.data_dir = data
        yield running


def ws_url(base: str, path: str) -> str:
    return base.replace("http", "ws", 1) + path


def _pcm_s16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.fixture(scope="module")
def agent_utterance(server):
    """An agent's session: idle, then ~4 s of TTS pushed at once. (the peer, when the burst was sent, the
    events, the TTS at 24 kHz)."""
    tts = load_audio(media.espeak_wav("weather"), sample_rate=24_000)  # ~4 s of "TTS" at 24 kHz

    async def run():
        peer = LivePeer(server.base, samples=None, options={"audio_source": "pcm", "name": "agent-1"})
        answer = await peer.connect()
        events = []
        async with websockets.connect(ws_url(server.base, f"/v1/sessions/agent-1/audio?control_token="
                                                          f"{answer['control_token']}")) as audio_ws, \
                websockets.connect(ws_url(server.base, f"/v1/sessions/{answer['session_id']}/events?control_token="
                                                       f"{answer['control_token']}")) as events_ws:

            async def collect():
                async for message in events_ws:
                    events.append((time.monotonic(), json.loads(message)))

            collector = asyncio.create_task(collect())
            await asyncio.sleep(1.5)  # idle before the agent talks
            await audio_ws.send(json.dumps({"type": "start", "sample_rate": 24_000, "channels": 1}))
            assert json.loads(await audio_ws.recv())["for"] == "start"
            sent_at = time.monotonic()
            await audio_ws.send(_pcm_s16(tts))  # all of it at once: a burst
            await audio_ws.send(json.dumps({"type": "flush"}))
            assert json.loads(await audio_ws.recv())["for"] == "flush"
            await asyncio.sleep(len(tts) / 24_000 + 2.5)
            for _ in range(200):  # a busy machine may play it later: until the voice has ended, and a second
                if recent_voice_rms(peer.received, 1.0) < 0.01:
                    break
                await asyncio.sleep(0.1)
            collector.cancel()
        await peer.close()
        return peer, sent_at, events

    peer, sent_at, events = asyncio.run(run())
    return peer, sent_at, events, tts


def _voice_span(peer: LivePeer, tts: np.ndarray) -> tuple[float, float, float]:
    """(when the returned voice began, when it ended, on the peer's clock; the TTS's own duration)."""
    t0, voice = audio_timeline(peer.received)
    loud = np.flatnonzero(np.abs(voice) > 0.05)
    source_loud = np.flatnonzero(np.abs(tts) > 0.05)
    return t0 + loud[0] / RATE, t0 + loud[-1] / RATE, (source_loud[-1] - source_loud[0]) / 24_000


def test_agent_pcm_plays_over_its_duration_and_idles_between_utterances(agent_utterance):
    peer, sent_at, events, tts = agent_utterance
    first, last, duration = _voice_span(peer, tts)
    # Played out, not dumped: the voice spans most of its own duration, not the burst's few ms.
    assert last - first >= 0.5 * duration, (last - first, duration)
    assert first > sent_at
    # Idle motion before the utterance: the picture keeps changing.
    idle = [f.astype(np.int16) for t, f in peer.received.video if t < sent_at][-25:]
    assert max(np.abs(f - idle[0]).mean() for f in idle[1:]) > 0.2
    states = [e["state"] for _, e in events if e["type"] == "state"]
    assert states[0] == "idle" and "speaking" in states and states[-1] == "idle", states
    stats = [e for _, e in events if e["type"] == "stats"]
    assert len(stats) >= 3 and all("fps" in s and "late_frames" in s for s in stats)


@pytest.mark.realtime
def test_agent_pcm_plays_at_real_time(agent_utterance):
    peer, sent_at, _, tts = agent_utterance
    assert received_fps(peer.received) >= 24
    first, last, duration = _voice_span(peer, tts)
    # Played at real time: the voice spans about its own duration, and starts within a few ticks of the burst.
    assert duration - 0.3 <= last - first <= duration + 0.3, (last - first, duration)
    assert first - sent_at < 0.6


@pytest.fixture(scope="module")
def pcm_interrupted(server):
    """An agent's long utterance interrupted over the events socket: (the peer, when the interrupt was sent,
    when its ack came)."""
    tts = load_audio(media.espeak_wav("story"), sample_rate=16_000)

    async def run():
        peer = LivePeer(server.base, samples=None, options={"audio_source": "pcm"})
        answer = await peer.connect()
        token = answer["control_token"]
        async with websockets.connect(ws_url(server.base, f"/v1/sessions/{answer['session_id']}/audio"
                                                          f"?control_token={token}")) as audio_ws:
            await audio_ws.send(json.dumps({"type": "start", "sample_rate": 16_000, "channels": 1}))
            await audio_ws.recv()
            await audio_ws.send(_pcm_s16(tts))
            await wait_for_voice(peer.received, seconds=1.0)  # (a busy machine may take a while to start)
            await asyncio.sleep(0.5)
            async with websockets.connect(ws_url(server.base, f"/v1/sessions/{answer['session_id']}/events"
                                                              f"?control_token={token}")) as events_ws:
                await events_ws.send(json.dumps({"type": "interrupt"}))
                t_int = time.monotonic()
                while True:
                    event = json.loads(await events_ws.recv())
                    if event["type"] == "ack":
                        break
                t_ack = time.monotonic()
            await asyncio.sleep(2.5)
        await peer.close()
        return peer, t_int, t_ack

    return asyncio.run(run())


def _rms_around(peer: LivePeer, t_int: float, quiet_from: float, quiet_to: float) -> tuple[float, float]:
    """The returned voice's RMS in the second before ``t_int`` and between ``quiet_from`` and ``quiet_to``."""
    before = [a for t, a in peer.received.audio if t_int - 1.0 < t < t_int]
    after = [a for t, a in peer.received.audio if quiet_from < t < quiet_to]
    return float(np.sqrt(np.mean(np.concatenate(before) ** 2))), float(np.sqrt(np.mean(np.concatenate(after) ** 2)))


def test_events_take_interrupt_and_pcm_interrupt_drops_the_queue(pcm_interrupted):
    """(Read from well after the ack, with room for a busy machine; the story would still be playing.)"""
    peer, t_int, t_ack = pcm_interrupted
    before, after = _rms_around(peer, t_int, t_ack + 0.8, t_ack + 2.3)
    assert before > 0.02 and after < 0.005, (before, after)


@pytest.mark.realtime
def test_pcm_interrupt_silences_the_voice_within_a_few_ticks(pcm_interrupted):
    peer, t_int, _ = pcm_interrupted
    before, after = _rms_around(peer, t_int, t_int + 0.35, t_int + 1.4)
    assert before > 0.02 and after < 0.005, (before, after)


def test_mic_session_refuses_pcm_and_unknown_commands(server):
    async def run():
        peer = LivePeer(server.base, samples=np.zeros(RATE * 5, np.float32))
        answer = await peer.connect()
        url = ws_url(server.base, f"/v1/sessions/{answer['session_id']}/audio?control_token={answer['control_token']}")
        async with websockets.connect(url) as ws:
            error = json.loads(await ws.recv())
        bad_token = ws_url(server.base, f"/v1/sessions/{answer['session_id']}/events?control_token=nope")
        code = await websocket_close_code(bad_token)
        await peer.close()
        return error, code

    error, code = asyncio.run(run())
    assert error["type"] == "error" and error["code"] == "bad_request"
    assert code == 4401


def _png(rgb) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG")
    return buf.getvalue()


def test_avatar_upload_list_thumbnail_and_errors(server, tmp_path):
    photo = _png(media.grace_hopper())
    r = httpx.post(f"{server.base}/v1/avatars", files={"file": ("hopper.png", photo, "image/png")}, timeout=60)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["faces"] == 1 and body["width"] == 512 and len(body["id"]) >= 32
    again = httpx.post(f"{server.base}/v1/avatars", files={"file": ("same.png", photo, "image/png")}, timeout=60)
    assert again.json()["id"] == body["id"]  # cached by content hash
    listing = httpx.get(f"{server.base}/v1/avatars").json()["avatars"]
    entry = next(a for a in listing if a["id"] == body["id"])
    thumb = httpx.get(f"{server.base}{entry['thumbnail_url']}")
    assert thumb.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(thumb.content)).size == (160, 160)
    for builder, status, code in [(bad_inputs.text_file, 415, "not_an_image"),
                                  (bad_inputs.no_face_png, 422, "no_face_found"),
                                  (bad_inputs.png_bomb, 413, "image_too_large")]:
        path = builder(tmp_path)
        r = httpx.post(f"{server.base}/v1/avatars", files={"file": (path.name, path.read_bytes())}, timeout=60)
        assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    assert httpx.post(f"{server.base}/v1/avatars", data={"x": "1"}).status_code == 400
    # A session with the upload.
    async def run():
        peer = LivePeer(server.base, np.zeros(RATE * 3, np.float32), avatar_id=body["id"])
        await peer.connect()
        await asyncio.sleep(2.0)
        await peer.close()
        return peer

    assert received_fps(asyncio.run(run()).received, skip_s=0.5) >= 1  # the uploaded portrait is served
    assert (server.data_dir / "avatars" / body["id"] / "meta.json").is_file()


def test_uploads_survive_a_restart(tmp_path):
    data = tmp_path / "data"
    with run_server({"server": {"data_dir": str(data)}}) as first:
        r = httpx.post(f"{first.base}/v1/avatars", files={"file": ("a.png", _png(media.astronaut()[:, ::-1].copy()))},
                       timeout=60)
        avatar_id = r.json()["id"]
    with run_server({"server": {"data_dir": str(data)}}) as second:
        ids = [a["id"] for a in httpx.get(f"{second.base}/v1/avatars").json()["avatars"]]
        assert avatar_id in ids


@pytest.fixture(scope="module")
def refused_beside_a_running_session():
    """A server for one session: (the running session's peer, the response to a second offer)."""
    with run_server({"server": {"max_sessions": 1}}) as srv:
        async def run():
            first = LivePeer(srv.base, np.zeros(RATE * 8, np.float32))
            await first.connect()
            await asyncio.sleep(1.0)
            second = LivePeer(srv.base, np.zeros(RATE * 2, np.float32))
            with pytest.raises(httpx.HTTPStatusError) as info:
                await second.connect()
            await second.pc.close()
            await asyncio.sleep(3.0)
            await first.close()
            return first, info.value.response

        return asyncio.run(run())


def test_admission_control_refuses_with_503_and_running_sessions_keep_running(refused_beside_a_running_session):
    first, refused = refused_beside_a_running_session
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
    assert refused.json()["error"]["code"] == "overloaded"
    assert received_fps(first.received) >= 1


@pytest.mark.realtime
def test_a_refused_offer_leaves_the_running_session_its_rate(refused_beside_a_running_session):
    first, _ = refused_beside_a_running_session
    assert received_fps(first.received) >= 24


def test_a_burst_of_offers_is_admitted_only_as_far_as_the_cost_estimate_fits():
    """Three offers at once to a fresh server that counts a session at 0.4 of its cores until it has measured
    one: two get in and the third gets a 503, since the first two count while they are still starting."""
    estimate = 0.4 * usable_cores()
    with run_server({"server": {"processes": 1, "session_cost_cores": estimate}}) as srv:
        async def run():
            peers = [LivePeer(srv.base, np.zeros(RATE * 2, np.float32)) for _ in range(3)]
            outcomes = await asyncio.gather(*(peer.connect() for peer in peers), return_exceptions=True)
            for peer in peers:
                await peer.close()
            return outcomes

        outcomes = asyncio.run(run())
    refused = [o for o in outcomes if isinstance(o, httpx.HTTPStatusError)]
    assert sum(isinstance(o, dict) for o in outcomes) == 2 and len(refused) == 1, outcomes
    assert refused[0].response.status_code == 503
    assert f"about {estimate:.2f} each" in refused[0].response.json()["error"]["message"]


def test_token_auth_and_tls(tmp_path):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    with run_server(args=["--token", "s3cret", "--tls-cert", str(cert_path), "--tls-key", str(key_path)],
                    scheme="https", verify=False) as srv:
        get = lambda path, **kw: httpx.get(f"{srv.base}{path}", verify=False, **kw)  # noqa: E731
        assert get("/healthz").status_code == 200
        assert get("/v1/avatars").status_code == 401
        assert get("/v1/avatars").json()["error"]["code"] == "unauthorized"
        assert get("/v1/avatars", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert get("/v1/avatars", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert get("/v1/avatars?token=s3cret").status_code == 200


def test_non_loopback_bind_needs_a_token():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
                            capture_output=True, text=True, cwd=media.REPO, timeout=60,
                            env={**__import__("os").environ, "EMO_STREAM_TOKEN": ""})
    assert result.returncode == 2 and result.stderr.strip().startswith("error: binding 0.0.0.0")


def test_api_fuzz_never_500(server):
    """Random bodies, headers and paths: always a JSON 4xx, never a 500, and the server stays up."""
    rng = random.Random(1234)
    atoms = ["", "{", "}", "[]", "null", '"x"', "0", "-1", "1e999", "\x00", "v=0", "m=audio", "\ud800", "é" * 50]
    paths = ["/v1/sessions", "/v1/avatars", "/v1/sessions/x/interrupt", "/v1/sessions/x", "/v1/ice-servers",
             "/v1/avatars/x/thumbnail", "/v1/sessions/%00", "/v1/" + "a" * 300]
    statuses = []
    with httpx.Client(base_url=server.base, timeout=30) as client:
        for _ in range(150):
            path = rng.choice(paths)
            method = rng.choice(["GET", "POST", "DELETE", "PUT"])
            kind = rng.random()
            if kind < 0.3:
                content = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 6))).encode("utf-8", "replace")
                headers = {"content-type": rng.choice(["application/json", "application/sdp", "text/plain"])}
                r = client.request(method, path, content=content, headers=headers)
            elif kind < 0.6:
                body = {rng.choice(["sdp", "type", "avatar_id", "options", "avatar"]): rng.choice(
                    [None, 1, "offer", [], {}, {"size": "big"}, "v=0\r\nm=audio 9 x"]) for _ in range(3)}
                r = client.request(method, path, json=body)
            else:
                blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2000)))
                r = client.request(method, path, files={rng.choice(["file", "other"]): ("f.png", blob)})
            statuses.append(r.status_code)
            assert r.status_code < 500, (method, path, r.status_code, r.text[:200])
            if r.status_code >= 400:
                assert "error" in r.json(), r.text[:200]
        assert client.get("/healthz").status_code == 200
    assert any(400 <= s < 500 for s in statuses)


@pytest.mark.parametrize("background", ["green", "#ff00ff", "transparent"])
def test_session_backgrounds(server, background):
    async def run():
        peer = LivePeer(server.base, np.zeros(RATE * 3, np.float32), options={"background": background})
        await peer.connect()
        await asyncio.sleep(2.0)
        await peer.close()
        return peer

    frame = asyncio.run(run()).received.video[-1][1].astype(int)
    h, w = frame.shape[:2]
    if background == "transparent":
        assert w == 2 * h  # picture | matte
        matte = frame[:, h:].mean(axis=2)
        assert matte[5, 5] < 30 and matte[h // 2, h // 2] > 225  # background corner clear, face opaque
    else:
        colour = (0, 177, 64) if background == "green" else (255, 0, 255)
        assert w == h and np.abs(frame[4, 4] - colour).max() < 30, frame[4, 4]
    assert httpx.post(f"{server.base}/v1/sessions", json={"sdp": "v=0\r\nm=audio", "type": "offer",
                                                          "options": {"background": "plaid"}}).status_code == 400


def test_schemathesis_finds_no_server_errors(server):
    """schemathesis over the OpenAPI schema, bounded: no 5xx, no crash, the server keeps serving."""
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [str(exe), "run", f"{server.base}/openapi.json", "--checks", "not_a_server_error", "--max-examples", "25",
         "--request-timeout", "20", "--generation-deterministic", "--no-color"],
        capture_output=True, text=True, timeout=150, cwd=media.REPO,
        env={**__import__("os").environ, "SCHEMATHESIS_HOOKS": ""})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert httpx.get(f"{server.base}/healthz").status_code == 200


def test_agent_wav_in_bursts_returns_the_same_voice_lip_synced(server, tmp_path):
    """8 s of espeak speech pushed in bursts: the returned voice equals it, at real time, lip-synced."""
    from emo_stream.metrics import compute_video_metrics
    from tests.live_client import write_recording

    parts = [media.espeak_wav("hello"), media.espeak_wav("weather", voice="en-gb")]
    speech = np.concatenate([load_audio(p, sample_rate=22_050) for p in parts])[: 22_050 * 8]

    async def run():
        peer = LivePeer(server.base, samples=None, options={"audio_source": "pcm"})
        answer = await peer.connect()
        url = ws_url(server.base, f"/v1/sessions/{answer['session_id']}/audio?control_token={answer['control_token']}")
        async with websockets.connect(url) as ws:
            await asyncio.sleep(1.0)
            await ws.send(json.dumps({"type": "start", "sample_rate": 22_050, "channels": 1}))
            await ws.recv()
            burst = 22_050 * 2  # two seconds at a time, as fast as the socket takes them
            for i in range(0, len(speech), burst):
                await ws.send(_pcm_s16(speech[i:i + burst]))
                await asyncio.sleep(0.5)
            await ws.send(json.dumps({"type": "flush"}))
            await ws.recv()
            await asyncio.sleep(len(speech) / 22_050 - 1.5 + 1.5)
            for _ in range(200):  # a busy machine may play it later: until the voice has ended
                if recent_voice_rms(peer.received, 1.0) < 0.01:
                    break
                await asyncio.sleep(0.1)
        await peer.close()
        return peer

    peer = asyncio.run(run())
    received = audio_by_media_time(peer.received)
    reference = load_audio(media.sox("agent-ref.wav", "-q", *map(str, parts), "-r", "48000", "{out}"),
                           sample_rate=RATE)[: RATE * 8]
    hop = RATE // 100

    def envelope(x):
        n = len(x) // hop
        return np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(axis=1))

    ref_env, out_env = envelope(reference), envelope(received)
    best = max(np.corrcoef(ref_env, out_env[k:k + len(ref_env)])[0, 1]
               for k in range(0, len(out_env) - len(ref_env)))
    assert best >= 0.9, best
    recording = write_recording(peer.received, tmp_path / "agent.mp4")
    assert compute_video_metrics(recording).lipsync_r >= 0.4


def test_upload_limits_and_nothing_half_written(server, tmp_path):
    big = Image.fromarray(np.repeat(np.repeat(media.grace_hopper(), 6, axis=0), 6, axis=1))  # ~12 MP
    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=80)
    assert 10e6 < big.width * big.height < 14e6
    ok = httpx.post(f"{server.base}/v1/avatars", files={"file": ("big.jpg", buf.getvalue())}, timeout=120)
    assert ok.status_code == 201, ok.text
    before = sorted(p.name for p in (server.data_dir / "avatars").iterdir())
    cases = [(bad_inputs.truncated_jpeg(tmp_path).read_bytes(), 415, "truncated"),
             (bad_inputs.huge_jpeg(tmp_path).read_bytes(), 413, "MP"),
             (b"\xff\xd8\xff" + bytes(30 * 2**20), 413, "MB")]
    for data, status, words in cases:
        r = httpx.post(f"{server.base}/v1/avatars", files={"file": ("x.jpg", data)}, timeout=120)
        assert r.status_code == status, r.text
        assert words in r.json()["error"]["message"]
    after = sorted(p.name for p in (server.data_dir / "avatars").iterdir())
    assert after == before  # nothing written for refused uploads, no temporary folders left
    assert httpx.get(f"{server.base}/healthz").status_code == 200
    assert 'outcome="accepted"' in httpx.get(f"{server.base}/metrics").text


def test_every_v1_route_needs_the_token_and_control_tokens_are_per_session():
    with run_server(args=["--token", "t0ken"]) as srv:
        routes = [("GET", "/v1/ice-servers"), ("GET", "/v1/avatars"), ("POST", "/v1/avatars"),
                  ("POST", "/v1/sessions"), ("DELETE", "/v1/sessions/x"), ("POST", "/v1/sessions/x/interrupt"),
                  ("GET", "/v1/avatars/default/thumbnail")]
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = httpx.request(method, f"{srv.base}{path}", headers=headers)
                assert r.status_code in (401, 403), (method, path, r.status_code)
        auth = {"Authorization": "Bearer t0ken"}

        async def run():
            a = LivePeer(srv.base, np.zeros(RATE * 4, np.float32), headers=auth)
            b = LivePeer(srv.base, np.zeros(RATE * 4, np.float32), headers=auth)
            answer_a, answer_b = await a.connect(), await b.connect()
            async with httpx.AsyncClient(base_url=srv.base, headers=auth) as client:
                other = await client.post(f"/v1/sessions/{answer_a['session_id']}/interrupt",
                                          headers={"X-Control-Token": answer_b["control_token"]})
                own = await client.post(f"/v1/sessions/{answer_a['session_id']}/interrupt",
                                        headers={"X-Control-Token": answer_a["control_token"]})
            assert await websocket_close_code(ws_url(srv.base, f"/v1/sessions/{answer_a['session_id']}/events"
                                                               f"?token=t0ken&control_token={answer_b['control_token']}")) \
                == 4401
            await a.close()
            await b.close()
            return other.status_code, own.status_code

        assert asyncio.run(run()) == (401, 204)


def test_named_session_is_driven_by_name_with_the_server_token():
    tts = load_audio(media.espeak_wav("hello"), sample_rate=16_000)
    with run_server(args=["--token", "tk"]) as srv:
        async def run():
            peer = LivePeer(srv.base, samples=None, options={"audio_source": "pcm", "name": "studio"},
                            headers={"Authorization": "Bearer tk"})
            await peer.connect()
            assert await websocket_close_code(ws_url(srv.base, "/v1/sessions/studio/audio")) == 4401
            async with websockets.connect(ws_url(srv.base, "/v1/sessions/studio/audio?token=tk")) as ws:
                await ws.send(json.dumps({"type": "start", "sample_rate": 16_000, "channels": 1}))
                assert json.loads(await ws.recv())["for"] == "start"
                await ws.send(_pcm_s16(tts))
                await ws.send(json.dumps({"type": "flush"}))
                await ws.recv()
                await asyncio.sleep(len(tts) / 16_000 + 0.8)
            await peer.close()
            return peer

        peer = asyncio.run(run())
        _, voice = audio_timeline(peer.received)
        assert np.abs(voice).max() > 0.1  # the agent's voice came back


PCM_CLIENT = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from tests.live_client import LivePeer
async def main():
    peer = LivePeer(sys.argv[1], None, options={"audio_source": "pcm"})
    await peer.connect()
    print("connected", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_killed_pcm_client_is_reaped(server):
    """A PCM peer sends no media: it is reaped when its RTCP receiver reports stop."""
    import subprocess
    import sys

    def active() -> float:
        text = httpx.get(f"{server.base}/metrics").text
        return float(next(line.split()[-1] for line in text.splitlines()
                          if line.startswith("emo_stream_sessions_active ")))

    deadline = time.monotonic() + 20
    while active() != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    before = active()
    proc = subprocess.Popen([sys.executable, "-c", PCM_CLIENT, server.base, str(media.REPO)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "connected"
    time.sleep(12)  # past the RTCP grace: a live peer's reports keep it alive
    assert active() == before + 1
    proc.kill()
    proc.wait()
    killed = time.monotonic()
    while active() != before:  # (reaped about 10 s after its last report; a busy machine is given more)
        assert time.monotonic() - killed < 40, "the dead PCM peer was not reaped"
        time.sleep(0.5)
