"""Session processes: ``emo-stream serve`` children that each run the whole app for their own sessions.

One interpreter runs every session's peer, clock and encoder on one event loop and the animator on one
worker thread, all under one GIL: on 2 cores it holds 2 × 512² sessions on time, with a core to spare
(docs/benchmarks.md, "The server alone on two dedicated cores"). With ``server.processes`` > 1 the server
starts that many children, each the ordinary app (``create_app(shard=ShardRole(k, n))``) on a loopback socket
of its own, and routes requests to them (``server.router``): a session lives in one child from offer to
close, so nothing per frame crosses a process boundary. A child's session ids start with ``s<k>-``, which is
how the router finds it again.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

logger = logging.getLogger(__name__)

_SESSION_PREFIX = re.compile(r"^s(\d+)-")
START_TIMEOUT_S = 120.0  # a child loads the VAD and prepares the default avatar before it answers
# How a child is started, before its ``serve ...`` arguments (bench/face_replay.py puts itself here).
CHILD_COMMAND = [sys.executable, "-m", "server.cli"]


@dataclass(frozen=True)
class ShardRole:
    """This process is session process ``index`` of ``count``."""

    index: int
    count: int

    @property
    def name(self) -> str:
        """``s0``, ``s1``…: on its log lines and, with a dash, before its session ids."""
        return f"s{self.index}"

    @property
    def session_prefix(self) -> str:
        return f"{self.name}-"

    @classmethod
    def parse(cls, text: str) -> ShardRole:
        """``"K/N"`` (the hidden ``serve --shard`` argument)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard takes K/N, got {text!r}") from None
        if not 0 <= index < count:
            raise ValueError(f"--shard {text}: K must be in 0..N-1")
        return cls(index, count)


def shard_of_session(session_key: str) -> int | None:
    """The session process a session id names (None: not an id made by a session process, e.g. a name)."""
    match = _SESSION_PREFIX.match(session_key)
    return int(match.group(1)) if match else None


def _die_with_parent() -> None:
    # A child must not outlive a server that was killed without its shutdown (SIGKILL, OOM).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def single_threaded_kernels() -> None:
    """One thread for OpenCV's and torch's kernel pools in a session process: its siblings are the
    parallelism, and pools sized for the whole machine in every process only add handoffs."""
    import cv2
    import torch

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


@dataclass
class Shard:
    """One child process and the loopback address it serves on."""

    index: int
    port: int = 0
    process: subprocess.Popen | None = None
    restarts: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _log_stream() -> int | None:
    """Where a child's stderr goes: the server's own log stream. ``emo-stream serve`` points fd 2 at /dev/null
    (native libraries' chatter) and logs to a copy of it, which a child inheriting fd 2 would not see."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stderr without a file (a test's capture): fd 2
        return None


class ShardPool:
    """Starts, watches, restarts and stops the session processes.

    Args:
        count: how many children.
        serve_args: ``emo-stream serve`` arguments every child gets (config, data dir, log level ...);
            the pool adds ``--shard K/N --fd FD`` (a listening socket it opened, so no port can be taken
            between choosing it and binding it).
        env: the children's environment (the server token travels here, not on a command line).
    """

    def __init__(self, count: int, serve_args: list[str], env: dict[str, str] | None = None) -> None:
        if count < 2:
            raise ValueError("a pool of session processes needs at least 2")
        self.shards = [Shard(k) for k in range(count)]
        self._serve_args = list(serve_args)
        self._env = dict(os.environ if env is None else env)
        self._lock = threading.Lock()
        self._stopping = False

    @property
    def count(self) -> int:
        return len(self.shards)

    def _spawn(self, shard: Shard) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        try:
            shard.port = listener.getsockname()[1]
            fd = listener.fileno()
            cmd = [*CHILD_COMMAND, "serve", *self._serve_args,
                   "--shard", f"{shard.index}/{self.count}", "--fd", str(fd)]
            # Its own session: a terminal's Ctrl-C reaches the server only, which stops the children in
            # order (closing their sessions) instead of watching them die and starting them again.
            shard.process = subprocess.Popen(cmd, env=self._env, pass_fds=(fd,), preexec_fn=_die_with_parent,
                                             start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
                                             stderr=_log_stream())
        finally:
            listener.close()  # the child holds its own copy

    def _wait_ready(self, shard: Shard, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if not shard.alive:
                code = shard.process.returncode if shard.process else None
                raise RuntimeError(f"session process {shard.index} exited with code {code} while starting "
                                   "(its error is on stderr above)")
            try:
                if httpx.get(f"{shard.base_url}/healthz", timeout=2, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"session process {shard.index} did not answer within {timeout_s:.0f} s")
            time.sleep(0.1)

    # Spawning and waiting are apart: a child's parent-death signal follows the *thread* that spawned it
    # (PR_SET_PDEATHSIG), so the server spawns from its main thread and waits for health on a worker thread.

    def spawn_all(self) -> None:
        """Start every child (they start side by side; ``wait_ready`` waits for them)."""
        for shard in self.shards:
            self._spawn(shard)

    def wait_ready(self, indices: list[int] | None = None, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until the children ``indices`` (all when None) answer /healthz; stop the pool if one cannot."""
        try:
            for index in range(self.count) if indices is None else indices:
                self._wait_ready(self.shards[index], timeout_s)
        except BaseException:
            self.stop()
            raise

    def respawn_dead(self) -> list[int]:
        """Start again every child that exited (its sessions are gone); returns their indices (not yet ready)."""
        restarted: list[int] = []
        with self._lock:
            if self._stopping:
                return restarted
            for shard in self.shards:
                if shard.process is not None and not shard.alive:
                    logger.error("session process %d exited with code %s; starting it again (its sessions ended)",
                                 shard.index, shard.process.returncode)
                    shard.restarts += 1
                    self._spawn(shard)
                    restarted.append(shard.index)
        return restarted

    def wait_restarted(self, indices: list[int]) -> None:
        """Wait for restarted children; one that cannot start is logged (the watch tries again)."""
        for index in indices:
            try:
                self._wait_ready(self.shards[index], START_TIMEOUT_S)
            except RuntimeError as exc:
                logger.error("%s", exc)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ctrl-C every child (each closes its sessions), then kill what is left after ``timeout_s``."""
        with self._lock:
            self._stopping = True
        for shard in self.shards:
            if shard.process is not None and shard.alive:
                shard.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        for shard in self.shards:
            if shard.process is None:
                continue
            try:
                shard.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                shard.process.kill()
                shard.process.wait()
