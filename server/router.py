"""The front of a server with several session processes (``server.processes`` > 1; ``server.shards``).

It owns no session: it forwards each request, unchanged (headers, token, body), to the child that owns it.

- ``POST /v1/sessions``: the child with the fewest sessions (the server's ``max_sessions`` counts all
  children together); a child that answers 503 (busy) passes the offer to the next. A named session goes
  back to the child that has that name, so a reloading overlay takes its own session over.
- ``/v1/sessions/{id}/...`` and its WebSockets: the child in the id (``s<k>-...``); a session addressed by
  name: the child that has the name.
- ``POST /v1/avatars``: every child (the same bytes give the same id everywhere).
- ``GET /metrics``: the children's metrics added up (loop lag and worker utilisation: the worst child),
  plus the router's own ``emo_stream_session_processes`` and restarts.
- anything else (pages, avatars, ICE servers): the first child alive.

A child that exits is started again (its sessions are gone: their peers see the connection end).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable
from contextlib import asynccontextmanager
from urllib.parse import parse_qs

import httpx
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emo_stream.errors import (
    EmoStreamError,
    ImageTooLargeError,
    OverloadedError,
    RequestTooLargeError,
    UnauthorizedError,
)
from server.auth import holds_server_token
from server.config import Config
from server.errors import error_body, internal_error, status_for
from server.request_limits import FULL_HEADER, MAX_OFFER_BODY_BYTES, MULTIPART_OVERHEAD_BYTES, read_limited
from server.shards import Shard, ShardPool, shard_of_session

logger = logging.getLogger(__name__)

# Headers that describe one hop, not the message (RFC 9110 §7.6.1), and those httpx sets itself.
_HOP_HEADERS = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                "transfer-encoding", "upgrade", "host", "content-length", "content-encoding"}
# Gauges where the sum over children means nothing: the worst child is reported.
_MAX_GAUGES = {"emo_stream_loop_lag_seconds", "emo_stream_worker_utilization"}
WATCH_INTERVAL_S = 0.5
SMALL_BODY_BYTES = 64 * 1024  # a session's own routes (interrupt, delete) carry no body to speak of


class ShardUnavailableError(EmoStreamError):
    """The session process that should answer is not running (it is being started again)."""

    code = "unavailable"


def merge_metrics(texts: Iterable[str]) -> str:
    """Prometheus text of several processes as one: samples with the same name and labels added up
    (``_MAX_GAUGES``: the largest), each family's HELP / TYPE once, in first-seen order."""
    headers: dict[str, list[str]] = {}
    samples: dict[str, dict[str, float]] = {}
    for text in texts:
        family = None
        for line in text.splitlines():
            if not line.strip():
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                    family = parts[2]
                    lines = headers.setdefault(family, [])
                    if line not in lines and len(lines) < 2:
                        lines.append(line)
                    samples.setdefault(family, {})
                continue
            key, _, value = line.rpartition(" ")
            try:
                number = float(value)
            except ValueError:
                continue
            fam = family if family is not None else key.split("{")[0]
            bucket = samples.setdefault(fam, {})
            if key in bucket:
                # Timestamps (``*_created``) and the _MAX_GAUGES do not add up.
                worst = fam in _MAX_GAUGES or key.split("{")[0].endswith("_created")
                bucket[key] = max(bucket[key], number) if worst else bucket[key] + number
            else:
                bucket[key] = number
    out = []
    for fam, bucket in samples.items():
        out.extend(headers.get(fam, []))
        out.extend(f"{key} {value!r}" for key, value in bucket.items())
    return "\n".join(out) + "\n"


def _sessions_active(metrics_text: str) -> int:
    for line in metrics_text.splitlines():
        if line.startswith("emo_stream_sessions_active "):
            return int(float(line.split()[1]))
    return 0


def create_router_app(config: Config, pool: ShardPool) -> FastAPI:
    """The router over ``pool`` (started by the app's lifespan, stopped with it).

    Raises:
        UnsupportedAiortcError: the session processes would refuse the installed aiortc: refused here, once,
            before any is spawned.
    """
    from server.aiortc_compat import check_aiortc_version

    check_aiortc_version()
    names: dict[str, int] = {}  # session name -> the child that has it
    starting: dict[int, int] = {}  # child -> offers it is answering now
    opened: dict[int, int] = {}  # child -> sessions it has opened through this router, ever
    client_box: dict[str, httpx.AsyncClient] = {}

    async def watch() -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if any(s.process is not None and not s.alive for s in pool.shards):
                restarted = pool.respawn_dead()  # on the loop's (main) thread: see ShardPool
                for name, index in list(names.items()):
                    if index in restarted:
                        del names[name]
                await asyncio.to_thread(pool.wait_restarted, restarted)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        pool.spawn_all()  # on the loop's (main) thread: see ShardPool
        await asyncio.to_thread(pool.wait_ready)
        client_box["client"] = httpx.AsyncClient(timeout=httpx.Timeout(60.0), trust_env=False)
        watcher = asyncio.create_task(watch(), name="session-process-watch")
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await client_box["client"].aclose()
            await asyncio.to_thread(pool.stop)

    app = FastAPI(title="emo-stream", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.config = config
    app.state.pool = pool

    @app.exception_handler(EmoStreamError)
    async def _engine_error(_: Request, exc: EmoStreamError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after_s)} if isinstance(exc, OverloadedError) else None
        status = 503 if isinstance(exc, ShardUnavailableError) else status_for(exc)
        return JSONResponse(error_body(exc.code, exc.message), status_code=status, headers=headers)

    app.add_exception_handler(Exception, internal_error)

    def alive() -> list[Shard]:
        return [s for s in pool.shards if s.alive]

    def first_alive() -> Shard:
        shards = alive()
        if not shards:
            raise ShardUnavailableError("no session process is running; try again in a few seconds")
        return shards[0]

    max_body = config.limits.max_image_bytes + MULTIPART_OVERHEAD_BYTES  # the largest request a child takes

    async def forward(shard: Shard, request: Request, body: bytes | None = None,
                      extra_headers: list[tuple[str, str]] | None = None) -> Response:
        headers = [(k, v) for k, v in request.headers.items()
                   if k.lower() not in _HOP_HEADERS and k.lower() != FULL_HEADER] + (extra_headers or [])
        url = shard.base_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if body is None:  # a session's own routes (interrupt, delete, status) carry no real body
            body = await read_limited(request, SMALL_BODY_BYTES)
        try:
            answer = await client_box["client"].request(request.method, url, headers=headers, content=body)
        except httpx.TransportError as exc:
            raise ShardUnavailableError(f"session process {shard.index} did not answer ({type(exc).__name__}); "
                                        "try again in a few seconds") from None
        out_headers = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_HEADERS}
        return Response(answer.content, status_code=answer.status_code, headers=out_headers)

    def owner(session_key: str) -> Shard:
        """The child that holds ``session_key`` (an id or a name); an unknown key goes to the first child,
        whose 404 is the answer."""
        index = names.get(session_key)
        if index is None:
            index = shard_of_session(session_key)
        if index is None or index >= pool.count:
            return first_alive()
        shard = pool.shards[index]
        if not shard.alive:
            raise ShardUnavailableError(f"the session process of session {session_key!r} is restarting: "
                                        "the session has ended")
        return shard

    async def child_metrics(shards: list[Shard]) -> list[str | None]:
        """Each child's /metrics text (None: it did not answer)."""
        async def one(shard: Shard) -> str | None:
            try:
                return (await client_box["client"].get(shard.base_url + "/metrics", timeout=5)).text
            except httpx.TransportError:
                return None

        return list(await asyncio.gather(*(one(s) for s in shards)))

    async def loads() -> list[tuple[int, Shard]]:
        shards = alive()
        before = dict(opened)
        texts = await child_metrics(shards)
        # Offers still being answered count too, and so do sessions opened while the children were asked (their
        # answers may predate them): a burst of offers spreads instead of all seeing the same load.
        counted = [(_sessions_active(text) + starting.get(shard.index, 0)
                    + opened.get(shard.index, 0) - before.get(shard.index, 0), shard)
                   for shard, text in zip(shards, texts, strict=True) if text is not None]
        return sorted(counted, key=lambda pair: (pair[0], pair[1].index))

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        running = len(alive())
        if running < pool.count:
            return JSONResponse(error_body("unavailable", f"{running} of {pool.count} session processes running"),
                                status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        texts = [text for text in await child_metrics(alive()) if text is not None]
        own = ("# HELP emo_stream_session_processes Session processes running\n"
               "# TYPE emo_stream_session_processes gauge\n"
               f"emo_stream_session_processes {float(len(alive()))!r}\n"
               "# HELP emo_stream_session_process_restarts_total Session processes started again after exiting\n"
               "# TYPE emo_stream_session_process_restarts_total counter\n"
               f"emo_stream_session_process_restarts_total {float(sum(s.restarts for s in pool.shards))!r}\n")
        return Response(merge_metrics([*texts, own]), media_type="text/plain; version=0.0.4")

    def require_server_token(request: Request) -> None:
        """Refuse (401) a caller without the server's token before any of its body is read: an upload or an
        offer needs the server token (a session's control token opens only that session's routes)."""
        if not holds_server_token(request, config.server.token):
            raise UnauthorizedError("this server needs a token: Authorization: Bearer T or ?token=T")

    @app.post("/v1/sessions")
    async def create_session(request: Request) -> Response:
        require_server_token(request)
        body = await read_limited(request, MAX_OFFER_BODY_BYTES)
        name = _session_name(request, body)
        if name is not None and name in names and pool.shards[names[name]].alive:
            return await forward(pool.shards[names[name]], request, body)  # a takeover adds no load
        ranked = await loads()
        if not ranked:
            raise ShardUnavailableError("no session process is running; try again in a few seconds")
        running = sum(n for n, _ in ranked)
        if running >= config.server.max_sessions:
            # The least loaded child checks the request, then refuses it: a bad request gets its 4xx, not 503.
            return await forward(ranked[0][1], request, body, extra_headers=[(FULL_HEADER, "1")])
        answer = None
        for _, shard in ranked:
            starting[shard.index] = starting.get(shard.index, 0) + 1
            try:
                answer = await forward(shard, request, body)
            finally:
                starting[shard.index] -= 1
            if answer.status_code != 503:
                if answer.status_code == 201:
                    opened[shard.index] = opened.get(shard.index, 0) + 1
                    if name is not None:
                        names[name] = shard.index
                return answer
        if answer is None:  # unreachable: ranked is not empty, so some process answered
            raise ShardUnavailableError("no session process answered; try again in a few seconds")
        return answer

    @app.api_route("/v1/sessions/{session_key}", methods=["GET", "DELETE"])
    async def session_route(session_key: str, request: Request) -> Response:
        return await forward(owner(session_key), request)

    @app.api_route("/v1/sessions/{session_key}/{action}", methods=["GET", "POST", "DELETE"])
    async def session_action(session_key: str, action: str, request: Request) -> Response:
        return await forward(owner(session_key), request)

    @app.post("/v1/avatars")
    async def upload_avatar(request: Request) -> Response:
        require_server_token(request)
        try:
            body = await read_limited(request, max_body)
        except RequestTooLargeError:
            raise ImageTooLargeError(f"the upload is over the {config.limits.max_image_bytes / 2**20:.0f} MB "
                                     "limit") from None
        primary = first_alive()
        first = await forward(primary, request, body)
        if first.status_code == 201:
            for shard in (s for s in alive() if s is not primary):
                copy = await forward(shard, request, body)
                if copy.status_code != 201:
                    logger.error("session process %d refused an avatar its sibling accepted: %s", shard.index,
                                 copy.body[:200])
        return first

    @app.websocket("/v1/sessions/{session_key}/{channel}")
    async def session_socket(websocket: WebSocket, session_key: str, channel: str) -> None:
        # Accepted before any refusal: a close before the accept is an HTTP 403, with no code for the client.
        await websocket.accept()
        try:
            shard = owner(session_key)
        except ShardUnavailableError as exc:
            await websocket.close(code=4503, reason=exc.message[:120])
            return
        query = websocket.url.query
        url = f"ws://127.0.0.1:{shard.port}/v1/sessions/{session_key}/{channel}" + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in websocket.headers.items()
                   if k.lower() in ("authorization", "x-control-token", "x-request-id")]
        try:
            upstream = await ws_connect(url, additional_headers=headers, open_timeout=10, max_size=None)
        except InvalidStatus:
            await websocket.close(code=4404, reason="refused by the session's process")
            return
        except (OSError, TimeoutError):
            await websocket.close(code=4503, reason="the session's process did not answer")
            return
        await _pump(websocket, upstream)

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
    async def anything_else(path: str, request: Request) -> Response:
        return await forward(first_alive(), request)

    return app


def _session_name(request: Request, body: bytes) -> str | None:
    """The ``options.name`` of an offer (JSON body, or the WHIP form's query)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/sdp":
        values = parse_qs(request.url.query).get("name")
        return values[0] if values else None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    options = data.get("options") if isinstance(data, dict) else None
    name = options.get("name") if isinstance(options, dict) else None
    return name if isinstance(name, str) else None


async def _pump(client: WebSocket, upstream) -> None:
    """Messages both ways until either side closes; the other side is closed with it."""

    async def down() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in upstream:
                if isinstance(message, bytes):
                    await client.send_bytes(message)
                else:
                    await client.send_text(message)

    async def up() -> None:
        while True:
            message = await client.receive()
            if message.get("type") == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(Exception):
            await upstream.close()
        # The child's close code and reason (4400: a microphone session refusing PCM, ...) reach the caller;
        # a child that vanished without a close (it crashed: 1006) is a server error, 1011.
        code = {None: 1011, 1005: 1000, 1006: 1011}.get(upstream.close_code, upstream.close_code)
        with contextlib.suppress(Exception):
            await client.close(code=code, reason=upstream.close_reason or "")
