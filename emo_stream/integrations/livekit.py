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

import logging
import time
from collections.abc import AsyncIterator

from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarOptions, VideoGenerator

from emo_stream.client import AvatarClient, AvatarSession, VideoFrame
from emo_stream.client.frames import AudioFrame, VoiceResampler
from emo_stream.errors import EmoStreamError
from emo_stream.integrations.seat import AvatarSeat
from emo_stream.integrations.utterances import UtterancePlayout

logger = logging.getLogger(__name__)

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
        self._seat = AvatarSeat.make("EmoStreamVideoGenerator", base_url, token, client, avatar, background,
                                     connect_timeout_s)
        self._rate = audio_sample_rate
        self._channels = audio_channels
        self._session: AvatarSession | None = None
        self._size: tuple[int, int] | None = None
        self._first: VideoFrame | None = None
        self._resample = VoiceResampler(audio_sample_rate, audio_channels)
        self._playout = UtterancePlayout()

    @property
    def session(self) -> AvatarSession | None:
        return self._session

    async def start(self) -> None:
        """Open the session and wait for its first picture (its size goes into ``avatar_options``)."""
        if self._session is not None:
            return
        self._session = await self._seat.open()
        pictures = self._session.video()
        self._first = await anext(pictures, None)
        await pictures.aclose()
        if self._first is None:
            raise EmoStreamError(f"the session ended before its first picture: {self._session.closed_reason}")
        self._size = self._first.size

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
        await self._seat.aclose()

    # ------------------------------------------------------------------ VideoGenerator

    async def push_audio(self, frame: rtc.AudioFrame | AudioSegmentEnd) -> None:
        """The agent's voice. An error is logged, not raised: the runner's reader would stop for good."""
        session = self._require_session()
        if session.closed:
            return  # logged once, when the session ended
        try:
            if isinstance(frame, AudioSegmentEnd):
                await self._playout.flush(session)
                return
            self._playout.pushed()
            await session.push_pcm(bytes(frame.data), frame.sample_rate, frame.num_channels)
        except EmoStreamError as exc:
            logger.error("emo-stream refused the agent's audio: %s", exc)

    async def clear_buffer(self) -> None:
        session = self._require_session()
        self._playout.reset()  # first: a segment the runner starts meanwhile is a new one
        if not session.closed:
            try:
                await session.interrupt()
            except EmoStreamError as exc:
                logger.error("emo-stream could not interrupt: %s", exc)

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
            elif self._playout.hear(item) and (voice := self._audio(item)) is not None:
                yield voice  # pauses inside the utterance keep their length
            if self._playout.played(time.monotonic()):
                yield AudioSegmentEnd()
        if session.ended_by_server:
            logger.error("the emo-stream session ended: %s", session.closed_reason)

    def _require_session(self) -> AvatarSession:
        if self._session is None:
            raise RuntimeError("call start() first")
        return self._session

    @staticmethod
    def _video(frame: VideoFrame) -> rtc.VideoFrame:
        width, height = frame.size
        return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGB24, frame.rgb.tobytes())

    def _audio(self, frame: AudioFrame) -> rtc.AudioFrame | None:
        """The returned voice at the generator's rate and channels (None: the resampler kept it all for now)."""
        pcm = self._resample(frame)
        samples = len(pcm) // (2 * self._channels)
        return rtc.AudioFrame(pcm, self._rate, self._channels, samples) if samples else None
