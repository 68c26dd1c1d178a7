"""The FastAPI application: the HTTP contract of ../shared/API.md over the live sessions.

Start-up makes one animator and one InferenceWorker (its own thread) for the app; sessions
are aiortc peer connections on the loop. Every error is JSON ``{"error": {code, message}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from emo_stream.animators import create_animator
from emo_stream.avatar import AvatarLimits
from emo_stream.config import Config
from emo_stream.errors import EmoStreamError, OverloadedError, RequestError
from server.avatars import DEFAULT_AVATAR_ID, AvatarStore, default_portrait_bytes
from server.errors import error_body, status_for
from server.sessions import Session, SessionOptions, SessionRegistry
from server.telemetry import Telemetry
from server.worker import InferenceWorker

logger = logging.getLogger(__name__)

__all__ = ["create_app", "default_portrait_bytes", "DEFAULT_AVATAR_ID"]


class SessionOptionsBody(BaseModel):
    size: int | None = None
    fps: int | None = None
    backend: str | None = None
    background: str = "original"
    audio_source: str = "mic"
    name: str | None = None
    seed: int | None = None


class OfferBody(BaseModel):
    sdp: str
    type: str = "offer"
    avatar_id: str | None = None
    avatar: str | None = None
    options: SessionOptionsBody = Field(default_factory=SessionOptionsBody)


class Engine:
    """What the app owns: the animator, the worker, avatars, sessions and telemetry."""

    def __init__(self, config: Config, vad_factory: Any = None) -> None:
        self.config = config
        self.telemetry = Telemetry()
        self.avatars = AvatarStore(config.animator.size, AvatarLimits(
            max_pixels=config.limits.max_image_pixels, max_bytes=config.limits.max_image_bytes,
            min_face_px=config.limits.min_face_px))
        self.sessions = SessionRegistry()
        self.animator = None
        self.worker: InferenceWorker | None = None
        self.vad_factory = vad_factory
        self._lag_task: asyncio.Task | None = None

    async def start(self) -> None:
        a = self.config.animator
        self.animator = create_animator(a.backend, size=a.size, fps=a.fps, motion=a.motion,
                                        checkpoint=a.checkpoint, device=a.device)
        self.worker = InferenceWorker(self.animator, asyncio.get_running_loop())
        if self.vad_factory is None:
            from server.vad import SileroVAD

            self.vad_factory = SileroVAD
        # Warm up off the loop: the default avatar, the VAD model.
        await asyncio.to_thread(self.avatars.get, DEFAULT_AVATAR_ID)
        await asyncio.to_thread(self.vad_factory)
        self._lag_task = asyncio.create_task(self._watch_loop_lag(), name="loop-lag")

    async def stop(self) -> None:
        for session in self.sessions.all():
            await session.close(reason="server shutting down")
        if self._lag_task is not None:
            self._lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lag_task
        if self.worker is not None:
            await asyncio.to_thread(self.worker.stop)

    async def _watch_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(0.1)
            lag = max(0.0, loop.time() - start - 0.1)
            self.telemetry.loop_lag.set(lag)
            self.telemetry.loop_lag_hist.observe(lag)
            if self.worker is not None:
                self.telemetry.worker_queue_depth.set(self.worker.queue_depth)
            self.telemetry.track_queue_depth.set(sum(len(s.clock.video) for s in self.sessions.all()))

    async def create_session(self, offer_sdp: str, offer_type: str, avatar_id: str | None,
                             body: SessionOptionsBody) -> Session:
        a = self.config.animator
        if body.size is not None and body.size != a.size:
            raise RequestError(f"options.size {body.size} is not offered: this server renders {a.size}px")
        if body.fps is not None and body.fps != a.fps:
            raise RequestError(f"options.fps {body.fps} is not offered: this server runs at {a.fps} fps")
        if body.backend is not None and body.backend != a.backend:
            raise RequestError(f"options.backend {body.backend!r} is not offered: this server runs {a.backend!r}")
        if body.audio_source not in ("mic",):
            raise RequestError(f"options.audio_source {body.audio_source!r} is not supported here: use 'mic'")
        if body.background != "original":
            raise RequestError("options.background other than 'original' is not supported by this server yet")
        if len(self.sessions) >= self.config.server.max_sessions:
            raise OverloadedError(f"{len(self.sessions)} sessions are running, the limit is "
                                  f"{self.config.server.max_sessions}: try again later", retry_after_s=10)
        avatar = await asyncio.to_thread(self.avatars.get, avatar_id or DEFAULT_AVATAR_ID)
        options = SessionOptions(size=a.size, fps=a.fps, backend=a.backend, background=body.background,
                                 audio_source=body.audio_source, name=body.name,
                                 seed=body.seed if body.seed is not None else a.seed)
        session = Session(avatar, options, self.worker, self.telemetry, self.config.server.ice_servers,
                          latency_frames=self.animator.latency_frames, vad_factory=self.vad_factory)
        try:
            answer = await session.accept(offer_sdp, offer_type)
        except BaseException:
            await session.close(reason="offer refused")
            raise
        session.answer = answer
        self.sessions.add(session)
        self.telemetry.sessions_total.inc()
        self.telemetry.sessions_active.set(len(self.sessions))

        def forget(s: Session, reason: str) -> None:
            self.sessions.remove(s)
            self.telemetry.sessions_active.set(len(self.sessions))
            if reason in ("silent peer", "no media", "connection failed"):
                self.telemetry.sessions_reaped.labels(reason=reason).inc()

        session.on_close.append(forget)
        await session.start()
        return session


def create_app(config: Config | None = None, vad_factory: Any = None) -> FastAPI:
    """Build the app for ``config`` (defaults when None); ``vad_factory`` injects the VAD."""
    config = config or Config()
    engine = Engine(config, vad_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await engine.start()
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="emo-stream", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.config = config
    app.state.engine = engine

    @app.exception_handler(EmoStreamError)
    async def _engine_error(_: Request, exc: EmoStreamError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, OverloadedError) else None
        return JSONResponse(error_body(exc.code, exc.message), status_code=status_for(exc), headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return JSONResponse(error_body("bad_request", f"{where}: {first.get('msg', 'invalid request')}"),
                            status_code=400)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        engine.telemetry.asyncio_tasks.set(len(asyncio.all_tasks()))
        engine.telemetry.threads.set(threading.active_count())
        return Response(engine.telemetry.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/ice-servers")
    async def ice_servers() -> dict:
        return {"ice_servers": [{"urls": [u]} for u in config.server.ice_servers]}

    @app.get("/v1/avatars")
    async def list_avatars() -> dict:
        return {"avatars": engine.avatars.ids()}

    @app.post("/v1/sessions", status_code=201)
    async def create_session(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/sdp":  # WHIP
            sdp = (await request.body()).decode("utf-8", errors="replace")
            query = request.query_params
            options = SessionOptionsBody(**{k: v for k, v in query.items() if k in SessionOptionsBody.model_fields})
            session = await engine.create_session(sdp, "offer", query.get("avatar_id") or query.get("avatar"), options)
            return Response(session.answer.sdp, status_code=201, media_type="application/sdp",
                            headers={"Location": f"/v1/sessions/{session.id}", "X-Control-Token": session.control_token,
                                     "X-Latency-Ms": str(session.delay_ticks * 1000 // session.options.fps)})
        try:
            body = OfferBody.model_validate_json(await request.body())
        except ValueError as exc:
            raise RequestError(f"the body must be JSON with sdp and type: {str(exc).splitlines()[0]}") from None
        session = await engine.create_session(body.sdp, body.type, body.avatar_id or body.avatar, body.options)
        return JSONResponse({"session_id": session.id, "sdp": session.answer.sdp, "type": session.answer.type,
                             "control_token": session.control_token,
                             "latency_ms": session.delay_ticks * 1000 // session.options.fps}, status_code=201)

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    async def delete_session(session_id: str) -> Response:
        session = engine.sessions.get(session_id)
        await session.close(reason="deleted")
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/interrupt", status_code=204)
    async def interrupt(session_id: str) -> Response:
        started = time.perf_counter()
        engine.sessions.get(session_id).interrupt()
        engine.telemetry.observe("interrupt", time.perf_counter() - started)
        return Response(status_code=204)

    return app
