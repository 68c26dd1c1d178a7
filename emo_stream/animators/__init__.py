"""Animators: audio windows in, portrait frames out. ``lite`` (CPU warp) and ``emo`` (diffusion)."""

from __future__ import annotations

from emo_stream.animators.base import Animator, AnimatorState
from emo_stream.errors import UnknownBackendError

BACKENDS = ("lite", "emo")


def create_animator(backend: str = "lite", *, size: int = 512, fps: int = 25, motion: float = 1.0,
                    checkpoint: str | None = None, device: str = "cpu") -> Animator:
    """Make the animator for ``backend``; the emo backend is imported only when asked for."""
    if backend == "lite":
        from emo_stream.animators.lite import LiteAnimator

        return LiteAnimator(size=size, fps=fps, motion=motion)
    if backend == "emo":
        from emo_stream.animators.emo import EmoAnimator  # torch: imported only here

        return EmoAnimator.from_checkpoint(checkpoint, size=size, fps=fps, device=device)
    raise UnknownBackendError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


__all__ = ["Animator", "AnimatorState", "create_animator", "BACKENDS"]
