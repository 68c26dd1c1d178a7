"""InOrderAudioBuffer: the microphone's RTP packets go to the decoder as soon as they are next in order."""

from __future__ import annotations

from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from emo_stream.rtc_audio import InOrderAudioBuffer, hand_on_audio_at_once


def packet(seq: int) -> RtpPacket:
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=(seq * 960) % 2**32)
    p._data = bytes([seq % 256])  # what the receiver's depayloader sets
    return p


def handed(buffer: InOrderAudioBuffer, seq: int) -> int | None:
    pli, frame = buffer.add(packet(seq))
    assert not pli
    return None if frame is None else frame.data[0]


def test_each_packet_in_order_leaves_at_once_across_the_sequence_wrap():
    buffer = InOrderAudioBuffer()
    start = 65530
    assert [handed(buffer, s) for s in range(start, start + 12)] == [s % 256 for s in range(start, start + 12)]


def decoder_side() -> tuple[list[int], InOrderAudioBuffer]:
    """A buffer whose frames handed on ahead of ``add``'s return are recorded (as the receiver's queue would)."""
    ahead: list[int] = []
    return ahead, InOrderAudioBuffer(patience=2, hand_on=lambda frame, payload_type: ahead.append(frame.data[0]))


def test_a_reordered_packet_is_waited_for_and_both_are_handed_on_in_order():
    ahead, buffer = decoder_side()
    assert handed(buffer, 10) == 10
    assert handed(buffer, 12) is None  # 11 is late
    assert handed(buffer, 11) == 12 and ahead == [11]  # 11 goes ahead of 12: in order, and nothing left behind
    assert handed(buffer, 13) == 13  # not a packet behind
    assert buffer.skipped == 0


def test_a_lost_packet_is_given_up_after_patience_and_only_it():
    ahead, buffer = decoder_side()
    assert handed(buffer, 20) == 20
    assert handed(buffer, 22) is None
    assert handed(buffer, 23) is None
    assert handed(buffer, 24) == 24 and ahead == [22, 23]  # 21 never came: only it is given up
    assert buffer.skipped == 1
    assert handed(buffer, 25) == 25  # and the stream is at once again, not behind
    assert handed(buffer, 21) is None  # the lost one arriving now is too old


def test_five_percent_loss_loses_five_percent():
    import random

    ahead, buffer = decoder_side()
    rng = random.Random(5)
    sent = [seq for seq in range(1000, 3000) if rng.random() >= 0.05]
    out = []
    for seq in sent:
        ahead.clear()
        returned = handed(buffer, seq)
        out.extend(ahead + ([returned] if returned is not None else []))
    assert out[: len(sent) - 2] == [seq % 256 for seq in sent][: len(sent) - 2]  # every packet that came, in order
    assert buffer.skipped == 2000 - len(sent) - (2999 - sent[-1])


def test_without_a_decoder_hand_on_each_packet_still_leaves_in_order():
    buffer = InOrderAudioBuffer(patience=2)
    assert [handed(buffer, s) for s in (30, 32, 33, 34, 35)] == [30, None, None, 32, 33]
    assert buffer.skipped == 1


def test_installed_on_an_aiortc_audio_receiver_only():
    class Transport:  # what RTCRtpReceiver's constructor reads
        state = "new"
        transport = None

        def _register_rtp_receiver(self, *args):
            pass

    receiver = RTCRtpReceiver("audio", Transport())
    assert hand_on_audio_at_once(receiver)
    assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, InOrderAudioBuffer)
    assert receiver._RTCRtpReceiver__jitter_buffer.hand_on is not None  # the receiver's decoder queue was found
    assert not hand_on_audio_at_once(object())
