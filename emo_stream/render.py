"""Offline render: portrait + audio file -> MP4 (H.264 + AAC), streaming, with flat memory.

Audio is decoded twice in lockstep: at 16 kHz for the animator and at 48 kHz for the file's
own audio track. Frame ``n`` shows the audio at ``n / fps``. The file is written under a
temporary name and renamed at the end, so bad input, Ctrl-C or a crash leave no partial output.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import signal
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from emo_stream.animators import Animator, create_animator
from emo_stream.audio.decode import OUTPUT_SAMPLE_RATE, iter_audio, probe_audio
from emo_stream.avatar import AvatarLimits, prepare_avatar
from emo_stream.compositing import Background, composite, parse_background, rgba
from emo_stream.config import LITE_MOTIONS
from emo_stream.errors import ConfigError, OutputError
from emo_stream.streaming import AudioWindowBuffer, samples_per_frame

ENGINE_RATE = 16_000
OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv")
ALPHA_SUFFIXES = (".mov", ".webm")  # ProRes 4444 in MOV, VP9 with alpha in WebM


@dataclass(frozen=True)
class RenderOptions:
    size: int = 512
    fps: int = 25
    backend: str = "lite"
    seed: int = 0
    motion: float = 1.0
    lite_motion: str = "learned"
    background: str = "original"
    checkpoint: Path | None = None
    crf: int = 20
    alpha: bool = False

    def validate(self) -> None:
        if not (64 <= self.size <= 2048 and self.size % 2 == 0):
            raise ConfigError(f"--size must be an even number of pixels in 64..2048, got {self.size}")
        if self.fps not in (10, 16, 20, 25, 40, 50) and ENGINE_RATE % self.fps:
            raise ConfigError(f"--fps must divide 16000 (e.g. 25, 20, 40, 50), got {self.fps}")
        if not 0.0 <= self.motion <= 3.0:
            raise ConfigError(f"--motion must be in 0..3, got {self.motion}")
        if self.lite_motion not in LITE_MOTIONS:
            raise ConfigError(f"--lite-motion must be one of {', '.join(LITE_MOTIONS)}, got {self.lite_motion!r}")
        background = parse_background(self.background)
        if background.kind == "transparent" and not self.alpha:
            raise ConfigError("--background transparent needs --alpha (ProRes 4444 .mov or VP9 .webm)")
        if self.alpha and background.kind == "colour":
            raise ConfigError("--alpha keeps the background transparent: leave --background out (or original)")


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


def check_output_path(output: Path, alpha: bool = False) -> None:
    """Refuse an output we cannot write before doing any work."""
    suffixes = ALPHA_SUFFIXES if alpha else OUTPUT_SUFFIXES
    if output.suffix.lower() not in suffixes:
        what = "with --alpha, output" if alpha else "output"
        raise OutputError(f"{what} must end in {', '.join(suffixes)}: {output}")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    if output.is_dir():
        raise OutputError(f"output is a folder: {output}")



class _AudioTrack:
    """Feeds the 48 kHz audio to the AAC encoder in one-frame slices, pts from 0 (the muxer
    then trims the encoder's priming samples, docs/platform.md)."""

    def __init__(self, container: av.container.OutputContainer, audio: Path, fps: int, codec: str = "aac") -> None:
        stream = container.add_stream(codec, rate=OUTPUT_SAMPLE_RATE, layout="mono")
        if not isinstance(stream, av.audio.stream.AudioStream):
            raise ValueError(f"{codec} is not an audio codec")
        self.stream = stream
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


_END = object()


def _video_stream(container: av.container.OutputContainer, output: Path, options: RenderOptions):
    """(stream, input pixel format, audio codec) for the output: H.264 + AAC, or with ``alpha``
    ProRes 4444 + AAC in MOV or VP9 with alpha + Opus in WebM."""
    if not options.alpha:
        video = container.add_stream("libx264", rate=options.fps)
        video.width = video.height = options.size
        video.pix_fmt = "yuv420p"
        video.options = {"crf": str(options.crf), "preset": "veryfast", "tune": "animation"}
        return video, "rgb24", "aac"
    if output.suffix.lower() == ".webm":
        video = container.add_stream("libvpx-vp9", rate=options.fps)
        video.width = video.height = options.size
        video.pix_fmt = "yuva420p"
        video.options = {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}
        return video, "rgba", "libopus"
    video = container.add_stream("prores_ks", rate=options.fps)
    video.width = video.height = options.size
    video.pix_fmt = "yuva444p10le"
    video.options = {"profile": "4", "vendor": "apl0"}  # profile 4 = ProRes 4444
    return video, "rgba", "aac"


def _animate_into(animator: Animator, state: Any, audio: Path, fps: int, background: Background, alpha: bool,
                  out: queue.Queue, stop: threading.Event) -> None:
    """Decode at 16 kHz, animate and composite; hand each picture (or the error) to ``out``."""

    def picture(frame):
        return rgba(frame) if alpha else composite(frame, background)

    def put(item) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    try:
        buffer = AudioWindowBuffer(ENGINE_RATE, fps)
        spf = samples_per_frame(ENGINE_RATE, fps)
        if animator.renders_whole_video:
            # Offline emo: the whole file at once, as the checkpoint's source renders it (EchoMimic's context
            # windows; the whole file's audio features for every checkpoint). 16 kHz float: 3.8 MB a minute.
            chunks = list(iter_audio(audio, sample_rate=ENGINE_RATE, chunk_samples=spf * 25))
            wave = np.concatenate(chunks) if chunks else np.zeros(spf, np.float32)
            for frame in animator.whole_video(state, wave):
                put(picture(frame))
                if stop.is_set():
                    return
            put(_END)
            return
        for chunk in iter_audio(audio, sample_rate=ENGINE_RATE, chunk_samples=spf * 25):
            for window in buffer.push(chunk):
                for frame in animator.feed(window, state):
                    put(picture(frame))
                if stop.is_set():
                    return
        for window in buffer.flush():
            for frame in animator.feed(window, state):
                put(picture(frame))
        for frame in animator.flush(state):
            put(picture(frame))
        put(_END)
    except BaseException as exc:  # handed to the encoding thread, which raises it
        put(exc)


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
    background = parse_background(options.background)
    output = Path(output)
    check_output_path(output, options.alpha)
    audio = Path(audio)
    info = probe_audio(audio)  # typed errors for a missing or unreadable file, before any work
    # Offline, the emo backend uses the full VAE decoder and never trades quality for time.
    offline: dict[str, Any] = {"decoder": "vae", "realtime": False} if options.backend == "emo" else {}
    animator = create_animator(options.backend, size=options.size, fps=options.fps, motion=options.motion,
                               lite_motion=options.lite_motion, checkpoint=str(options.checkpoint) if options.checkpoint else None, **offline)
    avatar = prepare_avatar(image, size=options.size, limits=limits)
    state = animator.prepare(avatar, seed=options.seed)
    expected_frames = math.ceil(info.duration_s * options.fps) if info.duration_s else None

    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=output.suffix, dir=output.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    frames = 0
    try:
        with (av.open(str(tmp), "w") as container, _progress(expected_frames, progress) as bar,
              _ctrl_c_as_flag() as interrupted):
            video, pixel_format, audio_codec = _video_stream(container, output, options)
            track = _AudioTrack(container, audio, options.fps, audio_codec)
            frames_out: queue.Queue = queue.Queue(maxsize=16)
            stop = threading.Event()
            # Animation runs on its own thread while this one encodes: numpy, OpenCV and the
            # codecs release the GIL, so the two stages share the machine's cores.
            producer = threading.Thread(target=_animate_into, name="render-animate", daemon=True,
                                        args=(animator, state, audio, options.fps, background, options.alpha,
                                              frames_out, stop))
            producer.start()
            try:
                while True:
                    if interrupted.is_set():
                        raise KeyboardInterrupt
                    try:
                        item = frames_out.get(timeout=0.2)
                    except queue.Empty:
                        continue
                    if item is _END:
                        break
                    if isinstance(item, BaseException):
                        raise item
                    vf = av.VideoFrame.from_ndarray(item, format=pixel_format)
                    vf.pts = frames
                    vf.time_base = Fraction(1, options.fps)
                    container.mux(video.encode(vf))
                    track.encode_next(container)
                    frames += 1
                    if bar is not None:
                        bar.update(1)
            finally:
                stop.set()
                producer.join(timeout=5)
            container.mux(video.encode(None))
            track.finish(container)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    samples = frames * samples_per_frame(ENGINE_RATE, options.fps)
    return RenderSummary(output=str(output), frames=frames, fps=options.fps, duration_s=frames / options.fps,
                         audio_duration_s=info.duration_s or samples / ENGINE_RATE,
                         render_s=time.perf_counter() - started, backend=options.backend, size=options.size)


@contextlib.contextmanager
def _ctrl_c_as_flag():
    """While frames encode, Ctrl-C sets a flag the loop checks every frame instead of raising where it lands: a
    KeyboardInterrupt raised inside a codec's callback can be swallowed there, and the render then ran to the
    end and exited 0 (seen once in CI). Off the main thread (no signal handlers there) the flag never sets."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
