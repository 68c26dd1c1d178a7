"""The WebSocket routes of docs/api.md: a session's events, and an agent's PCM audio into a session.

HTTP middleware never sees WebSockets, so each route checks the server token and the session's control token
itself and closes with 4401 (unauthorized) or 4404 (no such session).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from emo_stream.errors import EmoStreamError, NotFoundError, RateLimitedError, RequestError
from server.auth import holds_server_token
from server.routes import Service, controlled
from server.service import SessionService
from server.sessions import Session

# The PCM an agent may send: sample rates (Hz) and channel counts.
PCM_RATES_HZ = range(8_000, 192_000 + 1)
PCM_CHANNELS = (1, 2)
CLOSE_REASON_CHARS = 120  # a WebSocket close reason is at most 123 bytes

router = APIRouter()


async def _accept_controlled(websocket: WebSocket, service: SessionService, session_id: str) -> Session | None:
    """Accept a session's WebSocket if the caller holds the server token (when there is one) and the session's
    control; else close it with 4401/4404. It is accepted first either way: a close before the accept is an
    HTTP 403, which tells a client nothing."""
    await websocket.accept()
    if not holds_server_token(websocket, service.config.server.token):
        await websocket.close(code=4401, reason="unauthorized")
        return None
    try:
        return controlled(websocket, service, session_id)
    except EmoStreamError as exc:
        await websocket.close(code=4404 if isinstance(exc, NotFoundError) else 4401,
                              reason=exc.message[:CLOSE_REASON_CHARS])
        return None


def _json_object(text: str | None) -> dict | None:
    """A text message as a JSON object, or None (not text, not JSON, not an object, nested too deep)."""
    try:
        value = json.loads(text or "")
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


async def _refuse(websocket: WebSocket, exc: EmoStreamError) -> None:
    await websocket.send_json({"type": "error", "code": exc.code, "message": exc.message})


async def _rate_limited(websocket: WebSocket, session: Session) -> bool:
    """Spend one control message's token; False, with an error answer, when the client is past its rate
    (and a flood closes the socket: 1008, policy violation)."""
    try:
        session.control_rate.take()
    except RateLimitedError as exc:
        if session.control_rate.flooded:
            await websocket.close(code=1008, reason="too many control messages")
            raise WebSocketDisconnect(1008) from None
        await _refuse(websocket, exc)
        return False
    return True


@router.websocket("/v1/sessions/{session_id}/events")
async def events(websocket: WebSocket, session_id: str, service: Service) -> None:
    session = await _accept_controlled(websocket, service, session_id)
    if session is None:
        return
    queue = session.subscribe()

    async def sender() -> None:
        while True:
            event = await queue.get()
            await websocket.send_json(event)
            if event.get("type") == "closed":
                return

    send_task = asyncio.create_task(sender())
    try:
        while not send_task.done():
            receive = asyncio.create_task(websocket.receive())
            done, _ = await asyncio.wait({receive, send_task}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                break
            message = receive.result()
            if message.get("type") == "websocket.disconnect":
                break
            if not await _rate_limited(websocket, session):
                continue
            command = _json_object(message.get("text"))
            if command is not None and command.get("type") == "interrupt":
                session.interrupt()
                await websocket.send_json({"type": "ack", "for": "interrupt"})
            else:
                await _refuse(websocket, RequestError('the events socket takes JSON text {"type": "interrupt"}'))
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        send_task.cancel()
        session.unsubscribe(queue)
        with contextlib.suppress(Exception):
            await websocket.close()


def _pcm_format(command: dict) -> tuple[int, int]:
    """The ``start`` command's (sample_rate, channels); integers only (``2.0`` and ``true`` are not).

    Raises:
        RequestError: a missing or unsupported rate or channel count.
    """
    rate, channels = command.get("sample_rate"), command.get("channels", 1)
    if type(rate) is not int or rate not in PCM_RATES_HZ or type(channels) is not int or channels not in PCM_CHANNELS:
        raise RequestError(f"start needs an integer sample_rate ({PCM_RATES_HZ.start}..{PCM_RATES_HZ.stop - 1}) "
                           "and channels 1 or 2")
    return rate, channels


@router.websocket("/v1/sessions/{session_id}/audio")
async def audio(websocket: WebSocket, session_id: str, service: Service) -> None:
    session = await _accept_controlled(websocket, service, session_id)
    if session is None:
        return
    if session.options.audio_source != "pcm":
        await _refuse(websocket, RequestError("this session takes its audio from the microphone; create it "
                                              "with audio_source 'pcm'"))
        await websocket.close(code=4400)
        return
    try:
        while not session.closed:
            message = await websocket.receive()
            if message.get("type") == "websocket.disconnect":
                break
            if message.get("bytes") is not None:
                try:
                    await session.pcm_push(message["bytes"])
                except EmoStreamError as exc:
                    await _refuse(websocket, exc)
                continue
            if not await _rate_limited(websocket, session):
                continue
            command = _json_object(message.get("text"))
            kind = command.get("type") if command is not None else None
            try:
                if command is None:
                    raise RequestError("text messages are JSON commands: start, flush or interrupt")
                if kind == "start":
                    rate, channels = _pcm_format(command)
                    session.pcm_start(rate, channels)
                    await websocket.send_json({"type": "ack", "for": "start", "sample_rate": rate,
                                               "channels": channels})
                elif kind == "flush":
                    session.pcm_flush()
                    await websocket.send_json({"type": "ack", "for": "flush",
                                               "buffered_s": round(session.pcm_buffered_s, 3)})
                elif kind == "interrupt":
                    session.interrupt()
                    await websocket.send_json({"type": "ack", "for": "interrupt"})
                else:
                    raise RequestError(f"unknown command {str(kind)[:40]!r}: start, flush or interrupt")
            except EmoStreamError as exc:
                await _refuse(websocket, exc)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await websocket.close()
