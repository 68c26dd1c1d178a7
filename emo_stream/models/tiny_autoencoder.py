"""A small autoencoder with ``AutoencoderKL``'s interface, for models trained here on a CPU.

diffusers' ``AutoencoderTiny`` (TAESD's layout: plain 3×3 convolutions and ReLUs, no normalisation, no attention)
behind the calls the pipelines make of a VAE: ``encode(x).latent_dist.{mean,sample(),mode(),kl()}``,
``decode(z).sample``, ``config.{scaling_factor,latent_channels,sample_size}``. The posterior is a point (zero
variance, KL 0): the tiny model's autoencoder is a plain one.

Why not ``AutoencoderKL`` at small widths: its GroupNorms normalise away each group's level over the whole
image, which the network must learn to carry some other way; in the minutes of training a CPU allows (1,000 steps
of 8 frames) it returns grey, blurred faces, with the mouth shut even on training frames. Without the
normalisation the colours and the mouth come back within the same steps.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderTiny
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput


class TinyAutoencoder(AutoencoderTiny):
    """``AutoencoderTiny`` that answers like ``AutoencoderKL`` (see the module's docstring).

    Args (besides ``AutoencoderTiny``'s):
        sample_size: the image side it is trained for (``AutoencoderKL``'s config field of that name).

    Each stage's width must be the same (``AutoencoderTiny``'s stride-2 convolutions keep their width); the
    number of stages sets the downsampling factor (4 stages: f = 8).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_block_out_channels: tuple[int, ...] = (32, 32, 32, 32),
        decoder_block_out_channels: tuple[int, ...] = (32, 32, 32, 32),
        latent_channels: int = 4,
        num_encoder_blocks: tuple[int, ...] = (1, 2, 2, 2),
        num_decoder_blocks: tuple[int, ...] = (2, 2, 2, 1),
        scaling_factor: float = 1.0,
        sample_size: int = 128,
        act_fn: str = "relu",
        upsample_fn: str = "nearest",
        upsampling_scaling_factor: int = 2,
        latent_magnitude: int = 3,
        latent_shift: float = 0.5,
        force_upcast: bool = False,
        shift_factor: float = 0.0,
        block_out_channels: tuple[int, ...] | None = None,  # AutoencoderTiny records it; a saved config has it
    ) -> None:
        super().__init__(
            in_channels=in_channels, out_channels=out_channels,
            encoder_block_out_channels=tuple(encoder_block_out_channels),
            decoder_block_out_channels=tuple(decoder_block_out_channels),
            act_fn=act_fn, upsample_fn=upsample_fn, latent_channels=latent_channels,
            upsampling_scaling_factor=upsampling_scaling_factor, num_encoder_blocks=tuple(num_encoder_blocks),
            num_decoder_blocks=tuple(num_decoder_blocks), latent_magnitude=latent_magnitude,
            latent_shift=latent_shift, force_upcast=force_upcast, scaling_factor=scaling_factor,
            shift_factor=shift_factor)

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        latents = super().encode(x).latents
        # A point posterior: mean = sample = mode, KL 0 (DiagonalGaussianDistribution's deterministic form).
        posterior = DiagonalGaussianDistribution(torch.cat([latents, torch.zeros_like(latents)], dim=1),
                                                 deterministic=True)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)
