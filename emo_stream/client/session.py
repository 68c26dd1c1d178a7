"""One live session of an emo-stream server, from the agent's side: PCM in, synchronised video and voice out.

The session is a WebRTC peer (aiortc) that receives the portrait's video and the returned voice, the audio
WebSocket that carries the agent's PCM (``audio_source="pcm"``), and the events WebSocket (state, stats,
closed). docs/api.md is the contract; docs/integrations.md shows it in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from emo_stream import errors as e
from emo_stream.client.errors import ConnectionFailedError, SessionClosedError, UnavailableError, error_for
from emo_stream.client.frames import AudioFrame, SessionEvent, VideoFrame
from emo_stream.client.inbox import Inbox
from emo_stream.rtc_audio import hand_on_audio_at_once, receiver_of
from emo_stream.rtc_video import hand_on_video_at_marker

logger = logging.getLogger(__name__)

# The server takes at most 1 MiB a PCM message; half of it keeps well clear.
PCM_MESSAGE_BYTES = 512 * 1024
# What a consumer that falls behind may leave queued: 2 s of video at 25 fps, 2 s of 20 ms voice packets.
VIDEO_QUEUE = 50
AUDIO_QUEUE = 100
EVENT_QUEUE = 256
ACK_TIMEOUT_S = 10.0
# After an interrupt, what arrives is dropped until the returned voice has been quiet for QUIET_PACKETS packets in
# a row (the server's voice after a barge-in is silence), at most GATE_S: the cut utterance's pictures and voice
# that were already on their way, however late a busy machine decodes them, never reach the consumer.
QUIET_PEAK = 330  # int16: -40 dBFS
QUIET_PACKETS = 2
GATE_S = 1.0

# WebSocket close codes of docs/api.md, as the errors they mean.
_CLOSE_ERRORS: dict[int, type[e.EmoStreamError]] = {
    4400: e.RequestError, 4401: e.UnauthorizedError, 4404: e.SessionNotFoundError, 4503: UnavailableError,
    1008: e.RateLimitedError, 1009: e.RequestTooLargeError,
}
CRASHED = 1011  # the session's process crashed: the session is gone
# A socket the server refused at its HTTP handshake, by status.
_REFUSED_SOCKET: dict[int, type[e.EmoStreamError]] = {
    401: e.UnauthorizedError, 403: e.UnauthorizedError, 404: e.SessionNotFoundError,
}
CLOSED_BY_CLIENT = "closed by the client"  # closed_reason after close()

Requester = Callable[..., Awaitable[Any]]


def pcm_to_bytes(pcm: bytes | bytearray | memoryview | np.ndarray, channels: int) -> bytes:
    """Little-endian signed 16-bit PCM, channels interleaved: bytes as they are (whole sample frames), or an
    array of int16 or of floats in -1..1, shaped (samples,) or (samples, channels).

    Raises:
        RequestError: a partial sample frame, a shape that does not fit ``channels``, or another sample type.
    """
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        data = bytes(pcm)
        if len(data) % (2 * channels):
            raise e.RequestError(f"{len(data)} bytes is not a whole number of {channels}-channel 16-bit samples")
        return data
    array = np.asarray(pcm)
    if array.ndim not in (1, 2) or (array.ndim == 2 and array.shape[1] != channels) or \
            (array.ndim == 1 and channels != 1):
        raise e.RequestError(f"PCM of shape {array.shape} does not fit {channels} channel(s)")
    if np.issubdtype(array.dtype, np.floating):
        array = np.clip(array * 32767.0, -32768, 32767).astype("<i2")
    elif array.dtype != np.int16:
        raise e.RequestError(f"PCM samples must be int16 or float, not {array.dtype}")
    return array.astype("<i2", copy=False).tobytes()


def _ws_url(base_url: str, path: str) -> str:
    scheme, rest = base_url.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest.rstrip('/')}{path}"


class AvatarSession:
    """A live session; use it as ``async with client.session(...) as session``.

    Attributes (once started):
        session_id, control_token: as the server answered.
        latency_ms: the pipeline's delay from a completed input window to its frame (the voice is delayed as much).
        state: ``idle`` or ``speaking`` (the last state event).
        stats: the last stats event's message.
        closed_reason: why the session ended (None while it runs).
    """

    def __init__(self, request: Requester, base_url: str, headers: dict[str, str], body: dict[str, Any],
                 microphone: MediaStreamTrack | None = None, configuration: RTCConfiguration | None = None,
                 connect_timeout_s: float = 15.0, events: bool = True) -> None:
        self._request = request
        self._base_url = base_url
        self._headers = headers
        self._body = body
        self._microphone = microphone
        self._configuration = configuration
        self._connect_timeout_s = connect_timeout_s
        self._want_events = events
        self.session_id: str | None = None
        self.control_token: str | None = None
        self.latency_ms: float | None = None
        self.state: str | None = None
        self.stats: dict[str, Any] = {}
        self.closed_reason: str | None = None
        self.pc: RTCPeerConnection | None = None
        media_changed = asyncio.Event()
        self._video: Inbox[VideoFrame] = Inbox(VIDEO_QUEUE, media_changed)
        self._audio: Inbox[AudioFrame] = Inbox(AUDIO_QUEUE, media_changed)
        self._events: Inbox[SessionEvent] = Inbox(EVENT_QUEUE)
        self._tasks: list[asyncio.Task] = []
        self._connected = asyncio.Event()
        self._audio_ws: ClientConnection | None = None
        self._events_ws: ClientConnection | None = None
        self._audio_format: tuple[int, int] | None = None
        self._acks: dict[str, asyncio.Future] = {}
        self._audio_error: e.EmoStreamError | None = None
        self._closing = False
        self._close_task: asyncio.Task | None = None
        self._end_error: e.EmoStreamError | None = None  # why the server ended the session, where it said
        self._pcm_lock = asyncio.Lock()
        self._gate_until: float | None = None  # after an interrupt: dropping until quiet, or until this time
        self._quiet_run = 0
        self.gated = 0  # items dropped after interrupts

    # ------------------------------------------------------------------ lifetime

    async def __aenter__(self) -> AvatarSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Offer, answer, and wait until the media connection is up.

        Raises:
            EmoStreamError: the server refused the session (its code's class: ``OverloadedError``,
                ``AvatarNotFoundError``, ...), or ``ConnectionFailedError`` when the media did not connect within
                ``connect_timeout_s``.
        """
        pc = self.pc = RTCPeerConnection(self._configuration)
        if self._microphone is not None:
            pc.addTrack(self._microphone)
        else:
            pc.addTransceiver("audio", direction="recvonly")
        pc.addTransceiver("video", direction="recvonly")
        pc.on("track", self._on_track)
        pc.on("connectionstatechange", self._on_connection_state)
        try:
            await pc.setLocalDescription(await pc.createOffer())
            answer = await self._request("POST", "/v1/sessions", json={**self._body, "sdp": pc.localDescription.sdp,
                                                                       "type": "offer"})
            self.session_id = answer["session_id"]
            self.control_token = answer["control_token"]
            self.latency_ms = answer.get("latency_ms")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
            if self._want_events:
                self._events_ws = await self._open_socket("events")
                self._tasks.append(asyncio.create_task(self._read_events(self._events_ws)))
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    await self._connected.wait()
            except TimeoutError:
                raise ConnectionFailedError(f"the session's media did not connect in {self._connect_timeout_s:g} s "
                                            f"(state {pc.connectionState}); is a firewall in the way? "
                                            "see docs/server.md on ICE servers") from None
            if self.closed_reason is not None:
                raise self._end_error or ConnectionFailedError(f"the session ended while connecting: "
                                                               f"{self.closed_reason}")
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """End the session (DELETE on the server), close both sockets and the peer connection. Idempotent; a caller
        that is cancelled meanwhile does not stop it."""
        self._closing = True
        if self.closed_reason is None:
            self.closed_reason = CLOSED_BY_CLIENT
        if self._close_task is None:
            self._close_task = asyncio.ensure_future(self._close())
        await asyncio.shield(self._close_task)

    async def _close(self) -> None:
        try:
            for socket in (self._audio_ws, self._events_ws):
                if socket is not None:
                    with contextlib.suppress(Exception):
                        await socket.close()
            if self.session_id is not None:
                with contextlib.suppress(Exception):  # gone already, or the client closed: the server reaps it
                    await self._request("DELETE", f"/v1/sessions/{self.session_id}", control=self.control_token)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
            for future in self._acks.values():
                if not future.done():
                    future.cancel()
        finally:
            if self.pc is not None:
                await self.pc.close()
            self._end_media()

    @property
    def closed(self) -> bool:
        return self.closed_reason is not None

    @property
    def ended_by_server(self) -> bool:
        """Whether the session ended other than by ``close()`` (reaped, taken over, its process lost, ...)."""
        return self.closed_reason is not None and self.closed_reason != CLOSED_BY_CLIENT

    @property
    def voice_delay_s(self) -> float:
        """How long after it is pushed the voice comes back: the session's current latency (the stats event's,
        which adapts to load and includes an underrun's delay), else the answer's."""
        latency = self.stats.get("latency_ms", self.latency_ms)
        return float(latency or 0.0) / 1000.0

    def _end_media(self) -> None:
        for inbox in (self._video, self._audio, self._events):
            inbox.close()

    def _ended(self, reason: str) -> None:
        """The server or the network ended the session."""
        if self.closed_reason is None:
            self.closed_reason = reason
            logger.info("session %s ended: %s", self.session_id, reason)
        self._connected.set()  # a start() still waiting gives up at once
        self._end_media()

    def _check_open(self) -> None:
        if self.closed_reason is not None:
            raise SessionClosedError(f"the session has ended: {self.closed_reason}", reason=self.closed_reason)

    # ------------------------------------------------------------------ media in

    async def push_pcm(self, pcm: bytes | bytearray | memoryview | np.ndarray, sample_rate: int,
                       channels: int = 1) -> None:
        """Queue an agent's voice (a PCM session): it plays from the next tick, at real time, however fast it
        is pushed. A change of format starts a new stream (docs/api.md).

        Raises:
            RequestError: bad PCM, a format the server refuses, or the server's 120 s buffer would overflow
                (raised by the next call after the server said so).
            SessionClosedError: the session has ended.
        """
        data = pcm_to_bytes(pcm, channels)
        socket = await self._pcm_socket()
        if self._audio_format != (sample_rate, channels):
            await self._command(socket, {"type": "start", "sample_rate": int(sample_rate), "channels": channels},
                                "start")
            self._audio_format = (sample_rate, channels)
        frame_bytes = 2 * channels
        step = PCM_MESSAGE_BYTES - PCM_MESSAGE_BYTES % frame_bytes
        for i in range(0, len(data), step):
            await self._send(socket, data[i: i + step])
        self._raise_audio_error()

    async def flush(self) -> float:
        """The end of an utterance: the buffered voice plays out and the mouth closes. Returns the seconds still
        buffered on the server."""
        socket = await self._pcm_socket()
        ack = await self._command(socket, {"type": "flush"}, "flush")
        self._raise_audio_error()
        return float(ack.get("buffered_s", 0.0))

    async def interrupt(self) -> None:
        """Barge-in: the server drops the queued voice and frames within a tick, and so does this client: what
        was received and not yet read is discarded, and so is what of the cut utterance is still on its way (until
        the returned voice has gone quiet)."""
        self._check_open()
        self._gate_until = time.monotonic() + GATE_S
        self._quiet_run = 0
        self._video.clear()
        self._audio.clear()
        if self._audio_ws is not None:  # after the PCM already sent on it, so none of that plays
            await self._command(self._audio_ws, {"type": "interrupt"}, "interrupt")
        else:
            await self._request("POST", f"/v1/sessions/{self.session_id}/interrupt", control=self.control_token)
        self._video.clear()
        self._audio.clear()

    async def _pcm_socket(self) -> ClientConnection:
        self._check_open()
        async with self._pcm_lock:  # two first pushes at once open one socket
            if self._audio_ws is None:
                socket = await self._open_socket("audio")
                self._tasks.append(asyncio.create_task(self._read_audio_socket(socket)))
                self._audio_ws = socket
        return self._audio_ws

    async def _send(self, socket: ClientConnection, message: str | bytes) -> None:
        try:
            await socket.send(message)
        except ConnectionClosed as exc:
            raise self._closed_error(exc) from None

    async def _command(self, socket: ClientConnection, message: dict[str, Any], ack: str) -> dict[str, Any]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._acks[ack] = future
        await self._send(socket, json.dumps(message))
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                return await future
        except TimeoutError:
            raise ConnectionFailedError(f"the server did not acknowledge {ack!r} in {ACK_TIMEOUT_S:g} s") from None
        finally:
            self._acks.pop(ack, None)

    def _raise_audio_error(self) -> None:
        error, self._audio_error = self._audio_error, None
        if error is not None:
            raise error

    async def _read_audio_socket(self, socket: ClientConnection) -> None:
        try:
            async for raw in socket:
                message = json.loads(raw)
                if message.get("type") == "ack" and (future := self._acks.get(message.get("for", ""))):
                    if not future.done():
                        future.set_result(message)
                elif message.get("type") == "error":
                    error = error_for(message.get("code"), message.get("message", "the server refused it"))
                    waiting = [f for f in self._acks.values() if not f.done()]
                    if waiting:  # an error answers the command in flight (a bad start)
                        waiting[0].set_exception(error)
                    else:
                        self._audio_error = error
        except ConnectionClosed as exc:
            error = self._closed_error(exc)
            for future in self._acks.values():
                if not future.done():
                    future.set_exception(error)
            if not self._closing:
                self._audio_error = error

    # ------------------------------------------------------------------ sockets

    async def _open_socket(self, channel: str) -> ClientConnection:
        url = _ws_url(self._base_url, f"/v1/sessions/{self.session_id}/{channel}")
        headers = {**self._headers, "X-Control-Token": self.control_token or ""}
        try:
            return await ws_connect(url, additional_headers=headers, open_timeout=10, max_size=2**20)
        except InvalidStatus as exc:
            status = exc.response.status_code
            raise error_for(None, f"the {channel} socket was refused (HTTP {status})",
                            _REFUSED_SOCKET.get(status, e.RequestError)) from None
        except (OSError, TimeoutError) as exc:
            raise ConnectionFailedError(f"cannot open the session's {channel} socket: {exc}") from None

    def _closed_error(self, exc: ConnectionClosed) -> e.EmoStreamError:
        code = exc.rcvd.code if exc.rcvd is not None else None
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        if code == CRASHED:
            return SessionClosedError("the session's process crashed", reason="the session's process crashed")
        if code in _CLOSE_ERRORS:
            return _CLOSE_ERRORS[code](reason or f"the server closed the socket ({code})")
        return SessionClosedError(f"the session has ended: {self.closed_reason or reason or 'socket closed'}",
                                  reason=self.closed_reason)

    async def _read_events(self, socket: ClientConnection) -> None:
        try:
            async for raw in socket:
                message = json.loads(raw)
                kind = str(message.get("type"))
                if kind == "state":
                    self.state = message.get("state")
                elif kind == "stats":
                    self.stats = message
                self._events.put(SessionEvent(type=kind, data=message, arrived=time.monotonic()))
                if kind == "closed":
                    self._ended(str(message.get("reason") or "closed"))
        except ConnectionClosed as exc:
            if not self._closing and self.closed_reason is None:
                self._end_error = self._closed_error(exc)
                self._ended(str(self._end_error))

    # ------------------------------------------------------------------ media out

    def _on_connection_state(self) -> None:
        assert self.pc is not None
        state = self.pc.connectionState
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed") and not self._closing:
            self._ended(f"connection {state}")

    def _on_track(self, track: MediaStreamTrack) -> None:
        assert self.pc is not None
        receiver = receiver_of(self.pc, track)
        if track.kind == "audio" and hand_on_audio_at_once(receiver) is None:
            logger.warning("aiortc's receiver changed: the returned voice goes through aiortc's own jitter buffer "
                           "(80 ms later)")
        if track.kind == "video" and hand_on_video_at_marker(receiver) is None:
            logger.warning("aiortc's receiver changed: the pictures go through aiortc's own jitter buffer "
                           "(a frame, 40 ms, later)")
        self._tasks.append(asyncio.create_task(self._receive(track)))

    async def _receive(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            arrived = time.monotonic()
            media_time = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else 0.0
            if isinstance(frame, av.VideoFrame):
                if not self._gated(None, arrived):
                    self._video.put(VideoFrame(frame=frame, media_time=media_time, arrived=arrived))
            elif isinstance(frame, av.AudioFrame):
                audio = AudioFrame.from_av(frame, media_time=media_time, arrived=arrived)
                if not self._gated(audio, arrived):
                    self._audio.put(audio)

    def _gated(self, audio: AudioFrame | None, now: float) -> bool:
        """Whether an item is dropped as part of an interrupted utterance (see QUIET_PACKETS)."""
        if self._gate_until is None:
            return False
        if audio is not None:
            quiet = audio.peak < QUIET_PEAK
            self._quiet_run = self._quiet_run + 1 if quiet else 0
        if self._quiet_run >= QUIET_PACKETS or now >= self._gate_until:
            self._gate_until = None
            return False
        self.gated += 1
        return True

    async def video(self) -> AsyncGenerator[VideoFrame, None]:
        """The returned pictures, in order, until the session ends (a consumer that falls more than 2 s behind
        loses the oldest)."""
        while (frame := await self._video.get()) is not None:
            yield frame

    async def audio(self) -> AsyncGenerator[AudioFrame, None]:
        """The returned voice, 20 ms packets, until the session ends."""
        while (frame := await self._audio.get()) is not None:
            yield frame

    async def media(self) -> AsyncGenerator[VideoFrame | AudioFrame, None]:
        """Pictures and voice in the order they arrived: the server sends them on one clock, so a player that
        plays them as they come keeps them in sync."""
        video, audio = self._video, self._audio
        while True:
            v, a = video.peek(), audio.peek()
            if v is not None or a is not None:
                if a is None or (v is not None and v.arrived <= a.arrived):
                    yield video.pop()
                else:
                    yield audio.pop()
                continue
            if video.closed and audio.closed:
                return
            video.changed.clear()
            await video.changed.wait()

    async def events(self) -> AsyncGenerator[SessionEvent, None]:
        """The server's state, stats and closed events, until the session ends."""
        while (event := await self._events.get()) is not None:
            yield event

    @property
    def dropped(self) -> dict[str, int]:
        """Received items discarded because nobody read them in time, per kind."""
        return {"video": self._video.dropped, "audio": self._audio.dropped, "events": self._events.dropped}

