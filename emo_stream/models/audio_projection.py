"""Audio projection: the optional MLP from stacked speech-encoder states to per-frame audio tokens.

Hallo's ``AudioProjModel``: each video frame's window of encoder states [W, L, C] (W neighbouring audio
frames × L hidden layers) is flattened and mapped by three linear layers (``proj1``, ``proj2``, ``proj3``)
to ``context_tokens`` tokens, then LayerNorm-ed (``norm``). EchoMimic has no projection: its denoiser
attends the W·L whisper states directly (see ``SpeechEncoder.tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class AudioProjectionOutput(BaseOutput):
    """Output of ``AudioProjection``.

    Attributes:
        tokens: [B, F, context_tokens, output_dim] audio tokens per video frame.
    """

    tokens: torch.Tensor


class AudioProjection(ModelMixin, ConfigMixin):
    """Per-frame window of encoder states [B, F, W, L, C] → audio tokens [B, F, N, C_out].

    Args:
        window: W, audio frames per video frame (Hallo: 5).
        num_layers: L, encoder hidden states stacked (Hallo: 12).
        channels: C, encoder width (Hallo: 768).
        intermediate_dim: hidden width of the MLP (Hallo: 512).
        output_dim: token width (the denoiser's ``audio_dim``).
        context_tokens: N, tokens per frame (Hallo: 32).
    """

    @register_to_config
    def __init__(
        self,
        window: int = 5,
        num_layers: int = 12,
        channels: int = 768,
        intermediate_dim: int = 512,
        output_dim: int = 768,
        context_tokens: int = 32,
    ) -> None:
        super().__init__()
        self.proj1 = nn.Linear(window * num_layers * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim)

    def forward(self, states: torch.Tensor, return_dict: bool = True) -> AudioProjectionOutput | tuple[torch.Tensor]:
        cfg = self.config
        batch, frames = states.shape[:2]
        expected = (cfg.window, cfg.num_layers, cfg.channels)
        if tuple(states.shape[2:]) != expected:
            raise ValueError(f"audio states must be [B, F, {expected[0]}, {expected[1]}, {expected[2]}], "
                             f"got {tuple(states.shape)}")
        x = states.reshape(batch * frames, -1)
        x = torch.relu(self.proj1(x))
        x = torch.relu(self.proj2(x))
        tokens = self.norm(self.proj3(x).reshape(batch * frames, cfg.context_tokens, cfg.output_dim))
        tokens = tokens.reshape(batch, frames, cfg.context_tokens, cfg.output_dim)
        if not return_dict:
            return (tokens,)
        return AudioProjectionOutput(tokens=tokens)
