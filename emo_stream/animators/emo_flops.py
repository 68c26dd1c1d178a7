"""Compute accounting for the emo backend: FLOPs per output frame, achieved FLOP/s and MFU.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over real streaming calls (the denoiser, the
ReferenceNet's motion pass, the speech encoder, the decoder: whatever one output frame costs, classifier-free
guidance rows included), so a figure follows the configuration that ran. MFU (model FLOP utilisation) is the
achieved FLOP/s over the device's dense peak for the compute dtype: the table below holds vendor figures for
dense tensor-core math (no sparsity); a device not in it has no MFU (None), never a guessed one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from emo_stream.animators.base import Animator
from emo_stream.streaming import iter_windows

# Dense fp16/bf16 tensor-core peaks, FLOP/s (vendor data sheets; no 2:4 sparsity). Checked in order: the more
# specific name first (an "H100 PCIe" is not an SXM H100).
DENSE_PEAK_FLOPS_16BIT: list[tuple[str, float]] = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM, "NVIDIA H100 80GB HBM3"
    ("H200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("RTX 4090", 165e12),  # fp32 accumulate
]


def peak_for_name(name: str) -> float | None:
    """The dense 16-bit peak FLOP/s of a CUDA device by its name, or None where the table does not know it."""
    return next((peak for key, peak in DENSE_PEAK_FLOPS_16BIT if key in name), None)


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The dense peak FLOP/s of ``device`` for ``dtype``, or None where it is not known (CPUs, fp32, others)."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return None
    return peak_for_name(torch.cuda.get_device_name(device))


def count_flops(run: Callable[[], object]) -> int:
    """FLOPs of everything ``run`` computes (all devices; no module breakdown printed)."""
    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def stream_flops_per_frame(animator: Animator[Any], states: list[Any], waves: list[np.ndarray]) -> float:
    """FLOPs per output frame of the sessions ``states`` streaming ``waves`` (16 kHz, one each, equal lengths),
    one ``feed_batch`` a window as the server drives them, then a flush."""
    windows = [list(iter_windows([wave], 16_000, animator.fps)) for wave in waves]
    frames = 0

    def run() -> None:
        nonlocal frames
        for tick in range(len(windows[0])):
            out = animator.feed_batch([(w[tick], s) for w, s in zip(windows, states, strict=True)])
            frames += sum(len(o) for o in out)
        for state in states:
            frames += len(animator.flush(state))

    flops = count_flops(run)
    return flops / max(1, frames)


@dataclass(frozen=True)
class ComputeAccount:
    """How much of a device a configuration uses.

    Attributes:
        flops_per_frame: FLOPs per output video frame.
        achieved_flops_per_s: ``flops_per_frame`` × output frames a second (all sessions).
        peak_flops_per_s: the device's dense peak for the dtype, None where unknown.
        mfu: achieved / peak (0..1), None without a peak.
    """

    flops_per_frame: float
    achieved_flops_per_s: float
    peak_flops_per_s: float | None
    mfu: float | None

    @classmethod
    def of(cls, flops_per_frame: float, frames_per_s: float, peak_flops_per_s: float | None) -> ComputeAccount:
        achieved = flops_per_frame * frames_per_s
        mfu = achieved / peak_flops_per_s if peak_flops_per_s else None
        return cls(flops_per_frame, achieved, peak_flops_per_s, mfu)

    def to_dict(self) -> dict[str, float | None]:
        return {"gflops_per_frame": round(self.flops_per_frame / 1e9, 3),
                "achieved_tflops_per_s": round(self.achieved_flops_per_s / 1e12, 4),
                "peak_tflops_per_s": None if self.peak_flops_per_s is None else round(self.peak_flops_per_s / 1e12, 1),
                "mfu": None if self.mfu is None else round(self.mfu, 4)}
