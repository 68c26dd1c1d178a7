"""The VAD used by sessions: silero on speech, no work in digital silence, hysteresis in the gate."""

from __future__ import annotations

import numpy as np

from emo_stream.audio import load_audio
from server.vad import EnergyVAD, SileroVAD, SpeechGate
from tests import media


def _windows(samples: np.ndarray) -> list[np.ndarray]:
    return [samples[i:i + 640] for i in range(0, len(samples) - 639, 640)]


def test_silero_finds_speech_after_silence_and_gate_follows():
    audio = load_audio(media.silence_then_speech("hello", silence_s=1.0))
    vad, gate = SileroVAD(), SpeechGate()
    probs, states = [], []
    for window in _windows(audio):
        probs.append(vad.speech_probability(window))
        states.append(gate.update(probs[-1]))
    assert max(probs[:20]) < 0.1  # the first 0.8 s are silence
    assert max(probs[30:80]) > 0.9
    first_speaking = states.index(True)
    assert 25 <= first_speaking <= 35  # speech starts at 1.0 s = window 25; the gate needs 2 windows
    assert not states[-1]  # trailing silence: idle again


def test_digital_silence_skips_the_model_and_energy_vad():
    vad = SileroVAD()
    assert vad.speech_probability(np.zeros(640, np.float32)) == 0.0
    energy = EnergyVAD()
    assert energy.speech_probability(np.zeros(640, np.float32)) == 0.0
    loud = (0.3 * np.sin(np.arange(640) / 3)).astype(np.float32)
    assert energy.speech_probability(loud) == 1.0


def test_each_silero_detector_keeps_its_own_state():
    """Detectors share the loaded model's weights but not its recurrent state: a session's speech must not
    change what another session's detector reads."""
    speech = load_audio(media.silence_then_speech("hello", silence_s=0.2))
    windows = _windows(speech)[:30]
    alone = SileroVAD()
    expected = [alone.speech_probability(w) for w in windows]
    busy, quiet = SileroVAD(), SileroVAD()
    for w in windows:  # the busy one hears the sentence twice before the quiet one starts
        busy.speech_probability(w)
        busy.speech_probability(w)
    got = [quiet.speech_probability(w) for w in windows]
    assert max(expected) > 0.9
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_the_model_is_warmed_once_when_loaded_and_detectors_start_clean(monkeypatch):
    import silero_vad

    class FakeSilero:
        """Records calls; its "state" is the number of chunks seen since the last reset."""

        def __init__(self) -> None:
            self.calls, self.seen = 0, 0

        def __call__(self, chunk, rate):
            import torch

            self.calls += 1
            self.seen += 1
            return torch.tensor([0.0])

        def reset_states(self) -> None:
            self.seen = 0

    loaded: list[FakeSilero] = []
    monkeypatch.setattr(silero_vad, "load_silero_vad", lambda onnx=False: loaded.append(FakeSilero()) or loaded[-1])
    monkeypatch.setattr(SileroVAD, "_template", None)
    first, second = SileroVAD(), SileroVAD()
    # Loaded once, and its first calls (TorchScript's slow profiling ones) run at load, not in a session's windows.
    assert len(loaded) == 1 and loaded[0].calls == 3
    # Each detector is a copy that starts from a reset state, not from the warm-up's.
    assert first._model.seen == 0 and second._model.seen == 0 and first._model is not second._model
