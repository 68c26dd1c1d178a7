"""One table from engine error classes to HTTP statuses, and the JSON error body of docs/api.md."""

from __future__ import annotations

from emo_stream import errors as e

STATUS_BY_ERROR: list[tuple[type[e.EmoStreamError], int]] = [
    (e.InputNotFoundError, 404),
    (e.NotFoundError, 404),
    (e.UnauthorizedError, 401),
    (e.OverloadedError, 503),
    (e.RequestTooLargeError, 413),
    (e.RateLimitedError, 429),
    (e.RequestError, 400),
    (e.UnknownBackendError, 400),
    (e.CheckpointError, 422),
    (e.DataError, 422),
    (e.ImageTooLargeError, 413),
    (e.NoFaceFoundError, 422),
    (e.FaceTooSmallError, 422),
    (e.ImageTooSmallError, 422),
    (e.ImageError, 415),
    (e.AudioError, 422),
    (e.VideoError, 422),
    (e.ConfigError, 400),
]


def status_for(error: e.EmoStreamError) -> int:
    """The HTTP status for an engine error: the first matching row wins (leaves before roots)."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 400


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}
