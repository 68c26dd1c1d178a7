"""What the agent tests share: espeak-ng speech as TTS audio frames, waits, the server's sessions ending."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import numpy as np
from pipecat.frames.frames import Frame, TTSAudioRawFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from emo_stream.audio import load_audio
from tests import media
from tests.servers import SERVER_PYTHON, metric

TTS_RATE = 24_000  # what TTS services commonly give
OUT_RATE = 24_000  # the pipeline's output rate
FRAME_S = 0.02
TICK_S = 0.04  # the server's 25 frames a second


def espeak_pcm(key: str) -> np.ndarray:
    """espeak-ng saying ``key``'s text (tests/media.py), int16 at TTS_RATE."""
    speech = load_audio(media.espeak_wav(key), sample_rate=TTS_RATE)
    return (np.clip(speech, -1, 1) * 32767).astype(np.int16)


def tts_frames(pcm: np.ndarray, frame_s: float = FRAME_S) -> list[TTSAudioRawFrame]:
    """The speech cut into TTS audio frames, as a streaming TTS service pushes them."""
    n = int(TTS_RATE * frame_s)
    return [TTSAudioRawFrame(audio=pcm[i: i + n].tobytes(), sample_rate=TTS_RATE, num_channels=1)
            for i in range(0, len(pcm), n)]


class FrameTap(FrameProcessor):
    """Keeps each frame of ``kinds`` that passes it, either way, and when it passed; passes every frame on."""

    def __init__(self, *kinds: type[Frame]) -> None:
        super().__init__()
        self.kinds = kinds
        self.frames: list[Frame] = []
        self.times: list[float] = []  # monotonic

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, self.kinds):
            self.frames.append(frame)
            self.times.append(time.monotonic())
        await self.push_frame(frame, direction)


async def wait_for(predicate, timeout_s: float, what: str) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def no_sessions_left(base: str, timeout_s: float = 5.0) -> bool:
    """Whether the server's live sessions fall to 0 within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while metric(base, "emo_stream_sessions_active") != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def metrics_report(video: Path) -> dict:
    """``emo-stream metrics`` of a video, run by the main environment (mediapipe is not in this one)."""
    done = subprocess.run([SERVER_PYTHON, "-m", "emo_stream", "metrics", "--compact", str(video)],
                          capture_output=True, text=True, check=True, timeout=300)
    return json.loads(done.stdout)
