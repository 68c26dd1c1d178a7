"""The lite animator in render processes: the same frames as in-process, errors that keep it serving."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from emo_stream.animators import create_animator
from emo_stream.animators.base import Animator
from emo_stream.animators.lite_processes import LiteProcessAnimator, RenderProcessError
from emo_stream.audio import load_audio
from emo_stream.avatar import prepare_avatar
from emo_stream.streaming import iter_windows
from emo_stream.types import AudioWindow
from server.app import default_portrait_bytes
from tests import media

SIZE = 128


@pytest.fixture(scope="module")
def avatar():
    return prepare_avatar(default_portrait_bytes(), size=SIZE)


@pytest.fixture
def spread():
    animator = create_animator("lite", size=SIZE, processes=2)
    yield animator
    animator.close()


def _same(a, b):
    assert [f.pts for f in a] == [f.pts for f in b]
    assert all(np.array_equal(f.rgb, g.rgb) and np.array_equal(f.matte, g.matte) for f, g in zip(a, b, strict=True))


def test_same_frames_as_in_process(spread, avatar):
    assert isinstance(spread, LiteProcessAnimator) and isinstance(spread, Animator)
    local = create_animator("lite", size=SIZE)
    assert spread.latency_frames == local.latency_frames
    seeds = (1, 2, 3)
    here = [local.prepare(avatar, seed=s) for s in seeds]
    there = [spread.prepare(avatar, seed=s) for s in seeds]
    assert sorted({s.process for s in there}) == [0, 1]  # spread over both processes
    assert list(spread._rigs._rigs) == [avatar.cache_key]  # the rig is built here, once, and sent
    samples = load_audio(media.espeak_wav("hello"))[: 16_000 * 2]
    for window in iter_windows([samples]):
        _same([f for st in here for f in local.feed(window, st)],
              [f for frames in spread.feed_batch([(window, st) for st in there]) for f in frames])
    _same([local.idle(st, 99_000) for st in here], spread.idle_batch([(st, 99_000) for st in there]))
    local.reset(here[0])
    spread.reset(there[0])
    _same(local.flush(here[0]), spread.flush(there[0]))
    _same(local.flush(here[1]), spread.flush(there[1]))


def test_errors_come_back_typed_and_the_process_serves_on(spread, avatar):
    state = spread.prepare(avatar)
    with pytest.raises(ValueError, match="16 kHz"):
        spread.feed(AudioWindow(samples=np.zeros(320, np.float32), sample_rate=8_000, start_pts=0), state)
    with pytest.raises(ValueError, match="px"):
        spread.prepare(prepare_avatar(default_portrait_bytes(), size=SIZE * 2))
    frames = spread.feed(AudioWindow(samples=np.zeros(640, np.float32), sample_rate=16_000, start_pts=0), state)
    assert all(f.rgb.shape == (SIZE, SIZE, 3) for f in frames)
    spread.release(state)
    with pytest.raises(KeyError):  # released: the process holds no state for it any more
        spread.flush(state)


def test_a_dead_process_raises_and_close_stops_the_rest(avatar):
    spread = create_animator("lite", size=SIZE, processes=2)
    states = [spread.prepare(avatar, seed=s) for s in (0, 1)]
    victim = spread._procs[states[0].process]
    victim.kill()
    victim.join(timeout=10)
    with pytest.raises(RenderProcessError, match="exited|not running"):
        spread.idle(states[0], 0)
    assert spread.idle(states[1], 0).rgb.shape == (SIZE, SIZE, 3)  # the other process still serves
    spread.close()
    spread.close()  # idempotent
    with pytest.raises(RenderProcessError, match="closed"):
        spread.prepare(avatar)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("lite-render")]
