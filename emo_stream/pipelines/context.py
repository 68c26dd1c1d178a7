"""Context windows for denoising a whole video at once (EchoMimic's offline windowing).

EchoMimic (no motion frames) denoises all frames together: each step runs the denoiser on windows of
``size`` frames that overlap by ``overlap`` frames and wrap around the end (a closed loop), averages the
predictions where windows overlap, and shifts every window by ``shift_per_step`` frames per step so window seams
move and do not leave a visible cut (``pipeline_echo_mimic.py``: uniform context schedule, 12 / overlap 3,
shifted by ``2 × step``).
"""

from __future__ import annotations

from dataclasses import dataclass


def context_windows(num_frames: int, size: int, overlap: int, step_index: int = 0,
                    shift_per_step: int = 2) -> list[list[int]]:
    """Frame indices of each window for denoising step ``step_index``.

    Windows start every ``size - overlap`` frames, cover ``size`` frames each (a video no longer than one window
    is one window of all its frames), wrap modulo ``num_frames``, and every index is offset by
    ``step_index × shift_per_step``; together they cover every frame at least once. The offset applies to a
    single window too, as in the source: its frames reach the temporal layers rotated, which changes what
    they attend to at the ends.
    """
    if num_frames < 1 or size < 1:
        raise ValueError(f"num_frames and size must be >= 1, got {num_frames}, {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in [0, size), got {overlap} for size {size}")
    shift = step_index * shift_per_step
    if num_frames <= size:
        return [[(k + shift) % num_frames for k in range(num_frames)]]
    stride = size - overlap
    return [[(start + k + shift) % num_frames for k in range(size)] for start in range(0, num_frames, stride)]


@dataclass(frozen=True)
class ContextSchedule:
    """How a whole video is cut into context windows: ``size`` frames each, overlapping by ``overlap``."""

    size: int
    overlap: int

    def windows(self, num_frames: int, step_index: int) -> list[list[int]]:
        """Frame indices of each window at denoising step ``step_index`` (``context_windows``)."""
        return context_windows(num_frames, self.size, self.overlap, step_index)
