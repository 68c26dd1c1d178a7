"""The FastAPI application: health, avatars, and JSON errors (the live core builds on it)."""

from __future__ import annotations

import logging
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from emo_stream.config import Config
from emo_stream.errors import EmoStreamError
from server.errors import error_body, status_for

logger = logging.getLogger(__name__)

DEFAULT_AVATAR_ID = "default"


def default_portrait_bytes() -> bytes:
    """The bundled default portrait (scikit-image's public-domain astronaut photo)."""
    return resources.files("emo_stream").joinpath("assets/default.jpg").read_bytes()


def create_app(config: Config | None = None) -> FastAPI:
    """Build the app for ``config`` (defaults when None)."""
    config = config or Config()
    app = FastAPI(title="emo-stream", version="1", docs_url="/docs", redoc_url=None)
    app.state.config = config

    @app.exception_handler(EmoStreamError)
    async def _engine_error(_: Request, exc: EmoStreamError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=status_for(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(error_body("bad_request", f"{where}: {first.get('msg', 'invalid request')}"),
                            status_code=400)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/avatars")
    async def list_avatars() -> dict:
        return {"avatars": [{"id": DEFAULT_AVATAR_ID, "name": "Astronaut (default)", "thumbnail_url": None}]}

    return app
