"""Turn a video's per-frame face measures (and its audio) into the numbers a viewer would judge it by.

``compute_video_metrics`` is the entry point behind ``emo-stream metrics VIDEO [--audio FILE]``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from emo_stream.errors import EmptyAudioError
from emo_stream.metrics.blinks import blink_events
from emo_stream.metrics.face_measures import head_angles
from emo_stream.metrics.lipsync import Envelope, audio_envelope, level_at_frames, lipsync
from emo_stream.metrics.video import VideoMeasures, measure_video

# Loudness classes for the silence/speech mouth ranges, on the envelope's sqrt(RMS) scale and
# relative to the clip's loud level (95th percentile over frames): quiet is below 1/4 of it
# (RMS −24 dB), loud above 0.6 of it (RMS −9 dB). SILENCE_FLOOR is sqrt(RMS) of −60 dBFS.
QUIET_RATIO = 0.25
LOUD_RATIO = 0.6
SILENCE_FLOOR = math.sqrt(1e-3)
MIN_CLASS_FRAMES = 5


@dataclass(frozen=True)
class VideoMetrics:
    """What a viewer sees in a video, as numbers. Face-based fields are None when no face was found.

    Attributes:
        duration_s: time covered by the frames.
        fps: average frame rate.
        frames: number of decoded frames.
        face_found: fraction of frames in which a face was found (0..1).
        mouth_open_range: p95 − p5 of the per-frame mouth opening, in eye spans (0 for a still mouth).
        lipsync_r: Pearson r of mouth opening against the audio envelope at the best lag within
            ±200 ms; None without audio or with under 10 frames showing a face, 0.0 when the
            mouth or the sound never changes.
        av_offset_ms: that lag; POSITIVE = the video (mouth) is LATE relative to the audio.
        blinks: number of blinks.
        blinks_per_min: blinks per minute of video.
        head_yaw_std_deg, head_pitch_std_deg, head_roll_std_deg: standard deviation of the head's
            rotation over the clip (turn left/right, nod, tilt in the image plane), degrees.
        mouth_open_range_silence: mouth_open_range over frames whose audio is quiet (ideally ~0).
        mouth_open_range_speech: mouth_open_range over frames whose audio is loud.
        lip_gap_range_silence, lip_gap_range_speech: the same ranges of the lip gap
            (``face_measures.lip_gap``), which a head's nod or turn does not change.
    """

    duration_s: float
    fps: float
    frames: int
    face_found: float
    mouth_open_range: float | None
    lipsync_r: float | None
    av_offset_ms: float | None
    blinks: int | None
    blinks_per_min: float | None
    head_yaw_std_deg: float | None
    head_pitch_std_deg: float | None
    head_roll_std_deg: float | None
    mouth_open_range_silence: float | None = None
    mouth_open_range_speech: float | None = None
    lip_gap_range_silence: float | None = None
    lip_gap_range_speech: float | None = None

    def to_dict(self) -> dict:
        """Plain JSON-able dict (floats rounded to 4 decimals, NaN as None)."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, float):
                value = None if not math.isfinite(value) else round(value, 4)
            out[key] = value
        return out


def robust_range(values: np.ndarray) -> float | None:
    """p95 − p5 of the finite values: a range that one glitched frame cannot set. None if under 2."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return None
    p5, p95 = np.percentile(v, [5, 95])
    return float(p95 - p5)


def _head_stds(m: VideoMeasures) -> tuple[float | None, float | None, float | None]:
    shapes = m.rigid[m.face_mask]
    if len(shapes) < 2:
        return None, None, None
    yaw, pitch, roll = head_angles(shapes).std(axis=0)
    return float(yaw), float(pitch), float(roll)


def _envelope(m: VideoMeasures, video_path: Path, audio_path: str | Path | None) -> Envelope | None:
    if audio_path is not None:
        return audio_envelope(audio_path)  # an explicit file plays from the video's start
    if m.audio_start_s is None:
        return None  # no audio track: the lip-sync fields stay None, not an error
    try:
        return audio_envelope(video_path, start_s=m.audio_start_s)
    except EmptyAudioError:
        return None


def _range_by_loudness(m: VideoMeasures, values: np.ndarray, env: Envelope,
                       offset_ms: float | None) -> tuple[float | None, float | None]:
    """(range in quiet frames, range in loud frames) of a per-frame measure."""
    face = m.face_mask
    if not face.any():
        return None, None
    level = level_at_frames(m.times, env, offset_ms)
    loud_level = float(np.percentile(level[face], 95))
    quiet = face & (level <= max(QUIET_RATIO * loud_level, SILENCE_FLOOR))
    loud = face & (level >= LOUD_RATIO * loud_level) & (level > SILENCE_FLOOR)
    silence = robust_range(values[quiet]) if quiet.sum() >= MIN_CLASS_FRAMES else None
    speech = robust_range(values[loud]) if loud.sum() >= MIN_CLASS_FRAMES else None
    return silence, speech


def compute_video_metrics(video_path: str | Path, audio_path: str | Path | None = None,
                          progress: bool = False) -> VideoMetrics:
    """Score a decoded video.

    Args:
        video_path: any video PyAV reads.
        audio_path: the audio the video should follow; None uses the video's own audio track
            (a video without one gets None lip-sync fields).
        progress: show a progress bar on stderr.

    Raises:
        InputNotFoundError, CorruptVideoError: bad video path or content.
        NoAudioStreamError, CorruptAudioError, ...: a bad ``audio_path``.
    """
    video_path = Path(video_path)
    return metrics_from_measures(measure_video(video_path, progress=progress), video_path, audio_path)


def metrics_from_measures(m: VideoMeasures, video_path: str | Path,
                          audio_path: str | Path | None = None) -> VideoMetrics:
    """``compute_video_metrics`` for a video already measured (``measure_video``): no second pass of the mesh.
    ``video_path`` is read for its own audio track where ``audio_path`` is None."""
    video_path = Path(video_path)
    face = m.face_mask
    has_face = bool(face.any())
    env = _envelope(m, video_path, audio_path)
    r = offset = silence = speech = gap_silence = gap_speech = None
    if env is not None:
        sync = lipsync(m.times, m.mouth, env)
        r, offset = sync.r, sync.offset_ms
        silence, speech = _range_by_loudness(m, m.mouth, env, offset)
        gap_silence, gap_speech = _range_by_loudness(m, m.lip_gap, env, offset)
    blinks = len(blink_events(m.ear)) if has_face else None
    yaw, pitch, roll = _head_stds(m)
    return VideoMetrics(
        duration_s=m.duration_s,
        fps=m.fps,
        frames=m.frames,
        face_found=float(face.mean()),
        mouth_open_range=robust_range(m.mouth),
        lipsync_r=r,
        av_offset_ms=offset,
        blinks=blinks,
        blinks_per_min=(blinks * 60.0 / m.duration_s) if blinks is not None and m.duration_s > 0 else None,
        head_yaw_std_deg=yaw,
        head_pitch_std_deg=pitch,
        head_roll_std_deg=roll,
        mouth_open_range_silence=silence,
        mouth_open_range_speech=speech,
        lip_gap_range_silence=gap_silence,
        lip_gap_range_speech=gap_speech,
    )
