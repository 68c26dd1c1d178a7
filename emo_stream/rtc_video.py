"""Incoming WebRTC video handed on as soon as a frame is complete: the client's returned pictures.

aiortc's video receiver keeps RTP in a ``JitterBuffer`` that knows a frame is complete only once a packet of the
*next* frame arrives (a new timestamp). At 25 fps that holds every picture back one frame, 40 ms, behind the voice
of its own tick: an agent that plays both as they arrive shows the mouth 40 ms late. The sender marks the last
packet of each frame (the RTP marker bit; aiortc and browsers both set it), so ``MarkerVideoBuffer`` hands a frame
on as soon as the run of packets at the head of the buffer, up to its marked last one, is all in. A frame with a
hole (its marked packet lost included) still waits for the retransmission, as aiortc's does; a sender that marks
no packet gets aiortc's behaviour, a frame once the next one starts. Where the buffer's head falls inside a frame
(after an overflow), that frame's tail is handed on as aiortc hands it on. aiortc takes one frame per packet added,
so a complete frame queued behind a repaired one leaves with the next packet (the audio buffer hands such runs
to the decoder itself; a picture a packet later is not worth reaching further into aiortc).

Like ``emo_stream.rtc_audio``, this reaches into aiortc's private receiver attribute, written against aiortc 1.16
(``server.aiortc_compat.SUPPORTED_AIORTC``); ``hand_on_video_at_marker`` changes nothing and returns None where
the layout differs.
"""

from __future__ import annotations

from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame

from emo_stream.rtc_audio import RECEIVER_JITTER_BUFFER

CAPACITY = 512  # aiortc's for video


class MarkerVideoBuffer(JitterBuffer):
    """A video jitter buffer that hands a frame on at its marked last packet (see the module)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__(capacity=capacity, is_video=True)
        self.at_marker = 0  # frames handed on at their marker, not a frame later

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        origin = self._origin
        if origin is None:
            return None
        run: list[Any] = []  # the head frame's packets, in order, while there is no hole
        for count in range(self._capacity):
            packet = self._packets[(origin + count) % self._capacity]
            if packet is None or (run and packet.timestamp != run[0].timestamp):
                break
            run.append(packet)
            if packet.marker:
                self.remove(len(run))
                self.at_marker += 1
                # aiortc's receiver stores each packet's depayloaded data as ``_data``; its own buffer reads it so.
                return JitterFrame(data=b"".join(p._data for p in run), timestamp=run[0].timestamp)
        return super()._remove_frame(sequence_number)


def hand_on_video_at_marker(receiver: Any) -> MarkerVideoBuffer | None:
    """Give an aiortc video receiver a ``MarkerVideoBuffer`` and return it (None, and nothing changed, when the
    receiver's layout is not the one this was written for)."""
    current = getattr(receiver, RECEIVER_JITTER_BUFFER, None)
    if not isinstance(current, JitterBuffer) or current.capacity != CAPACITY:
        return None
    buffer = MarkerVideoBuffer()
    setattr(receiver, RECEIVER_JITTER_BUFFER, buffer)
    return buffer
