"""Who may call what: the server's token (``server.token``) and each session's control token.

The server token opens all of ``/v1`` (``?token=`` or ``Authorization: Bearer``); a server without one is open.
A session's control token (``X-Control-Token`` or ``?control_token=``) opens that session's own routes, so a
page may drive the session it made without holding the server's token.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from emo_stream.errors import EmoStreamError, UnauthorizedError

if TYPE_CHECKING:
    from server.sessions import Session, SessionRegistry


def bearer(connection: HTTPConnection) -> str | None:
    """The token of an ``Authorization: Bearer T`` header, if there is one."""
    header = connection.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def same_token(given: str | None, expected: str) -> bool:
    """Whether the caller gave ``expected``: a constant-time comparison of any text (``compare_digest`` takes only
    ASCII str); nothing or an empty string never matches."""
    if not given:
        return False
    return secrets.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def holds_server_token(connection: HTTPConnection, token: str | None) -> bool:
    """Whether the caller gives the server's ``token`` (``?token=`` or ``Authorization: Bearer``); any caller
    does when the server has none."""
    if not token:
        return True
    given = connection.query_params.get("token") or bearer(connection)
    return same_token(given, token)


def holds_control_token_for_path(connection: HTTPConnection, sessions: SessionRegistry) -> bool:
    """Whether the caller gives the control token (header or ``?control_token=``) of the session its path
    names (``/v1/sessions/{id}...``): such a caller may pass the server-token check."""
    parts = connection.url.path.split("/")
    if len(parts) < 4 or parts[2] != "sessions":
        return False
    try:
        session = sessions.get(parts[3])
    except EmoStreamError:
        return False
    given = connection.headers.get("x-control-token") or connection.query_params.get("control_token")
    return same_token(given, session.control_token)


def controlled_session(connection: HTTPConnection, session_id: str, sessions: SessionRegistry,
                       server_token: str | None) -> Session:
    """The session ``session_id`` names, if the caller holds its control token (header, or query for
    WebSockets, or ``?token=`` / bearer).

    Raises:
        SessionNotFoundError: no such session.
        UnauthorizedError: the caller does not hold its control token.
    """
    session = sessions.get(session_id)
    given = (connection.headers.get("x-control-token") or connection.query_params.get("control_token")
             or connection.query_params.get("token") or bearer(connection))
    if session.options.name and session_id == session.options.name and session.id != session_id:
        # A named session (the overlay's) is driven by agents that never saw its control
        # token: the server's own token stands for it (and loopback without a token is open).
        if holds_server_token(connection, server_token):
            return session
    if not same_token(given, session.control_token):
        raise UnauthorizedError("this session needs its control_token (X-Control-Token header or "
                                "?control_token=)")
    return session
