"""The lite animator: protocol behaviour, determinism, and what a viewer sees in its renders."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from emo_stream.animators import create_animator
from emo_stream.animators.base import Animator
from emo_stream.audio import load_audio
from emo_stream.avatar import prepare_avatar
from emo_stream.metrics import compute_video_metrics
from emo_stream.metrics.blinks import blink_events
from emo_stream.metrics.video import measure_video
from emo_stream.render import RenderOptions, render_file
from emo_stream.streaming import AudioWindowBuffer, iter_windows
from server.app import default_portrait_bytes
from tests import media

SIZE = 256


@pytest.fixture(scope="module")
def avatar():
    return prepare_avatar(default_portrait_bytes(), size=SIZE)


@pytest.fixture(scope="module")
def animator():
    return create_animator("lite", size=SIZE)


def _run(animator, avatar, samples: np.ndarray, seed: int = 0, chunk: int = 640):
    state = animator.prepare(avatar, seed=seed)
    buffer = AudioWindowBuffer(16_000, 25)
    frames, counts = [], []
    for i in range(0, len(samples), chunk):
        for window in buffer.push(samples[i:i + chunk]):
            out = animator.feed(window, state)
            counts.append(len(out))
            frames.extend(out)
    for window in buffer.flush():
        frames.extend(animator.feed(window, state))
    frames.extend(animator.flush(state))
    return frames, counts


def test_protocol_latency_and_frame_count(animator, avatar):
    assert isinstance(animator, Animator)
    assert 1 <= animator.latency_frames <= 3
    samples = load_audio(media.espeak_wav("hello"))
    frames, counts = _run(animator, avatar, samples)
    n_windows = -(-len(samples) // 640)
    # One frame per window; the first `latency_frames` windows only fill the lookahead.
    assert len(frames) == n_windows
    assert counts[: animator.latency_frames] == [0] * animator.latency_frames
    assert set(counts[animator.latency_frames:]) == {1}
    pts = [f.pts for f in frames]
    assert pts == [i * 3600 for i in range(n_windows)]
    assert frames[0].rgb.shape == (SIZE, SIZE, 3) and frames[0].rgb.dtype == np.uint8


def test_same_seed_same_frames_other_seed_differs(animator, avatar):
    samples = load_audio(media.espeak_wav("weather"))[: 16_000 * 3]
    a, _ = _run(animator, avatar, samples, seed=7, chunk=640)
    b, _ = _run(animator, avatar, samples, seed=7, chunk=999)  # chunking must not matter
    c, _ = _run(animator, avatar, samples, seed=8)
    assert all(np.array_equal(x.rgb, y.rgb) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.rgb, y.rgb) for x, y in zip(a, c, strict=True))


def test_feed_batch_equals_one_by_one(animator, avatar):
    samples = load_audio(media.espeak_wav("hello"))[: 16_000 * 2]
    windows = list(iter_windows([samples]))
    one = [animator.prepare(avatar, seed=s) for s in (1, 2)]
    many = [animator.prepare(avatar, seed=s) for s in (1, 2)]
    for w in windows:
        singles = [animator.feed(w, st) for st in one]
        batched = animator.feed_batch([(w, st) for st in many])
        for x, y in zip(singles, batched, strict=True):
            assert [f.pts for f in x] == [f.pts for f in y]
            assert all(np.array_equal(f.rgb, g.rgb) for f, g in zip(x, y, strict=True))


def test_idle_frames_move_and_reset_closes_the_mouth(animator, avatar):
    state = animator.prepare(avatar, seed=3)
    idle = [animator.idle(state, pts=i * 3600).rgb.astype(np.int16) for i in range(50)]
    # Never frozen: breathing, sway and blinks change the picture over two seconds.
    assert max(np.abs(f - idle[0]).mean() for f in idle[1:]) > 0.5
    speech = load_audio(media.espeak_wav("hello"))
    jaws = []
    for w in list(iter_windows([speech]))[:40]:
        animator.feed(w, state)
        jaws.append(state.last_params.jaw)
    assert max(jaws) > 0.2
    animator.reset(state)
    assert not state.pending
    assert animator.idle(state, pts=50 * 3600) and state.last_params.jaw < 1e-6  # the mouth closes at once


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    out = tmp_path_factory.mktemp("renders")
    image = media.save_png(media.astronaut(), "astronaut.png")
    made = {}
    for key, audio in {
        "speech": media.silence_then_speech("hello"),
        "silence": media.silence_wav(3.0),
        "speech_rules": media.silence_then_speech("hello"),
        "mama": media.espeak_wav("mama"),
        "ee": media.espeak_wav("ee"),
        "oo": media.espeak_wav("oo"),
        "singing": media.singing_wav(),
    }.items():
        path = out / f"{key}.mp4"
        # The head stays still in the silent render: its motion moves the measured mouth (nose to chin) too.
        options = RenderOptions(size=SIZE, seed=1, motion=0.0 if key == "silence" else 1.0,
                                lite_motion="rules" if key.endswith("_rules") else "learned")
        render_file(image, audio, path, options)
        made[key] = (path, audio)
    return made


def test_speech_render_is_lip_synced_with_the_rules(renders):
    """The rules follow the loudness closely (a puppet's r; real mouths score about 0.2 on this measure)."""
    m = compute_video_metrics(renders["speech_rules"][0])
    assert m.face_found >= 0.95
    assert m.lipsync_r >= 0.5, m
    assert abs(m.av_offset_ms) <= 40, m
    assert m.mouth_open_range > 0.05


def test_learned_mouth_opens_with_the_speech_and_rests_before_it(renders):
    """Silence then "hello": the learned mouth moves in the speech and not in the second of silence before it."""
    path, _ = renders["speech"]
    m = measure_video(path)
    assert m.face_mask.mean() >= 0.95
    before, during = m.mouth[3:22], m.mouth[27:]
    assert np.nanpercentile(during, 95) - np.nanmin(before) > 0.05
    assert np.nanmax(before) - np.nanmin(before) < 0.35 * (np.nanmax(during) - np.nanmin(during))


def test_silence_keeps_the_mouth_still(renders):
    m = compute_video_metrics(renders["silence"][0])
    speech = compute_video_metrics(renders["speech"][0])
    assert m.mouth_open_range < 0.02
    assert m.mouth_open_range < 0.2 * speech.mouth_open_range


def test_mama_baba_papa_closes_the_lips(renders):
    m = measure_video(renders["mama"][0])
    mouth = m.mouth[np.isfinite(m.mouth)]
    rest = float(np.median(mouth[-8:]))  # the trailing silence
    peak = float(np.percentile(mouth, 95))
    closed = mouth <= rest + 0.15 * (peak - rest)
    opened = mouth >= rest + 0.6 * (peak - rest)
    # Count closures that come between two openings: m, b, p.
    closures, was_open = 0, False
    for c, o in zip(closed, opened, strict=True):
        if o:
            was_open = True
        elif c and was_open:
            closures += 1
            was_open = False
    assert closures >= 4, (closures, np.round(mouth, 3).tolist())


def test_ee_is_wider_than_oo(renders):
    ee = measure_video(renders["ee"][0])
    oo = measure_video(renders["oo"][0])

    def speaking_width(m):
        mouth = m.mouth
        talk = mouth > np.nanpercentile(mouth, 40)
        return float(np.nanmedian(m.width[talk]))

    assert speaking_width(ee) > speaking_width(oo) * 1.03


def test_singing_moves_the_head_more_than_speech(renders):
    sing = compute_video_metrics(renders["singing"][0])
    speech = compute_video_metrics(renders["speech"][0])
    assert sing.lipsync_r >= 0.4
    assert sing.head_roll_std_deg + sing.head_yaw_std_deg > speech.head_roll_std_deg + speech.head_yaw_std_deg


def test_twenty_seconds_have_blinks_and_head_motion(tmp_path):
    parts = [str(media.espeak_wav(k, voice=v)) for k, v in
             [("hello", "en-us"), ("weather", "en-gb"), ("story", "en-us+f3"), ("hello", "en-gb"),
              ("weather", "en-us"), ("story", "en-gb")]]
    long_wav = tmp_path / "long.wav"
    subprocess.run(["sox", *parts, "-r", "16000", str(long_wav), "pad", "0", "1", "trim", "0", "20"], check=True)
    out = tmp_path / "long.mp4"
    render_file(media.save_png(media.grace_hopper(), "hopper.png"), long_wav, out, RenderOptions(size=SIZE, seed=5))
    m = compute_video_metrics(out)
    measures = measure_video(out)
    assert 19.9 <= m.duration_s <= 20.1
    assert 6 <= m.blinks_per_min <= 40, m
    assert len(blink_events(measures.ear)) >= 2
    assert m.head_yaw_std_deg > 0.3 and m.head_pitch_std_deg > 0.3 and m.head_roll_std_deg > 0.3, m
    assert m.lipsync_r >= 0.35, m  # the learned mouth: real mouths follow loudness less than a puppet does


def test_warm_builds_the_rig_off_the_feeding_thread_and_prepare_reuses_it(avatar, monkeypatch):
    """A server warms a portrait on a thread of its own; the session's prepare on the worker then builds nothing."""
    import threading

    from emo_stream.animators import lite as lite_module
    from emo_stream.animators.lite import LiteAnimator

    fresh = LiteAnimator(size=avatar.size)
    built = []
    original = lite_module.build_rig

    def counting_build_rig(a):
        built.append(threading.current_thread().name)
        return original(a)

    monkeypatch.setattr(lite_module, "build_rig", counting_build_rig)
    warmer = threading.Thread(target=fresh.warm, args=(avatar,), name="warmer")
    warmer.start()
    warmer.join()
    state = fresh.prepare(avatar)
    fresh.prepare(avatar)
    assert built == ["warmer"]
    assert state.renderer.rig is fresh._rigs[avatar.cache_key]
