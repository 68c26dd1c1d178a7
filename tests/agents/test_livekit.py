"""EmoStreamVideoGenerator in LiveKit Agents' avatar-worker shape, against a real server on 127.0.0.1.

No LiveKit server runs here, so the worker runs without a room: LiveKit's own ``AvatarRunner`` (its
``AVSynchronizer``, audio and video sources) with a stand-in room that is always connected and a no-op track
publication, fed by LiveKit's ``QueueAudioOutput``, the in-process stand-in for the agent's data-stream audio.
What a room adds (publishing, the data stream between agent and worker) is not tested.

Runs in the agent environment (`make test-agents`)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from livekit import rtc
from livekit.agents.voice.avatar import AudioSegmentEnd, AvatarRunner, QueueAudioOutput

from emo_stream.client.recording import PlayedMedia, write_mp4
from emo_stream.integrations.livekit import EmoStreamVideoGenerator
from tests.agents.support import TICK_S, TTS_RATE, espeak_pcm, metrics_report, no_sessions_left, wait_for
from tests.servers import metric

SPEECH_PEAK = 1600


class AlwaysConnectedRoom:
    """What AvatarRunner asks of a room before it publishes: connection events and state."""

    def on(self, *_args) -> None:
        pass

    def off(self, *_args) -> None:
        pass

    def isconnected(self) -> bool:
        return True


class RoomlessRunner(AvatarRunner):
    """LiveKit's runner, publishing nowhere: the tracks it would publish are fed all the same."""

    async def _publish_track(self) -> None:
        self._video_publication = True


@dataclass
class Yielded:
    """What the generator gave the runner, with the monotonic time of each."""

    video: list[tuple[float, rtc.VideoFrame]] = field(default_factory=list)
    audio: list[tuple[float, rtc.AudioFrame]] = field(default_factory=list)
    segment_ends: list[float] = field(default_factory=list)

    def voiced(self) -> list[float]:
        return [t for t, f in self.audio if np.abs(np.frombuffer(f.data, np.int16)).max() > SPEECH_PEAK]


class RecordingGenerator(EmoStreamVideoGenerator):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.yielded = Yielded()

    async def _stream(self):
        async for item in super()._stream():
            now = time.monotonic()
            if isinstance(item, rtc.VideoFrame):
                self.yielded.video.append((now, item))
            elif isinstance(item, rtc.AudioFrame):
                self.yielded.audio.append((now, item))
            elif isinstance(item, AudioSegmentEnd):
                self.yielded.segment_ends.append(now)
            yield item


class Worker:
    """Generator + QueueAudioOutput + the roomless runner, with the agent side's playback events."""

    def __init__(self, base: str) -> None:
        self.generator = RecordingGenerator(base_url=base, audio_sample_rate=TTS_RATE)
        self.agent_audio = QueueAudioOutput(sample_rate=TTS_RATE)
        self.finished: list[tuple[float, object]] = []
        self.agent_audio.on("playback_finished", lambda ev: self.finished.append((time.monotonic(), ev)))
        self.runner: RoomlessRunner | None = None

    async def __aenter__(self) -> Worker:
        await self.generator.start()
        self.runner = RoomlessRunner(AlwaysConnectedRoom(), audio_recv=self.agent_audio, video_gen=self.generator,
                                     options=self.generator.avatar_options())
        await self.runner.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.aclose()
        await self.generator.aclose()

    async def say(self, pcm: np.ndarray, flush: bool = True) -> float:
        """The agent's TTS, in 10 ms frames as fast as it comes (as a TTS gives it); returns when it began."""
        began = time.monotonic()
        step = TTS_RATE // 100
        for i in range(0, len(pcm), step):
            chunk = pcm[i: i + step]
            await self.agent_audio.capture_frame(rtc.AudioFrame(chunk.tobytes(), TTS_RATE, 1, len(chunk)))
        if flush:
            self.agent_audio.flush()
        return began


@pytest.fixture(scope="module")
def utterance(server, tmp_path_factory):
    speech = espeak_pcm("weather")

    async def run():
        async with Worker(server.base) as worker:
            options = worker.generator.avatar_options()
            await asyncio.sleep(1.0)
            began = await worker.say(speech)
            await wait_for(lambda: worker.finished, len(speech) / TTS_RATE + 15, "playback_finished")
            await asyncio.sleep(0.5)
            sessions_live = metric(server.base, "emo_stream_sessions_active")
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return worker, options, began, sessions_live, leftover

    worker, options, began, sessions_live, leftover = asyncio.run(run())
    yielded = worker.generator.yielded
    played = PlayedMedia(images=[(t, np.frombuffer(f.data, np.uint8).reshape(f.height, f.width, 3))
                                 for t, f in yielded.video],
                         audio=[(t, np.frombuffer(f.data, np.int16).copy()) for t, f in yielded.audio],
                         sample_rate=TTS_RATE)
    out = write_mp4(played, tmp_path_factory.mktemp("livekit") / "yielded.mp4")
    report = metrics_report(out)
    return worker, options, began, sessions_live, leftover, report, speech


def test_the_generator_yields_livekit_frames_at_the_servers_size_and_rate(utterance):
    worker, options, began, sessions_live, *_ = utterance
    yielded = worker.generator.yielded
    assert sessions_live == 1
    assert (options.video_width, options.video_height, options.audio_sample_rate) == (256, 256, TTS_RATE)
    frame = yielded.video[0][1]
    assert (frame.width, frame.height, frame.type) == (256, 256, rtc.VideoBufferType.RGB24)
    span = yielded.video[-1][0] - yielded.video[0][0]
    assert len(yielded.video) >= 0.8 * 25 * span
    assert all(f.sample_rate == TTS_RATE and f.num_channels == 1 for _, f in yielded.audio)
    assert yielded.audio[0][0] > began, "no audio while the portrait idles before the utterance"


def test_an_utterance_ends_with_one_segment_end_and_a_finished_playback(utterance):
    worker, _, began, _, _, _, speech = utterance
    yielded = worker.generator.yielded
    assert len(yielded.segment_ends) == 1 and len(worker.finished) == 1
    finished_at, event = worker.finished[0]
    assert not event.interrupted
    assert yielded.voiced()[-1] < yielded.segment_ends[0] <= finished_at, "finished after the voice was returned"
    duration = len(speech) / TTS_RATE
    assert 0.9 * duration <= event.playback_position <= duration + 1.0


def test_the_mouth_follows_the_voice_the_runner_got(utterance):
    *_, report, _ = utterance
    assert report["lipsync_r"] >= 0.4, report
    assert abs(report["av_offset_ms"]) <= 120, report


def test_the_worker_closes_its_session_and_leaves_no_task(utterance, server):
    worker, *_, leftover, _, _ = utterance
    assert worker.generator.session is None
    assert not leftover, f"tasks left running: {leftover}"
    assert no_sessions_left(server.base)


def test_clear_buffer_cuts_the_utterance_and_the_runner_reports_it_interrupted(server):
    speech = espeak_pcm("story")

    async def run():
        async with Worker(server.base) as worker:
            await worker.say(speech, flush=False)
            yielded = worker.generator.yielded
            await wait_for(lambda: yielded.voiced(), 15, "the returned voice")
            await asyncio.sleep(1.0)
            cleared = time.monotonic()
            worker.agent_audio.clear_buffer()  # the agent's barge-in, as AgentSession does it
            await wait_for(lambda: worker.finished, 5, "playback_finished")
            await asyncio.sleep(1.5)
            return worker, cleared

    worker, cleared = asyncio.run(run())
    yielded = worker.generator.yielded
    late = [t - cleared for t in yielded.voiced() if t > cleared + 2 * TICK_S]
    assert not late, f"speech yielded {late[:3]} s after clear_buffer"
    assert len(worker.finished) == 1 and worker.finished[0][1].interrupted
    assert not yielded.segment_ends, "no segment end for a cut utterance (the runner reported it)"
    assert yielded.video[-1][0] > cleared + 1.0, "the idle portrait goes on"
