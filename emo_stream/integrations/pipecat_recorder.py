"""A pipecat sink that records what an output transport would play, as an MP4 (for examples, tests, benchmarks).

It stands where ``transport.output()`` goes and plays by the same rules: audio frames queue and play back to back
at real time from when they arrive; an image with ``sync_with_audio`` shows once the audio before it has played,
any other image when it arrives; an ``InterruptionFrame`` drops the audio not yet played. ``write`` puts both on
that timeline in an MP4 (``emo_stream.client.recording``), which ``emo-stream metrics`` scores for lip-sync.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pipecat.frames.frames import Frame, InterruptionFrame, OutputAudioRawFrame, OutputImageRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from emo_stream.client.recording import PlayedMedia, write_mp4


@dataclass
class Played(PlayedMedia):
    """What the sink played, and when each picture and audio frame reached it."""

    image_arrivals: list[float] = field(default_factory=list)
    received_audio: list[tuple[float, np.ndarray]] = field(default_factory=list)  # (reached the sink, pcm)
    interrupted_at: list[float] = field(default_factory=list)


class Mp4RecorderSink(FrameProcessor):
    """Records the images and audio that reach it as an output transport would play them; passes every frame on."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.played = Played()
        self._audio_end = 0.0  # when the queued audio will have played

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        now = time.monotonic()
        played = self.played
        if isinstance(frame, OutputImageRawFrame) and frame.format == "RGB":
            width, height = frame.size
            rgb = np.frombuffer(frame.image, np.uint8).reshape(height, width, 3)
            shown = max(now, self._audio_end) if getattr(frame, "sync_with_audio", False) else now
            played.images.append((shown, rgb))
            played.image_arrivals.append(now)
        elif isinstance(frame, OutputAudioRawFrame):
            pcm = np.frombuffer(frame.audio, "<i2").reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
            if played.sample_rate and frame.sample_rate != played.sample_rate:
                raise ValueError(f"audio at {frame.sample_rate} Hz after {played.sample_rate} Hz")
            played.sample_rate = frame.sample_rate
            start = max(now, self._audio_end)
            played.audio.append((start, pcm))
            played.received_audio.append((now, pcm))
            self._audio_end = start + len(pcm) / frame.sample_rate
        elif isinstance(frame, InterruptionFrame):
            played.interrupted_at.append(now)
            if self._audio_end > now:  # what was queued and not yet played is dropped, pictures waiting on it too
                rate = played.sample_rate
                played.audio = [(t, pcm[: max(0, int((now - t) * rate))]) for t, pcm in played.audio if t < now]
                kept = [i for i, (shown, _) in enumerate(played.images) if shown <= now]
                played.images = [played.images[i] for i in kept]
                played.image_arrivals = [played.image_arrivals[i] for i in kept]
                self._audio_end = now
        await self.push_frame(frame, direction)

    def write(self, path: str | Path, fps: int = 25) -> Path:
        """What was played as an MP4 (``write_mp4``)."""
        return write_mp4(self.played, path, fps)
