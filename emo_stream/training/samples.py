"""Sample renders during training: a few frames of one batch element, sampled and decoded to a PNG strip.

The strip has two rows: the reference frame followed by the target frames, then the reference again
followed by the frames the model samples for the same audio (and motion frames) — so a run's folder shows
progress at a glance. Sampling goes through ``EmoPipeline.denoise_clip``, the inference code itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from emo_stream.models.checkpoint import EmoComponents
from emo_stream.training.sample import TrainingBatch


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] → H×W×3 uint8."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


@torch.no_grad()
def render_sample(components: EmoComponents, batch: TrainingBatch, stage: int, fps: int, frames: int,
                  steps: int, seed: int = 0, strength: float = 1.0) -> np.ndarray:
    """Sample up to ``frames`` frames for ``batch[0]``; returns the 2-row strip as an H×W×3 uint8 image.

    ``strength`` below 1 samples from the reference noised that far (a stage trained with ``max_noise``).
    """
    import dataclasses

    from emo_stream.pipelines.pipeline_emo import EmoPipeline, MotionCarry

    pipe = EmoPipeline.from_components(components)
    if strength < 1.0:
        pipe.settings = dataclasses.replace(pipe.settings, reference_strength=strength)
    pipe.set_progress_bar_config(disable=True)
    device = next(components.denoiser.parameters()).device
    frames = 1 if stage == 1 else min(frames, batch.target.shape[2])
    reference = _to_uint8(batch.reference[0])
    mask = batch.face_mask[0, 0].float().cpu().numpy()
    # 1. The portrait state, as a server would compute it.
    state = pipe.prepare_portrait(reference, face_mask=mask, size=reference.shape[0])
    # 2. Audio tokens (stage 1: none, the zero tokens it trained with) and the motion frames of the sample.
    if stage == 1:
        tokens = pipe.encode_audio(np.zeros(pipe.speech_encoder.num_samples(frames, fps), np.float32), frames, fps)
        tokens = torch.zeros_like(tokens)
    else:
        tokens = pipe.encode_audio(batch.audio[0].float().cpu().numpy(), frames, fps)
    motion = 0 if stage == 1 else batch.motion.shape[2]
    carry = None
    if motion:
        from emo_stream.training.stages import vae_latents

        latents = vae_latents(pipe.vae, batch.motion[0].permute(1, 0, 2, 3).to(device))[None]
        carry = MotionCarry(latents=latents.to(state.latents.dtype), noise=torch.zeros_like(latents[:, 0]))
    generator = torch.Generator(device).manual_seed(seed)
    latents, _ = pipe.denoise_clip(state, tokens, carry, num_inference_steps=steps, motion_frames=motion,
                                   noise_correlation=0.0, generator=generator)
    # 3. Decode and lay out the strip.
    images = pipe.decode_latents(latents) * 2 - 1
    target = [_to_uint8(batch.target[0, :, f]) for f in range(frames)]
    sampled = [_to_uint8(images[f]) for f in range(frames)]
    return np.concatenate([np.concatenate([reference, *target], 1), np.concatenate([reference, *sampled], 1)], 0)


def save_png(image: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
