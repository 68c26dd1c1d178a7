"""Every change this server makes to aiortc's internals, in one place, and the aiortc version they fit.

aiortc offers no option for two things the live server needs, so they reach into its internals:

- **VP8 tuned for synthetic portraits** (``PortraitVp8Encoder``). aiortc's ``Vp8Encoder`` sets
  ``noise-sensitivity 4`` (a temporal denoiser for camera noise). Our frames are rendered, so there is no sensor
  noise to remove; measured on lite frames at 512² (one thread, 500 kbit/s CBR, the same bytes out): 1.99 ms/frame
  as aiortc sets it, 1.46 with the denoiser off. ``cpu-used -16`` would give 1.02 but coarser pictures at the same
  bitrate: the overlay's packed alpha then lost its exact 255 inside the face, so the speed stays aiortc's ``-6``.
  Everything else (CBR, quantiser range, no lag, one token partition) stays as aiortc chooses, so the RTP side is
  unchanged. aiortc's sender looks ``get_encoder`` up in its own module: ``install_portrait_encoders`` replaces it.
- **The microphone's RTP handed on at once** (``InOrderAudioBuffer``). aiortc's audio receiver keeps RTP in a
  ``JitterBuffer`` that hands on a frame only once a packet of the *next* frame is in (that is how it knows a video
  frame is complete) and, for audio, 4 frames more (80 ms of prefetch). An opus packet is a whole frame, and on
  loopback and LANs packets seldom arrive out of order, so both waits are latency for nothing: the first alone is
  one packet, 20 ms, between the speaker and the avatar's mouth. ``InOrderAudioBuffer`` hands on the packet at the
  head of the sequence at once. A missing head is waited for while at most ``patience`` later packets are queued
  (a reordered packet arrives within them); past that only the missing packets are given up. The packets queued
  behind a hole then all leave at once: aiortc's interface is ``add(packet) -> (pli, frame or None)``, one frame
  per packet, so the ones ahead of the returned frame go straight to the receiver's decoder queue, timestamped by
  its mapper, as the receiver itself would (``_decoder_hand_on``). So a loss costs only what was lost, and
  neither a loss nor a reorder leaves the stream running behind. ``hand_on_audio_at_once`` swaps it into a
  receiver's private attribute.

Both were written against aiortc ``SUPPORTED_AIORTC``; ``check_aiortc_version`` (run by
``install_aiortc_workarounds`` at start-up) refuses any other version with ``UnsupportedAiortcError``, a one-line
error before serving, rather than a session failing halfway on an internal that moved.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from typing import Any

import aiortc
import av
from aiortc import rtcrtpsender
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.utils import uint16_add
from av.frame import Frame
from av.video.codeccontext import VideoCodecContext

from emo_stream.errors import EmoStreamError

# The aiortc release series (major.minor) these workarounds were written and tested for (pyproject pins it).
SUPPORTED_AIORTC = "1.16"

NOISE_SENSITIVITY = "0"
CPU_USED = "-6"

CAPACITY = 16  # aiortc's for audio: 320 ms of 20 ms packets
# Later packets queued behind a missing one before it is given up. One: a packet overtaken by the next is still
# waited for (20 ms), and a lost one holds its window back 40 ms, not the 60 that two cost. Through 5 % loss and
# 30 ± 10 ms of jitter (bench/server.py --impair, 3 interleaved pairs) voice -> mouth p50 was 183-191 ms at one
# against 188-224 ms at two, and the server's input -> frame mean 98-106 ms against 102-142 ms.
PATIENCE = 1

# aiortc's receiver keeps its jitter buffer in a name-mangled private attribute.
_RECEIVER_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"


class UnsupportedAiortcError(EmoStreamError):
    """The installed aiortc is not the release series this server's aiortc workarounds were written for."""

    code = "unsupported_aiortc"


def check_aiortc_version(version: str | None = None) -> None:
    """Refuse an aiortc other than ``SUPPORTED_AIORTC`` (``version``: the installed ``aiortc.__version__``).

    Raises:
        UnsupportedAiortcError: naming the installed and the supported versions.
    """
    installed = aiortc.__version__ if version is None else version
    if installed.split(".")[:2] != SUPPORTED_AIORTC.split("."):
        raise UnsupportedAiortcError(
            f"aiortc {installed} is installed, but this server patches aiortc internals written for "
            f"{SUPPORTED_AIORTC}.x: install aiortc=={SUPPORTED_AIORTC}.* (as pyproject.toml pins it)")


def install_aiortc_workarounds() -> None:
    """Check the aiortc version, then install the process-wide workaround (the portrait VP8 encoder).

    The per-session one, ``hand_on_audio_at_once``, is applied by each session to its receiver.

    Raises:
        UnsupportedAiortcError: the installed aiortc is not ``SUPPORTED_AIORTC``.
    """
    check_aiortc_version()
    install_portrait_encoders()


class PortraitVp8Encoder(Vp8Encoder):
    """``Vp8Encoder`` whose libvpx context is opened with ``NOISE_SENSITIVITY`` and ``CPU_USED``."""

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        if not isinstance(frame, av.VideoFrame):
            raise TypeError(f"a video encoder encodes video frames, not {type(frame).__name__}")
        # Open the context ourselves whenever the base class would (first frame, new size, bitrate moved
        # > 10 %); it then reuses ours.
        codec = self.codec
        if codec is None or (frame.width, frame.height) != (codec.width, codec.height) or not codec.bit_rate or \
                abs(self.target_bitrate - codec.bit_rate) / codec.bit_rate > 0.1:
            self.codec = self._open(frame.width, frame.height)
        return super().encode(frame, force_keyframe)

    def _open(self, width: int, height: int) -> VideoCodecContext:
        bitrate = self.target_bitrate
        codec = av.CodecContext.create("libvpx", "w")
        if not isinstance(codec, VideoCodecContext):
            raise TypeError("libvpx opened as a non-video codec")
        codec.width, codec.height = width, height
        codec.bit_rate = bitrate
        codec.pix_fmt = "yuv420p"
        codec.gop_size = 3000
        codec.qmin, codec.qmax = 2, 56
        self.options = codec.options = {  # kept: PyAV empties the dict as libvpx consumes it
            "bufsize": str(bitrate), "minrate": str(bitrate), "maxrate": str(bitrate),  # CBR, 1 s buffer
            "cpu-used": CPU_USED, "deadline": "realtime", "lag-in-frames": "0",
            "noise-sensitivity": NOISE_SENSITIVITY, "overshoot-pct": "15", "undershoot-pct": "100",
            "partitions": "0", "static-thresh": "1",
        }
        codec.thread_count = number_of_threads(width * height, multiprocessing.cpu_count())
        return codec


def _portrait_encoder(codec: RTCRtpCodecParameters) -> Encoder:
    if codec.mimeType.lower() == "video/vp8":
        return PortraitVp8Encoder()
    return get_encoder(codec)


def install_portrait_encoders() -> None:
    """Make aiortc's senders in this process encode VP8 with ``PortraitVp8Encoder`` (idempotent).

    aiortc offers no per-sender encoder option; its sender looks ``get_encoder`` up in its own module.
    """
    rtcrtpsender.get_encoder = _portrait_encoder


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
    if not isinstance(getattr(receiver, _RECEIVER_JITTER_BUFFER, None), JitterBuffer):
        return None
    buffer = InOrderAudioBuffer(hand_on=_decoder_hand_on(receiver))
    setattr(receiver, _RECEIVER_JITTER_BUFFER, buffer)
    return buffer
