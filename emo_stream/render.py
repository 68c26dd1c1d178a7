"""Offline render: portrait + audio file -> MP4 (H.264 + AAC), streaming, with flat memory.

Audio is decoded twice in lockstep: at 16 kHz for the animator and at 48 kHz for the file's
own audio track. Frame ``n`` shows the audio at ``n / fps``. The file is written under a
temporary name and renamed at the end, so bad input, Ctrl-C or a crash leave no partial output.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from emo_stream.animators import create_animator
from emo_stream.audio.decode import OUTPUT_SAMPLE_RATE, iter_audio, probe_audio
from emo_stream.avatar import AvatarLimits, prepare_avatar
from emo_stream.errors import ConfigError, OutputError
from emo_stream.streaming import AudioWindowBuffer, samples_per_frame
from emo_stream.types import Frame

ENGINE_RATE = 16_000
OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv")
BACKGROUND_RE = re.compile(r"^(original|green|transparent|#[0-9a-fA-F]{6})$")


@dataclass(frozen=True)
class RenderOptions:
    size: int = 512
    fps: int = 25
    backend: str = "lite"
    seed: int = 0
    motion: float = 1.0
    background: str = "original"
    checkpoint: Path | None = None
    crf: int = 20

    def validate(self) -> None:
        if not (64 <= self.size <= 2048 and self.size % 2 == 0):
            raise ConfigError(f"--size must be an even number of pixels in 64..2048, got {self.size}")
        if self.fps not in (10, 16, 20, 25, 40, 50) and ENGINE_RATE % self.fps:
            raise ConfigError(f"--fps must divide 16000 (e.g. 25, 20, 40, 50), got {self.fps}")
        if not 0.0 <= self.motion <= 3.0:
            raise ConfigError(f"--motion must be in 0..3, got {self.motion}")
        if not BACKGROUND_RE.match(self.background):
            raise ConfigError(f"--background must be original, green or #rrggbb, got {self.background!r}")


@dataclass(frozen=True)
class RenderSummary:
    output: str
    frames: int
    fps: int
    duration_s: float
    audio_duration_s: float
    render_s: float
    backend: str
    size: int

    def to_dict(self) -> dict:
        return asdict(self)


def check_output_path(output: Path) -> None:
    """Refuse an output we cannot write before doing any work."""
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise OutputError(f"output must end in {', '.join(OUTPUT_SUFFIXES)}: {output}")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    if output.is_dir():
        raise OutputError(f"output is a folder: {output}")



class _AudioTrack:
    """Feeds the 48 kHz audio to the AAC encoder in one-frame slices, pts from 0 (the muxer
    then trims the encoder's priming samples, PLATFORM.md)."""

    def __init__(self, container: av.container.OutputContainer, audio: Path, fps: int) -> None:
        self.stream = container.add_stream("aac", rate=OUTPUT_SAMPLE_RATE, layout="mono")
        self.stream.bit_rate = 96_000
        self._source = iter_audio(audio, sample_rate=OUTPUT_SAMPLE_RATE,
                                  chunk_samples=samples_per_frame(OUTPUT_SAMPLE_RATE, fps))
        self._pts = 0

    def encode_next(self, container: av.container.OutputContainer) -> bool:
        samples = next(self._source, None)
        if samples is None:
            return False
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="flt", layout="mono")
        frame.sample_rate = OUTPUT_SAMPLE_RATE
        frame.pts = self._pts
        frame.time_base = Fraction(1, OUTPUT_SAMPLE_RATE)
        self._pts += len(samples)
        container.mux(self.stream.encode(frame))
        return True

    def finish(self, container: av.container.OutputContainer) -> None:
        while self.encode_next(container):
            pass
        container.mux(self.stream.encode(None))


def _progress(total: int | None, enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="render", leave=False, dynamic_ncols=True)


def render_file(image: str | Path, audio: str | Path, output: str | Path,
                options: RenderOptions | None = None, progress: bool = False,
                limits: AvatarLimits | None = None) -> RenderSummary:
    """Render ``image`` speaking/singing ``audio`` into ``output``.

    Raises:
        EmoStreamError subclasses for bad image, audio, options or output; nothing is written then.
    """
    started = time.perf_counter()
    options = options or RenderOptions()
    options.validate()
    output = Path(output)
    check_output_path(output)
    audio = Path(audio)
    info = probe_audio(audio)  # typed errors for a missing or unreadable file, before any work
    animator = create_animator(options.backend, size=options.size, fps=options.fps, motion=options.motion,
                               checkpoint=str(options.checkpoint) if options.checkpoint else None)
    avatar = prepare_avatar(image, size=options.size, limits=limits)
    state = animator.prepare(avatar, seed=options.seed)
    expected_frames = math.ceil(info.duration_s * options.fps) if info.duration_s else None

    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=output.suffix, dir=output.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    frames = 0
    try:
        with av.open(str(tmp), "w") as container, _progress(expected_frames, progress) as bar:
            video = container.add_stream("libx264", rate=options.fps)
            video.width = video.height = options.size
            video.pix_fmt = "yuv420p"
            video.options = {"crf": str(options.crf), "preset": "veryfast", "tune": "animation"}
            track = _AudioTrack(container, audio, options.fps)
            buffer = AudioWindowBuffer(ENGINE_RATE, options.fps)

            def write(out: list[Frame]) -> None:
                nonlocal frames
                for frame in out:
                    vf = av.VideoFrame.from_ndarray(frame.rgb, format="rgb24")
                    vf.pts = frames
                    vf.time_base = Fraction(1, options.fps)
                    container.mux(video.encode(vf))
                    track.encode_next(container)
                    frames += 1
                    if bar is not None:
                        bar.update(1)

            spf = samples_per_frame(ENGINE_RATE, options.fps)
            for chunk in iter_audio(audio, sample_rate=ENGINE_RATE, chunk_samples=spf * 25):
                for window in buffer.push(chunk):
                    write(animator.feed(window, state))
            for window in buffer.flush():
                write(animator.feed(window, state))
            write(animator.flush(state))
            container.mux(video.encode(None))
            track.finish(container)
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    samples = frames * spf
    return RenderSummary(output=str(output), frames=frames, fps=options.fps, duration_s=frames / options.fps,
                         audio_duration_s=info.duration_s or samples / ENGINE_RATE,
                         render_s=time.perf_counter() - started, backend=options.backend, size=options.size)
