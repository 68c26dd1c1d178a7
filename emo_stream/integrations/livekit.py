"""An emo-stream session in LiveKit Agents' avatar-worker shape: ``livekit.agents.voice.avatar.VideoGenerator``.

LiveKit's avatar worker joins the room beside the agent. Its ``AvatarRunner`` reads the agent's voice from an
``AudioReceiver`` (``DataStreamAudioReceiver`` in a room) and publishes what a ``VideoGenerator`` yields:

- ``push_audio(rtc.AudioFrame)`` sends the voice to the session (a PCM session of the server);
  ``push_audio(AudioSegmentEnd())`` ends the utterance (a flush).
- Iterating yields ``rtc.VideoFrame`` (RGB24, 25 a second, idle motion between utterances), ``rtc.AudioFrame``
  (the returned voice at ``audio_sample_rate``, only while an utterance plays, so the runner counts the
  playback position of speech alone), and ``AudioSegmentEnd`` once an utterance's returned voice has played, which
  the runner reports to the agent as playback finished.
- ``clear_buffer()`` is barge-in: the server drops the queued voice and frames, and no ``AudioSegmentEnd`` follows
  for the cut utterance (the runner reports it as interrupted itself).

A worker is then a thin wrapper (docs/integrations.md): ``await gen.start()``, then
``AvatarRunner(room, audio_recv=DataStreamAudioReceiver(room), video_gen=gen, options=gen.avatar_options())``.
This module is tested against LiveKit's own types and runner without a LiveKit server (none runs here); a
deployment in a LiveKit room is not tested.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import av
import numpy as np
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions, VideoGenerator

from emo_stream.client import AudioFrame, AvatarClient, AvatarSession, VideoFrame
from emo_stream.errors import EmoStreamError

# A returned voice packet is speech above this int16 peak; an utterance's voice has ended once none came for
# QUIET_S after the server's buffered voice should have played.
SILENT_PEAK = 8
QUIET_S = 0.2
FPS = 25.0


class EmoStreamVideoGenerator(VideoGenerator):
    """An emo-stream server session as a LiveKit ``VideoGenerator``.

    Args:
        base_url: the server (``http://127.0.0.1:8080``); or ``client``, an ``AvatarClient`` (not closed here).
        token: the server token, where it has one.
        avatar: an avatar id; None: the bundled portrait.
        background: ``original``, ``green``, ``#rrggbb`` (docs/api.md).
        audio_sample_rate, audio_channels: the voice it yields (what ``avatar_options`` tells the runner).
    """

    def __init__(self, *, base_url: str | None = None, token: str | None = None, avatar: str | None = None,
                 background: str | None = None, client: AvatarClient | None = None,
                 audio_sample_rate: int = 24_000, audio_channels: int = 1, connect_timeout_s: float = 15.0) -> None:
        if client is None and base_url is None:
            raise ValueError("EmoStreamVideoGenerator needs base_url or client")
        self._own_client = client is None
        self._client = client or AvatarClient(str(base_url), token=token)
        self._avatar = avatar
        self._background = background
        self._rate = audio_sample_rate
        self._channels = audio_channels
        self._connect_timeout_s = connect_timeout_s
        self._session: AvatarSession | None = None
        self._size: tuple[int, int] | None = None
        self._first: VideoFrame | None = None
        self._resampler: av.AudioResampler | None = None
        self._pushing = False  # an utterance is being pushed
        self._voice_started = False  # its returned voice has begun
        self._end_due: float | None = None  # when its returned voice should have played (after the flush)
        self._last_voice = 0.0

    @property
    def session(self) -> AvatarSession | None:
        return self._session

    async def start(self) -> None:
        """Open the session and wait for its first picture (its size goes into ``avatar_options``)."""
        if self._session is not None:
            return
        self._session = await self._client.session(avatar=self._avatar, background=self._background,
                                                   connect_timeout_s=self._connect_timeout_s).open()
        async for frame in self._session.video():
            self._first, self._size = frame, frame.size
            break
        if self._size is None:
            raise EmoStreamError(f"the session ended before its first picture: {self._session.closed_reason}")

    def avatar_options(self) -> AvatarOptions:
        """What ``AvatarRunner`` needs to publish this generator's tracks (after ``start``)."""
        if self._size is None:
            raise RuntimeError("call start() first")
        return AvatarOptions(video_width=self._size[0], video_height=self._size[1], video_fps=FPS,
                             audio_sample_rate=self._rate, audio_channels=self._channels)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        if self._own_client:
            await self._client.aclose()

    # ------------------------------------------------------------------ VideoGenerator

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        session = self._require_session()
        if isinstance(frame, AudioSegmentEnd):
            if self._pushing:
                buffered = await session.flush()
                self._pushing = False
                self._end_due = time.monotonic() + buffered + (session.latency_ms or 0) / 1000
            return
        self._pushing = True
        await session.push_pcm(bytes(frame.data), frame.sample_rate, frame.num_channels)

    async def clear_buffer(self) -> None:
        session = self._require_session()
        await session.interrupt()
        self._pushing = self._voice_started = False
        self._end_due = None

    def __aiter__(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[rtc.VideoFrame | rtc.AudioFrame | AudioSegmentEnd]:
        session = self._require_session()
        if self._first is not None:
            first, self._first = self._first, None
            yield self._video(first)
        async for item in session.media():
            if isinstance(item, VideoFrame):
                yield self._video(item)
            elif isinstance(item, AudioFrame):
                voiced = int(np.abs(item.pcm).max(initial=0)) > SILENT_PEAK
                if voiced and (self._pushing or self._end_due is not None):
                    self._voice_started = True
                if voiced:
                    self._last_voice = item.arrived
                if self._voice_started and (voice := self._audio(item)) is not None:
                    yield voice  # pauses inside the utterance keep their length
            now = time.monotonic()
            if self._end_due is not None and now >= self._end_due and now - self._last_voice >= QUIET_S:
                self._end_due = None
                self._voice_started = False
                yield AudioSegmentEnd()

    def _require_session(self) -> AvatarSession:
        if self._session is None:
            raise RuntimeError("call start() first")
        return self._session

    @staticmethod
    def _video(frame: VideoFrame) -> rtc.VideoFrame:
        width, height = frame.size
        return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGB24, frame.rgb.tobytes())

    def _audio(self, frame: AudioFrame) -> rtc.AudioFrame | None:
        """The returned voice (48 kHz over WebRTC) at the generator's rate and channels (None: the resampler kept
        it all for now)."""
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono" if self._channels == 1 else "stereo",
                                                rate=self._rate)
        packet = av.AudioFrame.from_ndarray(frame.pcm.reshape(1, -1), format="s16",
                                            layout="stereo" if frame.channels == 2 else "mono")
        packet.sample_rate = frame.sample_rate
        pcm = b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(packet))
        samples = len(pcm) // (2 * self._channels)
        return rtc.AudioFrame(pcm, self._rate, self._channels, samples) if samples else None
