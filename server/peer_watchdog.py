"""Reap a peer that went away without a goodbye (aioice alone waits ~30 s).

A microphone session is gone when its microphone stops sending. A PCM session receives no media, so it is gone
when the peer stops sending RTCP receiver reports about what we send.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import Awaitable, Callable

from aiortc import RTCPeerConnection

from server.event_hub import SessionStats

SILENT_PEER_S = 5.0  # no media from the peer this long: it is gone
SILENT_RTCP_S = 8.0  # no receiver report about our tracks this long (PCM sessions): it is gone
RTCP_GRACE_S = 10.0  # time to connect before receiver reports are expected
FIRST_MEDIA_GRACE_S = 15.0  # time to connect before the first media arrives
CHECK_EVERY_S = 0.5
RTCP_CHECK_EVERY = 4  # checks between two looks at the receiver reports (they cost a getStats per track)


async def last_rtcp_age_s(pc: RTCPeerConnection) -> float | None:
    """Seconds since the peer's last RTCP receiver report on any of our tracks (None: none yet)."""
    newest = None
    for transceiver in pc.getTransceivers():
        with contextlib.suppress(Exception):
            report = await transceiver.sender.getStats()
            for stats in report.values():
                if getattr(stats, "type", "") == "remote-inbound-rtp":
                    newest = stats.timestamp if newest is None else max(newest, stats.timestamp)
    if newest is None:
        return None
    return (datetime.datetime.now(datetime.UTC) - newest).total_seconds()


async def watch_peer(stats: SessionStats, receives_media: bool, pc: RTCPeerConnection,
                     close: Callable[[str], Awaitable[None]], is_open: Callable[[], bool]) -> None:
    """Close the session (``close(reason)``) once its peer is silent; return when it is closed.

    Args:
        stats: the session's counters (``created``, ``last_input``).
        receives_media: a microphone session (judged by its media) or not (judged by receiver reports).
        pc: the session's peer connection.
        close: closes the session with a reason ("no media" or "silent peer").
        is_open: whether the session is still open.
    """
    checks = 0
    while is_open():
        await asyncio.sleep(CHECK_EVERY_S)
        checks += 1
        now = time.monotonic()
        if not receives_media:
            if checks % RTCP_CHECK_EVERY == 0 and now - stats.created > RTCP_GRACE_S:
                age = await last_rtcp_age_s(pc)
                if age is None or age > SILENT_RTCP_S:
                    await close("silent peer")
            continue
        last = stats.last_input
        if last is None and now - stats.created > FIRST_MEDIA_GRACE_S:
            await close("no media")
        elif last is not None and now - last > SILENT_PEER_S:
            await close("silent peer")
