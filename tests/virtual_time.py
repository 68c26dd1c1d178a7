"""An asyncio event loop on a virtual clock: timing logic tested with no sleeps and no real time.

``loop.time()`` is a number the test owns. Whenever the loop has nothing ready to run and would wait for its
next timer, the clock jumps to that timer instead, so ``await asyncio.sleep(3600)`` returns at once with the
clock an hour later, and timers fire in the order and at the times they were scheduled for. ``advance`` moves
the clock by hand: a callback that "took" that long, a machine that stalled. Nothing here depends on how busy
the real machine is.

Only for code that waits on the loop's timers; a wait on a thread or a socket is a real wait.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.BaseSelector):
    """The default selector, except that a wait for a timer moves the virtual clock instead of sleeping."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._real = selectors.DefaultSelector()

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:  # no timer at all: only I/O (a thread's wake-up) can come, so really wait for it
            return self._real.select(None)
        ready = self._real.select(0)
        if not ready and timeout > 0:
            self._loop.advance(timeout)
        return ready

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual, starting at ``start_s``."""

    def __init__(self, start_s: float = 1000.0) -> None:
        self.now = start_s
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` on (never back)."""
        if seconds < 0:
            raise ValueError("a virtual clock does not go back")
        self.now += seconds


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``asyncio.run(main())`` on a fresh ``VirtualTimeLoop``."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(main())


def virtual_loop() -> VirtualTimeLoop:
    """The running loop, which must be a ``VirtualTimeLoop`` (inside ``run_virtual``)."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop), loop
    return loop
