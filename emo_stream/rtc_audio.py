"""Incoming WebRTC audio handed on at once: the server's microphone and the client's returned voice.

aiortc's audio receiver keeps RTP in a ``JitterBuffer`` that hands on a frame only once a packet of the *next*
frame is in (that is how it knows a video frame is complete) and, for audio, 4 frames more (80 ms of prefetch). An
opus packet is a whole frame, and on loopback and LANs packets seldom arrive out of order, so both waits are
latency for nothing: the first alone is one packet, 20 ms, between the speaker and the avatar's mouth.
``InOrderAudioBuffer`` hands on the packet at the head of the sequence at once. A missing head is waited for while
at most ``patience`` later packets are queued (a reordered packet arrives within them); past that only the missing
packets are given up. The packets queued behind a hole then all leave at once: aiortc's interface is ``add(packet)
-> (pli, frame or None)``, one frame per packet, so the ones ahead of the returned frame go straight to the
receiver's decoder queue, timestamped by its mapper, as the receiver itself would (``_decoder_hand_on``). So a loss
costs only what was lost, and neither a loss nor a reorder leaves the stream running behind.
``hand_on_audio_at_once`` swaps it into a receiver's private attribute.

This reaches into aiortc's private receiver attributes, written against the series the server checks at
start-up (``server.aiortc_compat.SUPPORTED_AIORTC``); ``hand_on_audio_at_once`` changes nothing and returns None
where the layout differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiortc
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.utils import uint16_add

CAPACITY = 16  # aiortc's for audio: 320 ms of 20 ms packets
# Later packets queued behind a missing one before it is given up. One: a packet overtaken by the next is still
# waited for (20 ms), and a lost one holds its window back 40 ms, not the 60 that two cost. Through 5 % loss and
# 30 ± 10 ms of jitter (bench/server.py --impair, 3 interleaved pairs) voice -> mouth p50 was 183-191 ms at one
# against 188-224 ms at two, and the server's input -> frame mean 98-106 ms against 102-142 ms.
PATIENCE = 1

# aiortc's receiver keeps its jitter buffer in a name-mangled private attribute.
RECEIVER_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


class InOrderAudioBuffer(JitterBuffer):
    """An audio jitter buffer that hands each packet on as soon as it is next in order (see the module).

    Args:
        capacity: packets kept (aiortc's for audio).
        patience: later packets queued behind a missing one before it is given up.
        hand_on: hands a frame to the decoder ahead of the one ``add`` returns (``(frame, payload type)``), so a
            run of queued packets leaves at once after a reorder or a loss; None: one packet per ``add``.
    """

    def __init__(self, capacity: int = CAPACITY, patience: int = PATIENCE,
                 hand_on: Callable[[JitterFrame, int], None] | None = None) -> None:
        super().__init__(capacity=capacity, prefetch=0, is_video=False)
        self.patience = patience
        self.hand_on = hand_on
        self.skipped = 0  # packets given up: they never arrived in time

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        # aiortc calls this from add() with the packet just stored, so the origin is set.
        origin = self._origin
        if origin is None:
            return None
        queued = [seq for seq in (uint16_add(origin, i) for i in range(self._capacity))
                  if self._packets[seq % self._capacity] is not None]
        if not queued:
            return None
        if queued[0] != origin:  # the head is missing
            if len(queued) <= self.patience:
                return None
            lost = uint16_add(queued[0], -origin)  # only the missing packets are given up
            self.skipped += lost
            self.remove(lost)  # moves the origin on to the first queued packet
            origin = queued[0]
        run: list[Any] = []  # the packets queued in order from the head, up to the next hole
        seq = origin
        while len(run) < self._capacity and (packet := self._packets[seq % self._capacity]) is not None:
            run.append(packet)
            seq = uint16_add(seq, 1)
        hand_on = self.hand_on
        if hand_on is None:
            run = run[:1]
        else:
            for packet in run[:-1]:  # ahead of the one returned, in order: the stream does not stay behind
                hand_on(self._frame(packet), packet.payload_type)
        self.remove(len(run))
        return self._frame(run[-1])

    @staticmethod
    def _frame(packet: Any) -> JitterFrame:
        # aiortc's receiver stores each packet's payload as ``_data`` before add(); its own buffer reads it so.
        return JitterFrame(data=packet._data, timestamp=packet.timestamp)


def _decoder_hand_on(receiver: Any) -> Callable[[JitterFrame, int], None] | None:
    """What aiortc's receiver does with a frame its jitter buffer returns (map the timestamp, queue it for the
    decoder thread with its codec), as a function; None where its private attributes are not there."""
    mapper = getattr(receiver, "_RTCRtpReceiver__timestamp_mapper", None)
    decoder_queue = getattr(receiver, "_RTCRtpReceiver__decoder_queue", None)
    codecs = getattr(receiver, "_RTCRtpReceiver__codecs", None)
    if mapper is None or decoder_queue is None or not isinstance(codecs, dict):
        return None

    def hand_on(frame: JitterFrame, payload_type: int) -> None:
        codec = codecs.get(payload_type)
        if codec is None or getattr(receiver, "_RTCRtpReceiver__decoder_thread", None) is None:
            return
        frame.timestamp = mapper.map(frame.timestamp)
        decoder_queue.put((codec, frame))

    return hand_on


def receiver_of(pc: aiortc.RTCPeerConnection, track: Any) -> aiortc.RTCRtpReceiver | None:
    """The receiver of a remote ``track`` (from the connection's ``track`` event), or None."""
    return next((t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None)


def hand_on_audio_at_once(receiver: Any) -> InOrderAudioBuffer | None:
    """Give an aiortc audio receiver an ``InOrderAudioBuffer`` and return it (an aiortc internal: guarded; None
    when the receiver's layout is not the one this was written for, and nothing changed)."""
    if not isinstance(getattr(receiver, RECEIVER_JITTER_BUFFER, None), JitterBuffer):
        return None
    buffer = InOrderAudioBuffer(hand_on=_decoder_hand_on(receiver))
    setattr(receiver, RECEIVER_JITTER_BUFFER, buffer)
    return buffer
