"""Decode a video and measure the face in every frame: the raw per-frame series the metrics are made of.

Frames are decoded one at a time with PyAV and dropped once measured, so memory holds only
a few numbers per frame (mouth opening, eye openness, 21 rigid landmarks), whatever the
video's length. The face mesh runs in video (tracking) mode, as a viewer's eye would follow
one face through the clip.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from emo_stream.errors import CorruptVideoError
from emo_stream.face import RIGID_POINTS, FaceMesh
from emo_stream.media_io import ffmpeg_reason, open_media
from emo_stream.metrics.face_measures import (
    eye_aspect_ratio,
    lip_gap,
    mouth_opening,
    mouth_width,
    rigid_shape,
)

# Larger frames are scaled down before the face mesh: the measures are ratios, so scale does not
# change them, and mediapipe works on ~200 px face crops anyway; this only saves conversion time.
MAX_SIDE = 720


@dataclass(frozen=True)
class VideoMeasures:
    """Per-frame face measures of one video (N frames); NaN where no face was found.

    Attributes:
        times: media time of each frame in seconds, from the container's start.
        mouth: mouth opening in eye spans (``face_measures.mouth_opening``).
        ear: eye aspect ratio (``face_measures.eye_aspect_ratio``).
        width: mouth width in eye spans (``face_measures.mouth_width``).
        lip_gap: how far the lips are apart whatever the head's pose, in eye spans (``face_measures.lip_gap``).
        rigid: (N, K, 3) rigid landmarks for head pose (``face_measures.rigid_shape``).
        fps: the stream's average frame rate.
        duration_s: time the frames cover (last frame's time − first's + one frame).
        audio_start_s: media time of the first sample of the file's own audio track, from the
            container's start; None when the file has no audio track.
    """

    times: np.ndarray
    mouth: np.ndarray
    ear: np.ndarray
    rigid: np.ndarray
    fps: float
    width: np.ndarray
    duration_s: float
    audio_start_s: float | None
    lip_gap: np.ndarray

    @property
    def frames(self) -> int:
        return len(self.times)

    @property
    def face_mask(self) -> np.ndarray:
        return np.isfinite(self.mouth)


def _open(path: Path) -> av.container.InputContainer:
    return open_media(path, "video", CorruptVideoError, CorruptVideoError)


def _seconds(pts: int | None, time_base) -> float | None:
    return None if pts is None or time_base is None else float(pts * time_base)


def _scaled_size(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, MAX_SIDE / max(width, height, 1))
    # Even sizes keep swscale's chroma handling exact for yuv420p sources.
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def measure_video(path: str | Path, progress: bool = False) -> VideoMeasures:
    """Decode ``path`` and measure the face in each frame.

    Raises:
        InputNotFoundError: the path does not exist or is a directory.
        CorruptVideoError: not a video PyAV can open, no video track, undecodable, or no frames.
    """
    p = Path(path)
    times: list[float] = []
    mouth: list[float] = []
    ear: list[float] = []
    width: list[float] = []
    gap: list[float] = []
    rigid: list[np.ndarray] = []
    missing = np.full((len(RIGID_POINTS), 3), np.nan)
    with _open(p) as container:
        if not container.streams.video:
            raise CorruptVideoError(f"{p.name} has no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: decoding is not what we measure, make it cheap
        origin = container.start_time / av.time_base if container.start_time is not None else 0.0
        audio_start_s = None
        if container.streams.audio:
            a = container.streams.audio[0]
            start = _seconds(a.start_time, a.time_base)
            # Decoders drop encoder priming (negative pts / skip-samples), so the first decoded
            # sample plays at max(start, 0) on the container clock.
            audio_start_s = max(start if start is not None else origin, 0.0) - origin
        rate = float(stream.average_rate) if stream.average_rate else None
        bar = _progress_bar(progress, stream.frames or None, p.name)
        try:
            with FaceMesh(static=False) as mesh:
                for index, frame in enumerate(container.decode(stream)):
                    t = frame.time
                    if t is None:  # no timestamps: assume a constant rate
                        t = index / (rate or 25.0)
                    else:
                        t -= origin
                    w, h = _scaled_size(frame.width, frame.height)
                    rgb = frame.to_ndarray(format="rgb24", width=w, height=h)
                    faces = mesh.detect(rgb)
                    times.append(t)
                    if faces:
                        pts = faces[0].points
                        mouth.append(mouth_opening(pts))
                        ear.append(eye_aspect_ratio(pts))
                        width.append(mouth_width(pts))
                        gap.append(lip_gap(pts))
                        rigid.append(rigid_shape(pts))
                    else:
                        mouth.append(np.nan)
                        ear.append(np.nan)
                        width.append(np.nan)
                        gap.append(np.nan)
                        rigid.append(missing)
                    if bar is not None:
                        bar.update(1)
        except av.error.FFmpegError as exc:
            raise CorruptVideoError(f"cannot decode video in {p.name}: {ffmpeg_reason(exc)}") from None
        finally:
            if bar is not None:
                bar.close()
    if not times:
        raise CorruptVideoError(f"{p.name} holds no video frames")
    stamps = np.asarray(times, dtype=np.float64)
    if rate is None:
        rate = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 and stamps[-1] > stamps[0] else 25.0
    duration = float(stamps[-1] - stamps[0] + 1.0 / rate)
    return VideoMeasures(times=stamps, mouth=np.asarray(mouth), ear=np.asarray(ear), rigid=np.stack(rigid),
                         fps=rate, width=np.asarray(width), duration_s=duration, audio_start_s=audio_start_s,
                         lip_gap=np.asarray(gap))


def _progress_bar(enabled: bool, total: int | None, name: str):
    if not enabled:
        return None
    from tqdm import tqdm  # only when asked: keeps import time down for library use

    return tqdm(total=total, desc=f"measuring {name}", unit="frame", file=sys.stderr)
