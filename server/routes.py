"""The HTTP routes of docs/api.md: pages, health, metrics, avatars, and sessions made, deleted, interrupted.

The process's ``SessionService`` is ``app.state.service``; routes take it as a dependency. Errors are raised as
engine errors and answered by the app's handlers (``server.app``) as JSON ``{"error": {code, message}}``.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Annotated

from aiortc import RTCSessionDescription
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.requests import HTTPConnection

from emo_stream.errors import ImageTooLargeError, NotFoundError, RequestError
from server.auth import controlled_session
from server.bodies import OfferBody, SessionOptionsBody
from server.request_limits import FULL_HEADER, MAX_OFFER_BODY_BYTES, MULTIPART_OVERHEAD_BYTES, read_limited
from server.service import SessionService
from server.sessions import Session

AVATAR_NAME_CHARS = 80
THUMBNAIL_MAX_AGE_S = 3600


def _client_dir() -> Path:
    """The web pages: ``$EMO_STREAM_CLIENT_DIR``, else beside the package (a checkout or an
    editable install), else ``./client_web`` (a container's working directory)."""
    for candidate in (os.environ.get("EMO_STREAM_CLIENT_DIR"), Path(__file__).resolve().parent.parent / "client_web",
                      Path.cwd() / "client_web"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path(__file__).resolve().parent.parent / "client_web"


CLIENT_DIR = _client_dir()


async def service_of(connection: HTTPConnection) -> SessionService:
    """The process's ``SessionService`` (the app's ``state.service``); async, so it runs on the loop, not a thread."""
    service: SessionService = connection.app.state.service
    return service


Service = Annotated[SessionService, Depends(service_of)]


def controlled(connection: HTTPConnection, service: SessionService, session_id: str) -> Session:
    """The session, if the caller holds its control token (``server.auth.controlled_session``)."""
    return controlled_session(connection, session_id, service.sessions, service.config.server.token)


router = APIRouter()


def _page(name: str) -> Response:
    path = CLIENT_DIR / name
    if not path.is_file():
        raise NotFoundError(f"{name} is not part of this installation")
    return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/", include_in_schema=False)
async def demo_page() -> Response:
    return _page("index.html")


@router.get("/overlay", include_in_schema=False)
async def overlay_page() -> Response:
    return _page("overlay.html")


@router.get("/healthz")
async def healthz() -> dict:
    return {"status": "ok"}


@router.get("/metrics")
async def metrics(service: Service) -> Response:
    telemetry = service.telemetry
    telemetry.asyncio_tasks.set(len(asyncio.all_tasks()))
    animator = service.resources.animator
    for name, value in (animator.stats_dict() if animator is not None else {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            telemetry.animator_stat.labels(name=name).set(value)
    threads = threading.enumerate()
    telemetry.threads.set(len(threads))
    # asyncio names its default executor's workers "asyncio_N"; aiortc encodes there, so under load the pool
    # grows by a worker or two. That is bounded growth, not a leak, and leak checks subtract it.
    telemetry.pool_threads.set(sum(t.name.startswith("asyncio_") for t in threads))
    return Response(telemetry.render(), media_type="text/plain; version=0.0.4")


@router.get("/v1/ice-servers")
async def ice_servers(service: Service) -> dict:
    return {"ice_servers": [s.for_browser() for s in service.ice_servers]}


@router.get("/v1/avatars")
async def list_avatars(service: Service) -> dict:
    return {"avatars": service.resources.avatars.listing()}


_offer_schema = OfferBody.model_json_schema()
_offer_schema["properties"]["options"] = SessionOptionsBody.model_json_schema()  # inline: no $defs


def _answer_of(session: Session) -> RTCSessionDescription:
    """The answer to the session's offer (``create_session`` returns only sessions that answered)."""
    if session.answer is None:
        raise RuntimeError(f"session {session.id[:8]} has no answer")
    return session.answer


@router.post("/v1/sessions", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    "application/json": {"schema": {k: v for k, v in _offer_schema.items() if k != "$defs"}},
    "application/sdp": {"schema": {"type": "string"}}}}})
async def create_session(request: Request, service: Service) -> Response:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body_bytes = await read_limited(request, MAX_OFFER_BODY_BYTES)
    full = request.headers.get(FULL_HEADER) == "1"  # the router found the server full: check, then 503
    if content_type == "application/sdp":  # WHIP
        sdp = body_bytes.decode("utf-8", errors="replace")
        query = request.query_params
        try:
            options = SessionOptionsBody.model_validate({k: v for k, v in query.items()
                                                         if k in SessionOptionsBody.model_fields})
        except ValueError as exc:
            raise RequestError(f"a query option is not valid: {_first_error(exc)}") from None
        session = await service.create_session(sdp, "offer", query.get("avatar_id") or query.get("avatar"), options,
                                               full=full)
        return Response(_answer_of(session).sdp, status_code=201, media_type="application/sdp",
                        headers={"Location": f"/v1/sessions/{session.id}", "X-Control-Token": session.control_token,
                                 "X-Latency-Ms": str(session.latency_ms)})
    try:
        body = OfferBody.model_validate_json(body_bytes)
    except ValueError as exc:
        raise RequestError(f"the body must be JSON with sdp and type: {_first_error(exc)}") from None
    session = await service.create_session(body.sdp, body.type, body.avatar_id or body.avatar, body.options,
                                           full=full)
    answer = _answer_of(session)
    return JSONResponse({"session_id": session.id, "sdp": answer.sdp, "type": answer.type,
                         "control_token": session.control_token,
                         "latency_ms": session.latency_ms}, status_code=201)


def _first_error(exc: ValueError) -> str:
    """A validation error's first line, short enough for a JSON error message."""
    lines = str(exc).splitlines()
    return " ".join(lines[:3])[:200] if lines else type(exc).__name__


@router.delete("/v1/sessions/{session_id}", status_code=204)
async def delete_session(session_id: str, request: Request, service: Service) -> Response:
    await controlled(request, service, session_id).close(reason="deleted")
    return Response(status_code=204)


@router.post("/v1/sessions/{session_id}/interrupt", status_code=204)
async def interrupt(session_id: str, request: Request, service: Service) -> Response:
    started = time.perf_counter()
    session = controlled(request, service, session_id)
    session.control_rate.take()  # 429 rate_limited past the session's control rate
    session.interrupt()
    service.telemetry.observe("interrupt", time.perf_counter() - started)
    return Response(status_code=204)


@router.post("/v1/avatars", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "name": {"type": "string"}}}}}}})
async def upload_avatar(request: Request, service: Service) -> JSONResponse:
    limit = service.config.limits.max_image_bytes
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD_BYTES:
        raise ImageTooLargeError(f"upload is {int(length) / 2**20:.1f} MB; the limit is {limit / 2**20:.0f} MB")
    try:
        form = await request.form(max_files=1, max_fields=4)
    except Exception as exc:  # malformed multipart
        raise RequestError(f"send the photo as multipart/form-data in a field named 'file' ({exc})") from None
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise RequestError("send the photo as multipart/form-data in a field named 'file'")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLargeError(f"upload is over the {limit / 2**20:.0f} MB limit")
    name = str(form.get("name") or Path(upload.filename or "portrait").stem)[:AVATAR_NAME_CHARS]
    record = await asyncio.to_thread(service.resources.avatars.add, data, name)
    service.telemetry.uploads.labels(outcome="accepted").inc()
    return JSONResponse({"id": record.id, "name": record.name, "width": record.width, "height": record.height,
                         "faces": record.faces, "warnings": record.warnings,
                         "thumbnail_url": f"/v1/avatars/{record.id}/thumbnail"}, status_code=201)


@router.get("/v1/avatars/{avatar_id}/thumbnail")
async def avatar_thumbnail(avatar_id: str, service: Service) -> Response:
    data = await asyncio.to_thread(service.resources.avatars.thumbnail, avatar_id)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": f"max-age={THUMBNAIL_MAX_AGE_S}"})
