"""The offline EMO pipeline with the tiny checkpoint: any duration, clip by clip, motion frames carried over."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emo_stream.models import tiny_components
from emo_stream.pipelines import EmoPipeline, EmoPipelineOutput

FPS = 25
CLIP = 4


@pytest.fixture(scope="module", params=["inline", "separate"])
def pipe(request) -> EmoPipeline:
    pipeline = EmoPipeline.from_components(tiny_components(seed=0, audio_mode=request.param))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((80, 64, 3)) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    rng = np.random.default_rng(1)
    t = np.arange(int(0.7 * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (rng.random(t.size) > 0.5)).astype(np.float32)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_renders_frames_for_the_whole_audio(pipe, portrait, audio):
    out = pipe(portrait, audio, generator=seeded(), clip_frames=CLIP)
    assert isinstance(out, EmoPipelineOutput)
    assert out.frames.shape == (round(audio.size / 16000 * FPS), 64, 64, 3)  # 18 frames: 4 clips, last cut short
    assert out.frames.dtype == np.uint8 and out.fps == FPS
    again = pipe(portrait, audio, generator=seeded(), clip_frames=CLIP)
    assert np.array_equal(out.frames, again.frames)


def test_small_decoder_and_tensor_output(pipe, portrait, audio):
    out = pipe(portrait, audio[:4000], generator=seeded(), decoder="small", output_type="pt")
    assert out.frames.shape == (round(4000 / 16000 * FPS), 3, 64, 64)
    assert 0.0 <= float(out.frames.min()) and float(out.frames.max()) <= 1.0


def boundary_and_inner_steps(frames: np.ndarray) -> tuple[float, float]:
    """Mean |frame difference| across clip boundaries and inside clips."""
    steps = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))
    boundary = [steps[i - 1] for i in range(CLIP, len(frames), CLIP)]
    inner = [steps[i] for i in range(len(steps)) if (i + 1) % CLIP]
    return float(np.mean(boundary)), float(np.mean(inner))


def test_motion_frames_make_consecutive_clips_continuous(pipe, portrait, audio):
    """With the carry (motion frames + continued noise) a clip boundary looks like any step inside a clip;
    without it (independent clips) every boundary jumps.

    A random tiny model cannot have *learned* to continue its motion frames, so here the continuity comes
    from the carried noise (``noise_correlation``); the motion-frame features' own effect is tested below.
    """
    kwargs = dict(generator=None, clip_frames=CLIP, noise_correlation=0.8)
    carried = pipe(portrait, audio, motion_frames=2, **dict(kwargs, generator=seeded())).frames
    independent = pipe(portrait, audio, motion_frames=0, **dict(kwargs, generator=seeded())).frames
    boundary_c, inner_c = boundary_and_inner_steps(carried)
    boundary_i, inner_i = boundary_and_inner_steps(independent)
    assert boundary_c < 0.8 * boundary_i
    assert boundary_c < 1.25 * inner_c
    assert boundary_i > 1.25 * inner_i


@torch.no_grad()
def test_motion_frame_latents_condition_the_next_clip(pipe, portrait, audio):
    """Same noise, different motion-frame latents → a different clip; with motion_frames=0 they are ignored."""
    state = pipe.prepare_portrait(portrait)
    tokens = pipe.encode_audio(audio, 2 * CLIP, FPS)
    _, carry = pipe.denoise_clip(state, tokens[:, :CLIP], None, generator=seeded(1))
    other = type(carry)(latents=torch.randn_like(carry.latents), noise=carry.noise)
    a, _ = pipe.denoise_clip(state, tokens[:, CLIP:], carry, generator=seeded(2))
    b, _ = pipe.denoise_clip(state, tokens[:, CLIP:], other, generator=seeded(2))
    assert not torch.allclose(a, b, atol=1e-6)
    a0, none = pipe.denoise_clip(state, tokens[:, CLIP:], carry, motion_frames=0, generator=seeded(2))
    b0, _ = pipe.denoise_clip(state, tokens[:, CLIP:], other, motion_frames=0, generator=seeded(2))
    assert none is None and torch.equal(a0, b0)


def test_cached_portrait_state_gives_the_same_video(pipe, portrait, audio):
    state = pipe.prepare_portrait(portrait)
    cached = pipe(portrait, audio, generator=seeded(), portrait_state=state).frames
    fresh = pipe(portrait, audio, generator=seeded()).frames
    assert np.array_equal(cached, fresh)


def test_guidance_portrait_and_audio_all_change_the_video(pipe, portrait, audio):
    base = pipe(portrait, audio, generator=seeded()).frames
    assert not np.array_equal(base, pipe(portrait, audio, generator=seeded(), guidance_scale=1.0).frames)
    assert not np.array_equal(base, pipe(255 - portrait, audio, generator=seeded()).frames)
    assert not np.array_equal(base, pipe(portrait, audio[::-1].copy(), generator=seeded()).frames)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(portrait=np.zeros((8, 8), np.uint8)), "portrait"),
        (dict(audio=np.zeros(0, np.float32)), "audio"),
        (dict(clip_frames=31), "positions"),
        (dict(noise_correlation=1.0), "noise_correlation"),
        (dict(face_mask=np.ones((3, 3), np.float32)), "face_mask"),
        (dict(decoder="fast"), "decoder"),
    ],
)
def test_bad_inputs_fail_early(pipe, portrait, audio, change, message):
    kwargs = dict(portrait=portrait, audio=audio[:2000], generator=seeded())
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        pipe(**kwargs)


def test_renders_from_a_tiny_checkpoint_folder(tmp_path, portrait, audio):
    from tests.test_models_checkpoint import run_script

    run_script(tmp_path / "tiny", "--seed", "1")
    pipeline = EmoPipeline.from_checkpoint(str(tmp_path / "tiny"))
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.settings.num_inference_steps == 2
    out = pipeline(portrait, audio[:6400], generator=seeded())
    assert out.frames.shape == (10, 64, 64, 3)
