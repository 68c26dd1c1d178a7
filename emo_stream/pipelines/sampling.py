"""The sampling loop: every EMO denoising path runs here, offline and streaming alike.

A call samples a batch of clips, one per ``ClipRequest``; a single clip is a batch of one. Each request brings
its own cached portrait state (reference bank, face features, face tokens), audio tokens, motion carry, seeded
generator and optional head-speed buckets. Per request the random numbers come from its own generator, in the
same order whatever the batch (initial noise, then the scheduler's per-step noise through diffusers'
per-element generator lists), so a clip does not depend on the other clips in its batch: a batch of N equals N
batches of one up to the float rounding of batched kernels.

The callers: ``EmoPipeline.denoise_clip`` (offline, clip by clip with motion frames), ``EmoPipeline.denoise_video``
(offline, a whole video at once in overlapping context windows, EchoMimic's path) and
``animators.emo_sampler.denoise_batch`` (the streaming backend, the clips of many sessions per call).

Classifier-free guidance (``guidance_scale > 1``) doubles the rows as [all conditional; all unconditional]; the
unconditional rows drop the reference, the audio (zero tokens), the face-locator features and the face tokens
(EchoMimic/Hallo's unconditional recipe). The checkpoint's ``step_rule``, ``initial_noise_clamp``,
``reference_strength`` and ``generate_region`` apply on every path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from emo_stream.models.reference_net import ReferenceBank
from emo_stream.models.schedulers import model_output_for_step
from emo_stream.pipelines.context import ContextSchedule
from emo_stream.pipelines.noise import ar1_noise
from emo_stream.pipelines.state import MotionCarry, PortraitState

if TYPE_CHECKING:
    from emo_stream.pipelines.pipeline_emo import EmoPipeline


@dataclass
class ClipRequest:
    """One clip of a batch.

    Attributes:
        portrait: the cached ``EmoPipeline.prepare_portrait`` result.
        tokens: [1, F, N, C] audio tokens (``EmoPipeline.encode_audio``); F is the clip's length.
        carry: the previous clip's ``MotionCarry``; None for a first clip (its motion frames are the portrait).
        generator: seeds this clip's noise; None draws from torch's global generator.
        speed_buckets: [1, F, K] head-speed bucket weights (``speed_to_buckets``) for denoisers that take them.
    """

    portrait: PortraitState
    tokens: torch.Tensor
    carry: MotionCarry | None = None
    generator: torch.Generator | None = None
    speed_buckets: torch.Tensor | None = None


@dataclass
class _Conditions:
    """The denoiser's inputs other than the sample, for all rows ([conditional; unconditional] with guidance)."""

    audio: torch.Tensor
    face: torch.Tensor
    region_masks: torch.Tensor
    face_tokens: torch.Tensor | None
    bank: ReferenceBank
    reference_mask: torch.Tensor
    speed: torch.Tensor | None
    rows: int


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def _speed_buckets(requests: list[ClipRequest]) -> torch.Tensor | None:
    """The batch's [B, F, K] speed buckets; one denoiser call cannot condition some rows and not others."""
    speeds = [r.speed_buckets for r in requests if r.speed_buckets is not None]
    if not speeds:
        return None
    if len(speeds) != len(requests):
        raise ValueError("speed_buckets must be given for every clip of a batch or for none")
    return _cat(speeds)


def _face_tokens(portraits: list[PortraitState]) -> torch.Tensor | None:
    tokens = [p.face_tokens for p in portraits if p.face_tokens is not None]
    return _cat(tokens) if tokens else None


def _motion_bank(pipe: EmoPipeline, requests: list[ClipRequest], motion_frames: int) -> ReferenceBank:
    """The batch's reference bank, with every clip's motion frames through the ReferenceNet in one pass."""
    portraits = [r.portrait for r in requests]
    bank = portraits[0].bank if len(portraits) == 1 else ReferenceBank.cat([p.bank for p in portraits])
    if not motion_frames:
        return bank
    previous = []
    for r in requests:  # a first clip continues the portrait itself (Hallo)
        prev = (r.carry.latents if r.carry is not None
                else r.portrait.latents[:, None].expand(1, motion_frames, -1, -1, -1))
        previous.append(prev[:, -motion_frames:])
    tokens = _face_tokens(portraits) if pipe.reference_net.config.cross_attention_dim is not None else None
    return bank.with_motion(pipe.reference_net.encode_motion_frames(_cat(previous), tokens))


def _conditions(pipe: EmoPipeline, requests: list[ClipRequest], bank: ReferenceBank, guided: bool) -> _Conditions:
    """Stack the requests' inputs; with guidance add the unconditional rows (no reference, audio, face, tokens)."""
    device, dtype = pipe._model_device, pipe._model_dtype
    portraits = [r.portrait for r in requests]
    batch = len(requests)
    audio = _cat([r.tokens for r in requests]).to(device, dtype)
    face = _cat([p.face_features for p in portraits])
    masks = _cat([p.region_masks for p in portraits])
    face_tokens = _face_tokens(portraits)
    speed = _speed_buckets(requests)
    if speed is not None:
        speed = speed.to(device, dtype)
    rows = 2 if guided else 1
    if guided:
        audio = torch.cat([audio, torch.zeros_like(audio)])
        face = torch.cat([face, torch.zeros_like(face)])
        masks = torch.cat([masks, masks])
        if face_tokens is not None:
            face_tokens = torch.cat([face_tokens, torch.zeros_like(face_tokens)])
        if speed is not None:  # speed is not dropped: both rows move alike
            speed = torch.cat([speed, speed])
        if batch > 1:  # a bank of batch 1 serves both rows without a copy (``ReferenceBank.expand``)
            bank = ReferenceBank.cat([bank, bank])
    reference_mask = torch.tensor([True] * batch + [False] * batch * (rows - 1), device=device)
    return _Conditions(audio, face, masks, face_tokens, bank, reference_mask, speed, rows)


def _model_output(pipe: EmoPipeline, cond: _Conditions, latents: torch.Tensor, t: torch.Tensor,
                  guidance_scale: float, frames: torch.Tensor | None) -> torch.Tensor:
    """One denoiser call on ``frames`` (indices; None = all) of ``latents``, guided, through the step rule."""
    sample = latents if frames is None else latents[:, :, frames]
    audio = cond.audio if frames is None else cond.audio[:, frames]
    speed = cond.speed if (cond.speed is None or frames is None) else cond.speed[:, frames]
    model_in = sample if cond.rows == 1 else torch.cat([sample, sample])
    model_in = pipe.scheduler.scale_model_input(model_in, t)
    pred = pipe.denoiser(model_in, t, audio_embeds=audio, encoder_hidden_states=cond.face_tokens,
                         reference_bank=cond.bank, reference_mask=cond.reference_mask, face_features=cond.face,
                         region_masks=cond.region_masks, speed_buckets=speed).sample
    if cond.rows == 2:
        conditional, unconditional = pred.chunk(2)
        pred = unconditional + guidance_scale * (conditional - unconditional)
    return model_output_for_step(pipe.settings.step_rule, pred, sample, pipe.scheduler, t)


def _windowed_output(pipe: EmoPipeline, cond: _Conditions, latents: torch.Tensor, t: torch.Tensor,
                     guidance_scale: float, windows: list[list[int]]) -> torch.Tensor:
    """The model output of every frame, averaged over the context windows that cover it (EchoMimic)."""
    device = latents.device
    summed = torch.zeros_like(latents, dtype=torch.float32)
    counts = torch.zeros((1, 1, latents.shape[2], 1, 1), device=device)
    for window in windows:
        index = torch.tensor(window, device=device)
        output = _model_output(pipe, cond, latents, t, guidance_scale, index)
        summed.index_add_(2, index, output.float())
        counts.index_add_(2, index, torch.ones((1, 1, len(window), 1, 1), device=device))
    return (summed / counts).to(latents.dtype)


def _carries(requests: list[ClipRequest], latents: torch.Tensor, noise: torch.Tensor,
             motion_frames: int) -> list[MotionCarry | None]:
    """Each clip's last frames (and last noise) for its next clip; None without motion frames."""
    if not motion_frames:
        return [None] * len(requests)
    frames = latents.shape[2]
    kept = min(motion_frames, frames)
    carries: list[MotionCarry | None] = []
    for b, r in enumerate(requests):
        tail = latents[b:b + 1, :, -kept:].permute(0, 2, 1, 3, 4)
        if r.carry is not None and kept < motion_frames:  # short clip: top up from the older carry
            tail = torch.cat([r.carry.latents[:, kept - motion_frames:], tail], dim=1)
        carries.append(MotionCarry(latents=tail, noise=noise[b:b + 1, :, -1]))
    return carries


@torch.no_grad()
def sample_clips(pipe: EmoPipeline, requests: list[ClipRequest], steps: int, guidance_scale: float,
                 motion_frames: int, noise_correlation: float, context: ContextSchedule | None = None,
                 progress_bar: Any = None) -> tuple[torch.Tensor, list[MotionCarry | None]]:
    """Sample one clip per request, all in one batch.

    Args:
        pipe: the pipeline whose models, scheduler and settings sample (``pipe.scheduler`` gets the timesteps).
        requests: the clips; all of the same length F.
        steps: denoising steps.
        guidance_scale: classifier-free guidance; <= 1 runs the conditional rows only.
        motion_frames: M clean frames of each clip's carry prepended in the temporal layers; 0 = none.
        noise_correlation: AR(1) correlation of the initial noise across frames (``noise.ar1_noise``); with
            motion frames it continues the carry's noise.
        context: denoise every step in these overlapping context windows (a whole video at once; needs
            ``motion_frames`` 0); None: the denoiser sees all F frames at once.
        progress_bar: a tqdm-like object advanced once per step, or None.

    Returns:
        latents [B, C, F, h, w] and each request's carry for its next clip (None when ``motion_frames`` is 0).
    """
    if not requests:
        raise ValueError("sample_clips needs at least one request")
    if context is not None and motion_frames:
        raise ValueError("context windows denoise a whole video: motion_frames must be 0")
    device = pipe._model_device
    batch = len(requests)
    frames = requests[0].tokens.shape[1]
    portraits = [r.portrait for r in requests]
    _, channels, height, width = portraits[0].latents.shape

    # 1. Motion frames of every clip through the ReferenceNet in one pass.
    bank = _motion_bank(pipe, requests, motion_frames)

    # 2. Initial noise, each clip from its own generator, continuing its previous clip's noise; timesteps.
    noise = pipe.clamp_noise(_cat([
        ar1_noise((1, channels, frames, height, width), r.generator, noise_correlation,
                  r.carry.noise if (r.carry is not None and motion_frames) else None, device)
        for r in requests]))
    anchors = _cat([p.latents for p in portraits])
    latents = pipe.start_latents(noise, anchors, steps)

    # 3. Conditional (+ unconditional) inputs of every row.
    cond = _conditions(pipe, requests, bank, guidance_scale > 1.0)

    # 4. Where each clip is generated (``generate_region``); elsewhere its portrait is put back every step.
    regions = [p.generate_mask for p in portraits]
    region = None
    if any(m is not None for m in regions):  # a portrait without a region generates its whole frame
        whole = next(m for m in regions if m is not None)
        region = _cat([torch.ones_like(whole) if m is None else m for m in regions])
    generators = [r.generator for r in requests]
    step_generator = generators[0] if batch == 1 else generators

    # 5. Denoising loop.
    for index, t in enumerate(pipe.scheduler.timesteps):
        # 5a. The model output for every frame: one call, or the average over this step's context windows.
        if context is None:
            output = _model_output(pipe, cond, latents, t, guidance_scale, None)
        else:
            windows = context.windows(frames, index)
            output = _windowed_output(pipe, cond, latents, t, guidance_scale, windows)
        # 5b. The scheduler's step (per element: a windowed video takes one step as a whole).
        latents = pipe.scheduler.step(output, t, latents, generator=step_generator).prev_sample
        # 5c. Inpainting: outside the generated region, the portrait noised to the next timestep.
        latents = pipe.keep_outside(latents, anchors, region, noise, pipe.next_timestep(index))
        if progress_bar is not None:
            progress_bar.update()

    # 6. Each clip's last frames (and last noise) for its next clip.
    return latents, _carries(requests, latents, noise, motion_frames)
