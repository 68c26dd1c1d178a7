"""The FastAPI application: the HTTP contract of docs/api.md over the live sessions.

``create_app`` wires the parts: the engine resources (``server.resources``), the sessions' service
(``server.service``, admission in ``server.admission``), the token checks (``server.auth``) and the routes
(``server.routes``, ``server.ws_routes``). Every error is JSON ``{"error": {code, message}}``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from emo_stream.animators import Animator
from emo_stream.errors import EmoStreamError, OverloadedError
from server import routes, ws_routes
from server.auth import holds_control_token_for_path, holds_server_token
from server.avatars import DEFAULT_AVATAR_ID, default_portrait_bytes
from server.config import Config
from server.errors import error_body, internal_error, status_for
from server.resources import EngineResources, build_animator
from server.service import SessionService
from server.shards import ShardRole

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("emo_stream.access")

__all__ = ["create_app", "build_animator", "default_portrait_bytes", "DEFAULT_AVATAR_ID"]

CallNext = Callable[[Request], Awaitable[Response]]


def create_app(config: Config | None = None, vad_factory: Any = None, animator: Animator[Any] | None = None,
               shard: ShardRole | None = None) -> FastAPI:
    """Build the app for ``config`` (defaults when None); ``vad_factory`` injects the VAD and
    ``animator`` a backend made beforehand (so a bad checkpoint fails before serving); ``shard`` makes it
    one of several session processes behind ``server.router``.

    Raises:
        UnsupportedAiortcError: the installed aiortc is not the one ``server.aiortc_compat`` was written for.
    """
    config = config or Config()
    service = SessionService(EngineResources(config, vad_factory, animator), shard)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="emo-stream", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.config = config
    app.state.service = service
    # The last added runs first: the token check wraps the request log, so a refused caller is not logged.
    app.middleware("http")(_request_log)
    app.middleware("http")(_require_token)
    app.add_exception_handler(EmoStreamError, _engine_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, internal_error)
    if routes.CLIENT_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=routes.CLIENT_DIR), name="static")
    app.include_router(routes.router)
    app.include_router(ws_routes.router)
    return app


def _service(request: Request) -> SessionService:
    service: SessionService = request.app.state.service
    return service


async def _request_log(request: Request, call_next: CallNext) -> Response:
    # One id per request: echoed in X-Request-Id and on every log line about it.
    telemetry = _service(request).telemetry
    request_id = request.headers.get("x-request-id") or secrets.token_hex(8)
    request.state.request_id = request_id
    started = time.perf_counter()
    response = await call_next(request)
    response.headers["X-Request-Id"] = request_id
    telemetry.requests.labels(method=request.method, status=str(response.status_code)).inc()
    if response.status_code >= 500:
        telemetry.errors.labels(code="internal", status=str(response.status_code)).inc()
    access_logger.info("%s %s %d %.1f ms", request.method, request.url.path, response.status_code,
                       (time.perf_counter() - started) * 1000,
                       extra={"request_id": request_id, "status": response.status_code})
    return response


async def _require_token(request: Request, call_next: CallNext) -> Response:
    # A session's own control token also opens its control routes.
    service = _service(request)
    if (request.url.path.startswith("/v1") and not holds_server_token(request, service.config.server.token)
            and not holds_control_token_for_path(request, service.sessions)):
        return JSONResponse(error_body("unauthorized", "this server needs a token: "
                                       "Authorization: Bearer T or ?token=T"), status_code=401)
    return await call_next(request)


async def _engine_error(request: Request, exc: EmoStreamError) -> JSONResponse:
    telemetry = _service(request).telemetry
    headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, OverloadedError) else None
    status = status_for(exc)
    telemetry.errors.labels(code=exc.code, status=str(status)).inc()
    if request.url.path == "/v1/avatars" and request.method == "POST":
        telemetry.uploads.labels(outcome=exc.code).inc()
    logger.info("refused %s %s: %s (%s)", request.method, request.url.path, exc.code, exc.message,
                extra={"request_id": getattr(request.state, "request_id", None), "status": status})
    return JSONResponse(error_body(exc.code, exc.message), status_code=status, headers=headers)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return JSONResponse(error_body("bad_request", f"{where}: {first.get('msg', 'invalid request')}"),
                        status_code=400)
