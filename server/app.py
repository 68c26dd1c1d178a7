"""The FastAPI application: the HTTP contract of docs/api.md over the live sessions.

Start-up makes one animator and one InferenceWorker (its own thread) for the app; sessions
are aiortc peer connections on the loop. Every error is JSON ``{"error": {code, message}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from emo_stream.animators import Animator, create_animator
from emo_stream.avatar import AvatarLimits
from emo_stream.compositing import parse_background
from emo_stream.config import Config, usable_cores
from emo_stream.errors import (
    EmoStreamError,
    ImageTooLargeError,
    NotFoundError,
    OverloadedError,
    RequestError,
    UnauthorizedError,
)
from server.avatars import DEFAULT_AVATAR_ID, AvatarStore, default_portrait_bytes
from server.codecs import install_portrait_encoders
from server.errors import error_body, status_for
from server.sessions import Session, SessionOptions, SessionRegistry
from server.shards import ShardRole
from server.telemetry import Telemetry
from server.worker import InferenceWorker

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("emo_stream.access")

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

    def __init__(self, config: Config, vad_factory: Any = None, animator: Animator | None = None,
                 shard: ShardRole | None = None) -> None:
        self.config = config
        self.shard = shard
        install_portrait_encoders()
        self.telemetry = Telemetry()
        self.avatars = AvatarStore(config.animator.size, AvatarLimits(
            max_pixels=config.limits.max_image_pixels, max_bytes=config.limits.max_image_bytes,
            min_face_px=config.limits.min_face_px), data_dir=config.server.data_dir)
        self.utilization = 0.0  # the worker's busy fraction, smoothed over a few seconds
        self.cpu_cores = 0.0  # the process's CPU use in cores (worker, encoders, loop), smoothed
        self.late_ratio = 0.0  # late ticks / ticks over all sessions, smoothed
        self.session_cost = 0.0  # cores one running session costs, learned from the measurements
        self.starting = 0  # sessions admitted and not yet running (their offers are being answered)
        self.sessions = SessionRegistry()
        self.animator = animator
        self.worker: InferenceWorker | None = None
        self.vad_factory = vad_factory
        self._lag_task: asyncio.Task | None = None

    async def start(self) -> None:
        # The worker thread and the encoders' threads hold the GIL in short bursts; a 1 ms switch
        # interval (default 5 ms) keeps the event loop, which paces every track, from waiting on them.
        sys.setswitchinterval(0.001)
        if self.animator is None:
            self.animator = build_animator(self.config)
        self.worker = InferenceWorker(self.animator, asyncio.get_running_loop())
        if self.vad_factory is None:
            from server.vad import SileroVAD

            self.vad_factory = SileroVAD
        # Warm up off the loop: the default avatar (and the animator's per-portrait work for it), the VAD model.
        default = await asyncio.to_thread(self.avatars.get, DEFAULT_AVATAR_ID)
        await asyncio.to_thread(self.animator.warm, default)
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
        if self.animator is not None:
            self.animator.close()

    async def _watch_loop_lag(self) -> None:
        loop = asyncio.get_running_loop()
        last_busy, last_time = 0.0, loop.time()
        last_cpu = sum(os.times()[:2])
        last_ticks = last_late = 0
        while True:
            start = loop.time()
            await asyncio.sleep(0.1)
            lag = max(0.0, loop.time() - start - 0.1)
            self.telemetry.loop_lag.set(lag)
            self.telemetry.loop_lag_hist.observe(lag)
            if self.worker is not None:
                self.telemetry.worker_queue_depth.set(self.worker.queue_depth)
                now, busy = loop.time(), self.worker.busy_s
                if now - last_time >= 1.0:
                    sample = min(1.0, (busy - last_busy) / (now - last_time))
                    self.utilization = 0.6 * self.utilization + 0.4 * sample
                    self.telemetry.worker_utilization.set(self.utilization)
                    cpu = sum(os.times()[:2])
                    self.cpu_cores = 0.6 * self.cpu_cores + 0.4 * (cpu - last_cpu) / (now - last_time)
                    settled = [s for s in self.sessions.all() if s.stats.ticks > 3 * s.options.fps]
                    if settled and len(settled) == len(self.sessions):
                        # cost per session, net of what the process burns with no session at all
                        cost = max(0.0, self.cpu_cores - 0.05) / len(settled)
                        self.session_cost = cost if not self.session_cost else 0.8 * self.session_cost + 0.2 * cost
                    ticks = sum(s.stats.ticks for s in self.sessions.all())
                    late = sum(s.stats.frames_late for s in self.sessions.all())
                    if ticks > last_ticks:
                        self.late_ratio = 0.5 * self.late_ratio + 0.5 * (late - last_late) / (ticks - last_ticks)
                    elif not self.sessions.all():
                        self.late_ratio = 0.0
                    last_busy, last_time, last_cpu, last_ticks, last_late = busy, now, cpu, ticks, late
            self.telemetry.track_queue_depth.set(sum(len(s.clock.video) for s in self.sessions.all()))
            for s in self.sessions.all():
                for name, q in (("video", s.clock.video), ("audio", s.clock.audio)):
                    if q.dropped:
                        self.telemetry.frames_dropped.labels(track=name).inc(q.dropped)
                        q.dropped = 0
                if s.mic_buffer is not None and s.mic_buffer.skipped:
                    skipped, s.mic_buffer.skipped = s.mic_buffer.skipped, 0
                    self.telemetry.mic_packets_skipped.inc(skipped)
            if self.worker is not None and self.worker.jobs_skipped:
                skipped, self.worker.jobs_skipped = self.worker.jobs_skipped, 0
                self.telemetry.windows_skipped.inc(skipped)

    def admit(self) -> None:
        """Refuse a session that would make the running ones late (503 + Retry-After). Sessions still
        starting count: a burst of offers is admitted one by one."""
        running = len(self.sessions) + self.starting
        if running >= self.config.server.max_sessions:
            self.telemetry.admissions_refused.labels(reason="limit").inc()
            raise OverloadedError(f"{running} sessions are running or starting, the limit is "
                                  f"{self.config.server.max_sessions}: try again later", retry_after_s=10)
        # Each session costs about utilization / running of the worker: one more must fit.
        if running and self.utilization * (running + 1) / running > 0.85:
            self.telemetry.admissions_refused.labels(reason="load").inc()
            raise OverloadedError(f"the animator is {self.utilization:.0%} busy with {running} sessions; one more "
                                  "would make them late: try again later", retry_after_s=15)
        # The animator is not all of a session's cost: encoders and the network stack run on the
        # same cores. Refuse when the running sessions are already late, or when one more
        # session's share of the process's CPU would not fit on the cores this process may run on.
        # A session process shares the cores with its siblings: it counts its share.
        cores = usable_cores() / (self.shard.count if self.shard else 1)
        # Sessions are counted at the learned cost, or before there is one at the configured estimate, so a
        # burst of offers cannot all slip in while the first of them are still starting.
        cost = self.session_cost or self.config.server.session_cost_cores
        projected = max(self.cpu_cores * (running + 1) / running if running else 0.0, cost * (running + 1))
        if running and (self.late_ratio > 0.05 or projected > 0.9 * cores):
            self.telemetry.admissions_refused.labels(reason="load").inc()
            raise OverloadedError(f"{running} sessions use {self.cpu_cores:.1f} of {cores:g} cores, about {cost:.2f}"
                                  f" each ({self.late_ratio:.0%} of their frames late); one more would make them "
                                  "late: try again later", retry_after_s=15)

    async def create_session(self, offer_sdp: str, offer_type: str, avatar_id: str | None,
                             body: SessionOptionsBody) -> Session:
        a = self.config.animator
        if body.size is not None and body.size != a.size:
            raise RequestError(f"options.size {body.size} is not offered: this server renders {a.size}px")
        if body.fps is not None and body.fps != a.fps:
            raise RequestError(f"options.fps {body.fps} is not offered: this server runs at {a.fps} fps")
        if body.backend is not None and body.backend != a.backend:
            raise RequestError(f"options.backend {body.backend!r} is not offered: this server runs {a.backend!r}")
        if body.audio_source not in ("mic", "pcm"):
            raise RequestError(f"options.audio_source must be 'mic' or 'pcm', got {body.audio_source!r}")
        if body.name is not None and not (0 < len(body.name) <= 64 and body.name.replace("-", "").replace("_", "")
                                              .isalnum()):
            raise RequestError("options.name must be 1-64 letters, digits, '-' or '_'")
        parse_background(body.background)  # a ConfigError (400) names a bad value
        adds_load = not (body.name and self.sessions.by_name(body.name))  # a takeover adds none
        if adds_load:
            self.admit()
            self.starting += 1
        try:
            session = await self._open_session(offer_sdp, offer_type, avatar_id, body)
        finally:
            if adds_load:
                self.starting -= 1
        await session.start()
        return session

    async def _open_session(self, offer_sdp: str, offer_type: str, avatar_id: str | None,
                            body: SessionOptionsBody) -> Session:
        """The admitted offer's session: its portrait loaded, its answer made, registered."""
        a = self.config.animator
        avatar = await asyncio.to_thread(self.avatars.get, avatar_id or DEFAULT_AVATAR_ID)
        previous = self.sessions.by_name(body.name) if body.name else None
        if previous is not None:
            # A page that reloads (an OBS source, a server restart) takes its name back; the
            # agent keeps addressing the session by that name.
            await previous.close(reason="taken over by a new session of the same name")
        options = SessionOptions(size=a.size, fps=a.fps, backend=a.backend, background=body.background,
                                 audio_source=body.audio_source, name=body.name,
                                 seed=body.seed if body.seed is not None else a.seed)
        session = Session(avatar, options, self.worker, self.telemetry, self.config.server.ice_servers,
                          latency_frames=self.animator.latency_frames, vad_factory=self.vad_factory,
                          delay_margin_ticks=max(self.config.server.delay_margin_ticks,
                                                 self.animator.margin_ticks),
                          render_margin_ms=self.config.server.render_margin_ms,
                          id_prefix=self.shard.session_prefix if self.shard else "")
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
        return session


def _bearer(request: Request | WebSocket) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def holds_server_token(request: Request | WebSocket, token: str | None) -> bool:
    """Whether the caller gives the server's ``token`` (``?token=`` or ``Authorization: Bearer``); any caller
    does when the server has none."""
    if not token:
        return True
    given = request.query_params.get("token") or _bearer(request)
    return bool(given) and secrets.compare_digest(given, token)


def _client_dir() -> Path:
    """The web pages: ``$EMO_STREAM_CLIENT_DIR``, else beside the package (a checkout or an
    editable install), else ``./client_web`` (a container's working directory)."""
    import os

    for candidate in (os.environ.get("EMO_STREAM_CLIENT_DIR"), Path(__file__).resolve().parent.parent / "client_web",
                      Path.cwd() / "client_web"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return Path(__file__).resolve().parent.parent / "client_web"


CLIENT_DIR = _client_dir()


def _page(name: str) -> Response:
    path = CLIENT_DIR / name
    if not path.is_file():
        raise NotFoundError(f"{name} is not part of this installation")
    return FileResponse(path, media_type="text/html", headers={"Cache-Control": "no-cache"})


def build_animator(config: Config) -> Animator:
    """The configured backend (loads an emo checkpoint: raises CheckpointError naming a bad part)."""
    a = config.animator
    return create_animator(a.backend, size=a.size, fps=a.fps, motion=a.motion, checkpoint=a.checkpoint,
                           device=a.device)


def create_app(config: Config | None = None, vad_factory: Any = None, animator: Animator | None = None,
               shard: ShardRole | None = None) -> FastAPI:
    """Build the app for ``config`` (defaults when None); ``vad_factory`` injects the VAD and
    ``animator`` a backend made beforehand (so a bad checkpoint fails before serving); ``shard`` makes it
    one of several session processes behind ``server.router``."""
    config = config or Config()
    engine = Engine(config, vad_factory, animator, shard)

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

    @app.middleware("http")
    async def request_log(request: Request, call_next):
        # One id per request: echoed in X-Request-Id and on every log line about it.
        request_id = request.headers.get("x-request-id") or secrets.token_hex(8)
        request.state.request_id = request_id
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-Id"] = request_id
        engine.telemetry.requests.labels(method=request.method, status=str(response.status_code)).inc()
        if response.status_code >= 500:
            engine.telemetry.errors.labels(code="internal", status=str(response.status_code)).inc()
        access_logger.info("%s %s %d %.1f ms", request.method, request.url.path, response.status_code,
                           (time.perf_counter() - started) * 1000,
                           extra={"request_id": request_id, "status": response.status_code})
        return response

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        # A session's own control token also opens its control routes.
        if (request.url.path.startswith("/v1") and not holds_server_token(request, config.server.token)
                and not _holds_control_token(request)):
            return JSONResponse(error_body("unauthorized", "this server needs a token: "
                                           "Authorization: Bearer T or ?token=T"), status_code=401)
        return await call_next(request)

    def _holds_control_token(request: Request) -> bool:
        parts = request.url.path.split("/")
        if len(parts) < 4 or parts[2] != "sessions":
            return False
        try:
            session = engine.sessions.get(parts[3])
        except EmoStreamError:
            return False
        given = request.headers.get("x-control-token") or request.query_params.get("control_token")
        return bool(given) and secrets.compare_digest(given, session.control_token)

    @app.exception_handler(EmoStreamError)
    async def _engine_error(request: Request, exc: EmoStreamError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, OverloadedError) else None
        status = status_for(exc)
        engine.telemetry.errors.labels(code=exc.code, status=str(status)).inc()
        if request.url.path == "/v1/avatars" and request.method == "POST":
            engine.telemetry.uploads.labels(outcome=exc.code).inc()
        logger.info("refused %s %s: %s (%s)", request.method, request.url.path, exc.code, exc.message,
                    extra={"request_id": getattr(request.state, "request_id", None), "status": status})
        return JSONResponse(error_body(exc.code, exc.message), status_code=status, headers=headers)

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

    if CLIENT_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=CLIENT_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def demo_page() -> Response:
        return _page("index.html")

    @app.get("/overlay", include_in_schema=False)
    async def overlay_page() -> Response:
        return _page("overlay.html")

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        engine.telemetry.asyncio_tasks.set(len(asyncio.all_tasks()))
        stats = engine.animator.stats_dict() if engine.animator is not None else {}
        for name, value in stats.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                engine.telemetry.animator_stat.labels(name=name).set(value)
        engine.telemetry.threads.set(threading.active_count())
        return Response(engine.telemetry.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/ice-servers")
    async def ice_servers() -> dict:
        return {"ice_servers": [{"urls": [u]} for u in config.server.ice_servers]}

    @app.get("/v1/avatars")
    async def list_avatars() -> dict:
        return {"avatars": engine.avatars.listing()}

    offer_schema = OfferBody.model_json_schema()
    offer_schema["properties"]["options"] = SessionOptionsBody.model_json_schema()  # inline: no $defs

    @app.post("/v1/sessions", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": {k: v for k, v in offer_schema.items() if k != "$defs"}},
        "application/sdp": {"schema": {"type": "string"}}}}})
    async def create_session(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/sdp":  # WHIP
            sdp = (await request.body()).decode("utf-8", errors="replace")
            query = request.query_params
            options = SessionOptionsBody(**{k: v for k, v in query.items() if k in SessionOptionsBody.model_fields})
            session = await engine.create_session(sdp, "offer", query.get("avatar_id") or query.get("avatar"), options)
            return Response(session.answer.sdp, status_code=201, media_type="application/sdp",
                            headers={"Location": f"/v1/sessions/{session.id}", "X-Control-Token": session.control_token,
                                     "X-Latency-Ms": str(session.latency_ms)})
        try:
            body = OfferBody.model_validate_json(await request.body())
        except ValueError as exc:
            raise RequestError(f"the body must be JSON with sdp and type: {str(exc).splitlines()[0]}") from None
        session = await engine.create_session(body.sdp, body.type, body.avatar_id or body.avatar, body.options)
        return JSONResponse({"session_id": session.id, "sdp": session.answer.sdp, "type": session.answer.type,
                             "control_token": session.control_token,
                             "latency_ms": session.latency_ms}, status_code=201)

    def controlled(request: Request | WebSocket, session_id: str) -> Session:
        """The session, if the caller holds its control token (header, or query for WebSockets)."""
        session = engine.sessions.get(session_id)
        given = (request.headers.get("x-control-token") or request.query_params.get("control_token")
                 or request.query_params.get("token") or _bearer(request))
        if session.options.name and session_id == session.options.name and session.id != session_id:
            # A named session (the overlay's) is driven by agents that never saw its control
            # token: the server's own token stands for it (and loopback without a token is open).
            if holds_server_token(request, config.server.token):
                return session
        if not given or not secrets.compare_digest(given, session.control_token):
            raise UnauthorizedError("this session needs its control_token (X-Control-Token header or "
                                    "?control_token=)")
        return session

    @app.delete("/v1/sessions/{session_id}", status_code=204)
    async def delete_session(session_id: str, request: Request) -> Response:
        await controlled(request, session_id).close(reason="deleted")
        return Response(status_code=204)

    @app.post("/v1/sessions/{session_id}/interrupt", status_code=204)
    async def interrupt(session_id: str, request: Request) -> Response:
        started = time.perf_counter()
        controlled(request, session_id).interrupt()
        engine.telemetry.observe("interrupt", time.perf_counter() - started)
        return Response(status_code=204)

    @app.post("/v1/avatars", status_code=201, openapi_extra={"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}, "name": {"type": "string"}}}}}}})
    async def upload_avatar(request: Request) -> JSONResponse:
        limit = config.limits.max_image_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit + 64 * 1024:
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
        name = str(form.get("name") or Path(upload.filename or "portrait").stem)[:80]
        record = await asyncio.to_thread(engine.avatars.add, data, name)
        engine.telemetry.uploads.labels(outcome="accepted").inc()
        return JSONResponse({"id": record.id, "name": record.name, "width": record.width, "height": record.height,
                             "faces": record.faces, "warnings": record.warnings,
                             "thumbnail_url": f"/v1/avatars/{record.id}/thumbnail"}, status_code=201)

    @app.get("/v1/avatars/{avatar_id}/thumbnail")
    async def avatar_thumbnail(avatar_id: str) -> Response:
        data = await asyncio.to_thread(engine.avatars.thumbnail, avatar_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def _accept_controlled(websocket: WebSocket, session_id: str) -> Session | None:
        """Accept a session's WebSocket if the caller holds the server token (when there is one)
        and the session's control; else close it with 4401/4404 (middleware never sees WebSockets)."""
        if not holds_server_token(websocket, config.server.token):
            await websocket.close(code=4401, reason="unauthorized")
            return None
        try:
            session = controlled(websocket, session_id)
        except EmoStreamError as exc:
            await websocket.close(code=4404 if isinstance(exc, NotFoundError) else 4401, reason=exc.message[:120])
            return None
        await websocket.accept()
        return session

    @app.websocket("/v1/sessions/{session_id}/events")
    async def events(websocket: WebSocket, session_id: str) -> None:
        session = await _accept_controlled(websocket, session_id)
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

    @app.websocket("/v1/sessions/{session_id}/audio")
    async def audio(websocket: WebSocket, session_id: str) -> None:
        session = await _accept_controlled(websocket, session_id)
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
                    if not isinstance(rate, int) or not 8_000 <= rate <= 192_000 or channels not in (1, 2):
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

    return app
