"""A pipecat video service: TTS audio in, the portrait's frames and the voice on one clock out.

Put it where a pipeline's avatar service goes, after the TTS and before the output transport::

    Pipeline([..., tts, EmoStreamVideoService(base_url="http://127.0.0.1:8080"), transport.output()])

- ``TTSAudioRawFrame`` goes to an emo-stream session (a PCM session of the server) and is not passed on: the
  server returns the voice delayed by its pipeline, in step with the frames it animates.
- Out come ``OutputImageRawFrame`` (RGB, 25 a second, idle motion between utterances) and ``TTSAudioRawFrame`` of
  the returned voice at the pipeline's output rate, in the order they arrived. Each image has
  ``sync_with_audio`` set, so the transport shows it after the voice before it has played.
- ``TTSStoppedFrame`` flushes the utterance (the mouth closes on its last sound) and is passed on once the
  returned voice of the utterance has played, so the transport's idea of the bot speaking follows the voice it
  plays. ``InterruptionFrame`` drops the server's queued voice and frames and this service's own (no frame of the
  cut speech comes after it).
- ``EndFrame`` lets the voice already pushed play out, then closes the session; ``CancelFrame`` closes it at once.

Install with ``pip install emo-stream[pipecat]`` in the agent's environment (docs/integrations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque

from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor, FrameProcessorSetup

from emo_stream.client import AudioFrame, AvatarClient, AvatarSession, VideoFrame
from emo_stream.client.frames import VoiceResampler
from emo_stream.errors import EmoStreamError
from emo_stream.integrations.seat import AvatarSeat
from emo_stream.integrations.utterances import UtterancePlayout

logger = logging.getLogger(__name__)

# The longest a voice packet waits for the picture of its tick (one tick and a half: a lost picture does not stop
# the voice).
AUDIO_HOLD_S = 0.06
TICK_S = 0.04  # the server's 25 frames a second
# After EndFrame: how long past the server's buffered voice (and its pipeline delay) to wait before closing.
END_MARGIN_S = 0.5


class EmoStreamVideoService(FrameProcessor):
    """An emo-stream server as a pipecat avatar video service.

    Args:
        base_url: the server (``http://127.0.0.1:8080``).
        token: the server token, where it has one.
        avatar: an avatar id (``AvatarClient.upload_avatar``); None: the bundled portrait.
        background: ``original``, ``green``, ``#rrggbb`` (docs/api.md).
        client: an ``AvatarClient`` to use instead of making one (it is not closed with the service).
        connect_timeout_s: how long the session's media may take to connect.
    """

    def __init__(self, *, base_url: str | None = None, token: str | None = None, avatar: str | None = None,
                 background: str | None = None, client: AvatarClient | None = None,
                 connect_timeout_s: float = 15.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self._seat = AvatarSeat.make("EmoStreamVideoService", base_url, token, client, avatar, background,
                                     connect_timeout_s)
        self._session: AvatarSession | None = None
        self._media_task: asyncio.Task | None = None
        self._out_rate = 24_000
        self._resample: VoiceResampler | None = None
        self._playout = UtterancePlayout()
        self._stopped: deque[TTSStoppedFrame] = deque()  # passed on as their utterances finish playing
        self._held: list[AudioFrame] = []  # voice waiting for the picture of its tick
        self.first_audio_in: float | None = None  # monotonic times, for benchmarks and tests
        self.first_image_out: float | None = None

    @property
    def session(self) -> AvatarSession | None:
        return self._session

    async def setup(self, setup: FrameProcessorSetup) -> None:
        await super().setup(setup)
        self._out_rate = int(setup.audio_out_sample_rate or self._out_rate)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        try:
            if isinstance(frame, StartFrame):
                await self.push_frame(frame, direction)
                await self._start()
            elif isinstance(frame, TTSAudioRawFrame):
                await self._push_tts(frame)
            elif isinstance(frame, TTSStoppedFrame):
                if not await self._flush():
                    await self.push_frame(frame, direction)  # nothing was said: nothing to wait for
                else:
                    self._stopped.append(frame)
            elif isinstance(frame, InterruptionFrame):
                self._playout.reset()
                self._stopped.clear()
                self._held.clear()
                if self._live():
                    await self._session.interrupt()  # type: ignore[union-attr]
                await self.push_frame(frame, direction)
            elif isinstance(frame, EndFrame):
                await self._finish(play_out=True)
                await self.push_frame(frame, direction)
            elif isinstance(frame, CancelFrame):
                await self._finish(play_out=False)
                await self.push_frame(frame, direction)
            else:
                await self.push_frame(frame, direction)
        except EmoStreamError as exc:
            await self.push_error(f"emo-stream: {exc}", exception=exc)

    async def cleanup(self) -> None:
        await self._finish(play_out=False)
        await self._seat.aclose()
        await super().cleanup()

    # ------------------------------------------------------------------ the session

    def _live(self) -> bool:
        return self._session is not None and not self._session.closed

    async def _start(self) -> None:
        if self._session is not None:
            return
        try:
            self._session = await self._seat.open()
        except EmoStreamError as exc:  # no session, no avatar: this service can do nothing more
            await self.push_error(f"emo-stream: {exc}", exception=exc, force_treat_as_permanent=True)
            return
        self._media_task = self.create_task(self._relay_media(self._session), "emo_stream_media")

    async def _push_tts(self, frame: TTSAudioRawFrame) -> None:
        if not self._live():
            return  # the failure was reported once, when the session ended or could not start
        if self.first_audio_in is None:
            self.first_audio_in = time.monotonic()
        self._playout.pushed()
        await self._session.push_pcm(frame.audio, frame.sample_rate, frame.num_channels)  # type: ignore[union-attr]

    async def _flush(self) -> bool:
        """End the utterance being pushed; False when none was."""
        return self._live() and await self._playout.flush(self._session)  # type: ignore[arg-type]

    async def _finish(self, play_out: bool) -> None:
        """Close the session; with ``play_out``, once the voice already pushed has played."""
        session = self._session
        if session is None:
            return
        try:
            if play_out and not session.closed and self.first_audio_in is not None:
                with contextlib.suppress(EmoStreamError):
                    buffered = await session.flush()  # what is still queued on the server, flushed or not
                    await asyncio.sleep(buffered + session.voice_delay_s + END_MARGIN_S)
        finally:
            self._session = None
            task, self._media_task = self._media_task, None
            if task is not None:
                task.cancel()
            await session.close()
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)

    async def _relay_media(self, session: AvatarSession) -> None:
        """Pass the session's pictures and voice on, each picture just ahead of the voice of its own tick.

        Both tracks start on the session's first tick, so a picture at media time t was made from the voice at
        [t, t + one tick). The voice of a tick whose picture has not come yet waits for it (at most
        ``AUDIO_HOLD_S``); the rest goes on at once. A transport that shows each picture once the voice queued
        before it has played (``sync_with_audio``) then shows it as its own voice starts. Only an utterance's
        voice is passed on (``UtterancePlayout``).
        """
        held = self._held
        shown_until = -1.0  # media time up to which the pictures have gone on (their ticks' ends)
        async for item in session.media():
            if isinstance(item, VideoFrame):
                await self._push_voice(_take(held, item.media_time))  # the ticks before it
                image = OutputImageRawFrame(image=item.rgb.tobytes(), size=item.size, format="RGB")
                image.sync_with_audio = True
                image.pts = int(item.media_time * 1e9)
                if self.first_image_out is None:
                    self.first_image_out = time.monotonic()
                await self.push_frame(image)
                shown_until = item.media_time + TICK_S
            else:
                held.append(item)
            now = time.monotonic()
            await self._push_voice(_take(held, shown_until, arrived_by=now - AUDIO_HOLD_S))
            while self._stopped and self._playout.played(now):
                await self.push_frame(self._stopped.popleft())
        if session.ended_by_server:
            await self.push_error(f"emo-stream: the avatar session ended: {session.closed_reason}",
                                  force_treat_as_permanent=True)

    async def _push_voice(self, packets: list[AudioFrame]) -> None:
        for voice in packets:
            if self._playout.hear(voice) and (pcm := self._voice_pcm(voice)):
                await self.push_frame(TTSAudioRawFrame(audio=pcm, sample_rate=self._out_rate, num_channels=1))

    def _voice_pcm(self, item: AudioFrame) -> bytes:
        if self._resample is None:
            self._resample = VoiceResampler(self._out_rate)
        return self._resample(item)


def _take(held: list[AudioFrame], before: float, arrived_by: float = -math.inf) -> list[AudioFrame]:
    """The held packets of media time before ``before``, or that arrived by ``arrived_by`` (they waited long
    enough), in order, taken out of ``held``."""
    marks = [voice.media_time < before or voice.arrived <= arrived_by for voice in held]
    taken = [voice for voice, go in zip(held, marks, strict=True) if go]
    held[:] = [voice for voice, go in zip(held, marks, strict=True) if not go]
    return taken
