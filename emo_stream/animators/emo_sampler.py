"""Batched clip sampling for the emo backend: clips of many sessions in one denoiser call per step.

The math is ``EmoPipeline.denoise_clip``'s, with a batch of sessions instead of one: each session brings its
own cached portrait state (reference bank, face features), audio tokens, motion carry and seeded generator.
Per session the random numbers are drawn from its own generator in the order ``denoise_clip`` draws them
(initial noise, then the scheduler's per-step noise, through diffusers' per-element generator lists), so a
session's clip does not depend on the other sessions in the batch: batched output equals one-by-one output up
to float rounding of batched kernels (tested in ``tests/test_emo_backend.py``).

Classifier-free guidance, when the checkpoint asks for it (``guidance_scale > 1``), doubles the rows as
[all conditional; all unconditional]; a guidance-distilled checkpoint (``guidance_scale <= 1``) runs one row
per session.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from emo_stream.models.reference_net import ReferenceBank
from emo_stream.pipelines.pipeline_emo import EmoPipeline, MotionCarry, PortraitState


@dataclass
class ClipRequest:
    """One session's clip: its portrait, tokens [1, F, N, C], carry from its previous clip, generator."""

    portrait: PortraitState
    tokens: torch.Tensor
    carry: MotionCarry | None
    generator: torch.Generator


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _bank(banks: list[ReferenceBank]) -> ReferenceBank:
    return banks[0] if len(banks) == 1 else ReferenceBank.cat(banks)


@torch.no_grad()
def denoise_batch(pipe: EmoPipeline, requests: list[ClipRequest], steps: int, guidance_scale: float,
                  motion_frames: int, noise_correlation: float) -> tuple[torch.Tensor, list[MotionCarry | None]]:
    """Sample one clip per request in one batch.

    Returns:
        latents [B, C, F, h, w] and each request's carry for its next clip (None when ``motion_frames`` is 0).
    """
    device = pipe._model_device
    dtype = pipe._model_dtype
    batch = len(requests)
    frames = requests[0].tokens.shape[1]
    _, channels, height, width = requests[0].portrait.latents.shape
    portraits = [r.portrait for r in requests]
    with_tokens = pipe.reference_net.config.cross_attention_dim is not None

    # 1. Motion frames of every session through the ReferenceNet in one pass (the portrait for a first clip).
    bank = _bank([p.bank for p in portraits])
    if motion_frames:
        previous = []
        for r in requests:
            prev = (r.carry.latents if r.carry is not None
                    else r.portrait.latents[:, None].expand(1, motion_frames, -1, -1, -1))
            previous.append(prev[:, -motion_frames:])
        tokens = None
        if with_tokens:
            tokens = _cat([p.face_tokens for p in portraits])
        bank = bank.with_motion(pipe.reference_net.encode_motion_frames(_cat(previous), tokens))

    # 2. Initial noise per session, from its own generator, continuing its previous clip's noise (AR(1)).
    noises = []
    keep = math.sqrt(1.0 - noise_correlation**2)
    for r in requests:
        fresh = randn_tensor((1, channels, frames, height, width), generator=r.generator, device=device,
                             dtype=torch.float32)
        if noise_correlation == 0.0:
            noises.append(fresh)
            continue
        prev = None if (r.carry is None or not motion_frames) else r.carry.noise.float()
        per_frame = []
        for f in range(frames):
            current = fresh[:, :, f] if prev is None else noise_correlation * prev + keep * fresh[:, :, f]
            per_frame.append(current)
            prev = current
        noises.append(torch.stack(per_frame, dim=2))
    noise = pipe.clamp_noise(_cat(noises))  # the checkpoint's clamp, as ``EmoPipeline._initial_noise``
    scheduler = pipe.scheduler
    latents = pipe.start_latents(noise, _cat([p.latents for p in portraits]), steps)

    # 3. Inputs; with guidance the unconditional rows drop reference, audio, face features and face tokens.
    guided = guidance_scale > 1.0
    rows = 2 if guided else 1
    audio = _cat([r.tokens for r in requests]).to(device, dtype)
    face = _cat([p.face_features for p in portraits])
    masks = _cat([p.region_masks for p in portraits])
    face_tokens = _cat([p.face_tokens for p in portraits]) if portraits[0].face_tokens is not None else None
    if guided:
        audio = torch.cat([audio, torch.zeros_like(audio)])
        face = torch.cat([face, torch.zeros_like(face)])
        masks = torch.cat([masks, masks])
        if face_tokens is not None:
            face_tokens = torch.cat([face_tokens, torch.zeros_like(face_tokens)])
        bank = ReferenceBank.cat([bank, bank])
    ref_mask = torch.tensor([True] * batch + [False] * batch * (rows - 1), device=device)
    generators = [r.generator for r in requests]

    # 4. The few-step loop: one denoiser call per step for every session (outside each session's generated
    #    region its portrait is put back after every step, when the checkpoint generates a region only).
    regions = [p.generate_mask for p in portraits]
    region = None
    if any(m is not None for m in regions):  # a portrait without a region generates its whole frame
        whole = next(m for m in regions if m is not None)
        region = _cat([torch.ones_like(whole) if m is None else m for m in regions])
    anchors = _cat([p.latents for p in portraits])
    for index, t in enumerate(scheduler.timesteps):
        model_in = latents if rows == 1 else torch.cat([latents, latents])
        model_in = scheduler.scale_model_input(model_in, t)
        pred = pipe.denoiser(model_in, t, audio_embeds=audio, encoder_hidden_states=face_tokens,
                             reference_bank=bank, reference_mask=ref_mask, face_features=face,
                             region_masks=masks).sample
        if guided:
            cond, uncond = pred.chunk(2)
            pred = uncond + guidance_scale * (cond - uncond)
        latents = pipe.scheduler_step(pred, t, latents, generators if batch > 1 else generators[0])
        latents = pipe.keep_outside(latents, anchors, region, noise, pipe.next_timestep(index))

    # 5. Each session's last frames (and last noise) for its next clip.
    carries: list[MotionCarry | None] = []
    for b, r in enumerate(requests):
        if not motion_frames:
            carries.append(None)
            continue
        kept = min(motion_frames, frames)
        tail = latents[b:b + 1, :, -kept:].permute(0, 2, 1, 3, 4)
        if r.carry is not None and kept < motion_frames:
            tail = torch.cat([r.carry.latents[:, kept - motion_frames:], tail], dim=1)
        carries.append(MotionCarry(latents=tail, noise=noise[b:b + 1, :, -1]))
    return latents, carries


@torch.no_grad()
def decode_batch(pipe: EmoPipeline, latents: torch.Tensor, decoder: str,
                 portraits: list[PortraitState] | None = None) -> np.ndarray:
    """[B, C, F, h, w] latents → [B, F, H, W, 3] uint8 frames (``EmoPipeline.decode_latents``'s math, with each
    row's portrait residual when the checkpoint decodes residually)."""
    batch, channels, frames, height, width = latents.shape
    flat = latents.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    images = pipe.decode_frames(flat, decoder).float()
    if portraits is not None:
        rows = images.reshape(batch, frames, *images.shape[1:])
        images = torch.cat([pipe.compose_residual(rows[b], p, decoder) for b, p in enumerate(portraits)])
    images = ((images + 1.0) / 2.0).clamp(0.0, 1.0)
    pixels = (images.permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8).cpu().numpy()
    return pixels.reshape(batch, frames, *pixels.shape[1:])
