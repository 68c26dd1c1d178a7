"""What sampling keeps between calls: a portrait's cached encodings and the carry from one clip to the next."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from emo_stream.models.reference_net import ReferenceBank


@dataclass
class PortraitState:
    """Everything the pipeline derives from one portrait; compute once per avatar and reuse.

    Attributes:
        latents: [1, C, h, w] VAE latents of the portrait.
        bank: the ReferenceNet's reference bank (portrait features, no motion frames).
        face_features: [1, C0, h, w] face-locator output.
        region_masks: [1, 3, h, w] full/face/lip masks at latent size (separate audio slot).
        face_tokens: [1, T, C] image-projection tokens for ``attn2`` (Hallo), or None.
        pixels: [1, 3, S, S] the portrait in [-1, 1] at the output size (``decode_residual``).
        generate_mask: [1, 1, h, w] in [0, 1], where the model generates (``generate_region``); None = everywhere.
        residual_bases: per decoder, ``pixels - decode(latents)`` (filled on first use; ``decode_residual``).
    """

    latents: torch.Tensor
    bank: ReferenceBank
    face_features: torch.Tensor
    region_masks: torch.Tensor
    face_tokens: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    generate_mask: torch.Tensor | None = None
    residual_bases: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MotionCarry:
    """What one clip hands to the next.

    Attributes:
        latents: [1, M, C, h, w] clean latents of the clip's last M frames (the next clip's motion frames).
        noise: [1, C, h, w] initial noise of the clip's last frame (continued by the next clip's noise).
    """

    latents: torch.Tensor
    noise: torch.Tensor
