"""Named model configs: full-size layouts of the EMO family and tiny ones for tests and benchmarks.

Each function returns plain ``dict`` configs (the ``config.json`` of each part), keyed by part name as in a
checkpoint's ``model_index.json``. Full sizes reproduce the upstream key layouts (docs/importing.md):

- ``echomimic_v1``: inline audio (whisper-tiny, 50 × 384 tokens, ×3), ReferenceNet without ``attn2``,
  1-channel face locator (16, 32, 96, 256);
- ``hallo_v1``: separate audio modules (wav2vec2 → ``AudioProjection`` 32 × 768), ``attn2`` on 4 face tokens
  in both UNets, 3-channel face locator (16, 32, 64, 128), Hallo's inference path for plain blocks;
- ``emo``: our own full-size layout — EchoMimic's audio slot plus speed buckets;
- ``tiny``: the ``emo`` layout at toy widths, forward well under a second on CPU;
- ``tiny_face``: ``tiny`` at 128 px (16 × 16 latents), a VAE narrow enough to train on a CPU (``make train-tiny``).
"""

from __future__ import annotations

from typing import Any

from emo_stream.models.reference_net import reference_config

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock", "CrossAttnDownBlock", "CrossAttnDownBlock", "DownBlock"],
    "up_block_types": ["UpBlock", "CrossAttnUpBlock", "CrossAttnUpBlock", "CrossAttnUpBlock"],
    "num_attention_heads": 8,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
}

# The sd-vae-ft-mse VAE every relative uses (diffusers AutoencoderKL, SD-1.x config).
SD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

WHISPER_TINY: dict[str, Any] = {
    "d_model": 384, "encoder_layers": 4, "encoder_attention_heads": 6, "encoder_ffn_dim": 1536,
    "num_mel_bins": 80, "max_source_positions": 1500,
    "decoder_layers": 4, "decoder_attention_heads": 6, "decoder_ffn_dim": 1536, "vocab_size": 51865,
}

WAV2VEC2_BASE: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
    "feat_extract_norm": "group", "do_stable_layer_norm": False, "vocab_size": 32,
}


def echomimic_v1() -> dict[str, dict[str, Any]]:
    """EchoMimic v1 (antgroup/echomimic ``infer_audio2vid.py`` + ``inference_v2.yaml``)."""
    denoiser = {
        **SD15_UNET,
        "cross_attention_dim": 384,
        "audio_mode": "inline",
        "audio_tokens": 50,
        "audio_dim": 384,
        "audio_attention_scale": 3.0,
        "use_motion_module": True,
        "motion_module_mid_block": True,
        "motion_max_positions": 32,
    }
    return {
        "denoiser": denoiser,
        "reference_net": reference_config(denoiser, cross_attention_dim=None),
        "face_locator": {"embedding_channels": 320, "conditioning_channels": 1,
                         "block_out_channels": [16, 32, 96, 256]},
        "speech_encoder": {"kind": "whisper", "encoder_config": WHISPER_TINY, "window_before": 4,
                           "window_after": 5, "states_hz": 50.0},
        "vae": dict(SD_VAE),
    }


def hallo_v1() -> dict[str, dict[str, Any]]:
    """Hallo v1 (fudan-generative-vision/hallo ``scripts/inference.py`` + ``configs/inference/default.yaml``)."""
    denoiser = {
        **SD15_UNET,
        "cross_attention_dim": 768,
        "audio_mode": "separate",
        "audio_tokens": 32,
        "audio_dim": 768,
        "use_motion_module": True,
        "motion_module_mid_block": True,
        "motion_max_positions": 32,
        "plain_block_motion": False,
    }
    return {
        "denoiser": denoiser,
        "reference_net": reference_config(denoiser, cross_attention_dim=768),
        "face_locator": {"embedding_channels": 320, "conditioning_channels": 3,
                         "block_out_channels": [16, 32, 64, 128]},
        "image_projection": {"cross_attention_dim": 768, "embedding_dim": 512, "context_tokens": 4},
        "audio_projection": {"window": 5, "num_layers": 12, "channels": 768, "intermediate_dim": 512,
                             "output_dim": 768, "context_tokens": 32},
        "speech_encoder": {"kind": "wav2vec2", "encoder_config": WAV2VEC2_BASE, "window_before": 2,
                           "window_after": 2, "states_hz": 0.0},
        "vae": dict(SD_VAE),
    }


def emo_full() -> dict[str, dict[str, Any]]:
    """Our full-size layout: EchoMimic's (importable) plus zero-initialised speed buckets."""
    configs = echomimic_v1()
    configs["denoiser"].update(num_speed_buckets=9, speed_embedding_dim=320)
    configs["small_decoder"] = {}
    return configs


def tiny() -> dict[str, dict[str, Any]]:
    """The ``emo`` layout at toy widths (32/64 channels, 2 blocks, 8 audio tokens × 16) for CPU tests."""
    denoiser = {
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock", "DownBlock"],
        "up_block_types": ["UpBlock", "CrossAttnUpBlock"],
        "num_attention_heads": 2,
        "norm_num_groups": 8,
        "norm_eps": 1e-5,
        "cross_attention_dim": 16,
        "audio_mode": "inline",
        "audio_tokens": 8,
        "audio_dim": 16,
        "audio_attention_scale": 3.0,
        "use_motion_module": True,
        "motion_module_mid_block": True,
        "motion_num_heads": 2,
        "motion_max_positions": 32,
        "num_speed_buckets": 3,
        "speed_embedding_dim": 16,
    }
    return {
        "denoiser": denoiser,
        "reference_net": reference_config(denoiser, cross_attention_dim=None),
        "face_locator": {"embedding_channels": 32, "conditioning_channels": 1, "block_out_channels": [4, 8, 8, 16]},
        "speech_encoder": {"kind": "logmel", "encoder_config": {"n_mels": 16, "hidden_size": 16, "num_layers": 1},
                           "window_before": 1, "window_after": 2, "states_hz": 50.0},
        "vae": {
            "in_channels": 3, "out_channels": 3,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "latent_channels": 4,
            "norm_num_groups": 4, "sample_size": 64, "scaling_factor": 0.18215,
        },
        "small_decoder": {"latent_channels": 4, "block_out_channels": [16, 16, 8, 8], "num_blocks": [1, 1, 1, 1]},
    }


def tiny_face() -> dict[str, dict[str, Any]]:
    """``tiny`` for 128 px faces, sized to train on two CPU cores within an hour (``scripts/train_tiny.py``).

    At 64 px a face mesh no longer resolves the lips (the lite teacher's lip-sync r drops from 0.70 at 128 px
    to 0.05), so the output is 128 px: a VAE with narrow full-resolution stages (8 → 64 channels, f = 8,
    16 × 16 × 4 latents), the ``tiny`` denoiser on them, and a wider log-mel encoder (32 mels, 32 channels,
    ±2 states: 10 audio tokens of 32).
    """
    configs = tiny()
    configs["denoiser"].update(sample_size=16, audio_tokens=10, audio_dim=32, cross_attention_dim=32)
    configs["reference_net"] = reference_config(configs["denoiser"], cross_attention_dim=None)
    configs["speech_encoder"] = {"kind": "logmel",
                                 "encoder_config": {"n_mels": 32, "hidden_size": 32, "num_layers": 1},
                                 "window_before": 2, "window_after": 2, "states_hz": 50.0}
    configs["vae"].update(block_out_channels=[8, 16, 32, 64], norm_num_groups=8, sample_size=128)
    configs["small_decoder"] = {"latent_channels": 4, "block_out_channels": [32, 32, 16, 8],
                                "num_blocks": [1, 1, 1, 1]}
    return configs


def tiny_separate() -> dict[str, dict[str, Any]]:
    """``tiny`` with Hallo's separate audio modules (region masks) and face-token ``attn2``."""
    configs = tiny()
    configs["denoiser"].update(audio_mode="separate", cross_attention_dim=24, audio_tokens=4, audio_dim=16,
                               plain_block_motion=False)
    configs["reference_net"] = reference_config(configs["denoiser"], cross_attention_dim=24)
    configs["audio_projection"] = {"window": 4, "num_layers": 2, "channels": 16, "intermediate_dim": 32,
                                   "output_dim": 16, "context_tokens": 4}
    configs["image_projection"] = {"cross_attention_dim": 24, "embedding_dim": 8, "context_tokens": 2}
    configs["face_locator"]["conditioning_channels"] = 3
    return configs
