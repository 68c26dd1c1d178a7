"""Opening media files with PyAV: the checks and typed errors the audio and video readers share."""

from __future__ import annotations

from pathlib import Path

import av

from emo_stream.errors import EmoStreamError, InputNotFoundError


def ffmpeg_reason(exc: Exception) -> str:
    """FFmpeg's own one-line reason for a failure."""
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0]


def open_media(path: str | Path, kind: str, empty_error: type[EmoStreamError],
               corrupt_error: type[EmoStreamError]) -> av.container.InputContainer:
    """Open ``path`` for reading; ``kind`` ("audio", "video") words the messages.

    Raises:
        InputNotFoundError: no such file, or a directory.
        empty_error: a zero-byte file.
        corrupt_error: PyAV cannot open it.
    """
    p = Path(path)
    if not p.exists():
        raise InputNotFoundError(f"{kind} file not found: {p}")
    if p.is_dir():
        raise InputNotFoundError(f"{kind} path is a directory, not a file: {p}")
    if p.stat().st_size == 0:
        raise empty_error(f"{p.name} is an empty file")
    try:
        return av.open(str(p), mode="r")
    except av.error.FFmpegError as exc:
        raise corrupt_error(f"cannot read {kind} from {p.name}: {ffmpeg_reason(exc)}") from None
