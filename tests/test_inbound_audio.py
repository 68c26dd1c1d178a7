"""InOrderAudioBuffer: the microphone's RTP packets go to the decoder as soon as they are next in order."""

from __future__ import annotations

from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from server.aiortc_compat import InOrderAudioBuffer, hand_on_audio_at_once


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


def test_a_reordered_packet_is_waited_for_and_both_are_handed_on_in_order():
    buffer = InOrderAudioBuffer()
    assert handed(buffer, 10) == 10
    assert handed(buffer, 12) is None  # 11 is late
    assert handed(buffer, 11) == 11
    assert handed(buffer, 13) == 12  # one packet behind after a reorder, as aiortc's own buffer always is
    assert buffer.skipped == 0


def test_a_lost_packet_is_given_up_after_patience_and_the_stream_catches_up():
    buffer = InOrderAudioBuffer(patience=2)
    assert handed(buffer, 20) == 20
    assert handed(buffer, 22) is None
    assert handed(buffer, 23) is None
    assert handed(buffer, 24) == 24  # 21 never came: 21-23 go, the newest is handed on
    assert buffer.skipped == 3
    assert handed(buffer, 25) == 25  # and the stream is at once again, not 3 packets behind
    assert handed(buffer, 21) is None  # the lost one arriving now is too old


def test_installed_on_an_aiortc_audio_receiver_only():
    class Transport:  # what RTCRtpReceiver's constructor reads
        state = "new"
        transport = None

        def _register_rtp_receiver(self, *args):
            pass

    receiver = RTCRtpReceiver("audio", Transport())
    assert hand_on_audio_at_once(receiver)
    assert isinstance(receiver._RTCRtpReceiver__jitter_buffer, InOrderAudioBuffer)
    assert not hand_on_audio_at_once(object())
