"""The microphone's RTP buffer: each opus packet goes to the decoder as soon as it is next in order.

aiortc's audio receiver keeps RTP in a ``JitterBuffer`` that hands on a frame only once a packet of the *next*
frame is in (that is how it knows a video frame is complete) and, for audio, 4 frames more (80 ms of prefetch).
An opus packet is a whole frame, and on loopback and LANs packets seldom arrive out of order, so both waits are
latency for nothing: the first alone is one packet, 20 ms, between the speaker and the avatar's mouth.

``InOrderAudioBuffer`` hands on the packet at the head of the sequence at once. A missing head is waited for
while at most ``patience`` later packets are queued (a reordered packet arrives within them); past that the gap
is given up and the *newest* packet is handed on, the ones between dropped, so a loss never leaves the stream
running behind for good. Its interface is aiortc's: ``add(packet) -> (pli, frame or None)``, one frame per
packet, which is all the receiver asks of it.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.utils import uint16_add

CAPACITY = 16  # aiortc's for audio: 320 ms of 20 ms packets
PATIENCE = 2  # later packets queued behind a missing one before it is given up (40 ms)


class InOrderAudioBuffer(JitterBuffer):
    """An audio jitter buffer that hands each packet on as soon as it is next in order (see the module)."""

    def __init__(self, capacity: int = CAPACITY, patience: int = PATIENCE) -> None:
        super().__init__(capacity=capacity, prefetch=0, is_video=False)
        self.patience = patience
        self.skipped = 0  # packets given up (never arrived in time) or dropped to catch up

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        # aiortc calls this from add() with the packet just stored.
        queued = [seq for seq in (uint16_add(self._origin, i) for i in range(self._capacity))
                  if self._packets[seq % self._capacity] is not None]
        if not queued:
            return None
        if queued[0] != self._origin:  # the head is missing
            if len(queued) <= self.patience:
                return None
            self.skipped += uint16_add(queued[-1], -self._origin)
            self.remove(uint16_add(queued[-1], -self._origin))  # the gap and all but the newest packet go
        packet = self._packets[self._origin % self._capacity]
        self.remove(1)
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)


def hand_on_audio_at_once(receiver) -> InOrderAudioBuffer | None:
    """Give an aiortc audio receiver an ``InOrderAudioBuffer`` and return it (an aiortc internal: guarded; None
    when the receiver's layout is not the one this was written for, and nothing changed)."""
    name = "_RTCRtpReceiver__jitter_buffer"
    if not isinstance(getattr(receiver, name, None), JitterBuffer):
        return None
    buffer = InOrderAudioBuffer()
    setattr(receiver, name, buffer)
    return buffer
