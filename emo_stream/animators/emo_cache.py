"""A bounded LRU of per-portrait model state (VAE latents, the ReferenceNet's reference bank, face-locator
features), kept on the model's device and accounted in bytes.

Computing a portrait's reference bank costs a VAE encode and a ReferenceNet pass; every window after that
pays only for the denoiser. Entries are keyed by ``Avatar.cache_key`` (a content hash). Eviction only drops
the cache's reference: a session that holds a state keeps it alive until it ends, so the cache bound is on
what the cache holds, not on what sessions in flight hold (``EmoAnimator.stats`` reports both).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor reachable through dataclasses, dicts, lists and tuples in ``value``."""
    seen: set[int] = set()

    def walk(v: Any) -> int:
        if isinstance(v, torch.Tensor):
            # Expanded views share storage: count the storage once.
            key = v.untyped_storage().data_ptr()
            if key in seen:
                return 0
            seen.add(key)
            return v.untyped_storage().nbytes()
        if is_dataclass(v) and not isinstance(v, type):
            return sum(walk(getattr(v, f.name)) for f in fields(v))
        if isinstance(v, dict):
            return sum(walk(x) for x in v.values())
        if isinstance(v, list | tuple):
            return sum(walk(x) for x in v)
        return 0

    return walk(value)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    bytes: int = 0
    entries: int = 0


class ByteLRU(Generic[T]):
    """Least-recently-used cache bounded by the bytes of its values' tensors.

    Args:
        max_bytes: bound on the sum of the entries' bytes; a value larger than the bound is computed and
            returned but not kept.
        sizeof: bytes of one value (default: ``tensor_bytes``).
    """

    def __init__(self, max_bytes: int, sizeof: Callable[[T], int] = tensor_bytes) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._sizeof = sizeof
        self._entries: OrderedDict[str, tuple[T, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> Iterable[str]:
        return list(self._entries)

    def get(self, key: str) -> T | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.stats.misses += 1
                return None
            self._entries.move_to_end(key)
            self.stats.hits += 1
            return entry[0]

    def put(self, key: str, value: T) -> None:
        size = self._sizeof(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.stats.bytes -= old[1]
            if size <= self.max_bytes:
                self._entries[key] = (value, size)
                self.stats.bytes += size
            while self.stats.bytes > self.max_bytes and self._entries:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.stats.bytes -= dropped
                self.stats.evictions += 1
            self.stats.entries = len(self._entries)

    def get_or_create(self, key: str, create: Callable[[], T]) -> T:
        value = self.get(key)
        if value is None:
            value = create()
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.stats.bytes = 0
            self.stats.entries = 0
