"""Batched clip sampling for the emo backend: clips of many sessions in one denoiser call per step.

Sampling is the pipeline's one loop (``emo_stream.pipelines.sampling.sample_clips``) with a batch of sessions:
each session brings its own cached portrait state (reference bank, face features), audio tokens, motion carry,
seeded generator and, when it has them, head-speed buckets (``ClipRequest``). A session's clip does not depend
on the other sessions in the batch: batched output equals one-by-one output up to float rounding of batched
kernels (tested in ``tests/test_sampling_loop.py`` and ``tests/test_emo_backend.py``), and one session alone
equals the offline ``EmoPipeline.denoise_clip``.

Classifier-free guidance, when the checkpoint asks for it (``guidance_scale > 1``), doubles the rows as
[all conditional; all unconditional]; a guidance-distilled checkpoint (``guidance_scale <= 1``) runs one row
per session.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from emo_stream.pipelines.pipeline_emo import EmoPipeline, MotionCarry, PortraitState
from emo_stream.pipelines.sampling import ClipRequest, sample_clips

__all__ = ["BATCH_BUCKETS", "ClipRequest", "bucket_size", "decode_batch", "denoise_batch"]


BATCH_BUCKETS = (1, 2, 4, 8)  # with static shapes (compiled models): batches are padded up to one of these


def bucket_size(batch: int, buckets: tuple[int, ...] | None) -> int:
    """The bucket a batch of ``batch`` rows runs as: the smallest that holds it; past the largest, as it is."""
    if not buckets:
        return batch
    return next((b for b in sorted(buckets) if b >= batch), batch)


def _padding(requests: list[ClipRequest], rows: int, device: torch.device) -> list[ClipRequest]:
    """``rows`` stand-in clips (the last request's inputs, each with a throwaway generator, so no session's noise
    depends on how full its batch was); their outputs are discarded."""
    last = requests[-1]
    return [dataclasses.replace(last, generator=torch.Generator(device=device).manual_seed(0)) for _ in range(rows)]


@torch.no_grad()
def denoise_batch(pipe: EmoPipeline, requests: list[ClipRequest], steps: int, guidance_scale: float,
                  motion_frames: int, noise_correlation: float, buckets: tuple[int, ...] | None = None
                  ) -> tuple[torch.Tensor, list[MotionCarry | None]]:
    """Sample one clip per request (one per session) in one batch (``sample_clips``, no context windows).

    ``buckets``: pad the batch up to the smallest of these sizes that holds it (static shapes for compiled
    models: a session joining or leaving does not change the shapes they see); None: the batch as it is.

    Returns:
        latents [B, C, F, h, w] and each request's carry for its next clip (None when ``motion_frames`` is 0).
    """
    real = len(requests)
    padded = requests + _padding(requests, bucket_size(real, buckets) - real, pipe._model_device)
    latents, carries = sample_clips(pipe, padded, steps, guidance_scale, motion_frames, noise_correlation)
    return latents[:real], carries[:real]


@torch.no_grad()
def decode_batch(pipe: EmoPipeline, latents: torch.Tensor, decoder: str,
                 portraits: list[PortraitState] | None = None, buckets: tuple[int, ...] | None = None) -> np.ndarray:
    """[B, C, F, h, w] latents → [B, F, H, W, 3] uint8 frames (``EmoPipeline.decode_latents``'s math, with each
    row's portrait residual when the checkpoint decodes residually). ``buckets``: as ``denoise_batch``'s (the
    padding rows are zeros, decoded and dropped)."""
    batch, channels, frames, height, width = latents.shape
    padded = bucket_size(batch, buckets)
    if padded > batch:
        latents = torch.cat([latents, latents.new_zeros(padded - batch, *latents.shape[1:])])
    flat = latents.permute(0, 2, 1, 3, 4).reshape(padded * frames, channels, height, width)
    images = pipe.decode_frames(flat, decoder).float()[:batch * frames]
    if portraits is not None:
        rows = images.reshape(batch, frames, *images.shape[1:])
        images = torch.cat([pipe.compose_residual(rows[b], p, decoder) for b, p in enumerate(portraits)])
    images = ((images + 1.0) / 2.0).clamp(0.0, 1.0)
    pixels = (images.permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return pixels.reshape(batch, frames, *pixels.shape[1:])
