"""Run the real server in a subprocess for tests: loopback, a free port, a config of the test's own."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

from tests import media

# The server's interpreter: this one, or the main environment's when the agent tests run from theirs.
SERVER_PYTHON = os.environ.get("EMO_STREAM_SERVER_PYTHON") or sys.executable


def metric(base: str, name: str) -> float:
    """One sample of the server's /metrics (0 when it is not there)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def children_of(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    base: str
    port: int
    proc: subprocess.Popen
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def write_config(config: dict | None = None) -> Path:
    """configs/tiny.yaml updated section by section with ``config``, in a fresh temporary file."""
    merged = yaml.safe_load((media.REPO / "configs" / "tiny.yaml").read_text())
    for section, values in (config or {}).items():
        merged.setdefault(section, {}).update(values)
    path = Path(tempfile.mkdtemp(prefix="emo-stream-server-")) / "config.yaml"
    path.write_text(yaml.safe_dump(merged))
    return path


def start(port: int, config_path: Path, args: list[str] | tuple[str, ...] = (), scheme: str = "http",
          env: dict | None = None, verify: bool | str = True, timeout_s: float = 180) -> RunningServer:
    """``emo-stream serve`` on 127.0.0.1:``port``; returns once /healthz answers."""
    log = config_path.parent / f"server-{port}.log"
    process_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    with open(log, "w") as log_file:
        proc = subprocess.Popen([SERVER_PYTHON, "-m", "server.cli", "serve", "--config", str(config_path),
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *args],
                                cwd=media.REPO, env=process_env, stdout=log_file, stderr=subprocess.STDOUT)
    server = RunningServer(base=f"{scheme}://127.0.0.1:{port}", port=port, proc=proc, log=log)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{server.base}/healthz", timeout=1, verify=verify).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {server.log_text()[-3000:]}")
        if time.monotonic() > deadline:
            stop(server)
            raise RuntimeError(f"server did not start: {server.log_text()[-3000:]}")
        time.sleep(0.2)


def stop(server: RunningServer) -> None:
    """Ctrl-C, as an operator would; kill after 15 s."""
    proc = server.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def run_server(config: dict | None = None, args: list[str] | tuple[str, ...] = (), scheme: str = "http",
               env: dict | None = None, verify: bool | str = True,
               config_path: Path | None = None) -> Iterator[RunningServer]:
    """A server with configs/tiny.yaml updated by ``config`` (or ``config_path``), stopped after."""
    server = start(free_port(), config_path or write_config(config), args, scheme, env, verify)
    try:
        yield server
    finally:
        stop(server)
