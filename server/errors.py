"""One table from engine error classes to HTTP statuses, the JSON error body of docs/api.md, and the answer to an
error nobody expected."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse

from emo_stream import errors as e

logger = logging.getLogger(__name__)

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
    (e.DependencyError, 500),
]


def status_for(error: e.EmoStreamError) -> int:
    """The HTTP status for an engine error: the first matching row wins (leaves before roots)."""
    for cls, status in STATUS_BY_ERROR:
        if isinstance(error, cls):
            return status
    return 400


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not a bad request (the app's and the router's handler for any other exception): the client gets JSON
    with a code and the request id; uvicorn logs the traceback after this line."""
    request_id = getattr(request.state, "request_id", None)
    logger.error("internal error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc,
                 extra={"request_id": request_id, "status": 500})
    return JSONResponse(error_body("internal", "the server failed on this request; it is logged"
                                   + (f" as {request_id}" if request_id else "")), status_code=500)
