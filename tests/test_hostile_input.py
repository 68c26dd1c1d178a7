"""Hostile and unlucky clients: a corpus of bad requests and messages, each refused with a JSON 4xx with a code
(or a WebSocket error message / close code), never a traceback; the server serves a live session afterwards.

One real server with a token (single process) answers the corpus; the WebSocket cases run over one PCM
session in one pass and are asserted case by case.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import websockets

from tests import bad_inputs
from tests.live_client import RATE, LivePeer, offer_sdp, received_fps, websocket_close_code
from tests.servers import children_of, run_server

pytestmark = pytest.mark.timeout(300)

TOKEN = "h0stile-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server():
    with run_server({"server": {"max_sessions": 4}}, args=["--token", TOKEN, "--log-level", "info"]) as running:
        yield running


@pytest.fixture(scope="module")
def offers() -> dict[str, str]:
    return {"mic": offer_sdp(), "recvonly": offer_sdp("recvonly"), "video_only": offer_sdp(None),
            "audio_only": offer_sdp(video=False)}


# (id, JSON body as a function of the offers, expected status, expected code)
JSON_OFFERS = [
    ("v0-and-m-audio-only", lambda o: {"sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n", "type": "offer"},
     400, "invalid_sdp"),
    ("nul-bytes", lambda o: {"sdp": o["mic"].replace("a=", "a\x00=", 1), "type": "offer"}, 400, "invalid_sdp"),
    ("duplicate-mid", lambda o: {"sdp": o["mic"].replace("a=mid:1", "a=mid:0"), "type": "offer"}, 400,
     "invalid_sdp"),
    ("no-rtpmap", lambda o: {"sdp": re.sub(r"a=rtpmap:[^\r\n]*\r\n", "", o["mic"]), "type": "offer"}, 400,
     "invalid_sdp"),
    ("300-m-lines", lambda o: {"sdp": o["mic"] + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n" * 300,
                               "type": "offer"}, 400, "invalid_sdp"),
    ("video-only-pcm-offer", lambda o: {"sdp": o["video_only"], "type": "offer", "options": {"audio_source": "pcm"}},
     400, "invalid_sdp"),
    ("video-only-mic-offer", lambda o: {"sdp": o["video_only"], "type": "offer"}, 400, "invalid_sdp"),
    ("audio-only-offer", lambda o: {"sdp": o["audio_only"], "type": "offer"}, 400, "invalid_sdp"),
    ("mic-offer-that-sends-nothing", lambda o: {"sdp": o["recvonly"], "type": "offer"}, 400, "invalid_sdp"),
    ("type-answer", lambda o: {"sdp": o["mic"], "type": "answer"}, 400, "invalid_sdp"),
    ("type-number", lambda o: {"sdp": o["mic"], "type": 123}, 400, "bad_request"),
    ("sdp-number", lambda o: {"sdp": 123, "type": "offer"}, 400, "bad_request"),
    ("sdp-empty", lambda o: {"sdp": "", "type": "offer"}, 400, "invalid_sdp"),
    ("sdp-not-sdp", lambda o: {"sdp": "hello", "type": "offer"}, 400, "invalid_sdp"),
    ("sdp-no-type", lambda o: {"sdp": o["mic"]}, 201, None),  # type defaults to offer: a valid request
    ("options-not-object", lambda o: {"sdp": o["mic"], "type": "offer", "options": "x"}, 400, "bad_request"),
    ("seed-minus-one", lambda o: {"sdp": o["mic"], "type": "offer", "options": {"seed": -1}}, 400, "bad_request"),
    ("seed-huge", lambda o: {"sdp": o["mic"], "type": "offer", "options": {"seed": 2**40}}, 400, "bad_request"),
    ("seed-text", lambda o: {"sdp": o["mic"], "type": "offer", "options": {"seed": "x"}}, 400, "bad_request"),
    ("seed-fraction", lambda o: {"sdp": o["mic"], "type": "offer", "options": {"seed": 1.5}}, 400, "bad_request"),
    ("name-with-space", lambda o: {"sdp": o["mic"], "type": "offer", "options": {"name": "a b"}}, 400,
     "bad_request"),
    ("name-too-long", lambda o: {"sdp": o["mic"], "type": "offer", "options": {"name": "n" * 65}}, 400,
     "bad_request"),
    ("audio-source-unknown", lambda o: {"sdp": o["mic"], "type": "offer", "options": {"audio_source": "speaker"}},
     400, "bad_request"),
    ("size-not-offered", lambda o: {"sdp": o["mic"], "type": "offer", "options": {"size": 9999}}, 400,
     "bad_request"),
    ("backend-unknown", lambda o: {"sdp": o["mic"], "type": "offer", "options": {"backend": "nope"}}, 400,
     "bad_request"),
    ("background-plaid", lambda o: {"sdp": o["mic"], "type": "offer", "options": {"background": "plaid"}}, 400,
     "bad_config"),
    ("avatar-unknown", lambda o: {"sdp": o["mic"], "type": "offer", "avatar_id": "nobody"}, 404,
     "avatar_not_found"),
    ("avatar-id-10k", lambda o: {"sdp": o["mic"], "type": "offer", "avatar_id": "a" * 10_000}, 404,
     "avatar_not_found"),
    ("sdp-over-128-kb", lambda o: {"sdp": o["mic"] + "a=x-pad:" + "p" * 135_000 + "\r\n", "type": "offer"}, 400,
     "invalid_sdp"),
    ("body-over-144-kib", lambda o: {"sdp": o["mic"] + "a=x-pad:" + "p" * 200_000 + "\r\n", "type": "offer"}, 413,
     "request_too_large"),
]


@pytest.mark.parametrize(("body", "status", "code"), [c[1:] for c in JSON_OFFERS], ids=[c[0] for c in JSON_OFFERS])
def test_json_offers_are_refused_with_their_code(server, offers, body, status, code):
    r = httpx.post(f"{server.base}/v1/sessions", json=body(offers), headers=AUTH, timeout=30)
    assert r.status_code == status, r.text[:300]
    if code is None:
        httpx.delete(f"{server.base}/v1/sessions/{r.json()['session_id']}", headers=AUTH)
    else:
        assert r.json()["error"]["code"] == code, r.text[:300]


RAW_BODIES = [
    ("nested-brackets", b"[" * 100_000, "application/json", 400, "bad_request"),
    ("not-json", b"{nope", "application/json", 400, "bad_request"),
    ("json-array", b"[]", "application/json", 400, "bad_request"),
    ("json-null", b"null", "application/json", 400, "bad_request"),
    ("invalid-utf8", b'{"sdp": "\xff\xfe", "type": "offer"}', "application/json", 400, "bad_request"),
    ("two-megabytes", b'{"sdp": "' + b"v" * 2_000_000 + b'"}', "application/json", 413, "request_too_large"),
    ("whip-not-sdp", b"hello", "application/sdp", 400, "invalid_sdp"),
    ("whip-empty", b"", "application/sdp", 400, "invalid_sdp"),
    ("whip-nul", b"v=0\r\n\x00m=audio 9 RTP/AVP 0\r\n", "application/sdp", 400, "invalid_sdp"),
]


@pytest.mark.parametrize(("content", "content_type", "status", "code"), [c[1:] for c in RAW_BODIES],
                         ids=[c[0] for c in RAW_BODIES])
def test_raw_offer_bodies_are_refused_with_their_code(server, content, content_type, status, code):
    r = httpx.post(f"{server.base}/v1/sessions", content=content, headers={**AUTH, "content-type": content_type},
                   timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text[:300]


WHIP_QUERIES = [
    ("size-abc", "size=abc", 400, "bad_request"),
    ("fps-abc", "fps=abc", 400, "bad_request"),
    ("seed-minus-one", "seed=-1", 400, "bad_request"),
    ("seed-abc", "seed=abc", 400, "bad_request"),
    ("audio-source-x", "audio_source=x", 400, "bad_request"),
    ("background-bad", "background=%23zz", 400, "bad_config"),
    ("avatar-unknown", "avatar_id=nobody", 404, "avatar_not_found"),
]


@pytest.mark.parametrize(("query", "status", "code"), [c[1:] for c in WHIP_QUERIES], ids=[c[0] for c in WHIP_QUERIES])
def test_whip_query_options_are_refused_with_their_code(server, offers, query, status, code):
    r = httpx.post(f"{server.base}/v1/sessions?{query}", content=offers["mic"],
                   headers={**AUTH, "content-type": "application/sdp"}, timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text[:300]


ROUTES = [
    ("no-token", "GET", "/v1/avatars", {}, 401, "unauthorized"),
    ("wrong-token", "GET", "/v1/avatars", {"Authorization": "Bearer nope"}, 401, "unauthorized"),
    ("bare-bearer", "GET", "/v1/avatars", {"Authorization": "Bearer"}, 401, "unauthorized"),
    ("non-ascii-bearer", "GET", "/v1/avatars", {"Authorization": "Bearer t\u00f6ken".encode("latin-1")}, 401,
     "unauthorized"),
    ("non-ascii-query-token", "GET", "/v1/avatars?token=%C3%BC%E2%82%AC", {}, 401, "unauthorized"),
    ("offer-without-token", "POST", "/v1/sessions", {}, 401, "unauthorized"),
    ("unknown-route", "GET", "/v1/nope", AUTH, 404, "not_found"),
    ("wrong-method", "PUT", "/v1/sessions", AUTH, 405, "method_not_allowed"),
    ("delete-unknown-session", "DELETE", "/v1/sessions/nope", AUTH, 404, "session_not_found"),
    ("interrupt-unknown-session", "POST", "/v1/sessions/nope/interrupt", AUTH, 404, "session_not_found"),
    ("thumbnail-unknown-avatar", "GET", "/v1/avatars/nope/thumbnail", AUTH, 404, "avatar_not_found"),
]


@pytest.mark.parametrize(("method", "path", "headers", "status", "code"), [c[1:] for c in ROUTES],
                         ids=[c[0] for c in ROUTES])
def test_routes_refuse_with_their_code(server, method, path, headers, status, code):
    r = httpx.request(method, f"{server.base}{path}", headers=headers, timeout=30)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text[:300]


UPLOADS = [
    ("text-file", bad_inputs.text_file, 415),
    ("truncated-jpeg", bad_inputs.truncated_jpeg, 415),
    ("one-pixel", bad_inputs.one_pixel_png, 422),
    ("png-bomb", bad_inputs.png_bomb, 413),
    ("no-face", bad_inputs.no_face_png, 422),
]


@pytest.mark.parametrize(("make", "status"), [c[1:] for c in UPLOADS], ids=[c[0] for c in UPLOADS])
def test_bad_uploads_are_refused_with_their_code(server, tmp_path, make, status):
    path = make(tmp_path)
    r = httpx.post(f"{server.base}/v1/avatars", files={"file": (path.name, path.read_bytes())}, headers=AUTH,
                   timeout=120)
    assert r.status_code == status and r.json()["error"]["code"], r.text[:300]


def test_uploads_in_the_wrong_shape_are_bad_requests(server):
    wrong_field = httpx.post(f"{server.base}/v1/avatars", files={"photo": ("a.png", b"x")}, headers=AUTH)
    not_multipart = httpx.post(f"{server.base}/v1/avatars", json={"file": "x"}, headers=AUTH)
    assert [(r.status_code, r.json()["error"]["code"]) for r in (wrong_field, not_multipart)] == \
        [(400, "bad_request")] * 2


async def _raw_request(port: int, head: str, timeout_s: float = 10.0) -> tuple[int, float]:
    """Send only a request's head (its body never comes); (the status of the answer, seconds it took)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode())
    await writer.drain()
    async with asyncio.timeout(timeout_s):
        status_line = await reader.readline()
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return int(status_line.split()[1]), time.monotonic() - started


def test_an_oversized_upload_is_refused_before_its_body(server):
    head = (f"POST /v1/avatars HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 30000000\r\n\r\n")
    status, seconds = asyncio.run(_raw_request(server.port, head))
    assert status == 413 and seconds < 10


# --------------------------------------------------------------------------- WebSockets, in one pass


def _ws(server, path: str) -> str:
    return server.base.replace("http", "ws", 1) + path


async def _answer(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


async def _closed_with(ws) -> int | None:
    with contextlib.suppress(websockets.ConnectionClosed):
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    return ws.close_code


async def _run_socket_corpus(server) -> dict[str, object]:
    """Every WebSocket case against one PCM session and one microphone session: case -> what came back."""
    out: dict[str, object] = {}
    pcm = LivePeer(server.base, samples=None, options={"audio_source": "pcm"}, headers=AUTH)
    mic = LivePeer(server.base, np.zeros(RATE * 30, np.float32), headers=AUTH)
    pcm_answer, mic_answer = await pcm.connect(), await mic.connect()
    sid, control = pcm_answer["session_id"], pcm_answer["control_token"]
    owned = f"token={TOKEN}&control_token={control}"
    events = _ws(server, f"/v1/sessions/{sid}/events?{owned}")
    audio = _ws(server, f"/v1/sessions/{sid}/audio?{owned}")

    async with websockets.connect(events) as ws:
        await _answer(ws)  # the current state comes first
        for case, message in [("events-binary", b"\x00\x01"), ("events-not-json", "hello"),
                              ("events-json-array", "[1, 2]"), ("events-nested", "[" * 100_000),
                              ("events-unknown-type", json.dumps({"type": "dance"}))]:
            await ws.send(message)
            answer = await _answer(ws)
            while answer["type"] in ("state", "stats"):
                answer = await _answer(ws)
            out[case] = answer
        await ws.send(json.dumps({"type": "interrupt"}))
        answer = await _answer(ws)
        while answer["type"] in ("state", "stats"):
            answer = await _answer(ws)
        out["events-still-open"] = answer

    async with websockets.connect(audio, max_size=None) as ws:
        await ws.send(b"\x00\x00")
        out["audio-before-start"] = await _answer(ws)
        for case, start in [("start-channels-float", {"sample_rate": 16000, "channels": 2.0}),
                            ("start-channels-bool", {"sample_rate": 16000, "channels": True}),
                            ("start-rate-text", {"sample_rate": "16000"}),
                            ("start-rate-low", {"sample_rate": 7999}),
                            ("start-rate-float", {"sample_rate": 16000.0}),
                            ("start-channels-three", {"sample_rate": 16000, "channels": 3})]:
            await ws.send(json.dumps({"type": "start", **start}))
            out[case] = await _answer(ws)
        await ws.send(json.dumps({"type": "start", "sample_rate": 8000, "channels": 2}))
        out["start-ok"] = await _answer(ws)
        await ws.send(b"\x00" * 6)  # one and a half stereo sample frames
        out["audio-odd-bytes"] = await _answer(ws)
        await ws.send(json.dumps({"type": "dance"}))
        out["audio-unknown-command"] = await _answer(ws)
        await ws.send("{nope")
        out["audio-not-json"] = await _answer(ws)
        await ws.send(json.dumps({"type": "start", "sample_rate": 8000, "channels": 1}))
        await _answer(ws)
        # 1 MiB at 8 kHz mono is 65.5 s: the second would queue 131 s, over the 120 s bound.
        second = np.zeros(512 * 1024, "<i2").tobytes()
        await ws.send(second)
        await ws.send(second)
        out["audio-past-120-s"] = await _answer(ws)
        await ws.send(json.dumps({"type": "flush"}))
        out["audio-buffered-after"] = await _answer(ws)
        await ws.send(json.dumps({"type": "interrupt"}))
        out["audio-interrupt"] = await _answer(ws)

    async with websockets.connect(audio, max_size=None) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(b"\x00" * (16 * 1024 * 1024))
        out["audio-16-mib-message"] = await _closed_with(ws)

    async with websockets.connect(events) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            for _ in range(3000):
                await ws.send('{"type": "interrupt"}')
        out["events-interrupt-flood"] = await _closed_with(ws)

    mic_sid, mic_control = mic_answer["session_id"], mic_answer["control_token"]
    out["ws-no-token"] = await websocket_close_code(_ws(server, f"/v1/sessions/{sid}/events"))
    out["ws-unknown-session"] = await websocket_close_code(_ws(server, f"/v1/sessions/nope/events?token={TOKEN}"))
    out["ws-other-sessions-control-token"] = await websocket_close_code(
        _ws(server, f"/v1/sessions/{sid}/events?token={TOKEN}&control_token={mic_control}"))
    out["ws-non-ascii-token"] = await websocket_close_code(
        _ws(server, f"/v1/sessions/{sid}/events?token=%C3%BC&control_token=%E2%82%AC"))
    async with websockets.connect(_ws(server, f"/v1/sessions/{mic_sid}/audio?token={TOKEN}&"
                                              f"control_token={mic_control}")) as ws:
        out["audio-to-mic-session"] = (await _answer(ws))["code"], await _closed_with(ws)

    await asyncio.sleep(2.0)
    frames_before = len(pcm.received.video)
    await asyncio.sleep(3.0)
    out["pcm-session-frames-in-3-s"] = len(pcm.received.video) - frames_before
    out["control-tokens"] = [control, mic_control]
    await pcm.close()
    await mic.close()
    return out


@pytest.fixture(scope="module")
def socket_corpus(server) -> dict[str, object]:
    return asyncio.run(_run_socket_corpus(server))


ERROR_MESSAGES = ["events-binary", "events-not-json", "events-json-array", "events-nested", "events-unknown-type",
                  "audio-before-start", "start-channels-float", "start-channels-bool", "start-rate-text",
                  "start-rate-low", "start-rate-float", "start-channels-three", "audio-odd-bytes",
                  "audio-unknown-command", "audio-not-json", "audio-past-120-s"]


@pytest.mark.parametrize("case", ERROR_MESSAGES)
def test_bad_websocket_messages_get_an_error_with_a_code(socket_corpus, case):
    answer = socket_corpus[case]
    assert answer["type"] == "error" and answer["code"] == "bad_request" and answer["message"], answer


def test_sockets_stay_usable_after_bad_messages(socket_corpus):
    assert socket_corpus["events-still-open"] == {"type": "ack", "for": "interrupt"}
    assert socket_corpus["start-ok"] == {"type": "ack", "for": "start", "sample_rate": 8000, "channels": 2}
    assert socket_corpus["audio-interrupt"] == {"type": "ack", "for": "interrupt"}


def test_pcm_is_refused_before_it_is_buffered(socket_corpus):
    assert "120 s" in socket_corpus["audio-past-120-s"]["message"]
    buffered = socket_corpus["audio-buffered-after"]["buffered_s"]
    assert 60 < buffered <= 66  # the first message only: the refused one left nothing behind


@pytest.mark.parametrize(("case", "code"), [
    ("audio-16-mib-message", 1009),  # message too big: refused by its length, before it is read
    ("events-interrupt-flood", 1008),  # policy violation: past the control rate, far and long
    ("ws-no-token", 4401),
    ("ws-unknown-session", 4404),
    ("ws-other-sessions-control-token", 4401),
    ("ws-non-ascii-token", 4401),
])
def test_websockets_close_with_their_code(socket_corpus, case, code):
    assert socket_corpus[case] == code


def test_a_microphone_session_refuses_pcm_with_4400(socket_corpus):
    assert socket_corpus["audio-to-mic-session"] == ("bad_request", 4400)


def test_the_session_keeps_animating_through_the_socket_corpus(socket_corpus):
    assert socket_corpus["pcm-session-frames-in-3-s"] >= 15


def test_no_token_reaches_the_log_and_no_traceback_either(server, socket_corpus):
    text = server.log_text()
    assert "WebSocket /v1/sessions/" in text  # uvicorn logged the sockets' paths...
    for secret in [TOKEN, *socket_corpus["control-tokens"]]:
        assert secret not in text  # ...with the tokens taken out
    assert "token=***" in text
    assert "Traceback" not in text and "Exception in ASGI application" not in text


def test_after_the_corpus_a_new_session_animates(server, socket_corpus):
    async def run():
        peer = LivePeer(server.base, np.zeros(RATE * 6, np.float32), headers=AUTH)
        await peer.connect()
        await asyncio.sleep(4.0)
        await peer.close()
        return peer

    assert received_fps(asyncio.run(run()).received) >= 10
    assert httpx.get(f"{server.base}/healthz").status_code == 200


# --------------------------------------------------------------------------- full servers, the router, shutdown


async def _refusals_when_full(base: str, offers: dict[str, str], sessions: int) -> dict[str, tuple[int, str]]:
    """With the ``sessions`` the server takes running: what bad offers and a good one get."""
    peers = [LivePeer(base, np.zeros(RATE * 20, np.float32), headers=AUTH) for _ in range(sessions)]
    for peer in peers:
        await peer.connect()
    out = {}
    async with httpx.AsyncClient(base_url=base, headers=AUTH, timeout=30) as client:
        for case, body in [("bad-sdp", {"sdp": "hello", "type": "offer"}),
                           ("no-audio", {"sdp": offers["video_only"], "type": "offer"}),
                           ("bad-seed", {"sdp": offers["mic"], "type": "offer", "options": {"seed": -1}}),
                           ("unknown-avatar", {"sdp": offers["mic"], "type": "offer", "avatar_id": "nobody"}),
                           ("good", {"sdp": offers["mic"], "type": "offer"})]:
            r = await client.post("/v1/sessions", json=body)
            out[case] = (r.status_code, r.json()["error"]["code"])
    for peer in peers:
        await peer.close()
    return out


FULL_SERVER_ANSWERS = {"bad-sdp": (400, "invalid_sdp"), "no-audio": (400, "invalid_sdp"),
                       "bad-seed": (400, "bad_request"), "unknown-avatar": (404, "avatar_not_found"),
                       "good": (503, "overloaded")}


def test_a_full_server_checks_a_request_before_refusing_it_then_stops_with_status_0(offers):
    with run_server({"server": {"max_sessions": 1}}, args=["--token", TOKEN]) as srv:
        assert asyncio.run(_refusals_when_full(srv.base, offers, 1)) == FULL_SERVER_ANSWERS
        srv.proc.send_signal(signal.SIGTERM)  # what a service manager sends
        assert srv.proc.wait(timeout=30) == 0


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    with run_server({"server": {"processes": 2, "max_sessions": 2, "data_dir": str(data)}},
                    args=["--token", TOKEN]) as running:
        yield running


@pytest.mark.parametrize("path", ["/v1/avatars", "/v1/sessions"])
def test_the_router_refuses_a_caller_without_the_token_before_reading_its_body(sharded, path):
    # Only the head is sent: a router that waited for the 25 MB body before checking the token would time out.
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            "Content-Length: 25000000\r\n\r\n")
    status, seconds = asyncio.run(_raw_request(sharded.port, head))
    assert status == 401 and seconds < 10


@pytest.mark.parametrize(("path", "length"), [("/v1/avatars", 30_000_000), ("/v1/sessions", 1_000_000),
                                              ("/v1/sessions/s0-x/interrupt", 1_000_000)])
def test_the_router_refuses_an_overlong_body_by_its_length(sharded, path, length):
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n")
    status, seconds = asyncio.run(_raw_request(sharded.port, head))
    assert status == 413 and seconds < 10


def test_the_router_lets_its_processes_check_a_request_before_refusing_it_when_full(sharded, offers):
    assert asyncio.run(_refusals_when_full(sharded.base, offers, 2)) == FULL_SERVER_ANSWERS


def test_a_crashed_session_process_closes_its_sockets_with_1011_and_sigterm_exits_0(sharded):
    async def run() -> int | None:
        peer = LivePeer(sharded.base, np.zeros(RATE * 20, np.float32), headers=AUTH)
        answer = await peer.connect()
        url = _ws(sharded, f"/v1/sessions/{answer['session_id']}/events?token={TOKEN}&"
                           f"control_token={answer['control_token']}")
        async with websockets.connect(url) as ws:
            await _answer(ws)
            children = children_of(sharded.proc.pid)
            assert len(children) == 2
            for child in children:  # the session's process among them
                os.kill(child, signal.SIGKILL)
            code = await _closed_with(ws)
        await peer.close(goodbye=False)
        return code

    assert asyncio.run(run()) == 1011
    sharded.proc.send_signal(signal.SIGTERM)
    assert sharded.proc.wait(timeout=30) == 0


# --------------------------------------------------------------------------- units


def test_pcm_is_checked_before_anything_is_buffered():
    from emo_stream.errors import RequestError
    from server.pcm_source import MAX_MESSAGE_BYTES, PcmSource

    source = PcmSource(48_000, 25)
    with pytest.raises(RequestError, match="start"):
        source.check(b"\x00\x00")
    source.start(8_000, 2)
    with pytest.raises(RequestError, match="whole s16le sample frames"):
        source.check(b"\x00" * 6)
    with pytest.raises(RequestError, match="KiB"):
        source.check(b"\x00" * (MAX_MESSAGE_BYTES + 4))
    minute = np.zeros(8_000 * 60 * 2, "<i2").tobytes()  # 60 s of 8 kHz stereo (1.9 MB: pushed in halves)
    for half in (minute[: len(minute) // 2], minute[len(minute) // 2:]):
        assert source.push(half)
    assert source.buffered_s == pytest.approx(60, abs=0.05)
    assert source.push(b"\x00" * MAX_MESSAGE_BYTES)  # 32.8 s more: 92.8 s, fits
    with pytest.raises(RequestError, match="120 s"):
        source.push(np.zeros(8_000 * 32 * 2, "<i2").tobytes())  # 32 s more: 124.8 s, refused
    assert source.buffered_s == pytest.approx(60 + MAX_MESSAGE_BYTES / 4 / 8_000, abs=0.05)  # nothing of it kept


def test_pcm_resampled_before_a_barge_in_is_not_queued_after_it():
    from server.pcm_source import PcmSource

    source = PcmSource(48_000, 25)
    source.start(16_000, 1)
    generation, samples = source.resample(np.ones(16_000, "<i2").tobytes())  # (off the loop, in the server)
    source.clear()  # a barge-in while it was being resampled
    assert not source.enqueue(generation, samples) and source.buffered_s == 0
    assert source.enqueue(*source.resample(np.ones(16_000, "<i2").tobytes()))


def test_control_rate_allows_bursts_refuses_past_the_rate_and_names_a_flood():
    from emo_stream.errors import RateLimitedError
    from server.control_rate import FLOOD_DROPS, ControlRate

    now = [0.0]
    rate = ControlRate(per_s=10, burst=5, clock=lambda: now[0])
    for _ in range(5):
        rate.take()
    with pytest.raises(RateLimitedError):
        rate.take()
    now[0] += 0.1  # one token back
    rate.take()
    assert not rate.flooded
    for _ in range(FLOOD_DROPS):
        with pytest.raises(RateLimitedError):
            rate.take()
    assert rate.flooded
    now[0] += 1.0
    rate.take()
    assert not rate.flooded and rate.refused == FLOOD_DROPS + 1


def test_a_flood_is_named_though_tokens_come_back_while_it_is_read():
    """A busy server reads a flood slower than it comes: a token returns between refusals, yet it is a flood."""
    from emo_stream.errors import RateLimitedError
    from server.control_rate import ControlRate

    now = [0.0]
    rate = ControlRate(per_s=20, burst=40, clock=lambda: now[0])
    let_through = 0
    for _ in range(2000):  # read at 200 messages a second: ten times the rate
        now[0] += 0.005
        try:
            rate.take()
            let_through += 1
        except RateLimitedError:
            pass
        if rate.flooded:
            break
    assert rate.flooded and let_through < 100 and now[0] < 2.0
    # Twice the rate is refused in part but is not a flood: the refusals leak away as fast as they come.
    rate = ControlRate(per_s=20, burst=40, clock=lambda: now[0])
    for _ in range(2000):
        now[0] += 0.025
        with contextlib.suppress(RateLimitedError):
            rate.take()
        assert not rate.flooded


@pytest.mark.parametrize("as_json", [False, True])
def test_log_lines_carry_tracebacks_and_never_tokens(as_json):
    import logging

    from server.logs import JsonFormatter, RedactSecrets, TextFormatter

    try:
        raise ValueError("bad thing with ?token=abc123")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, '%s - "WebSocket %s" [accepted]',
                               ("127.0.0.1:5", "/v1/sessions/x/events?token=s3cret&control_token=c0ntrol"), exc_info)
    assert RedactSecrets().filter(record)
    line = (JsonFormatter() if as_json else TextFormatter()).format(record)
    assert "s3cret" not in line and "c0ntrol" not in line and "abc123" not in line
    assert "token=***&control_token=***" in line
    if as_json:
        entry = json.loads(line)
        assert entry["error"] == "ValueError: bad thing with ?token=***" and "Traceback" in entry["traceback"]
    else:
        assert "Traceback (most recent call last)" in line and "ValueError" in line


def test_tokens_compare_whatever_their_characters():
    from server.auth import same_token

    assert same_token("t\u00f6ken", "t\u00f6ken") and not same_token("\u00fc", "token")
    assert not same_token("\udcff", "token")  # a surrogate from a badly encoded query


def test_uploads_are_prepared_in_a_low_priority_process(server, tmp_path):
    photo = bad_inputs.huge_jpeg(tmp_path, 7_600, 5_200)  # 39.5 MP, no face: the longest search there is
    started = time.monotonic()
    r = httpx.post(f"{server.base}/v1/avatars", files={"file": ("big.jpg", photo.read_bytes())}, headers=AUTH,
                   timeout=120)
    took = time.monotonic() - started
    assert (r.status_code, r.json()["error"]["code"]) == (422, "no_face_found")
    assert took < 60  # bounded (the tile search: at most ~150 tiles, 3 s); unbounded it took 28-48 s of CPU
    niceness = [int((Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())[16])
                for pid in children_of(server.proc.pid)]
    assert 10 in niceness, niceness


def test_the_tile_search_for_small_faces_is_bounded_in_tiles_and_time():
    from emo_stream import avatar

    class CountingDetector:
        def __init__(self, clock: list[float]) -> None:
            self.calls, self.clock = 0, clock

        def detect(self, rgb):
            self.calls += 1
            self.clock[0] += 0.01
            return []

    big = np.zeros((3000, 4000, 3), np.uint8)  # 300 tiles at full size
    now = [0.0]
    detector = CountingDetector(now)
    assert avatar._detector_boxes(big, detector, clock=lambda: now[0]) == []
    assert detector.calls <= 1 + avatar.TILE_SEARCH_MAX_TILES * 1.1  # searched scaled down
    now[0], detector.calls = 0.0, 0
    slow = CountingDetector(now)
    slow.detect = lambda rgb: (now.__setitem__(0, now[0] + 0.5), [])[1]  # 0.5 s a tile
    avatar._detector_boxes(big, slow, clock=lambda: now[0])
    assert now[0] <= avatar.TILE_SEARCH_BUDGET_S + 1.0 + 1e-9  # stopped at the budget (plus the whole image)


def test_a_face_found_in_a_scaled_tile_search_is_placed_in_the_photo():
    from emo_stream import avatar

    class Finder:  # nothing in the whole photo; a 96-px face in the 19th tile searched
        def __init__(self) -> None:
            self.seen = 0

        def detect(self, rgb):
            self.seen += 1
            return [(96.0, 96.0, 192.0, 192.0, 0.9)] if self.seen == 20 else []

    big = np.zeros((3000, 4000, 3), np.uint8)  # 300 tiles at full size: searched at (150 / 300) ** 0.5
    (x0, y0, x1, y1, _), = avatar._detector_boxes(big, Finder())
    scale = (avatar.TILE_SEARCH_MAX_TILES / 300) ** 0.5
    assert x1 - x0 == pytest.approx(96 / scale, rel=0.01) and y1 - y0 == pytest.approx(96 / scale, rel=0.01)
    assert 0 <= x0 < x1 <= 4000 and 0 <= y0 < y1 <= 3000


def _ticks(source, count: int) -> list[float | None]:
    """``count`` pulls: each tick's RMS, None where it got no audio."""
    out = []
    for _ in range(count):
        frame = source.pull()
        out.append(None if frame is None else float(np.sqrt(np.mean(frame.to_ndarray() ** 2))))
    return out


def test_an_underrun_is_won_back_at_the_next_pause_and_never_inside_speech():
    from server.pcm_source import PcmSource

    source = PcmSource(48_000, 25)  # 1920 samples a tick
    source.start(48_000, 1)
    tone = (0.3 * 32767 * np.sin(np.arange(48_000) * 2 * np.pi * 220 / 48_000)).astype("<i2")
    tick = 1920
    source.push(tone[: 5 * tick].tobytes())
    assert all(r is not None and r > 0.1 for r in _ticks(source, 5))
    assert _ticks(source, 3) == [None] * 3  # the agent was late: an underrun of 3 ticks
    assert source.debt_ticks == 3 and source.debt_s == pytest.approx(0.12)
    source.push((np.zeros(4 * tick, "<i2").tobytes()) + tone[: 6 * tick].tobytes())  # a pause, then speech
    played = _ticks(source, 7)
    assert played[0] is not None and played[0] < 0.01  # the pause, shortened by the 3 ticks owed
    assert all(r is not None and r > 0.1 for r in played[1:])  # every tick of speech plays
    assert source.debt_ticks == 0 and source.skipped_ticks == 3


def test_audio_that_comes_just_after_its_tick_is_pulled_on_arrival_and_owes_nothing():
    from server.pcm_source import PcmSource

    source = PcmSource(48_000, 25)
    source.start(48_000, 1)
    tick = 1920
    speech = np.full(10 * tick, 8000, "<i2")
    source.push(speech[: tick // 2].tobytes())  # half a tick: this tick finds too little
    assert _ticks(source, 1) == [None] and source.owed
    assert source.pull_owed() is None, "still too little"
    source.push(speech[tick // 2: tick].tobytes())  # the rest comes before the next tick
    frame = source.pull_owed()
    assert frame is not None and frame.samples == tick
    assert source.debt_ticks == 0 and not source.owed and source.owed_pulls == 1
    assert source.pull_owed() is None, "one pull per dry tick"
    assert _ticks(source, 1) == [None], "the next tick's audio has not come yet"
    source.push(speech[tick: 3 * tick].tobytes())  # late by more than a tick: one tick of debt stays
    assert _ticks(source, 1)[0] is not None and source.debt_ticks == 1


def test_a_long_pause_is_not_an_underrun_and_a_burst_plays_whole():
    from server.pcm_source import MAX_UNDERRUN_S, PcmSource

    source = PcmSource(48_000, 25)
    source.start(48_000, 1)
    source.push(np.full(1920, 8000, "<i2").tobytes())
    _ticks(source, 1 + int(MAX_UNDERRUN_S * 25) + 2)  # the agent stopped talking for over a second
    assert source.debt_ticks == 0
    source.push(np.zeros(10 * 1920, "<i2").tobytes())  # a TTS burst that opens with a pause
    assert len([r for r in _ticks(source, 10) if r is not None]) == 10  # all of it plays: nothing is owed
