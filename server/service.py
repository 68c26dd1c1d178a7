"""The live sessions of one server process: admitted by load, opened on the engine resources, watched.

Sessions are aiortc peer connections on the event loop; the engine resources (``server.resources``) are shared
by all of them. A watcher samples the loop's lag and the process's load every 100 ms for telemetry and for
admission (``server.admission``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from emo_stream.avatar import Avatar
from emo_stream.compositing import parse_background
from emo_stream.config import usable_cores
from emo_stream.errors import OverloadedError, RequestError
from server.admission import AdmissionLimits, ServerLoad, decide
from server.avatars import DEFAULT_AVATAR_ID
from server.bodies import SessionOptionsBody
from server.config import Config
from server.ice_servers import parse_ice_servers
from server.load import SETTLED_S, LoadMeter, LoadSample
from server.offer_check import check_offer
from server.resources import EngineResources
from server.sessions import Session, SessionOptions, SessionRegistry
from server.shards import ShardRole
from server.telemetry import Telemetry

# How often the watcher wakes: the loop's lag is how late it wakes.
WATCH_INTERVAL_S = 0.1
# Close reasons that mean the server reaped a session (counted by reason).
REAPED_REASONS = ("silent peer", "no media", "connection failed")


def _process_cpu_s() -> float:
    return sum(os.times()[:2])


class SessionService:
    """Admits, opens and watches the sessions of one server process.

    Attributes:
        resources: the engine resources the sessions share.
        shard: this process's place among several session processes, or None when it is the only one.
        sessions: the open sessions.
        starting: sessions admitted and not yet running (their offers are being answered).
        load: the smoothed load admission decides on.
    """

    def __init__(self, resources: EngineResources, shard: ShardRole | None = None) -> None:
        self.resources = resources
        self.shard = shard
        self.sessions = SessionRegistry()
        self.starting = 0
        self.load = LoadMeter(start_time_s=0.0, start_cpu_s=0.0)  # restarted on the loop's clock by start()
        self.ice_servers = parse_ice_servers(resources.config.server.ice_servers)  # (the config checked them)
        self._watch_task: asyncio.Task[None] | None = None

    @property
    def config(self) -> Config:
        return self.resources.config

    @property
    def telemetry(self) -> Telemetry:
        return self.resources.telemetry

    async def start(self) -> None:
        """Start the engine resources, then the load watcher."""
        await self.resources.start()
        self._watch_task = asyncio.create_task(self._watch(), name="loop-lag")

    async def stop(self) -> None:
        """Close every session, stop the watcher, then the engine resources."""
        for session in self.sessions.all():
            await session.close(reason="server shutting down")
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        await self.resources.stop()

    def _current_load(self) -> ServerLoad:
        load = self.load
        return ServerLoad(sessions=len(self.sessions), starting=self.starting, utilization=load.utilization,
                          cpu_cores=load.cpu_cores, late_ratio=load.late_ratio, session_cost=load.session_cost)

    def admit(self) -> None:
        """Refuse a session that would make the running ones late (503 + Retry-After, ``server.admission``).

        Raises:
            OverloadedError: one more session does not fit.
        """
        server = self.config.server
        # A session process shares the cores with its siblings: it counts its share.
        limits = AdmissionLimits(max_sessions=server.max_sessions, session_cost_cores=server.session_cost_cores,
                                 cores=usable_cores() / (self.shard.count if self.shard else 1))
        refusal = decide(self._current_load(), limits)
        if refusal is not None:
            self.telemetry.admissions_refused.labels(reason=refusal.reason).inc()
            raise refusal.error()

    async def create_session(self, offer_sdp: str, offer_type: str, avatar_id: str | None,
                             body: SessionOptionsBody, full: bool = False) -> Session:
        """Check the offer and its options, admit it, open its session and start it. Everything a request can
        get wrong is checked before admission, so a bad request gets its 4xx however busy the server is.

        Args:
            full: the router found the server full: check the request, then refuse it (503).

        Raises:
            RequestError: an option this server does not offer (400).
            InvalidSdpError: an offer no session can answer (400).
            ConfigError: a bad background (400).
            AvatarNotFoundError: an unknown avatar (404).
            OverloadedError: no room for one more session (503).
        """
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
        if body.seed is not None and not 0 <= body.seed < 2**32:
            raise RequestError(f"options.seed must be 0..{2**32 - 1}, got {body.seed}")
        parse_background(body.background)  # a ConfigError (400) names a bad value
        check_offer(offer_sdp, offer_type, body.audio_source)
        self.resources.avatars.record(avatar_id or DEFAULT_AVATAR_ID)  # 404 before admission; prepared after it
        adds_load = not (body.name and self.sessions.by_name(body.name))  # a takeover adds none
        if adds_load and full:
            raise OverloadedError(f"{self.config.server.max_sessions} sessions are running, the limit: try again "
                                  "later", retry_after_s=10)
        if adds_load:
            self.admit()
            self.starting += 1
        try:
            avatar = await asyncio.to_thread(self.resources.avatars.get, avatar_id or DEFAULT_AVATAR_ID)
            session = await self._open_session(offer_sdp, avatar, body)
        finally:
            if adds_load:
                self.starting -= 1
        await session.start()
        return session

    async def _open_session(self, offer_sdp: str, avatar: Avatar,
                            body: SessionOptionsBody) -> Session:
        """The admitted offer's session: its answer made, registered."""
        a = self.config.animator
        server = self.config.server
        resources = self.resources
        previous = self.sessions.by_name(body.name) if body.name else None
        if previous is not None:
            # A page that reloads (an OBS source, a server restart) takes its name back; the
            # agent keeps addressing the session by that name.
            await previous.close(reason="taken over by a new session of the same name")
        options = SessionOptions(size=a.size, fps=a.fps, backend=a.backend, background=body.background,
                                 audio_source=body.audio_source, name=body.name,
                                 seed=body.seed if body.seed is not None else a.seed)
        worker, animator = resources.running()
        session = Session(avatar, options, worker, self.telemetry, self.ice_servers,
                          latency_frames=animator.latency_frames, vad_factory=resources.vad_factory,
                          delay_margin_ticks=max(server.delay_margin_ticks, animator.margin_ticks),
                          render_margin_ms=server.render_margin_ms,
                          id_prefix=self.shard.session_prefix if self.shard else "", av_probe=server.av_probe)
        try:
            answer = await session.accept(offer_sdp)
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
            if reason in REAPED_REASONS:
                self.telemetry.sessions_reaped.labels(reason=reason).inc()

        session.on_close.append(forget)
        return session

    async def _watch(self) -> None:
        """Every ``WATCH_INTERVAL_S``: the loop's lag, the load (sampled by ``LoadMeter``), the queues' and
        buffers' drop counters into telemetry."""
        loop = asyncio.get_running_loop()
        telemetry = self.telemetry
        self.load = load = LoadMeter(start_time_s=loop.time(), start_cpu_s=_process_cpu_s())
        while True:
            start = loop.time()
            await asyncio.sleep(WATCH_INTERVAL_S)
            lag = max(0.0, loop.time() - start - WATCH_INTERVAL_S)
            telemetry.loop_lag.set(lag)
            telemetry.loop_lag_hist.observe(lag)
            worker = self.resources.worker
            if worker is not None:
                telemetry.worker_queue_depth.set(worker.queue_depth)
                now = loop.time()
                if load.due(now):
                    sessions = self.sessions.all()
                    load.observe(LoadSample(
                        time_s=now, worker_busy_s=worker.busy_s, cpu_s=_process_cpu_s(), sessions=len(self.sessions),
                        settled=sum(1 for s in sessions if s.stats.ticks > SETTLED_S * s.options.fps),
                        ticks=sum(s.stats.ticks for s in sessions),
                        late=sum(s.stats.frames_late for s in sessions)))
                    telemetry.worker_utilization.set(load.utilization)
            telemetry.track_queue_depth.set(sum(len(s.clock.video) for s in self.sessions.all()))
            for s in self.sessions.all():
                for name, q in (("video", s.clock.video), ("audio", s.clock.audio)):
                    if q.dropped:
                        telemetry.frames_dropped.labels(track=name).inc(q.dropped)
                        q.dropped = 0
                if s.mic_buffer is not None and s.mic_buffer.skipped:
                    skipped, s.mic_buffer.skipped = s.mic_buffer.skipped, 0
                    telemetry.mic_packets_skipped.inc(skipped)
                filled_s = s.concealer.take_filled_s()
                if filled_s:
                    telemetry.mic_concealed_seconds.inc(filled_s)
            if worker is not None and worker.jobs_skipped:
                skipped, worker.jobs_skipped = worker.jobs_skipped, 0
                telemetry.windows_skipped.inc(skipped)
