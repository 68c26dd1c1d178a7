"""The server's error answers as the engine's exceptions: one class per ``error.code`` of docs/api.md.

A 4xx or 5xx JSON body ``{"error": {"code", "message"}}`` becomes the ``emo_stream.errors`` class with that code
(``avatar_not_found`` -> ``AvatarNotFoundError``), so an agent catches the same exceptions whether it runs the
engine in-process or talks to a server. Codes only a server gives have their classes here.
"""

from __future__ import annotations

import json
from typing import Any

from emo_stream import errors as e


class ServerError(e.EmoStreamError):
    """The server failed on a request (a 5xx that is not a refusal); it logged it with the request id."""

    code = "internal"


class UnavailableError(ServerError):
    """The server's session process that should answer is restarting: try again in a few seconds."""

    code = "unavailable"


class ConnectionFailedError(e.EmoStreamError):
    """The server could not be reached, or the session's media connection did not come up or was lost."""

    code = "connection_failed"


class SessionClosedError(e.EmoStreamError):
    """The session has ended (``reason`` says why: deleted, reaped, taken over, the peer gone)."""

    code = "session_closed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def _by_code() -> dict[str, type[e.EmoStreamError]]:
    """Each code's class: where two classes share a code, the one the server raises for it wins."""
    found: dict[str, type[e.EmoStreamError]] = {}
    pending: list[type[e.EmoStreamError]] = [e.EmoStreamError]
    while pending:
        cls = pending.pop(0)
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    found["not_found"] = e.NotFoundError  # a route; InputNotFoundError is the CLI's missing file
    found["method_not_allowed"] = e.RequestError
    for cls in (ServerError, UnavailableError, ConnectionFailedError, SessionClosedError):
        found[cls.code] = cls
    return found


ERROR_BY_CODE = _by_code()


def error_from_answer(status: int, body: bytes | str, request_id: str | None = None,
                      retry_after: str | None = None) -> e.EmoStreamError:
    """The exception for an error answer: its code's class, else a ``RequestError`` (4xx) or ``ServerError``.

    The exception carries ``status`` and ``request_id`` (the server's log lines about it carry the same id).
    """
    code, message = None, None
    try:
        error: Any = json.loads(body).get("error")
        if isinstance(error, dict):
            code, message = error.get("code"), error.get("message")
    except (ValueError, AttributeError):
        pass
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    message = str(message or text.strip()[:200] or f"HTTP {status}")
    exc = error_for(code, message, e.RequestError if 400 <= status < 500 else ServerError, retry_after)
    exc.status = status  # type: ignore[attr-defined]
    exc.request_id = request_id  # type: ignore[attr-defined]
    return exc


def error_for(code: str | None, message: str, fallback: type[e.EmoStreamError] = e.RequestError,
              retry_after: str | None = None) -> e.EmoStreamError:
    """The exception for an error ``code`` of docs/api.md (an HTTP answer's or a WebSocket message's), or
    ``fallback`` for a code this client does not know or none."""
    cls = ERROR_BY_CODE.get(str(code)) if code is not None else None
    cls = cls or fallback
    if cls is e.OverloadedError:
        return e.OverloadedError(message, retry_after_s=_seconds(retry_after))
    if cls is SessionClosedError:
        return SessionClosedError(message)
    return cls(message)


def _seconds(value: str | None, default: int = 5) -> int:
    try:
        return max(0, int(value)) if value is not None else default
    except ValueError:
        return default
