"""Animators: audio windows in, portrait frames out. ``lite`` (CPU warp) and ``emo`` (diffusion)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emo_stream.animators.base import Animator, AnimatorState
from emo_stream.errors import CheckpointError, UnknownBackendError

BACKENDS = ("lite", "emo")


def check_checkpoint_folder(checkpoint: str | Path | None) -> Path:
    """The emo backend's checkpoint folder, checked before any model code is imported.

    Raises:
        CheckpointError: none given, not a folder, or no ``model_index.json`` in it.
    """
    if checkpoint is None:
        raise CheckpointError("the emo backend needs a checkpoint folder: pass --checkpoint DIR "
                              "(or animator.checkpoint in the config)")
    folder = Path(checkpoint).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    if not (folder / "model_index.json").is_file():
        raise CheckpointError(f"{folder} is not a checkpoint folder (no model_index.json)")
    return folder


def create_animator(backend: str = "lite", *, size: int = 512, fps: int = 25, motion: float = 1.0,
                    lite_motion: str = "learned", checkpoint: str | None = None, device: str = "cpu",
                    **emo_options: Any) -> Animator[Any]:
    """Make the animator for ``backend``; the emo backend is imported only when asked for.

    ``lite_motion`` (``learned`` or ``rules``) picks the lite animator's motion, and the emo backend's lite
    fallback's. ``emo_options`` go to ``EmoAnimator.from_checkpoint`` (e.g. ``decoder="vae", realtime=False`` for
    offline renders); the lite backend takes none.
    """
    if backend == "lite":
        from emo_stream.animators.lite import LiteAnimator

        return LiteAnimator(size=size, fps=fps, motion=motion, lite_motion=lite_motion)
    if backend == "emo":
        folder = check_checkpoint_folder(checkpoint)
        try:
            from emo_stream.animators.emo import EmoAnimator  # torch: imported only here
        except ModuleNotFoundError as exc:
            if exc.name != "emo_stream.animators.emo":
                raise
            raise UnknownBackendError("the emo backend is not available in this build; use --backend lite") from None
        return EmoAnimator.from_checkpoint(folder, size=size, fps=fps, device=device, lite_motion=lite_motion,
                                           **emo_options)
    raise UnknownBackendError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")


__all__ = ["Animator", "AnimatorState", "create_animator", "BACKENDS"]
