"""``AvatarClient``: the HTTP side of an emo-stream server (avatars, sessions) for agents, in asyncio."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.mediastreams import MediaStreamTrack

from emo_stream import errors as e
from emo_stream.client.errors import ConnectionFailedError, error_from_answer
from emo_stream.client.session import AvatarSession


@dataclass(frozen=True)
class Avatar:
    """A portrait the server can animate (``GET /v1/avatars``, ``POST /v1/avatars``)."""

    id: str
    name: str
    thumbnail_url: str | None = None
    width: int | None = None
    height: int | None = None
    faces: int | None = None
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Avatar:
        return cls(id=str(data["id"]), name=str(data.get("name") or data["id"]),
                   thumbnail_url=data.get("thumbnail_url"), width=data.get("width"), height=data.get("height"),
                   faces=data.get("faces"), warnings=list(data.get("warnings") or []))


class AvatarClient:
    """An emo-stream server, for an agent: upload portraits and open live sessions.

    Args:
        base_url: the server, e.g. ``http://127.0.0.1:8080``.
        token: the server token, where the server has one.
        timeout_s: for each HTTP request.
        ice_servers: the WebRTC ICE servers; None asks the server (``GET /v1/ice-servers``) on the first session.

    Every error the server answers is raised as the engine's exception for its code (``emo_stream.errors``;
    ``emo_stream.client.errors`` for the server-only ones), with ``status`` and ``request_id`` set.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0,
                 ice_servers: list[RTCIceServer] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s, headers=self._headers)
        self._ice_servers = ice_servers

    async def __aenter__(self) -> AvatarClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(self, method: str, path: str, control: str | None = None, **kwargs: Any) -> Any:
        """One API request; the JSON answer (None for 204). ``control``: the session's control token."""
        headers = dict(kwargs.pop("headers", None) or {})
        if control:
            headers["X-Control-Token"] = control
        try:
            answer = await self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as exc:
            raise ConnectionFailedError(f"cannot reach {self.base_url}: {exc or type(exc).__name__}") from None
        if answer.status_code >= 400:
            raise error_from_answer(answer.status_code, answer.content, answer.headers.get("x-request-id"),
                                    answer.headers.get("retry-after"))
        return answer.json() if answer.content else None

    async def health(self) -> bool:
        """Whether the server answers ``/healthz``."""
        try:
            return (await self.request("GET", "/healthz")).get("status") == "ok"
        except e.EmoStreamError:
            return False

    async def avatars(self) -> list[Avatar]:
        return [Avatar.from_json(a) for a in (await self.request("GET", "/v1/avatars"))["avatars"]]

    async def upload_avatar(self, photo: str | Path | bytes, name: str | None = None) -> Avatar:
        """Upload a portrait (a path or the file's bytes: JPEG, PNG, WebP or BMP).

        Raises:
            InputNotFoundError: no such file. The server's refusals: ``NoFaceFoundError``, ``ImageTooLargeError``...
        """
        if isinstance(photo, (str, Path)):
            path = Path(photo)
            if not path.is_file():
                raise e.InputNotFoundError(f"no such photo: {path}")
            content, filename = path.read_bytes(), path.name
        else:
            content, filename = bytes(photo), "portrait"
        data = {"name": name} if name else None
        return Avatar.from_json(await self.request("POST", "/v1/avatars", files={"file": (filename, content)},
                                                   data=data))

    async def ice_configuration(self) -> RTCConfiguration:
        """The ICE servers sessions use: those given, else the server's (aiortc uses the first STUN and the
        first TURN server)."""
        if self._ice_servers is None:
            listed = (await self.request("GET", "/v1/ice-servers")).get("ice_servers", [])
            self._ice_servers = [RTCIceServer(urls=s["urls"], username=s.get("username"),
                                              credential=s.get("credential")) for s in listed]
        return RTCConfiguration(iceServers=self._ice_servers)

    def session(self, avatar: str | Avatar | None = None, audio_source: str = "pcm",
                microphone: MediaStreamTrack | None = None, background: str | None = None, name: str | None = None,
                seed: int | None = None, connect_timeout_s: float = 15.0, events: bool = True) -> _SessionOpener:
        """A live session, to use as ``async with client.session(...) as session``.

        Args:
            avatar: an avatar (or its id); None: the server's bundled default.
            audio_source: ``pcm`` (the agent pushes its voice: ``push_pcm``) or ``mic`` (``microphone``, an aiortc
                audio track, is sent over WebRTC).
            background, name, seed: the session options of docs/api.md.
            events: open the events socket (state, stats, the reason the session ended).
        """
        if audio_source not in ("pcm", "mic"):
            raise e.RequestError(f"audio_source must be 'pcm' or 'mic', not {audio_source!r}")
        if (audio_source == "mic") != (microphone is not None):
            raise e.RequestError("a 'mic' session needs a microphone track, and only a 'mic' session takes one")
        options: dict[str, Any] = {"audio_source": audio_source}
        for key, value in (("background", background), ("name", name), ("seed", seed)):
            if value is not None:
                options[key] = value
        body: dict[str, Any] = {"options": options}
        if avatar is not None:
            body["avatar_id"] = avatar.id if isinstance(avatar, Avatar) else avatar
        return _SessionOpener(self, body, microphone, connect_timeout_s, events)


class _SessionOpener:
    """``client.session(...)``: an async context manager that starts an ``AvatarSession`` and closes it."""

    def __init__(self, client: AvatarClient, body: dict[str, Any], microphone: MediaStreamTrack | None,
                 connect_timeout_s: float, events: bool) -> None:
        self._client = client
        self._body = body
        self._microphone = microphone
        self._connect_timeout_s = connect_timeout_s
        self._events = events
        self._session: AvatarSession | None = None

    async def open(self) -> AvatarSession:
        """Start the session without a ``with`` block (close it with ``await session.close()``)."""
        client = self._client
        session = AvatarSession(client.request, client.base_url, client._headers, self._body, self._microphone,
                                await client.ice_configuration(), self._connect_timeout_s, self._events)
        await session.start()
        return session

    async def __aenter__(self) -> AvatarSession:
        self._session = await self.open()
        return self._session

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
