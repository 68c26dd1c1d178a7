"""Portrait preparation (decode, face search, crop) in a low-priority process of its own.

A large photo costs seconds of CPU (the tiled face search). Done in a session process's thread, that time
came out of the live sessions' ticks. Here it runs in one spawned worker process at nice 10: on a busy
machine the sessions outrank it, and its native threads are one, so it never takes more than a core.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
from concurrent.futures.process import BrokenProcessPool

from emo_stream.avatar import AvatarLimits, prepare_avatar
from emo_stream.errors import ImageError
from emo_stream.types import Avatar

NICENESS = 10


def _low_priority_worker() -> None:
    os.nice(NICENESS)
    import cv2

    cv2.setNumThreads(1)


class PortraitPool:
    """``prepare(data, size, limits, name)`` in the worker process, started on first use and kept.

    Safe to call from several threads (each call waits for its own result).
    """

    def __init__(self) -> None:
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                # spawn, not fork: the server has threads (aiortc, the worker) that a fork would copy mid-state.
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                    initializer=_low_priority_worker)
            return self._pool

    def prepare(self, data: bytes, size: int, limits: AvatarLimits, name: str = "") -> Avatar:
        """``emo_stream.avatar.prepare_avatar`` in the worker process.

        Raises:
            The ImageError subclasses of ``prepare_avatar``; ImageError when the worker died on this photo
            (it is started again for the next one).
        """
        try:
            return self._executor().submit(prepare_avatar, data, size, limits, name).result()
        except BrokenProcessPool:
            with self._lock:
                self._pool = None
            raise ImageError("preparing this photo stopped its worker process (out of memory?); try a smaller "
                             "photo") from None

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
