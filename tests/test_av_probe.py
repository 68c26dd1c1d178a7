"""The A/V-sync probe's tone detector and flash (server/av_probe.py)."""

from __future__ import annotations

import numpy as np

from server.av_probe import FLASH_RGB, flash, holds_tone

RATE = 48_000
t = np.arange(RATE // 25) / RATE  # one 40 ms tick


def test_a_beep_is_a_tone_and_speech_noise_and_silence_are_not():
    assert holds_tone(0.5 * np.sin(2 * np.pi * 1000 * t), RATE)
    assert holds_tone(0.05 * np.sin(2 * np.pi * 1000 * t + 1.0) + 0.005 * np.random.default_rng(0).normal(size=len(t)),
                      RATE)
    assert not holds_tone(0.5 * np.sin(2 * np.pi * 440 * t), RATE)  # another pitch
    assert not holds_tone(0.3 * np.random.default_rng(1).normal(size=len(t)), RATE)  # noise
    assert not holds_tone(0.005 * np.sin(2 * np.pi * 1000 * t), RATE)  # too quiet: room noise, not a beep
    assert not holds_tone(np.zeros(len(t)), RATE)
    chord = 0.3 * np.sin(2 * np.pi * 1000 * t) + 0.4 * np.sin(2 * np.pi * 300 * t)
    assert not holds_tone(chord, RATE)  # a voice with a 1 kHz component is not the beep


def test_the_flash_marks_a_copy_in_the_corner():
    frame = np.full((512, 512, 3), 90, np.uint8)
    marked = flash(frame)
    assert (marked[:64, :64] == FLASH_RGB).all() and (marked[64:, :] == 90).all() and (marked[:, 64:] == 90).all()
    assert (frame == 90).all()
