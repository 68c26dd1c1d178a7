"""The minimal app: health, the bundled avatar, JSON errors; and `emo-stream serve` really serving."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
from fastapi.testclient import TestClient

from emo_stream.avatar import prepare_avatar
from server.app import create_app, default_portrait_bytes
from tests.media import REPO


def test_healthz_and_json_errors():
    client = TestClient(create_app())
    assert client.get("/healthz").json() == {"status": "ok"}
    missing = client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


def test_bundled_default_avatar_is_listed_and_has_a_face():
    client = TestClient(create_app())
    ids = [a["id"] for a in client.get("/v1/avatars").json()["avatars"]]
    assert "default" in ids
    avatar = prepare_avatar(default_portrait_bytes(), size=128)
    assert avatar.faces == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_command_answers_healthz():
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--config", str(REPO / "configs/default.yaml"),
                             "--port", str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # (a busy machine starts a server slowly)
        while True:
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert answer.status_code == 200 and answer.json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
