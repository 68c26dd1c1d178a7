"""Every change this server makes to aiortc's internals, in one place, and the aiortc version they fit.

aiortc offers no option for two things the live server needs, so they reach into its internals:

- **VP8 tuned for synthetic portraits** (``PortraitVp8Encoder``). aiortc's ``Vp8Encoder`` sets
  ``noise-sensitivity 4`` (a temporal denoiser for camera noise). Our frames are rendered, so there is no sensor
  noise to remove; measured on lite frames at 512² (one thread, 500 kbit/s CBR, the same bytes out): 1.99 ms/frame
  as aiortc sets it, 1.46 with the denoiser off. ``cpu-used -16`` would give 1.02 but coarser pictures at the same
  bitrate: the overlay's packed alpha then lost its exact 255 inside the face, so the speed stays aiortc's ``-6``.
  Everything else (CBR, quantiser range, no lag, one token partition) stays as aiortc chooses, so the RTP side is
  unchanged. aiortc's sender looks ``get_encoder`` up in its own module: ``install_portrait_encoders`` replaces it.
- **Incoming audio handed on at once**: ``emo_stream.rtc_audio`` (the client needs it too).

Both were written against aiortc ``SUPPORTED_AIORTC``; ``check_aiortc_version`` (run by
``install_aiortc_workarounds`` at start-up) refuses any other version with ``UnsupportedAiortcError``, a one-line
error before serving, rather than a session failing halfway on an internal that moved.
"""

from __future__ import annotations

import multiprocessing

import aiortc
import av
from aiortc import rtcrtpsender
from aiortc.codecs import get_encoder
from aiortc.codecs.base import Encoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from av.frame import Frame
from av.video.codeccontext import VideoCodecContext

from emo_stream.errors import EmoStreamError

# The aiortc release series (major.minor) these workarounds were written and tested for (pyproject pins it).
SUPPORTED_AIORTC = "1.16"

NOISE_SENSITIVITY = "0"
CPU_USED = "-6"


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
