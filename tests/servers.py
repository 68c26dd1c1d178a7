"""Run the real server in a subprocess for tests: loopback, a free port, a config of the test's own."""

from __future__ import annotations

import contextlib
import os
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


@contextlib.contextmanager
def run_server(config: dict | None = None, args: list[str] = (), scheme: str = "http",
               env: dict | None = None, verify: bool | str = True) -> Iterator[RunningServer]:
    """Start ``emo-stream serve`` with configs/tiny.yaml updated by ``config``; stop it after."""
    base_config = yaml.safe_load((media.REPO / "configs" / "tiny.yaml").read_text())
    for section, values in (config or {}).items():
        base_config.setdefault(section, {}).update(values)
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="emo-stream-server-"))
    config_path = folder / "config.yaml"
    config_path.write_text(yaml.safe_dump(base_config))
    log = folder / "server.log"
    process_env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", **(env or {}))
    with open(log, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--config", str(config_path),
                                 "--port", str(port), "--log-level", "warning", *args],
                                cwd=media.REPO, env=process_env, stdout=log_file, stderr=subprocess.STDOUT)
    base = f"{scheme}://127.0.0.1:{port}"
    server = RunningServer(base=base, port=port, proc=proc, log=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1, verify=verify).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {server.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {server.log_text()}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
