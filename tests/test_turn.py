"""TURN, tested: a session whose only path is through coturn.

Three network namespaces: the client, the relay and the server. The relay namespace forwards nothing (Linux's
default), so no packet crosses between the client's and the server's links except through coturn, which
listens there. The server and a browser-like aiortc client both take their ICE servers from the server's
``server.ice_servers`` (the client through ``GET /v1/ice-servers``, as the web page does). Signalling goes over
a fourth link from the test to the server only, as out-of-band signalling does.

    client 10.77.1.1 --- 10.77.1.2 [relay: coturn on 10.77.2.2, no forwarding] 10.77.2.2 --- 10.77.2.1 server
                                                                               test 10.77.3.1 --- 10.77.3.2 server
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from emo_stream.errors import ConfigError
from server.ice_servers import IceServer, parse_ice_server
from tests import media
from tests.servers import free_port, write_config

pytestmark = pytest.mark.timeout(240)

TURN_USER, TURN_PASSWORD = "emo", "s3cret:pw"
TOKEN = "turn-t0ken"
FRAMES = 75  # three seconds of the portrait at 25 frames/s


def test_ice_server_urls_carry_turn_credentials_apart():
    assert parse_ice_server("stun:stun.example.org:3478") == IceServer("stun:stun.example.org:3478")
    assert parse_ice_server("turn:emo:s3cret%3Apw@10.0.0.2:3478?transport=udp") == \
        IceServer("turn:10.0.0.2:3478?transport=udp", "emo", "s3cret:pw")
    assert parse_ice_server("turns:u:p@turn.example.org").for_browser() == \
        {"urls": ["turns:turn.example.org"], "username": "u", "credential": "p"}
    for bad in ("turn:10.0.0.2:3478", "stun:u:p@host", "http://host", "turn:u:p@host:99999", ""):
        with pytest.raises(ConfigError):
            parse_ice_server(bad)


def _run(*args: str, ns: str | None = None) -> None:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def _netns_available() -> str | None:
    """Why the namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    if shutil.which("turnserver") is None:
        return "no coturn (`make test` installs the Debian package coturn)"
    return None


@pytest.fixture(scope="module")
def topology():
    reason = _netns_available()
    if reason:
        pytest.skip(f"TURN test skipped: {reason}")
    tag = f"e{os.getpid() % 100000}"
    client, relay, server = f"{tag}c", f"{tag}r", f"{tag}s"
    made: list[str] = []
    try:
        for ns in (client, relay, server):
            try:
                _run("ip", "netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"TURN test skipped: network namespaces cannot be made here "
                            f"({exc.stderr.decode(errors='replace').strip()[:200]})")
            made.append(ns)
            _run("ip", "link", "set", "lo", "up", ns=ns)
        links = [(f"{tag}cr", client, "10.77.1.1/24", f"{tag}rc", relay, "10.77.1.2/24"),
                 (f"{tag}sr", server, "10.77.2.1/24", f"{tag}rs", relay, "10.77.2.2/24"),
                 (f"{tag}th", None, "10.77.3.1/24", f"{tag}st", server, "10.77.3.2/24")]
        for a, ns_a, ip_a, b, ns_b, ip_b in links:
            _run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            for dev, ns, ip in ((a, ns_a, ip_a), (b, ns_b, ip_b)):
                if ns is not None:
                    _run("ip", "link", "set", dev, "netns", ns)
                _run("ip", "addr", "add", ip, "dev", dev, ns=ns)
                _run("ip", "link", "set", dev, "up", ns=ns)
        _run("ip", "route", "add", "default", "via", "10.77.1.2", ns=client)
        _run("ip", "route", "add", "10.77.1.0/24", "via", "10.77.2.2", ns=server)
        _run("sysctl", "-w", "net.ipv4.ip_forward=0", ns=relay)
        yield {"client": client, "relay": relay, "server": server}
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "delete", f"{tag}th"], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def coturn(topology, tmp_path_factory):
    log = tmp_path_factory.mktemp("coturn") / "turnserver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", topology["relay"], "turnserver", "-n", "--listening-ip=10.77.2.2",
             "--relay-ip=10.77.2.2", "--listening-port=3478", "--lt-cred-mech", f"--user={TURN_USER}:{TURN_PASSWORD}",
             "--realm=emo-stream.test", "--no-tls", "--no-dtls", "--no-cli", "--log-file=stdout",
             "--min-port=49152", "--max-port=49300", "--allowed-peer-ip=10.77.0.0-10.77.255.255"],
            stdout=out, stderr=subprocess.STDOUT)
    time.sleep(1.0)
    assert proc.poll() is None, log.read_text()[-2000:]
    yield log
    proc.terminate()
    proc.wait(timeout=15)


@pytest.fixture(scope="module")
def turn_server(topology, coturn):
    """emo-stream serve in the server namespace, its ICE server coturn (the URL with its credentials)."""
    config = write_config({"server": {"processes": 1, "ice_servers": [
        f"turn:{TURN_USER}:{TURN_PASSWORD.replace(':', '%3A')}@10.77.2.2:3478?transport=udp"]}})
    port = free_port()
    log = config.parent / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", topology["server"], sys.executable, "-m", "server.cli", "serve", "--config",
             str(config), "--host", "10.77.3.2", "--port", str(port), "--token", TOKEN, "--log-level", "warning"],
            cwd=media.REPO, env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://10.77.3.2:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1, trust_env=False).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)
    yield base
    proc.terminate()
    proc.wait(timeout=20)


CLIENT = r"""
import asyncio, json, sys, time
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

async def main():
    servers = json.loads(sys.argv[1])
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[
        RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")) for s in servers]))
    pc.addTransceiver("audio", direction="recvonly")
    pc.addTransceiver("video", direction="recvonly")
    frames = []

    @pc.on("track")
    def on_track(track):
        async def read():
            while True:
                try:
                    await track.recv()
                except MediaStreamError:
                    return
                if track.kind == "video":
                    frames.append(time.monotonic())
        asyncio.ensure_future(read())

    await pc.setLocalDescription(await pc.createOffer())
    print(json.dumps({"sdp": pc.localDescription.sdp, "type": "offer"}), flush=True)
    answer = json.loads(await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
    started = time.monotonic()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
    # Until enough frames came through, within a deadline: a busy machine connects later, not never.
    want, deadline = int(sys.argv[2]), started + float(sys.argv[3])
    while len(frames) < want and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    connection = pc.getTransceivers()[0].sender.transport.transport._connection
    pair = connection._nominated.get(1)
    print(json.dumps({"frames": len(frames), "state": pc.connectionState,
                      "first_frame_s": round(frames[0] - started, 2) if frames else None,
                      "seconds": round(time.monotonic() - started, 2),
                      "local": pair.local_candidate.type if pair else None,
                      "remote": pair.remote_candidate.type if pair else None,
                      "local_host": pair.local_candidate.host if pair else None,
                      "remote_host": pair.remote_candidate.host if pair else None}), flush=True)
    await pc.close()

asyncio.run(main())
"""


def test_a_session_holds_through_turn_alone(topology, turn_server, coturn):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ice = httpx.get(f"{turn_server}/v1/ice-servers", headers=auth, trust_env=False).json()["ice_servers"]
    assert ice == [{"urls": ["turn:10.77.2.2:3478?transport=udp"], "username": TURN_USER,
                    "credential": TURN_PASSWORD}]
    client = subprocess.Popen(["ip", "netns", "exec", topology["client"], sys.executable, "-c", CLIENT,
                               json.dumps(ice), str(FRAMES), "60"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=media.REPO)
    try:
        offer = {**json.loads(client.stdout.readline()), "options": {"audio_source": "pcm"}}
        answer = httpx.post(f"{turn_server}/v1/sessions", json=offer, headers=auth, timeout=60, trust_env=False)
        assert answer.status_code == 201, answer.text
        client.stdin.write(json.dumps(answer.json()) + "\n")
        client.stdin.flush()
        line = client.stdout.readline()
        assert line, client.stderr.read()[-3000:]
        result = json.loads(line)
    finally:
        client.kill()
        client.wait(timeout=10)
    assert result["state"] == "connected", result
    # The pair in use has a TURN allocation on coturn at one end: the client's own (then it may send to the
    # server's host address, which coturn reaches), or the server's, which the client sends to. Which pair ICE
    # nominates varies from run to run.
    relayed = [side for side in ("local", "remote") if result[side] == "relay"]
    assert relayed and all(result[f"{side}_host"] == "10.77.2.2" for side in relayed), result
    assert result["frames"] >= FRAMES, result  # and the portrait streams through it


REACH = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
    print("connected")
except ConnectionRefusedError:
    print("refused")  # the host answered: there is a path
except OSError:
    print("no path")
"""


def test_without_turn_there_is_no_path(topology, coturn):
    """The topology itself: the client cannot reach the server's link (the relay forwards nothing), only coturn."""
    def reach(host: str, port: int) -> str:
        return subprocess.run(["ip", "netns", "exec", topology["client"], sys.executable, "-c", REACH, host,
                               str(port)], capture_output=True, text=True, timeout=30).stdout.strip()

    assert reach("10.77.2.1", 9) == "no path"  # the server's address on the relay's far link
    assert reach("10.77.2.2", 3478) == "connected"  # coturn (it listens on TCP too)
