"""The Animator contract every backend implements (docs/design.md, "Two backends, one interface").

``Animator`` is an abstract base class: the required methods are abstract, and every optional capability is
declared here with the default a backend without it gets. Callers use the capabilities directly, never probe
for them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from emo_stream.types import AudioWindow, Avatar, Frame


class AnimatorState(Protocol):
    """Per-session state: the prepared avatar, a seeded generator, what is in flight."""

    avatar: Avatar


StateT = TypeVar("StateT")


class Animator(ABC, Generic[StateT]):
    """Audio windows in, frames out, on one clock.

    ``latency_frames`` is the declared, constant lookahead: the frame for window ``n`` comes out
    when window ``n + latency_frames`` goes in, and ``flush`` returns the last ones. ``StateT`` is the
    backend's per-session state (what ``prepare`` returns).

    Attributes:
        latency_frames: the declared lookahead, in frames (set by the backend).
        fps: frames per second (set by the backend).
        size: output side in pixels (set by the backend).
        batches_feeds: False says ``feed_batch`` and ``idle_batch`` are no faster than ``feed`` and ``idle``
            one by one (a CPU backend), so a server feeds each session on its own, hands its frames on
            without waiting for the rest, and does not gather idle ticks of several sessions.
    """

    latency_frames: int
    fps: int
    size: int
    batches_feeds: bool = True

    # ------------------------------------------------------------------ required
    @abstractmethod
    def prepare(self, avatar: Avatar, seed: int = 0) -> StateT:
        """Once per session: per-portrait work is cached by ``avatar.cache_key``."""

    @abstractmethod
    def feed(self, window: AudioWindow, state: StateT) -> list[Frame]:
        """One window in; the frames that are now complete out (pts on the window's clock)."""

    @abstractmethod
    def idle(self, state: StateT, pts: int) -> Frame:
        """A frame of idle motion (breathing, blinks, sway) at ``pts``: for ticks with no audio."""

    @abstractmethod
    def flush(self, state: StateT) -> list[Frame]:
        """End of stream: the frames still held by the lookahead."""

    @abstractmethod
    def reset(self, state: StateT) -> None:
        """Barge-in: drop everything in flight; the next frames show idle motion."""

    # ------------------------------------------------------------------ optional, with defaults
    def feed_batch(self, items: list[tuple[AudioWindow, StateT]]) -> list[list[Frame]]:
        """Windows of many sessions in one call; equals calling ``feed`` one by one (the default does that)."""
        return [self.feed(window, state) for window, state in items]

    def idle_batch(self, items: list[tuple[StateT, int]]) -> list[Frame]:
        """``idle`` for many sessions in one call; the default calls ``idle`` one by one."""
        return [self.idle(state, pts) for state, pts in items]

    def warm(self, avatar: Avatar) -> None:
        """The per-portrait work ``prepare`` caches, done now, safely on any thread, so a server runs it
        beside the thread that feeds and ``prepare`` there stays short. Default: nothing to do."""

    @property
    def margin_ticks(self) -> int:
        """Ticks a live session must allow for one call of this backend (the server delays by at least this
        much). Default 0: no call is long enough to count."""
        return 0

    @property
    def renders_whole_video(self) -> bool:
        """True: an offline render calls ``whole_video`` once instead of feeding windows. Default False."""
        return False

    def whole_video(self, state: StateT, wave: np.ndarray) -> Iterator[Frame]:
        """Frames for all of ``wave`` (16 kHz) at once; called only when ``renders_whole_video`` is True."""
        raise NotImplementedError(f"{type(self).__name__} streams window by window (renders_whole_video is False)")

    def stats_dict(self) -> dict[str, Any]:
        """Counters for the metrics endpoint (numbers are exported as gauges). Default: none."""
        return {}

    def close(self) -> None:
        """Release what the backend holds when the server stops. Default: nothing to release."""


def check_avatar_size(avatar: Avatar, size: int) -> None:
    """An animator renders one size; an avatar prepared at another is a caller's mistake."""
    if avatar.size != size:
        raise ValueError(f"avatar is {avatar.size}px but the animator renders {size}px")
