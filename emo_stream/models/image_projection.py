"""Image projection: a face-identity embedding → a few tokens for the spatial ``attn2`` (Hallo's ``imageproj``).

Hallo feeds an insightface 512-d face embedding through an IP-Adapter-style ``ImageProjModel`` (``proj``,
``norm``) to 4 tokens of width 768 that both UNets' ``attn2`` attend to. EchoMimic has no such part.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class ImageProjectionOutput(BaseOutput):
    """Output of ``ImageProjection``.

    Attributes:
        tokens: [B, context_tokens, cross_attention_dim].
    """

    tokens: torch.Tensor


class ImageProjection(ModelMixin, ConfigMixin):
    """Face embedding [B, embedding_dim] → tokens [B, context_tokens, cross_attention_dim].

    Args:
        cross_attention_dim: token width (the UNets' ``cross_attention_dim``; Hallo 768).
        embedding_dim: face-embedding width (insightface: 512).
        context_tokens: tokens produced (Hallo: 4).
    """

    @register_to_config
    def __init__(self, cross_attention_dim: int = 768, embedding_dim: int = 512, context_tokens: int = 4) -> None:
        super().__init__()
        self.proj = nn.Linear(embedding_dim, context_tokens * cross_attention_dim)
        self.norm = nn.LayerNorm(cross_attention_dim)

    def forward(self, embeds: torch.Tensor, return_dict: bool = True) -> ImageProjectionOutput | tuple[torch.Tensor]:
        cfg = self.config
        tokens = self.norm(self.proj(embeds).reshape(-1, cfg.context_tokens, cfg.cross_attention_dim))
        if not return_dict:
            return (tokens,)
        return ImageProjectionOutput(tokens=tokens)
