"""What a player played, on one clock, written as an MP4 that ``emo-stream metrics`` can score."""

from __future__ import annotations

import fractions
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np


@dataclass
class PlayedMedia:
    """Pictures (shown at, RGB) and audio (starts at, mono int16 at ``sample_rate``) on the monotonic clock."""

    images: list[tuple[float, np.ndarray]] = field(default_factory=list)
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)
    sample_rate: int = 0


def write_mp4(played: PlayedMedia, path: str | Path, fps: int = 25) -> Path:
    """The played pictures and audio as an MP4 on the played timeline (H.264, AAC; silence where nothing played,
    each picture until the next).

    Raises:
        ValueError: nothing was shown.
    """
    images, audio = played.images, played.audio
    if not images:
        raise ValueError("no picture was shown")
    rate = played.sample_rate or 48_000
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
