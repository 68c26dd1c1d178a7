"""Which returned voice belongs to an agent's utterance, and when each utterance has played out.

The returned voice is one continuous track, silent while the portrait idles. An agent framework wants only the
voice of what its TTS said (the idle silence would read as a bot that never stops speaking), with the pauses inside
an utterance kept, and to hear when each utterance has played (pipecat's ``TTSStoppedFrame``, LiveKit's
``AudioSegmentEnd``). Both integrations follow their utterances with ``UtterancePlayout``.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import TYPE_CHECKING

from emo_stream.client.frames import AudioFrame

if TYPE_CHECKING:
    from emo_stream.client.session import AvatarSession

# A returned packet is voice above this peak (int16); the server's idle silence decodes to about 0.
SILENT_PEAK = 8
# A flushed utterance has played once its voice has been quiet QUIET_S after it was due (its buffered seconds and
# the session's delay after the flush), or GRACE_S after it was due however loud (the next one may follow at once).
QUIET_S = 0.2
GRACE_S = 1.0
# Within an utterance that was never flushed, silence is passed on for HOLD_S after the voice, then not.
HOLD_S = 1.0


class UtterancePlayout:
    """Utterances pushed, flushed and played, one after another (single event loop; times are monotonic)."""

    def __init__(self) -> None:
        self.pushing = False  # an utterance is being pushed and is not flushed yet
        self.due: deque[float] = deque()  # when each flushed utterance should have played, oldest first
        self.started = False  # the voice of the current utterance has come back
        self.last_voice = -math.inf

    @property
    def active(self) -> bool:
        return self.pushing or bool(self.due)

    def pushed(self) -> None:
        self.pushing = True

    def flushed(self, due: float) -> bool:
        """The utterance being pushed ended; it should have played by ``due``. False when nothing was pushed."""
        if not self.pushing:
            return False
        self.pushing = False
        self.due.append(due)
        return True

    async def flush(self, session: AvatarSession) -> bool:
        """End the utterance being pushed on ``session``: due once the server's buffered voice has played and come
        back (``voice_delay_s``). False, and nothing sent, when none was being pushed."""
        if not self.pushing:
            return False
        buffered = await session.flush()
        return self.flushed(time.monotonic() + buffered + session.voice_delay_s)

    def reset(self) -> None:
        """Barge-in: every utterance is cut (none is reported as played)."""
        self.pushing = self.started = False
        self.due.clear()

    def hear(self, frame: AudioFrame) -> bool:
        """Whether a returned packet is part of an utterance's voice (to pass on)."""
        if frame.peak > SILENT_PEAK:
            self.last_voice = frame.arrived
            self.started = self.started or self.active
        return self.started and self.active and frame.arrived - self.last_voice <= HOLD_S

    def played(self, now: float) -> bool:
        """Whether the oldest flushed utterance has now played (each is reported once)."""
        if not self.due or now < self.due[0]:
            return False
        if now - self.last_voice < QUIET_S and now < self.due[0] + GRACE_S:
            return False
        self.due.popleft()
        if not self.active:
            self.started = False
        return True
