"""The A/V-sync probe (``server.av_probe``): a tick whose returned voice holds a 1 kHz test tone shows a magenta
square in its frame's top-left corner, so a player can time both: the square as the frame is presented, the
tone as the audio plays (tests/test_browser.py and bench/av_sync.py, in Chromium). Off by default; a diagnostic mode.

Marking the frame sent on the same tick as the tone's audio measures exactly what the transport and the
player add: on the server both leave together.
"""

from __future__ import annotations

import numpy as np

PROBE_HZ = 1000.0
MIN_TONE_RMS = 0.03  # about -30 dBFS: a test beep, not room noise
TONE_SHARE = 0.5  # at least half the chunk's energy at the probe frequency
FLASH_FRACTION = 8  # the square's side: 1/8 of the frame's height
FLASH_RGB = (255, 0, 255)  # magenta: no portrait's corner is this, and it survives VP8 and H.264


def holds_tone(samples: np.ndarray, rate: int) -> bool:
    """Whether ``samples`` (mono float) are mostly a 1 kHz tone (Goertzel at PROBE_HZ against the total energy)."""
    if len(samples) < rate // 200:
        return False
    x = samples.astype(np.float64)
    total = float(np.dot(x, x))
    if total / len(x) < MIN_TONE_RMS**2:
        return False
    t = np.arange(len(x)) / rate
    re = float(np.dot(x, np.cos(2 * np.pi * PROBE_HZ * t)))
    im = float(np.dot(x, np.sin(2 * np.pi * PROBE_HZ * t)))
    at_probe = 2.0 * (re * re + im * im) / len(x)  # a sinusoid's energy, from its DFT bin
    return at_probe >= TONE_SHARE * total


def flash(frame: np.ndarray) -> np.ndarray:
    """A copy of ``frame`` (H×W×3 RGB) with the probe's square in its top-left corner."""
    marked = frame.copy()
    side = max(8, frame.shape[0] // FLASH_FRACTION)
    marked[:side, :side] = FLASH_RGB
    return marked
