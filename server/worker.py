"""One InferenceWorker per device: a thread that owns the animator and serves all sessions.

Sessions hand it jobs through a bounded queue (``submit``); urgent jobs (interrupt, the first
idle frame after it) go to the front. Consecutive feed jobs of different sessions are run as
one ``feed_batch`` call or, for a backend that gains nothing from one (``batches_feeds = False``:
the lite animator), one after the other, each session's frames handed on as soon as they are made;
consecutive idle jobs are gathered into one ``idle_batch`` call only for a backend that batches.
Results go back to the asyncio loop with ``call_soon_threadsafe``: nothing here ever blocks the
loop, and nothing on the loop waits for this thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emo_stream.animators.base import Animator
from emo_stream.compositing import Background, composite
from emo_stream.types import AudioWindow, Avatar, Frame
from server.vad import SpeechGate, VoiceActivityDetector

logger = logging.getLogger(__name__)


@dataclass
class EngineSession:
    """A session's state on the worker thread: the animator's state and its VAD."""

    state: Any
    vad: VoiceActivityDetector | None
    gate: SpeechGate = field(default_factory=SpeechGate)
    background: Background = field(default_factory=Background)

    def picture(self, frame: Frame) -> Frame:
        """The frame as it is sent: composited on the session's background, here on the worker
        thread (a few ms per frame that must not run on the event loop)."""
        if self.background.kind == "original":
            return frame
        return Frame(rgb=composite(frame, self.background), pts=frame.pts)


@dataclass
class Job:
    """One unit of work for a session.

    kind: ``prepare`` (make the EngineSession), ``feed`` (a window), ``flush`` (end of input: the
    frames the animator's lookahead holds), ``idle`` (an idle frame at ``pts``), ``reset`` (drop
    what the animator holds).
    """

    session_id: str
    generation: int
    kind: str
    window: AudioWindow | None = None
    pts: int = 0
    avatar: Avatar | None = None
    seed: int = 0
    background: Background = field(default_factory=Background)
    vad_factory: Callable[[], VoiceActivityDetector] | None = None
    done: Callable[[Any], None] | None = None
    deadline: float = float("inf")  # perf_counter time after which a feed result is useless
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class FeedResult:
    frames: list[Frame]
    speaking: bool
    speech_probability: float
    animate_s: float
    vad_s: float
    queued_s: float
    generation: int = 0  # the job's: a session ignores results of windows it has since dropped


class WorkerOverloaded(Exception):
    pass


class InferenceWorker:
    """Owns the animator on its own thread; takes jobs of all sessions.

    Args:
        animator: the backend (one per device).
        loop: the asyncio loop results are delivered to.
        max_queue: bound of the job queue; ``submit`` refuses beyond it.
    """

    def __init__(self, animator: Animator, loop: asyncio.AbstractEventLoop, max_queue: int = 256) -> None:
        self.animator = animator
        self.loop = loop
        self.max_queue = max_queue
        self._jobs: deque[Job] = deque()
        self._cv = threading.Condition()
        self._sessions: dict[str, EngineSession] = {}
        self._generation: dict[str, int] = {}
        self._stopping = False
        self.busy_s = 0.0
        self.jobs_done = 0
        self.jobs_skipped = 0  # feed jobs past their deadline when their turn came
        self.last_batch = 0
        self._thread = threading.Thread(target=self._run, name="inference-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ loop side
    @property
    def queue_depth(self) -> int:
        return len(self._jobs)

    def submit(self, job: Job, urgent: bool = False) -> None:
        with self._cv:
            if not urgent and len(self._jobs) >= self.max_queue:
                raise WorkerOverloaded(f"worker queue full ({self.max_queue} jobs)")
            self._generation[job.session_id] = max(self._generation.get(job.session_id, 0), job.generation)
            if urgent:
                self._jobs.appendleft(job)
            else:
                self._jobs.append(job)
            self._cv.notify()

    def invalidate(self, session_id: str, generation: int) -> None:
        """Drop the session's queued jobs older than ``generation`` (barge-in)."""
        with self._cv:
            self._generation[session_id] = generation
            self._jobs = deque(j for j in self._jobs if j.session_id != session_id or j.generation >= generation)

    def drop_session(self, session_id: str) -> None:
        with self._cv:
            self._jobs = deque(j for j in self._jobs if j.session_id != session_id)
            self._generation.pop(session_id, None)
            self._jobs.append(Job(session_id=session_id, generation=-1, kind="forget"))
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ thread side
    def _deliver(self, job: Job, result: Any) -> None:
        if job.done is None or self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(job.done, result)
        except RuntimeError:  # loop closed meanwhile
            pass

    def _take(self) -> list[Job] | None:
        with self._cv:
            while not self._jobs and not self._stopping:
                self._cv.wait(timeout=0.5)
            if self._stopping:
                return None
            first = self._jobs.popleft()
            batch = [first]
            if first.kind == "feed" or (first.kind == "idle" and self.animator.batches_feeds):
                # Gather the next jobs of the same kind from other sessions into one batched call.
                seen = {first.session_id}
                keep: deque[Job] = deque()
                while self._jobs:
                    job = self._jobs.popleft()
                    if job.kind == first.kind and job.session_id not in seen:
                        batch.append(job)
                        seen.add(job.session_id)
                    else:
                        keep.append(job)
                        if job.kind != first.kind:
                            break
                self._jobs.extendleft(reversed(keep))
            return batch

    def _stale(self, job: Job) -> bool:
        return job.generation < self._generation.get(job.session_id, 0)

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            started = time.perf_counter()
            try:
                self._process(batch)
            except Exception:  # a bug must not kill the worker: log it, sessions fall back
                logger.exception("inference worker job failed")
            self.busy_s += time.perf_counter() - started
            self.jobs_done += len(batch)

    def _process(self, batch: list[Job]) -> None:
        first = batch[0]
        if first.kind == "forget":
            self._sessions.pop(first.session_id, None)
            return
        if first.kind == "prepare":
            if first.avatar is None:
                raise ValueError("a prepare job carries the session's avatar")
            state = self.animator.prepare(first.avatar, seed=first.seed)
            vad = first.vad_factory() if first.vad_factory else None
            self._sessions[first.session_id] = EngineSession(state=state, vad=vad, background=first.background)
            self._deliver(first, True)
            return
        if first.kind == "reset":
            engine = self._sessions.get(first.session_id)
            if engine is not None:
                self.animator.reset(engine.state)
                if engine.vad is not None:
                    engine.vad.reset()
                engine.gate.reset()
            self._deliver(first, True)
            return
        if first.kind == "flush":  # end of input: the frames the lookahead still holds
            engine = self._sessions.get(first.session_id)
            if engine is not None and not self._stale(first):
                frames = [engine.picture(f) for f in self.animator.flush(engine.state)]
                self._deliver(first, FeedResult(frames=frames, speaking=engine.gate.speaking, speech_probability=0.0,
                                                animate_s=0.0, vad_s=0.0, queued_s=0.0, generation=first.generation))
            return
        if first.kind == "idle":
            live = [(job, self._sessions[job.session_id]) for job in batch
                    if job.session_id in self._sessions and not self._stale(job)]
            if len(live) > 1:  # e.g. the emo backend samples one silent clip for all of them
                frames = self.animator.idle_batch([(engine.state, job.pts) for job, engine in live])
            else:
                frames = [self.animator.idle(engine.state, job.pts) for job, engine in live]
            for (job, engine), frame in zip(live, frames, strict=True):
                self._deliver(job, engine.picture(frame))
            return
        if self.animator.batches_feeds:
            self._feed(batch)
        else:  # nothing gained by one call (the CPU): each session's frames go out as soon as they are made
            for job in batch:
                self._feed([job])

    def _feed(self, batch: list[Job]) -> None:
        """VAD per window, then one animator call for the windows still worth animating."""
        items, jobs, vad_info = [], [], []
        now = time.perf_counter()
        for job in batch:
            engine = self._sessions.get(job.session_id)
            if engine is None or self._stale(job) or job.window is None:
                continue
            if job.deadline < now:
                self.jobs_skipped += 1
                continue
            t0 = time.perf_counter()
            heard = job.window
            prob = engine.vad.speech_probability(heard.samples) if engine.vad is not None else 1.0
            speaking = engine.gate.update(prob)
            window = AudioWindow(samples=heard.samples, sample_rate=heard.sample_rate,
                                 start_pts=heard.start_pts, is_speech=speaking)
            vad_info.append((speaking, prob, time.perf_counter() - t0))
            items.append((window, engine.state))
            jobs.append(job)
        if not items:
            return
        t0 = time.perf_counter()
        outputs = self.animator.feed_batch(items)
        animate_s = (time.perf_counter() - t0) / len(items)
        self.last_batch = len(items)
        for job, frames, (speaking, prob, vad_s) in zip(jobs, outputs, vad_info, strict=True):
            engine = self._sessions[job.session_id]
            frames = [engine.picture(f) for f in frames]
            self._deliver(job, FeedResult(frames=frames, speaking=speaking, speech_probability=prob,
                                          animate_s=animate_s, vad_s=vad_s, queued_s=t0 - job.submitted,
                                          generation=job.generation))
