"""A server of several session processes (``server.processes``): real children, real aiortc peers, the router."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
import websockets
from fastapi.testclient import TestClient

from emo_stream.audio import load_audio
from server.config import load_config, session_processes
from server.router import create_router_app, merge_metrics
from server.shards import Shard, ShardRole, shard_of_session
from tests import media
from tests.live_client import RATE, LivePeer, run_peers, websocket_close_code
from tests.servers import children_of, metric, run_server, stop

pytestmark = pytest.mark.timeout(240)


def wait_until(check, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def two_sessions_one_per_process(base: str, speech: np.ndarray, avatar_id: str | None = None) -> None:
    """Two sessions one after the other land in different processes and both receive video."""
    peers = asyncio.run(run_peers(base, speech, 2, 1.5, avatar_id=avatar_id))
    assert sorted(shard_of_session(p.session_id) for p in peers) == [0, 1]
    assert all(len(p.received.video) > 10 for p in peers)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    data = tmp_path_factory.mktemp("shared-data")
    with run_server({"server": {"processes": 2, "max_sessions": 4, "data_dir": str(data)}}) as running:
        yield running


@pytest.fixture(scope="module")
def speech48() -> np.ndarray:
    return load_audio(media.silence_then_speech("hello"), sample_rate=RATE)


# ------------------------------------------------------------------ units


def test_merged_metrics_add_up_and_keep_the_worst_loop_lag():
    a = ("# HELP emo_stream_frames_sent_total Frames\n# TYPE emo_stream_frames_sent_total counter\n"
         "emo_stream_frames_sent_total 10.0\nemo_stream_frames_sent_created 1.7e+09\n"
         "# HELP emo_stream_loop_lag_seconds Lag\n# TYPE emo_stream_loop_lag_seconds gauge\n"
         "emo_stream_loop_lag_seconds 0.002\n"
         "# HELP emo_stream_stage_latency_seconds L\n# TYPE emo_stream_stage_latency_seconds histogram\n"
         'emo_stream_stage_latency_seconds_bucket{le="0.01",stage="animate"} 4.0\n')
    b = a.replace(" 10.0", " 5.0").replace("0.002", "0.009").replace("} 4.0", "} 3.0").replace("1.7e+09", "1.8e+09")
    merged = merge_metrics([a, b])
    assert merged.count("# TYPE emo_stream_frames_sent_total counter") == 1
    assert "emo_stream_frames_sent_total 15.0" in merged
    assert "emo_stream_frames_sent_created 1800000000.0" in merged  # a timestamp, not a sum
    assert "emo_stream_loop_lag_seconds 0.009" in merged
    assert 'emo_stream_stage_latency_seconds_bucket{le="0.01",stage="animate"} 7.0' in merged


def test_session_ids_name_their_process_and_the_count_resolves():
    assert shard_of_session("s1-AbC_d") == 1 and shard_of_session("s12-x") == 12
    assert shard_of_session("overlay") is None and shard_of_session("xs1-a") is None
    assert ShardRole(3, 4).session_prefix == "s3-"
    with pytest.raises(ValueError, match="K/N"):
        ShardRole.parse("two")
    with pytest.raises(ValueError, match="0..N-1"):
        ShardRole.parse("2/2")
    auto = load_config(None, {"server.processes": 0})
    assert session_processes(auto) == min(4, len(os.sched_getaffinity(0)))
    assert session_processes(load_config(None, {"server.processes": 3, "server.max_sessions": 2})) == 2
    assert session_processes(load_config(None, {"server.processes": 3, "animator.backend": "emo"})) == 1


class _FakeChild(ThreadingHTTPServer):
    """A session process as the router sees it: ``/metrics`` answers with the sessions it had when asked, a
    little later (a child busy with its sessions), and an offer opens a session at once."""

    def __init__(self, metrics_delay_s: float) -> None:
        self.sessions = 0
        self.metrics_delay_s = metrics_delay_s
        child = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # /metrics
                text = f"emo_stream_sessions_active {child.sessions}\n".encode()
                time.sleep(child.metrics_delay_s)
                self._send(200, text)

            def do_POST(self) -> None:  # /v1/sessions
                self.rfile.read(int(self.headers.get("content-length", 0)))
                child.sessions += 1
                self._send(201, b"{}")

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


class _FakePool:
    """``ShardPool``'s face to the router, over running fake children."""

    def __init__(self, children: list[_FakeChild]) -> None:
        running = SimpleNamespace(poll=lambda: None)
        self.shards = [Shard(k, port=c.server_address[1], process=running) for k, c in enumerate(children)]
        self.count = len(children)

    def spawn_all(self) -> None:
        pass

    def wait_ready(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_offers_spread_though_the_children_s_load_is_asked_before_the_last_offer_opened():
    # Each offer asks both children for their load (200 ms), then opens a session at once; the next offer came
    # 50 ms later, so its answers predate the sessions opened meanwhile. Counting only the answers (and the
    # offers in flight), every offer saw two empty children and went to the first.
    children = [_FakeChild(metrics_delay_s=0.2), _FakeChild(metrics_delay_s=0.2)]
    app = create_router_app(load_config(None, {"server.max_sessions": 8}), _FakePool(children))
    try:
        with TestClient(app) as client:
            def offer(k: int) -> int:
                time.sleep(0.05 * k)
                return client.post("/v1/sessions", json={"sdp": "v=0", "type": "offer"}).status_code

            with ThreadPoolExecutor(4) as pool:
                statuses = list(pool.map(offer, range(4)))
    finally:
        for child in children:
            child.shutdown()
    assert statuses == [201] * 4
    assert [child.sessions for child in children] == [2, 2]


# ------------------------------------------------------------------ a real server of 2 processes


def test_sessions_spread_over_the_processes_and_are_routed_to_theirs(sharded, speech48):
    base = sharded.base
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    assert metric(base, "emo_stream_session_processes") == 2

    async def run():
        peers = [LivePeer(base, speech48) for _ in range(2)]
        await asyncio.gather(*(peer.connect() for peer in peers))  # offers at once still spread
        await asyncio.sleep(2.5)
        counts = [len(p.received.video) for p in peers]
        active = await asyncio.to_thread(metric, base, "emo_stream_sessions_active")
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            refused = await client.post(f"/v1/sessions/{peers[0].session_id}/interrupt",
                                        headers={"X-Control-Token": "wrong"})
        await peers[0].interrupt()  # through the router, with the right token
        url = base.replace("http", "ws", 1) + (f"/v1/sessions/{peers[1].session_id}/events"
                                               f"?control_token={peers[1].control_token}")
        async with websockets.connect(url) as events:
            await events.send(json.dumps({"type": "interrupt"}))
            ack = None
            for _ in range(20):
                message = json.loads(await asyncio.wait_for(events.recv(), 5))
                if message.get("type") == "ack":
                    ack = message
                    break
        for peer in peers:
            await peer.close()
        return peers, counts, active, refused, ack

    peers, counts, active, refused, ack = asyncio.run(run())
    assert sorted(shard_of_session(p.session_id) for p in peers) == [0, 1]
    assert all(n >= 40 for n in counts), counts
    assert active == 2
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
    assert ack == {"type": "ack", "for": "interrupt"}
    wait_until(lambda: metric(base, "emo_stream_sessions_active") == 0, 30, "the sessions to close")
    assert metric(base, "emo_stream_frames_sent_total") >= sum(counts)
    for unknown in ("s1-nosuchsession", "s9-beyond", "no-such-name"):
        answer = httpx.delete(f"{base}/v1/sessions/{unknown}", headers={"X-Control-Token": "x"})
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "session_not_found", unknown


def test_a_named_session_is_taken_over_in_its_own_process(sharded, speech48):
    async def run():
        first = LivePeer(sharded.base, speech48, options={"name": "stage-left"})
        await first.connect()
        await asyncio.sleep(0.5)
        second = LivePeer(sharded.base, speech48, options={"name": "stage-left"})
        await second.connect()
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=sharded.base, timeout=10) as client:
            by_name = await client.post("/v1/sessions/stage-left/interrupt")  # loopback, no token: by name
            old = await client.delete(f"/v1/sessions/{first.session_id}",
                                      headers={"X-Control-Token": first.control_token})
        await first.close(goodbye=False)
        await second.close()
        return first, second, by_name, old

    first, second, by_name, old = asyncio.run(run())
    assert shard_of_session(first.session_id) == shard_of_session(second.session_id)
    assert by_name.status_code == 204
    assert old.status_code == 404  # the takeover closed it


def test_websockets_pass_the_process_answers_through(sharded):
    async def run():
        peer = LivePeer(sharded.base, samples=np.zeros(RATE * 5, np.float32))
        answer = await peer.connect()
        base = sharded.base.replace("http", "ws", 1) + f"/v1/sessions/{answer['session_id']}"
        async with websockets.connect(f"{base}/audio?control_token={answer['control_token']}") as ws:
            error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            code = ws.close_code
        refused = await websocket_close_code(f"{base}/events?control_token=nope")
        await peer.close()
        return error, code, refused

    error, code, refused = asyncio.run(run())
    assert error["type"] == "error" and "microphone" in error["message"]
    assert code == 4400  # the session process's close code, not the router's
    assert refused == 4401


def test_an_oversized_upload_is_refused_before_it_is_buffered(sharded):
    answer = httpx.post(f"{sharded.base}/v1/avatars", content=b"\0" * (27 * 2**20),
                        headers={"Content-Type": "multipart/form-data; boundary=x"}, timeout=30)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "image_too_large"
    assert httpx.get(f"{sharded.base}/healthz").status_code == 200


def test_an_uploaded_avatar_serves_sessions_in_every_process(sharded, speech48):
    photo = media.save_png(media.stylise(media.grace_hopper(), "posterised"), "hopper-posterised-shards.png")
    with open(photo, "rb") as f:
        upload = httpx.post(f"{sharded.base}/v1/avatars", files={"file": ("hopper.png", f, "image/png")},
                            timeout=60)
    assert upload.status_code == 201, upload.text
    avatar_id = upload.json()["id"]
    assert avatar_id in [a["id"] for a in httpx.get(f"{sharded.base}/v1/avatars").json()["avatars"]]

    two_sessions_one_per_process(sharded.base, speech48, avatar_id)


def test_the_session_processes_log_to_the_servers_stderr_tagged_with_their_process(tmp_path, speech48):
    # The server points fd 2 at /dev/null (native libraries' chatter) and logs to a copy of it: a child that
    # inherited fd 2 logged into /dev/null, so nothing a session process said reached the operator.
    with run_server({"server": {"processes": 2, "data_dir": str(tmp_path)}}, args=["--log-level", "info"]) as srv:
        two_sessions_one_per_process(srv.base, speech48)
        wait_until(lambda: all(f"session_process=s{k}" in srv.log_text() for k in (0, 1)), 60, "both processes' logs")
    closed = [line for line in srv.log_text().splitlines() if "session closed" in line]
    assert {re.search(r"session_process=(s\d)", line).group(1) for line in closed} == {"s0", "s1"}, closed


def test_a_killed_process_is_started_again_and_stopping_the_server_stops_all(tmp_path, speech48):
    with run_server({"server": {"processes": 2, "data_dir": str(tmp_path)}}) as srv:
        children = children_of(srv.proc.pid)
        assert len(children) == 2
        victim = min(children)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: metric(srv.base, "emo_stream_session_process_restarts_total") == 1, 60, "a restart")
        wait_until(lambda: httpx.get(f"{srv.base}/healthz").status_code == 200, 60, "health")
        now = children_of(srv.proc.pid)
        assert len(now) == 2 and victim not in now
        two_sessions_one_per_process(srv.base, speech48)
        stop(srv)
        assert srv.proc.returncode is not None
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in now), 30, "the children to exit")
