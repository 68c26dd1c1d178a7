"""The Animator protocol every backend implements (docs/design.md, "Two backends, one interface")."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from emo_stream.types import AudioWindow, Avatar, Frame


class AnimatorState(Protocol):
    """Per-session state: the prepared avatar, a seeded generator, what is in flight."""

    avatar: Avatar


@runtime_checkable
class Animator(Protocol):
    """Audio windows in, frames out, on one clock.

    ``latency_frames`` is the declared, constant lookahead: the frame for window ``n`` comes out
    when window ``n + latency_frames`` goes in, and ``flush`` returns the last ones.
    """

    latency_frames: int
    fps: int
    size: int

    def prepare(self, avatar: Avatar, seed: int = 0) -> AnimatorState:
        """Once per session: per-portrait work is cached by ``avatar.cache_key``."""
        ...

    # Optional: ``batches_feeds = False`` says ``feed_batch`` is no faster than ``feed`` one by one (a CPU
    # backend), so a server feeds each session on its own and hands its frames on without waiting for the rest.
    # Optional: ``warm(avatar)`` does the per-portrait work ``prepare`` caches, safely on any thread, so
    # a server runs it beside the thread that feeds and ``prepare`` there stays short.

    def feed(self, window: AudioWindow, state: AnimatorState) -> list[Frame]:
        """One window in; the frames that are now complete out (pts on the window's clock)."""
        ...

    def feed_batch(self, items: list[tuple[AudioWindow, AnimatorState]]) -> list[list[Frame]]:
        """Windows of many sessions in one call; equals calling ``feed`` one by one."""
        ...

    def idle(self, state: AnimatorState, pts: int) -> Frame:
        """A frame of idle motion (breathing, blinks, sway) at ``pts``: for ticks with no audio."""
        ...

    def flush(self, state: AnimatorState) -> list[Frame]:
        """End of stream: the frames still held by the lookahead."""
        ...

    def reset(self, state: AnimatorState) -> None:
        """Barge-in: drop everything in flight; the next frames show idle motion."""
        ...


def check_avatar_size(avatar: Avatar, size: int) -> None:
    """An animator renders one size; an avatar prepared at another is a caller's mistake."""
    if avatar.size != size:
        raise ValueError(f"avatar is {avatar.size}px but the animator renders {size}px")
