"""What a session yields: the returned video and voice with their media times, and the server's events."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import av
import numpy as np


@dataclass
class VideoFrame:
    """One returned picture.

    Attributes:
        frame: the decoded frame (PyAV); ``rgb`` converts it once, on first use.
        media_time: seconds on the video track's own clock (from the RTP timestamps; 0 at the first frame).
        arrived: ``time.monotonic()`` when it was decoded.
    """

    frame: av.VideoFrame = field(repr=False)
    media_time: float
    arrived: float

    @cached_property
    def rgb(self) -> np.ndarray:
        """The picture as an (height, width, 3) uint8 array."""
        return self.frame.to_ndarray(format="rgb24")

    @property
    def size(self) -> tuple[int, int]:
        return self.frame.width, self.frame.height


@dataclass
class AudioFrame:
    """One returned packet of the voice (20 ms), on the same clock as the video.

    Attributes:
        pcm: signed 16-bit samples, shape (samples, channels).
        sample_rate: samples a second (48000 over WebRTC).
        media_time: seconds on the audio track's own clock (0 at the first packet).
        arrived: ``time.monotonic()`` when it was decoded.
    """

    pcm: np.ndarray = field(repr=False)
    sample_rate: int
    media_time: float
    arrived: float

    @property
    def channels(self) -> int:
        return int(self.pcm.shape[1])

    @property
    def duration_s(self) -> float:
        return len(self.pcm) / self.sample_rate

    @property
    def peak(self) -> int:
        """The largest absolute sample (0 for silence; 32767 at full scale)."""
        return int(np.abs(self.pcm.astype(np.int32)).max(initial=0))

    def mono(self) -> np.ndarray:
        """The samples as mono float32 in -1..1."""
        return self.pcm.astype(np.float32).mean(axis=1) / 32768.0

    @classmethod
    def from_av(cls, frame: av.AudioFrame, media_time: float, arrived: float) -> AudioFrame:
        channels = len(frame.layout.channels)
        samples = frame.to_ndarray()
        if samples.dtype != np.int16:  # opus decodes to s16; anything else is scaled to it
            samples = np.clip(samples.astype(np.float32) * 32767, -32768, 32767).astype(np.int16)
        # packed formats give (1, samples * channels), planar ones (channels, samples)
        pcm = samples.reshape(-1, channels) if samples.shape[0] == 1 else samples.T
        return cls(pcm=np.ascontiguousarray(pcm), sample_rate=frame.sample_rate, media_time=media_time,
                   arrived=arrived)


class VoiceResampler:
    """The returned voice (48 kHz over WebRTC) as signed 16-bit PCM at another rate and channel count, packet by
    packet with one resampler, so no packet boundary clicks."""

    def __init__(self, rate: int, channels: int = 1) -> None:
        self.rate = rate
        self.channels = channels
        self._resampler = av.AudioResampler(format="s16", layout="mono" if channels == 1 else "stereo", rate=rate)

    def __call__(self, frame: AudioFrame) -> bytes:
        """Interleaved s16 bytes (possibly empty: the resampler keeps a few samples for the next packet)."""
        packet = av.AudioFrame.from_ndarray(np.ascontiguousarray(frame.pcm).reshape(1, -1), format="s16",
                                            layout="stereo" if frame.channels == 2 else "mono")
        packet.sample_rate = frame.sample_rate
        return b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(packet))


@dataclass(frozen=True)
class SessionEvent:
    """A message of the session's events socket (docs/api.md): ``state``, ``stats`` or ``closed``.

    Attributes:
        type: the message's ``type``.
        data: the whole message.
        arrived: ``time.monotonic()`` when it came.
    """

    type: str
    data: dict[str, Any]
    arrived: float
