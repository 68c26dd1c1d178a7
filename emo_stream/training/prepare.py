"""Talking-head videos → training clips: face track, fixed square crop, 25 fps, 16 kHz audio, features, masks,
head speed → one shard per video (``shards``), over a pool of processes.

Per video (``prepare_video``):
    1. open the container (typed errors for unreadable files) and check it has a video and an audio track;
    2. first pass over the video, resampled to ``fps`` (nearest source frame), on frames scaled down to
       ``DETECT_SIDE``: ``FaceTracker`` finds the face and follows it with the face mesh; the clip is refused
       (``NoFaceFoundError``) if the face is missing from most frames;
    3. one fixed crop for the whole clip (EMO-style stable crop): framed as ``prepare_avatar`` frames a portrait
       (so training crops look like the crops the model animates), zoomed out if the face would leave it;
    4. head rotation per frame from the rigid landmarks, lightly smoothed; speed = |Δ(yaw, pitch, roll)| per frame;
       the lite rig's targets per frame (``rig_targets``: mouth, lips, eye closure, head pose, per speaker);
    5. decode the audio at 16 kHz, align it to the video (sample 0 plays with frame 0), trim both to the shorter
       (``ClipTooShortError`` under ``min_seconds``), compute the speech features;
    6. second pass: crop every frame from the full-resolution picture into a memory-mapped file, then write the
       shard atomically.

The run (``prepare_videos``) skips videos already done (same path, size and mtime), records the bad ones with
their reason, and saves the manifest every few seconds and on exit; shards finished after the last save carry
their own record and are taken back by the next run, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import multiprocessing
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import av
import cv2
import numpy as np

from emo_stream.audio.decode import load_audio
from emo_stream.audio.features import FEATURE_NAMES, features_to_arrays, frame_features
from emo_stream.avatar import FACE_CENTER, FACE_HEIGHT_FRACTION
from emo_stream.config import usable_cores
from emo_stream.errors import (
    ClipTooShortError,
    ConfigError,
    CorruptVideoError,
    EmoStreamError,
    InputNotFoundError,
    NoAudioStreamError,
    NoFaceFoundError,
    OutdatedDataError,
)
from emo_stream.face import CHIN, FOREHEAD, RIGID_POINTS, FaceDetector, FaceMesh
from emo_stream.media_io import ffmpeg_reason, open_media
from emo_stream.metrics.face_measures import head_angles
from emo_stream.training.rig_targets import RAW_NAMES, RIG_TARGET_NAMES, raw_measures, rig_targets
from emo_stream.training.shards import (
    MANIFEST_NAME,
    SAMPLE_RATE,
    SHARDS_DIR,
    ClipRecord,
    Manifest,
    SkipRecord,
    SourceKey,
    load_manifest,
    read_clip_shard,
    write_clip_shard,
)

log = logging.getLogger(__name__)

# Containers looked for in --videos (anything else in the folder is ignored, not reported).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".ts",
                            ".mts", ".m2ts", ".wmv", ".ogv", ".3gp"})
# Frames are scaled down to this side for face tracking: the mesh sees a crop around the face anyway.
DETECT_SIDE = 640
# The mesh tracks the face in a ROI_SIDE² crop whose side is ROI_SCALE × the face's size: the face fills
# about half of it, as in the portraits the mesh is best at, with room to move between frames.
ROI_SIDE = 256
ROI_SCALE = 2.0
# A clip whose face the mesh misses in more than this share of frames is not a talking head we can use.
MIN_FACE_SHARE = 0.5
# The face-mask box is the landmark box grown by this share of its size on each side: the mesh stops at the
# brow line and the cheeks, and the mask should hold the whole face.
MASK_MARGIN = 0.1
INTERNAL_ERROR = "internal_error"  # a bug on one video: reported, and retried on the next run
WORKER_CRASHED = "worker_crashed"  # the process preparing a video died: reported, retried with --retry-skipped
MANIFEST_SAVE_S = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class PrepareOptions:
    """Settings of one ``data prepare`` run.

    Attributes:
        size: side of the square crops in pixels.
        fps: frame rate of the clips (16000 / fps audio samples per frame).
        min_seconds: shorter videos are skipped.
        workers: processes (None: one per core this process may run on).
        retry_skipped: try again the videos an earlier run skipped.
    """

    size: int = 512
    fps: int = 25
    min_seconds: float = 1.0
    workers: int | None = None
    retry_skipped: bool = False

    def validate(self) -> None:
        if not 16 <= self.size <= 2048:
            raise ConfigError(f"--size must be 16..2048 pixels, got {self.size}")
        if self.fps <= 0 or SAMPLE_RATE % self.fps:
            raise ConfigError(f"--fps must divide 16000 (e.g. 25), got {self.fps}")
        if self.min_seconds < 0:
            raise ConfigError(f"--min-seconds must be >= 0, got {self.min_seconds}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}")

    @property
    def samples_per_frame(self) -> int:
        return SAMPLE_RATE // self.fps


@dataclass(frozen=True)
class PrepareSummary:
    """What one run did. ``skipped`` are this run's skips; ``already_done`` counts videos an earlier run
    prepared or skipped (left alone)."""

    prepared: list[ClipRecord]
    skipped: list[SkipRecord]
    already_done: int
    manifest: Path
    total_clips: int = 0

    def line(self) -> str:
        seconds = sum(c.duration_s for c in self.prepared)
        reasons = Counter(s.code for s in self.skipped)
        why = f" ({', '.join(f'{code} {n}' for code, n in sorted(reasons.items()))})" if reasons else ""
        return (f"prepared {len(self.prepared)} clips ({seconds:.1f} s), skipped {len(self.skipped)}{why}, "
                f"already done {self.already_done}; {self.total_clips} clips in {self.manifest}")

    def to_dict(self) -> dict[str, Any]:
        return {"prepared": [c.to_dict() for c in self.prepared], "skipped": [s.to_dict() for s in self.skipped],
                "already_done": self.already_done, "manifest": str(self.manifest), "total_clips": self.total_clips}


# ---------------------------------------------------------------------------------------------- one video


@dataclass
class _Track:
    """First-pass results, per output frame (NaN where the mesh found no face), in source pixels."""

    t0: float  # media time of frame 0, from the container's start
    source_fps: float
    source_size: tuple[int, int]
    boxes: list[np.ndarray] = field(default_factory=list)  # (4,) landmark box
    frame_lines: list[np.ndarray] = field(default_factory=list)  # (4,) forehead xy, chin xy
    rigid: list[np.ndarray] = field(default_factory=list)  # (K, 3) rigid landmarks
    measures: list[np.ndarray] = field(default_factory=list)  # rig_targets.RAW_NAMES

    @property
    def frames(self) -> int:
        return len(self.boxes)


def _decoded(container: av.container.InputContainer, path: Path, scale: float) -> Iterator[tuple[float, Any]]:
    """(time from the container's start, frame) for every decoded frame; ``scale`` < 1 shrinks with swscale."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    origin = container.start_time / av.time_base if container.start_time is not None else 0.0
    rate = float(stream.average_rate) if stream.average_rate else 25.0
    try:
        for index, frame in enumerate(container.decode(stream)):
            t = frame.time
            t = index / rate if t is None else t - origin
            if scale < 1.0:
                w, h = max(2, round(frame.width * scale) // 2 * 2), max(2, round(frame.height * scale) // 2 * 2)
                yield t, frame.to_ndarray(format="rgb24", width=w, height=h)
            else:
                yield t, frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as exc:
        raise CorruptVideoError(f"cannot decode video in {path.name}: {ffmpeg_reason(exc)}") from None


def resample(frames: Iterator[tuple[float, T]], fps: float, last_duration: float) -> Iterator[tuple[float, T]]:
    """Frames at a constant ``fps``: frame n is the source frame nearest to t0 + n / fps (t0: the first frame's
    time), yielded as (source time, item). The last source frame lasts ``last_duration``. Out-of-order or
    repeated timestamps are dropped (a frame can't show before the one before it)."""
    it = iter(frames)
    first = next(it, None)
    if first is None:
        return
    t0, (tp, prev) = first[0], first
    n = 0
    for t, item in it:
        if t <= tp:
            continue
        midpoint = (tp + t) / 2
        while t0 + n / fps < midpoint - 1e-9:
            yield tp, prev
            n += 1
        tp, prev = t, item
    end = tp + last_duration
    while t0 + n / fps < end - 1e-9:
        yield tp, prev
        n += 1


def _source_info(container: av.container.InputContainer, path: Path) -> tuple[float, float, tuple[int, int]]:
    """(audio start from the container's start, source fps, (width, height)); typed errors for missing tracks."""
    if not container.streams.video:
        raise CorruptVideoError(f"{path.name} has no video track")
    if not container.streams.audio:
        raise NoAudioStreamError(f"{path.name} has no audio track")
    video, audio = container.streams.video[0], container.streams.audio[0]
    origin = container.start_time / av.time_base if container.start_time is not None else 0.0
    start = float(audio.start_time * audio.time_base) if audio.start_time is not None and audio.time_base else origin
    # Decoders drop encoder priming (negative pts), so the first decoded sample plays at max(start, 0).
    audio_start = max(start, 0.0) - origin
    fps = float(video.average_rate) if video.average_rate else 25.0
    return audio_start, fps, (video.codec_context.width, video.codec_context.height)


class FaceTracker:
    """Follows one face through a video: the full-range detector finds it (on the first frame, and again
    whenever it is lost), then the face mesh tracks it in a square crop around the last frame's landmarks.

    The mesh alone looks at the whole frame with a short-range detector and misses faces that fill little of
    it (a presenter in a wide shot); in the crop every face is the same, comfortable size.
    """

    def __init__(self) -> None:
        self._mesh = FaceMesh(static=False, max_faces=1)
        self._detector = FaceDetector()
        self._roi: tuple[float, float, float] | None = None  # centre x, centre y, side, in frame pixels

    def landmarks(self, rgb: np.ndarray) -> np.ndarray | None:
        """(478, 3) landmarks in ``rgb``'s pixels, or None when there is no face."""
        if self._roi is not None:
            points = self._mesh_in(rgb, self._roi)
            if points is not None:
                return points
        self._roi = self._detect(rgb)  # no face yet, or lost: look again over the whole frame
        return None if self._roi is None else self._mesh_in(rgb, self._roi)

    def _detect(self, rgb: np.ndarray) -> tuple[float, float, float] | None:
        boxes = self._detector.detect(rgb)
        if not boxes:
            return None
        x0, y0, x1, y1, _ = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))  # the main speaker
        return (x0 + x1) / 2, (y0 + y1) / 2, ROI_SCALE * max(x1 - x0, y1 - y0)

    def _mesh_in(self, rgb: np.ndarray, roi: tuple[float, float, float]) -> np.ndarray | None:
        cx, cy, side = roi
        s = ROI_SIDE / max(side, 1.0)
        matrix = np.array([[s, 0.0, ROI_SIDE / 2 - s * cx], [0.0, s, ROI_SIDE / 2 - s * cy]])
        crop = cv2.warpAffine(rgb, matrix, (ROI_SIDE, ROI_SIDE), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        faces = self._mesh.detect(crop)
        if not faces:
            self._roi = None
            return None
        points = faces[0].points.astype(np.float64)
        points[:, :2] = (points[:, :2] - matrix[:, 2]) / s
        points[:, 2] /= s
        x0, y0 = points[:, :2].min(axis=0)
        x1, y1 = points[:, :2].max(axis=0)
        self._roi = (x0 + x1) / 2, (y0 + y1) / 2, ROI_SCALE * max(x1 - x0, y1 - y0)
        return points

    def close(self) -> None:
        self._mesh.close()
        self._detector.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _track_face(path: Path, options: PrepareOptions) -> tuple[_Track, float]:
    """First pass: landmarks of every output frame. Returns the track and the audio start time."""
    nan4 = np.full(4, np.nan, dtype=np.float64)
    nan_rigid = np.full((len(RIGID_POINTS), 3), np.nan)
    nan_measures = np.full(len(RAW_NAMES), np.nan)
    with open_media(path, "video", CorruptVideoError, CorruptVideoError) as container:
        audio_start, source_fps, (w, h) = _source_info(container, path)
        scale = min(1.0, DETECT_SIDE / max(w, h, 1))
        track: _Track | None = None
        with FaceTracker() as tracker:
            for t, rgb in resample(_decoded(container, path, scale), options.fps, 1.0 / source_fps):
                if track is None:
                    track = _Track(t0=t, source_fps=source_fps, source_size=(w, h))
                points = tracker.landmarks(rgb)
                if points is None:
                    track.boxes.append(nan4)
                    track.frame_lines.append(nan4)
                    track.rigid.append(nan_rigid)
                    track.measures.append(nan_measures)
                    continue
                sx, sy = w / rgb.shape[1], h / rgb.shape[0]  # detection pixels → source pixels
                pts = points * np.array([sx, sy, sx])
                x0, y0 = pts[:, :2].min(axis=0)
                x1, y1 = pts[:, :2].max(axis=0)
                track.boxes.append(np.array([x0, y0, x1, y1]))
                track.frame_lines.append(np.concatenate([pts[FOREHEAD, :2], pts[CHIN, :2]]))
                track.rigid.append(pts[list(RIGID_POINTS)])
                track.measures.append(raw_measures(pts))
    if track is None:
        raise CorruptVideoError(f"{path.name} holds no video frames")
    return track, audio_start


def _fill_gaps(values: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames where a row is NaN (edges hold the nearest value)."""
    values = np.array(values, dtype=np.float64)
    ok = np.isfinite(values).all(axis=tuple(range(1, values.ndim)))
    idx = np.arange(len(values))
    flat = values.reshape(len(values), -1)
    for j in range(flat.shape[1]):
        flat[:, j] = np.interp(idx, idx[ok], flat[ok, j])
    return flat.reshape(values.shape)


def crop_matrix(lines: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """The clip's fixed 2×3 source → crop affine (scale + translation).

    Framed like ``avatar.crop_transform`` (forehead-to-chin height = ``FACE_HEIGHT_FRACTION`` of the side, face
    centre at ``FACE_CENTER``) from the median face of the clip, then zoomed out as needed so the union of the
    face boxes stays inside the square: the face never leaves the crop, and the crop does not shake.
    """
    top, chin = lines[:, :2], lines[:, 2:]
    height = float(np.median(np.linalg.norm(chin - top, axis=1)))
    centre = np.median((top + chin) / 2, axis=0)
    scale = FACE_HEIGHT_FRACTION * size / max(height, 1.0)
    ux0, uy0 = boxes[:, :2].min(axis=0)
    ux1, uy1 = boxes[:, 2:].max(axis=0)
    room = [(FACE_CENTER[0] * size, centre[0] - ux0), ((1 - FACE_CENTER[0]) * size, ux1 - centre[0]),
            (FACE_CENTER[1] * size, centre[1] - uy0), ((1 - FACE_CENTER[1]) * size, uy1 - centre[1])]
    for space, extent in room:
        if extent > 0:
            scale = min(scale, space / extent)
    tx = FACE_CENTER[0] * size - scale * centre[0]
    ty = FACE_CENTER[1] * size - scale * centre[1]
    return np.array([[scale, 0.0, tx], [0.0, scale, ty]], dtype=np.float64)


def head_speed(rigid: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Head-rotation speed per frame in radians per frame, from (T, K, 3) rigid landmarks.

    Angles (yaw, pitch, roll) come from ``metrics.face_measures.head_angles`` on the frames with a face and are
    interpolated over the others; a [1, 2, 1] smoothing takes out the mesh's frame-to-frame jitter, which would
    otherwise read as motion on a still head. Frame 0 gets frame 1's speed.
    """
    n = len(rigid)
    if n < 2 or found.sum() < 2:
        return np.zeros(n, dtype=np.float32)
    angles = np.full((n, 3), np.nan)
    angles[found] = np.radians(head_angles(rigid[found]))
    angles = _fill_gaps(angles)
    padded = np.concatenate([angles[:1], angles, angles[-1:]])
    smooth = (padded[:-2] + 2 * padded[1:-1] + padded[2:]) / 4
    speed = np.linalg.norm(np.diff(smooth, axis=0), axis=1)
    return np.concatenate([speed[:1], speed]).astype(np.float32)


def _aligned_audio(path: Path, t0: float, audio_start: float, frames: int, spf: int) -> tuple[np.ndarray, int]:
    """16 kHz audio whose sample 0 plays with video frame 0, and the frame count both cover."""
    audio = load_audio(path, sample_rate=SAMPLE_RATE)
    offset = round((t0 - audio_start) * SAMPLE_RATE)
    if offset > 0:
        audio = audio[offset:]
    elif offset < 0:  # the audio starts after the first frame: silence until it does
        audio = np.concatenate([np.zeros(-offset, dtype=np.float32), audio])
    frames = min(frames, len(audio) // spf)
    return np.ascontiguousarray(audio[: frames * spf], dtype=np.float32), frames


def _crop_frames(path: Path, matrix: np.ndarray, frames: int, options: PrepareOptions, out: np.ndarray) -> None:
    """Second pass: crop frames 0..frames-1 into ``out`` [T, S, S, 3] from full-resolution pictures."""
    size, scale = options.size, float(matrix[0, 0])
    with open_media(path, "video", CorruptVideoError, CorruptVideoError) as container:
        source_fps = float(container.streams.video[0].average_rate or 25.0)
        n = 0
        for _, rgb in resample(_decoded(container, path, 1.0), options.fps, 1.0 / source_fps):
            if n >= frames:
                break
            m = matrix
            if scale < 1.0:
                # Shrink with area averaging first: an affine warp samples, and would alias a large downscale.
                small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                m = matrix.copy()
                m[:, :2] /= scale
                rgb = small
            out[n] = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_CUBIC if scale > 1.0 else cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_REFLECT_101)  # as prepare_avatar extends a photo
            n += 1
    if n < frames:
        raise CorruptVideoError(f"{path.name}: the second decode gave {n} frames, the first {frames}")


def face_mask(boxes: np.ndarray, size: int) -> np.ndarray:
    """[S, S] uint8, 1 inside the union of the (grown) face boxes, given in crop pixels."""
    mask = np.zeros((size, size), dtype=np.uint8)
    for x0, y0, x1, y1 in boxes:
        mx, my = MASK_MARGIN * (x1 - x0), MASK_MARGIN * (y1 - y0)
        c0, r0 = max(0, math.floor(x0 - mx)), max(0, math.floor(y0 - my))
        c1, r1 = min(size, math.ceil(x1 + mx)), min(size, math.ceil(y1 + my))
        mask[r0:r1, c0:c1] = 1
    return mask


def clip_id_for(path: Path, videos_root: Path) -> str:
    """A stable id: the file's stem (safe characters only, no dots, for WebDataset keys) and a hash of its
    path relative to the videos folder (two ``a.mp4`` in different subfolders stay apart)."""
    rel = path.resolve().relative_to(videos_root.resolve()).as_posix()
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:48] or "clip"
    return f"{stem}-{hashlib.sha1(rel.encode()).hexdigest()[:10]}"


def prepare_video(path: str | Path, out_root: str | Path, clip_id: str, options: PrepareOptions) -> ClipRecord:
    """Prepare one video into ``out_root/shards/<clip_id>.tar`` (steps in the module docstring).

    Raises:
        InputNotFoundError, CorruptVideoError, NoAudioStreamError, CorruptAudioError, EmptyAudioError,
        NoFaceFoundError, ClipTooShortError.
    """
    path, out_root = Path(path), Path(out_root)
    key = SourceKey.of(path)
    track, audio_start = _track_face(path, options)
    found = np.isfinite(np.stack(track.boxes)).all(axis=1)
    if found.sum() == 0 or found.mean() < MIN_FACE_SHARE:
        raise NoFaceFoundError(f"{path.name}: a face in {found.sum()} of {track.frames} frames "
                               f"(needs {MIN_FACE_SHARE:.0%}): not a talking-head video")
    spf = options.samples_per_frame
    audio, frames = _aligned_audio(path, track.t0, audio_start, track.frames, spf)
    if frames < max(1, math.ceil(options.min_seconds * options.fps)):
        raise ClipTooShortError(f"{path.name}: {frames / options.fps:.2f} s of video with audio, "
                                f"--min-seconds is {options.min_seconds:g}")
    boxes = _fill_gaps(np.stack(track.boxes)[:frames])
    lines = _fill_gaps(np.stack(track.frame_lines)[:frames])
    rigid = np.stack(track.rigid)[:frames]
    matrix = crop_matrix(lines, boxes, options.size)
    crop_boxes = np.concatenate([boxes[:, :2] * matrix[0, 0] + matrix[:, 2], boxes[:, 2:] * matrix[0, 0] + matrix[:, 2]],
                                axis=1).astype(np.float32)
    speed = head_speed(rigid, found[:frames])
    rig = rig_targets(np.stack(track.measures)[:frames], rigid, found[:frames])
    table = features_to_arrays(frame_features(audio, SAMPLE_RATE, options.fps))
    features = np.stack([table[name] for name in FEATURE_NAMES], axis=1).astype(np.float32)[:frames]
    shards = out_root / SHARDS_DIR
    shards.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-{clip_id}-", dir=out_root) as tmp:
        frames_npy = Path(tmp) / "frames.npy"
        out = np.lib.format.open_memmap(frames_npy, mode="w+", dtype=np.uint8,
                                        shape=(frames, options.size, options.size, 3))
        _crop_frames(path, matrix, frames, options, out)
        out.flush()
        del out
        record = ClipRecord(clip_id=clip_id, shard=f"{SHARDS_DIR}/{clip_id}.tar", frames=frames, fps=options.fps,
                            size=options.size, duration_s=frames / options.fps, source=key,
                            source_fps=track.source_fps, source_size=track.source_size,
                            face_frames=float(found[:frames].mean()))
        meta = {"clip_id": clip_id, "fps": options.fps, "frames": frames, "crop_matrix": matrix.tolist(),
                "feature_names": list(FEATURE_NAMES), "rig_names": list(RIG_TARGET_NAMES),
                "record": record.to_dict()}
        write_clip_shard(shards / f"{clip_id}.tar", clip_id,
                         {"frames": frames_npy, "audio": audio, "features": features, "head_speed": speed,
                          "face_mask": face_mask(crop_boxes, options.size), "boxes": crop_boxes, "rig": rig,
                          "face_found": found[:frames]}, meta)
    return record


# ---------------------------------------------------------------------------------------------- the pool


@dataclass(frozen=True)
class _Task:
    path: str
    out_root: str
    clip_id: str
    options: PrepareOptions


def _run_task(task: _Task) -> ClipRecord | SkipRecord:
    """Worker entry: a bad video becomes a SkipRecord instead of stopping the run."""
    try:
        return prepare_video(task.path, task.out_root, task.clip_id, task.options)
    except EmoStreamError as exc:
        return SkipRecord(source=_key_or_path(task.path), code=exc.code, reason=exc.message)
    except Exception as exc:  # a bug on one odd video: report it, keep going, retry next run
        return SkipRecord(source=_key_or_path(task.path), code=INTERNAL_ERROR,
                          reason=f"{Path(task.path).name}: {type(exc).__name__}: {exc}")


def _key_or_path(path: str) -> SourceKey:
    try:
        return SourceKey.of(path)
    except OSError:
        return SourceKey(path=str(Path(path).resolve()), size=-1, mtime_ns=-1)


def _worker_init() -> None:
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def find_videos(folder: Path, exclude: Path | None = None) -> list[Path]:
    """Video files under ``folder`` (recursively, sorted), hidden files and ``exclude`` left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and (exclude is None or (here / d).resolve() != exclude.resolve()))
        found += [here / f for f in sorted(files) if not f.startswith(".") and Path(f).suffix.lower() in VIDEO_SUFFIXES]
    return found


def _clean_stale(out_root: Path) -> None:
    """Temporary files of a run that was killed: whole shards are renamed into place, so these are garbage."""
    for tmp in out_root.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    for tmp in (out_root / SHARDS_DIR).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _progress(total: int, enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="prepare", file=sys.stderr, dynamic_ncols=True)


def _bar_paused(bar):
    """Lines printed while a bar is drawn go above it instead of through it."""
    if bar is None:
        return contextlib.nullcontext()
    return bar.external_write_mode(file=sys.stderr)


def _adopt_orphans(out: Path, manifest: Manifest) -> None:
    """Shards a killed run finished but did not list yet (the manifest is saved every few seconds): each
    shard carries its own record, and is taken back if its source file is unchanged."""
    listed = {c.clip_id for c in manifest.clips.values()}
    for shard in sorted((out / SHARDS_DIR).glob("*.tar")):
        if shard.stem in listed:
            continue
        try:
            record = ClipRecord.from_dict(read_clip_shard(shard).meta["record"])
            current = SourceKey.of(record.source.path)
        except (EmoStreamError, OSError, KeyError, TypeError, ValueError):
            continue  # an unreadable or foreign file: left alone, a rerun of its video overwrites it
        if current == record.source and record.shard == f"{SHARDS_DIR}/{shard.name}":
            manifest.clips[record.source.path] = record


class _Pool:
    """Runs tasks over ``workers`` spawned processes, yielding results as they finish.

    A worker that dies (a crash in native code: FFmpeg, mediapipe) breaks the whole process pool. The tasks in
    flight then are suspects: the rest go on in a fresh pool, and each suspect is run again alone, so a video
    that kills its process is reported (``WORKER_CRASHED``) and the others are prepared.
    """

    def __init__(self, workers: int, run=None) -> None:
        self.workers = workers
        self.run = run or _run_task
        # spawn: a forked child would inherit torch's and mediapipe's threads and locks mid-state.
        self.context = multiprocessing.get_context("spawn")

    def _executor(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=self.context, initializer=_worker_init)

    def results(self, tasks: list[_Task]) -> Iterator[ClipRecord | SkipRecord]:
        pending = deque(tasks)
        suspects: list[_Task] = []
        while pending:
            in_flight: dict[Future, _Task] = {}
            with self._executor(self.workers) as executor:
                try:
                    while pending or in_flight:
                        # A bounded window (not every task at once): only these are suspects if a worker dies.
                        while pending and len(in_flight) < 2 * self.workers:
                            task = pending.popleft()
                            in_flight[executor.submit(self.run, task)] = task
                        done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                        for future in done:
                            result = future.result()  # BrokenProcessPool if a worker died
                            del in_flight[future]
                            yield result
                except BrokenProcessPool:
                    suspects += in_flight.values()
                except BaseException:  # Ctrl-C or the caller stopped: don't start the queued videos
                    executor.shutdown(wait=False, cancel_futures=True)
                    raise
        for task in suspects:
            with self._executor(1) as executor:
                try:
                    yield executor.submit(self.run, task).result()
                except BrokenProcessPool:
                    yield SkipRecord(source=_key_or_path(task.path), code=WORKER_CRASHED,
                                     reason=f"{Path(task.path).name}: the process preparing it died "
                                            "(a crash in FFmpeg or mediapipe?)")


def prepare_videos(videos: str | Path, out: str | Path, options: PrepareOptions | None = None,
                   progress: bool = False, on_skip=None, _run=None) -> PrepareSummary:
    """Prepare every video under ``videos`` into ``out`` (shards + manifest), resuming an earlier run.

    Args:
        videos: folder searched recursively for ``VIDEO_SUFFIXES`` files.
        out: output folder (made if missing).
        options: size, fps, workers, ...
        progress: show a tqdm bar on stderr.
        on_skip: called with each SkipRecord as it happens (the CLI prints them).
        _run: tests only: the per-task function the workers run (a top-level function).

    Raises:
        InputNotFoundError: ``videos`` is not a folder. ConfigError: bad options, or ``out`` was prepared with
        another size or fps. DataError: ``out`` holds an unreadable manifest.
    """
    options = options or PrepareOptions()
    options.validate()
    videos, out = Path(videos), Path(out)
    if not videos.is_dir():
        raise InputNotFoundError(f"--videos {videos}: no such folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST_NAME).exists():
        try:
            manifest = load_manifest(out)
        except OutdatedDataError:
            # Prepared by an older version: every clip is prepared again (its shard overwritten). Its old shards
            # are never adopted (read_clip_shard refuses their format), even after an interrupted start-over.
            manifest = Manifest(fps=options.fps, size=options.size, feature_names=FEATURE_NAMES)
            log.warning("%s was prepared by an older version of data prepare: preparing every clip again", out)
        if (manifest.size, manifest.fps) != (options.size, options.fps):
            raise ConfigError(f"{out} holds {manifest.size} px clips at {manifest.fps} fps: use --size "
                              f"{manifest.size} --fps {manifest.fps} there, or another --out")
    else:
        manifest = Manifest(fps=options.fps, size=options.size, feature_names=FEATURE_NAMES)
    _clean_stale(out)
    _adopt_orphans(out, manifest)

    def is_done(key: SourceKey) -> bool:
        if not manifest.done(key):
            return False
        clip = manifest.clips.get(key.path)
        if clip is not None:
            return (out / clip.shard).is_file()  # a deleted shard is made again
        skip = manifest.skipped[key.path]
        return skip.code != INTERNAL_ERROR and not options.retry_skipped

    todo: list[_Task] = []
    already = 0
    for path in find_videos(videos, exclude=out):
        if is_done(SourceKey.of(path)):
            already += 1
        else:
            todo.append(_Task(str(path), str(out), clip_id_for(path, videos), options))

    prepared: list[ClipRecord] = []
    skipped: list[SkipRecord] = []
    by_shard = {clip.shard: path for path, clip in manifest.clips.items()}
    saved_at = time.monotonic()
    workers = min(options.workers or usable_cores(), max(1, len(todo)))
    results: Iterator[ClipRecord | SkipRecord]
    if workers == 1 and _run is None:
        results = map(_run_task, todo)  # no process to start: the quick path for one core or one video
    else:
        results = _Pool(workers, _run).results(todo)
    try:
        with _progress(len(todo), progress and bool(todo)) as bar:
            for result in results:
                earlier = manifest.clips.pop(result.source.path, None)
                manifest.skipped.pop(result.source.path, None)
                if isinstance(result, ClipRecord):
                    # Its shard was just written from this path: an entry of another path naming the same shard
                    # (the videos folder moved) is stale, and would list the clip twice.
                    stale = by_shard.pop(result.shard, None)
                    if stale is not None and stale != result.source.path:
                        manifest.clips.pop(stale, None)
                    by_shard[result.shard] = result.source.path
                    manifest.clips[result.source.path] = result
                    prepared.append(result)
                else:
                    if earlier is not None:  # the file changed and is now unusable
                        (out / earlier.shard).unlink(missing_ok=True)
                    manifest.skipped[result.source.path] = result
                    skipped.append(result)
                    if on_skip is not None:
                        with _bar_paused(bar):
                            on_skip(result)
                if bar is not None:
                    bar.update(1)
                # Every few seconds, not every video: rewriting a large manifest per video would be quadratic,
                # and a shard finished since is taken back by ``_adopt_orphans`` on the next run anyway.
                if time.monotonic() - saved_at > MANIFEST_SAVE_S:
                    manifest.save(out)
                    saved_at = time.monotonic()
    finally:
        manifest.save(out)  # also on Ctrl-C: the next run resumes from here
    return PrepareSummary(prepared=prepared, skipped=skipped, already_done=already, manifest=out / MANIFEST_NAME,
                          total_clips=len(manifest.clips))
