"""``make train-tiny`` in miniature: the autoencoder stage, the tiny_face model, and the chain script for a few steps.

The real run (``make train-tiny``, up to an hour on 2 cores) is not part of the test suite; here every stage trains
a handful of steps on one training video, so the wiring — configs, checkpoints handed from stage to stage, the
emo backend loading the result — is what is tested.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emo_stream.errors import ConfigError
from emo_stream.models.checkpoint import load_checkpoint
from emo_stream.training.autoencoder import load_autoencoder_config, train_autoencoder

REPO = Path(__file__).resolve().parent.parent


def test_tiny_face_config_makes_128_px_latents_of_16() -> None:
    from emo_stream.models import configs
    from emo_stream.models.factory import TINY_SETTINGS, build_components

    parts = build_components(configs.tiny_face(), TINY_SETTINGS)
    with torch.no_grad():
        latents = parts.vae.encode(torch.zeros(1, 3, 128, 128)).latent_dist.mean
        tokens = parts.speech_encoder.tokens(parts.speech_encoder(torch.zeros(1, 6400), 4, 25).states)
    assert latents.shape == (1, 4, 16, 16)
    assert tokens.shape[-2:] == (parts.denoiser.config.audio_tokens, parts.denoiser.config.audio_dim)


def _autoencoder_config(out: Path):
    return load_autoencoder_config(REPO / "configs" / "train" / "tiny-autoencoder.yaml", {
        "output_dir": str(out), "data.root": None, "data.synthetic": True, "data.synthetic_clips": 4,
        "data.size": 64, "model.init": "tiny", "steps": 8, "batch_size": 2, "scale_batches": 2, "lr": 3e-3})


def _one_batch():
    from emo_stream.training.sample import collate
    from emo_stream.training.synthetic import SyntheticClips

    clips = SyntheticClips(4, 1, 0, 64)
    return collate([clips[0], clips[1]])


def test_autoencoder_stage_trains_sets_scale_and_writes_a_checkpoint(tmp_path: Path) -> None:
    batch = _one_batch()
    result = train_autoencoder(_autoencoder_config(tmp_path / "ae"), batches=itertools.repeat(batch))
    assert len(result.losses) == 8 and all(np.isfinite(result.losses))
    assert result.losses[-1] < result.losses[0]  # the same batch again and again: it must fit it
    loaded = load_checkpoint(result.final_dir)
    assert loaded.vae.config.scaling_factor == pytest.approx(result.scaling_factor)
    assert result.scaling_factor > 0
    assert (tmp_path / "ae" / "log.csv").is_file() and (tmp_path / "ae" / "samples" / "final.png").is_file()
    # Deterministic for a seed, from the config's own (synthetic) data.
    first = train_autoencoder(_autoencoder_config(tmp_path / "a"))
    second = train_autoencoder(_autoencoder_config(tmp_path / "b"))
    assert first.losses == second.losses and first.scaling_factor == second.scaling_factor


def test_autoencoder_config_refuses_clips() -> None:
    with pytest.raises(ConfigError, match="clip_frames"):
        load_autoencoder_config(None, {"data.synthetic": True, "data.size": 64, "data.clip_frames": 4})


def test_train_tiny_chain_runs_a_few_steps(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(REPO / "scripts" / "train_tiny.py"), "--out", str(out), "--threads", "1",
                    "--portraits", "1", "--clips", "1", "--scale", "0.004", "--skip-eval"],
                   check=True, env=env, cwd=REPO, timeout=300)
    for step in ("autoencoder/final", "stage1/final", "stage2/final", "checkpoint"):
        assert (out / step / "model_index.json").is_file(), step
    ckpt = load_checkpoint(out / "checkpoint")
    assert type(ckpt.scheduler).__name__ == "LCMScheduler"
    assert ckpt.settings.num_inference_steps <= 4 and ckpt.settings.sample_size == 128
    assert ckpt.small_decoder is not None
    assert (out / "timings.json").is_file()


def test_autoencoder_weighs_the_lower_face() -> None:
    from emo_stream.training.autoencoder import pixel_weights, reconstruction_loss

    batch = _one_batch()
    batch.face_mask.zero_()
    batch.face_mask[:, :, 16:48, 20:44] = 1.0  # face box rows 16..48: lower face 32..53
    weights = pixel_weights(batch, 8.0)
    assert weights.shape == (4, 1, 64, 64) and torch.allclose(weights.mean(dim=(-2, -1)), torch.ones(4, 1))
    assert weights[0, 0, 40, 30] > 4 * weights[0, 0, 20, 30] and weights[0, 0, 20, 30] == weights[0, 0, 5, 5]
    assert pixel_weights(batch, 0.0) is None
    # An error inside the lower face costs more than the same error elsewhere.
    config = _autoencoder_config(Path("unused"))
    from emo_stream.models import tiny_components

    model = tiny_components(seed=0).vae
    frames = torch.zeros(4, 3, 64, 64)
    with torch.no_grad():
        decoded = model.decode(model.encode(frames).latent_dist.mean).sample
    low, high = frames.clone(), frames.clone()
    low[..., 40:44, 28:32] = decoded[..., 40:44, 28:32] + 1.0   # a patch wrong in the mouth
    high[..., 4:8, 28:32] = decoded[..., 4:8, 28:32] + 1.0      # the same patch wrong in the hair
    config.kl_weight = 0.0
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        assert (reconstruction_loss(model, low, config, g, weights) >
                reconstruction_loss(model, high, config, g, weights))
