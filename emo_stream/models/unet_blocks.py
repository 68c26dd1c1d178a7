"""UNet blocks of the EMO denoiser and ReferenceNet, named like diffusers' SD-1.5 UNet.

Each block holds ``resnets`` (diffusers ``ResnetBlock2D``), and where it has them ``attentions``
(``SpatialTransformer``: GroupNorm, 1×1-conv ``proj_in``/``proj_out``, one diffusers ``BasicTransformerBlock``),
``audio_modules`` (the separate audio slot), ``motion_modules`` (temporal layers) and ``downsamplers`` /
``upsamplers`` (diffusers ``Downsample2D``/``Upsample2D``). Convolutions are 2-D and frames are folded into
the batch ([B·F, C, H, W]); only the motion modules look across frames. Per-call inputs that every layer may
need travel in one ``BlockContext``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from emo_stream.models.audio_attention import AudioModule
from emo_stream.models.temporal import MotionModule


@dataclass
class BlockContext:
    """What every block needs besides its hidden states, for one forward call.

    Attributes:
        temb: [B·F, T] time embedding per row.
        num_frames: F (1 for the ReferenceNet).
        encoder_hidden_states: [B·F, N, C] tokens for the spatial ``attn2`` (audio tokens in the inline slot,
            face/image tokens otherwise), or None when the blocks have no ``attn2``.
        audio_tokens: [B·F, N, C] tokens for ``audio_modules`` (separate slot), or None.
        region_masks: [B·F, 3, h, w] full/face/lip masks at latent size, for ``audio_modules``.
        motion_features: block path → [B, M, L, C] ReferenceNet features of motion frames.
        speed_embedding: [B, F, D] speed embedding, or None.
        plain_block_motion: run motion modules of blocks without attention (False = Hallo's inference path).
    """

    temb: torch.Tensor
    num_frames: int = 1
    encoder_hidden_states: torch.Tensor | None = None
    audio_tokens: torch.Tensor | None = None
    region_masks: torch.Tensor | None = None
    motion_features: dict[str, torch.Tensor] = field(default_factory=dict)
    speed_embedding: torch.Tensor | None = None
    plain_block_motion: bool = True
    _masks_by_size: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def masks_at(self, height: int, width: int) -> torch.Tensor:
        """Region masks resized (area average) to one block's resolution; cached per size."""
        if self.region_masks is None:
            raise ValueError("audio modules need region masks")
        key = (height, width)
        if key not in self._masks_by_size:
            masks = self.region_masks
            if masks.shape[-2:] != key:
                masks = F.interpolate(masks.float(), size=key, mode="area").to(masks.dtype)
            self._masks_by_size[key] = masks
        return self._masks_by_size[key]

    def motion_frames_for(self, attention_path: str, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """Motion-frame features of one spatial transformer as [B, M, C, H, W], or None."""
        feats = self.motion_features.get(attention_path)
        if feats is None:
            return None
        batch, frames, tokens, channels = feats.shape
        height, width = hidden_states.shape[-2:]
        if tokens != height * width:
            raise ValueError(f"{attention_path}: motion features have {tokens} tokens, expected {height * width}")
        return feats.permute(0, 1, 3, 2).reshape(batch, frames, channels, height, width)


class SpatialTransformer(nn.Module):
    """SD-1.5 spatial transformer: GroupNorm → 1×1 conv → ``BasicTransformerBlock`` → 1×1 conv, residual.

    ``attn2`` exists only when ``cross_attention_dim`` is set (EchoMimic's ReferenceNet has none).
    """

    def __init__(self, channels: int, num_heads: int, cross_attention_dim: int | None, norm_num_groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            [
                BasicTransformerBlock(
                    channels,
                    num_heads,
                    channels // num_heads,
                    cross_attention_dim=cross_attention_dim,
                    activation_fn="geglu",
                    norm_type="layer_norm",
                )
            ]
        )
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None) -> torch.Tensor:
        rows, channels, height, width = hidden_states.shape
        x = self.proj_in(self.norm(hidden_states))
        tokens = x.permute(0, 2, 3, 1).reshape(rows, height * width, channels)
        for block in self.transformer_blocks:
            tokens = block(tokens, encoder_hidden_states=encoder_hidden_states)
        x = tokens.reshape(rows, height, width, channels).permute(0, 3, 1, 2)
        return self.proj_out(x) + hidden_states


@dataclass
class BlockOptions:
    """Construction options shared by all blocks of one UNet."""

    temb_channels: int
    num_heads: int
    norm_num_groups: int
    norm_eps: float
    cross_attention_dim: int | None
    motion: bool
    motion_num_heads: int
    motion_max_positions: int
    speed_embedding_dim: int
    audio_dim: int | None  # set: build audio_modules (separate slot)

    def resnet(self, in_channels: int, out_channels: int) -> ResnetBlock2D:
        return ResnetBlock2D(
            in_channels=in_channels,
            out_channels=out_channels,
            temb_channels=self.temb_channels,
            groups=self.norm_num_groups,
            eps=self.norm_eps,
        )

    def attention(self, channels: int) -> SpatialTransformer:
        return SpatialTransformer(channels, self.num_heads, self.cross_attention_dim, self.norm_num_groups)

    def motion_module(self, channels: int) -> MotionModule:
        return MotionModule(
            channels,
            num_heads=self.motion_num_heads,
            max_positions=self.motion_max_positions,
            norm_num_groups=self.norm_num_groups,
            speed_embedding_dim=self.speed_embedding_dim,
        )

    def audio_module(self, channels: int, inner_channels: int) -> AudioModule:
        assert self.audio_dim is not None
        return AudioModule(channels, inner_channels, self.audio_dim, self.num_heads, self.norm_num_groups)


class _Block(nn.Module):
    """Shared forward pieces: one layer = resnet → [attention → audio module] → motion module."""

    path: str = ""
    has_attention = False
    resnets: nn.ModuleList
    attentions: nn.ModuleList

    def _layer(self, j: int, hidden_states: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        hidden_states = self.resnets[j](hidden_states, ctx.temb)
        attention_path = None
        if self.has_attention:
            hidden_states = self.attentions[j](hidden_states, ctx.encoder_hidden_states)
            attention_path = f"{self.path}.attentions.{j}.transformer_blocks.0"
            audio_modules = getattr(self, "audio_modules", None)
            if audio_modules is not None:
                if ctx.audio_tokens is None:
                    raise ValueError("the separate audio slot needs audio tokens")
                masks = ctx.masks_at(*hidden_states.shape[-2:])
                hidden_states = audio_modules[j](hidden_states, ctx.audio_tokens, masks)
        motion_modules = getattr(self, "motion_modules", None)
        if motion_modules is not None and (self.has_attention or ctx.plain_block_motion):
            motion_frames = ctx.motion_frames_for(attention_path, hidden_states) if attention_path else None
            hidden_states = motion_modules[j](hidden_states, ctx.num_frames, motion_frames, ctx.speed_embedding)
        return hidden_states


class DownBlock(_Block):
    """Down block: ``layers`` resnets (with attentions when ``has_attention``), then an optional stride-2 conv."""

    def __init__(
        self,
        path: str,
        in_channels: int,
        out_channels: int,
        layers: int,
        has_attention: bool,
        add_downsample: bool,
        opts: BlockOptions,
        audio_inner: list[int] | None,
    ) -> None:
        super().__init__()
        self.path = path
        self.has_attention = has_attention
        self.resnets = nn.ModuleList(
            [opts.resnet(in_channels if j == 0 else out_channels, out_channels) for j in range(layers)]
        )
        if has_attention:
            self.attentions = nn.ModuleList([opts.attention(out_channels) for _ in range(layers)])
            if audio_inner is not None:
                self.audio_modules = nn.ModuleList([opts.audio_module(out_channels, w) for w in audio_inner])
        if opts.motion:
            self.motion_modules = nn.ModuleList([opts.motion_module(out_channels) for _ in range(layers)])
        if add_downsample:
            self.downsamplers = nn.ModuleList(
                [Downsample2D(out_channels, use_conv=True, out_channels=out_channels, padding=1, name="op")]
            )

    def forward(self, hidden_states: torch.Tensor, ctx: BlockContext) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        skips: tuple[torch.Tensor, ...] = ()
        for j in range(len(self.resnets)):
            hidden_states = self._layer(j, hidden_states, ctx)
            skips += (hidden_states,)
        if hasattr(self, "downsamplers"):
            hidden_states = self.downsamplers[0](hidden_states)
            skips += (hidden_states,)
        return hidden_states, skips


class MidBlock(_Block):
    """Mid block: resnet, then ``attention → [audio] → [motion] → resnet``."""

    has_attention = True

    def __init__(self, path: str, channels: int, opts: BlockOptions, audio_inner: list[int] | None) -> None:
        super().__init__()
        self.path = path
        self.resnets = nn.ModuleList([opts.resnet(channels, channels) for _ in range(2)])
        self.attentions = nn.ModuleList([opts.attention(channels)])
        if audio_inner is not None:
            self.audio_modules = nn.ModuleList([opts.audio_module(channels, w) for w in audio_inner])
        if opts.motion:
            self.motion_modules = nn.ModuleList([opts.motion_module(channels)])

    def forward(self, hidden_states: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        hidden_states = self.resnets[0](hidden_states, ctx.temb)
        hidden_states = self.attentions[0](hidden_states, ctx.encoder_hidden_states)
        attention_path = f"{self.path}.attentions.0.transformer_blocks.0"
        if hasattr(self, "audio_modules"):
            if ctx.audio_tokens is None:
                raise ValueError("the separate audio slot needs audio tokens")
            masks = ctx.masks_at(*hidden_states.shape[-2:])
            hidden_states = self.audio_modules[0](hidden_states, ctx.audio_tokens, masks)
        if hasattr(self, "motion_modules"):
            motion_frames = ctx.motion_frames_for(attention_path, hidden_states)
            hidden_states = self.motion_modules[0](hidden_states, ctx.num_frames, motion_frames, ctx.speed_embedding)
        return self.resnets[1](hidden_states, ctx.temb)


class UpBlock(_Block):
    """Up block: ``layers`` resnets over [hidden, skip] (with attentions when ``has_attention``), optional 2× up."""

    def __init__(
        self,
        path: str,
        in_channels: int,
        prev_output_channels: int,
        out_channels: int,
        layers: int,
        has_attention: bool,
        add_upsample: bool,
        opts: BlockOptions,
        audio_inner: list[int] | None,
    ) -> None:
        super().__init__()
        self.path = path
        self.has_attention = has_attention
        resnets = []
        for j in range(layers):
            skip_channels = in_channels if j == layers - 1 else out_channels
            resnet_in = prev_output_channels if j == 0 else out_channels
            resnets.append(opts.resnet(resnet_in + skip_channels, out_channels))
        self.resnets = nn.ModuleList(resnets)
        if has_attention:
            self.attentions = nn.ModuleList([opts.attention(out_channels) for _ in range(layers)])
            if audio_inner is not None:
                self.audio_modules = nn.ModuleList([opts.audio_module(out_channels, w) for w in audio_inner])
        if opts.motion:
            self.motion_modules = nn.ModuleList([opts.motion_module(out_channels) for _ in range(layers)])
        if add_upsample:
            self.upsamplers = nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])

    def forward(
        self,
        hidden_states: torch.Tensor,
        skips: tuple[torch.Tensor, ...],
        ctx: BlockContext,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        for j in range(len(self.resnets)):
            skip, skips = skips[-1], skips[:-1]
            hidden_states = torch.cat([hidden_states, skip], dim=1)
            hidden_states = self._layer(j, hidden_states, ctx)
        if hasattr(self, "upsamplers"):
            hidden_states = self.upsamplers[0](hidden_states, output_size=upsample_size)
        return hidden_states
