"""The UNet shared by the EMO denoiser and the ReferenceNet: SD-1.5's layout and parameter names.

``EmoUNet`` builds ``conv_in``, ``time_embedding``, ``down_blocks``, ``mid_block``, ``up_blocks`` and, when
``with_output_head``, ``conv_norm_out``/``conv_out``, plus the optional EMO layers (``motion_modules``,
``audio_modules``, ``speed_embedding``). ``EmoDenoiser`` and ``ReferenceNet`` are this class with their own
``forward``; both are saved and loaded with diffusers' ``save_pretrained``/``from_pretrained`` (safetensors).
"""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from emo_stream.models.attention_processors import AudioAttnProcessor
from emo_stream.models.unet_blocks import BlockContext, BlockOptions, DownBlock, MidBlock, UpBlock

AUDIO_MODES = ("none", "inline", "separate")


def hallo_audio_widths(block_out_channels: tuple[int, ...], layers_per_block: int, attention_down: list[bool],
                       attention_up: list[bool]) -> list[int]:
    """Inner widths of the separate audio modules in Hallo's layout (down, mid, up order).

    Hallo builds each audio module at the width of the *input* of its layer: in a down block the first layer
    sees the previous block's width and later layers the block's own; every layer of an up block uses the
    up block's ``in_channels`` (the next-deeper width); the mid block its own width.
    """
    widths: list[int] = []
    channels = list(block_out_channels)
    for i, has_attention in enumerate(attention_down):
        block_in = channels[0] if i == 0 else channels[i - 1]
        if has_attention:
            widths += [block_in if j == 0 else channels[i] for j in range(layers_per_block)]
    widths.append(channels[-1])
    reversed_channels = channels[::-1]
    for i, has_attention in enumerate(attention_up):
        block_in = reversed_channels[min(i + 1, len(channels) - 1)]
        if has_attention:
            widths += [block_in] * (layers_per_block + 1)
    return widths


class EmoUNet(ModelMixin, ConfigMixin):
    """SD-1.5-shaped UNet over VAE latents with EMO's optional temporal, audio and speed layers.

    Args:
        sample_size: latent height/width the model was trained at (informational, like diffusers).
        in_channels / out_channels: latent channels.
        block_out_channels: widths of the four resolutions (320, 640, 1280, 1280 for SD-1.5).
        layers_per_block: resnets per down block (up blocks have one more).
        down_block_types / up_block_types: ``"CrossAttnDownBlock"``/``"DownBlock"`` and
            ``"UpBlock"``/``"CrossAttnUpBlock"`` per resolution.
        num_attention_heads: spatial attention heads (SD-1.5: 8).
        norm_num_groups / norm_eps: GroupNorm groups and the resnets' epsilon.
        cross_attention_dim: width of the tokens the spatial ``attn2`` attends to; None removes ``attn2``
            and ``norm2`` (EchoMimic's ReferenceNet). In the ``inline`` audio slot these are audio tokens.
        with_output_head: build ``conv_norm_out``/``conv_out`` (False for the ReferenceNet).
        audio_mode: ``"none"``, ``"inline"`` (spatial ``attn2`` attends audio, EchoMimic) or ``"separate"``
            (``audio_modules`` after each spatial transformer, Hallo).
        audio_tokens / audio_dim: N and C of the per-frame audio tokens [B, F, N, C].
        audio_attention_scale: output scale of inline audio attention (EchoMimic: 3.0).
        audio_module_widths: inner widths of the separate audio modules (down, mid, up order); None = Hallo's rule.
        use_motion_module: build temporal layers (21 for SD-1.5 incl. the mid block).
        motion_module_mid_block: a temporal layer in the mid block too.
        motion_num_heads / motion_max_positions: temporal attention heads and position-table length.
        plain_block_motion: run the temporal layers of blocks without attention; False reproduces Hallo's
            inference path, which skips them.
        num_speed_buckets: head-speed buckets (0 = no speed input, no extra weights).
        speed_embedding_dim: width of the speed embedding.
    """

    _supports_gradient_checkpointing = False
    _attn1_processor: type | None = None

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 4,
        out_channels: int = 4,
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int = 2,
        down_block_types: tuple[str, ...] = ("CrossAttnDownBlock",) * 3 + ("DownBlock",),
        up_block_types: tuple[str, ...] = ("UpBlock",) + ("CrossAttnUpBlock",) * 3,
        num_attention_heads: int = 8,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | None = 384,
        with_output_head: bool = True,
        audio_mode: str = "inline",
        audio_tokens: int = 50,
        audio_dim: int = 384,
        audio_attention_scale: float = 3.0,
        audio_module_widths: list[int] | None = None,
        use_motion_module: bool = True,
        motion_module_mid_block: bool = True,
        motion_num_heads: int = 8,
        motion_max_positions: int = 32,
        plain_block_motion: bool = True,
        num_speed_buckets: int = 0,
        speed_embedding_dim: int = 0,
    ) -> None:
        super().__init__()
        if audio_mode not in AUDIO_MODES:
            raise ValueError(f"audio_mode must be one of {AUDIO_MODES}, got {audio_mode!r}")
        if audio_mode == "inline" and cross_attention_dim != audio_dim:
            raise ValueError(f"inline audio attention needs cross_attention_dim == audio_dim ({audio_dim})")
        if num_speed_buckets and not use_motion_module:
            raise ValueError("speed conditioning enters the temporal layers: it needs use_motion_module")
        if num_speed_buckets and not speed_embedding_dim:
            raise ValueError("num_speed_buckets needs a speed_embedding_dim")
        channels = list(block_out_channels)
        temb_channels = channels[0] * 4
        attention_down = [t == "CrossAttnDownBlock" for t in down_block_types]
        attention_up = [t == "CrossAttnUpBlock" for t in up_block_types]

        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(channels[0], temb_channels)
        if num_speed_buckets:
            self.speed_embedding = TimestepEmbedding(num_speed_buckets, speed_embedding_dim)

        audio_widths = None
        if audio_mode == "separate":
            audio_widths = list(audio_module_widths or hallo_audio_widths(
                tuple(channels), layers_per_block, attention_down, attention_up))
            expected = (sum(attention_down) * layers_per_block + 1 + sum(attention_up) * (layers_per_block + 1))
            if len(audio_widths) != expected:
                raise ValueError(f"audio_module_widths needs {expected} values, got {len(audio_widths)}")
        opts = BlockOptions(
            temb_channels=temb_channels,
            num_heads=num_attention_heads,
            norm_num_groups=norm_num_groups,
            norm_eps=norm_eps,
            cross_attention_dim=cross_attention_dim,
            motion=use_motion_module,
            motion_num_heads=motion_num_heads,
            motion_max_positions=motion_max_positions,
            speed_embedding_dim=speed_embedding_dim if num_speed_buckets else 0,
            audio_dim=audio_dim if audio_mode == "separate" else None,
        )
        widths = iter(audio_widths or [])

        def take(n: int, has_attention: bool) -> list[int] | None:
            return [next(widths) for _ in range(n)] if audio_widths is not None and has_attention else None

        down = []
        for i, has_attention in enumerate(attention_down):
            down.append(DownBlock(
                f"down_blocks.{i}", channels[0] if i == 0 else channels[i - 1], channels[i], layers_per_block,
                has_attention, i < len(channels) - 1, opts, take(layers_per_block, has_attention)))
        self.down_blocks = nn.ModuleList(down)
        mid_opts = opts if motion_module_mid_block else _without_motion(opts)
        self.mid_block = MidBlock("mid_block", channels[-1], mid_opts, take(1, True))
        up = []
        reversed_channels = channels[::-1]
        for i, has_attention in enumerate(attention_up):
            up.append(UpBlock(
                f"up_blocks.{i}", reversed_channels[min(i + 1, len(channels) - 1)],
                reversed_channels[max(i - 1, 0)], reversed_channels[i], layers_per_block + 1, has_attention,
                i < len(channels) - 1, opts, take(layers_per_block + 1, has_attention)))
        self.up_blocks = nn.ModuleList(up)
        if with_output_head:
            self.conv_norm_out = nn.GroupNorm(norm_num_groups, channels[0], eps=norm_eps)
            self.conv_act = nn.SiLU()
            self.conv_out = nn.Conv2d(channels[0], out_channels, kernel_size=3, padding=1)
        self._set_processors()

    # -- processors ----------------------------------------------------------------------------------------

    def _set_processors(self) -> None:
        """Install the role's ``attn1`` processor (reference read/record) and the audio ``attn2`` processor."""
        for name, block in self.transformer_blocks().items():
            if self._attn1_processor is not None:
                block.attn1.set_processor(self._attn1_processor(name))
            if self.config.audio_mode == "inline" and block.attn2 is not None:
                block.attn2.set_processor(AudioAttnProcessor(self.config.audio_attention_scale))

    def transformer_blocks(self) -> dict[str, BasicTransformerBlock]:
        """The spatial ``BasicTransformerBlock``s by path (the keys of a reference bank), in forward order."""
        out: dict[str, BasicTransformerBlock] = {}
        for block in [*self.down_blocks, self.mid_block, *self.up_blocks]:
            for j, attention in enumerate(getattr(block, "attentions", [])):
                out[f"{block.path}.attentions.{j}.transformer_blocks.0"] = attention.transformer_blocks[0]
        return out

    # -- shared forward pieces -----------------------------------------------------------------------------

    def _time_embedding(self, timestep: torch.Tensor | float | int, batch: int, frames: int,
                        dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Embed one timestep per batch element and repeat it for each of its frames: [B·F, T]."""
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], device=device)
        timestep = timestep.to(device).reshape(-1)
        if timestep.numel() == 1:
            timestep = timestep.expand(batch)
        emb = self.time_embedding(self.time_proj(timestep).to(dtype))
        return emb.repeat_interleave(frames, dim=0)

    def _run_blocks(self, hidden_states: torch.Tensor, ctx: BlockContext, stop_after_attentions: bool = False
                    ) -> torch.Tensor:
        """conv_in output → down, mid, up blocks. ``stop_after_attentions`` ends after the last spatial attention."""
        skips: tuple[torch.Tensor, ...] = (hidden_states,)
        for block in self.down_blocks:
            hidden_states, block_skips = block(hidden_states, ctx)
            skips += block_skips
        hidden_states = self.mid_block(hidden_states, ctx)
        for i, block in enumerate(self.up_blocks):
            n = len(cast(UpBlock, block).resnets)  # up_blocks holds UpBlocks
            block_skips, skips = skips[-n:], skips[:-n]
            # Odd latent sizes: upsample to the skip's size, as diffusers does.
            size = skips[-1].shape[-2:] if skips else None
            hidden_states = block(hidden_states, block_skips, ctx, upsample_size=size)
            if stop_after_attentions and not any(
                    getattr(b, "has_attention", False) for b in self.up_blocks[i + 1:]):
                break
        return hidden_states


def _without_motion(opts: BlockOptions) -> BlockOptions:
    return replace(opts, motion=False)
