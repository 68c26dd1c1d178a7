"""Face locator: a small conv encoder of the face-region mask whose output is added after the denoiser's ``conv_in``.

It tells the denoiser *where* the face may move (EMO's face locator; EchoMimic/Hallo ``FaceLocator``). Names
follow upstream: ``conv_in``, ``blocks.0-5`` (3×3 convs, odd ones stride 2) and a zero-initialised ``conv_out``,
so a fresh locator adds nothing until trained. Condition channels (1: box mask, 3: region image) and block
widths come from the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class FaceLocatorOutput(BaseOutput):
    """Output of ``FaceLocator``.

    Attributes:
        features: [N, C_out, H/2^k, W/2^k] features at latent size, to add after the denoiser's ``conv_in``.
    """

    features: torch.Tensor


class FaceLocator(ModelMixin, ConfigMixin):
    """Face-region mask (image size) → features at latent size.

    Args:
        embedding_channels: output width (the denoiser's first block width, 320 for SD-1.5).
        conditioning_channels: mask channels (EchoMimic 1, Hallo 3).
        block_out_channels: widths of the stages; each stage after the first halves the resolution
            (EchoMimic (16, 32, 96, 256), Hallo (16, 32, 64, 128): 8× down to latent size).
    """

    @register_to_config
    def __init__(
        self,
        embedding_channels: int = 320,
        conditioning_channels: int = 1,
        block_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    ) -> None:
        super().__init__()
        widths = list(block_out_channels)
        self.conv_in = nn.Conv2d(conditioning_channels, widths[0], kernel_size=3, padding=1)
        blocks = []
        for c_in, c_out in zip(widths[:-1], widths[1:], strict=True):
            blocks.append(nn.Conv2d(c_in, c_in, kernel_size=3, padding=1))
            blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, stride=2))
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(widths[-1], embedding_channels, kernel_size=3, padding=1)
        # Zero init: the locator starts as a no-op on the denoiser (ControlNet-style).
        nn.init.zeros_(self.conv_out.weight)
        assert self.conv_out.bias is not None  # Conv2d's default bias=True
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, mask: torch.Tensor, return_dict: bool = True) -> FaceLocatorOutput | tuple[torch.Tensor]:
        """mask [N, conditioning_channels, H, W] in [0, 1] → features [N, embedding_channels, H/8, W/8]."""
        x = F.silu(self.conv_in(mask))
        for block in self.blocks:
            x = F.silu(block(x))
        x = self.conv_out(x)
        if not return_dict:
            return (x,)
        return FaceLocatorOutput(features=x)
