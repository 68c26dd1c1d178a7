"""Test "TTS" for the agent tests: espeak-ng speech as pipecat's TTS audio frames."""

from __future__ import annotations

import numpy as np
from pipecat.frames.frames import TTSAudioRawFrame

from emo_stream.audio import load_audio
from tests import media

TTS_RATE = 24_000  # what TTS services commonly give
OUT_RATE = 24_000  # the pipeline's output rate
FRAME_S = 0.02


def espeak_pcm(key: str) -> np.ndarray:
    """espeak-ng saying ``key``'s text (tests/media.py), int16 at TTS_RATE."""
    speech = load_audio(media.espeak_wav(key), sample_rate=TTS_RATE)
    return (np.clip(speech, -1, 1) * 32767).astype(np.int16)


def tts_frames(pcm: np.ndarray, frame_s: float = FRAME_S) -> list[TTSAudioRawFrame]:
    """The speech cut into TTS audio frames, as a streaming TTS service pushes them."""
    n = int(TTS_RATE * frame_s)
    return [TTSAudioRawFrame(audio=pcm[i: i + n].tobytes(), sample_rate=TTS_RATE, num_channels=1)
            for i in range(0, len(pcm), n)]
