"""Compute accounting of the emo backend (``emo_flops``): FLOPs per output frame counted over real streaming calls,
and MFU only where the device's peak is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emo_stream.animators.emo import EmoAnimator
from emo_stream.animators.emo_flops import (
    ComputeAccount,
    device_peak_flops,
    peak_for_name,
    stream_flops_per_frame,
)


def test_peaks_are_the_vendors_dense_figures_or_none():
    assert peak_for_name("NVIDIA H100 80GB HBM3") == 989e12  # SXM
    assert peak_for_name("NVIDIA H100 PCIe") == 756e12  # not the SXM figure
    assert peak_for_name("NVIDIA H200") == 989e12
    assert peak_for_name("NVIDIA GeForce RTX 3060") is None  # unknown: no MFU rather than a guess
    assert device_peak_flops(torch.device("cpu"), torch.float32) is None


def test_an_account_divides_achieved_by_peak():
    account = ComputeAccount.of(flops_per_frame=2e12, frames_per_s=50.0, peak_flops_per_s=989e12)
    assert account.achieved_flops_per_s == 100e12 and account.mfu == pytest.approx(100 / 989)
    assert account.to_dict() == {"gflops_per_frame": 2000.0, "achieved_tflops_per_s": 100.0,
                                 "peak_tflops_per_s": 989.0, "mfu": 0.1011}
    assert ComputeAccount.of(1e9, 25.0, None).to_dict()["mfu"] is None


@pytest.fixture(scope="module")
def pipe(tiny_emo_pipe):
    return tiny_emo_pipe


@pytest.fixture(scope="module")
def avatar(tiny_emo_avatars):
    return tiny_emo_avatars[0]


def _per_frame(pipe, avatar, steps: int, sessions: int) -> float:
    animator = EmoAnimator(pipe, clip_frames=4, steps=steps, guidance_scale=1.0, realtime=False)
    rng = np.random.default_rng(0)
    waves = [(0.3 * rng.standard_normal(8 * 640)).astype(np.float32) for _ in range(sessions)]
    return stream_flops_per_frame(animator, [animator.prepare(avatar, seed=k) for k in range(sessions)], waves)


def test_flops_per_frame_follow_the_configuration_that_ran(pipe, avatar):
    one_step, two_steps = _per_frame(pipe, avatar, 1, 1), _per_frame(pipe, avatar, 2, 1)
    assert one_step > 0
    # A second step adds the denoiser's work again (and nothing else); batching two sessions adds none per frame.
    denoiser = two_steps - one_step
    assert 0 < denoiser < one_step
    assert _per_frame(pipe, avatar, 3, 1) == pytest.approx(one_step + 2 * denoiser, rel=1e-6)
    assert _per_frame(pipe, avatar, 1, 2) == pytest.approx(one_step, rel=1e-6)
