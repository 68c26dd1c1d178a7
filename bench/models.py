"""Benchmark of the EMO models; prints one JSON object (not a test: no pass/fail here).

Measures, on this machine:
1. FLOPs per video frame of every part at full size (512², our ``emo`` layout = EchoMimic's + speed buckets,
   Hallo's separate audio layout too), counted with ``torch.utils.flop_counter.FlopCounterMode`` on the meta
   device (no weights, no compute). Per-frame figures divide a 12-frame clip (+2 motion frames) by 12; one
   denoiser call per sampler step, ×2 with classifier-free guidance.
2. The small streaming decoder against the baseline measured in the same run, the full VAE decoder:
   ``ratio`` = small / full FLOPs per frame (target ≤ 0.05).
3. Parameter counts at full size, and CPU wall time of the tiny configs (median of repeats).
4. With ``--full-cpu``: one full-size denoiser step for one frame on CPU (needs ~8 GB RAM, ~10 s).

Usage: .venv/bin/python bench/models.py [--repeats N] [--full-cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from diffusers import AutoencoderKL  # noqa: E402

from emo_stream.models import (  # noqa: E402
    AudioProjection,
    EmoDenoiser,
    FaceLocator,
    ReferenceNet,
    SmallDecoder,
    SpeechEncoder,
    tiny_components,
)
from emo_stream.models import configs as named  # noqa: E402
from emo_stream.pipelines import EmoPipeline  # noqa: E402

CLIP_FRAMES = 12
MOTION_FRAMES = 2
LATENT = 64  # 512 px / 8


def gflops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def params_m(model: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in model.parameters()) / 1e6, 3)


@torch.no_grad()
def full_size_layout(configs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """FLOPs per frame and parameters of one full-size layout, on the meta device."""
    with torch.device("meta"):
        den = EmoDenoiser(**configs["denoiser"])
        ref = ReferenceNet(**configs["reference_net"])
        loc = FaceLocator(**configs["face_locator"])
        cfg = den.config
        frames = CLIP_FRAMES
        tokens = None
        if cfg.cross_attention_dim is not None and cfg.audio_mode != "inline":
            tokens = torch.randn(1, 4, cfg.cross_attention_dim)
        ref_tokens = tokens if ref.config.cross_attention_dim is not None else None
        bank = ref.encode_portrait(torch.randn(1, 4, LATENT, LATENT), ref_tokens)
        motion = ref.encode_motion_frames(torch.randn(1, MOTION_FRAMES, 4, LATENT, LATENT), ref_tokens)
        speed = torch.randn(1, frames, cfg.num_speed_buckets) if cfg.num_speed_buckets else None
        inputs = dict(sample=torch.randn(1, 4, frames, LATENT, LATENT), timestep=500,
                      audio_embeds=torch.randn(1, frames, cfg.audio_tokens, cfg.audio_dim),
                      encoder_hidden_states=tokens, reference_bank=bank.with_motion(motion),
                      face_features=torch.randn(1, cfg.block_out_channels[0], LATENT, LATENT), speed_buckets=speed)
        out: dict[str, Any] = {
            "denoiser_step_gflops_per_frame": gflops(lambda: den(**inputs)) / frames,
            "reference_net_gflops_per_image": gflops(lambda: ref(torch.randn(1, 4, LATENT, LATENT), 0,
                                                                 ref_tokens)),
            "face_locator_gflops_per_portrait": gflops(
                lambda: loc(torch.randn(1, loc.config.conditioning_channels, 8 * LATENT, 8 * LATENT))),
            "params_m": {"denoiser": params_m(den), "reference_net": params_m(ref), "face_locator": params_m(loc)},
        }
        # Motion frames go through the ReferenceNet once per clip: per frame, M / F of a ReferenceNet pass.
        out["reference_net_motion_gflops_per_frame"] = (
            out["reference_net_gflops_per_image"] * MOTION_FRAMES / CLIP_FRAMES)
        if "audio_projection" in configs:
            proj = AudioProjection(**configs["audio_projection"])
            p = proj.config
            out["audio_projection_gflops_per_frame"] = gflops(
                lambda: proj(torch.randn(1, 1, p.window, p.num_layers, p.channels)))
            out["params_m"]["audio_projection"] = params_m(proj)
    return out


@torch.no_grad()
def speech_and_vae() -> dict[str, Any]:
    """Speech encoders per second of audio, VAE encode per portrait, VAE vs small decoder per frame."""
    out: dict[str, Any] = {}
    for name, configs in (("whisper_tiny", named.echomimic_v1()), ("wav2vec2_base", named.hallo_v1())):
        # Real (CPU) weights: the encoders are small, and the mel front end has no meta kernels.
        encoder = SpeechEncoder(**configs["speech_encoder"]).eval()
        audio = torch.randn(1, 16000) * 0.1
        out[f"{name}_gflops_per_audio_second"] = gflops(lambda e=encoder, a=audio: e(a, 25, 25.0))
        out.setdefault("params_m", {})[name] = params_m(encoder)
    with torch.device("meta"):
        vae = AutoencoderKL(**named.SD_VAE)
        small = SmallDecoder(**named.emo_full()["small_decoder"])
        latents = torch.randn(1, 4, LATENT, LATENT)
        out["vae_encoder_gflops_per_portrait"] = gflops(lambda: vae.encode(torch.randn(1, 3, 512, 512)))
        out["vae_decoder_gflops_per_frame"] = gflops(lambda: vae.decode(latents))
        out["small_decoder_gflops_per_frame"] = gflops(lambda: small(latents))
        out["params_m"].update(vae=params_m(vae), vae_decoder=params_m(vae.decoder) + params_m(vae.post_quant_conv),
                               small_decoder=params_m(small))
    return out


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


@torch.no_grad()
def tiny_cpu(mode: str, repeats: int) -> dict[str, Any]:
    """CPU wall time of one tiny config (torch's default thread pool)."""
    c = tiny_components(seed=0, audio_mode=mode)
    cfg = c.denoiser.config
    tokens = None if c.image_projection is None else c.image_projection(torch.randn(1, 8)).tokens
    ref_tokens = tokens if c.reference_net.config.cross_attention_dim is not None else None
    portrait = torch.randn(1, 4, 8, 8)
    bank = c.reference_net.encode_portrait(portrait, ref_tokens)
    bank = bank.with_motion(c.reference_net.encode_motion_frames(torch.randn(1, 2, 4, 8, 8), ref_tokens))
    frames = 4
    inputs = dict(sample=torch.randn(1, 4, frames, 8, 8), timestep=500,
                  audio_embeds=torch.randn(1, frames, cfg.audio_tokens, cfg.audio_dim),
                  encoder_hidden_states=tokens, reference_bank=bank,
                  speed_buckets=torch.rand(1, frames, cfg.num_speed_buckets))
    pipe = EmoPipeline.from_components(c)
    pipe.set_progress_bar_config(disable=True)
    image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    audio = (np.random.default_rng(1).standard_normal(16000) * 0.1).astype(np.float32)  # 1 s = 25 frames
    pipeline_ms = median_ms(lambda: pipe(image, audio, generator=torch.Generator().manual_seed(0)),
                            max(1, repeats // 5))
    return {
        "denoiser_forward_ms_4_frames": median_ms(lambda: c.denoiser(**inputs), repeats),
        "reference_net_ms_per_image": median_ms(lambda: c.reference_net(portrait, 0, ref_tokens), repeats),
        "pipeline_ms_per_frame": round(pipeline_ms / 25, 2),
        "params": sum(c.num_parameters().values()),
    }


@torch.no_grad()
def full_cpu_step() -> dict[str, Any]:
    """One full-size denoiser step, one frame, on CPU (random weights; the timing is what matters)."""
    configs = named.emo_full()
    den = EmoDenoiser(**configs["denoiser"]).eval()
    ref = ReferenceNet(**configs["reference_net"]).eval()
    bank = ref.encode_portrait(torch.randn(1, 4, LATENT, LATENT))
    del ref
    inputs = dict(sample=torch.randn(1, 4, 1, LATENT, LATENT), timestep=500,
                  audio_embeds=torch.randn(1, 1, 50, 384), reference_bank=bank)
    start = time.perf_counter()
    den(**inputs)
    return {"full_denoiser_step_s_one_frame_cpu": round(time.perf_counter() - start, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--full-cpu", action="store_true", help="also time one full-size step on CPU")
    args = parser.parse_args()

    emo = full_size_layout(named.emo_full())
    hallo = full_size_layout(named.hallo_v1())
    shared = speech_and_vae()
    baseline = shared["vae_decoder_gflops_per_frame"]
    candidate = shared["small_decoder_gflops_per_frame"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    result = {
        "bench": "models",
        "device": f"{platform.machine()} {platform.processor() or platform.platform()}, "
                  f"{torch.get_num_threads()} torch threads",
        "commit": commit,
        "config": {"size_px": 8 * LATENT, "clip_frames": CLIP_FRAMES, "motion_frames": MOTION_FRAMES,
                   "flops": "FlopCounterMode on meta (multiply-add = 2 FLOPs)", "repeats": args.repeats},
        "baseline": {"name": "full VAE decoder (sd-vae-ft-mse layout)", "gflops_per_frame": round(baseline, 1)},
        "candidate": {"name": "SmallDecoder (TAESD-style, last stage 32 wide)", "gflops_per_frame": round(candidate, 1)},
        "ratio": round(candidate / baseline, 4),
        "units": {"gflops": "1e9 floating-point operations", "ms": "milliseconds of wall time", "params_m": "1e6"},
        "full_size": {"emo": _rounded(emo), "hallo_v1": _rounded(hallo), "shared": _rounded(shared)},
        "tiny_cpu": {mode: tiny_cpu(mode, args.repeats) for mode in ("inline", "separate")},
    }
    if args.full_cpu:
        result["full_size"]["cpu"] = full_cpu_step()
    print(json.dumps(result, indent=2))
    return 0


def _rounded(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (round(v, 1) if isinstance(v, float) else v) for k, v in d.items()}


if __name__ == "__main__":
    sys.exit(main())
