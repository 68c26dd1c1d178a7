"""`emo-stream render` and `emo-stream metrics` as a user runs them: real files, exit codes,
one-line errors, no partial output, and an MP4 whose audio and video line up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from emo_stream.audio import load_audio
from tests import bad_inputs, media

ENV = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emo_stream", *args], capture_output=True, text=True,
                          cwd=media.REPO, env=ENV, timeout=timeout)


@pytest.fixture(scope="module")
def portrait() -> Path:
    return media.save_png(media.astronaut(), "astronaut.png")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, portrait):
    out = tmp_path_factory.mktemp("cli") / "hello.mp4"
    audio = media.silence_then_speech("hello")
    result = cli("render", "--image", str(portrait), "--audio", str(audio), "-o", str(out), "--size", "256", "--json")
    assert result.returncode == 0, result.stderr
    return out, audio, json.loads(result.stdout)


def test_render_json_summary(rendered):
    out, audio, summary = rendered
    assert summary["frames"] == -(-len(load_audio(audio)) // 640)
    assert summary["size"] == 256 and summary["backend"] == "lite" and summary["render_s"] > 0
    assert out.stat().st_size > 10_000


def test_mp4_duration_and_audio_alignment(rendered):
    out, audio, _ = rendered
    source = load_audio(audio)
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        assert video.codec_context.name == "h264" and video.width == 256
        frames = [f for f in container.decode(video=0)]
    with av.open(str(out)) as container:
        chunks = []
        first_audio_pts = None
        for frame in container.decode(audio=0):
            if first_audio_pts is None:
                first_audio_pts = float(frame.pts * frame.time_base)
            chunks.append(frame.to_ndarray().mean(axis=0))
        decoded = np.concatenate(chunks)
        rate = container.streams.audio[0].rate
    video_s = len(frames) / 25
    audio_s = len(source) / 16_000
    assert abs(video_s - audio_s) <= 1 / 25
    assert abs(float(frames[0].pts * frames[0].time_base)) < 1e-6
    assert abs(first_audio_pts) < 1e-3  # the muxer trimmed the encoder's priming samples
    # The track's audio is the input's, with no offset: envelopes line up at lag 0 (±5 ms).
    ref = load_audio(audio, sample_rate=rate)
    hop = rate // 200
    n = min(len(ref), len(decoded)) // hop
    env_ref = np.sqrt((ref[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    env_out = np.sqrt((decoded[: n * hop].reshape(n, hop) ** 2).mean(axis=1))
    lags = range(-10, 11)
    scores = [np.corrcoef(env_ref[20 + k: n - 20 + k], env_out[20: n - 20])[0, 1] for k in lags]
    assert list(lags)[int(np.argmax(scores))] in (-1, 0, 1), scores
    assert max(scores) > 0.95


def test_metrics_cli_prints_json(rendered):
    out, _, _ = rendered
    result = cli("metrics", str(out), "--compact")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in ("duration_s", "fps", "face_found", "mouth_open_range", "lipsync_r", "av_offset_ms",
                "blinks_per_min", "head_yaw_std_deg", "head_pitch_std_deg", "head_roll_std_deg"):
        assert key in data
    # The learned lite mouth follows loudness as real mouths do, looser than a puppet (tests/test_lite.py).
    assert data["lipsync_r"] >= 0.2 and data["face_found"] > 0.95


def _assert_one_line_error(result: subprocess.CompletedProcess, words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and words in lines[0].lower(), lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("text_image", "not an image"),
        ("truncated_jpeg", "truncated"),
        ("one_pixel", "1×1"),
        ("huge_image", "mp"),
        ("png_bomb", "limit"),
        ("no_face", "no face"),
        ("tiny_face", "px across"),
        ("empty_wav", "no audio"),
        ("garbage_wav", "cannot read audio"),
        ("video_without_audio", "no audio track"),
        ("missing_image", "not found"),
        ("missing_audio", "not found"),
        ("unwritable_output", "folder"),
        ("unknown_backend", "unknown backend"),
        ("bad_background", "background"),
        ("emo_without_checkpoint", "checkpoint"),
    ],
)
def test_render_bad_input(case, words, tmp_path, portrait):
    speech = media.espeak_wav("hello")
    image, audio, out, extra = portrait, speech, tmp_path / "out.mp4", []
    builders = {
        "text_image": ("image", bad_inputs.text_file), "truncated_jpeg": ("image", bad_inputs.truncated_jpeg),
        "one_pixel": ("image", bad_inputs.one_pixel_png), "huge_image": ("image", bad_inputs.huge_jpeg),
        "png_bomb": ("image", bad_inputs.png_bomb), "no_face": ("image", bad_inputs.no_face_png),
        "tiny_face": ("image", bad_inputs.tiny_face_png), "empty_wav": ("audio", bad_inputs.empty_wav),
        "garbage_wav": ("audio", bad_inputs.garbage_wav), "video_without_audio": ("audio", bad_inputs.silent_video_mp4),
    }
    if case in builders:
        which, build = builders[case]
        if which == "image":
            image = build(tmp_path)
        else:
            audio = build(tmp_path)
    elif case == "missing_image":
        image = tmp_path / "nope.jpg"
    elif case == "missing_audio":
        audio = tmp_path / "nope.wav"
    elif case == "unwritable_output":
        out = tmp_path / "no" / "such" / "folder" / "out.mp4"
    elif case == "unknown_backend":
        extra = ["--backend", "magic"]
    elif case == "bad_background":
        extra = ["--background", "plaid"]
    elif case == "emo_without_checkpoint":
        extra = ["--backend", "emo"]
    result = cli("render", "--image", str(image), "--audio", str(audio), "-o", str(out), "--size", "128", *extra)
    _assert_one_line_error(result, words)
    assert not out.exists()
    assert not list(out.parent.glob(".out.*")) if out.parent.exists() else True  # no temporary left


def test_metrics_bad_input(tmp_path):
    _assert_one_line_error(cli("metrics", str(tmp_path / "missing.mp4")), "not found")
    _assert_one_line_error(cli("metrics", str(bad_inputs.text_file(tmp_path))), "")


def test_interrupted_render_leaves_no_output(tmp_path, portrait):
    """Ctrl-C mid-render: the partial file is removed."""
    import signal
    import time

    long_wav = media.sox("long-speech.wav", "-q", str(media.espeak_wav("story")), str(media.espeak_wav("weather")),
                         str(media.espeak_wav("story")), str(media.espeak_wav("weather")), "-r", "16000", "{out}")
    out = tmp_path / "cut.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "emo_stream", "render", "--image", str(portrait), "--audio",
                             str(long_wav), "-o", str(out), "--size", "512"], cwd=media.REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".cut.*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".cut.*"))


def test_render_backgrounds_and_alpha(tmp_path, portrait):
    speech = media.espeak_wav("hello")
    green = tmp_path / "green.mp4"
    result = cli("render", "--image", str(portrait), "--audio", str(speech), "-o", str(green), "--size", "128",
                 "--background", "green")
    assert result.returncode == 0, result.stderr
    with av.open(str(green)) as c:
        frame = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert np.abs(frame[3, 3] - (0, 177, 64)).max() < 25

    overlay = tmp_path / "overlay.mov"
    result = cli("render", "--image", str(portrait), "--audio", str(speech), "-o", str(overlay), "--size", "128",
                 "--alpha")
    assert result.returncode == 0, result.stderr
    with av.open(str(overlay)) as c:
        assert c.streams.video[0].codec_context.name == "prores"
        rgba = next(c.decode(video=0)).to_ndarray(format="rgba")
    assert rgba[2, 2, 3] < 20 and rgba[64, 64, 3] > 235  # clear background, opaque face

    webm = tmp_path / "overlay.webm"
    result = cli("render", "--image", str(portrait), "--audio", str(speech), "-o", str(webm), "--size", "128",
                 "--alpha")
    assert result.returncode == 0, result.stderr
    with av.open(str(webm)) as c:
        assert c.streams.video[0].metadata.get("alpha_mode") == "1"

    _assert_one_line_error(cli("render", "--image", str(portrait), "--audio", str(speech), "-o",
                               str(tmp_path / "x.mp4"), "--alpha"), "--alpha")
    _assert_one_line_error(cli("render", "--image", str(portrait), "--audio", str(speech), "-o",
                               str(tmp_path / "y.mp4"), "--background", "transparent"), "--alpha")
