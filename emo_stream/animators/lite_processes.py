"""The lite animator in render processes: the sessions of one tick animate in parallel, outside the GIL.

Why: in the live server the lite render shares one interpreter with aiortc's encoders, the tracks and the
event loop. On 2 cores given to the server alone (16-core machine, ``bench/server.py --server-cpus 0,1``),
4 sessions at 512² kept the cores only ~75 % busy while the worker's queue grew to 30–70 ms and the render
of a window took twice its unloaded time; render *threads* gained nothing (the GIL). Here each process owns
the ``LiteState`` of its sessions (assigned to the least loaded process at ``prepare``) and the parent only
holds handles; frames come back pickled over a pipe (~1 MB per 512² frame: well under a millisecond). The
avatar's rig (face mesh, person matte: mediapipe) is built once, here, and sent to each process that needs it.

Calls come from one thread (the server's inference worker), like any animator's; a batch sends every
process its part before it waits for any reply, so the processes work side by side. Errors raised in a
process come back as the same built-in type where there is one (``ValueError`` for a wrong sample rate);
a process that died raises ``RenderProcessError``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import threading
from dataclasses import dataclass
from typing import Any

from emo_stream.animators.lite import LiteAnimator
from emo_stream.types import AudioWindow, Avatar, Frame

START_TIMEOUT_S = 60.0  # a spawned process imports NumPy and OpenCV before it answers
BUILTIN_ERRORS = {"ValueError": ValueError, "KeyError": KeyError, "TypeError": TypeError}


class RenderProcessError(RuntimeError):
    """A render process exited or stopped answering."""


@dataclass
class ProcessState:
    """A session's handle: its avatar, the process that holds its ``LiteState`` and its key there."""

    avatar: Avatar
    process: int
    key: int


class LiteProcessAnimator:
    """``LiteAnimator`` (same arguments, same frames) spread over ``processes`` render processes."""

    name = "lite"

    def __init__(self, size: int = 512, fps: int = 25, motion: float = 1.0, processes: int = 2) -> None:
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.size, self.fps, self.motion = size, fps, motion
        context = multiprocessing.get_context("spawn")  # fork would copy the server's threads' locks
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[Any] = []
        for index in range(processes):
            parent, child = context.Pipe()
            proc = context.Process(target=_serve, args=(child, size, fps, motion), name=f"lite-render-{index}",
                                   daemon=True)
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._lock = threading.Lock()  # one caller at a time: replies are matched to requests by order
        try:
            latencies = {self._receive(index, timeout=START_TIMEOUT_S) for index in range(processes)}
        except Exception:
            self.close()  # none left running behind a failed start
            raise
        self.latency_frames = latencies.pop()
        # Sessions per avatar cache key in each process (a process keeps an avatar while a session uses it).
        self._avatars: list[dict[str, int]] = [{} for _ in range(processes)]
        self._rigs = LiteAnimator(size=size, fps=fps, motion=motion)  # builds and caches rigs; never renders here
        self._next_key = 0

    @property
    def processes(self) -> int:
        return len(self._procs)

    # ------------------------------------------------------------------ the Animator protocol
    def prepare(self, avatar: Avatar, seed: int = 0) -> ProcessState:
        if avatar.size != self.size:
            raise ValueError(f"avatar is {avatar.size}px but the animator renders {self.size}px")
        with self._lock:
            if not self._procs:
                raise RenderProcessError("the lite render processes were closed")
            index = min(range(self.processes), key=lambda i: sum(self._avatars[i].values()))  # least loaded
            key = self._next_key
            self._next_key += 1
            # The avatar and its rig travel once per process; later sessions name them by the cache key.
            if avatar.cache_key in self._avatars[index]:
                self._call(index, ("prepare", key, avatar.cache_key, None, seed))
            else:
                self._call(index, ("prepare", key, avatar, self._rigs.rig(avatar), seed))
            users = self._avatars[index]
            users[avatar.cache_key] = users.get(avatar.cache_key, 0) + 1
        return ProcessState(avatar=avatar, process=index, key=key)

    def feed(self, window: AudioWindow, state: ProcessState) -> list[Frame]:
        return self.feed_batch([(window, state)])[0]

    def feed_batch(self, items: list[tuple[AudioWindow, ProcessState]]) -> list[list[Frame]]:
        return self._scatter("feed", [(state, window) for window, state in items])

    def idle(self, state: ProcessState, pts: int) -> Frame:
        return self.idle_batch([(state, pts)])[0]

    def idle_batch(self, items: list[tuple[ProcessState, int]]) -> list[Frame]:
        return self._scatter("idle", items)

    def flush(self, state: ProcessState) -> list[Frame]:
        with self._lock:
            return self._call(state.process, ("flush", state.key))

    def reset(self, state: ProcessState) -> None:
        with self._lock:
            self._call(state.process, ("reset", state.key))

    def release(self, state: ProcessState) -> None:
        """The session ended: its process drops the ``LiteState``."""
        with self._lock:
            self._call(state.process, ("release", state.key))
            users = self._avatars[state.process]
            users[state.avatar.cache_key] -= 1
            if not users[state.avatar.cache_key]:
                del users[state.avatar.cache_key]

    def close(self) -> None:
        """Stop the render processes (idempotent)."""
        with self._lock:
            for conn, proc in zip(self._conns, self._procs, strict=True):
                try:
                    conn.send(("stop",))
                except (OSError, ValueError):
                    pass
                proc.join(timeout=5)
                if proc.is_alive():
                    proc.kill()
                    proc.join(timeout=5)
                conn.close()
            self._conns, self._procs = [], []

    # ------------------------------------------------------------------ plumbing
    def _scatter(self, op: str, items: list[tuple[ProcessState, Any]]) -> list[Any]:
        """Send each process its share of ``items`` at once, then gather the replies in ``items``' order."""
        shares: dict[int, list[int]] = {}
        for position, (state, _) in enumerate(items):
            shares.setdefault(state.process, []).append(position)
        results: list[Any] = [None] * len(items)
        with self._lock:
            for index, positions in shares.items():
                self._send(index, (op, [(items[p][0].key, items[p][1]) for p in positions]))
            error: Exception | None = None
            for index, positions in shares.items():  # every reply is read, even after an error
                try:
                    for position, result in zip(positions, self._receive(index), strict=True):
                        results[position] = result
                except Exception as exc:  # noqa: BLE001 - re-raised below, once all pipes are drained
                    error = error or exc
            if error is not None:
                raise error
        return results

    def _call(self, index: int, message: tuple) -> Any:
        self._send(index, message)
        return self._receive(index)

    def _send(self, index: int, message: tuple) -> None:
        try:
            self._conns[index].send(message)
        except (OSError, ValueError, IndexError):
            raise RenderProcessError(f"lite render process {index} is not running") from None

    def _receive(self, index: int, timeout: float | None = None) -> Any:
        conn = self._conns[index]
        try:
            if timeout is not None and not conn.poll(timeout):
                raise RenderProcessError(f"lite render process {index} did not start within {timeout:.0f} s")
            reply = conn.recv()
        except (EOFError, OSError):
            raise RenderProcessError(f"lite render process {index} exited") from None
        if reply[0] == "ok":
            return reply[1]
        _, kind, message = reply
        raise BUILTIN_ERRORS.get(kind, RenderProcessError)(message)


def _serve(conn: multiprocessing.connection.Connection, size: int, fps: int, motion: float) -> None:
    """A render process: a ``LiteAnimator`` and the states of its sessions, driven over ``conn``."""
    animator = LiteAnimator(size=size, fps=fps, motion=motion)
    avatars: dict[str, tuple[Avatar, Any]] = {}  # cache key -> the avatar and its rig
    states: dict[int, Any] = {}
    conn.send(("ok", animator.latency_frames))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        op = message[0]
        if op == "stop":
            return
        try:
            if op == "prepare":
                _, key, avatar, rig, seed = message
                if isinstance(avatar, str):
                    avatar, rig = avatars[avatar]
                avatars[avatar.cache_key] = (avatar, rig)
                states[key] = animator.prepare(avatar, seed=seed, rig=rig)
                result: Any = None
            elif op == "feed":
                result = [animator.feed(window, states[key]) for key, window in message[1]]
            elif op == "idle":
                result = [animator.idle(states[key], pts) for key, pts in message[1]]
            elif op == "flush":
                result = animator.flush(states[message[1]])
            elif op == "reset":
                result = animator.reset(states[message[1]])
            elif op == "release":
                states.pop(message[1], None)
                in_use = {state.avatar.cache_key for state in states.values()}
                for cache_key in [k for k in avatars if k not in in_use]:
                    avatars.pop(cache_key)  # the parent sends it again if a session needs it
                result = None
            else:
                raise ValueError(f"unknown render request {op!r}")
            conn.send(("ok", result))
        except Exception as exc:  # noqa: BLE001 - the parent raises it; this process serves on
            conn.send(("error", type(exc).__name__, str(exc)))
