"""The WebSocket routes of docs/api.md: a session's events, and an agent's PCM audio into a session.

HTTP middleware never sees WebSockets, so each route checks the server token and the session's control token
itself and closes with 4401 (unauthorized) or 4404 (no such session).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from emo_stream.errors import EmoStreamError, NotFoundError
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
    """Accept a session's WebSocket if the caller holds the server token (when there is one)
    and the session's control; else close it with 4401/4404 (middleware never sees WebSockets)."""
    if not holds_server_token(websocket, service.config.server.token):
        await websocket.close(code=4401, reason="unauthorized")
        return None
    try:
        session = controlled(websocket, service, session_id)
    except EmoStreamError as exc:
        await websocket.close(code=4404 if isinstance(exc, NotFoundError) else 4401,
                              reason=exc.message[:CLOSE_REASON_CHARS])
        return None
    await websocket.accept()
    return session


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
            receive = asyncio.create_task(websocket.receive_text())
            done, _ = await asyncio.wait({receive, send_task}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                break
            try:
                message = json.loads(receive.result())
            except ValueError:
                await websocket.send_json({"type": "error", "message": "messages are JSON"})
                continue
            if isinstance(message, dict) and message.get("type") == "interrupt":
                session.interrupt()
                await websocket.send_json({"type": "ack", "for": "interrupt"})
            else:
                await websocket.send_json({"type": "error", "message": "unknown message; send {\"type\": "
                                                                       "\"interrupt\"}"})
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        send_task.cancel()
        session.unsubscribe(queue)
        with contextlib.suppress(Exception):
            await websocket.close()


@router.websocket("/v1/sessions/{session_id}/audio")
async def audio(websocket: WebSocket, session_id: str, service: Service) -> None:
    session = await _accept_controlled(websocket, service, session_id)
    if session is None:
        return
    if session.options.audio_source != "pcm":
        await websocket.send_json({"type": "error", "message": "this session takes its audio from the "
                                                               "microphone; create it with audio_source 'pcm'"})
        await websocket.close(code=4400)
        return
    try:
        while not session.closed:
            message = await websocket.receive()
            if message.get("type") == "websocket.disconnect":
                break
            if message.get("bytes") is not None:
                try:
                    session.pcm_push(message["bytes"])
                except EmoStreamError as exc:
                    await websocket.send_json({"type": "error", "code": exc.code, "message": exc.message})
                continue
            try:
                command = json.loads(message.get("text") or "")
                kind = command.get("type")
            except (ValueError, AttributeError):
                await websocket.send_json({"type": "error", "message": "text messages are JSON commands"})
                continue
            if kind == "start":
                rate, channels = command.get("sample_rate"), command.get("channels", 1)
                if not isinstance(rate, int) or rate not in PCM_RATES_HZ or channels not in PCM_CHANNELS:
                    await websocket.send_json({"type": "error", "message": "start needs sample_rate "
                                               "(8000..192000) and channels (1 or 2)"})
                    continue
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
                await websocket.send_json({"type": "error", "message": f"unknown command {kind!r}"})
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await websocket.close()
