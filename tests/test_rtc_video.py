"""MarkerVideoBuffer: a picture is handed on at its marked last packet, not a frame later."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from emo_stream.rtc_video import MarkerVideoBuffer, hand_on_video_at_marker


def packet(seq: int, timestamp: int, marker: bool = False) -> RtpPacket:
    p = RtpPacket(payload_type=96, marker=int(marker), sequence_number=seq, timestamp=timestamp)
    p._data = bytes([seq % 256])  # what aiortc's receiver stores: the depayloaded data
    return p


def frames_out(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, int, bytes]]:
    """(index of the packet whose add returned it, timestamp, data) of each frame handed on."""
    out = []
    for i, p in enumerate(packets):
        _, frame = buffer.add(p)
        if frame is not None:
            out.append((i, frame.timestamp, frame.data))
    return out


def test_a_frame_leaves_at_its_marker_where_aiortc_waits_for_the_next_frame():
    packets = [packet(10, 0), packet(11, 0), packet(12, 0, marker=True), packet(13, 3600), packet(14, 3600, True)]
    assert frames_out(MarkerVideoBuffer(), packets) == [(2, 0, b"\x0a\x0b\x0c"), (4, 3600, b"\x0d\x0e")]
    stock = frames_out(JitterBuffer(capacity=512, is_video=True), packets)
    assert stock == [(3, 0, b"\x0a\x0b\x0c")], "aiortc's own buffer hands frame 1 on only when frame 2 begins"


def test_a_frame_with_a_hole_waits_for_the_missing_packet():
    packets = [packet(20, 0), packet(22, 0, marker=True), packet(21, 0), packet(23, 3600, True)]
    assert frames_out(MarkerVideoBuffer(), packets) == [(2, 0, b"\x14\x15\x16"), (3, 3600, b"\x17")]


def test_sequence_numbers_wrap_around():
    packets = [packet(65534, 0), packet(65535, 0, marker=True), packet(0, 3600), packet(1, 3600, marker=True)]
    assert frames_out(MarkerVideoBuffer(), packets) == [(1, 0, b"\xfe\xff"), (3, 3600, b"\x00\x01")]


def test_a_lost_marked_packet_holds_its_frame_until_it_is_retransmitted():
    packets = [packet(40, 0), packet(42, 3600), packet(43, 3600, marker=True), packet(41, 0, marker=True),
               packet(44, 7200)]
    # one frame per packet added (aiortc's interface): the frame queued behind the repaired one leaves at the next
    assert frames_out(MarkerVideoBuffer(), packets) == [(3, 0, b"\x28\x29"), (4, 3600, b"\x2a\x2b")]


def test_a_frame_without_its_marker_leaves_when_the_next_begins():
    packets = [packet(30, 0), packet(31, 0), packet(32, 3600), packet(33, 3600, True)]
    buffer = MarkerVideoBuffer()
    assert frames_out(buffer, packets) == [(2, 0, b"\x1e\x1f"), (3, 3600, b"\x20\x21")]
    assert buffer.at_marker == 1


def test_it_goes_into_an_aiortc_video_receiver_and_nowhere_else():
    async def run():
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        video, audio = (t.receiver for t in pc.getTransceivers())
        swapped = hand_on_video_at_marker(video)
        refused = hand_on_video_at_marker(audio)
        await pc.close()
        return swapped, refused

    swapped, refused = asyncio.run(run())
    assert isinstance(swapped, MarkerVideoBuffer)
    assert refused is None, "an audio receiver keeps its own buffer"
    assert hand_on_video_at_marker(object()) is None
