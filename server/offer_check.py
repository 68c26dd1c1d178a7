"""What an SDP offer must hold before a session is admitted for it: checked first, so a bad offer gets its
400 whatever the load (and costs no admission slot, no peer connection)."""

from __future__ import annotations

from aiortc.sdp import SessionDescription

from emo_stream.errors import InvalidSdpError
from server.request_limits import MAX_OFFER_BYTES

MAX_MEDIA_SECTIONS = 16  # a session uses two (audio, video); a data channel makes three


def check_offer(sdp: str, offer_type: str, audio_source: str) -> SessionDescription:
    """The parsed offer, if a session can answer it: an offer, parseable, with an audio and a video section,
    and (for a microphone session) audio the client sends.

    Raises:
        InvalidSdpError: what is wrong with it, in a sentence.
    """
    if offer_type != "offer":
        raise InvalidSdpError(f"expected an SDP offer, got type {str(offer_type)[:20]!r}")
    if len(sdp) > MAX_OFFER_BYTES:
        raise InvalidSdpError(f"the offer is {len(sdp) // 1024} KB; an offer is at most {MAX_OFFER_BYTES // 1024} KB")
    if "\x00" in sdp:
        raise InvalidSdpError("the offer holds NUL characters")
    if not sdp.lstrip().startswith("v=0") or "\nm=" not in sdp:
        raise InvalidSdpError("the body is not an SDP offer (no v= or m= lines)")
    if sdp.count("\nm=") > MAX_MEDIA_SECTIONS:
        raise InvalidSdpError(f"the offer has {sdp.count(chr(10) + 'm=')} media sections; at most "
                              f"{MAX_MEDIA_SECTIONS} are taken")
    try:
        parsed = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises whatever the text trips (ValueError, KeyError, ...)
        raise InvalidSdpError(f"the SDP offer cannot be parsed: {str(exc)[:120] or type(exc).__name__}") from None
    audio = [m for m in parsed.media if m.kind == "audio"]
    if not any(m.kind == "video" for m in parsed.media):
        raise InvalidSdpError("the offer has no video: add a video transceiver to receive the portrait")
    if not audio:
        raise InvalidSdpError("the offer has no audio: send the microphone, or for a PCM session add an audio "
                              "transceiver to receive the voice")
    if audio_source == "mic" and not any(m.direction in ("sendrecv", "sendonly", None) for m in audio):
        raise InvalidSdpError("the offer has no audio: send the microphone (an m=audio line the client sends on)")
    mids = [m.rtp.muxId for m in parsed.media if m.rtp.muxId]
    if len(set(mids)) != len(mids):
        raise InvalidSdpError("the offer repeats a media id (a=mid)")
    return parsed
