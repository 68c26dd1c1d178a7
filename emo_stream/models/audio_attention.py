"""Separate audio-attention layers (the ``separate`` audio slot, Hallo's ``audio_modules``).

After each spatial transformer of the denoiser, an ``AudioModule`` lets every latent position attend to the
frame's audio tokens three times — over the whole frame, the face region and the lip region — each result
masked by its region, passed through a zero-initialised 1×1 conv and added. Names and shapes follow
Hallo's ``Transformer3DModel(use_audio_module=True)`` / ``AudioTemporalBasicTransformerBlock``: ``norm``,
``proj_in``/``proj_out`` (1×1 convs between the block width and the module's inner width), and
``transformer_blocks.0.{norm1,attn1,norm2,attn2_0,attn2_1,attn2_2,norm3,ff,zero_conv_full,zero_conv_face,
zero_conv_lip}``.
"""

from __future__ import annotations

import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from torch import nn

from emo_stream.models.attention_processors import attend

REGIONS = ("full", "face", "lip")


def _zero_conv(channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, kernel_size=1)
    nn.init.zeros_(conv.weight)
    assert conv.bias is not None  # Conv2d's default bias=True
    nn.init.zeros_(conv.bias)
    return conv


class AudioTransformerBlock(nn.Module):
    """Self-attention, three region-masked audio cross-attentions (zero convs), feed-forward."""

    def __init__(self, dim: int, num_heads: int, audio_dim: int) -> None:
        super().__init__()
        head_dim = dim // num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=num_heads, dim_head=head_dim)
        self.norm2 = nn.LayerNorm(dim)
        for i in range(len(REGIONS)):
            setattr(self, f"attn2_{i}", Attention(dim, cross_attention_dim=audio_dim, heads=num_heads, dim_head=head_dim))
        for region in REGIONS:
            setattr(self, f"zero_conv_{region}", _zero_conv(dim))
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, tokens: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """tokens [R, H·W, D]; audio [R, N, Ca]; masks [R, 3, H·W] (full, face, lip)."""
        normed = self.norm1(tokens)
        tokens = attend(self.attn1, normed, normed) + tokens
        normed = self.norm2(tokens)
        rows, _, dim = tokens.shape
        added = torch.zeros_like(tokens)
        for i, region in enumerate(REGIONS):
            out = attend(getattr(self, f"attn2_{i}"), normed, audio) * masks[:, i, :, None]
            out = out.transpose(1, 2).reshape(rows, dim, height, width)
            out = getattr(self, f"zero_conv_{region}")(out)
            added = added + out.reshape(rows, dim, height * width).transpose(1, 2)
        tokens = tokens + added
        return self.ff(self.norm3(tokens)) + tokens


class AudioModule(nn.Module):
    """Residual audio layer at one UNet position: GroupNorm → 1×1 conv to ``inner`` → block → 1×1 conv back.

    Args:
        channels: block width where the module sits (its input/output width).
        inner_channels: attention width (Hallo uses the block's *input* width here, see docs/importing.md).
        audio_dim: width of the audio tokens.
        num_heads: attention heads.
        norm_num_groups: GroupNorm groups.
    """

    def __init__(
        self, channels: int, inner_channels: int, audio_dim: int, num_heads: int = 8, norm_num_groups: int = 32
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, inner_channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList([AudioTransformerBlock(inner_channels, num_heads, audio_dim)])
        self.proj_out = nn.Conv2d(inner_channels, channels, kernel_size=1)

    def forward(self, hidden_states: torch.Tensor, audio: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """hidden_states [R, C, H, W]; audio [R, N, Ca]; masks [R, 3, H, W] at this resolution."""
        rows, _, height, width = hidden_states.shape
        x = self.proj_in(self.norm(hidden_states))
        inner = x.shape[1]
        tokens = x.view(rows, inner, height * width).transpose(1, 2)
        flat_masks = masks.reshape(rows, len(REGIONS), height * width).to(tokens.dtype)
        for block in self.transformer_blocks:
            tokens = block(tokens, audio.to(tokens.dtype), flat_masks, height, width)
        x = tokens.transpose(1, 2).reshape(rows, inner, height, width)
        return self.proj_out(x) + hidden_states
