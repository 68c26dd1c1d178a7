"""The ReferenceNet: a UNet of the denoiser's shape that turns the portrait into cached attention features.

It is ``EmoUNet`` without the output head (``conv_norm_out``/``conv_out``), temporal or audio layers, and
with ``attn2`` optional (absent in EchoMimic, 768-d face tokens in Hallo). Run once per portrait at timestep
0, it records the ``norm1`` output of every spatial transformer block — the *reference bank* — which the
denoiser's same-path ``attn1`` attends to on every step of every clip. The bank depends only on the portrait,
so a streaming server computes it once per avatar (``encode_portrait``) and reuses it for every window; the
previous clip's last frames go through the same net (``encode_motion_frames``) to give the temporal layers
their motion-frame features.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from diffusers.utils import BaseOutput

from emo_stream.models.attention_processors import ReferenceRecordProcessor
from emo_stream.models.unet import EmoUNet
from emo_stream.models.unet_blocks import BlockContext


@dataclass
class ReferenceBank:
    """ReferenceNet features, by spatial transformer block path (``down_blocks.0.attentions.0.transformer_blocks.0``).

    Attributes:
        features: path → [B, L, C] portrait tokens (L = h·w at that block), read by reference attention.
        motion: path → [B, M, L, C] motion-frame tokens, prepended in the temporal layers; None = no motion frames.
    """

    features: dict[str, torch.Tensor]
    motion: dict[str, torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return next(iter(self.features.values())).shape[0]

    @property
    def num_motion_frames(self) -> int:
        return 0 if not self.motion else next(iter(self.motion.values())).shape[1]

    def with_motion(self, motion: dict[str, torch.Tensor] | None) -> ReferenceBank:
        """The same portrait features with other motion-frame features (None removes them)."""
        return replace(self, motion=motion)

    def expand(self, batch: int) -> ReferenceBank:
        """This bank for a batch of ``batch`` (a bank of batch 1 is shared without copying)."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"reference bank of batch {self.batch_size} cannot serve a batch of {batch}")
        features = {k: v.expand(batch, *v.shape[1:]) for k, v in self.features.items()}
        motion = None if self.motion is None else {k: v.expand(batch, *v.shape[1:]) for k, v in self.motion.items()}
        return ReferenceBank(features, motion)

    def to(self, *args: Any, **kwargs: Any) -> ReferenceBank:
        """``Tensor.to`` on every feature (device and/or dtype)."""
        features = {k: v.to(*args, **kwargs) for k, v in self.features.items()}
        motion = None if self.motion is None else {k: v.to(*args, **kwargs) for k, v in self.motion.items()}
        return ReferenceBank(features, motion)

    @classmethod
    def cat(cls, banks: list[ReferenceBank]) -> ReferenceBank:
        """Stack banks along the batch (e.g. several sessions in one denoiser call)."""
        features = {k: torch.cat([b.features[k] for b in banks]) for k in banks[0].features}
        motions = [b.motion for b in banks if b.motion is not None]
        motion = None
        if len(motions) == len(banks):
            motion = {k: torch.cat([m[k] for m in motions]) for k in motions[0]}
        elif motions:
            raise ValueError("cannot stack banks with and without motion frames")
        return cls(features, motion)


@dataclass
class ReferenceNetOutput(BaseOutput):
    """Output of ``ReferenceNet``.

    Attributes:
        features: block path → [N, L, C] ``norm1`` output of that block for each input image.
    """

    features: dict[str, torch.Tensor]


class ReferenceNet(EmoUNet):
    """Portrait → reference bank. Build it from ``reference_config`` (a denoiser's layout) or a config of its own."""

    _attn1_processor = ReferenceRecordProcessor

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int = 0,
        encoder_hidden_states: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> ReferenceNetOutput | tuple[dict[str, torch.Tensor]]:
        """Record the ``norm1`` outputs of all spatial blocks for a batch of images.

        Args:
            sample: [N, C, H, W] clean latents (portraits or frames).
            timestep: 0 upstream (the reference is clean).
            encoder_hidden_states: [N, T, C] tokens for ``attn2`` when the net has it (Hallo: face tokens).
        """
        cfg = self.config
        if cfg.use_motion_module or cfg.audio_mode != "none":
            raise ValueError("a ReferenceNet has no temporal or audio layers (use_motion_module=False, "
                             "audio_mode='none')")
        if cfg.cross_attention_dim is not None and encoder_hidden_states is None:
            raise ValueError("this ReferenceNet has attn2: pass encoder_hidden_states [N, T, C]")
        rows = sample.shape[0]
        temb = self._time_embedding(timestep, rows, 1, sample.dtype, sample.device)
        ctx = BlockContext(temb=temb, num_frames=1,
                           encoder_hidden_states=None if cfg.cross_attention_dim is None else encoder_hidden_states)
        store: dict[str, torch.Tensor] = {}
        processors = [b.attn1.processor for b in self.transformer_blocks().values()]
        try:
            for proc in processors:
                proc.store = store
            # Everything after the last spatial transformer only feeds the (absent) output head: skip it.
            self._run_blocks(self.conv_in(sample), ctx, stop_after_attentions=True)
        finally:
            for proc in processors:
                proc.store = None
        if not return_dict:
            return (store,)
        return ReferenceNetOutput(features=store)

    @torch.no_grad()
    def encode_portrait(self, latents: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
                        ) -> ReferenceBank:
        """The reference bank of portraits [B, C, H, W]: compute once per avatar, reuse for every clip."""
        return ReferenceBank(self(latents, 0, encoder_hidden_states).features)

    @torch.no_grad()
    def encode_motion_frames(self, latents: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
                             ) -> dict[str, torch.Tensor]:
        """Motion-frame features of the previous clip's last frames [B, M, C, H, W] → path → [B, M, L, C]."""
        batch, frames = latents.shape[:2]
        ehs = None if encoder_hidden_states is None else encoder_hidden_states.repeat_interleave(frames, dim=0)
        features = self(latents.reshape(batch * frames, *latents.shape[2:]), 0, ehs).features
        return {k: v.reshape(batch, frames, *v.shape[1:]) for k, v in features.items()}


def reference_config(denoiser_config: dict[str, Any], cross_attention_dim: int | None = None) -> dict[str, Any]:
    """The ReferenceNet config matching a denoiser config (same layout and widths)."""
    keep = ("sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block",
            "down_block_types", "up_block_types", "num_attention_heads", "norm_num_groups", "norm_eps")
    config = {k: denoiser_config[k] for k in keep if k in denoiser_config}
    config.update(cross_attention_dim=cross_attention_dim, with_output_head=False, audio_mode="none",
                  use_motion_module=False, num_speed_buckets=0, speed_embedding_dim=0)
    return config
