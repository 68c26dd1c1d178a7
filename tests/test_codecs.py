"""The portrait VP8 encoder: aiortc's RTP packets, libvpx opened without the denoiser at its fastest speed."""

from __future__ import annotations

import fractions

import av
import cv2
import numpy as np
from aiortc import rtcrtpsender
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Decoder, vp8_depayload
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from server.aiortc_compat import CPU_USED, NOISE_SENSITIVITY, PortraitVp8Encoder, install_portrait_encoders

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2)


def frames(count: int, size: int = 128) -> list[av.VideoFrame]:
    out = []
    for k in range(count):
        rgb = np.full((size, size, 3), 90, np.uint8)
        cv2.circle(rgb, (size // 2 + k, size // 2), size // 5, (230, 120, 90), -1)
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        frame.pts, frame.time_base = k * 3600, fractions.Fraction(1, 90000)
        out.append(frame)
    return out


def test_encodes_decodable_vp8_with_the_tuned_options():
    encoder, decoder = PortraitVp8Encoder(), Vp8Decoder()
    decoded = []
    for k, frame in enumerate(frames(5)):
        payloads, timestamp = encoder.encode(frame)
        assert payloads and timestamp == k * 3600  # RTP time = media time at 90 kHz
        # One frame's RTP payloads, depacketised the way aiortc's receiver does.
        data = b"".join(vp8_depayload(p) for p in payloads)
        decoded += decoder.decode(JitterFrame(data=data, timestamp=timestamp))
    assert len(decoded) == 5 and decoded[-1].width == 128
    assert encoder.options["noise-sensitivity"] == NOISE_SENSITIVITY == "0"
    assert encoder.options["cpu-used"] == CPU_USED
    # The decoded picture is the circle on grey, not garbage.
    rgb = decoded[-1].to_ndarray(format="rgb24").astype(int)
    assert abs(rgb[64, 68] - [230, 120, 90]).max() < 30 and abs(rgb[5, 5] - [90, 90, 90]).max() < 20


def test_a_new_size_or_bitrate_reopens_our_context():
    encoder = PortraitVp8Encoder()
    encoder.encode(frames(1)[0])
    first = encoder.codec
    encoder.encode(frames(1)[0])
    assert encoder.codec is first  # same size and bitrate: reused
    encoder.target_bitrate = first.bit_rate * 2
    encoder.encode(frames(1)[0])
    assert encoder.codec is not first and encoder.codec.bit_rate == first.bit_rate * 2
    encoder.encode(frames(1, size=96)[0])
    assert encoder.codec.width == 96 and encoder.options["cpu-used"] == CPU_USED


def test_installed_for_aiortc_senders_vp8_only():
    install_portrait_encoders()
    assert isinstance(rtcrtpsender.get_encoder(VP8), PortraitVp8Encoder)
    assert isinstance(rtcrtpsender.get_encoder(OPUS), OpusEncoder)
