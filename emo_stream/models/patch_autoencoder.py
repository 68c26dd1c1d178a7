"""A linear patch autoencoder (PCA of f × f RGB patches) with ``AutoencoderKL``'s interface, for models trained
here on a CPU.

Encode: cut the image into f × f patches (``pixel_unshuffle``), subtract the mean patch and project onto the top
``latent_channels`` principal directions. Decode: the transpose. By default the components keep their natural
scales (the first carries most of the variance, as coarse structure does in pixels), so the diffusion noise
drowns fine detail first and coarse structure last, as it does for an image; ``whiten`` divides each by its
standard deviation instead (every channel of equal variance) — a tiny denoiser trained on whitened latents drew
blocky colour noise. It is *fitted* (``fit``: one eigendecomposition of the patch covariance), not trained by
gradient steps, in seconds.

Why: a convolutional autoencoder trained for the minutes a CPU allows (1,000 steps of 8 frames) returns grey,
blurred faces with the mouth shut; the held-out mouth motion it carries (``scripts/ae_ceiling.py``: the teacher's
own videos through it) is r 0.22–0.34 with a speech mouth range of 0.03–0.04 eye spans. A 32-component patch PCA
(12× compression at f = 8) carries r 0.63 and 0.085 — near the teacher's 0.78 and 0.088 — and the tiny denoiser
costs the same: only its first and last convolutions see the channel count. But the tiny denoiser, trained as
long as ``make train-tiny`` allows, leaves visible noise in a lower face generated on it
(docs/research/tiny-model.md), so ``tiny_face`` keeps its trained VAE and this is ``tiny_face_patch``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, overload

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin


class PatchAutoencoder(ModelMixin, ConfigMixin):
    """PCA of ``patch_size``² RGB patches, optionally whitened (see the module's docstring).

    Args:
        in_channels: image channels (3).
        patch_size: f, the downsampling factor.
        latent_channels: principal components kept per patch (≤ in_channels × f²).
        sample_size: the image side it is fitted for (``AutoencoderKL``'s config field of that name).
        scaling_factor: the latents' scale for the diffusion model (``AutoencoderKL``'s).
        whiten: each component divided by its standard deviation (see the module's docstring).
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, patch_size: int = 8, latent_channels: int = 32, sample_size: int = 128,
                 scaling_factor: float = 1.0, whiten: bool = False) -> None:
        super().__init__()
        dim = in_channels * patch_size * patch_size
        if not 0 < latent_channels <= dim:
            raise ValueError(f"latent_channels must be in 1..{dim}, got {latent_channels}")
        # Until fit(): the first latent_channels pixels of each patch, unit scale (a valid, poor code).
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("basis", torch.eye(dim)[:latent_channels].clone())
        self.register_buffer("scale", torch.ones(latent_channels))

    @property
    def patch_dim(self) -> int:
        return self.basis.shape[1]

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] → [B, H/f, W/f, C·f²]."""
        return F.pixel_unshuffle(x, self.config.patch_size).permute(0, 2, 3, 1)

    @torch.no_grad()
    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]) -> int:
        """Set the mean patch, the principal directions and their scales from ``(frames, weights)`` batches:
        frames [N, C, H, W] in [-1, 1]; weights [N, 1, H, W] or None weigh each patch by its mean pixel weight
        (e.g. the lower face more). Moments accumulate in float64, so any number of batches fits in memory.
        Returns the number of patches seen."""
        dim, f = self.patch_dim, self.config.patch_size
        total, count = 0.0, 0
        first = torch.zeros(dim, dtype=torch.float64)
        second = torch.zeros(dim, dim, dtype=torch.float64)
        for frames, weights in batches:
            patches = self._patches(frames.double()).reshape(-1, dim)
            w = (torch.ones(patches.shape[0], dtype=torch.float64) if weights is None
                 else F.avg_pool2d(weights.double(), f).reshape(-1))
            total += float(w.sum())
            first += (w[:, None] * patches).sum(0)
            second += patches.T @ (w[:, None] * patches)
            count += patches.shape[0]
        if count == 0:
            raise ValueError("PatchAutoencoder.fit: no frames")
        mean = first / total
        covariance = second / total - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        order = torch.argsort(eigenvalues, descending=True)[: self.config.latent_channels]
        basis = eigenvectors[:, order].T
        # A sign convention per direction (largest loading positive): the same data always gives the same code.
        flip = torch.sign(basis.gather(1, basis.abs().argmax(1, keepdim=True)))
        self.mean.copy_(mean.float())
        self.basis.copy_((basis * flip).float())
        if self.config.whiten:
            self.scale.copy_(eigenvalues[order].clamp_min(1e-8).sqrt().float())
        return count

    @overload
    def encode(self, x: torch.Tensor, return_dict: Literal[True] = True) -> AutoencoderKLOutput: ...
    @overload
    def encode(self, x: torch.Tensor, return_dict: Literal[False]) -> tuple: ...
    @overload
    def encode(self, x: torch.Tensor, return_dict: bool) -> AutoencoderKLOutput | tuple: ...

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        z = ((self._patches(x) - self.mean) @ self.basis.T) / self.scale
        latents = z.permute(0, 3, 1, 2).contiguous()
        # A point posterior: mean = sample = mode, KL 0 (DiagonalGaussianDistribution's deterministic form).
        posterior = DiagonalGaussianDistribution(torch.cat([latents, torch.zeros_like(latents)], dim=1),
                                                 deterministic=True)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    @overload
    def decode(self, z: torch.Tensor, return_dict: Literal[True] = True) -> DecoderOutput: ...
    @overload
    def decode(self, z: torch.Tensor, return_dict: Literal[False]) -> tuple: ...
    @overload
    def decode(self, z: torch.Tensor, return_dict: bool) -> DecoderOutput | tuple: ...

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        patches = (z.permute(0, 2, 3, 1) * self.scale) @ self.basis + self.mean
        image = F.pixel_shuffle(patches.permute(0, 3, 1, 2).contiguous(), self.config.patch_size)
        return DecoderOutput(sample=image) if return_dict else (image,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        return self.decode(self.encode(sample).latent_dist.mean, return_dict=return_dict)
