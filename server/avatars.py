"""The avatars a session can use: the bundled default (and, later, uploads), prepared once."""

from __future__ import annotations

import threading
from importlib import resources

from emo_stream.avatar import AvatarLimits, prepare_avatar
from emo_stream.errors import AvatarNotFoundError
from emo_stream.types import Avatar

DEFAULT_AVATAR_ID = "default"


def default_portrait_bytes() -> bytes:
    """The bundled default portrait (scikit-image's public-domain astronaut photo)."""
    return resources.files("emo_stream").joinpath("assets/default.jpg").read_bytes()


class AvatarStore:
    """Prepared avatars by id, at the server's output size. Preparing is slow (face mesh,
    crop): call ``get`` off the event loop (``asyncio.to_thread``)."""

    def __init__(self, size: int, limits: AvatarLimits | None = None) -> None:
        self.size = size
        self.limits = limits or AvatarLimits()
        self._avatars: dict[str, Avatar] = {}
        self._names = {DEFAULT_AVATAR_ID: "Astronaut (default)"}
        self._lock = threading.Lock()

    def ids(self) -> list[dict]:
        return [{"id": i, "name": n, "thumbnail_url": None} for i, n in self._names.items()]

    def exists(self, avatar_id: str) -> bool:
        return avatar_id in self._names

    def get(self, avatar_id: str) -> Avatar:
        if avatar_id not in self._names:
            raise AvatarNotFoundError(f"no avatar with id {avatar_id!r}; GET /v1/avatars lists them")
        with self._lock:
            avatar = self._avatars.get(avatar_id)
            if avatar is None:
                avatar = prepare_avatar(default_portrait_bytes(), size=self.size, limits=self.limits,
                                        name=self._names[avatar_id])
                self._avatars[avatar_id] = avatar
            return avatar
