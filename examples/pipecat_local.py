"""A whole pipecat pipeline on one machine: a local "TTS", the emo-stream video service, and a sink that writes
what a transport would play to an MP4.

    make serve                                    # in one terminal: the server, from its own environment
    pip install "emo-stream[pipecat]"             # in the agent's environment
    python examples/pipecat_local.py --text "Hello, I am a portrait." --out hello.mp4

The "TTS" is espeak-ng when it is installed (Debian: apt install espeak-ng), else a warbling tone. In a real agent
a TTS service (Cartesia, ElevenLabs, Piper, ...) stands in its place and the transport (Daily, WebRTC, ...) in the
sink's.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys

import av
import numpy as np
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    TTSAudioRawFrame,
    TTSSpeakFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from emo_stream.errors import EmoStreamError
from emo_stream.integrations.pipecat import EmoStreamVideoService
from emo_stream.integrations.pipecat_recorder import Mp4RecorderSink

RATE = 24_000


def speak(text: str) -> np.ndarray:
    """``text`` as int16 mono speech at RATE: espeak-ng, or a tone of the text's length without it."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        seconds = max(1.0, 0.07 * len(text))
        t = np.arange(int(seconds * RATE)) / RATE
        tone = np.sin(2 * np.pi * (180 + 40 * np.sin(2 * np.pi * 3 * t)) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
        return (0.4 * tone * 32767).astype(np.int16)
    wav = subprocess.run([espeak, "--stdout", text], capture_output=True, check=True).stdout
    import io

    with av.open(io.BytesIO(wav)) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
        chunks = [out.to_ndarray().reshape(-1) for frame in container.decode(audio=0)
                  for out in resampler.resample(frame)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.int16)


class LocalTTS(FrameProcessor):
    """TTSSpeakFrame -> TTSStartedFrame, 20 ms TTSAudioRawFrames, TTSStoppedFrame, as a streaming TTS gives them."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if not isinstance(frame, TTSSpeakFrame):
            await self.push_frame(frame, direction)
            return
        pcm = await asyncio.to_thread(speak, frame.text)
        await self.push_frame(TTSStartedFrame())
        step = RATE // 50
        for i in range(0, len(pcm), step):
            await self.push_frame(TTSAudioRawFrame(audio=pcm[i: i + step].tobytes(), sample_rate=RATE, num_channels=1))
        await self.push_frame(TTSStoppedFrame())


async def main(args: argparse.Namespace) -> int:
    logger.remove()  # pipecat logs every link at DEBUG
    logger.add(sys.stderr, level="WARNING")
    service = EmoStreamVideoService(base_url=args.server, token=args.token, avatar=args.avatar)
    sink = Mp4RecorderSink()
    worker = PipelineWorker(Pipeline([LocalTTS(), service, sink]), params=PipelineParams(audio_out_sample_rate=RATE),
                            enable_rtvi=False, idle_timeout_secs=None)
    errors: list[str] = []

    @worker.event_handler("on_pipeline_error")
    async def on_error(_worker, frame) -> None:
        errors.append(frame.error)
        await worker.cancel()

    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    # The EndFrame follows the speech: the service lets it play out, then closes its session.
    await worker.queue_frames([TTSSpeakFrame(text) for text in args.text] + [EndFrame()])
    await runner.run()
    if errors:
        print(f"error: {errors[0]}", file=sys.stderr)
        return 2
    path = sink.write(args.out)
    print(f"wrote {path}: {len(sink.played.images)} pictures; score it with: emo-stream metrics {path}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="http://127.0.0.1:8080", help="the emo-stream server")
    parser.add_argument("--token", default=None, help="the server token, where it has one")
    parser.add_argument("--avatar", default=None, help="an avatar id (default: the bundled portrait)")
    parser.add_argument("--text", action="append", default=None, help="what to say (repeat for more utterances)")
    parser.add_argument("--out", default="pipecat_local.mp4", help="the MP4 to write")
    arguments = parser.parse_args()
    arguments.text = arguments.text or ["Hello! I am a portrait, and I speak with your agent's voice."]
    try:
        sys.exit(asyncio.run(main(arguments)))
    except EmoStreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
