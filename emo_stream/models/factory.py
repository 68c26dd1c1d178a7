"""Build randomly initialised ``EmoComponents`` from named configs (tests, benchmarks, training starts)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import nn

from emo_stream.models import configs as named_configs
from emo_stream.models.audio_projection import AudioProjection
from emo_stream.models.checkpoint import EmoComponents, InferenceSettings
from emo_stream.models.denoiser import EmoDenoiser
from emo_stream.models.face_locator import FaceLocator
from emo_stream.models.image_projection import ImageProjection
from emo_stream.models.reference_net import ReferenceNet
from emo_stream.models.schedulers import make_scheduler
from emo_stream.models.small_decoder import SmallDecoder
from emo_stream.models.speech_encoder import SpeechEncoder

# The layers that start at zero so a fresh (or imported) model ignores them: face locator conv_out, temporal
# proj_out, audio zero convs, speed projections.
ZERO_INIT_SUFFIXES = ("face_locator.conv_out", "temporal_transformer.proj_out", "zero_conv_full", "zero_conv_face",
                      "zero_conv_lip", "speed_proj")

TINY_SETTINGS = InferenceSettings(num_inference_steps=2, guidance_scale=2.0, fps=25, audio_mode="inline",
                                  sample_size=64, clip_frames=4, motion_frames=2, noise_correlation=0.0)


def _vae(config: dict[str, Any]) -> AutoencoderKL:
    """``AutoencoderKL`` (every relative's); an optional ``"kind"`` key must say ``"kl"``."""
    config = dict(config)
    kind = config.pop("kind", "kl")
    if kind != "kl":
        raise ValueError(f"vae kind must be 'kl', got {kind!r}")
    return AutoencoderKL(**config)


def build_components(configs: dict[str, dict[str, Any]], settings: InferenceSettings,
                     scheduler: str = "DDIMScheduler", seed: int = 0) -> EmoComponents:
    """Instantiate every part of ``configs`` (see ``emo_stream.models.configs``) with seeded random weights."""
    torch.manual_seed(seed)
    optional = {}
    if "audio_projection" in configs:
        optional["audio_projection"] = AudioProjection(**configs["audio_projection"])
    if "image_projection" in configs:
        optional["image_projection"] = ImageProjection(**configs["image_projection"])
    if "small_decoder" in configs:
        optional["small_decoder"] = SmallDecoder(**configs["small_decoder"])
    return EmoComponents(
        reference_net=ReferenceNet(**configs["reference_net"]).eval(),
        denoiser=EmoDenoiser(**configs["denoiser"]).eval(),
        face_locator=FaceLocator(**configs["face_locator"]).eval(),
        speech_encoder=SpeechEncoder(**configs["speech_encoder"]).eval(),
        vae=_vae(configs["vae"]).eval(),
        scheduler=make_scheduler(scheduler),
        settings=settings,
        **{k: v.eval() for k, v in optional.items()},
    )


def liven_zero_init(components: EmoComponents, std: float = 0.02, seed: int = 0) -> None:
    """Give the zero-initialised layers small random weights, so every conditioning path changes the output.

    A fresh model ignores its face locator, temporal layers, zero convs and speed input by design; a *test*
    model should not, or the tests could not tell a working path from a disconnected one.
    """
    gen = torch.Generator().manual_seed(seed)
    for part_name, part in components.parts().items():
        if not isinstance(part, nn.Module):
            continue
        for name, module in part.named_modules():
            full = f"{part_name}.{name}"
            if isinstance(module, nn.Linear | nn.Conv2d) and full.endswith(ZERO_INIT_SUFFIXES):
                with torch.no_grad():
                    module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                    if module.bias is not None:
                        module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * std)


def tiny_components(seed: int = 0, audio_mode: str = "inline", live: bool = True) -> EmoComponents:
    """A tiny random model (64 px, 8×8 latents) that runs end to end on CPU in well under a second per step."""
    if audio_mode == "inline":
        configs = named_configs.tiny()
    elif audio_mode == "separate":
        configs = named_configs.tiny_separate()
    else:
        raise ValueError(f"audio_mode must be 'inline' or 'separate', got {audio_mode!r}")
    settings = InferenceSettings(**{**TINY_SETTINGS.__dict__, "audio_mode": audio_mode})
    components = build_components(configs, settings, seed=seed)
    if live:
        liven_zero_init(components, seed=seed)
    return components
