"""Audio decoding: every container PyAV reads, any rate and layout, flat memory, typed errors."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest

from emo_stream import errors
from emo_stream.audio import iter_audio, load_audio, probe_audio
from tests import bad_inputs, media


def transcode(src: Path, dst: Path, codec: str, rate: int, layout: str = "mono", video: bool = False) -> Path:
    """Re-encode ``src`` with PyAV into ``dst`` (the container is taken from its suffix)."""
    samples = load_audio(src, sample_rate=rate)
    with av.open(str(dst), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        if video:  # every stream is added before the first packet is muxed
            vstream = out.add_stream("libx264", rate=25)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 64, "yuv420p"
            for _ in range(int(len(samples) / rate * 25)):
                frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
                out.mux(vstream.encode(frame))
            out.mux(vstream.encode(None))
        channels = 2 if layout == "stereo" else 1
        data = np.tile(samples[None, :], (channels, 1)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(data, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return dst


@pytest.fixture(scope="module")
def reference() -> tuple[Path, np.ndarray]:
    path = media.espeak_wav("weather")
    return path, load_audio(path)


def _envelope(x: np.ndarray, hop: int = 160) -> np.ndarray:
    n = len(x) // hop
    return np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(axis=1))


@pytest.mark.parametrize(
    ("name", "codec", "rate", "layout", "video"),
    [
        ("a.wav", "pcm_s16le", 44_100, "stereo", False),
        ("a.mp3", "libmp3lame", 44_100, "stereo", False),
        ("a.flac", "flac", 48_000, "mono", False),
        ("a.ogg", "libopus", 48_000, "stereo", False),
        ("a.m4a", "aac", 22_050, "mono", False),
        ("a.mp4", "aac", 48_000, "stereo", True),
    ],
)
def test_formats_decode_to_16k_mono(name, codec, rate, layout, video, reference, tmp_path):
    src, ref = reference
    path = transcode(src, tmp_path / name, codec, rate, layout, video)
    got = load_audio(path)
    assert got.dtype == np.float32 and got.ndim == 1
    # Same duration within codec padding (≤ 60 ms) and the same loudness contour.
    assert abs(len(got) - len(ref)) < 0.06 * 16_000
    a, b = _envelope(ref), _envelope(got)
    n = min(len(a), len(b))
    lag = int(np.argmax([np.dot(a[: n - 10], b[k : k + n - 10]) for k in range(10)]))
    r = np.corrcoef(a[: n - 10], b[lag : lag + n - 10])[0, 1]
    assert r > 0.95, (name, r)


def test_48k_output_and_probe(reference):
    src, ref = reference
    out = load_audio(src, sample_rate=48_000)
    assert abs(len(out) - 3 * len(ref)) <= 3 * 32
    info = probe_audio(src)
    assert info.sample_rate == 22_050 and info.channels == 1 and info.duration_s == pytest.approx(len(ref) / 16_000, abs=0.01)


def test_chunks_have_fixed_length_and_join_to_the_whole(reference):
    src, ref = reference
    chunks = list(iter_audio(src, chunk_samples=640))
    assert all(len(c) == 640 for c in chunks[:-1]) and 0 < len(chunks[-1]) <= 640
    assert np.array_equal(np.concatenate(chunks), ref)


def test_long_file_streams_in_flat_memory(tmp_path):
    # 10 minutes of 16 kHz audio would be 38 MB as float32; streaming holds a few chunks.
    long_flac = media.sox("long-tone.flac", "-q", "-n", "-r", "16000", "-c", "1", "{out}",
                          "synth", "600", "sine", "300", "vol", "0.3")
    tracemalloc.start()
    total = 0
    for chunk in iter_audio(long_flac, chunk_samples=16_000):
        total += len(chunk)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert total == 600 * 16_000
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MB"


@pytest.mark.parametrize(
    ("builder", "error"),
    [
        (bad_inputs.empty_wav, errors.EmptyAudioError),
        (bad_inputs.garbage_wav, errors.CorruptAudioError),
        (bad_inputs.silent_video_mp4, errors.NoAudioStreamError),
        (bad_inputs.text_file, errors.AudioError),  # read as some text format with no audio
        (lambda tmp: tmp / "missing.wav", errors.InputNotFoundError),
    ],
)
def test_bad_audio_raises_typed_errors(builder, error, tmp_path):
    with pytest.raises(error):
        load_audio(builder(tmp_path))
