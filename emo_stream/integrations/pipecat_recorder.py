"""A pipecat sink that records what an output transport would play, as an MP4 (for examples, tests, benchmarks).

It stands where ``transport.output()`` goes and plays by the same rules: audio frames queue and play back to back
at real time from when they arrive; an image with ``sync_with_audio`` shows once the audio before it has played,
any other image when it arrives; an ``InterruptionFrame`` drops the audio not yet played. ``write`` puts both on that timeline in an MP4 (H.264 at 25 fps, AAC), which
``emo-stream metrics`` scores for lip-sync.
"""

from __future__ import annotations

import fractions
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from pipecat.frames.frames import Frame, InterruptionFrame, OutputAudioRawFrame, OutputImageRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


@dataclass
class Played:
    """What the sink played: images (shown at, RGB) and audio (starts at, mono int16) on the monotonic clock."""

    images: list[tuple[float, np.ndarray]] = field(default_factory=list)
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)
    image_arrivals: list[float] = field(default_factory=list)
    received_audio: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (reached the sink, pcm)
    interrupted_at: list[float] = field(default_factory=list)
    sample_rate: int = 0


class Mp4RecorderSink(FrameProcessor):
    """Records the images and audio that reach it as an output transport would play them; passes every frame on."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.played = Played()
        self._audio_end = 0.0  # when the queued audio will have played

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        now = time.monotonic()
        if isinstance(frame, OutputImageRawFrame) and frame.format == "RGB":
            width, height = frame.size
            rgb = np.frombuffer(frame.image, np.uint8).reshape(height, width, 3)
            shown = max(now, self._audio_end) if getattr(frame, "sync_with_audio", False) else now
            self.played.images.append((shown, rgb))
            self.played.image_arrivals.append(now)
        elif isinstance(frame, OutputAudioRawFrame):
            pcm = np.frombuffer(frame.audio, "<i2").reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
            if self.played.sample_rate and frame.sample_rate != self.played.sample_rate:
                raise ValueError(f"audio at {frame.sample_rate} Hz after {self.played.sample_rate} Hz")
            self.played.sample_rate = frame.sample_rate
            start = max(now, self._audio_end)
            self.played.audio.append((start, pcm))
            self.played.received_audio.append((now, pcm))
            self._audio_end = start + len(pcm) / frame.sample_rate
        elif isinstance(frame, InterruptionFrame) and self._audio_end > now:
            rate = self.played.sample_rate
            self.played.audio = [(t, pcm[: max(0, int((now - t) * rate))]) for t, pcm in self.played.audio if t < now]
            self.played.interrupted_at.append(now)
            self._audio_end = now
        await self.push_frame(frame, direction)

    def write(self, path: str | Path, fps: int = 25) -> Path:
        """The played images and audio as an MP4 on the played timeline (silence where nothing played).

        Raises:
            ValueError: nothing was shown.
        """
        images, audio = self.played.images, self.played.audio
        if not images:
            raise ValueError("the sink showed no image")
        rate = self.played.sample_rate or 48_000
        t0 = min([images[0][0]] + [t for t, _ in audio[:1]])
        end = max(images[-1][0] + 1 / fps, *(t + len(pcm) / rate for t, pcm in audio[-1:]))
        samples = np.zeros(int((end - t0) * rate) + 1, np.int16)
        for start, pcm in audio:
            i = int(round((start - t0) * rate))
            samples[i: i + len(pcm)] = pcm[: len(samples) - i]
        height, width = images[0][1].shape[:2]
        path = Path(path)
        with av.open(str(path), "w") as out:
            video = out.add_stream("libx264", rate=fps)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.options = {"crf": "18", "preset": "veryfast"}
            sound = out.add_stream("aac", rate=rate, layout="mono")
            j = 0
            for i in range(int((end - t0) * fps)):
                t = t0 + i / fps
                while j + 1 < len(images) and images[j + 1][0] <= t:
                    j += 1
                frame = av.VideoFrame.from_ndarray(images[j][1], format="rgb24")
                frame.pts, frame.time_base = i, fractions.Fraction(1, fps)
                out.mux(video.encode(frame))
            out.mux(video.encode(None))
            chunk = av.AudioFrame.from_ndarray(samples[None, :], format="s16", layout="mono")
            chunk.sample_rate, chunk.pts, chunk.time_base = rate, 0, fractions.Fraction(1, rate)
            out.mux(sound.encode(chunk))
            out.mux(sound.encode(None))
        return path
