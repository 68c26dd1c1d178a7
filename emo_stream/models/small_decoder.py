"""Small decoder: a TAESD-style latent → RGB decoder for streaming, a few % of the VAE decoder's FLOPs.

The full SD VAE decoder spends most of its ~2.5 TFLOPs per 512² frame in wide convs at high resolution; a
TAESD-style decoder (plain 3×3 convs with ReLU, nearest upsampling, no attention or norms) is small enough
to decode every streamed frame. Built from diffusers' ``AutoencoderTinyBlock``; unlike diffusers'
``DecoderTiny`` the stage widths may differ, so the full-resolution stage can be narrow (that stage
dominates the cost). It takes the diffusion latents as the denoiser produces them (VAE-scaled) and returns
RGB in [-1, 1]; it is trained by distillation from the VAE decoder (emo_stream.training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class SmallDecoderOutput(BaseOutput):
    """Output of ``SmallDecoder``.

    Attributes:
        sample: [N, 3, H·2^k, W·2^k] RGB in [-1, 1].
    """

    sample: torch.Tensor


class SmallDecoder(ModelMixin, ConfigMixin):
    """Latents [N, C, h, w] → RGB [N, 3, 8h, 8w] (three 2× upsamplings for four stages).

    Args:
        latent_channels: C.
        block_out_channels: width of each stage, lowest resolution first.
        num_blocks: residual blocks per stage.
        out_channels: image channels.
    """

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        block_out_channels: tuple[int, ...] = (64, 64, 64, 32),
        num_blocks: tuple[int, ...] = (3, 3, 3, 1),
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        widths = list(block_out_channels)
        if len(widths) != len(num_blocks):
            raise ValueError("block_out_channels and num_blocks need one value per stage")
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, widths[0], kernel_size=3, padding=1), nn.ReLU()]
        for i, blocks in enumerate(num_blocks):
            layers += [AutoencoderTinyBlock(widths[i], widths[i], "relu") for _ in range(blocks)]
            if i < len(widths) - 1:
                layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                layers.append(nn.Conv2d(widths[i], widths[i + 1], kernel_size=3, padding=1, bias=False))
        layers.append(nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    @property
    def upscale(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(self, latents: torch.Tensor, return_dict: bool = True) -> SmallDecoderOutput | tuple[torch.Tensor]:
        # TAESD's soft clamp: keeps out-of-range latents from blowing up the ReLU stack.
        x = self.layers(torch.tanh(latents / 3) * 3)
        if not return_dict:
            return (x,)
        return SmallDecoderOutput(sample=x)
