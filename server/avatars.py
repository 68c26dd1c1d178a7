"""The avatars sessions can use: the bundled default and uploads, stored in the data folder.

An upload is validated (and its face found) off the event loop, stored as
``<data_dir>/avatars/<id>/source`` with ``meta.json`` and ``thumb.jpg``, and reloaded on
restart. The id is the content hash (128 bits), so the same photo uploaded twice is one avatar
and its landmarks and crop are computed once. Prepared avatars are kept in a small LRU.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from PIL import Image

from emo_stream.avatar import AvatarLimits, prepare_avatar
from emo_stream.errors import AvatarNotFoundError
from emo_stream.types import Avatar

Prepare = Callable[[bytes, int, AvatarLimits, str], Avatar]


def _prepare_here(data: bytes, size: int, limits: AvatarLimits, name: str) -> Avatar:
    return prepare_avatar(data, size=size, limits=limits, name=name)

logger = logging.getLogger(__name__)

DEFAULT_AVATAR_ID = "default"
THUMB_SIZE = 160
PREPARED_CACHE = 32


def default_portrait_bytes() -> bytes:
    """The bundled default portrait (scikit-image's public-domain astronaut photo)."""
    return resources.files("emo_stream").joinpath("assets/default.jpg").read_bytes()


@dataclass
class AvatarRecord:
    id: str
    name: str
    width: int
    height: int
    faces: int
    warnings: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def listing(self) -> dict:
        return {"id": self.id, "name": self.name, "thumbnail_url": f"/v1/avatars/{self.id}/thumbnail"}


class AvatarStore:
    """Avatars by id at the server's output size. ``add`` and ``get`` are slow (face mesh,
    crop): call them off the event loop (``asyncio.to_thread``)."""

    def __init__(self, size: int, limits: AvatarLimits | None = None, data_dir: str | Path | None = None,
                 prepare: Prepare | None = None) -> None:
        """``prepare`` makes an uploaded photo's avatar (default: here, on the caller's thread; the server
        passes ``PortraitPool.prepare``, a low-priority process)."""
        self.size = size
        self._prepare: Prepare = prepare or _prepare_here
        self.limits = limits or AvatarLimits()
        self.folder = Path(data_dir).expanduser() / "avatars" if data_dir else None
        self._records: dict[str, AvatarRecord] = {}
        self._sources: dict[str, bytes | Path] = {DEFAULT_AVATAR_ID: b""}
        self._prepared: OrderedDict[str, Avatar] = OrderedDict()
        self._thumbs: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._records[DEFAULT_AVATAR_ID] = AvatarRecord(DEFAULT_AVATAR_ID, "Astronaut (default)", 512, 512, 1)
        self._load_folder()

    def _load_folder(self) -> None:
        if self.folder is None or not self.folder.is_dir():
            return
        for meta in sorted(self.folder.glob("*/meta.json")):
            try:
                record = AvatarRecord(**json.loads(meta.read_text()))
            except (ValueError, TypeError) as exc:
                logger.warning("skipping avatar %s: %s", meta.parent.name, exc)
                continue
            if (meta.parent / "source").is_file():
                self._records[record.id] = record
                self._sources[record.id] = meta.parent / "source"

    def listing(self) -> list[dict]:
        return [r.listing() for r in sorted(self._records.values(), key=lambda r: (r.id != DEFAULT_AVATAR_ID, r.created))]

    def record(self, avatar_id: str) -> AvatarRecord:
        record = self._records.get(avatar_id)
        if record is None:
            raise AvatarNotFoundError(f"no avatar with id {avatar_id[:80]!r}; GET /v1/avatars lists them")
        return record

    def _source_bytes(self, avatar_id: str) -> bytes:
        source = self._sources[avatar_id]
        if avatar_id == DEFAULT_AVATAR_ID:
            return default_portrait_bytes()
        return source.read_bytes() if isinstance(source, Path) else source

    def get(self, avatar_id: str) -> Avatar:
        """The prepared avatar (face found, cropped), computed once per id."""
        record = self.record(avatar_id)
        with self._lock:
            avatar = self._prepared.get(avatar_id)
            if avatar is not None:
                self._prepared.move_to_end(avatar_id)
                return avatar
        avatar = self._prepare_source(avatar_id, record.name)
        with self._lock:
            self._prepared[avatar_id] = avatar
            while len(self._prepared) > PREPARED_CACHE:
                self._prepared.popitem(last=False)
        return avatar

    def _prepare_source(self, avatar_id: str, name: str) -> Avatar:
        data = self._source_bytes(avatar_id)
        if avatar_id == DEFAULT_AVATAR_ID:  # the bundled portrait: small, and prepared once at start-up
            return _prepare_here(data, self.size, self.limits, name)
        return self._prepare(data, self.size, self.limits, name)

    def add(self, data: bytes, name: str = "") -> AvatarRecord:
        """Validate a photo, find its face, store it; the same bytes give the same record.

        Raises:
            ImageError subclasses (not an image, too large, no face, face too small).
        """
        avatar_id = hashlib.sha256(data).hexdigest()[:32]
        if avatar_id in self._records:
            return self._records[avatar_id]
        avatar = self._prepare(data, self.size, self.limits, name)
        width, height = avatar.source_size
        record = AvatarRecord(id=avatar_id, name=name or f"Upload {len(self._records)}", width=width, height=height,
                              faces=avatar.faces, warnings=list(avatar.warnings))
        thumb = self._thumbnail(avatar)
        if self.folder is not None:
            # Written under a temporary name and renamed: a crash leaves no half-written avatar.
            folder = self.folder / avatar_id
            self.folder.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{avatar_id}.", dir=self.folder))
            try:
                (staging / "source").write_bytes(data)
                (staging / "thumb.jpg").write_bytes(thumb)
                (staging / "meta.json").write_text(json.dumps(asdict(record)))
                staging.replace(folder)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)
                # Another process of this server (server.shards) stored the same bytes first: its copy stands.
                if not (folder / "meta.json").is_file():
                    raise
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            source: bytes | Path = folder / "source"
        else:
            source = data
        with self._lock:
            self._records[avatar_id] = record
            self._sources[avatar_id] = source
            self._thumbs[avatar_id] = thumb
            self._prepared[avatar_id] = avatar
        return record

    @staticmethod
    def _thumbnail(avatar: Avatar) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(avatar.image).resize((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=85)
        return buf.getvalue()

    def thumbnail(self, avatar_id: str) -> bytes:
        self.record(avatar_id)
        thumb = self._thumbs.get(avatar_id)
        if thumb is None:
            stored = self.folder / avatar_id / "thumb.jpg" if self.folder is not None else None
            thumb = stored.read_bytes() if stored is not None and stored.is_file() else self._thumbnail(self.get(avatar_id))
            self._thumbs[avatar_id] = thumb
        return thumb
