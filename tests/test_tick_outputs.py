"""A session's outputs by tick: each tick's share taken once, passed ticks forgotten, catch-up and barge-in."""

from __future__ import annotations

import numpy as np

from emo_stream.types import Frame
from server.tick_outputs import TickOutputs


def _frame(tick: int) -> Frame:
    return Frame(rgb=np.zeros((2, 2, 3), np.uint8), pts=tick * 3600)


def test_a_tick_takes_its_share_once_and_what_is_left_for_passed_ticks_goes():
    outputs = TickOutputs()
    for tick in (3, 4, 5):
        outputs.voice[tick] = np.full(4, tick, np.float32)
        outputs.arrived[tick] = float(tick)
    outputs.frames[2] = _frame(2)  # a frame for a tick already passed
    outputs.frames[4] = _frame(4)
    outputs.idle_requested.update({4, 6})
    share = outputs.take(4)
    assert share.voice is not None and share.voice[0] == 4
    assert share.frame is not None and share.frame.pts == 4 * 3600
    assert share.arrived == 4.0 and share.idle_requested
    # Tick 3's voice and tick 2's frame are stale now; tick 5 and the idle request for 6 stay.
    assert list(outputs.voice) == [5] and not outputs.frames and list(outputs.arrived) == [5]
    assert outputs.idle_requested == {6}
    again = outputs.take(4)
    assert (again.voice, again.frame, again.arrived, again.idle_requested) == (None, None, None, False)


def test_catching_up_drops_from_a_tick_on_and_a_barge_in_drops_everything():
    outputs = TickOutputs()
    for tick in range(10, 15):
        outputs.voice[tick] = np.zeros(4, np.float32)
        outputs.frames[tick] = _frame(tick)
        outputs.arrived[tick] = 0.0
    outputs.idle_requested.add(16)
    outputs.drop_from(12)
    assert list(outputs.voice) == list(outputs.frames) == list(outputs.arrived) == [10, 11]
    assert outputs.idle_requested == {16}  # idle requests are not the catch-up's business
    outputs.clear()
    assert not (outputs.voice or outputs.frames or outputs.arrived or outputs.idle_requested)
