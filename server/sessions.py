"""A live session: an aiortc peer connection, the mic in, the avatar and its voice out.

Data flow (docs/design.md): mic track (opus 48 kHz) or an agent's PCM (``server.pcm_source``) -> decoded frames
-> one-frame windows at the voice rate (48 kHz mono, sent back) and the engine rate (16 kHz mono, animated),
completed together (``server.input_windows``) -> each window's tick (``server.input_timeline``) -> the
InferenceWorker (VAD + animator) -> frames by tick -> the MediaClock -> the two tracks.

``Session`` wires those parts: signalling (the offer, the answer, the tracks), the lifecycle (start, close), the
clock's ticks (each tick's frame and voice), and barge-in. Its events go out through ``server.event_hub``; a peer
that went away is reaped by ``server.peer_watchdog``. The timing model (anchors, least lead, drop / advance /
delay) is ``server.input_timeline``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

from emo_stream.compositing import parse_background
from emo_stream.errors import InvalidSdpError, RateLimitedError, SessionNotFoundError
from emo_stream.rtc_audio import InOrderAudioBuffer, hand_on_audio_at_once, receiver_of
from emo_stream.types import AudioWindow, Avatar, Frame
from server.av_probe import flash, holds_tone
from server.clock import MediaClock
from server.control_rate import ControlRate
from server.event_hub import EventHub, SessionStats
from server.ice_servers import IceServer
from server.input_timeline import InputTimeline, VoicePlacement, base_lead_s
from server.input_windows import InputWindows
from server.loss_concealment import LossConcealer
from server.pcm_source import PcmSource
from server.peer_watchdog import watch_peer
from server.telemetry import Telemetry
from server.tick_outputs import TickOutputs
from server.tracks import AUDIO_RATE, VIDEO_CLOCK_RATE, AvatarAudioTrack, AvatarVideoTrack
from server.vad import VoiceActivityDetector, level_dbfs
from server.worker import FeedResult, InferenceWorker, Job, WorkerOverloaded

logger = logging.getLogger(__name__)

VOICE_RATE = AUDIO_RATE  # the input's voice, sent back on the audio track
ENGINE_RATE = 16_000  # what the animator (and its VAD) hears
QUIET_DBFS = -45.0  # below this a window counts as quiet (a pause: the lead may move; resuming after an interrupt)
SPEAKER_IDLE_AFTER_TICKS = 8  # no window mapped for this many ticks: the speaker is idle
IDLE_AHEAD_TICKS = 2  # with no input, idle frames are asked for this many ticks ahead of the clock

__all__ = ["ENGINE_RATE", "QUIET_DBFS", "VOICE_RATE", "Session", "SessionOptions", "SessionRegistry",
           "SessionStats"]


@dataclass
class SessionOptions:
    """What a session was opened with: the animator's frame size and rate, the backend, its background, where its
    audio comes from ("mic": the peer's microphone; "pcm": an agent over the WebSocket), its name, the seed."""

    size: int = 512
    fps: int = 25
    backend: str = "lite"
    background: str = "original"
    audio_source: str = "mic"
    name: str | None = None
    seed: int = 0


class Session:
    """One peer: its connection and tracks, its input (microphone or PCM) through the timeline to the worker, and
    each tick's frame and voice out; barge-in and closing."""

    def __init__(self, avatar: Avatar, options: SessionOptions, worker: InferenceWorker, telemetry: Telemetry,
                 ice_servers: list[IceServer], latency_frames: int,
                 vad_factory: Callable[[], VoiceActivityDetector] | None = None, delay_margin_ticks: int = 0,
                 render_margin_ms: int = 20, id_prefix: str = "", av_probe: bool = False) -> None:
        self.id = id_prefix + secrets.token_urlsafe(18)  # 144 bits; the prefix names a session process
        self.control_token = secrets.token_urlsafe(24)
        self.avatar = avatar
        self.options = options
        self.av_probe = av_probe  # mark the frame of each tick whose voice holds the test tone (server.av_probe)
        self.worker = worker
        self.telemetry = telemetry
        self.pts_per_tick = VIDEO_CLOCK_RATE // options.fps
        self.stats = SessionStats()
        self.events = EventHub(self.stats, telemetry)
        self.generation = 0  # bumped when queued and in-flight windows are dropped (barge-in, catch-up)
        self.closed = False
        self.answer: RTCSessionDescription | None = None  # set by the app once the offer is accepted
        self._vad_factory = vad_factory
        self._outputs = TickOutputs()
        self.background = parse_background(options.background)
        self._hold = self._first_picture(avatar)
        self._silence = np.zeros(VOICE_RATE // options.fps, np.float32)
        self._input = InputWindows((VOICE_RATE, ENGINE_RATE), options.fps)
        self.pcm = PcmSource(VOICE_RATE, options.fps)
        self.control_rate = ControlRate()
        self._ready = False
        self.mic_buffer: InOrderAudioBuffer | None = None  # its ``skipped`` packets go to /metrics
        self.concealer = LossConcealer()  # the microphone's lost packets filled in, so its input keeps time
        self._tasks: list[asyncio.Task[None]] = []
        self.clock = MediaClock(self, fps=options.fps, on_lag=lambda s: telemetry.observe("tick_lag", max(0.0, s)))
        # A microphone's windows are kept near the least lead (server.input_phase); an agent's PCM is pulled on
        # the ticks themselves, so its lead is fixed by the tick.
        self.timeline = InputTimeline(self.clock, options.fps,
                                      base_lead_s(options.fps, latency_frames, delay_margin_ticks, render_margin_ms),
                                      follows_phase=options.audio_source == "mic")
        self.video_track = AvatarVideoTrack(self.clock.video, fps=options.fps, on_sent=self._on_sent,
                                            on_encoded=lambda s: telemetry.observe("encode", s))
        self.audio_track = AvatarAudioTrack(self.clock.audio, fps=options.fps)
        config = RTCConfiguration(iceServers=[s.for_aiortc() for s in ice_servers]) if ice_servers else None
        self.pc = RTCPeerConnection(configuration=config)
        self.on_close: list[Callable[[Session, str], None]] = []

    def _first_picture(self, avatar: Avatar) -> np.ndarray:
        """What the track shows before the first frame is animated."""
        if self.background.kind == "colour":
            return np.broadcast_to(np.asarray(self.background.colour, np.uint8), avatar.image.shape).copy()
        if self.background.kind == "transparent":
            return np.zeros((avatar.size, 2 * avatar.size, 3), np.uint8)
        return avatar.image

    # ------------------------------------------------------------------ timing
    @property
    def base_lead_s(self) -> float:
        """The configured least time from a window's completion to its tick (``server.input_timeline``)."""
        return self.timeline.base_lead_s

    @property
    def least_lead_s(self) -> float:
        """The least time from a window's completion to its tick now (a microphone's adapts to lateness)."""
        return self.timeline.least_lead_s

    @property
    def latency_ms(self) -> int:
        """The most time from a window's completion to its tick now: the least lead and one tick more; for a
        PCM session, plus the delay input underruns added that the voice's pauses have not won back yet."""
        return self.timeline.latency_ms + round(self.pcm.debt_s * 1000)

    # ------------------------------------------------------------------ signalling
    async def accept(self, offer_sdp: str) -> RTCSessionDescription:
        """Apply the browser's offer (one that passed ``check_offer``: the service checks it before admission),
        attach our tracks, return the answer.

        Raises:
            InvalidSdpError: aiortc cannot answer it.
        """

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self.options.audio_source == "mic":
                self.mic_buffer = hand_on_audio_at_once(receiver_of(self.pc, track))
                self._tasks.append(asyncio.create_task(self._consume_mic(track), name=f"mic-{self.id[:6]}"))

        @self.pc.on("datachannel")
        def on_datachannel(channel) -> None:
            @channel.on("message")
            def on_message(message) -> None:
                if isinstance(message, str) and '"interrupt"' in message:
                    with contextlib.suppress(ValueError, AttributeError, RecursionError, RateLimitedError):
                        if json.loads(message).get("type") == "interrupt":
                            self.control_rate.take()
                            self.interrupt()

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                await self.close(reason=f"connection {self.pc.connectionState}")

        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            self._attach_tracks()
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except Exception as exc:  # whatever an offer that parses trips in aiortc's negotiation
            logger.info("offer refused by aiortc: %s: %s", type(exc).__name__, exc, exc_info=True,
                        extra={"session_id": self.id})
            raise InvalidSdpError(f"the SDP offer cannot be answered: {str(exc)[:120] or type(exc).__name__}") \
                from None
        return self.pc.localDescription

    def _attach_tracks(self) -> None:
        video_done = audio_done = False
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind == "video" and not video_done:
                transceiver.direction = "sendonly" if transceiver.direction in ("sendonly", "inactive") else "sendrecv"
                transceiver.sender.replaceTrack(self.video_track)
                codecs = RTCRtpSender.getCapabilities("video").codecs
                # VP8 preferred (cheaper to encode), H.264 offered.
                ordered = [c for c in codecs if c.mimeType == "video/VP8"] + \
                          [c for c in codecs if c.mimeType == "video/H264"] + \
                          [c for c in codecs if c.mimeType == "video/rtx"]
                with contextlib.suppress(Exception):
                    transceiver.setCodecPreferences(ordered)
                video_done = True
            elif transceiver.kind == "audio" and not audio_done:
                transceiver.direction = "sendrecv"
                transceiver.sender.replaceTrack(self.audio_track)
                audio_done = True
        if not video_done:
            self.pc.addTrack(self.video_track)
        if not audio_done:
            self.pc.addTrack(self.audio_track)

    async def start(self) -> None:
        """Start the clock and the watchdog; prepare the avatar on the worker (until then the portrait shows)."""
        self.clock.start()
        self._tasks.append(asyncio.create_task(self._prepare(), name=f"ready-{self.id[:6]}"))
        self._tasks.append(asyncio.create_task(
            watch_peer(self.stats, self.options.audio_source == "mic", self.pc, self._close_for, self._is_open),
            name=f"watchdog-{self.id[:6]}"))
        self._tasks.append(asyncio.create_task(
            self.events.publish_stats(lambda: self.latency_ms, lambda: self.pcm_buffered_s, self._is_open),
            name=f"stats-{self.id[:6]}"))

    async def _prepare(self) -> None:
        # A new portrait's per-portrait work (the lite rig: ~0.2 s) runs on a thread of its own first: on the
        # worker it would hold up every other session's frames for that long.
        try:
            await asyncio.to_thread(self.worker.animator.warm, self.avatar)
        except Exception:  # prepare meets the same fault on the worker, which handles it
            logger.exception("warming the avatar failed", extra={"session_id": self.id[:8]})
        prepared: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        def settle(ok: object) -> None:
            if not prepared.done():
                prepared.set_result(ok)

        self.worker.submit(Job(session_id=self.id, generation=self.generation, kind="prepare", avatar=self.avatar,
                               seed=self.options.seed, vad_factory=self._vad_factory, background=self.background,
                               done=settle), urgent=True)
        await prepared
        self._ready = True

    # ------------------------------------------------------------------ input
    async def _consume_mic(self, track: MediaStreamTrack) -> None:
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if not isinstance(frame, av.AudioFrame):  # a remote audio track yields decoded audio only
                continue
            self.stats.last_input = time.monotonic()
            t0 = time.perf_counter()
            self.push_mic_frame(frame)
            self.telemetry.observe("decode", time.perf_counter() - t0)

    def push_mic_frame(self, frame: av.AudioFrame) -> None:
        """A decoded microphone frame, after what stands in for the packets lost just before it
        (``server.loss_concealment``): the windows after a loss complete when they would have."""
        for filler in self.concealer.before(frame):
            self.push_audio_frame(filler)
        self.push_audio_frame(frame)

    def push_audio_frame(self, frame: av.AudioFrame) -> None:
        """Decoded input audio (any rate/layout) into the voice and engine window streams."""
        if self.timeline.quiet_packets_owed and frame.samples < frame.sample_rate // self.options.fps:
            quiet = level_dbfs(frame.to_ndarray()) < QUIET_DBFS and not self.stats.speaking
            if self.timeline.drop_quiet_packet(quiet):
                return  # InputPhase "drop": the windows after it complete one packet later
        for voice, engine in self._input.push(frame):
            self._on_voice_window(voice)  # first: it maps the window to its tick
            self._on_engine_window(engine)

    def _on_voice_window(self, samples: np.ndarray) -> None:
        quiet = level_dbfs(samples) < QUIET_DBFS
        placement = self.timeline.place_voice_window(quiet, speaking=self.stats.speaking)
        if placement is None:
            return  # the rest of an utterance a barge-in cut
        if placement.caught_up:
            self._drop_from(placement.tick)
        self._outputs.voice[placement.tick] = samples
        if placement.action is not None:
            self._log_phase_action(placement)

    def _log_phase_action(self, placement: VoicePlacement) -> None:
        action = placement.action
        assert action is not None and placement.lead_s is not None
        self.telemetry.input_phase.labels(kind=action.kind).inc()
        logger.info("session %s: input phase %s %d, %.1f ms (lead %.1f ms, least %.1f ms)", self.id[:8],
                    action.kind, action.packets, 1000 * action.seconds, 1000 * placement.lead_s,
                    1000 * self.least_lead_s)

    def _drop_from(self, tick: int) -> None:
        """Catching up: the windows already mapped at or after ``tick`` (a quiet stretch) are
        skipped. Their audio, frames and the animator's lookahead go, so no later frame of theirs
        can land on a tick the new windows take."""
        self._drop_queued_windows()
        self._outputs.drop_from(tick)

    def _on_engine_window(self, samples: np.ndarray) -> None:
        self.stats.windows_in += 1
        tick = self.timeline.engine_window_tick()
        if tick is None or not self._ready:
            return
        self._outputs.arrived[tick] = time.perf_counter()
        window = AudioWindow(samples=samples, sample_rate=ENGINE_RATE, start_pts=tick * self.pts_per_tick)
        # The frame this window completes is due at tick - latency; after that the work is
        # wasted, so the worker skips the window instead of falling further behind.
        due = self.clock.tick_time(tick - self.worker.animator.latency_frames)
        try:
            self.worker.submit(Job(session_id=self.id, generation=self.generation, kind="feed", window=window,
                                   done=self._on_frames, deadline=due))
        except WorkerOverloaded:
            pass  # its tick is counted late when it comes

    def _on_frames(self, result: FeedResult) -> None:
        if self.closed or result.generation < self.generation:
            return  # the windows behind these frames were dropped (interrupt, catch-up)
        self.telemetry.observe("vad", result.vad_s)
        self.telemetry.observe("animate", result.animate_s)
        self.telemetry.observe("worker_queue", result.queued_s)
        self.events.set_speaking(result.speaking)
        ticks = [frame.pts // self.pts_per_tick for frame in result.frames]
        for tick, frame in zip(ticks, result.frames, strict=True):
            self._outputs.frames[tick] = frame
        self.timeline.frames_ready(ticks)

    def _on_idle_frame(self, frame: Frame) -> None:
        if not self.closed:
            self._outputs.frames.setdefault(frame.pts // self.pts_per_tick, frame)

    # ------------------------------------------------------------------ output
    def tick(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The clock's tick: this tick's frame (or a hold frame, counted late) and its audio."""
        self.stats.ticks = index + 1
        if self.options.audio_source == "pcm":
            self._pull_pcm()
        share = self._outputs.take(index)  # (and anything left for ticks that have passed dropped)
        if share.frame is not None:
            self._hold = share.frame.rgb
            if share.arrived is not None:  # input window in -> its frame out, on this server
                self.telemetry.observe("end_to_end", time.perf_counter() - share.arrived)
        elif self._ready and (share.voice is not None or share.idle_requested):
            # (before the avatar is prepared on the worker, the still portrait is expected)
            self.stats.frames_late += 1
            self.telemetry.frames_late.inc()
            self.timeline.frame_late()
        # No input coming: keep idle motion coming, up to two ticks ahead of the clock, for the ticks no
        # window took. Flowing input is not asked about by its mapped ticks: a window may be mapped only
        # shortly before its tick comes (its least lead can be under two ticks), and an idle frame rendered
        # for that tick as well would double the worker's work.
        last_mapped = self.timeline.last_mapped_tick
        if self._ready and self.timeline.input_stopped():
            for t in range(max(last_mapped + 1, index + 1), index + 1 + IDLE_AHEAD_TICKS):
                if t not in self._outputs.idle_requested:
                    self._request_idle(t, urgent=t == index + 1)
        if last_mapped < index - SPEAKER_IDLE_AFTER_TICKS and self.stats.speaking:
            # No input for a while (an agent finished, a mic paused): the speaker is idle.
            self.events.set_speaking(False)
        if self.av_probe and share.voice is not None and holds_tone(share.voice, VOICE_RATE):
            return flash(self._hold), share.voice
        return self._hold, (share.voice if share.voice is not None else self._silence)

    def _request_idle(self, tick: int, urgent: bool = False) -> None:
        try:
            self.worker.submit(Job(session_id=self.id, generation=self.generation, kind="idle",
                                   pts=tick * self.pts_per_tick, done=self._on_idle_frame), urgent=urgent)
            self._outputs.idle_requested.add(tick)
        except WorkerOverloaded:
            pass

    def _on_sent(self, index: int) -> None:
        self.stats.frames_sent += 1
        self.telemetry.frames_sent.inc()

    # ------------------------------------------------------------------ PCM input (agents)
    def pcm_start(self, sample_rate: int, channels: int) -> None:
        """Begin (or re-begin) PCM input: s16le at ``sample_rate`` with ``channels`` interleaved."""
        self.pcm.start(sample_rate, channels)

    async def pcm_push(self, data: bytes) -> None:
        """Queue PCM; it plays at real time from the next tick, however fast it arrives. Checked before
        anything is buffered, resampled off the event loop (a long message would stall every session's ticks).

        Raises:
            RequestError: the message is refused (``PcmSource.check``); nothing of it is kept.
        """
        self.pcm.check(data)
        generation, samples = await asyncio.to_thread(self.pcm.resample, data)
        if self.pcm.enqueue(generation, samples):
            self.stats.last_input = time.monotonic()
            if not self.closed and (frame := self.pcm.pull_owed()) is not None:
                self.push_audio_frame(frame)  # a tick found too little of it: played from now, not a tick later

    def pcm_flush(self) -> None:
        """End of an utterance: what is buffered plays out, the last window padded with silence."""
        self.pcm.flush()

    @property
    def pcm_buffered_s(self) -> float:
        return self.pcm.buffered_s

    def _pull_pcm(self) -> None:
        """One tick of queued PCM into the input path: bursts play at real time."""
        if self.pcm.utterance_played_out():
            # Release the frames the animator's lookahead still holds, or the last syllables would show a
            # held picture.
            self.worker.submit(Job(session_id=self.id, generation=self.generation, kind="flush",
                                   done=self._on_frames), urgent=True)
            return
        frame = self.pcm.pull()
        if frame is not None:
            self.push_audio_frame(frame)

    # ------------------------------------------------------------------ events
    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A queue of this session's events (``server.event_hub``), the current state first."""
        return self.events.subscribe()

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        self.events.unsubscribe(queue)

    def publish(self, event: dict[str, Any]) -> None:
        self.events.publish(event)

    # ------------------------------------------------------------------ control
    def interrupt(self) -> None:
        """Barge-in: drop buffered audio, queued and in-flight windows and both tracks' queues
        within one tick; input is ignored until the speaker pauses (the utterance is cut)."""
        self._drop_queued_windows()
        self._outputs.clear()
        # A microphone keeps sending the cut utterance: ignore it until the speaker pauses.
        # An agent's PCM stops on its own: its queue is simply dropped.
        self.timeline.interrupt(mute_until_quiet=self.options.audio_source == "mic")
        self._input.clear()
        self.pcm.clear()
        self.clock.flush()
        self.audio_track.clear()
        self.telemetry.interrupts.inc()
        now = self.clock.current_tick()
        for tick in (now + 1, now + 2):
            self._request_idle(tick, urgent=True)

    def _drop_queued_windows(self) -> None:
        """A new generation: the worker drops this session's queued and in-flight windows and the animator's
        lookahead; their results, when they come, are ignored."""
        self.generation += 1
        self.worker.invalidate(self.id, self.generation)
        self.worker.submit(Job(session_id=self.id, generation=self.generation, kind="reset"), urgent=True)

    def _is_open(self) -> bool:
        return not self.closed

    async def _close_for(self, reason: str) -> None:
        await self.close(reason=reason)

    async def close(self, reason: str = "closed") -> None:
        if self.closed:
            return
        self.closed = True
        logger.info("session closed: %s", reason, extra={"session_id": self.id[:8], "reason": reason})
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.clock.stop()
        self.video_track.stop()
        self.audio_track.stop()
        with contextlib.suppress(Exception):
            await self.pc.close()
        self.worker.drop_session(self.id)
        self.events.closed(reason)
        for callback in self.on_close:
            callback(self, reason)


class SessionRegistry:
    """The live sessions by id (and by name for PCM sessions)."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._names: dict[str, Session] = {}

    def add(self, session: Session) -> None:
        self._sessions[session.id] = session
        if session.options.name:
            self._names[session.options.name] = session

    def remove(self, session: Session) -> None:
        self._sessions.pop(session.id, None)
        if session.options.name and self._names.get(session.options.name) is session:
            del self._names[session.options.name]

    def get(self, session_id: str) -> Session:
        """A live session by id, or by name for named (PCM) sessions."""
        session = self._sessions.get(session_id) or self._names.get(session_id)
        if session is None or session.closed:
            raise SessionNotFoundError(f"no live session {session_id!r}")
        return session

    def by_name(self, name: str) -> Session | None:
        session = self._names.get(name)
        return None if session is None or session.closed else session

    def __len__(self) -> int:
        return len(self._sessions)

    def all(self) -> list[Session]:
        return list(self._sessions.values())
