"""A live session: an aiortc peer connection, the mic in, the avatar and its voice out.

Data flow (docs/design.md): mic track (opus 48 kHz) -> decoded frames -> one-frame windows at 48 kHz mono
(the output voice) and 16 kHz mono (the engine), completed together (``server.input_windows``) -> the
InferenceWorker (VAD + animator) -> frames by tick -> the MediaClock -> the two tracks.

Timing: input window ``i`` is shown at clock tick ``i + anchor``. The anchor is set when input
starts (or resumes after a gap, or after an interrupt): the window goes to the first tick due at
least ``min_lead_s`` after it completed. That lead is the animator's lookahead (its frame waits for
that many more windows), any margin ticks (``server.delay_margin_ticks``) and the least time the
frame then has to be rendered (``server.render_margin_ms``). Where in its tick a window completes
varies, so a window is shown between ``min_lead_s`` and one tick more after it completes; that upper
bound is the declared ``latency_ms``. The voice goes on the same tick, so picture and sound leave
together. For a microphone, ``server.input_phase.InputPhase`` then keeps the lead near the least
(dropping quiet packets, advancing the clock by the rest of a packet or adding a tick, in pauses) and
raises or lowers the least with the lateness the session sees; the answer's ``latency_ms`` is the
configured one, the ``stats`` events the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import math
import secrets
import time
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field

import av
import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

from emo_stream.compositing import parse_background
from emo_stream.errors import InvalidSdpError, RequestError, SessionNotFoundError
from emo_stream.types import AudioWindow, Avatar, Frame
from server.clock import MediaClock
from server.inbound_audio import InOrderAudioBuffer, hand_on_audio_at_once
from server.input_phase import InputPhase
from server.input_windows import InputWindows
from server.telemetry import Telemetry
from server.tracks import AvatarAudioTrack, AvatarVideoTrack
from server.vad import level_dbfs
from server.worker import FeedResult, InferenceWorker, Job, WorkerOverloaded

logger = logging.getLogger(__name__)

OUTPUT_RATE = 48_000
ENGINE_RATE = 16_000
QUIET_DBFS = -45.0  # below this a window counts as quiet (resuming after an interrupt)
SILENT_PEER_S = 5.0  # no media from the peer this long: it is gone
SILENT_RTCP_S = 8.0  # no receiver report about our tracks this long (PCM sessions): it is gone
RTCP_GRACE_S = 10.0  # time to connect before receiver reports are expected
FIRST_MEDIA_GRACE_S = 15.0  # time to connect before the first media arrives
IDLE_AFTER_TICKS = 1.5  # no input window for this long: the session asks for idle frames
REANCHOR_SLACK_TICKS = 2  # input this far ahead of need, at a quiet moment: catch up


@dataclass
class SessionOptions:
    size: int = 512
    fps: int = 25
    backend: str = "lite"
    background: str = "original"
    audio_source: str = "mic"
    name: str | None = None
    seed: int = 0


@dataclass
class SessionStats:
    created: float = field(default_factory=time.monotonic)
    ticks: int = 0
    frames_sent: int = 0
    frames_late: int = 0
    windows_in: int = 0
    last_input: float | None = None
    speaking: bool = False


class _Anchors:
    """Piecewise map from input window index to clock tick: ``tick = index + anchor``."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._anchors: list[int] = []

    def set(self, from_index: int, anchor: int) -> None:
        while self._starts and self._starts[-1] >= from_index:
            self._starts.pop()
            self._anchors.pop()
        self._starts.append(from_index)
        self._anchors.append(anchor)
        del self._starts[:-8], self._anchors[:-8]  # only recent segments matter

    def tick(self, index: int) -> int | None:
        i = bisect_right(self._starts, index) - 1
        return None if i < 0 else index + self._anchors[i]

    def clear(self) -> None:
        self._starts.clear()
        self._anchors.clear()


class Session:
    """One peer: its connection, input buffers, frames by tick, clock and tracks."""

    def __init__(self, avatar: Avatar, options: SessionOptions, worker: InferenceWorker, telemetry: Telemetry,
                 ice_servers: list[str], latency_frames: int, vad_factory=None, delay_margin_ticks: int = 0,
                 render_margin_ms: int = 20, id_prefix: str = "") -> None:
        self.id = id_prefix + secrets.token_urlsafe(18)  # 144 bits; the prefix names a session process
        self.control_token = secrets.token_urlsafe(24)
        self.avatar = avatar
        self.options = options
        self.worker = worker
        self.telemetry = telemetry
        period_ms = 1000 / options.fps
        self.min_lead_s = ((latency_frames + delay_margin_ticks) * period_ms + render_margin_ms) / 1000
        # A microphone's windows are kept near the least lead (server.input_phase); an agent's PCM is pulled on
        # the ticks themselves, so its lead is fixed by the tick.
        self._phase = InputPhase(self.min_lead_s) if options.audio_source == "mic" else None
        self._quiet_packets_to_drop = 0
        self.stats = SessionStats()
        self.generation = 0
        self.closed = False
        self._vad_factory = vad_factory
        self._anchors = _Anchors()
        self._audio_out: dict[int, np.ndarray] = {}
        self._frames: dict[int, Frame] = {}
        self._idle_requested: set[int] = set()
        self.background = parse_background(options.background)
        self._hold = self._first_picture(avatar)
        self._silence = np.zeros(OUTPUT_RATE // options.fps, np.float32)
        self._input = InputWindows((OUTPUT_RATE, ENGINE_RATE), options.fps)
        self._index48 = 0
        self._index16 = 0
        self._muted_until_quiet = False
        self._quiet_run = 0
        self._last_mapped_tick = -1
        self._last_window_at = -math.inf  # when the last input window was mapped (perf_counter)
        self._ready = False
        self.mic_buffer: InOrderAudioBuffer | None = None  # its ``skipped`` packets go to /metrics
        self._tasks: list[asyncio.Task] = []
        self._pcm: deque[np.ndarray] = deque()
        self._pcm_samples = 0
        self._pcm_resampler: av.AudioResampler | None = None
        self._pcm_format: tuple[int, int] | None = None
        self._pcm_flushing = False
        self._subscribers: list[asyncio.Queue] = []
        self.clock = MediaClock(self, fps=options.fps, on_lag=lambda s: telemetry.observe("tick_lag", max(0.0, s)))
        self.video_track = AvatarVideoTrack(self.clock.video, fps=options.fps, on_sent=self._on_sent,
                                            on_encoded=lambda s: telemetry.observe("encode", s))
        self._arrived: dict[int, float] = {}  # tick -> when its input window arrived
        self.audio_track = AvatarAudioTrack(self.clock.audio, fps=options.fps)
        config = RTCConfiguration(iceServers=[RTCIceServer(urls=u) for u in ice_servers]) if ice_servers else None
        self.pc = RTCPeerConnection(configuration=config)
        self.on_close: list = []

    def _first_picture(self, avatar: Avatar) -> np.ndarray:
        """What the track shows before the first frame is animated."""
        if self.background.kind == "colour":
            return np.broadcast_to(np.asarray(self.background.colour, np.uint8), avatar.image.shape).copy()
        if self.background.kind == "transparent":
            return np.zeros((avatar.size, 2 * avatar.size, 3), np.uint8)
        return avatar.image

    # ------------------------------------------------------------------ signalling
    async def accept(self, offer_sdp: str, offer_type: str = "offer") -> RTCSessionDescription:
        """Apply the browser's offer, attach our tracks, return the answer."""
        if offer_type != "offer":
            raise InvalidSdpError(f"expected an SDP offer, got type {offer_type!r}")
        if "v=0" not in offer_sdp or "m=" not in offer_sdp:
            raise InvalidSdpError("the body is not an SDP offer (no v= or m= lines)")
        if self.options.audio_source == "mic" and "m=audio" not in offer_sdp:
            raise InvalidSdpError("the offer has no audio: send the microphone (an m=audio line)")

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self.options.audio_source == "mic":
                for transceiver in self.pc.getTransceivers():
                    if transceiver.receiver.track is track:
                        self.mic_buffer = hand_on_audio_at_once(transceiver.receiver)
                self._tasks.append(asyncio.create_task(self._consume_mic(track), name=f"mic-{self.id[:6]}"))

        @self.pc.on("datachannel")
        def on_datachannel(channel) -> None:
            @channel.on("message")
            def on_message(message) -> None:
                if isinstance(message, str) and '"interrupt"' in message:
                    with contextlib.suppress(ValueError):
                        if json.loads(message).get("type") == "interrupt":
                            self.interrupt()

        @self.pc.on("connectionstatechange")
        async def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                await self.close(reason=f"connection {self.pc.connectionState}")

        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
            raise InvalidSdpError(f"the SDP offer cannot be parsed: {str(exc) or type(exc).__name__}") from None
        self._attach_tracks()
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
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
        self._tasks.append(asyncio.create_task(self._watchdog(), name=f"watchdog-{self.id[:6]}"))
        self._tasks.append(asyncio.create_task(self._publish_stats(), name=f"stats-{self.id[:6]}"))

    async def _prepare(self) -> None:
        # A new portrait's per-portrait work (the lite rig: ~0.2 s) runs on a thread of its own first: on the
        # worker it would hold up every other session's frames for that long.
        try:
            await asyncio.to_thread(self.worker.animator.warm, self.avatar)
        except Exception:  # prepare meets the same fault on the worker, which handles it
            logger.exception("warming the avatar failed", extra={"session_id": self.id[:8]})
        prepared = asyncio.get_running_loop().create_future()
        self.worker.submit(Job(session_id=self.id, generation=self.generation, kind="prepare", avatar=self.avatar,
                               seed=self.options.seed, vad_factory=self._vad_factory, background=self.background,
                               done=lambda ok: prepared.done() or prepared.set_result(ok)), urgent=True)
        await prepared
        self._ready = True

    # ------------------------------------------------------------------ input
    async def _consume_mic(self, track: MediaStreamTrack) -> None:
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.stats.last_input = time.monotonic()
            t0 = time.perf_counter()
            self.push_audio_frame(frame)
            self.telemetry.observe("decode", time.perf_counter() - t0)

    def push_audio_frame(self, frame: av.AudioFrame) -> None:
        """Decoded input audio (any rate/layout) into the 48 kHz and 16 kHz window streams."""
        if self._quiet_packets_to_drop and frame.samples < frame.sample_rate // self.options.fps:
            if level_dbfs(frame.to_ndarray()) < QUIET_DBFS and not self.stats.speaking:
                self._quiet_packets_to_drop -= 1
                return  # InputPhase "drop": the windows after it complete one packet later
            # The pause it was decided in is over: never cut into speech (the next pause decides again).
            self._quiet_packets_to_drop = 0
        for voice, engine in self._input.push(frame):
            self._on_window48(voice)  # first: it maps the window to its tick
            self._on_window16(engine)

    def _map(self, index: int, quiet: bool) -> int:
        """The tick for input window ``index``: re-anchored when input starts, when it fell behind
        (a stall), and — at a quiet moment, where skipping a little silence is not heard — when
        it runs further ahead than the pipeline needs, so a stall does not raise the latency
        for good."""
        tick = self._anchors.tick(index)
        now = self.clock.current_tick()
        ahead = None if tick is None else tick - now
        most = math.ceil(self.latency_ms * self.options.fps / 1000 - 1e-9)  # the most ticks a window waits
        catch_up = ahead is not None and (ahead > most + 12 or (quiet and ahead > most + REANCHOR_SLACK_TICKS))
        if ahead is None or ahead <= 0 or catch_up:
            tick = self.clock.first_tick_after(self.least_lead_s)
            if catch_up:
                self._drop_from(tick)
            self._anchors.set(index, tick - index)
            if self._phase is not None:
                self._phase.reset()
            self._quiet_packets_to_drop = 0
        return tick

    @property
    def least_lead_s(self) -> float:
        """The least time from a window's completion to its tick now (a microphone's adapts to lateness)."""
        return self._phase.least_lead_s if self._phase is not None else self.min_lead_s

    @property
    def latency_ms(self) -> int:
        """The most time from a window's completion to its tick now: the least lead and one tick more."""
        return round((self.least_lead_s + 1 / self.options.fps) * 1000)

    def _drop_from(self, tick: int) -> None:
        """Catching up: the windows already mapped at or after ``tick`` (a quiet stretch) are
        skipped. Their audio, frames and the animator's lookahead go, so no later frame of theirs
        can land on a tick the new windows take."""
        self.generation += 1
        self.worker.invalidate(self.id, self.generation)
        self.worker.submit(Job(session_id=self.id, generation=self.generation, kind="reset"), urgent=True)
        for store in (self._audio_out, self._frames, self._arrived):
            for stale in [k for k in store if k >= tick]:
                del store[stale]
        self._last_mapped_tick = min(self._last_mapped_tick, tick - 1)

    def _on_window48(self, samples: np.ndarray) -> None:
        index = self._index48
        self._index48 += 1
        quiet = level_dbfs(samples) < QUIET_DBFS
        if self._muted_until_quiet:
            self._quiet_run = self._quiet_run + 1 if quiet else 0
            if self._quiet_run < 5:
                return
            self._muted_until_quiet = False
            self._anchors.clear()
        tick = self._map(index, quiet)
        self._audio_out[tick] = samples
        self._last_window_at = time.perf_counter()
        if self._phase is not None:
            lead = self.clock.tick_time(tick) - self._last_window_at
            action = self._phase.observe(lead, pause=quiet and not self.stats.speaking)
            if action is not None:
                self.telemetry.input_phase.labels(kind=action.kind).inc()
                logger.info("session %s: input phase %s %d, %.1f ms (lead %.1f ms, least %.1f ms)", self.id[:8],
                            action.kind, action.packets, 1000 * action.seconds, 1000 * lead, 1000 * self.least_lead_s)
                if action.kind == "drop":
                    self._quiet_packets_to_drop = action.packets
                if action.seconds:
                    self.clock.advance(action.seconds)
                if action.kind == "delay":
                    self._anchors.set(index + 1, tick - index + 1)
        self._last_mapped_tick = max(self._last_mapped_tick, tick)

    def _on_window16(self, samples: np.ndarray) -> None:
        index = self._index16
        self._index16 += 1
        self.stats.windows_in += 1
        if self._muted_until_quiet or not self._ready:
            return
        tick = self._anchors.tick(index)
        if tick is None or tick <= self.clock.current_tick():
            return  # its audio was dropped or is already past: do not animate it
        self._arrived[tick] = time.perf_counter()
        window = AudioWindow(samples=samples, sample_rate=ENGINE_RATE, start_pts=tick * (90_000 // self.options.fps))
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
        if result.speaking != self.stats.speaking:
            self.stats.speaking = result.speaking
            self.telemetry.speaking.inc() if result.speaking else self.telemetry.speaking.dec()
            self.publish({"type": "state", "state": "speaking" if result.speaking else "idle"})
        ticks_per_pts = 90_000 // self.options.fps
        now = time.perf_counter()
        for frame in result.frames:
            tick = frame.pts // ticks_per_pts
            self._frames[tick] = frame
            if self._phase is not None:
                self._phase.frame_ready(self.clock.tick_time(tick) - now)

    def _on_idle_frame(self, frame: Frame) -> None:
        if not self.closed:
            self._frames.setdefault(frame.pts // (90_000 // self.options.fps), frame)

    # ------------------------------------------------------------------ output
    def tick(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The clock's tick: this tick's frame (or a hold frame, counted late) and its audio."""
        self.stats.ticks = index + 1
        if self.options.audio_source == "pcm":
            self._pull_pcm()
        audio = self._audio_out.pop(index, None)
        frame = self._frames.pop(index, None)
        arrived = self._arrived.pop(index, None)
        if frame is not None:
            self._hold = frame.rgb
            if arrived is not None:  # input window in -> its frame out, on this server
                self.telemetry.observe("end_to_end", time.perf_counter() - arrived)
        elif self._ready and (audio is not None or index in self._idle_requested):
            # (before the avatar is prepared on the worker, the still portrait is expected)
            self.stats.frames_late += 1
            self.telemetry.frames_late.inc()
            if self._phase is not None:
                self._phase.frame_late()
        self._idle_requested.discard(index)
        # Drop anything for ticks that have passed.
        for store in (self._audio_out, self._frames, self._arrived):
            for stale in [k for k in store if k <= index]:
                del store[stale]
        # No input coming: keep idle motion coming, up to two ticks ahead of the clock, for the ticks no
        # window took. Flowing input is not asked about by its mapped ticks: a window may be mapped only
        # shortly before its tick comes (its least lead can be under two ticks), and an idle frame rendered
        # for that tick as well would double the worker's work.
        if self._ready and time.perf_counter() - self._last_window_at > IDLE_AFTER_TICKS / self.options.fps:
            for t in range(max(self._last_mapped_tick + 1, index + 1), index + 3):
                if t not in self._idle_requested:
                    self._request_idle(t, urgent=t == index + 1)
        if self._last_mapped_tick < index - 8 and self.stats.speaking:
            # No input for a while (an agent finished, a mic paused): the speaker is idle.
            self.stats.speaking = False
            self.telemetry.speaking.dec()
            self.publish({"type": "state", "state": "idle"})
        return self._hold, (audio if audio is not None else self._silence)

    def _request_idle(self, tick: int, urgent: bool = False) -> None:
        try:
            self.worker.submit(Job(session_id=self.id, generation=self.generation, kind="idle",
                                   pts=tick * (90_000 // self.options.fps), done=self._on_idle_frame), urgent=urgent)
            self._idle_requested.add(tick)
        except WorkerOverloaded:
            pass

    def _on_sent(self, index: int) -> None:
        self.stats.frames_sent += 1
        self.telemetry.frames_sent.inc()

    # ------------------------------------------------------------------ PCM input (agents)
    MAX_PCM_S = 120

    def pcm_start(self, sample_rate: int, channels: int) -> None:
        """Begin (or re-begin) PCM input: s16le at ``sample_rate`` with ``channels`` interleaved."""
        self._pcm_format = (sample_rate, channels)
        self._pcm_resampler = av.AudioResampler(format="flt", layout="mono", rate=OUTPUT_RATE)
        self._pcm_flushing = False

    def pcm_push(self, data: bytes) -> None:
        """Queue PCM; it plays at real time from the next tick, however fast it arrives."""
        if self._pcm_format is None or self._pcm_resampler is None:
            raise RequestError("send a start message before audio")
        rate, channels = self._pcm_format
        usable = len(data) - len(data) % (2 * channels)
        if usable <= 0:
            return
        pcm = np.frombuffer(data[:usable], dtype="<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono" if channels == 1 else "stereo")
        frame.sample_rate = rate
        for out in self._pcm_resampler.resample(frame):
            samples = out.to_ndarray().reshape(-1).astype(np.float32)
            self._pcm.append(samples)
            self._pcm_samples += len(samples)
        if self._pcm_samples > self.MAX_PCM_S * OUTPUT_RATE:
            raise RequestError(f"more than {self.MAX_PCM_S} s of audio buffered: send at most a little "
                                  "ahead of real time")
        self._pcm_flushing = False
        self.stats.last_input = time.monotonic()

    def pcm_flush(self) -> None:
        """End of an utterance: what is buffered plays out, the last window padded with silence."""
        self._pcm_flushing = True

    @property
    def pcm_buffered_s(self) -> float:
        return self._pcm_samples / OUTPUT_RATE

    def _pull_pcm(self) -> None:
        """One tick of queued PCM into the input path: bursts play at real time."""
        need = OUTPUT_RATE // self.options.fps
        if self._pcm_flushing and not self._pcm_samples:
            # The utterance has played into the pipeline: release the frames the animator's
            # lookahead still holds, or the last syllables would show a held picture.
            self._pcm_flushing = False
            self.worker.submit(Job(session_id=self.id, generation=self.generation, kind="flush",
                                   done=self._on_frames), urgent=True)
            return
        if self._pcm_samples < need and not (self._pcm_flushing and self._pcm_samples):
            return
        parts, got = [], 0
        while self._pcm and got < need:
            head = self._pcm.popleft()
            take = head[: need - got]
            if len(take) < len(head):
                self._pcm.appendleft(head[len(take):])
            parts.append(take)
            got += len(take)
        self._pcm_samples -= got
        chunk = np.concatenate(parts) if parts else np.zeros(0, np.float32)
        if len(chunk) < need:
            chunk = np.pad(chunk, (0, need - len(chunk)))
        frame = av.AudioFrame.from_ndarray(chunk[None, :].astype(np.float32), format="flt", layout="mono")
        frame.sample_rate = OUTPUT_RATE
        self.push_audio_frame(frame)

    # ------------------------------------------------------------------ events
    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=64)
        self._subscribers.append(queue)
        queue.put_nowait({"type": "state", "state": "speaking" if self.stats.speaking else "idle"})
        return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with contextlib.suppress(ValueError):
            self._subscribers.remove(queue)

    def publish(self, event: dict) -> None:
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    async def _publish_stats(self) -> None:
        last_sent, last_late = self.stats.frames_sent, self.stats.frames_late
        while not self.closed:
            await asyncio.sleep(1.0)
            sent, late = self.stats.frames_sent, self.stats.frames_late
            self.publish({"type": "stats", "fps": sent - last_sent, "frames_sent": sent, "late_frames": late,
                          "late_frames_per_s": late - last_late, "latency_ms": self.latency_ms,
                          "speaking": self.stats.speaking, "buffered_audio_s": round(self.pcm_buffered_s, 3)})
            last_sent, last_late = sent, late

    # ------------------------------------------------------------------ control
    def interrupt(self) -> None:
        """Barge-in: drop buffered audio, queued and in-flight windows and both tracks' queues
        within one tick; input is ignored until the speaker pauses (the utterance is cut)."""
        self.generation += 1
        self.worker.invalidate(self.id, self.generation)
        self.worker.submit(Job(session_id=self.id, generation=self.generation, kind="reset"), urgent=True)
        self._audio_out.clear()
        self._frames.clear()
        self._arrived.clear()
        self._idle_requested.clear()
        self._anchors.clear()
        self._input.clear()
        self._last_mapped_tick = -1
        # A microphone keeps sending the cut utterance: ignore it until the speaker pauses.
        # An agent's PCM stops on its own: its queue is simply dropped.
        self._muted_until_quiet = self.options.audio_source == "mic"
        self._quiet_run = 0
        self._pcm.clear()
        self._pcm_samples = 0
        self._pcm_flushing = False
        self.clock.flush()
        self.audio_track.clear()
        self.telemetry.interrupts.inc()
        now = self.clock.current_tick()
        for tick in (now + 1, now + 2):
            self._request_idle(tick, urgent=True)

    async def _last_rtcp_age_s(self) -> float | None:
        """Seconds since the peer's last RTCP receiver report on any of our tracks (None: none yet)."""
        newest = None
        for transceiver in self.pc.getTransceivers():
            with contextlib.suppress(Exception):
                report = await transceiver.sender.getStats()
                for stats in report.values():
                    if getattr(stats, "type", "") == "remote-inbound-rtp":
                        newest = stats.timestamp if newest is None else max(newest, stats.timestamp)
        if newest is None:
            return None
        return (datetime.datetime.now(datetime.UTC) - newest).total_seconds()

    async def _watchdog(self) -> None:
        """Reap a peer that went away without a goodbye (aioice alone waits ~30 s): a microphone
        that stopped sending, or — for PCM sessions, which receive no media — a peer that stopped
        sending RTCP receiver reports about what we send."""
        checks = 0
        while not self.closed:
            await asyncio.sleep(0.5)
            checks += 1
            now = time.monotonic()
            if self.options.audio_source != "mic":
                if checks % 4 == 0 and now - self.stats.created > RTCP_GRACE_S:
                    age = await self._last_rtcp_age_s()
                    if age is None or age > SILENT_RTCP_S:
                        await self.close(reason="silent peer")
                continue
            last = self.stats.last_input
            if last is None and now - self.stats.created > FIRST_MEDIA_GRACE_S:
                await self.close(reason="no media")
            elif last is not None and now - last > SILENT_PEER_S:
                await self.close(reason="silent peer")

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
        if self.stats.speaking:
            self.telemetry.speaking.dec()
        self.publish({"type": "closed", "reason": reason})
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
