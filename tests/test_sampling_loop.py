"""The one sampling loop (``emo_stream.pipelines.sampling``): a batch of N clips equals N batches of one for the
same seeds, speed buckets included; the offline clip equals the streaming batch of one; speed buckets reach
the denoiser on every path; the AR(1) initial noise has the asked statistics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emo_stream.animators.emo_sampler import ClipRequest, denoise_batch
from emo_stream.models import make_scheduler, tiny_components
from emo_stream.pipelines import EmoPipeline, MotionCarry
from emo_stream.pipelines.context import ContextSchedule
from emo_stream.pipelines.noise import ar1_noise
from emo_stream.pipelines.sampling import sample_clips

FPS = 25
FRAMES = 4
MOTION = 2
SPEEDS = 3  # the tiny denoiser's speed buckets
VIDEO = 5  # frames of a windowed video: two windows of 4 (the second wraps around)
# Batched CPU kernels may round differently from one-row ones (observed: identical on the tiny model).
ATOL = 1e-5


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe() -> EmoPipeline:
    components = tiny_components(seed=0)  # live: its speed layers are not zero, so speed changes the output
    components.settings = dataclasses.replace(components.settings, num_inference_steps=2, guidance_scale=2.0)
    pipeline = EmoPipeline.from_components(components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def states(pipe):
    rng = np.random.default_rng(0)
    portraits = [(rng.random((64, 64, 3)) * 255).astype(np.uint8) for _ in range(3)]
    return [pipe.prepare_portrait(p) for p in portraits]


@pytest.fixture(scope="module")
def tokens(pipe) -> torch.Tensor:
    rng = np.random.default_rng(1)
    t = np.arange(3 * FRAMES * 640) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) * (rng.random(t.size) > 0.5)).astype(np.float32)
    return pipe.encode_audio(audio, 3 * FRAMES, FPS)


def speed(seed: int, frames: int = FRAMES) -> torch.Tensor:
    return torch.rand(1, frames, SPEEDS, generator=seeded(seed)) * 2 - 1


def carry(seed: int, state) -> MotionCarry:
    gen = seeded(seed)
    _, channels, height, width = state.latents.shape
    return MotionCarry(latents=torch.randn(1, MOTION, channels, height, width, generator=gen),
                       noise=torch.randn(1, channels, height, width, generator=gen))


def requests(states, tokens, seeds=(10, 11, 12), speeds=(20, 21, 22)) -> list[ClipRequest]:
    """Three clips: different portraits, audio, seeds and speeds; the first a first clip, the others carried."""
    out = []
    for k, state in enumerate(states):
        out.append(ClipRequest(state, tokens[:, k * FRAMES:(k + 1) * FRAMES], None if k == 0 else carry(k, state),
                               seeded(seeds[k]), speed(speeds[k])))
    return out


@pytest.mark.parametrize("scheduler", ["DDIMScheduler", "LCMScheduler"])  # LCM draws noise in every step
def test_a_batch_equals_its_clips_one_by_one(pipe, states, tokens, scheduler, monkeypatch):
    monkeypatch.setattr(pipe, "scheduler", make_scheduler(scheduler))
    options = dict(steps=2, guidance_scale=2.0, motion_frames=MOTION, noise_correlation=0.6)
    batched, carries = denoise_batch(pipe, requests(states, tokens), **options)  # the streaming entry point
    assert batched.shape[0] == 3
    for k, request in enumerate(requests(states, tokens)):
        alone, (own,) = sample_clips(pipe, [request], **options)
        torch.testing.assert_close(batched[k:k + 1], alone, atol=ATOL, rtol=0)
        torch.testing.assert_close(carries[k].latents, own.latents, atol=ATOL, rtol=0)
        torch.testing.assert_close(carries[k].noise, own.noise, atol=0, rtol=0)
    # Different seeds, portraits and audio make different clips: the comparison above is not vacuous.
    assert (batched[0] - batched[1]).abs().mean() > 1e-3


def test_windowed_videos_in_a_batch_equal_each_alone(pipe, states, tokens):
    """The whole-video path (context windows) batches too: each row equals its video sampled alone."""
    video_tokens = tokens[:, :VIDEO]
    context = ContextSchedule(size=FRAMES, overlap=1)
    videos = [ClipRequest(s, video_tokens, None, seeded(30 + k), speed(40 + k, VIDEO)) for k, s in enumerate(states[:2])]
    options = dict(steps=2, guidance_scale=2.0, motion_frames=0, noise_correlation=0.0, context=context)
    batched, _ = sample_clips(pipe, videos, **options)
    alone, _ = sample_clips(pipe, [ClipRequest(states[1], video_tokens, None, seeded(31), speed(41, VIDEO))],
                            **options)
    torch.testing.assert_close(batched[1:], alone, atol=ATOL, rtol=0)
    # ``denoise_video`` is this path with a batch of one.
    video = pipe.denoise_video(states[0], video_tokens, clip_frames=FRAMES, context_overlap=1,
                               speed_buckets=speed(40, VIDEO), generator=seeded(30))
    torch.testing.assert_close(video, batched[:1], atol=ATOL, rtol=0)
    assert (batched[0] - batched[1]).abs().mean() > 1e-3


def test_offline_clip_equals_the_streaming_batch_of_one(pipe, states, tokens):
    request = requests(states, tokens)[1]
    offline, offline_carry = pipe.denoise_clip(request.portrait, request.tokens, request.carry,
                                               num_inference_steps=1, motion_frames=MOTION, noise_correlation=0.6,
                                               speed_buckets=request.speed_buckets, generator=seeded(11))
    streamed, (streamed_carry,) = denoise_batch(pipe, [requests(states, tokens)[1]], steps=1, guidance_scale=2.0,
                                                motion_frames=MOTION, noise_correlation=0.6)
    assert torch.equal(offline, streamed)
    assert torch.equal(offline_carry.latents, streamed_carry.latents)
    assert torch.equal(offline_carry.noise, streamed_carry.noise)


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def update(self) -> None:
        self.n += 1


def test_speed_buckets_reach_the_denoiser_on_every_path(pipe, states, tokens):
    """Other speeds give another clip offline, in the streaming batch (only in that session's row) and in the
    windowed video."""
    state, clip_tokens = states[0], tokens[:, :FRAMES]
    a, _ = pipe.denoise_clip(state, clip_tokens, num_inference_steps=1, speed_buckets=speed(1), generator=seeded(5))
    other, _ = pipe.denoise_clip(state, clip_tokens, num_inference_steps=1, speed_buckets=-speed(1),
                                 generator=seeded(5))
    assert (a - other).abs().max() > 1e-3

    options = dict(steps=1, guidance_scale=2.0, motion_frames=MOTION, noise_correlation=0.6)
    base, _ = denoise_batch(pipe, requests(states, tokens), **options)
    changed, _ = denoise_batch(pipe, requests(states, tokens, speeds=(20, 99, 22)), **options)
    assert (base[1] - changed[1]).abs().max() > 1e-3
    torch.testing.assert_close(base[[0, 2]], changed[[0, 2]], atol=ATOL, rtol=0)

    bar = Counter()
    video_tokens = tokens[:, :VIDEO]
    video = pipe.denoise_video(state, video_tokens, clip_frames=FRAMES, context_overlap=1,
                               speed_buckets=speed(2, VIDEO), progress_bar=bar, num_inference_steps=1,
                               generator=seeded(6))
    moved = pipe.denoise_video(state, video_tokens, clip_frames=FRAMES, context_overlap=1,
                               speed_buckets=-speed(2, VIDEO), num_inference_steps=1,
                               generator=seeded(6))
    assert (video - moved).abs().max() > 1e-3
    assert bar.n == 1  # one update per step


def test_bad_batches_are_refused(pipe, states, tokens):
    mixed = requests(states, tokens)
    mixed[1] = dataclasses.replace(mixed[1], speed_buckets=None)
    with pytest.raises(ValueError, match="speed_buckets"):
        sample_clips(pipe, mixed, steps=1, guidance_scale=1.0, motion_frames=MOTION, noise_correlation=0.0)
    with pytest.raises(ValueError, match="motion_frames"):
        sample_clips(pipe, requests(states, tokens)[:1], steps=1, guidance_scale=1.0, motion_frames=MOTION,
                     noise_correlation=0.0, context=ContextSchedule(FRAMES, 1))
    with pytest.raises(ValueError, match="at least one"):
        sample_clips(pipe, [], steps=1, guidance_scale=1.0, motion_frames=0, noise_correlation=0.0)


def test_ar1_noise_has_unit_variance_and_the_asked_correlation():
    shape = (1, 4, 6, 64, 64)
    plain = ar1_noise(shape, seeded(0))
    assert torch.equal(plain, torch.randn(shape, generator=seeded(0)))  # correlation 0: the draws themselves
    rho = 0.8
    noise = ar1_noise(shape, seeded(0), rho)
    assert torch.equal(noise[:, :, 0], plain[:, :, 0])  # nothing to continue: the first frame is fresh
    for f in range(1, 6):
        frame = noise[:, :, f].flatten()
        assert abs(float(frame.std()) - 1.0) < 0.03
        assert abs(float(torch.corrcoef(torch.stack([noise[:, :, f - 1].flatten(), frame]))[0, 1]) - rho) < 0.03
    far = torch.corrcoef(torch.stack([noise[:, :, 0].flatten(), noise[:, :, 5].flatten()]))[0, 1]
    assert abs(float(far) - rho**5) < 0.03  # AR(1): correlation decays as rho^lag
    # With a previous clip's last frame, the first frame continues it.
    previous = torch.randn(1, 4, 64, 64, generator=seeded(1))
    continued = ar1_noise(shape, seeded(0), rho, previous)
    torch.testing.assert_close(continued[:, :, 0], rho * previous + (1 - rho**2) ** 0.5 * plain[:, :, 0])
