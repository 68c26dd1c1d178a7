"""The learned lite motion: rig targets from the face mesh, the causal filter (streaming equals offline), its
fitting, its file, and the controller that drives the renderer with it."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from emo_stream.animators.learned_motion import (
    PAUSE_FULL_LOUDNESS,
    PAUSE_GAIN,
    LearnedMotionController,
    MouthGeometry,
)
from emo_stream.animators.lite_motion import MotionController
from emo_stream.animators.motion_filter import (
    DEFAULT_WEIGHTS,
    FRAME_DIM,
    MotionFilter,
    context_windows,
    feature_matrix,
)
from emo_stream.audio import load_audio
from emo_stream.audio.features import FeatureExtractor, frame_features
from emo_stream.avatar import prepare_avatar
from emo_stream.errors import ConfigError
from emo_stream.face import LIP_INNER_BOTTOM, MOUTH_LEFT, MOUTH_RIGHT, RIGID_POINTS
from emo_stream.metrics.blinks import blink_events
from emo_stream.metrics.face_measures import lip_gap, mouth_opening
from emo_stream.training.lite_motion import TalkingClip, fit_blink_stats, fit_filter, fit_head_stats
from emo_stream.training.rig_targets import RAW_NAMES, RIG_TARGET_NAMES, raw_measures, rig_targets
from server.app import default_portrait_bytes
from tests import media


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    return prepare_avatar(default_portrait_bytes(), size=256).landmarks.points.astype(np.float64)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(media.silence_then_speech("weather", silence_s=1.0), 16_000)


def _rotated(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    out = points.copy()
    centre = points[:, :2].mean(axis=0)
    out[:, :2] = (points[:, :2] - centre) @ rot.T + centre
    return out


# ---------------------------------------------------------------------------------------------- rig targets


def test_raw_measures_are_in_eye_spans_and_ignore_roll_and_scale(points):
    base = raw_measures(points)
    assert np.isfinite(base).all()
    np.testing.assert_allclose(raw_measures(_rotated(points, 12.0)), base, atol=1e-6)
    scaled = points.copy()
    scaled[:, :2] *= 1.7
    scaled[:, 2] *= 1.7
    np.testing.assert_allclose(raw_measures(scaled), base, rtol=1e-6, atol=1e-9)


def _turned(points: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """The face turned in 3D about its centre (yaw about the image's vertical axis, then pitch: a nod)."""
    a, b = math.radians(yaw), math.radians(pitch)
    ry = np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    centre = points.mean(axis=0)
    return (points - centre) @ (rx @ ry).T + centre


def test_openings_ignore_a_nod_and_a_turn_which_the_2d_opening_does_not(points):
    """The real clips' 2D nose-to-chin length followed head pitch more than speech: the openings the rig learns
    from, and the lip gap the benchmark scores, are 3D lengths."""
    turned = _turned(points, yaw=15.0, pitch=12.0)
    openings = [RAW_NAMES.index(n) for n in ("jaw", "mouth_open", "lips_apart")]
    np.testing.assert_allclose(raw_measures(turned)[openings], raw_measures(points)[openings], atol=1e-6)
    assert lip_gap(turned) == pytest.approx(lip_gap(points), abs=1e-6)
    assert abs(mouth_opening(turned) - mouth_opening(points)) > 0.01  # the measure the bench used before


def test_raw_measures_see_the_lower_lip_drop_and_the_mouth_widen(points):
    span = float(np.linalg.norm(points[33, :2] - points[263, :2]))
    opened = points.copy()
    opened[LIP_INNER_BOTTOM, 1] += 0.1 * span
    d = raw_measures(opened) - raw_measures(points)
    assert d[RAW_NAMES.index("mouth_open")] == pytest.approx(0.1, abs=0.02)
    assert d[RAW_NAMES.index("lower_lip")] == pytest.approx(0.1, abs=0.02)
    wide = points.copy()
    wide[MOUTH_LEFT, 0] -= 0.05 * span
    wide[MOUTH_RIGHT, 0] += 0.05 * span
    assert raw_measures(wide)[RAW_NAMES.index("lip_width")] - raw_measures(points)[RAW_NAMES.index(
        "lip_width")] == pytest.approx(0.1, abs=0.02)


def test_rig_targets_normalise_per_speaker(points):
    """Floor at the closed mouth, neutral lips at zero, eye closure 0..1, head pose about its median."""
    t = 100
    raw = np.tile(raw_measures(points), (t, 1))
    opening = np.where(np.arange(t) % 10 < 5, 0.0, 0.08)
    raw[:, RAW_NAMES.index("mouth_open")] += opening
    raw[40:43, RAW_NAMES.index("ear")] *= 0.1  # a blink
    rigid = np.tile(points[list(RIGID_POINTS)], (t, 1, 1))
    found = np.ones(t, bool)
    found[70] = False
    raw[70] = np.nan  # no face: interpolated
    targets = rig_targets(raw, rigid, found)
    assert targets.shape == (t, len(RIG_TARGET_NAMES)) and np.isfinite(targets).all()
    mouth = targets[:, RIG_TARGET_NAMES.index("mouth_open")]
    assert mouth[70] == pytest.approx(0.04, abs=1e-4)  # between its neighbours' 0.08 and 0
    seen = found.copy()
    np.testing.assert_allclose(mouth[seen & (opening == 0)], 0.0, atol=1e-6)
    assert mouth[seen & (opening > 0)].min() == pytest.approx(0.08, abs=1e-4)
    blink = targets[:, RIG_TARGET_NAMES.index("blink")]
    assert blink[40:43].min() > 0.85 and blink[:40].max() < 1e-6
    np.testing.assert_allclose(targets[:, RIG_TARGET_NAMES.index("yaw"):], 0.0, atol=1e-6)
    np.testing.assert_allclose(targets[:, RIG_TARGET_NAMES.index("lip_width")], 0.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- the filter


def _random_filter(past: int = 3, seed: int = 0) -> MotionFilter:
    rng = np.random.default_rng(seed)
    dim = (past + 2) * FRAME_DIM
    names = ("jaw", "mouth_open", "lip_width", "lip_round", "upper_lip", "lower_lip", "lips_apart")
    return MotionFilter(weight=rng.normal(0, 0.05, (len(names), dim)).astype(np.float32),
                        bias=rng.normal(0, 0.1, len(names)).astype(np.float32),
                        in_mean=rng.normal(0, 1, dim).astype(np.float32),
                        in_std=rng.uniform(0.5, 2, dim).astype(np.float32), rest=np.zeros(len(names), np.float32),
                        output_names=names,
                        stats={"held_out": ["x_"]})


def test_streaming_equals_offline(speech):
    model = _random_filter()
    x = feature_matrix(frame_features(speech))
    offline = model.run(x)
    direct = model.standardise(context_windows(x, model.past)) @ model.weight.T + model.bias
    np.testing.assert_allclose(offline, direct, rtol=1e-4, atol=1e-4)
    # Streamed in odd chunks through the extractor, frame by frame through step().
    extractor = FeatureExtractor()
    frames = []
    for i in range(0, len(speech), 777):
        frames += extractor.push(speech[i:i + 777])
    frames += extractor.flush()
    streamed = model.run(feature_matrix(frames))
    np.testing.assert_array_equal(streamed, offline)


def test_file_round_trip_and_errors(tmp_path):
    model = _random_filter(past=2)
    path = tmp_path / "m.safetensors"
    model.save(path)
    loaded = MotionFilter.load(path)
    assert loaded.output_names == model.output_names and loaded.past == 2 and loaded.stats == model.stats
    np.testing.assert_array_equal(loaded.weight, model.weight)
    with pytest.raises(ConfigError, match="train-lite-motion"):
        MotionFilter.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="cannot read"):
        MotionFilter.load(tmp_path / "junk.safetensors")


def test_the_shipped_weights_load_and_are_small():
    model = MotionFilter.load()
    assert DEFAULT_WEIGHTS.stat().st_size <= 5 * 2 ** 20
    assert model.stats["held_out"], "the shipped weights say which speakers they were not trained on"
    assert {"blink", "head"} <= set(model.stats)


def test_fit_recovers_a_linear_map_and_is_deterministic(speech):
    """Targets made by a known filter of the features: the fit finds it (r ~ 1), twice the same."""
    truth = _random_filter(past=3, seed=1)
    x = feature_matrix(frame_features(speech))
    y = truth.run(x)
    t = len(x)
    targets = np.zeros((t, len(RIG_TARGET_NAMES)), np.float32)
    for i, name in enumerate(truth.output_names):
        targets[:, RIG_TARGET_NAMES.index(name)] = y[:, i]
    clip = TalkingClip(clip_id="a", inputs=[x], targets=targets, found=np.ones(t, bool), loudness=np.zeros(t),
                       stress=np.zeros(t))
    fitted = fit_filter([clip], past=3, ridge=1e-3)
    again = fit_filter([clip], past=3, ridge=1e-3)
    np.testing.assert_array_equal(fitted.weight, again.weight)
    pred = fitted.run(x)
    for i in range(len(truth.output_names)):
        assert np.corrcoef(pred[:, i], y[:, i])[0, 1] > 0.99


def test_fitted_statistics_follow_the_data():
    """Blinks every 2 s of a 60 s clip, a head swaying 3 degrees: the fit says so."""
    fps, t = 25.0, 1500
    targets = np.zeros((t, len(RIG_TARGET_NAMES)), np.float32)
    blink = RIG_TARGET_NAMES.index("blink")
    for start in range(20, t - 5, 50):
        targets[start:start + 4, blink] = [0.5, 1.0, 0.8, 0.3]
    yaw = RIG_TARGET_NAMES.index("yaw")
    targets[:, yaw] = 3.0 * math.sqrt(2) * np.sin(2 * np.pi * 0.3 * np.arange(t) / fps)
    clip = TalkingClip(clip_id="a", inputs=[np.zeros((t, FRAME_DIM), np.float32)], targets=targets,
                       found=np.ones(t, bool), loudness=np.zeros(t), stress=np.zeros(t))
    blinks = fit_blink_stats([clip], fps)
    assert blinks["per_minute"] == pytest.approx(30.0, abs=1.0)
    assert blinks["interval_mean_s"] == pytest.approx(2.0, abs=0.05)
    assert max(blinks["profile"]) == pytest.approx(1.0)
    head = fit_head_stats([clip], fps)
    assert head["yaw"]["std_deg"] == pytest.approx(3.0, rel=0.05)


# ---------------------------------------------------------------------------------------------- the controller


def _controller(seed: int = 0, motion: float = 1.0) -> LearnedMotionController:
    geometry = MouthGeometry(eye_span_px=100.0, mouth_half_width_px=25.0)
    return LearnedMotionController(MotionFilter.load(), geometry, fps=25, motion=motion, seed=seed)


def _drive(controller, frames):
    return [controller.step(f, frames[i + 1] if i + 1 < len(frames) else None) for i, f in enumerate(frames)]


def test_the_mouth_moves_half_as_much_in_pauses(speech):
    """Openings beyond rest are scaled by PAUSE_GAIN where this frame and the next are silent, fully from
    PAUSE_FULL_LOUDNESS up, and in between linearly (a filter that answers every frame with the same opening)."""
    names = ("jaw", "mouth_open", "lip_width", "lip_round", "upper_lip", "lower_lip", "lips_apart")
    dim = 4 * FRAME_DIM
    constant = MotionFilter(weight=np.zeros((len(names), dim), np.float32), bias=np.full(len(names), 0.1, np.float32),
                            in_mean=np.zeros(dim, np.float32), in_std=np.ones(dim, np.float32),
                            rest=np.zeros(len(names), np.float32), output_names=names)
    controller = LearnedMotionController(constant, MouthGeometry(eye_span_px=100.0, mouth_half_width_px=25.0))
    frame = frame_features(speech)[40]

    def opening(loudness: float, ahead: float | None = None) -> float:
        feat = replace(frame, loudness=loudness)
        nxt = replace(frame, loudness=ahead) if ahead is not None else None
        return float(controller._mouth(feat, nxt)[names.index("jaw")])

    assert opening(0.0) == pytest.approx(0.1 * PAUSE_GAIN)
    assert opening(PAUSE_FULL_LOUDNESS / 2) == pytest.approx(0.1 * (1 + PAUSE_GAIN) / 2)
    assert opening(PAUSE_FULL_LOUDNESS) == pytest.approx(0.1) == opening(0.9)
    assert opening(0.0, ahead=0.5) == pytest.approx(0.1)  # a syllable it already hears opens the mouth


def test_the_mouth_rests_in_silence_and_opens_in_speech(speech):
    frames = frame_features(speech)
    params = _drive(_controller(), frames)
    jaw = np.array([p.jaw for p in params])
    silent, speaking = jaw[5:20], jaw[30:]  # the first second is silence
    assert silent.max() < 0.05
    assert np.percentile(speaking, 90) > 0.25
    assert [p.jaw for p in _drive(_controller(), frames)] == list(jaw)  # same seed, same frames


def test_blinks_and_head_follow_the_fitted_statistics():
    model = MotionFilter.load()
    controller = _controller(seed=3)
    params = [controller.step(None) for _ in range(25 * 600)]  # ten idle minutes
    blinks = blink_events(1.0 - np.array([p.blink_left for p in params]))
    fitted = model.stats["blink"]["per_minute"]
    assert len(blinks) / 10 == pytest.approx(fitted, rel=0.25)
    yaw = np.array([p.yaw for p in params])
    target = model.stats["head"]["yaw"]["std_deg"]
    assert yaw.std() == pytest.approx(target, rel=0.35)
    still = _controller(seed=3, motion=0.0)
    assert all(still.step(None).yaw == 0.0 for _ in range(50))


def test_the_rules_stay_selectable(speech):
    """lite_motion: rules gives the hand-tuned controller; an unknown value is a ConfigError."""
    from emo_stream.animators import create_animator

    rules = create_animator("lite", size=128, lite_motion="rules")
    avatar = prepare_avatar(default_portrait_bytes(), size=128)
    assert isinstance(rules.prepare(avatar).controller, MotionController)
    learned = create_animator("lite", size=128)
    assert isinstance(learned.prepare(avatar).controller, LearnedMotionController)
    with pytest.raises(ConfigError, match="lite motion"):
        create_animator("lite", size=128, lite_motion="magic")
