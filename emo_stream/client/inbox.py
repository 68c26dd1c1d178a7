"""A bounded, single-loop queue of received items that a consumer drains at its own pace."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Inbox(Generic[T]):
    """Items in arrival order, at most ``capacity``: when full the oldest goes (``dropped`` counts them), so a
    consumer that falls behind or never reads costs memory for ``capacity`` items, not for the whole session.

    ``changed`` is set on every put and on close; several inboxes may share one, so a consumer can wait for
    whichever gets something first.
    """

    def __init__(self, capacity: int, changed: asyncio.Event | None = None) -> None:
        self.capacity = capacity
        self.changed = changed or asyncio.Event()
        self.dropped = 0
        self.closed = False
        self._items: deque[T] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> None:
        if self.closed:
            return
        if len(self._items) >= self.capacity:
            self._items.popleft()
            self.dropped += 1
        self._items.append(item)
        self.changed.set()

    def peek(self) -> T | None:
        return self._items[0] if self._items else None

    def pop(self) -> T:
        return self._items.popleft()

    def clear(self) -> int:
        """Drop everything queued; returns how many."""
        n = len(self._items)
        self._items.clear()
        return n

    def close(self) -> None:
        """No more items will come; what is queued can still be read."""
        self.closed = True
        self.changed.set()

    async def get(self) -> T | None:
        """The next item, or None once closed and drained."""
        while True:
            if self._items:
                return self._items.popleft()
            if self.closed:
                return None
            self.changed.clear()  # nothing queued: wait for the next put (checked again after every wake)
            await self.changed.wait()
