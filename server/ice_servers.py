"""STUN and TURN servers from the config (``server.ice_servers``): one URL each, a TURN server's credentials in it.

``turn:USER:PASS@host:3478?transport=udp`` (user and password percent-encoded where they hold ``:`` or ``@``);
``stun:host:3478``. aiortc takes the credentials apart from the URL, and so do browsers
(``GET /v1/ice-servers``). aiortc uses only the first STUN and the first TURN server it is given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from emo_stream.errors import ConfigError

if TYPE_CHECKING:
    from aiortc import RTCIceServer

_URL = re.compile(r"^(?P<scheme>stuns?|turns?):(?:(?P<user>[^:@/?]+):(?P<password>[^@/?]+)@)?"
                  r"(?P<host>\[[0-9a-fA-F:]+\]|[^:@/?\[\]]+)(?::(?P<port>\d{1,5}))?(?P<query>\?transport=(?:udp|tcp))?$")


@dataclass(frozen=True)
class IceServer:
    """One server as WebRTC takes it: ``urls`` without credentials, and the TURN credentials apart."""

    urls: str
    username: str | None = None
    credential: str | None = None

    def for_aiortc(self) -> RTCIceServer:
        from aiortc import RTCIceServer  # here: the config reads this module, and --help stays fast

        return RTCIceServer(urls=self.urls, username=self.username, credential=self.credential)

    def for_browser(self) -> dict:
        """The JSON of ``GET /v1/ice-servers`` (an RTCIceServer dictionary)."""
        entry: dict = {"urls": [self.urls]}
        if self.username is not None:
            entry.update(username=self.username, credential=self.credential)
        return entry


def parse_ice_server(text: str, where: str = "server.ice_servers") -> IceServer:
    """One ``server.ice_servers`` entry.

    Raises:
        ConfigError: not a stun:/turn: URL, a TURN server without credentials, or credentials on STUN.
    """
    match = _URL.match(text.strip())
    if match is None:
        raise ConfigError(f"{where}: {text!r} is not a STUN or TURN URL (stun:host:port, "
                          "turn:user:password@host:port?transport=udp)")
    scheme, user, password = match["scheme"], match["user"], match["password"]
    if scheme.startswith("turn") and user is None:
        raise ConfigError(f"{where}: the TURN server {match['host']} needs credentials: turn:user:password@host")
    if scheme.startswith("stun") and user is not None:
        raise ConfigError(f"{where}: a STUN server takes no credentials")
    if match["port"] is not None and not 0 < int(match["port"]) < 65536:
        raise ConfigError(f"{where}: port {match['port']} is out of range")
    urls = f"{scheme}:{match['host']}" + (f":{match['port']}" if match["port"] else "") + (match["query"] or "")
    if user is None:
        return IceServer(urls)
    return IceServer(urls, unquote(user), unquote(password))


def parse_ice_servers(texts: list[str]) -> list[IceServer]:
    """Every entry of ``server.ice_servers`` (raises ConfigError naming the first bad one)."""
    return [parse_ice_server(text, f"server.ice_servers[{i}]") for i, text in enumerate(texts)]
