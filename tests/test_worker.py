"""The InferenceWorker on its own: batching, deadlines, barge-in, idle batches — with a fake animator."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np

from emo_stream.animators.base import Animator
from emo_stream.types import AudioWindow, Avatar, FaceLandmarks, Frame
from server.worker import InferenceWorker, Job


class RecordingAnimator(Animator[dict]):
    """Counts calls; each window becomes one frame at its pts (no lookahead)."""

    latency_frames = 0
    fps = 25
    size = 4

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.idle_batches: list[int] = []
        self.resets = 0
        self.delay_s = delay_s
        # The first feed_batch says it has begun (``entered``) and then waits for ``gate``, if the test closed it.
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def prepare(self, avatar: Avatar, seed: int = 0) -> dict:
        return {"seed": seed}

    def feed(self, window: AudioWindow, state: dict) -> list[Frame]:
        return [Frame(rgb=np.zeros((4, 4, 3), np.uint8), pts=window.start_pts)]

    def feed_batch(self, items: list[tuple[AudioWindow, dict]]) -> list[list[Frame]]:
        self.batches.append(len(items))
        self.entered.set()
        assert self.gate.wait(10), "the test never opened the gate"
        time.sleep(self.delay_s)
        return super().feed_batch(items)

    def idle(self, state: dict, pts: int) -> Frame:
        return Frame(rgb=np.zeros((4, 4, 3), np.uint8), pts=pts)

    def idle_batch(self, items: list[tuple[dict, int]]) -> list[Frame]:
        self.idle_batches.append(len(items))
        return super().idle_batch(items)

    def flush(self, state: dict) -> list[Frame]:
        return []  # nothing is ever held

    def reset(self, state: dict) -> None:
        self.resets += 1


def _avatar() -> Avatar:
    points = np.zeros((478, 3), np.float32)
    return Avatar(image=np.zeros((8, 8, 3), np.uint8), landmarks=FaceLandmarks(points=points, image_size=(8, 8)),
                  cache_key="worker", source_size=(8, 8))


def _window(pts: int) -> AudioWindow:
    return AudioWindow(samples=np.zeros(640, np.float32), sample_rate=16_000, start_pts=pts)


def _run(animator, jobs_for):
    """Prepare sessions a, b and c, hand the worker ``jobs_for``'s jobs, and wait until it has done them all."""

    async def main():
        loop = asyncio.get_running_loop()
        worker = InferenceWorker(animator, loop)
        results: list = []
        prepared = [loop.create_future() for _ in range(3)]
        for sid, future in zip(("a", "b", "c"), prepared, strict=True):
            worker.submit(Job(session_id=sid, generation=0, kind="prepare", avatar=_avatar(), done=future.set_result))
        await asyncio.wait_for(asyncio.gather(*prepared), 30)
        jobs_for(worker, results)
        # A job of another kind queued after them (never batched with them): when it is done, so are they, and
        # their results, handed to the loop before its own, are in.
        drained = loop.create_future()
        worker.submit(Job(session_id="drain", generation=0, kind="reset", done=drained.set_result))
        await asyncio.wait_for(drained, 30)
        worker.stop()
        return results

    return asyncio.run(main())


def test_feed_jobs_of_several_sessions_share_one_batch():
    animator = RecordingAnimator()
    animator.gate.clear()

    def jobs(worker, results):
        worker.submit(Job(session_id="a", generation=0, kind="feed", window=_window(0), done=results.append))
        # while "a" is being animated, three more arrive: one window of each session, one batch
        assert animator.entered.wait(10)
        for sid in ("b", "c", "a"):
            worker.submit(Job(session_id=sid, generation=0, kind="feed", window=_window(3600), done=results.append))
        animator.gate.set()

    results = _run(animator, jobs)
    assert len(results) == 4
    assert animator.batches == [1, 3]


def test_late_windows_are_skipped_and_stale_generations_dropped():
    animator = RecordingAnimator()

    def jobs(worker, results):
        with worker._cv:  # all queued before the worker wakes: b's window is still queued when it is invalidated
            worker.submit(Job(session_id="a", generation=0, kind="feed", window=_window(0), done=results.append,
                              deadline=time.perf_counter() - 1))
            worker.submit(Job(session_id="b", generation=0, kind="feed", window=_window(0), done=results.append))
            worker.invalidate("b", 1)  # barge-in: b's queued window is dropped
            worker.submit(Job(session_id="c", generation=0, kind="feed", window=_window(0), done=results.append))

    results = _run(animator, jobs)
    assert len(results) == 1  # only c's window was animated
    assert sum(animator.batches) == 1


def test_idle_jobs_batch_when_the_backend_can():
    animator = RecordingAnimator()

    def jobs(worker, results):
        with worker._cv:  # queue all three before the worker wakes, as three sessions' ticks would
            for sid in ("a", "b", "c"):
                worker._jobs.append(Job(session_id=sid, generation=0, kind="idle", pts=7200, done=results.append))
            worker._cv.notify()

    results = _run(animator, jobs)
    assert len(results) == 3 and all(f.pts == 7200 for f in results)
    assert animator.idle_batches == [3]


class OneByOneAnimator(RecordingAnimator):
    """A CPU backend: ``feed_batch`` gains nothing over ``feed``; records when each window's frames are made."""

    batches_feeds = False

    def __init__(self, delay_s: float) -> None:
        super().__init__(delay_s)
        self.made: dict[int, float] = {}
        self.first_delivered = threading.Event()

    def feed_batch(self, items: list[tuple[AudioWindow, dict]]) -> list[list[Frame]]:
        if items[0][0].start_pts == 2:  # the last session's window waits (a while at most) for the first's frame
            self.first_delivered.wait(10)
        frames = super().feed_batch(items)
        for window, _ in items:
            self.made[window.start_pts] = time.perf_counter()
        return frames


def test_a_backend_without_batching_hands_each_sessions_frames_on_at_once():
    animator = OneByOneAnimator(delay_s=0.05)
    delivered: dict[int, float] = {}

    def done(result):
        delivered[result.frames[0].pts] = time.perf_counter()
        if result.frames[0].pts == 0:
            animator.first_delivered.set()

    def jobs(worker, results):
        with worker._cv:  # three sessions' windows queued together, as one tick's would be
            for k, sid in enumerate(("a", "b", "c")):
                worker._jobs.append(Job(session_id=sid, generation=0, kind="feed", window=_window(k), done=done))
            worker._cv.notify()

    _run(animator, jobs)
    assert animator.batches == [1, 1, 1]
    assert sorted(delivered) == [0, 1, 2]
    # The first session's frame reached the loop before the last session's was made, not after the whole round.
    assert delivered[0] < animator.made[2]


def test_idle_jobs_of_a_backend_without_batching_go_one_by_one():
    animator = OneByOneAnimator(delay_s=0.0)

    def jobs(worker, results):
        with worker._cv:  # three sessions' ticks queued together, as in the batching test
            for sid in ("a", "b", "c"):
                worker._jobs.append(Job(session_id=sid, generation=0, kind="idle", pts=7200, done=results.append))
            worker._cv.notify()

    results = _run(animator, jobs)
    assert len(results) == 3 and all(f.pts == 7200 for f in results)
    assert animator.idle_batches == []  # each tick's frame by ``idle`` on its own, handed on as it is made
