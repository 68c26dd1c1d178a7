"""The Animator contract, asserted the same way for every animator: lite, a tiny emo checkpoint, the test fakes.

What every backend owes its callers (``emo_stream.animators.base.Animator``): one frame per window at the
window's pts, none later than the declared ``latency_frames`` and the bound attained; ``flush`` returns what
the lookahead holds; ``feed_batch`` equals ``feed`` one by one for the same seeds; ``reset`` drops what is in
flight; idle frames have the animator's size and the asked pts; the optional capabilities have their
defaults' types. Behaviour only: nothing here reads a clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from emo_stream.animators import create_animator
from emo_stream.animators.base import Animator
from emo_stream.avatar import prepare_avatar
from emo_stream.streaming import iter_windows
from emo_stream.types import AudioWindow, Avatar, FaceLandmarks, Frame
from tests import media
from tests.test_session_timing import LookaheadAnimator
from tests.test_worker import OneByOneAnimator, RecordingAnimator

SPF = 640  # one 40 ms window at 16 kHz, 25 fps
LITE_SIZE = 128  # the lite rig's smallest size
EMO_SIZE = 64  # the tiny checkpoint's sample size


@dataclass
class Case:
    """One animator under test: how to make it, an avatar at its size, and how close batched frames must be.

    ``batch_tolerance``: max |difference| in levels between ``feed_batch`` and ``feed`` one by one (batched CPU
    kernels of the emo backend round differently: 2 levels, as in tests/test_emo_backend.py; others exact).
    """

    make: Callable[[Path], Animator]
    avatar: Callable[[int], Avatar]
    batch_tolerance: int = 0


def _real_avatar(size: int) -> Avatar:
    return prepare_avatar(media.save_png(media.astronaut(), "astronaut.png"), size=size)


def _blank_avatar(size: int) -> Avatar:
    points = np.zeros((478, 3), np.float32)
    return Avatar(image=np.zeros((size, size, 3), np.uint8),
                  landmarks=FaceLandmarks(points=points, image_size=(size, size)),
                  cache_key=f"blank-{size}", source_size=(size, size))


def _tiny_emo(folder: Path) -> Animator:
    from emo_stream.models import save_checkpoint, tiny_components

    checkpoint = folder / "tiny"
    save_checkpoint(tiny_components(seed=0), checkpoint)
    # realtime=False: a shared CPU's timing must not switch clips to the lite fall-back. One step, one row per
    # session: the contract does not depend on how well the model samples (tests/test_emo_backend.py does).
    return create_animator("emo", size=EMO_SIZE, checkpoint=str(checkpoint), clip_frames=2, realtime=False,
                           warmup=False, steps=1, guidance_scale=1.0)


CASES = {
    "lite": Case(make=lambda _: create_animator("lite", size=LITE_SIZE), avatar=_real_avatar),
    "emo-tiny": Case(make=_tiny_emo, avatar=_real_avatar, batch_tolerance=2),
    "fake-recording": Case(make=lambda _: RecordingAnimator(), avatar=_blank_avatar),
    "fake-one-by-one": Case(make=lambda _: OneByOneAnimator(delay_s=0.0), avatar=_blank_avatar),
    "fake-lookahead": Case(make=lambda _: LookaheadAnimator(), avatar=_blank_avatar),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory) -> tuple[Animator, Avatar, Case]:
    spec = CASES[request.param]
    animator = spec.make(tmp_path_factory.mktemp(request.param))
    return animator, spec.avatar(animator.size), spec


def speech(windows: int, seed: int = 0) -> np.ndarray:
    """A gated tone whose energy changes from window to window, so the face has something to follow."""
    rng = np.random.default_rng(seed)
    t = np.arange(windows * SPF) / 16_000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (rng.random(t.size) > 0.5)).astype(np.float32)


def windows_of(audio: np.ndarray, start_pts: int = 0) -> list[AudioWindow]:
    return [AudioWindow(samples=w.samples, sample_rate=w.sample_rate, start_pts=w.start_pts + start_pts,
                        is_speech=w.is_speech) for w in iter_windows([audio])]


def stream(animator: Animator, state: object, windows: list[AudioWindow]) -> Iterator[tuple[int, Frame]]:
    """Every frame with the number of windows fed when it came out (``len(windows)``: from ``flush``)."""
    for n, window in enumerate(windows):
        for frame in animator.feed(window, state):
            yield n, frame
    for frame in animator.flush(state):
        yield len(windows), frame


def check_frame(frame: Frame, size: int) -> None:
    assert frame.rgb.dtype == np.uint8 and frame.rgb.shape == (size, size, 3)
    assert frame.matte is None or frame.matte.shape == (size, size)


def test_is_an_animator_with_its_declared_numbers(case):
    animator, _, _ = case
    assert isinstance(animator, Animator)
    declared = {"latency_frames": animator.latency_frames, "fps": animator.fps, "size": animator.size}
    assert all(isinstance(value, int) for value in declared.values()), declared
    assert animator.latency_frames >= 0 and animator.fps > 0 and animator.size > 0


def test_one_frame_per_window_at_its_pts_within_the_declared_latency(case):
    animator, avatar, _ = case
    windows = windows_of(speech(9))
    out = list(stream(animator, animator.prepare(avatar, seed=0), windows))
    assert [frame.pts for _, frame in out] == [w.start_pts for w in windows]
    for _, frame in out:
        check_frame(frame, animator.size)
    waited = [fed - n for n, (fed, _) in enumerate(out)]
    # The declared lookahead is kept, and is no larger than what the backend holds.
    assert max(waited[:len(windows) - animator.latency_frames]) == animator.latency_frames
    assert min(waited) >= 0


def test_flush_returns_what_the_lookahead_holds(case):
    animator, avatar, _ = case
    state = animator.prepare(avatar, seed=0)
    windows = windows_of(speech(7))
    fed = [frame.pts for window in windows for frame in animator.feed(window, state)]
    flushed = [frame.pts for frame in animator.flush(state)]
    assert fed + flushed == [w.start_pts for w in windows]
    assert 0 < len(flushed) <= animator.latency_frames or (animator.latency_frames == 0 and not flushed)
    assert animator.flush(state) == []  # nothing is held twice


def test_feed_batch_equals_feed_one_by_one_for_the_same_seeds(case):
    animator, avatar, spec = case
    windows = [windows_of(speech(6, seed=1)), windows_of(speech(6, seed=2))]
    alone = [list(stream(animator, animator.prepare(avatar, seed=k), windows[k])) for k in range(2)]
    states = [animator.prepare(avatar, seed=k) for k in range(2)]
    together: list[list[tuple[int, Frame]]] = [[], []]
    for n, pair in enumerate(zip(*windows, strict=True)):
        outputs = animator.feed_batch([(window, state) for window, state in zip(pair, states, strict=True)])
        assert len(outputs) == 2
        for k, frames in enumerate(outputs):
            together[k].extend((n, frame) for frame in frames)
    for k, state in enumerate(states):
        together[k].extend((len(windows[k]), frame) for frame in animator.flush(state))
    for one, batched in zip(alone, together, strict=True):
        assert [(n, f.pts) for n, f in one] == [(n, f.pts) for n, f in batched]
        for (_, a), (_, b) in zip(one, batched, strict=True):
            assert np.abs(a.rgb.astype(np.int16) - b.rgb.astype(np.int16)).max() <= spec.batch_tolerance


def test_reset_drops_the_windows_in_flight(case):
    animator, avatar, _ = case
    state = animator.prepare(avatar, seed=0)
    before = windows_of(speech(animator.latency_frames + 1))
    for window in before:
        animator.feed(window, state)
    animator.reset(state)
    # A new utterance a second later: only its own windows come out, each once.
    after = windows_of(speech(5, seed=3), start_pts=before[-1].start_pts + 90_000)
    out = [frame.pts for _, frame in stream(animator, state, after)]
    assert out == [w.start_pts for w in after]


def test_idle_frames_have_the_size_and_the_pts_asked_for(case):
    animator, avatar, _ = case
    states = [animator.prepare(avatar, seed=k) for k in range(2)]
    step = 90_000 // animator.fps
    for n in range(3):
        frame = animator.idle(states[0], 1000 + n * step)
        assert frame.pts == 1000 + n * step
        check_frame(frame, animator.size)
    frames = animator.idle_batch([(state, 5000) for state in states])
    assert [frame.pts for frame in frames] == [5000, 5000]
    for frame in frames:
        check_frame(frame, animator.size)


def test_optional_capabilities_have_their_defaults_types(case):
    animator, avatar, _ = case
    assert isinstance(animator.batches_feeds, bool)
    assert isinstance(animator.renders_whole_video, bool)
    assert isinstance(animator.margin_ticks, int) and animator.margin_ticks >= 0
    stats = animator.stats_dict()
    assert isinstance(stats, dict) and all(isinstance(key, str) for key in stats)
    assert animator.warm(avatar) is None
    assert callable(animator.close)


class Minimal(Animator[list]):
    """Only what is required: no lookahead, a grey frame per window."""

    latency_frames = 0
    fps = 25
    size = 2

    def prepare(self, avatar: Avatar, seed: int = 0) -> list:
        return []

    def feed(self, window: AudioWindow, state: list) -> list[Frame]:
        state.append(window.start_pts)
        return [Frame(rgb=np.full((2, 2, 3), 128, np.uint8), pts=window.start_pts)]

    def idle(self, state: list, pts: int) -> Frame:
        return Frame(rgb=np.zeros((2, 2, 3), np.uint8), pts=pts)

    def flush(self, state: list) -> list[Frame]:
        return []

    def reset(self, state: list) -> None:
        state.clear()


def test_a_backend_without_the_optional_capabilities_gets_the_defaults_callers_relied_on():
    animator = Minimal()
    assert animator.batches_feeds is True
    assert animator.renders_whole_video is False
    assert animator.margin_ticks == 0
    assert animator.stats_dict() == {}
    assert animator.warm(_blank_avatar(2)) is None
    assert animator.close() is None
    a, b = animator.prepare(_blank_avatar(2)), animator.prepare(_blank_avatar(2))
    windows = windows_of(speech(2))
    outputs = animator.feed_batch([(windows[0], a), (windows[1], b)])
    assert [[f.pts for f in frames] for frames in outputs] == [[windows[0].start_pts], [windows[1].start_pts]]
    assert (a, b) == ([windows[0].start_pts], [windows[1].start_pts])
    assert [f.pts for f in animator.idle_batch([(a, 7), (b, 9)])] == [7, 9]
    with pytest.raises(NotImplementedError):
        next(iter(animator.whole_video(a, np.zeros(SPF, np.float32))))


def test_an_animator_missing_a_required_method_cannot_be_made():
    class NoFlush(Animator[list]):
        latency_frames, fps, size = 0, 25, 2

        def prepare(self, avatar: Avatar, seed: int = 0) -> list:
            return []

        def feed(self, window: AudioWindow, state: list) -> list[Frame]:
            return []

        def idle(self, state: list, pts: int) -> Frame:
            return Frame(rgb=np.zeros((2, 2, 3), np.uint8), pts=pts)

        def reset(self, state: list) -> None:
            pass

    with pytest.raises(TypeError, match="flush"):
        NoFlush()  # type: ignore[abstract]
