"""Static shapes for compiled models: batches of sessions padded up to fixed buckets, and no recompiles while
sessions join and leave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emo_stream.animators.emo import EmoAnimator
from emo_stream.animators.emo_sampler import bucket_size
from emo_stream.streaming import iter_windows

SPF = 640


def test_a_batch_runs_as_the_smallest_bucket_that_holds_it():
    buckets = (1, 2, 4, 8)
    assert [bucket_size(n, buckets) for n in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, 9]
    assert bucket_size(3, None) == 3


@pytest.fixture(scope="module")
def pipe(tiny_emo_pipe):
    return tiny_emo_pipe


@pytest.fixture(scope="module")
def avatars(tiny_emo_avatars) -> list:
    return tiny_emo_avatars


def _waves(count: int, frames: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [(0.3 * rng.standard_normal(frames * SPF)).astype(np.float32) for _ in range(count)]


def _stream(animator: EmoAnimator, states: list, waves: list[np.ndarray]) -> list[list]:
    windows = [list(iter_windows([w])) for w in waves]
    out: list[list] = [[] for _ in states]
    for tick in range(len(windows[0])):
        for k, frames in enumerate(animator.feed_batch([(w[tick], s) for w, s in zip(windows, states, strict=True)])):
            out[k].extend(frames)
    for k, state in enumerate(states):
        out[k].extend(animator.flush(state))
    return out


def test_padding_a_batch_changes_no_session(pipe, avatars):
    """Three sessions run as a bucket of four: the same frames as a batch of three (float rounding of batched
    kernels aside), and the padding row draws none of their noise, so their next clips are the same too."""
    waves = _waves(3, 12)
    frames = {}
    for buckets in (None, (4,)):
        animator = EmoAnimator(pipe, clip_frames=4, steps=2, realtime=False, batch_buckets=buckets)
        states = [animator.prepare(a, seed=k) for k, a in enumerate(avatars)]
        frames[buckets] = _stream(animator, states, waves)
    for plain, bucketed in zip(frames[None], frames[(4,)], strict=True):
        assert [f.pts for f in plain] == [f.pts for f in bucketed]
        diff = max(np.abs(a.rgb.astype(int) - b.rgb.astype(int)).max() for a, b in zip(plain, bucketed, strict=True))
        assert diff <= 2


@pytest.mark.compile
def test_no_recompiles_while_sessions_join_and_leave(pipe, avatars):
    """Compiled (CPU inductor), warmed up once per bucket: then 1, 3, 2 and 1 sessions stream in turn (joining
    and leaving), and nothing is compiled again."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    animator = EmoAnimator(pipe, clip_frames=4, steps=1, realtime=False, compile=True, warmup=True,
                           batch_buckets=(1, 2, 4))
    compiled = counters["stats"]["unique_graphs"]
    assert compiled > 0
    for count in (1, 3, 2, 1):
        states = [animator.prepare(a, seed=k) for k, a in enumerate(avatars[:count])]
        _stream(animator, states, _waves(count, 8))
    assert counters["stats"]["unique_graphs"] == compiled
