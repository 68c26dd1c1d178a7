"""A user-space UDP impairment relay for WebRTC tests and benchmarks: loss, burst loss, delay, jitter, reordering
and a bandwidth cap, each direction on its own (these kernels have no netem and no iptables).

The relay has two faces, one per side. An offer's candidates are rewritten to the relay's server-facing address
and the answer's to its client-facing address, so each peer sees only the relay, and every packet (ICE checks,
DTLS, RTP, RTCP) crosses it::

    client C  ->  face_a  ==(client->server path)==>  face_b  ->  server S
    client C  <-  face_a  <==(server->client path)==  face_b  <-  server S

``LivePeer(relay=...)`` (tests/live_client.py) does the rewriting, and tells the relay both peers' addresses. A
peer that is not told (Chromium, whose SDP the page rewrites: ``tests.browser.route_through``) is learnt from its
first datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Impairment:
    """What one direction of the path does to each datagram.

    Attributes:
        loss: the long-run share of datagrams dropped (0..1).
        burst: the mean length of a loss burst in datagrams (Gilbert model); 1 is independent loss.
        delay_ms: the fixed one-way delay added.
        jitter_ms: the standard deviation of a normal delay added on top (never below 0); with ``reorder`` a
            datagram may overtake an earlier one, as netem's jitter does.
        reorder: let jittered datagrams overtake; False keeps their order (each leaves no sooner than the last).
        rate_kbit: a bandwidth cap (a queue serialises datagrams at this rate); None: none.
    """

    loss: float = 0.0
    burst: float = 1.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    reorder: bool = True
    rate_kbit: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0 or self.burst < 1.0 or self.delay_ms < 0 or self.jitter_ms < 0:
            raise ValueError(f"an impossible impairment: {self}")
        if self.rate_kbit is not None and self.rate_kbit <= 0:
            raise ValueError("rate_kbit must be positive")

    @classmethod
    def parse(cls, text: str) -> Impairment:
        """``"loss=0.05,delay_ms=30,jitter_ms=10"`` (the command-line form); "" is a clean path."""
        values: dict[str, float | bool] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            if key not in cls.__dataclass_fields__:
                raise ValueError(f"unknown impairment {key!r}: one of {', '.join(cls.__dataclass_fields__)}")
            values[key] = value.lower() in ("1", "true", "yes") if key == "reorder" else float(value)
        return cls(**values)  # type: ignore[arg-type]


@dataclass
class PathStats:
    received: int = 0
    dropped: int = 0
    sent: int = 0


class ImpairedPath:
    """One direction: decides each datagram's fate and time, then sends it with ``send``."""

    def __init__(self, impairment: Impairment, send, rng: random.Random) -> None:
        self.impairment = impairment
        self._send = send
        self._rng = rng
        self._bad = False  # the Gilbert model's state: in a loss burst
        self._last_departure = 0.0
        self._link_free_at = 0.0
        self.stats = PathStats()

    def _lost(self) -> bool:
        imp = self.impairment
        if imp.loss <= 0:
            return False
        if imp.burst <= 1.0:
            return self._rng.random() < imp.loss
        # Gilbert: leave a burst with p = 1 / burst; enter one so that the long-run share is ``loss``.
        leave = 1.0 / imp.burst
        enter = imp.loss * leave / (1.0 - imp.loss)
        self._bad = (self._rng.random() >= leave) if self._bad else (self._rng.random() < enter)
        return self._bad

    def submit(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.stats.received += 1
        if self._lost():
            self.stats.dropped += 1
            return
        imp = self.impairment
        now = loop.time()
        departure = now
        if imp.rate_kbit is not None:  # serialised on the capped link
            departure = max(departure, self._link_free_at) + len(data) * 8 / (imp.rate_kbit * 1000)
            self._link_free_at = departure
        departure += (imp.delay_ms + max(0.0, self._rng.gauss(0.0, imp.jitter_ms) if imp.jitter_ms else 0.0)) / 1000
        if not imp.reorder:
            departure = max(departure, self._last_departure)
        self._last_departure = max(self._last_departure, departure)
        if departure <= now:
            self._deliver(data)
        else:
            loop.call_at(departure, self._deliver, data)

    def _deliver(self, data: bytes) -> None:
        self.stats.sent += 1
        self._send(data)


class _Face(asyncio.DatagramProtocol):
    def __init__(self, on_datagram) -> None:
        self.on_datagram = on_datagram
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.on_datagram(data, addr)


@dataclass
class UdpRelay:
    """The relay between one client and one server (see the module). ``start`` binds both faces on ``host``.

    Attributes:
        to_server: the impairment of the client -> server direction.
        to_client: the impairment of the server -> client direction.
        seed: the random seed of both paths' losses and jitter.
    """

    to_server: Impairment = field(default_factory=Impairment)
    to_client: Impairment = field(default_factory=Impairment)
    seed: int = 0
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None

    async def start(self, host: str) -> UdpRelay:
        loop = asyncio.get_running_loop()
        rng = random.Random(self.seed)
        self._loop = loop
        face_a, face_b = _Face(self._from_client), _Face(self._from_server)
        await loop.create_datagram_endpoint(lambda: face_a, local_addr=(host, 0))
        await loop.create_datagram_endpoint(lambda: face_b, local_addr=(host, 0))
        self._a, self._b = face_a, face_b
        self.up = ImpairedPath(self.to_server, lambda d: self._send(self._b, d, self.server), random.Random(rng.random()))
        self.down = ImpairedPath(self.to_client, lambda d: self._send(self._a, d, self.client),
                                 random.Random(rng.random()))
        return self

    @property
    def client_facing(self) -> tuple[str, int]:
        """Where the client sends (put in the answer it receives)."""
        return self._a.transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]

    @property
    def server_facing(self) -> tuple[str, int]:
        """Where the server sends (put in the offer it receives)."""
        return self._b.transport.get_extra_info("sockname")[:2]  # type: ignore[union-attr]

    def _from_client(self, data: bytes, addr) -> None:
        if self.client is None:  # a peer whose candidates it was not told (a browser): its first datagram says
            self.client = addr[:2]
        self.up.submit(data, self._loop)

    def _from_server(self, data: bytes, addr) -> None:
        if self.server is None:
            self.server = addr[:2]
        self.down.submit(data, self._loop)

    @staticmethod
    def _send(face: _Face, data: bytes, addr: tuple[str, int] | None) -> None:
        if addr is not None and face.transport is not None:  # before the route is known, datagrams are lost
            face.transport.sendto(data, addr)

    def close(self) -> None:
        for face in (getattr(self, "_a", None), getattr(self, "_b", None)):
            if face is not None and face.transport is not None:
                face.transport.close()


@contextlib.contextmanager
def relay_in_thread(to_server: Impairment, to_client: Impairment, host: str = "127.0.0.1",
                    seed: int = 0) -> Iterator[UdpRelay]:
    """A started ``UdpRelay`` on its own event loop in a thread, for a caller with no loop of its own (a
    Selenium-driven browser); closed on exit. One session per relay: it learns each peer once."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="udp-relay", daemon=True)
    thread.start()
    relay = UdpRelay(to_server=to_server, to_client=to_client, seed=seed)

    async def close() -> None:
        relay.close()
        await asyncio.sleep(0)  # the transports close their sockets on the loop's next pass

    try:
        asyncio.run_coroutine_threadsafe(relay.start(host), loop).result(timeout=10)
        yield relay
    finally:
        with contextlib.suppress(Exception):  # a relay that never started has nothing to close
            asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()


_CANDIDATE = re.compile(r"^a=candidate:(\S+) (\d+) (udp|UDP) (\d+) (\d+\.\d+\.\d+\.\d+) (\d+) typ host.*$", re.M)


def first_host_candidate(sdp: str) -> tuple[str, int]:
    """The first IPv4 UDP host candidate of an SDP.

    Raises:
        ValueError: the SDP has none.
    """
    match = _CANDIDATE.search(sdp)
    if match is None:
        raise ValueError("the SDP has no IPv4 UDP host candidate")
    return match.group(5), int(match.group(6))


def through(sdp: str, address: tuple[str, int]) -> str:
    """``sdp`` with each media section's candidates replaced by one host candidate at ``address`` (the relay's
    face), and its connection address and port with it."""
    out = []
    placed = False  # in the current media section
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            placed = False
            parts = line.split(" ")
            parts[1] = str(address[1])
            line = " ".join(parts)
        elif line.startswith("c=IN IP4 "):
            line = f"c=IN IP4 {address[0]}"
        elif line.startswith("a=candidate:"):
            match = _CANDIDATE.match(line)
            if match is None or placed:
                continue
            line = (f"a=candidate:{match.group(1)} {match.group(2)} udp {match.group(4)} {address[0]} {address[1]} "
                    "typ host")
            placed = True
        out.append(line)
    return "\r\n".join(out)
