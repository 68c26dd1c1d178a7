"""EMO's training objective for both stages: which parameters train, and the v-prediction loss of one batch.

Stage 1 (image pretraining) trains the ReferenceNet and the denoiser's spatial backbone (and the face
locator) on single frames: the reference frame goes through the ReferenceNet into the bank, the target frame
is noised and denoised; temporal, audio-attention and speed layers are frozen and the audio is absent (zero
tokens). Stage 2 (video) freezes that and trains the temporal, audio and speed layers and the face locator on
clips with motion frames. Both follow the inference math of ``EmoPipeline.denoise_clip``: VAE-scaled latents,
the scheduler's ``add_noise`` and v-prediction targets (``get_velocity``), motion frames through the
ReferenceNet, face-locator features after ``conv_in``, and the unconditional recipe (no reference, zero
audio, zero face features) for a random ``condition_drop`` share of the samples, which guidance needs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import nn

from emo_stream.models.checkpoint import EmoComponents
from emo_stream.models.denoiser import speed_to_buckets
from emo_stream.models.reference_net import ReferenceBank
from emo_stream.models.speech_encoder import SpeechEncoder
from emo_stream.training.sample import TrainingBatch

TRAINED_PARTS = ("reference_net", "denoiser", "face_locator", "audio_projection", "image_projection")
_INLINE_AUDIO = re.compile(r"\.attentions\.\d+\.transformer_blocks\.\d+\.(attn2|norm2)\.")


def parameter_group(part: str, name: str, audio_mode: str) -> str:
    """The group (``train_config.GROUPS``) of parameter ``name`` of model part ``part``."""
    if part in ("reference_net", "face_locator"):
        return part
    if part == "audio_projection":
        return "audio"
    if part == "image_projection":
        return "backbone"
    if name.startswith("speed_embedding.") or ".speed_proj." in name:
        return "speed"
    if ".motion_modules." in name:
        return "temporal"
    if ".audio_modules." in name:
        return "audio"
    # EchoMimic's inline slot: the spatial attn2 (and its norm) *is* the audio attention.
    if audio_mode == "inline" and _INLINE_AUDIO.search("." + name):
        return "audio"
    return "backbone"


def set_trainable(components: EmoComponents, groups: list[str]) -> dict[str, int]:
    """``requires_grad`` on exactly the parameters of ``groups``; returns trained parameters per group.

    The VAE and the speech encoder are always frozen.
    """
    audio_mode = components.denoiser.config.audio_mode
    counts = {g: 0 for g in groups}
    for part_name, part in components.parts().items():
        if not isinstance(part, nn.Module):
            continue
        for name, param in part.named_parameters():
            group = parameter_group(part_name, name, audio_mode) if part_name in TRAINED_PARTS else None
            param.requires_grad_(group in groups)
            if group in groups:
                counts[group] += param.numel()
    return counts


@dataclass
class FrozenParts:
    """The parts a stage never trains (kept out of the trained module, the optimizer and DDP)."""

    vae: AutoencoderKL
    speech_encoder: SpeechEncoder
    scheduler: SchedulerMixin


@dataclass
class StepInputs:
    """One batch, encoded by the frozen parts and with this step's randomness drawn.

    Attributes:
        latents: [B, C, F, h, w] target latents (VAE-scaled).
        reference: [B, C, h, w] reference-frame latents.
        motion: [B, M, C, h, w] motion-frame latents, or None (stage 1 / M = 0).
        audio_states: [B, F, W, L, C] speech-encoder states, or None (stage 1: no audio).
        face_mask: [B, 1, S, S] face-region mask in pixels.
        head_speed: [B, F] head speed, or None (stage 1).
        noise / timesteps: the noise and the [B] timesteps of this step.
        keep: [B] bool, samples that keep their conditions (False: the unconditional recipe).
    """

    latents: torch.Tensor
    reference: torch.Tensor
    motion: torch.Tensor | None
    audio_states: torch.Tensor | None
    face_mask: torch.Tensor
    head_speed: torch.Tensor | None
    noise: torch.Tensor
    timesteps: torch.Tensor
    keep: torch.Tensor


@torch.no_grad()
def vae_latents(vae: AutoencoderKL, pixels: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """[N, 3, S, S] pixels in [-1, 1] → [N, C, S/8, S/8] scaled latents (the distribution's mean, as inference)."""
    dtype = vae.dtype
    out = [vae.encode(pixels[i:i + chunk].to(dtype)).latent_dist.mean for i in range(0, pixels.shape[0], chunk)]
    return torch.cat(out).float() * vae.config.scaling_factor


@torch.no_grad()
def encode_batch(frozen: FrozenParts, batch: TrainingBatch, stage: int, fps: int, generator: torch.Generator,
                 condition_drop: float, motion_drop: float, max_noise: float = 1.0) -> StepInputs:
    """Encode ``batch`` with the frozen VAE/speech encoder and draw noise, timesteps (below ``max_noise`` of the
    schedule) and condition dropout."""
    device = batch.target.device
    b, _, frames, size, _ = batch.target.shape
    if stage == 1:
        frames = 1
    # 1. Pixels → latents (targets, reference, motion frames) in one pass per kind.
    target = batch.target[:, :, :frames].permute(0, 2, 1, 3, 4).reshape(b * frames, 3, size, size)
    latents = vae_latents(frozen.vae, target)
    latents = latents.reshape(b, frames, *latents.shape[1:]).permute(0, 2, 1, 3, 4)
    reference = vae_latents(frozen.vae, batch.reference)
    motion = None
    m = batch.motion.shape[2]
    if stage == 2 and m:
        motion = vae_latents(frozen.vae, batch.motion.permute(0, 2, 1, 3, 4).reshape(b * m, 3, size, size))
        motion = motion.reshape(b, m, *motion.shape[1:])
        # A clip without history (EMO's first clip) gets the portrait as motion frames, as inference does.
        dropped = torch.rand(b, generator=generator, device=device) < motion_drop
        motion = torch.where(dropped[:, None, None, None, None], reference[:, None].expand_as(motion), motion)
    # 2. Audio states (stage 2): the frozen speech encoder, as ``EmoPipeline.encode_audio``.
    audio_states = None
    if stage == 2:
        audio_states = frozen.speech_encoder.states_for(batch.audio.float(), frames, fps).float()
    # 3. This step's randomness.
    noise = torch.randn(latents.shape, generator=generator, device=device)
    highest = max(1, round(frozen.scheduler.config.num_train_timesteps * max_noise))
    timesteps = torch.randint(0, highest, (b,), generator=generator, device=device)
    keep = torch.rand(b, generator=generator, device=device) >= condition_drop
    return StepInputs(latents=latents, reference=reference, motion=motion, audio_states=audio_states,
                      face_mask=batch.face_mask.float(), head_speed=batch.head_speed.float() if stage == 2 else None,
                      noise=noise, timesteps=timesteps, keep=keep)


class EmoTrainingModel(nn.Module):
    """The trainable parts of a checkpoint in one module (what DDP wraps); ``forward`` returns the loss.

    Args:
        components: the checkpoint's parts (the frozen ones are held outside the module tree).
        stage: 1 or 2.
        speed_max: the last speed bucket's centre (see ``ModelConfig.speed_max``).
        face_loss_weight: extra loss weight inside the face mask (``StageConfig.face_loss_weight``).
    """

    def __init__(self, components: EmoComponents, stage: int, speed_max: float = 0.1,
                 face_loss_weight: float = 0.0) -> None:
        super().__init__()
        self.stage = stage
        self.face_loss_weight = face_loss_weight
        self.reference_net = components.reference_net
        self.denoiser = components.denoiser
        self.face_locator = components.face_locator
        self.audio_projection = components.audio_projection
        self.image_projection = components.image_projection
        self.speech_tokens = SpeechEncoder.tokens
        # In a list, not as attributes: nn.Module would register them (DDP, optimizer, state_dict).
        self._scheduler = [components.scheduler]
        k = self.denoiser.config.num_speed_buckets
        self.speed_centers = [speed_max * i / max(k - 1, 1) for i in range(k)]
        self.speed_radius = speed_max / max(k - 1, 1)

    def _audio_tokens(self, inputs: StepInputs, frames: int) -> torch.Tensor:
        cfg = self.denoiser.config
        b = inputs.latents.shape[0]
        if inputs.audio_states is None:  # stage 1: no audio (zero tokens, as the unconditional recipe)
            return inputs.latents.new_zeros(b, frames, cfg.audio_tokens, cfg.audio_dim)
        if self.audio_projection is not None:
            tokens = self.audio_projection(inputs.audio_states).tokens
        else:
            tokens = self.speech_tokens(inputs.audio_states)
        return tokens * inputs.keep[:, None, None, None].to(tokens.dtype)

    def conditions(self, inputs: StepInputs) -> dict[str, Any]:
        """The denoiser's keyword arguments for ``inputs`` (all but sample and timestep), as inference builds them."""
        latents, keep = inputs.latents, inputs.keep
        b, _, frames = latents.shape[:3]
        keep_f = keep.to(latents.dtype)
        # 1. Face locator on the mask (zero for dropped samples); region masks at latent size.
        channels = self.face_locator.config.conditioning_channels
        mask = inputs.face_mask
        face = self.face_locator(mask.expand(b, channels, *mask.shape[-2:])).features
        face = face * keep_f[:, None, None, None].to(face.dtype)
        latent_mask = F.interpolate(mask, size=latents.shape[-2:], mode="area")
        region_masks = torch.cat([torch.ones_like(latent_mask), latent_mask, latent_mask], 1)
        # 2. Face tokens for attn2 (Hallo-style checkpoints): no identity embedding in the sample → zeros.
        face_tokens = None
        if self.image_projection is not None:
            emb = latents.new_zeros(b, self.image_projection.config.embedding_dim)
            face_tokens = self.image_projection(emb).tokens * keep_f[:, None, None]
        ref_tokens = face_tokens if self.reference_net.config.cross_attention_dim is not None else None
        # 3. The reference bank, with gradient when the ReferenceNet trains (stage 1), and motion frames.
        trains_reference = any(p.requires_grad for p in self.reference_net.parameters())
        with torch.set_grad_enabled(trains_reference and torch.is_grad_enabled()):
            bank = ReferenceBank(self.reference_net(inputs.reference, 0, ref_tokens).features)
            if inputs.motion is not None:
                m = inputs.motion.shape[1]
                ehs = None if ref_tokens is None else ref_tokens.repeat_interleave(m, dim=0)
                feats = self.reference_net(inputs.motion.reshape(b * m, *inputs.motion.shape[2:]), 0, ehs).features
                bank = bank.with_motion({k: v.reshape(b, m, *v.shape[1:]) for k, v in feats.items()})
        # 4. Audio tokens and speed buckets.
        audio = self._audio_tokens(inputs, frames) if self.denoiser.config.audio_mode != "none" else None
        speed = None
        if inputs.head_speed is not None and self.denoiser.config.num_speed_buckets:
            speed = speed_to_buckets(inputs.head_speed, self.speed_centers, self.speed_radius)
        return {"audio_embeds": audio, "encoder_hidden_states": face_tokens, "reference_bank": bank,
                "reference_mask": keep, "face_features": face, "region_masks": region_masks, "speed_buckets": speed}

    def forward(self, inputs: StepInputs) -> torch.Tensor:
        """Mean squared error of the v-prediction on this batch (face-weighted with ``face_loss_weight``)."""
        scheduler = self._scheduler[0]
        kwargs = self.conditions(inputs)
        # 5. Noise at random timesteps; v-prediction target.
        noisy = scheduler.add_noise(inputs.latents, inputs.noise, inputs.timesteps)
        target = scheduler.get_velocity(inputs.latents, inputs.noise, inputs.timesteps)
        pred = self.denoiser(noisy, inputs.timesteps, **kwargs).sample
        if not self.face_loss_weight:
            return F.mse_loss(pred.float(), target.float())
        # 6. Face latents count 1 + w times (the weights' mean is 1: the loss keeps its scale).
        face = F.interpolate(inputs.face_mask.float(), size=inputs.latents.shape[-2:], mode="area")
        weight = (1.0 + self.face_loss_weight * face)[:, :, None]
        weight = weight / weight.mean(dim=(-2, -1), keepdim=True)
        return ((pred.float() - target.float()) ** 2 * weight).mean()


def unconditional(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The unconditional recipe of denoiser keyword arguments: no reference, zero audio, face features, tokens."""
    out = dict(kwargs)
    out["reference_mask"] = torch.zeros_like(kwargs["reference_mask"], dtype=torch.bool)
    for key in ("audio_embeds", "face_features", "encoder_hidden_states"):
        if kwargs[key] is not None:
            out[key] = torch.zeros_like(kwargs[key])
    return out
