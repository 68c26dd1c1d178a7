"""The sources' sampler semantics: EchoMimic acc's x0 / pseudo-velocity step, the ±1.5 noise clamp and the
offline 12-frame context windows with overlap 3 (docs/importing.md)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from emo_stream.animators.emo_sampler import ClipRequest, decode_batch, denoise_batch
from emo_stream.errors import CheckpointError
from emo_stream.models import InferenceSettings, make_scheduler, tiny_components
from emo_stream.models.schedulers import (
    echomimic_acc_output,
    model_output_for_step,
    pseudo_velocity,
    set_sampling_timesteps,
)
from emo_stream.pipelines import EmoPipeline
from emo_stream.pipelines.context import context_windows
from emo_stream.pipelines.noise import ar1_noise

FPS = 25


def tiny_pipe(**settings) -> EmoPipeline:
    components = tiny_components(seed=0)
    components.settings = dataclasses.replace(components.settings, **settings)
    pipe = EmoPipeline.from_components(components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sine(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * 3 * t) > 0)).astype(np.float32)


PORTRAIT = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)


class CallLog:
    """Wraps the denoiser: records the frames and the first input of each call, passes everything through."""

    def __init__(self, pipe: EmoPipeline) -> None:
        self.calls: list[tuple[int, float]] = []
        self._forward = pipe.denoiser.forward
        self._pipe = pipe

    def __enter__(self) -> CallLog:
        def forward(sample, *args, **kwargs):
            self.calls.append((sample.shape[2], float(sample.abs().max())))
            return self._forward(sample, *args, **kwargs)
        self._pipe.denoiser.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        self._pipe.denoiser.forward = self._forward


def test_six_step_trailing_ddim_timesteps():
    scheduler = make_scheduler()
    scheduler.set_timesteps(6)
    assert scheduler.timesteps.tolist() == [999, 832, 666, 499, 332, 166]
    assert float(scheduler.alphas_cumprod[999]) < 1e-6  # zero terminal SNR: pure noise at the first step


def test_pseudo_velocity_makes_a_ddim_step_land_on_its_target():
    scheduler = make_scheduler()
    scheduler.set_timesteps(6)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 8, 8, generator=gen)
    target = torch.randn(1, 4, 3, 8, 8, generator=gen)
    for t in scheduler.timesteps:
        s = t - 1000 // 6  # diffusers' DDIM steps to t - T/n (833 after 999, although the list says 832)
        v = pseudo_velocity(x, target, scheduler.alphas_cumprod, t, s)
        landed = scheduler.step(v, t, x).prev_sample
        assert torch.allclose(landed, target, atol=1e-4), (int(t), float((landed - target).abs().max()))


def test_acc_step_is_the_identity_on_v_in_float32_and_close_in_half():
    """v → x0 → pseudo-velocity towards t = -1 is v itself: the source's arithmetic adds rounding only."""
    scheduler = make_scheduler()
    scheduler.set_timesteps(6)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 3, 8, 8, generator=gen)
    v = torch.randn(2, 4, 3, 8, 8, generator=gen)
    for t in scheduler.timesteps:
        out = echomimic_acc_output(v, x, scheduler.alphas_cumprod, t)
        assert out.dtype == v.dtype and torch.allclose(out, v, atol=1e-4), int(t)
        half = echomimic_acc_output(v.half(), x.half(), scheduler.alphas_cumprod, t)
        assert half.dtype == torch.float16 and torch.allclose(half.float(), v, atol=2e-2)
    # A non-identity rule would show here: the x0 it implies is the DDIM x0.
    t = scheduler.timesteps[2]
    a = scheduler.alphas_cumprod[t]
    x0 = a.sqrt() * x - (1 - a).sqrt() * echomimic_acc_output(v, x, scheduler.alphas_cumprod, t)
    assert torch.allclose(x0, a.sqrt() * x - (1 - a).sqrt() * v, atol=1e-4)
    with pytest.raises(ValueError, match="unknown step rule"):
        model_output_for_step("euler", v, x, scheduler, t)


def test_acc_checkpoint_samples_like_ddim_and_uses_its_step_rule(monkeypatch):
    audio = sine(0.32)
    plain = tiny_pipe(num_inference_steps=6, guidance_scale=1.0, motion_frames=0)
    acc = tiny_pipe(num_inference_steps=6, guidance_scale=1.0, motion_frames=0, step_rule="echomimic_acc")
    seen = []
    import emo_stream.pipelines.sampling as module

    original = module.model_output_for_step
    monkeypatch.setattr(module, "model_output_for_step",
                        lambda rule, *a: seen.append(rule) or original(rule, *a))
    a = acc(PORTRAIT, audio, clip_frames=4, generator=torch.Generator().manual_seed(3), output_type="pt").frames
    b = plain(PORTRAIT, audio, clip_frames=4, generator=torch.Generator().manual_seed(3), output_type="pt").frames
    assert seen.count("echomimic_acc") == 6 * 2 and seen.count("scheduler") == 6 * 2  # 8 frames = 2 clips
    assert float((a - b).abs().max()) < 1e-3


def test_initial_noise_is_clamped_offline_and_when_streaming():
    clamped = tiny_pipe(initial_noise_clamp=1.5, motion_frames=0)
    free = tiny_pipe(motion_frames=0)
    shape = (1, 4, 12, 8, 8)  # 3072 draws: some beyond 1.5 sigma for sure (p ≈ 1 - 0.866^3072)
    noise = clamped.clamp_noise(ar1_noise(shape, torch.Generator().manual_seed(0)))
    raw = free.clamp_noise(ar1_noise(shape, torch.Generator().manual_seed(0)))
    assert float(raw.abs().max()) > 1.5 and float(noise.abs().max()) <= 1.5
    assert torch.equal(noise, raw.clamp(-1.5, 1.5))

    # The streaming sampler's first denoiser input is its initial noise: clamped too.
    for pipe, bound in ((clamped, 1.5), (free, None)):
        state = pipe.prepare_portrait(PORTRAIT)
        tokens = pipe.encode_audio(sine(0.48), 12, FPS)
        with CallLog(pipe) as log:
            denoise_batch(pipe, [ClipRequest(state, tokens, None, torch.Generator().manual_seed(0))],
                          steps=1, guidance_scale=1.0, motion_frames=0, noise_correlation=0.0)
        first_max = log.calls[0][1]
        assert (first_max <= 1.5) if bound else (first_max > 1.5)


def test_context_windows_cover_overlap_wrap_and_shift():
    windows = context_windows(30, 12, 3, step_index=0)
    assert [w[0] for w in windows] == [0, 9, 18, 27]
    assert all(len(w) == 12 for w in windows)
    assert set().union(*map(set, windows)) == set(range(30))
    assert len(set(windows[0]) & set(windows[1])) == 3
    assert windows[-1] == [(27 + k) % 30 for k in range(12)]  # wraps around the end (closed loop)
    assert context_windows(30, 12, 3, step_index=2)[0] == list(range(4, 16))  # shifted 2 frames per step
    assert context_windows(10, 12, 3) == [list(range(10))]
    # A video of one window rotates too: EchoMimic shifts every context, (c + 2 t) % video_length, whatever its
    # length, so a 4-frame video's frames reach the denoiser as 2 3 0 1 at step 1 and 0 1 2 3 again at step 2.
    assert [context_windows(4, 12, 3, step_index=t) for t in range(3)] == \
        [[[0, 1, 2, 3]], [[2, 3, 0, 1]], [[0, 1, 2, 3]]]
    assert context_windows(5, 12, 3, step_index=1) == [[2, 3, 4, 0, 1]]
    for bad in ((0, 12, 3), (30, 12, 12), (30, 12, -1)):
        with pytest.raises(ValueError):
            context_windows(*bad)


def test_offline_context_windows_denoise_the_whole_video_at_once():
    pipe = tiny_pipe(num_inference_steps=2, guidance_scale=1.0, motion_frames=0, clip_frames=4, context_overlap=1)
    audio = sine(10 / FPS)  # 10 frames: windows of 4 starting every 3 frames
    with CallLog(pipe) as log:
        out = pipe(PORTRAIT, audio, generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (10, 64, 64, 3)
    assert [frames for frames, _ in log.calls] == [4] * 4 * 2  # 4 windows per step, 2 steps
    # Without overlap the same checkpoint goes clip by clip: 3 clips of 4 frames per step.
    pipe.settings = dataclasses.replace(pipe.settings, context_overlap=0)
    with CallLog(pipe) as log:
        pipe(PORTRAIT, audio, generator=torch.Generator().manual_seed(0))
    assert len(log.calls) == 3 * 2


def test_one_window_video_is_the_clip_path_rotated():
    """A single window is ``denoise_clip`` (same noise, same steps) until the rotation moves its frames: step 0 is
    unrotated, so one step is the clip path exactly; from step 1 on the temporal layers see the frames rotated."""
    pipe = tiny_pipe(num_inference_steps=3, guidance_scale=2.0, motion_frames=0, clip_frames=4, context_overlap=2,
                     initial_noise_clamp=1.5)
    state = pipe.prepare_portrait(PORTRAIT)
    tokens = pipe.encode_audio(sine(4 / FPS), 4, FPS)
    for steps, same in ((1, True), (3, False)):
        whole = pipe.denoise_video(state, tokens, num_inference_steps=steps, generator=torch.Generator().manual_seed(5))
        clip, _ = pipe.denoise_clip(state, tokens, num_inference_steps=steps,
                                    generator=torch.Generator().manual_seed(5))
        assert torch.allclose(whole, clip, atol=1e-5) is same, steps


def test_checkpoint_settings_are_validated():
    good = dataclasses.asdict(InferenceSettings(step_rule="echomimic_acc", initial_noise_clamp=1.5, context_overlap=3))
    assert InferenceSettings.from_dict(good).step_rule == "echomimic_acc"
    for change, words in (({"step_rule": "heun"}, "step_rule"), ({"context_overlap": 12}, "context_overlap"),
                          ({"initial_noise_clamp": -1.0}, "initial_noise_clamp"),
                          ({"reference_strength": 0.0}, "reference_strength"),
                          ({"reference_strength": 1.5}, "reference_strength"),
                          ({"generate_region": "mouth"}, "generate_region")):
        with pytest.raises(CheckpointError, match=words):
            InferenceSettings.from_dict({**good, **change})


def test_acc_checkpoints_keep_their_sampler_live_and_all_checkpoints_offline():
    from emo_stream.animators.emo import EmoAnimator

    acc = tiny_pipe(num_inference_steps=6, guidance_scale=1.0, motion_frames=0, step_rule="echomimic_acc")
    acc.scheduler = make_scheduler("DDIMScheduler")
    animator = EmoAnimator(acc, clip_frames=4, realtime=False)
    assert (animator.scheduler_name, animator.steps) == ("DDIMScheduler", 6)
    plain = tiny_pipe(num_inference_steps=30)
    plain.scheduler = make_scheduler("DDIMScheduler")
    animator = EmoAnimator(plain, clip_frames=4, realtime=True)
    assert (animator.scheduler_name, animator.steps) == ("LCMScheduler", 4)  # undistilled, live: few steps
    plain.scheduler = make_scheduler("DDIMScheduler")
    animator = EmoAnimator(plain, clip_frames=4, realtime=False)
    assert (animator.scheduler_name, animator.steps) == ("DDIMScheduler", 30)  # offline: the checkpoint's own


@pytest.mark.parametrize("name", ["DDIMScheduler", "LCMScheduler"])
def test_sampling_timesteps_start_inside_the_strength(name):
    scheduler = make_scheduler(name)
    full = set_sampling_timesteps(scheduler, 4).tolist()
    assert full[0] == 999 and len(full) == 4
    for strength in (0.3, 0.6):
        steps = set_sampling_timesteps(scheduler, 4, strength).tolist()
        assert len(steps) == 4 and steps == sorted(steps, reverse=True)
        assert 1000 * strength - 150 < steps[0] <= 1000 * strength
    with pytest.raises(ValueError, match="strength"):
        set_sampling_timesteps(scheduler, 4, 0.0)


def test_reference_strength_starts_every_frame_from_the_noised_portrait():
    """img2img: the first denoiser input is the portrait's latents noised to the first timestep, on the offline
    clip path and in the streaming batch; at strength 1 it is the noise itself."""
    anchored = tiny_pipe(reference_strength=0.3, motion_frames=0, num_inference_steps=2, guidance_scale=1.0)
    state = anchored.prepare_portrait(PORTRAIT)
    tokens = anchored.encode_audio(sine(0.16), 4, FPS)
    seen = []
    forward = anchored.denoiser.forward

    def record(sample, t, *args, **kwargs):
        seen.append((sample.clone(), int(t)))
        return forward(sample, t, *args, **kwargs)

    anchored.denoiser.forward = record
    anchored.denoise_clip(state, tokens, generator=torch.Generator().manual_seed(3))
    denoise_batch(anchored, [ClipRequest(state, tokens, None, torch.Generator().manual_seed(3))],
                  steps=2, guidance_scale=1.0, motion_frames=0, noise_correlation=0.0)
    anchored.denoiser.forward = forward
    noise = ar1_noise((1, *state.latents.shape[1:2], 4, *state.latents.shape[2:]), torch.Generator().manual_seed(3))
    for sample, t in (seen[0], seen[2]):
        assert t < 300
        expected = anchored.scheduler.add_noise(state.latents[:, :, None].expand_as(noise), noise, torch.tensor([t]))
        torch.testing.assert_close(sample, expected)
    assert not torch.allclose(seen[0][0], noise, atol=1e-3)


def test_residual_decoding_gives_the_portrait_back_where_nothing_changed():
    """``decode_residual``: decoding the portrait's own latents returns the portrait itself (to rounding), in the
    pipeline and in the streaming batch; a changed latent changes the frame by the decoded change."""
    plain = tiny_pipe(guidance_scale=1.0)
    residual = tiny_pipe(guidance_scale=1.0, decode_residual=True)
    state = residual.prepare_portrait(PORTRAIT)
    latents = state.latents[:, :, None].repeat(1, 1, 2, 1, 1)
    portrait01 = (state.pixels[0].float() + 1) / 2
    back = residual.decode_latents(latents, "vae", state)
    torch.testing.assert_close(back[0], portrait01.clamp(0, 1), atol=1e-5, rtol=0)
    # The random tiny VAE alone returns something else entirely.
    assert (plain.decode_latents(latents, "vae", state)[0] - portrait01).abs().mean() > 0.1
    batch = decode_batch(residual, torch.cat([latents, latents]), "vae", [state, state])
    expected = (portrait01.clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert batch.shape == (2, 2, *expected.shape) and np.abs(batch[1, 1].astype(int) - expected).max() <= 1
    moved = latents.clone()
    moved[:, :, 1] += 0.5
    out = residual.decode_latents(moved, "vae", state)[1]
    change = out - back[1]
    decoded_change = (plain.decode_frames(moved[0, :, 1:].permute(1, 0, 2, 3)) -
                      plain.decode_frames(state.latents))[0] / 2
    inside = (back[1] > 0.02) & (back[1] < 0.98) & (out > 0.02) & (out < 0.98)  # away from the clamp
    assert inside.float().mean() > 0.3
    torch.testing.assert_close(change[inside], decoded_change.float()[inside], atol=1e-4, rtol=0)


def test_residual_decoding_changes_only_the_generated_region():
    """With a generated region, residual decoding shows the decoded change inside the region only: a changed
    latent in the lower face moves the tiny VAE's output everywhere (its group norms and attention see the whole
    frame), but the frame outside the region stays the portrait, in the pipeline and the streaming batch."""
    pipe = tiny_pipe(guidance_scale=1.0, decode_residual=True, generate_region="lower_face")
    face = np.zeros((64, 64), np.float32)
    face[16:48, 20:44] = 1.0
    state = pipe.prepare_portrait(PORTRAIT, face_mask=face)
    moved = state.latents[:, :, None].repeat(1, 1, 2, 1, 1)
    region = state.generate_mask[0, 0] > 0.5
    moved[0, :, 1][:, region] += 1.5  # only latents inside the region change
    raw = pipe.decode_frames(moved[0].permute(1, 0, 2, 3)) - pipe.decode_frames(state.latents)
    pixel_mask = torch.nn.functional.interpolate(state.generate_mask, size=raw.shape[-2:], mode="bilinear")[0, 0]
    far = pixel_mask == 0
    assert raw[1][:, far].abs().max() > 0.01  # the decoder alone moves pixels far from the region
    portrait01 = ((state.pixels[0].float() + 1) / 2).clamp(0, 1)
    out = pipe.decode_latents(moved, "vae", state)
    torch.testing.assert_close(out[1][:, far], portrait01[:, far], atol=1e-6, rtol=0)
    core = pixel_mask >= 0.9 * pixel_mask.max()
    assert (out[1] - portrait01)[:, core].abs().mean() > 0.01  # inside: the change shows
    batch = decode_batch(pipe, moved, "vae", [state])
    expected = (out.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
    assert np.abs(batch[0].astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("region", ["lower_face", "face"])
def test_generated_region_keeps_the_portrait_latents_outside_it(region):
    """``generate_region``: outside the region every frame ends as the portrait's own latents (inpainting), in the
    offline clip and the streaming batch; inside, the model's frames; the lower face lies in the face's lower half."""
    pipe = tiny_pipe(generate_region=region, guidance_scale=1.0, motion_frames=0, num_inference_steps=2)
    face = np.zeros((64, 64), np.float32)
    face[16:48, 20:44] = 1.0
    state = pipe.prepare_portrait(PORTRAIT, face_mask=face)
    mask = state.generate_mask
    assert mask is not None and mask.shape == (1, 1, *state.latents.shape[-2:])
    rows = torch.nonzero(mask[0, 0].amax(dim=1) > 0.5).flatten()
    face_rows = (2, 6) if region == "face" else (4, 7)  # latent rows of the face box (8 px each) / its lower part
    assert face_rows[0] - 1 <= int(rows[0]) <= face_rows[0] + 1 and int(rows[-1]) <= face_rows[1]
    assert float(mask[0, 0, 0].max()) == 0.0 and float(mask.max()) > 0.6
    tokens = pipe.encode_audio(sine(0.16), 4, FPS)
    offline, _ = pipe.denoise_clip(state, tokens, generator=torch.Generator().manual_seed(1))
    batched, _ = denoise_batch(pipe, [ClipRequest(state, tokens, None, torch.Generator().manual_seed(1))],
                               steps=2, guidance_scale=1.0, motion_frames=0, noise_correlation=0.0)
    outside = (mask == 0)[:, :, None].expand_as(offline)
    portrait = state.latents[:, :, None].expand_as(offline)
    for latents in (offline, batched):
        torch.testing.assert_close(latents[outside], portrait[outside])
        inside = (mask > 0.5)[:, :, None].expand_as(latents)
        assert (latents[inside] - portrait[inside]).abs().mean() > 0.05
    # Without a face box the whole frame is generated.
    assert pipe.prepare_portrait(PORTRAIT).generate_mask is None
