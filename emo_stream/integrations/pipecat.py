"""A pipecat video service: TTS audio in, the portrait's frames and the voice on one clock out.

Put it where a pipeline's avatar service goes, after the TTS and before the output transport::

    Pipeline([..., tts, EmoStreamVideoService(base_url="http://127.0.0.1:8080"), transport.output()])

- ``TTSAudioRawFrame`` goes to an emo-stream session (a PCM session of the server) and is not passed on: the
  server returns the voice delayed by its pipeline, in step with the frames it animates.
- Out come ``OutputImageRawFrame`` (RGB, 25 a second, idle motion between utterances) and ``TTSAudioRawFrame`` of
  the returned voice at the pipeline's output rate, in the order they arrived. Each image has
  ``sync_with_audio`` set, so the transport shows it after the voice before it has played.
- ``TTSStoppedFrame`` flushes the utterance (the mouth closes on its last sound). ``InterruptionFrame`` drops
  the server's queued voice and frames and this service's own (no frame of the cut speech comes after it).
- ``EndFrame`` lets the voice already pushed play out, then closes the session; ``CancelFrame`` closes it at once.

Install with ``pip install emo-stream[pipecat]`` in the agent's environment (docs/integrations.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import av
import numpy as np
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
from emo_stream.errors import EmoStreamError

logger = logging.getLogger(__name__)

# The returned voice is a continuous track, silent while the portrait idles. Silence is not passed on (the transport
# would take the idle portrait for a speaking bot), except within VOICE_HOLD_S of speech: pauses inside an
# utterance keep their length. A packet is silent below SILENT_PEAK (int16).
SILENT_PEAK = 8
VOICE_HOLD_S = 0.5
# The longest a voice packet waits for the picture of its tick (one tick and a half: a lost picture does not stop
# the voice).
AUDIO_HOLD_S = 0.06
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
        if client is None and base_url is None:
            raise ValueError("EmoStreamVideoService needs base_url or client")
        self._own_client = client is None
        self._client = client or AvatarClient(str(base_url), token=token)
        self._avatar = avatar
        self._background = background
        self._connect_timeout_s = connect_timeout_s
        self._session: AvatarSession | None = None
        self._media_task: asyncio.Task | None = None
        self._out_rate = 24_000
        self._resampler: av.AudioResampler | None = None
        self._pushed_s = 0.0  # TTS audio pushed since the last flush
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
                if self._session is not None and self._pushed_s > 0:
                    await self._session.flush()
                    self._pushed_s = 0.0
                await self.push_frame(frame, direction)
            elif isinstance(frame, InterruptionFrame):
                if self._session is not None and not self._session.closed:
                    await self._session.interrupt()
                    self._pushed_s = 0.0
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
        if self._own_client:
            await self._client.aclose()
        await super().cleanup()

    # ------------------------------------------------------------------ the session

    async def _start(self) -> None:
        if self._session is not None:
            return
        self._session = await self._client.session(avatar=self._avatar, background=self._background,
                                                   connect_timeout_s=self._connect_timeout_s).open()
        self._media_task = self.create_task(self._relay_media(self._session), "emo_stream_media")

    async def _push_tts(self, frame: TTSAudioRawFrame) -> None:
        if self._session is None:
            return
        if self.first_audio_in is None:
            self.first_audio_in = time.monotonic()
        await self._session.push_pcm(frame.audio, frame.sample_rate, frame.num_channels)
        self._pushed_s += len(frame.audio) / (2 * frame.num_channels * frame.sample_rate)

    async def _finish(self, play_out: bool) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        if play_out and not session.closed and self.first_audio_in is not None:
            with contextlib.suppress(EmoStreamError):
                buffered = await session.flush()  # what is still queued on the server, flushed or not
                await asyncio.sleep(buffered + (session.latency_ms or 0) / 1000 + END_MARGIN_S)
        if self._media_task is not None:
            await self.cancel_task(self._media_task)
            self._media_task = None
        await session.close()

    async def _relay_media(self, session: AvatarSession) -> None:
        """Pass the session's pictures and voice on, each picture ahead of the voice of its own tick.

        The server sends a tick's picture and its 40 ms of voice together, and the picture, decoded later, comes
        second. Held back until then (at most ``AUDIO_HOLD_S``), the voice follows its picture, so a transport
        that shows each picture once the voice queued before it has played (``sync_with_audio``) shows it as
        its own voice starts.
        """
        voice_until = 0.0
        held: list[AudioFrame] = []
        async for item in session.media():
            if isinstance(item, VideoFrame):
                image = OutputImageRawFrame(image=item.rgb.tobytes(), size=item.size, format="RGB")
                image.sync_with_audio = True
                image.pts = int(item.media_time * 1e9)
                if self.first_image_out is None:
                    self.first_image_out = time.monotonic()
                await self.push_frame(image)
            else:
                held.append(item)
                if held[-1].arrived - held[0].arrived < AUDIO_HOLD_S:
                    continue
            for voice in held:
                if int(np.abs(voice.pcm).max(initial=0)) > SILENT_PEAK:
                    voice_until = voice.arrived + VOICE_HOLD_S
                if voice.arrived <= voice_until and (pcm := self._resample(voice)):
                    await self.push_frame(TTSAudioRawFrame(audio=pcm, sample_rate=self._out_rate, num_channels=1))
            held.clear()
        if session.closed_reason and session.closed_reason != "closed by the client":
            await self.push_error(f"emo-stream: the avatar session ended: {session.closed_reason}")

    def _resample(self, item: AudioFrame) -> bytes:
        """The returned voice (48 kHz, as WebRTC carries it) as mono s16 at the pipeline's output rate."""
        if self._resampler is None:
            self._resampler = av.AudioResampler(format="s16", layout="mono", rate=self._out_rate)
        frame = av.AudioFrame.from_ndarray(item.pcm.reshape(1, -1), format="s16",
                                           layout="stereo" if item.channels == 2 else "mono")
        frame.sample_rate = item.sample_rate
        return b"".join(out.to_ndarray().tobytes() for out in self._resampler.resample(frame))
