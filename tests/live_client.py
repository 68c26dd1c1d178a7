"""A real aiortc peer for the live tests: sends a WAV as its microphone, records what comes back.

Received frames are kept with their arrival times; ``write_recording`` turns them into an MP4
(video at 25 fps, audio at 48 kHz) on the arrival timeline, for ``emo-stream metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from emo_stream.rtc_audio import hand_on_audio_at_once, receiver_of
from tests.impairment import UdpRelay, first_host_candidate, through

RATE = 48_000
PTIME = 0.02


class WavMicrophone(MediaStreamTrack):
    """A microphone that plays ``samples`` (48 kHz mono float32) in real time, then silence."""

    kind = "audio"

    def __init__(self, samples: np.ndarray) -> None:
        super().__init__()
        self.samples = samples.astype(np.float32)
        self.position = 0
        self.start: float | None = None
        self.sent_at: list[float] = []  # wall time each 20 ms frame left
        self._n = int(RATE * PTIME)

    def silence_from_now(self) -> None:
        self.samples = self.samples[: self.position]

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self.start is None:
            self.start = time.monotonic()
        index = len(self.sent_at)
        wait = self.start + index * PTIME - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk = self.samples[self.position: self.position + self._n]
        self.position += self._n
        if len(chunk) < self._n:
            chunk = np.pad(chunk, (0, self._n - len(chunk)))
        frame = av.AudioFrame.from_ndarray((chunk * 32767).astype(np.int16)[None, :], format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = index * self._n
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent_at.append(time.monotonic())
        return frame


def media_time(frame: av.frame.Frame) -> float | None:
    """A received frame's media time (s) from its RTP timestamp."""
    return float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None


def mono_float(frame: av.AudioFrame) -> np.ndarray:
    """A received (s16, packed or planar) audio frame as mono float32 in -1..1."""
    pcm = frame.to_ndarray().astype(np.float32) / 32768.0
    return pcm.reshape(-1, len(frame.layout.channels)).mean(axis=1) if pcm.shape[0] == 1 else pcm.mean(axis=0)


@dataclass
class Received:
    video: list[tuple[float, np.ndarray]] = field(default_factory=list)
    audio: list[tuple[float, np.ndarray]] = field(default_factory=list)
    video_pts: list[float] = field(default_factory=list)  # media time (s) from the RTP timestamps
    audio_pts: list[float] = field(default_factory=list)


class LivePeer:
    """Connects to a running server, sends the microphone, records the answer's tracks."""

    def __init__(self, base_url: str, samples: np.ndarray | None = None, avatar_id: str | None = None,
                 options: dict | None = None, headers: dict | None = None, relay: UdpRelay | None = None,
                 audio_in_order: bool = False) -> None:
        """``relay``: a started ``tests.impairment.UdpRelay`` that every packet of the session crosses.
        ``audio_in_order``: receive the voice as a browser plays it, each packet at once and a lost one given
        up once a later one is waiting (the server's own ``InOrderAudioBuffer``), not through aiortc's audio jitter
        buffer, which holds four packets and waits for a lost one until sixteen more are in (320 ms)."""
        self.audio_in_order = audio_in_order
        self.base_url = base_url
        self.relay = relay
        self.options = options
        self.headers = headers or {}
        self.mic = WavMicrophone(samples) if samples is not None else None
        self.avatar_id = avatar_id
        self.pc = RTCPeerConnection()
        self.received = Received()
        self.session_id: str | None = None
        self.control_token: str | None = None
        self.channel = None
        self._tasks: list[asyncio.Task] = []

    async def connect(self, data_channel: bool = False) -> dict:
        if self.mic is not None:
            self.pc.addTrack(self.mic)
        else:  # an agent's session: the voice comes back, nothing is sent
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        if data_channel:
            self.channel = self.pc.createDataChannel("control")

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and self.audio_in_order and \
                    hand_on_audio_at_once(receiver_of(self.pc, track)) is None:
                raise RuntimeError("aiortc's receiver changed: the in-order audio buffer does not fit it")
            self._tasks.append(asyncio.create_task(self._record(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        offer = self.pc.localDescription.sdp
        if self.relay is not None:
            self.relay.client = first_host_candidate(offer)
            offer = through(offer, self.relay.server_facing)
        body = {"sdp": offer, "type": "offer"}
        if self.avatar_id:
            body["avatar_id"] = self.avatar_id
        if self.options:
            body["options"] = self.options
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30, headers=self.headers) as client:
            answer = await client.post("/v1/sessions", json=body)
        answer.raise_for_status()
        data = answer.json()
        self.session_id = data["session_id"]
        self.control_token = data["control_token"]
        answer_sdp = data["sdp"]
        if self.relay is not None:
            self.relay.server = first_host_candidate(answer_sdp)
            answer_sdp = through(answer_sdp, self.relay.client_facing)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type=data["type"]))
        return data

    def keep_video(self, frame: av.VideoFrame) -> np.ndarray:
        """What is kept of a received video frame (RGB; a subclass may keep something cheaper)."""
        return frame.to_ndarray(format="rgb24")

    async def _record(self, track: MediaStreamTrack) -> None:
        on_frame = self.on_video if track.kind == "video" else self.on_audio
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            on_frame(time.monotonic(), frame)

    def on_video(self, arrived: float, frame: av.VideoFrame) -> None:
        """A received video frame (``arrived``: monotonic seconds); kept in ``received`` (a subclass may count)."""
        self.received.video_pts.append(media_time(frame))
        self.received.video.append((arrived, self.keep_video(frame)))

    def on_audio(self, arrived: float, frame: av.AudioFrame) -> None:
        """A received audio frame, kept in ``received`` as mono float32."""
        self.received.audio_pts.append(media_time(frame))
        self.received.audio.append((arrived, mono_float(frame)))

    async def interrupt(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=10, headers=self.headers) as client:
            r = await client.post(f"/v1/sessions/{self.session_id}/interrupt",
                                  headers={"X-Control-Token": self.control_token})
        r.raise_for_status()

    async def close(self, goodbye: bool = True) -> None:
        if goodbye and self.session_id:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=10, headers=self.headers) as client:
                with contextlib.suppress(httpx.HTTPError):
                    await client.delete(f"/v1/sessions/{self.session_id}",
                                        headers={"X-Control-Token": self.control_token})
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


async def run_peers(base_url: str, samples: np.ndarray, count: int, seconds: float,
                    avatar_id: str | None = None) -> list[LivePeer]:
    """``count`` peers connected one after the other, kept ``seconds``, then closed (what they received stays)."""
    peers = [LivePeer(base_url, samples, avatar_id=avatar_id) for _ in range(count)]
    for peer in peers:
        await peer.connect()
    await asyncio.sleep(seconds)
    for peer in peers:
        await peer.close()
    return peers


def received_fps(received: Received, skip_s: float = 1.0) -> float:
    times = [t for t, _ in received.video]
    if len(times) < 3:
        return 0.0
    start = times[0] + skip_s
    kept = [t for t in times if t >= start]
    return (len(kept) - 1) / (kept[-1] - kept[0]) if len(kept) > 2 else 0.0


def audio_timeline(received: Received) -> tuple[float, np.ndarray]:
    """(wall time of the first received sample, all samples): audio frames are continuous."""
    first_t, first = received.audio[0]
    samples = np.concatenate([a for _, a in received.audio])
    return first_t - len(first) / RATE, samples


def audio_by_media_time(received: Received) -> np.ndarray:
    """All received samples placed by their RTP media times, silence where a frame is missing: a tick the
    sender dropped on a busy machine leaves a gap instead of pulling the rest of the voice earlier."""
    if not received.audio_pts or any(m is None for m in received.audio_pts):
        return audio_timeline(received)[1]
    first = received.audio_pts[0]
    starts = [int(round((m - first) * RATE)) for m in received.audio_pts]
    out = np.zeros(starts[-1] + len(received.audio[-1][1]), np.float32)
    for start, (_, samples) in zip(starts, received.audio, strict=True):
        out[start: start + len(samples)] = samples
    return out


def recent_voice_rms(received: Received, seconds: float) -> float:
    """The RMS of the last ``seconds`` of received audio (0 before any came)."""
    recent = [a for _, a in received.audio[-int(seconds / PTIME):]]
    return float(np.sqrt(np.mean(np.concatenate(recent) ** 2))) if recent else 0.0


async def wait_for_voice(received: Received, seconds: float = 0.5, level: float = 0.02, timeout_s: float = 30) -> None:
    """Wait until the last ``seconds`` of received audio are voice (RMS above ``level``)."""
    for _ in range(int(timeout_s / 0.05)):
        if recent_voice_rms(received, seconds) > level:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no voice came back in {timeout_s:.0f} s")


def _smoothed_arrivals(arrivals: list[float], media_s: list[float | None]) -> list[float]:
    """Arrival times without their jitter: each frame at its media time (from the RTP timestamps)
    plus the track's median arrival-minus-media offset. The offset is a constant of the track."""
    if not media_s or any(m is None for m in media_s) or len(media_s) != len(arrivals):
        return arrivals
    offset = float(np.median([a - m for a, m in zip(arrivals, media_s, strict=True)]))
    return [m + offset for m in media_s]


def write_recording(received: Received, path: Path, audio_hold_s: float = 0.0, video_hold_s: float = 0.0) -> Path:
    """An MP4 of what arrived, both tracks on the arrival clock (minus the receiver's constant hold
    times): frames at their RTP media times anchored by their median arrival, audio likewise (silence where a
    packet was lost, so the voice after a loss keeps its time)."""
    samples = audio_by_media_time(received)
    audio_arrivals = _smoothed_arrivals([t for t, _ in received.audio], received.audio_pts)
    audio_t0 = audio_arrivals[0] - len(received.audio[0][1]) / RATE - audio_hold_s
    video_times = _smoothed_arrivals([t for t, _ in received.video], received.video_pts)
    video = [(t - video_hold_s, f) for t, (_, f) in zip(video_times, received.video, strict=True)]
    t0 = min(audio_t0, video[0][0])
    h, w = video[0][1].shape[:2]
    end = max(video[-1][0], audio_t0 + len(samples) / RATE)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": "18", "preset": "veryfast"}
        au = out.add_stream("aac", rate=RATE, layout="mono")
        n_frames = int((end - t0) * 25)
        j = 0
        for i in range(n_frames):
            t = t0 + i / 25
            while j + 1 < len(video) and video[j + 1][0] <= t:
                j += 1
            vf = av.VideoFrame.from_ndarray(video[j][1], format="rgb24")
            vf.pts, vf.time_base = i, fractions.Fraction(1, 25)
            out.mux(vs.encode(vf))
        out.mux(vs.encode(None))
        lead = int(round((audio_t0 - t0) * RATE))
        padded = np.concatenate([np.zeros(max(0, lead), np.float32), samples]).astype(np.float32)
        af = av.AudioFrame.from_ndarray(padded[None, :], format="flt", layout="mono")
        af.sample_rate, af.pts, af.time_base = RATE, 0, fractions.Fraction(1, RATE)
        out.mux(au.encode(af))
        out.mux(au.encode(None))
    return path


async def websocket_close_code(url: str, timeout_s: float = 10.0) -> int | None:
    """Connect to a WebSocket the server should refuse, read until it closes, return the close code."""
    import websockets

    async with websockets.connect(url, open_timeout=timeout_s) as ws:
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(timeout_s):
                while True:
                    await ws.recv()
        return ws.close_code


def offer_sdp(audio: str | None = "sendrecv", video: bool = True) -> str:
    """A real aiortc offer: an audio transceiver in ``audio``'s direction (None: none) and a receiving video one."""

    async def make() -> str:
        pc = RTCPeerConnection()
        if audio:
            pc.addTransceiver("audio", direction=audio)
        if video:
            pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())
