"""UtterancePlayout: which returned voice is an utterance's, and when each utterance has played."""

from __future__ import annotations

import numpy as np

from emo_stream.client.frames import AudioFrame
from emo_stream.integrations.utterances import GRACE_S, HOLD_S, QUIET_S, UtterancePlayout


def packet(at: float, loud: bool) -> AudioFrame:
    pcm = np.full((960, 2), 3000 if loud else 0, np.int16)
    return AudioFrame(pcm=pcm, sample_rate=48_000, media_time=at, arrived=at)


def test_idle_silence_before_and_after_an_utterance_is_not_its_voice():
    playout = UtterancePlayout()
    assert not playout.hear(packet(0.0, loud=False))
    assert not playout.hear(packet(0.1, loud=True)), "voice before anything was pushed is not the agent's"
    playout.pushed()
    assert not playout.hear(packet(0.2, loud=False)), "silence before the utterance's voice comes back"
    assert playout.hear(packet(0.3, loud=True))
    assert playout.hear(packet(0.5, loud=False)), "a pause inside the utterance keeps its length"
    assert playout.flushed(due=1.0)
    assert playout.hear(packet(0.9, loud=True))
    assert not playout.played(0.95), "not before it is due"
    assert not playout.played(1.0), "not while its voice is still loud"
    assert playout.played(0.9 + QUIET_S)
    assert not playout.hear(packet(1.2, loud=False)), "idle again"
    assert not playout.played(5.0), "each utterance is reported once"


def test_a_flush_with_nothing_pushed_reports_nothing():
    playout = UtterancePlayout()
    assert not playout.flushed(due=1.0)
    assert not playout.played(10.0)


def test_back_to_back_utterances_end_in_order_even_without_a_pause():
    playout = UtterancePlayout()
    playout.pushed()
    playout.flushed(due=1.0)
    playout.pushed()
    playout.flushed(due=2.0)
    for t in np.arange(0.0, 2.0, 0.02):  # voice all along
        playout.hear(packet(float(t), loud=True))
    assert not playout.played(1.5)
    assert playout.played(1.0 + GRACE_S), "loud all along: reported a grace period after it was due"
    assert playout.hear(packet(2.05, loud=True)), "the second one is still playing"
    assert playout.played(2.0 + GRACE_S)


def test_an_unflushed_utterance_passes_silence_only_near_its_voice():
    playout = UtterancePlayout()
    playout.pushed()
    playout.hear(packet(0.0, loud=True))
    assert playout.hear(packet(HOLD_S - 0.01, loud=False))
    assert not playout.hear(packet(HOLD_S + 0.01, loud=False))


def test_reset_cuts_every_utterance():
    playout = UtterancePlayout()
    playout.pushed()
    playout.hear(packet(0.0, loud=True))
    playout.flushed(due=0.5)
    playout.reset()
    assert not playout.hear(packet(0.1, loud=True))
    assert not playout.played(10.0)
