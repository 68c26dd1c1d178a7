"""The EMO denoiser: an audio-conditioned video UNet over VAE latents.

One forward predicts the noise (or v) of a clip of F latent frames from:

- the cached ReferenceNet bank of the portrait (reference attention, weight-free) and, optionally, of the
  previous clip's last frames (motion frames, prepended in the temporal layers);
- per-frame audio tokens [B, F, N, C] through the configured audio slot (``inline`` or ``separate``);
- face-locator features added after ``conv_in``;
- optional head-speed buckets, embedded and fed to the temporal layers.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from diffusers.utils import BaseOutput

from emo_stream.models.attention_processors import ReferenceAttnProcessor
from emo_stream.models.reference_net import ReferenceBank
from emo_stream.models.unet import EmoUNet
from emo_stream.models.unet_blocks import BlockContext


@dataclass
class EmoDenoiserOutput(BaseOutput):
    """Output of ``EmoDenoiser``.

    Attributes:
        sample: [B, C, F, H, W] the model's prediction (noise or v, as the scheduler was trained with).
    """

    sample: torch.Tensor


def speed_to_buckets(speed: torch.Tensor, centers: Sequence[float], radius: float) -> torch.Tensor:
    """Soft bucket weights of head-rotation speeds (EMO: ``tanh((s - c_i) / r · 3)`` per bucket).

    Args:
        speed: [B, F] head rotation speed per frame (e.g. radians per frame).
        centers: bucket centres.
        radius: bucket radius.

    Returns:
        [B, F, K] weights in (-1, 1).
    """
    centers_t = torch.as_tensor(list(centers), dtype=speed.dtype, device=speed.device)
    return torch.tanh((speed[..., None] - centers_t) / radius * 3.0)


class EmoDenoiser(EmoUNet):
    """Audio-conditioned denoising UNet with reference attention, temporal layers and motion frames.

    The configuration is ``EmoUNet``'s; ``attn1`` of every spatial block reads the reference bank.
    """

    _attn1_processor = ReferenceAttnProcessor

    @contextlib.contextmanager
    def use_reference(self, bank: ReferenceBank | None, mask: torch.Tensor | None = None) -> Iterator[None]:
        """Point every ``attn1`` at its slice of ``bank`` for the duration of the block (None: no reference).

        Args:
            bank: reference features with the denoiser's batch size B.
            mask: [B·F] bool, token rows that use the reference (False: plain self-attention, e.g. the
                unconditional half of classifier-free guidance); None = all rows.
        """
        blocks = self.transformer_blocks()
        if bank is not None:
            missing = sorted(set(blocks) - set(bank.features))
            if missing:
                raise ValueError(f"reference bank lacks {len(missing)} block(s), e.g. {missing[0]}")
        try:
            for name, block in blocks.items():
                proc = block.attn1.processor
                proc.reference = None if bank is None else bank.features[name]
                proc.reference_mask = mask
            yield
        finally:
            for block in blocks.values():
                block.attn1.processor.reference = None
                block.attn1.processor.reference_mask = None

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        audio_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        reference_bank: ReferenceBank | None = None,
        reference_mask: torch.Tensor | None = None,
        face_features: torch.Tensor | None = None,
        region_masks: torch.Tensor | None = None,
        speed_buckets: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> EmoDenoiserOutput | tuple[torch.Tensor]:
        """Predict the denoising target of a clip.

        Args:
            sample: [B, C, F, H, W] noisy latents.
            timestep: scalar or [B].
            audio_embeds: [B, F, N, C] audio tokens per frame (required unless ``audio_mode == "none"``).
            encoder_hidden_states: [B, T, C] tokens for the spatial ``attn2`` when the audio slot is not
                inline (Hallo: 4 face-embedding tokens); shared by the frames.
            reference_bank: cached ReferenceNet features (portrait, optionally motion frames), batch B or 1
                (shared), or None.
            reference_mask: [B] bool, batch elements that use the portrait reference; None = all. Motion
                frames are used by every row (they are not part of the unconditional recipe).
            face_features: face-locator output, [B, C0, H, W] (all frames) or [B, F, C0, H, W].
            region_masks: [B, 3, H, W] or [B, F, 3, H, W] full/face/lip masks (separate audio slot);
                None = the whole frame for all three.
            speed_buckets: [B, F, K] head-speed bucket weights (see ``speed_to_buckets``), or None.
            return_dict: return an ``EmoDenoiserOutput`` rather than a tuple.
        """
        cfg = self.config
        batch, _, frames, height, width = sample.shape
        rows = batch * frames
        # 1. Frames into the batch: every 2-D layer sees [B·F, C, H, W].
        x = sample.permute(0, 2, 1, 3, 4).reshape(rows, -1, height, width)
        temb = self._time_embedding(timestep, batch, frames, x.dtype, x.device)

        # 2. conv_in, then the face locator's features (EchoMimic/Hallo add them here).
        x = self.conv_in(x)
        if face_features is not None:
            x = x + _per_frame(face_features, batch, frames).to(x.dtype)

        # 3. Per-call context for the blocks.
        ctx = BlockContext(temb=temb, num_frames=frames, plain_block_motion=cfg.plain_block_motion)
        audio_rows = None
        if cfg.audio_mode != "none":
            if audio_embeds is None:
                raise ValueError(f"audio_mode {cfg.audio_mode!r} needs audio_embeds [B, F, N, C]")
            if tuple(audio_embeds.shape) != (batch, frames, cfg.audio_tokens, cfg.audio_dim):
                raise ValueError(f"audio_embeds must be {(batch, frames, cfg.audio_tokens, cfg.audio_dim)}, "
                                 f"got {tuple(audio_embeds.shape)}")
            audio_rows = audio_embeds.reshape(rows, cfg.audio_tokens, cfg.audio_dim).to(x.dtype)
        if cfg.audio_mode == "inline":
            if encoder_hidden_states is not None:
                raise ValueError("the inline audio slot uses attn2 for audio: encoder_hidden_states must be None")
            ctx.encoder_hidden_states = audio_rows
        else:
            if encoder_hidden_states is not None:
                ctx.encoder_hidden_states = encoder_hidden_states.to(x.dtype).repeat_interleave(frames, dim=0)
            elif cfg.cross_attention_dim is not None:
                raise ValueError("this denoiser has a spatial attn2: pass encoder_hidden_states [B, T, C]")
        if cfg.audio_mode == "separate":
            ctx.audio_tokens = audio_rows
            if region_masks is None:
                region_masks = x.new_ones(batch, 3, height, width)
            ctx.region_masks = _per_frame(region_masks, batch, frames)
        if reference_bank is not None and reference_bank.motion is not None:
            ctx.motion_features = reference_bank.expand(batch).motion or {}  # not None: expand keeps motion
        if speed_buckets is not None:
            if not cfg.num_speed_buckets:
                raise ValueError("this denoiser has no speed embedding (num_speed_buckets = 0)")
            ctx.speed_embedding = self.speed_embedding(speed_buckets.to(x.dtype))

        # 4. Down, mid, up blocks with reference attention on.
        row_mask = None
        if reference_bank is not None:
            reference_bank = reference_bank.expand(batch)
            if reference_mask is not None:
                row_mask = reference_mask.to(torch.bool).reshape(batch).repeat_interleave(frames)
        with self.use_reference(reference_bank, row_mask):
            x = self._run_blocks(x, ctx)

        # 5. Output head, frames back out of the batch.
        x = self.conv_out(self.conv_act(self.conv_norm_out(x)))
        out = x.reshape(batch, frames, -1, height, width).permute(0, 2, 1, 3, 4)
        if not return_dict:
            return (out,)
        return EmoDenoiserOutput(sample=out)

    @property
    def max_frames(self) -> float:
        """Clip frames + motion frames the temporal position table allows."""
        return self.config.motion_max_positions if self.config.use_motion_module else math.inf


def _per_frame(x: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
    """[B, C, H, W] (shared by the frames) or [B, F, C, H, W] → [B·F, C, H, W]."""
    if x.dim() == 4:
        return x.repeat_interleave(frames, dim=0)
    if x.dim() == 5 and x.shape[:2] == (batch, frames):
        return x.reshape(batch * frames, *x.shape[2:])
    raise ValueError(f"expected [B, C, H, W] or [B, F, C, H, W] with B={batch}, F={frames}, got {tuple(x.shape)}")
