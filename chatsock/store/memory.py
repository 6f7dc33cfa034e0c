"""The in-memory backend: one worker, nothing to run. Expiry is checked lazily."""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from chatsock.store.base import Store

_SWEEP_EVERY = 1000


class MemoryStore(Store):
    """Keeps everything in dicts, with the same semantics as the Redis backend."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._data: dict[str, Any] = {}
        self._expires: dict[str, float] = {}
        self._writes = 0

    async def ping(self) -> None:
        return None

    # -- expiry -----------------------------------------------------------
    def _live(self, key: str) -> Any:
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= time.monotonic():
            self._data.pop(key, None)
            self._expires.pop(key, None)
            return None
        return self._data.get(key)

    def _touch(self, key: str, ttl: int | None) -> None:
        if ttl:
            self._expires[key] = time.monotonic() + ttl
        else:
            self._expires.pop(key, None)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            now = time.monotonic()
            for expired in [k for k, t in self._expires.items() if t <= now]:
                self._data.pop(expired, None)
                self._expires.pop(expired, None)

    # -- strings ----------------------------------------------------------
    async def _get(self, key: str) -> bytes | None:
        value = self._live(key)
        return value if isinstance(value, bytes) else None

    async def _set(self, key: str, value: bytes, ttl: int | None, *, nx: bool = False) -> bool:
        if nx and self._live(key) is not None:
            return False
        self._data[key] = value
        self._touch(key, ttl)
        return True

    async def _delete(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._live(key) is not None:
                removed += 1
            self._data.pop(key, None)
            self._expires.pop(key, None)
        return removed

    # -- hashes -----------------------------------------------------------
    async def _field_set(
        self, key: str, field: str, value: bytes, ttl: int | None, *, nx: bool = False
    ) -> bool:
        fields = self._live(key)
        if fields is None:
            fields = self._data[key] = {}
        written = not (nx and field in fields)
        if written:
            fields[field] = value
        self._touch(key, ttl)
        return written

    async def _field_get(self, key: str, field: str) -> bytes | None:
        fields = self._live(key)
        return fields.get(field) if fields else None

    async def _field_delete(self, key: str, field: str) -> None:
        fields = self._live(key)
        if fields:
            fields.pop(field, None)

    # -- lists ------------------------------------------------------------
    async def _push(self, key: str, value: bytes, ttl: int | None, cap: int) -> None:
        items = self._live(key)
        if items is None:
            items = self._data[key] = deque(maxlen=cap)
        items.append(value)
        self._touch(key, ttl)

    async def _range(self, key: str) -> list[bytes]:
        return list(self._live(key) or ())

    async def _length(self, key: str) -> int:
        return len(self._live(key) or ())

    # -- ordered index ----------------------------------------------------
    def _index(self, key: str) -> dict[str, float]:
        index = self._live(key)
        if index is None:
            index = self._data[key] = {}
        return index  # type: ignore[no-any-return]

    async def _index_add(self, key: str, member: str, score: float) -> None:
        self._index(key)[member] = score

    async def _index_remove(self, key: str, member: str) -> None:
        self._index(key).pop(member, None)

    def _ordered(self, key: str) -> list[str]:
        index = self._index(key)
        return sorted(index, key=lambda m: (index[m], m), reverse=True)

    async def _index_range(self, key: str, limit: int) -> list[str]:
        return self._ordered(key)[:limit]

    async def _index_trim(self, key: str, keep: int) -> list[str]:
        ordered = self._ordered(key)
        dropped = ordered[keep:]
        index = self._index(key)
        for member in dropped:
            index.pop(member, None)
        return dropped

    # -- sets -------------------------------------------------------------
    async def _claim_slot(self, key: str, member: str, cap: int, ttl: int) -> bool:
        members = self._live(key)
        if members is None:
            members = self._data[key] = set()
        if member not in members and len(members) >= cap:
            return False
        members.add(member)
        self._touch(key, ttl)
        return True

    async def _members(self, key: str) -> Sequence[str]:
        return list(self._live(key) or ())

    async def _remove_member(self, key: str, member: str) -> None:
        members = self._live(key)
        if members is not None:
            members.discard(member)

    # -- token logs -------------------------------------------------------
    async def _log_append(self, key: str, seq: int, data: bytes, ttl: int, cap: int) -> None:
        log = self._live(key)
        if log is None:
            log = self._data[key] = ([], [])
        seqs, items = log
        if seqs and seq <= seqs[-1]:  # a retried write; Redis ignores it the same way
            self._touch(key, ttl)
            return
        seqs.append(seq)
        items.append(data)
        if len(seqs) > cap:
            del seqs[: len(seqs) - cap]
            del items[: len(items) - cap]
        self._touch(key, ttl)

    async def _log_read(self, key: str, after: int) -> list[tuple[int, bytes]]:
        log = self._live(key)
        if log is None:
            return []
        seqs, items = log
        start = bisect.bisect_right(seqs, after)
        return list(zip(seqs[start:], items[start:], strict=True))

    async def _log_last(self, key: str) -> int:
        log = self._live(key)
        return log[0][-1] if log and log[0] else 0
