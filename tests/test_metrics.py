"""The video metrics, proved on clips whose motion is known: a mouth driven by speech with a set delay,
a still portrait, blinks at set frames, a head rolled by a set angle, and no face at all.

Clips are H.264 yuv420p at 25 fps made from a crop of the astronaut portrait with the test-only
warps in ``tests/mouth_warp.py``; the mouth clip carries its speech as AAC in the same MP4.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from emo_stream.audio.decode import load_audio
from emo_stream.errors import CorruptVideoError, InputNotFoundError
from emo_stream.face import NOSE_TIP
from emo_stream.metrics import VideoMetrics, compute_video_metrics
from emo_stream.metrics.blinks import blink_events
from emo_stream.metrics.face_measures import head_angles
from emo_stream.metrics.lipsync import audio_envelope, lipsync
from tests import media
from tests.mouth_warp import PortraitRig, close_eyes, open_mouth, roll

FPS = 25
SR = 16_000
DELAY_S = 0.080  # the talking clip's mouth shows the sound of 80 ms earlier: the video is late


def write_clip(path: Path, frames, audio: np.ndarray | None = None, audio_start_s: float = 0.0) -> Path:
    """Encode RGB frames as H.264 yuv420p at 25 fps, with optional mono 16 kHz audio as AAC.

    Audio frames get pts from ``audio_start_s`` (0 by default), so the muxer trims the AAC
    encoder's priming (docs/platform.md).
    """
    with av.open(str(path), "w") as container:
        video = None
        for i, rgb in enumerate(frames):
            if video is None:
                video = container.add_stream("libx264", rate=FPS)
                video.width, video.height = rgb.shape[1], rgb.shape[0]
                video.pix_fmt = "yuv420p"
                video.options = {"preset": "ultrafast", "crf": "18"}
                sound = container.add_stream("aac", rate=SR, layout="mono") if audio is not None else None
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        if audio is not None:
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
            for start in range(0, len(pcm), 1024):
                chunk = av.AudioFrame.from_ndarray(pcm[None, start:start + 1024], format="s16", layout="mono")
                chunk.sample_rate, chunk.time_base = SR, Fraction(1, SR)
                chunk.pts = start + round(audio_start_s * SR)
                container.mux(sound.encode(chunk))
            container.mux(sound.encode())
    return path


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def rig(astronaut_rgb) -> PortraitRig:
    # Face large in a 256² frame: the astronaut's face spans ~92 px of 512; this crop makes it ~135 px.
    crop = cv2.resize(astronaut_rgb[40:216, 136:312], (256, 256), interpolation=cv2.INTER_AREA)
    return PortraitRig.from_image(np.ascontiguousarray(crop))


@pytest.fixture(scope="module")
def speech() -> tuple[Path, np.ndarray]:
    wav = media.silence_then_speech("hello")  # 1 s silence, ~5 s speech, 0.5 s silence
    return wav, load_audio(wav, SR)


def mouth_track(audio: np.ndarray, frames: int, delay_s: float) -> np.ndarray:
    """Per-frame opening 0..1 following the speech's loudness ``delay_s`` earlier.

    Deliberately not the metric's own envelope: linear RMS over 30 ms (the metric uses sqrt of
    a 40 ms RMS), normalised, then smoothed across frames with a symmetric kernel (no shift).
    """
    half = int(0.015 * SR)
    level = np.zeros(frames)
    for i in range(frames):
        centre = int(round((i / FPS - delay_s) * SR))
        window = audio[max(centre - half, 0):max(centre + half, 0)]
        level[i] = np.sqrt(np.mean(window**2)) if len(window) else 0.0
    level = np.convolve(level, [0.25, 0.5, 0.25], mode="same")
    return np.clip(level / np.percentile(level, 98), 0.0, 1.0)


@pytest.fixture(scope="module")
def talking_clip(tmp_path_factory, rig, speech) -> Path:
    _, audio = speech
    frames = int(len(audio) / SR * FPS)
    opening = mouth_track(audio, frames, DELAY_S)
    path = tmp_path_factory.mktemp("metrics") / "talking.mp4"
    return write_clip(path, (open_mouth(rig, o) for o in opening), audio)


@pytest.fixture(scope="module")
def still_clip(tmp_path_factory, rig, speech) -> Path:
    _, audio = speech
    frames = int(len(audio) / SR * FPS)
    path = tmp_path_factory.mktemp("metrics") / "still.mp4"
    return write_clip(path, (rig.rgb for _ in range(frames)), audio)


@pytest.fixture(scope="module")
def talking_metrics(talking_clip) -> VideoMetrics:
    return compute_video_metrics(talking_clip)


@pytest.fixture(scope="module")
def still_metrics(still_clip) -> VideoMetrics:
    return compute_video_metrics(still_clip)


# --------------------------------------------------------------------------- lip-sync on real clips

def test_talking_clip_lipsync_and_delay_from_own_audio_track(talking_metrics):
    m = talking_metrics
    assert m.frames > 100 and m.fps == pytest.approx(25.0)
    assert m.face_found >= 0.95
    assert m.lipsync_r is not None and m.lipsync_r > 0.7, m
    # Positive = video late; the recovered lag is within one 40 ms frame of the 80 ms applied.
    assert m.av_offset_ms is not None and abs(m.av_offset_ms - DELAY_S * 1000) <= 40, m
    assert m.mouth_open_range is not None and m.mouth_open_range > 0.05
    # The mouth moves while there is speech and stays (nearly) still in the silences.
    assert m.mouth_open_range_speech is not None and m.mouth_open_range_silence is not None
    assert m.mouth_open_range_silence < m.mouth_open_range_speech
    # The lip gap, which no head motion enters, says the same.
    assert m.lip_gap_range_speech is not None and m.lip_gap_range_silence is not None
    assert m.lip_gap_range_silence < 0.5 * m.lip_gap_range_speech, m


def test_talking_clip_with_separate_audio_file(talking_clip, speech, talking_metrics):
    wav, _ = speech
    m = compute_video_metrics(talking_clip, audio_path=wav)
    assert m.lipsync_r is not None and m.lipsync_r > 0.7
    assert m.av_offset_ms is not None and abs(m.av_offset_ms - DELAY_S * 1000) <= 40
    # The MP4's own AAC track and the source wav agree (the muxer trimmed the encoder priming).
    assert abs(m.av_offset_ms - talking_metrics.av_offset_ms) <= 10


def test_audio_track_starting_late_is_placed_on_the_video_clock(tmp_path, rig, speech):
    _, audio = speech
    late = 0.5  # the audio track's first sample plays 0.5 s into the video
    frames = int((len(audio) / SR + late) * FPS)
    heard = np.concatenate([np.zeros(int(late * SR), np.float32), audio])  # what the viewer hears
    opening = mouth_track(heard, frames, DELAY_S)
    clip = write_clip(tmp_path / "late.mp4", (open_mouth(rig, o) for o in opening), audio, audio_start_s=late)
    m = compute_video_metrics(clip)
    assert m.lipsync_r is not None and m.lipsync_r > 0.7
    assert m.av_offset_ms is not None and abs(m.av_offset_ms - DELAY_S * 1000) <= 40, m


def test_still_clip_scores_no_mouth_motion_and_no_lipsync(still_metrics):
    m = still_metrics
    assert m.face_found >= 0.95
    assert m.mouth_open_range is not None and m.mouth_open_range < 0.02
    assert m.lipsync_r is None or abs(m.lipsync_r) < 0.2, m
    assert m.blinks == 0
    for std in (m.head_yaw_std_deg, m.head_pitch_std_deg, m.head_roll_std_deg):
        assert std is not None and std < 1.0, m


def test_to_dict_is_plain_json(talking_metrics):
    d = talking_metrics.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) >= {"duration_s", "fps", "frames", "face_found", "mouth_open_range", "lipsync_r",
                      "av_offset_ms", "blinks_per_min", "head_yaw_std_deg", "head_pitch_std_deg",
                      "head_roll_std_deg", "mouth_open_range_silence", "mouth_open_range_speech",
                      "lip_gap_range_silence", "lip_gap_range_speech"}


# --------------------------------------------------------------------------- faces, blinks, head pose

def test_no_face_in_noise_clip(tmp_path):
    rng = np.random.default_rng(0)
    frames = (np.clip(128 + rng.normal(0, 20, (256, 256, 3)), 0, 255).astype(np.uint8) for _ in range(25))
    m = compute_video_metrics(write_clip(tmp_path / "noise.mp4", frames))
    assert m.frames == 25
    assert m.face_found <= 0.05
    assert m.mouth_open_range is None and m.blinks is None and m.head_roll_std_deg is None
    assert m.lipsync_r is None and m.av_offset_ms is None  # no audio track: not an error
    json.dumps(m.to_dict())


def test_blinks_counted_once_each(tmp_path, rig):
    closure = np.zeros(100)
    for start in (15, 45, 75):
        closure[start:start + 4] = [0.5, 1.0, 1.0, 0.5]  # 160 ms blinks
    m = compute_video_metrics(write_clip(tmp_path / "blinks.mp4", (close_eyes(rig, c) for c in closure)))
    assert m.face_found >= 0.95
    assert m.blinks == 3
    assert m.blinks_per_min == pytest.approx(3 * 60 / 4.0, rel=0.05)
    assert m.lipsync_r is None


def test_head_roll_std_follows_applied_rotation(tmp_path, rig, still_metrics):
    t = np.arange(100) / FPS
    angles = 5.0 * np.sin(2 * np.pi * t / 2.0)  # ±5° roll, two periods; std 3.54°
    centre = tuple(float(v) for v in rig.points[NOSE_TIP, :2])
    m = compute_video_metrics(write_clip(tmp_path / "roll.mp4", (roll(rig.rgb, a, centre) for a in angles)))
    applied = float(angles.std())
    assert m.face_found >= 0.95
    # Video-mode tracking trails fast turns a little (it read ~92% of the applied std here).
    assert 0.7 * applied < m.head_roll_std_deg < 1.3 * applied, m
    assert m.head_roll_std_deg > 5 * still_metrics.head_roll_std_deg
    assert m.head_yaw_std_deg < 1.5 and m.head_pitch_std_deg < 1.5


# --------------------------------------------------------------------------- bad input

def test_missing_path_is_input_not_found(tmp_path):
    with pytest.raises(InputNotFoundError, match="not found"):
        compute_video_metrics(tmp_path / "nope.mp4")
    with pytest.raises(InputNotFoundError, match="directory"):
        compute_video_metrics(tmp_path)


@pytest.mark.parametrize("content", [b"this is not a video\n" * 20, b""], ids=["text", "empty"])
def test_non_video_file_is_corrupt_video(tmp_path, content):
    path = tmp_path / "fake.mp4"
    path.write_bytes(content)
    with pytest.raises(CorruptVideoError) as info:
        compute_video_metrics(path)
    assert "\n" not in str(info.value) and "fake.mp4" in str(info.value)


def test_audio_only_file_is_corrupt_video(speech):
    wav, _ = speech
    with pytest.raises(CorruptVideoError, match="no video track"):
        compute_video_metrics(wav)


def test_missing_audio_file_is_input_not_found(tmp_path, rig):
    clip = write_clip(tmp_path / "short.mp4", (rig.rgb for _ in range(5)))
    with pytest.raises(InputNotFoundError):
        compute_video_metrics(clip, audio_path=tmp_path / "missing.wav")


# --------------------------------------------------------------------------- the pieces, on synthetic series

@pytest.mark.parametrize("lag_s", [-0.12, -0.06, 0.0, 0.08, 0.15])
def test_lipsync_lag_sign_and_size(speech, lag_s):
    wav, _ = speech
    env = audio_envelope(wav)
    times = np.arange(int(6.0 * FPS)) / FPS
    mouth = env.at(times - lag_s)  # a mouth lag_s behind the sound
    result = lipsync(times, mouth, env)
    assert result.r is not None and result.r > 0.99
    assert result.offset_ms == pytest.approx(lag_s * 1000, abs=5)


def test_lipsync_excludes_faceless_frames_and_handles_flat_series(speech):
    wav, _ = speech
    env = audio_envelope(wav)
    times = np.arange(150) / FPS
    mouth = env.at(times - 0.04)
    mouth[::3] = np.nan  # no face in every third frame
    assert lipsync(times, mouth, env).offset_ms == pytest.approx(40, abs=5)
    flat = lipsync(times, np.full(150, 0.5), env)
    assert flat.r == 0.0 and flat.offset_ms is None
    assert lipsync(times, np.full(150, np.nan), env).r is None


def _rotation(yaw: float, pitch: float, roll_deg: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll_deg])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    return rz @ ry @ rx


def test_head_angles_recover_known_rotations():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(21, 3)) * [40, 50, 20]
    truth = np.array([[0, 0, 0], [8, -3, 2], [-6, 4, -5], [2, 7, 9], [0, 0, 0]], dtype=float)
    # Each frame also moves and zooms: only rotation may show up.
    shapes = [(base @ _rotation(*a).T) * s + off
              for a, s, off in zip(truth, [1, 1.2, 0.9, 1.1, 1], [0, 30, -20, 5, 0], strict=True)]
    got = head_angles(np.stack(shapes))
    # The reference is the clip's median pose, so compare changes relative to frame 0.
    np.testing.assert_allclose(got - got[0], truth, atol=0.5)


def test_blink_events_hysteresis_and_gaps():
    ear = np.full(60, 0.35)
    ear[10:14] = [0.15, 0.25, 0.12, 0.3]   # jittery single blink: dips, rises below "open", dips again
    ear[30:33] = [0.1, np.nan, 0.1]        # face lost mid-blink: still one blink
    ear[58:] = 0.05                        # closed at the end of the clip: counts
    assert len(blink_events(ear)) == 3
    assert blink_events(np.full(10, np.nan)) == []
