"""What a server process builds at start-up and closes at shutdown: the animator, its worker, avatars, VAD."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

from emo_stream.animators import Animator, create_animator
from emo_stream.avatar import AvatarLimits
from server.aiortc_compat import install_aiortc_workarounds
from server.avatars import DEFAULT_AVATAR_ID, AvatarStore
from server.config import Config
from server.portrait_pool import PortraitPool
from server.telemetry import Telemetry
from server.worker import InferenceWorker

# The worker thread and the encoders' threads hold the GIL in short bursts; a 1 ms switch interval (default
# 5 ms) keeps the event loop, which paces every track, from waiting on them.
SWITCH_INTERVAL_S = 0.001


def build_animator(config: Config) -> Animator[Any]:
    """The configured backend (loads an emo checkpoint: raises CheckpointError naming a bad part)."""
    a = config.animator
    return create_animator(a.backend, size=a.size, fps=a.fps, motion=a.motion, lite_motion=a.lite_motion,
                           checkpoint=a.checkpoint, device=a.device)


class EngineResources:
    """The process's engine resources, shared by all its sessions.

    Attributes:
        config: the server's configuration.
        telemetry: the process's metrics.
        avatars: the portrait store (uploads kept under ``server.data_dir``).
        portraits: the low-priority process that prepares uploaded photos.
        animator: the backend; built in ``start`` unless one was given (so a bad checkpoint fails before serving).
        worker: the inference worker (its own thread), from ``start`` on.
        vad_factory: makes a session's voice-activity detector; Silero unless one was given.
    """

    def __init__(self, config: Config, vad_factory: Callable[[], Any] | None = None, animator: Animator[Any] | None = None) -> None:
        """Check and patch aiortc and open the avatar store (raises UnsupportedAiortcError first)."""
        install_aiortc_workarounds()
        self.config = config
        self.telemetry = Telemetry()
        self.portraits = PortraitPool()  # uploads are prepared in a low-priority process of their own
        self.avatars = AvatarStore(config.animator.size, AvatarLimits(
            max_pixels=config.limits.max_image_pixels, max_bytes=config.limits.max_image_bytes,
            min_face_px=config.limits.min_face_px), data_dir=config.server.data_dir, prepare=self.portraits.prepare)
        self.animator: Animator[Any] | None = animator
        self.worker: InferenceWorker | None = None
        self.vad_factory: Callable[[], Any] | None = vad_factory

    async def start(self) -> None:
        """Build the animator and the worker, and warm up off the loop: the default avatar (and the animator's
        per-portrait work for it), the VAD model."""
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        if self.animator is None:
            self.animator = build_animator(self.config)
        self.worker = InferenceWorker(self.animator, asyncio.get_running_loop())
        if self.vad_factory is None:
            from server.vad import SileroVAD

            self.vad_factory = SileroVAD
        default = await asyncio.to_thread(self.avatars.get, DEFAULT_AVATAR_ID)
        await asyncio.to_thread(self.animator.warm, default)
        await asyncio.to_thread(self.vad_factory)

    def running(self) -> tuple[InferenceWorker, Animator[Any]]:
        """The worker and the animator of a started engine (sessions open only after ``start``)."""
        if self.worker is None or self.animator is None:
            raise RuntimeError("the engine has not started")
        return self.worker, self.animator

    async def stop(self) -> None:
        """Stop the worker (its thread) and close the animator; the sessions are closed before this."""
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)
        if self.animator is not None:
            self.animator.close()
        self.portraits.close()
