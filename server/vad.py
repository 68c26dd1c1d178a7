"""Voice activity detection, injected into sessions through one small protocol.

``SileroVAD`` runs the silero-vad package's bundled TorchScript model on 512-sample chunks of
16 kHz audio; ``EnergyVAD`` is a threshold on loudness (no model) for tests and fallbacks.
``SpeechGate`` turns per-window probabilities into a speaking/idle state with hysteresis.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

SILERO_CHUNK = 512  # samples at 16 kHz: the model's fixed input
WARM_CALLS = 3  # TorchScript: a profiling call, an optimising one, then the fast path


class VoiceActivityDetector(Protocol):
    def speech_probability(self, samples: np.ndarray) -> float:
        """Probability of speech in this span of 16 kHz mono float32 audio."""
        ...

    def reset(self) -> None:
        ...


class SileroVAD:
    """silero-vad (weights inside the package); keeps the model's state across windows.

    The package's model is loaded once per process; each detector runs its own copy of it, so its
    state is its own. Loading took ~45 ms and a copy takes ~5: a session's VAD is made on the
    inference worker's thread, where 45 ms held up every other session's frames.
    """

    _template: Any = None  # loaded and warmed once per process; each detector copies it
    _template_lock = threading.Lock()

    @classmethod
    def _loaded_model(cls) -> Any:
        with cls._template_lock:
            if cls._template is None:
                from silero_vad import load_silero_vad

                model = load_silero_vad(onnx=False)
                # TorchScript profiles a model's first calls and optimises on the next: 57 and 17 ms here, then
                # 0.5 ms. Run them now (engine start), not in a session's first windows on the worker, where
                # they made that session's frames, and every other session's, ~75 ms late.
                import torch

                with torch.inference_mode():
                    for _ in range(WARM_CALLS):
                        model(torch.zeros(SILERO_CHUNK), 16_000)
                model.reset_states()
                cls._template = model
            return cls._template

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._model = copy.deepcopy(self._loaded_model())
        self._model.reset_states()
        self._pending = np.zeros(0, np.float32)
        self._last = 0.0

    SILENCE_DBFS = -60.0  # below it there is no speech to find: skip the model

    def speech_probability(self, samples: np.ndarray) -> float:
        if len(samples) and level_dbfs(samples) < self.SILENCE_DBFS:
            self._pending = np.zeros(0, np.float32)
            self._last = 0.0
            return 0.0
        data = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n = len(data) // SILERO_CHUNK
        probs = []
        with self._torch.inference_mode():
            for i in range(n):
                chunk = self._torch.from_numpy(data[i * SILERO_CHUNK:(i + 1) * SILERO_CHUNK].copy())
                probs.append(float(self._model(chunk, 16_000).item()))
        self._pending = data[n * SILERO_CHUNK:]
        if probs:
            self._last = max(probs)
        return self._last

    def reset(self) -> None:
        self._model.reset_states()
        self._pending = np.zeros(0, np.float32)
        self._last = 0.0


def level_dbfs(samples: np.ndarray) -> float:
    """RMS level of float (±1) or int16 samples, in dB below full scale (-180 for silence)."""
    if not len(samples):
        return -180.0
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    if samples.dtype == np.int16:
        rms /= 32768.0
    return 20 * np.log10(max(rms, 1e-9))


class EnergyVAD:
    """Speech when the window's level is above ``threshold_db`` dBFS (no model)."""

    def __init__(self, threshold_db: float = -45.0) -> None:
        self.threshold_db = threshold_db

    def speech_probability(self, samples: np.ndarray) -> float:
        return float(np.clip((level_dbfs(samples) - self.threshold_db) / 10.0 + 0.5, 0.0, 1.0))

    def reset(self) -> None:
        pass


@dataclass
class SpeechGate:
    """Speaking after ``start_windows`` windows above threshold; idle after ``stop_windows`` below."""

    threshold: float = 0.5
    start_windows: int = 2
    stop_windows: int = 8
    speaking: bool = False
    _run: int = 0

    def update(self, probability: float) -> bool:
        above = probability >= self.threshold
        if above == self.speaking:
            self._run = 0
        else:
            self._run += 1
            if self._run >= (self.start_windows if above else self.stop_windows):
                self.speaking = above
                self._run = 0
        return self.speaking

    def reset(self) -> None:
        self.speaking = False
        self._run = 0
