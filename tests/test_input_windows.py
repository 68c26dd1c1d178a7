"""InputWindows: a session's input cut into one-frame windows at 48 and 16 kHz that complete together."""

from __future__ import annotations

import av
import numpy as np
import pytest

from server.input_windows import InputWindows


def frame_of(samples: np.ndarray, rate: int, layout: str = "stereo") -> av.AudioFrame:
    """An s16 frame as aiortc's opus decoder (stereo) or an agent's PCM (mono) hands it over."""
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16)
    channels = 2 if layout == "stereo" else 1
    frame = av.AudioFrame.from_ndarray(np.repeat(pcm[None, :], channels, 0).reshape(1, -1), format="s16",
                                       layout=layout)
    frame.sample_rate = rate
    return frame


@pytest.mark.parametrize("rate,packet_ms,layout", [(48_000, 20, "stereo"), (48_000, 40, "mono"),
                                                   (16_000, 20, "mono"), (44_100, 20, "stereo")])
def test_every_window_completes_with_the_input_frame_that_completes_it(rate, packet_ms, layout):
    """Window k of both rates is handed out on the input frame that brings its last millisecond: a resampler's
    held-back samples (its filter delay) must not hold the 16 kHz window for one more frame."""
    windows = InputWindows((48_000, 16_000), fps=25)
    step = rate * packet_ms // 1000
    t = np.arange(rate * 2) / rate
    signal = 0.5 * np.sin(2 * np.pi * 220 * t)
    handed = []
    for n, start in enumerate(range(0, len(signal), step)):
        for voice, engine in windows.push(frame_of(signal[start:start + step], rate, layout)):
            assert voice.dtype == engine.dtype == np.float32
            assert (len(voice), len(engine)) == (1920, 640)
            handed.append((n, voice, engine))
    # The input's duration up to frame n holds (n + 1) · packet_ms ms: window k needs 40 · (k + 1) ms.
    for k, (n, _, _) in enumerate(handed):
        assert n == -(-40 * (k + 1) // packet_ms) - 1, f"window {k} came with input frame {n}"
    assert len(handed) >= 2 * 25 - 1  # 2 s of input: all 50 windows (44.1 kHz: the last may wait for more)
    # Both streams carry the same sound, at most the resampler's ~1 ms apart.
    voice = np.concatenate([v for _, v, _ in handed])
    engine = np.concatenate([e for _, _, e in handed])
    lag = np.argmax(np.correlate(engine[1000:9000], voice[3000:27000:3], "full")) - (8000 - 1)
    assert abs(lag) <= 32


def test_clear_drops_what_is_buffered_and_the_next_windows_stay_paired():
    windows = InputWindows((48_000, 16_000), fps=25)
    assert windows.push(frame_of(np.full(960, -0.5), 48_000, "mono")) == []
    windows.clear()
    assert windows.push(frame_of(np.full(960, 0.25), 48_000, "mono")) == []  # the half window before clear() is gone
    pairs = windows.push(frame_of(np.full(960, 0.25), 48_000, "mono"))
    assert len(pairs) == 1
    assert float(pairs[0][0].min()) == pytest.approx(0.25, abs=1e-3)  # nothing of the -0.5 before clear()
    assert float(np.median(pairs[0][1])) == pytest.approx(0.25, abs=1e-2)
