"""Temporal (motion) layers: AnimateDiff-v2 "Vanilla" motion modules, with EMO's motion-frame and speed inputs.

Parameter names follow AnimateDiff's ``motion_module.py`` exactly (``temporal_transformer.{norm,proj_in,
proj_out}``, ``transformer_blocks.0.attention_blocks.{0,1}`` with a ``pos_encoder.pe`` buffer, ``norms``,
``ff``, ``ff_norm``), so EchoMimic's ``motion_module.pth`` and Hallo's ``motion_modules.*`` keys load as they
are. The math is built from diffusers' ``Attention``, ``FeedForward`` and ``SinusoidalPositionalEmbedding``.

Two EMO additions, both neutral for imported weights:

- motion frames: features of the previous clip's last frames (from the ReferenceNet) are prepended along
  the frame axis before temporal attention and dropped after it (EMO; Hallo does the same);
- speed: an optional per-frame head-speed embedding, projected by a zero-initialised ``speed_proj`` and
  added to the temporal tokens, so a module without trained speed weights computes what its source did.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import SinusoidalPositionalEmbedding
from torch import nn


class TemporalSelfAttention(Attention):
    """Self-attention along the frame axis with a sinusoidal position encoding added to its input.

    AnimateDiff's ``VersatileAttention`` in "Temporal" mode: tokens are [B·H·W, F, C]; the encoding is added
    to the normalised input before Q/K/V, and lives in the persistent buffer ``pos_encoder.pe`` [1, P, C].
    """

    def __init__(self, dim: int, num_heads: int, max_positions: int) -> None:
        super().__init__(query_dim=dim, heads=num_heads, dim_head=dim // num_heads, bias=False)
        self.pos_encoder = SinusoidalPositionalEmbedding(dim, max_seq_length=max_positions)

    def forward(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        return super().forward(self.pos_encoder(hidden_states))


class TemporalTransformerBlock(nn.Module):
    """Two pre-norm temporal self-attentions and a GEGLU feed-forward (AnimateDiff ``TemporalTransformerBlock``)."""

    def __init__(self, dim: int, num_heads: int, max_positions: int, num_attention_blocks: int = 2) -> None:
        super().__init__()
        self.attention_blocks = nn.ModuleList(
            [TemporalSelfAttention(dim, num_heads, max_positions) for _ in range(num_attention_blocks)]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(num_attention_blocks)])
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms, strict=True):
            tokens = attention(norm(tokens)) + tokens
        return self.ff(self.ff_norm(tokens)) + tokens


class TemporalTransformer(nn.Module):
    """GroupNorm per frame → Linear in → temporal blocks → Linear out (AnimateDiff ``TemporalTransformer3DModel``)."""

    def __init__(self, channels: int, num_heads: int, max_positions: int, norm_num_groups: int = 32) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(channels, channels)
        self.transformer_blocks = nn.ModuleList([TemporalTransformerBlock(channels, num_heads, max_positions)])
        self.proj_out = nn.Linear(channels, channels)


class MotionModule(nn.Module):
    """One temporal layer: mixes each spatial position's features across the frames of a clip.

    Args:
        channels: feature width at this point of the UNet.
        num_heads: attention heads (8 in AnimateDiff-v2).
        max_positions: length of the position table; motion frames + clip frames must fit (32 upstream).
        norm_num_groups: GroupNorm groups.
        speed_embedding_dim: width of the speed embedding, or 0 for no speed input (no extra weights).
        zero_init: zero ``proj_out`` so a new module starts as the identity (AnimateDiff's initialisation).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 8,
        max_positions: int = 32,
        norm_num_groups: int = 32,
        speed_embedding_dim: int = 0,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.temporal_transformer = TemporalTransformer(channels, num_heads, max_positions, norm_num_groups)
        if zero_init:
            nn.init.zeros_(self.temporal_transformer.proj_out.weight)
            nn.init.zeros_(self.temporal_transformer.proj_out.bias)
        self.speed_proj = None
        if speed_embedding_dim:
            # Zero-initialised so that adding speed conditioning to imported weights changes nothing until trained.
            self.speed_proj = nn.Linear(speed_embedding_dim, channels)
            nn.init.zeros_(self.speed_proj.weight)
            nn.init.zeros_(self.speed_proj.bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_frames: int,
        motion_frames: torch.Tensor | None = None,
        speed_embedding: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mix frames.

        Args:
            hidden_states: [B·F, C, H, W], frames folded into the batch.
            num_frames: F.
            motion_frames: [B, M, C, H, W] features of earlier frames to attend to (not returned), or None.
            speed_embedding: [B, F, D] per-frame speed embedding (used only if the module has ``speed_proj``).

        Returns:
            [B·F, C, H, W].
        """
        rows, channels, height, width = hidden_states.shape
        batch = rows // num_frames
        video = hidden_states.view(batch, num_frames, channels, height, width)
        prefix = 0
        if motion_frames is not None and motion_frames.shape[1] > 0:
            prefix = motion_frames.shape[1]
            video = torch.cat([motion_frames.to(video.dtype), video], dim=1)
        frames = prefix + num_frames
        if frames > self.max_positions:
            raise ValueError(f"{frames} frames (incl. {prefix} motion frames) exceed {self.max_positions} positions")
        tt = self.temporal_transformer
        residual = video
        normed = tt.norm(video.reshape(batch * frames, channels, height, width))
        # [B·F, C, H, W] -> [B·H·W, F, C]: every spatial position becomes one sequence over frames.
        tokens = normed.view(batch, frames, channels, height * width).permute(0, 3, 1, 2)
        tokens = tt.proj_in(tokens.reshape(batch * height * width, frames, channels))
        if self.speed_proj is not None and speed_embedding is not None:
            speed = self.speed_proj(speed_embedding.to(tokens.dtype))  # [B, F, C]
            speed = torch.cat([speed.new_zeros(batch, prefix, channels), speed], dim=1)
            tokens = tokens + speed.repeat_interleave(height * width, dim=0)
        for block in tt.transformer_blocks:
            tokens = block(tokens)
        tokens = tt.proj_out(tokens)
        out = tokens.view(batch, height * width, frames, channels).permute(0, 2, 3, 1)
        out = out.reshape(batch, frames, channels, height, width) + residual
        return out[:, prefix:].reshape(rows, channels, height, width)
