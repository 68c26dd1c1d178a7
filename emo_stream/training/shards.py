"""The on-disk format written by ``emo-stream data prepare``: one WebDataset-style tar per clip, and a manifest.

Layout of an output folder::

    manifest.json              what was prepared (clips) and what was not (skipped), keyed by source file
    shards/<clip_id>.tar       members ``<clip_id>.<field>.npy`` and ``<clip_id>.json``

Fields of a clip (T frames at ``fps``, crops S×S):
    frames      uint8 [T, S, S, 3]   RGB crops, one fixed square per clip
    audio       float32 [T × 16000 / fps]  16 kHz mono, sample 0 plays with frame 0
    features    float32 [T, K]       speech features per frame (``FEATURE_NAMES`` of the lite animator)
    head_speed  float32 [T]          head-rotation speed, radians per frame
    face_mask   uint8 [S, S]         1 inside the union of the clip's face boxes
    boxes       float32 [T, 4]       face box per frame in crop pixels (x0, y0, x1, y1)

The tar is uncompressed and every member is a plain ``.npy``, so a reader memory-maps each array at its
offset inside the tar: reading one training window touches only that window's frames, and standard tools
(``tar``, WebDataset) still read the files. Every file is written under a temporary name and renamed, so
an interrupted run leaves either a whole file or none.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emo_stream.errors import DataError, OutdatedDataError

MANIFEST_NAME = "manifest.json"
SHARDS_DIR = "shards"
FORMAT_VERSION = 4  # 2: the lite rig's targets (rig, face_found); 3: its openings in 3D; 4: shards name their format
SAMPLE_RATE = 16_000
FIELDS = ("frames", "audio", "features", "head_speed", "face_mask", "boxes", "rig", "face_found")


@dataclass(frozen=True)
class SourceKey:
    """Identifies one source video for resuming: its path, size and modification time."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> SourceKey:
        st = Path(path).stat()
        return cls(path=str(Path(path).resolve()), size=st.st_size, mtime_ns=st.st_mtime_ns)


@dataclass(frozen=True)
class ClipRecord:
    """A prepared clip as listed in the manifest."""

    clip_id: str
    shard: str  # relative to the output folder
    frames: int
    fps: int
    size: int
    duration_s: float
    source: SourceKey
    source_fps: float
    source_size: tuple[int, int]
    face_frames: float  # share of frames where the face mesh found the face

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["source_size"] = list(self.source_size)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClipRecord:
        return cls(clip_id=d["clip_id"], shard=d["shard"], frames=int(d["frames"]), fps=int(d["fps"]),
                   size=int(d["size"]), duration_s=float(d["duration_s"]), source=SourceKey(**d["source"]),
                   source_fps=float(d["source_fps"]), source_size=tuple(d["source_size"]),
                   face_frames=float(d["face_frames"]))


@dataclass(frozen=True)
class SkipRecord:
    """A source video that was not prepared, and why (``code`` is the error's stable code)."""

    source: SourceKey
    code: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SkipRecord:
        return cls(source=SourceKey(**d["source"]), code=d["code"], reason=d["reason"])


@dataclass
class Manifest:
    """Everything prepared into one folder. ``feature_names`` label the columns of ``features``."""

    fps: int
    size: int
    sample_rate: int = SAMPLE_RATE
    feature_names: tuple[str, ...] = ()
    clips: dict[str, ClipRecord] = field(default_factory=dict)  # by source path
    skipped: dict[str, SkipRecord] = field(default_factory=dict)  # by source path

    def to_dict(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "fps": self.fps, "size": self.size, "sample_rate": self.sample_rate,
                "feature_names": list(self.feature_names),
                "clips": [c.to_dict() for c in sorted(self.clips.values(), key=lambda c: c.clip_id)],
                "skipped": [s.to_dict() for s in sorted(self.skipped.values(), key=lambda s: s.source.path)]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        if d.get("version") != FORMAT_VERSION:
            raise OutdatedDataError(f"manifest format {d.get('version')!r} is not {FORMAT_VERSION}: prepare the data "
                                    "again (`emo-stream data prepare` on the same --out starts it over)")
        clips = [ClipRecord.from_dict(c) for c in d.get("clips", [])]
        skipped = [SkipRecord.from_dict(s) for s in d.get("skipped", [])]
        return cls(fps=int(d["fps"]), size=int(d["size"]), sample_rate=int(d.get("sample_rate", SAMPLE_RATE)),
                   feature_names=tuple(d.get("feature_names", ())),
                   clips={c.source.path: c for c in clips}, skipped={s.source.path: s for s in skipped})

    def done(self, key: SourceKey) -> bool:
        """Whether ``key`` (same path, size and mtime) was already prepared or skipped."""
        record = self.clips.get(key.path) or self.skipped.get(key.path)
        return record is not None and record.source == key

    def save(self, root: Path) -> None:
        atomic_write_bytes(Path(root) / MANIFEST_NAME, json.dumps(self.to_dict(), indent=1).encode())


def load_manifest(root: str | Path) -> Manifest:
    """The manifest of a prepared folder.

    Raises:
        DataError: the folder has no manifest, or it cannot be read.
    """
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"no {MANIFEST_NAME} in {root}: run `emo-stream data prepare --videos DIR --out {root}` first")
    try:
        return Manifest.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}): prepare the data again") from None


def _publish(tmp: str, path: Path) -> None:
    """Rename a finished temporary file into place, with ordinary permissions (mkstemp makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def write_clip_shard(path: Path, clip_id: str, arrays: Mapping[str, np.ndarray | Path], meta: Mapping[str, Any]) -> None:
    """Write one clip's tar atomically. An array may be given as the path of an ``.npy`` file already on disk
    (the frames, which are written to a memory-mapped file as they are cropped, so a long clip is never in RAM).
    The meta gets ``format``: ``read_clip_shard`` refuses shards of another version."""
    missing = set(FIELDS) - set(arrays)
    if missing:
        raise ValueError(f"write_clip_shard: missing fields {sorted(missing)}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in FIELDS:
                value = arrays[name]
                arcname = f"{clip_id}.{name}.npy"
                if isinstance(value, Path):
                    tar.add(str(value), arcname=arcname, recursive=False)
                else:
                    data = _npy_bytes(value)
                    info = tarfile.TarInfo(arcname)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            data = json.dumps({**meta, "format": FORMAT_VERSION}).encode()
            info = tarfile.TarInfo(f"{clip_id}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _memmap_member(path: Path, offset: int) -> np.ndarray:
    with open(path, "rb") as f:
        f.seek(offset)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        data_offset = f.tell()
    if fortran:
        raise DataError(f"{path.name}: Fortran-ordered array, not written by `data prepare`")
    if int(np.prod(shape)) == 0:  # mmap cannot map zero bytes
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=shape)


@dataclass
class ClipArrays:
    """One clip's arrays, memory-mapped read-only from its shard (nothing is read until indexed)."""

    clip_id: str
    frames: np.ndarray
    audio: np.ndarray
    features: np.ndarray
    head_speed: np.ndarray
    face_mask: np.ndarray
    boxes: np.ndarray
    rig: np.ndarray  # (T, len(rig_targets.RIG_TARGET_NAMES)) float32
    face_found: np.ndarray  # (T,) bool: the mesh found the face in this frame
    meta: dict[str, Any]


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    """A regular member's bytes (``extractfile`` gives None only for links and folders)."""
    f = tar.extractfile(member)
    if f is None:
        raise DataError(f"{member.name}: not a regular file")
    return f.read()


def read_clip_shard(path: str | Path) -> ClipArrays:
    """Open one clip's tar; arrays are memory maps into it.

    Raises:
        DataError: the shard is missing, truncated or lacks a field. OutdatedDataError: an older version wrote it.
    """
    path = Path(path)
    try:
        with tarfile.open(path, "r:") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}
            metas = [m for name, m in members.items() if name.endswith(".json")]
            if len(metas) != 1:
                raise DataError(f"{path.name}: expected one .json member, found {len(metas)}")
            clip_id = metas[0].name[: -len(".json")]
            meta = json.loads(_read_member(tar, metas[0]))
            offsets = {}
            for name in FIELDS:
                member = members.get(f"{clip_id}.{name}.npy")
                if member is None:
                    raise DataError(f"{path.name}: no {name} member: prepare this clip again")
                offsets[name] = member.offset_data
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise DataError(f"cannot read shard {path} ({type(exc).__name__}: {exc}): prepare this clip again") from None
    if meta.get("format") != FORMAT_VERSION:
        raise OutdatedDataError(f"{path.name} is shard format {meta.get('format', 'unknown')!r}, not "
                                f"{FORMAT_VERSION}: prepare the data again")
    arrays = {name: _memmap_member(path, offset) for name, offset in offsets.items()}
    return ClipArrays(clip_id=clip_id, meta=meta, **arrays)
