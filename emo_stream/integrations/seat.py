"""What an integration needs to open its session: a client (its own or one it is given) and the session's options."""

from __future__ import annotations

from dataclasses import dataclass

from emo_stream.client import AvatarClient, AvatarSession


@dataclass
class AvatarSeat:
    """The server, the portrait and the options an avatar seat (pipecat's, LiveKit's) opens its session with."""

    client: AvatarClient
    own_client: bool  # made here, so closed here
    avatar: str | None = None
    background: str | None = None
    connect_timeout_s: float = 15.0

    @classmethod
    def make(cls, owner: str, base_url: str | None, token: str | None, client: AvatarClient | None,
             avatar: str | None, background: str | None, connect_timeout_s: float) -> AvatarSeat:
        """``client``, or a new one for ``base_url``.

        Raises:
            ValueError: neither is given (``owner`` names the class in the message).
        """
        if client is None and base_url is None:
            raise ValueError(f"{owner} needs base_url or client")
        return cls(client=client or AvatarClient(str(base_url), token=token), own_client=client is None,
                   avatar=avatar, background=background, connect_timeout_s=connect_timeout_s)

    async def open(self) -> AvatarSession:
        return await self.client.session(avatar=self.avatar, background=self.background,
                                         connect_timeout_s=self.connect_timeout_s).open()

    async def aclose(self) -> None:
        if self.own_client:
            await self.client.aclose()
