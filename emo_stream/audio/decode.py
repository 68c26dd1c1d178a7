"""Decode any audio PyAV reads to mono float32 at a chosen rate, as a chunk iterator.

A two-hour file takes flat memory: the container is demuxed and resampled packet by
packet, and chunks of a fixed length are yielded as they fill.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from emo_stream.errors import CorruptAudioError, EmptyAudioError, NoAudioStreamError
from emo_stream.media_io import ffmpeg_reason, open_media

ENGINE_SAMPLE_RATE = 16_000
OUTPUT_SAMPLE_RATE = 48_000


@dataclass(frozen=True)
class AudioInfo:
    """What a file's first audio track holds, read from its headers."""

    duration_s: float | None
    sample_rate: int
    channels: int
    codec: str


def _open(path: str | Path) -> av.container.InputContainer:
    return open_media(path, "audio", EmptyAudioError, CorruptAudioError)


def _audio_stream(container: av.container.InputContainer, path: str | Path) -> av.audio.stream.AudioStream:
    if not container.streams.audio:
        raise NoAudioStreamError(f"{Path(path).name} has no audio track")
    return container.streams.audio[0]


def probe_audio(path: str | Path) -> AudioInfo:
    """Read a file's audio headers without decoding samples.

    Raises:
        InputNotFoundError, CorruptAudioError, NoAudioStreamError.
    """
    with _open(path) as container:
        stream = _audio_stream(container, path)
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        return AudioInfo(duration_s=duration, sample_rate=stream.codec_context.sample_rate or 0,
                         channels=stream.codec_context.channels or 0, codec=stream.codec_context.name)


def iter_audio(path: str | Path, sample_rate: int = ENGINE_SAMPLE_RATE,
               chunk_samples: int = ENGINE_SAMPLE_RATE) -> Iterator[np.ndarray]:
    """Yield mono float32 chunks of ``chunk_samples`` (the last one may be shorter).

    Args:
        path: any file PyAV reads: wav, mp3, flac, ogg/opus, m4a, or a video's audio track.
        sample_rate: output rate (16 kHz for the engine, 48 kHz for output).
        chunk_samples: samples per yielded chunk.

    Raises:
        InputNotFoundError: the path does not exist.
        NoAudioStreamError: the file has no audio track.
        CorruptAudioError: the file or its audio cannot be decoded.
        EmptyAudioError: the audio track holds no samples.
    """
    if chunk_samples <= 0:
        raise ValueError("chunk_samples must be positive")
    with _open(path) as container:
        stream = _audio_stream(container, path)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        pending: list[np.ndarray] = []
        pending_len = 0
        total = 0

        def resampled(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
            for out in frames:
                yield out.to_ndarray().reshape(-1).astype(np.float32, copy=False)

        try:
            decoded = (frame for packet in container.demux(stream) for frame in packet.decode())
            sources = (resampler.resample(frame) for frame in decoded)
            for frames in sources:
                for samples in resampled(frames):
                    pending.append(samples)
                    pending_len += len(samples)
                    while pending_len >= chunk_samples:
                        joined = np.concatenate(pending)
                        yield joined[:chunk_samples].copy()
                        total += chunk_samples
                        rest = joined[chunk_samples:]
                        pending, pending_len = ([rest], len(rest)) if len(rest) else ([], 0)
            for samples in resampled(resampler.resample(None)):
                pending.append(samples)
                pending_len += len(samples)
        except av.error.FFmpegError as exc:
            raise CorruptAudioError(f"cannot decode audio in {Path(path).name}: {ffmpeg_reason(exc)}") from None
        if pending_len:
            joined = np.concatenate(pending)
            while len(joined):
                yield joined[:chunk_samples].copy()
                total += min(chunk_samples, len(joined))
                joined = joined[chunk_samples:]
        if total == 0:
            raise EmptyAudioError(f"{Path(path).name} holds no audio samples")


def load_audio(path: str | Path, sample_rate: int = ENGINE_SAMPLE_RATE) -> np.ndarray:
    """The whole audio track as one mono float32 array (for short files; stream long ones)."""
    return np.concatenate(list(iter_audio(path, sample_rate=sample_rate, chunk_samples=sample_rate * 10)))
