"""EmoStreamVideoService inside a real pipecat Pipeline, run as pipecat 1.x runs one (``PipelineWorker``, which
``PipelineTask`` became, on a ``WorkerRunner``), against a real server on 127.0.0.1.

Runs in the agent environment (`make test-agents`); the server runs from the main one."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import httpx
import numpy as np
import pytest
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    InterruptionFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.workers.runner import WorkerRunner

from emo_stream.integrations.pipecat import EmoStreamVideoService
from emo_stream.integrations.pipecat_recorder import Mp4RecorderSink
from tests.agents.support import (
    OUT_RATE,
    TICK_S,
    TTS_RATE,
    FrameTap,
    espeak_pcm,
    metrics_report,
    no_sessions_left,
    tts_frames,
    wait_for,
)
from tests.media import REPO
from tests.servers import metric


class Run:
    """A pipeline [catcher, service, sink, stops] running in the background: ``catcher`` keeps the error frames
    that travel upstream, ``stops`` the TTSStoppedFrames that come out."""

    def __init__(self, base: str, **service_args) -> None:
        self.catcher = FrameTap(ErrorFrame)
        self.service = EmoStreamVideoService(base_url=base, **service_args)
        self.sink = Mp4RecorderSink()
        self.stops = FrameTap(TTSStoppedFrame)
        self.worker = PipelineWorker(Pipeline([self.catcher, self.service, self.sink, self.stops]),
                                 params=PipelineParams(audio_out_sample_rate=OUT_RATE),
                                 enable_rtvi=False, idle_timeout_secs=None)
        self.runner = WorkerRunner(handle_sigint=False)
        self.running: asyncio.Task | None = None

    async def __aenter__(self) -> Run:
        await self.runner.add_workers(self.worker)
        self.running = asyncio.create_task(self.runner.run())
        return self

    async def __aexit__(self, *exc) -> None:
        if not self.running.done():
            await self.worker.queue_frame(EndFrame())
        await asyncio.wait_for(self.running, 30)

    def voiced_arrivals(self, level: int = 1600) -> list[float]:
        return [t for t, pcm in self.sink.played.received_audio if np.abs(pcm).max() > level]


@pytest.fixture(scope="module")
def spoken(server, tmp_path_factory):
    """1 s idle, then ~4 s of "TTS" in 20 ms frames, flushed by TTSStoppedFrame; EndFrame once it has played."""
    speech = espeak_pcm("weather")
    out = tmp_path_factory.mktemp("pipecat") / "spoken.mp4"

    async def run():
        async with Run(server.base) as run:
            await wait_for(lambda: len(run.sink.played.images) > 25, 30, "the idle portrait")
            sessions_live = metric(server.base, "emo_stream_sessions_active")
            await run.worker.queue_frames([TTSStartedFrame(), *tts_frames(speech), TTSStoppedFrame()])
            await wait_for(lambda: run.voiced_arrivals(), 15, "the returned voice")
            await asyncio.sleep(len(speech) / TTS_RATE + 1.0)
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return run, sessions_live, leftover

    run, sessions_live, leftover = asyncio.run(run())
    run.sink.write(out)
    report = metrics_report(out)
    return run, sessions_live, leftover, report, speech


def test_the_portrait_idles_then_speaks_after_the_first_tts_audio(spoken):
    run, sessions_live, *_ = spoken
    service, played = run.service, run.sink.played
    assert sessions_live == 1
    assert played.image_arrivals[0] < service.first_audio_in, "the idle portrait shows before anyone speaks"
    first_voice = run.voiced_arrivals()[0]
    assert service.first_audio_in < first_voice < service.first_audio_in + 5.0
    images = [rgb for _, rgb in played.images]
    assert images[0].shape == (256, 256, 3)
    span = played.image_arrivals[-1] - played.image_arrivals[0]
    assert len(images) >= 0.8 * 25 * span, "about 25 images a second reach the sink"
    assert played.sample_rate == OUT_RATE
    assert not run.catcher.frames


def test_the_mouth_follows_the_voice_at_the_sink(spoken):
    *_, report, speech = spoken
    assert report["lipsync_r"] >= 0.4, report
    assert abs(report["av_offset_ms"]) <= 120, report
    voiced = sum(len(pcm) for t, pcm in spoken[0].sink.played.audio if np.abs(pcm).max() > 1600) / OUT_RATE
    assert voiced > 0.5 * len(speech) / TTS_RATE, "most of the utterance played"


def test_tts_stopped_is_passed_on_once_the_voice_has_played(spoken):
    run = spoken[0]
    assert len(run.stops.times) == 1
    last_voice = run.voiced_arrivals()[-1]
    assert last_voice < run.stops.times[0] < last_voice + 2.0, "after the utterance's voice, not when it was sent"


def test_a_session_the_server_ends_is_one_error_frame(server):
    speech = espeak_pcm("hello")

    async def run():
        async with Run(server.base) as run:
            await wait_for(lambda: run.service.session is not None and run.sink.played.images, 30, "the session")
            session = run.service.session
            async with httpx.AsyncClient(base_url=server.base) as http:  # ended from outside the pipeline
                gone = await http.delete(f"/v1/sessions/{session.session_id}",
                                         headers={"X-Control-Token": session.control_token})
            await wait_for(lambda: run.catcher.frames, 10, "an error frame")
            await run.worker.queue_frames([TTSStartedFrame(), *tts_frames(speech), TTSStoppedFrame()])
            await asyncio.sleep(1.0)
            return run, gone.status_code

    run, status = asyncio.run(run())
    assert status == 204
    assert len(run.catcher.frames) == 1, [e.error for e in run.catcher.frames]
    assert "ended" in run.catcher.frames[0].error


def test_end_frame_closes_the_session_and_leaves_no_task(spoken, server):
    run, _, leftover, *_ = spoken
    assert run.service.session is None
    assert not leftover, f"tasks left running: {leftover}"
    assert no_sessions_left(server.base)


def test_an_interruption_cuts_the_utterance_within_two_ticks(server):
    speech = espeak_pcm("story")

    async def run():
        async with Run(server.base) as run:
            await wait_for(lambda: len(run.sink.played.images) > 10, 30, "the idle portrait")
            await run.worker.queue_frames([TTSStartedFrame(), *tts_frames(speech), TTSStoppedFrame()])
            await wait_for(lambda: run.voiced_arrivals(), 15, "the returned voice")
            await asyncio.sleep(1.0)
            await run.worker.queue_frame(InterruptionFrame())
            await wait_for(lambda: run.sink.played.interrupted_at, 5, "the interruption to reach the sink")
            images_before = len(run.sink.played.images)
            await asyncio.sleep(1.5)
            return run, images_before

    run, images_before = asyncio.run(run())
    cut = run.sink.played.interrupted_at[0]
    late = [t - cut for t in run.voiced_arrivals() if t > cut + 2 * TICK_S]
    assert not late, f"speech reached the sink {late[:3]} s after the interruption"
    assert len(run.sink.played.images) > images_before + 20, "the idle portrait goes on"
    assert not run.catcher.frames


def test_a_refused_session_is_an_error_frame_not_a_crash(server):
    async def run():
        async with Run(server.base, avatar="no-such-portrait") as run:
            await wait_for(lambda: run.catcher.frames, 15, "an error frame")
            return run

    run = asyncio.run(run())
    assert "avatar" in run.catcher.frames[0].error


def test_the_local_pipeline_example_writes_a_speaking_mp4(server, tmp_path):
    out = tmp_path / "example.mp4"
    done = subprocess.run([sys.executable, str(REPO / "examples" / "pipecat_local.py"), "--server", server.base,
                           "--text", "Good morning, everyone.", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = metrics_report(out)
    assert report["duration_s"] > 1.0 and report["lipsync_r"] >= 0.4, report
    refused = subprocess.run([sys.executable, str(REPO / "examples" / "pipecat_local.py"), "--server", server.base,
                              "--avatar", "no-such-portrait", "--out", str(tmp_path / "no.mp4")],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "error: emo-stream: no avatar" in refused.stderr
    assert "Traceback" not in refused.stderr
