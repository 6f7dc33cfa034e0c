"""The in-memory backend: one worker, nothing to run. Expiry is checked lazily.

Every primitive runs without an `await` inside, so each is atomic under
asyncio by construction, as the Redis backend's scripts are on Redis.
Containers left empty are dropped, as Redis drops empty keys.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

import orjson

from chatsock.store.base import Store
from chatsock.store.memory_limits import MemoryRateLimits
from chatsock.store.models import Appended
from chatsock.store.primitives import KeepAliveKeys, LogAppend, PushOnceOp, RegisterStep

_SWEEP_EVERY = 1000


class MemoryStore(MemoryRateLimits, Store):
    """Keeps everything in dicts, with the same semantics as the Redis backend."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._data: dict[str, Any] = {}
        self._expires: dict[str, float] = {}
        self._writes = 0

    async def ping(self) -> None:
        return None

    def live_keys(self) -> list[str]:
        """Every key that holds something now (for tests and debugging)."""
        return [key for key in list(self._data) if self._live(key)]

    # -- expiry -----------------------------------------------------------
    def _live(self, key: str) -> Any:
        deadline = self._expires.get(key)
        if deadline is not None and deadline <= time.monotonic():
            self._data.pop(key, None)
            self._expires.pop(key, None)
            return None
        return self._data.get(key)

    def _touch(self, key: str, ttl: float | None) -> None:
        if ttl:
            self._expires[key] = time.monotonic() + ttl
        else:
            self._expires.pop(key, None)
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self.forget_expired()

    def forget_expired(self) -> int:
        """Drop every expired key now (also every `_SWEEP_EVERY` writes, and from the
        runner's upkeep, so an idle worker gives the memory of expired logs back);
        return how many were dropped."""
        now = time.monotonic()
        expired = [k for k, t in self._expires.items() if t <= now]
        for key in expired:
            self._data.pop(key, None)
            self._expires.pop(key, None)
        return len(expired)

    def _expire(self, key: str, ttl: int) -> None:
        if self._live(key) is not None:
            self._expires[key] = time.monotonic() + ttl

    def _container(self, key: str, kind: type) -> Any:
        """The container at `key`, created empty when absent."""
        value = self._live(key)
        if value is None:
            value = self._data[key] = kind()
        return value

    def _drop_if_empty(self, key: str) -> None:
        if key in self._data and not self._data[key]:
            self._data.pop(key, None)
            self._expires.pop(key, None)

    # -- strings ----------------------------------------------------------
    async def _get(self, key: str) -> bytes | None:
        value = self._live(key)
        return value if isinstance(value, bytes) else None

    async def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return [value if isinstance(value := self._live(k), bytes) else None for k in keys]

    def _set_now(self, key: str, value: bytes, ttl: int | None, *, nx: bool = False) -> bool:
        if nx and self._live(key) is not None:
            return False
        self._data[key] = value
        self._touch(key, ttl)
        return True

    async def _set(self, key: str, value: bytes, ttl: int | None, *, nx: bool = False) -> bool:
        return self._set_now(key, value, ttl, nx=nx)

    async def _delete(self, *keys: str) -> int:
        removed = 0
        for key in keys:
            if self._live(key) is not None:
                removed += 1
            self._data.pop(key, None)
            self._expires.pop(key, None)
        return removed

    # -- hashes -----------------------------------------------------------
    async def _field_get(self, key: str, field: str) -> bytes | None:
        fields = self._live(key)
        return fields.get(field) if fields else None

    async def _release_field(self, key: str, order: str, field: str, stream_id: str | None) -> bool:
        fields = self._live(key) or {}
        value = fields.get(field)
        if value is None:
            return False
        if stream_id is not None and orjson.loads(value).get("stream_id") != stream_id:
            return False
        del fields[field]
        (self._live(order) or {}).pop(field, None)
        self._drop_if_empty(key)
        self._drop_if_empty(order)
        return True

    # -- lists ------------------------------------------------------------
    def _append_ordered(self, key: str, member: str, cap: int, ttl: int | None) -> list[str]:
        """Add `member` last to an insertion-ordered set, keeping the newest `cap`;
        return the members dropped (the Lua scripts' `append`)."""
        order: dict[str, float] = self._container(key, dict)
        order[member] = next(reversed(order.values()), 0.0) + 1
        dropped = list(order)[: max(0, len(order) - cap)]
        for old in dropped:
            del order[old]
        self._touch(key, ttl)
        return dropped

    async def _push_once(self, op: PushOnceOp) -> int:
        now = self._live(op.session)
        if now is None:
            return -1
        if now != op.seen:
            return -2
        self._set_now(op.session, op.header, op.ttl)
        for index in op.indexes:
            self._index_add_now(index, op.member, op.score, op.ttl)
        if op.item_id in (self._live(op.ids) or {}):
            return 0
        items = self._live(op.key)
        if items is None:
            items = self._data[op.key] = deque(maxlen=op.cap)
        items.append(op.value)
        self._touch(op.key, op.ttl)
        self._append_ordered(op.ids, op.item_id, op.cap, op.ttl)
        return 1

    async def _swap_item(self, key: str, guard: str, old: bytes, new: bytes) -> int:
        if self._live(guard) is None:
            return -1
        items: deque[bytes] = self._live(key) or deque()
        for index in range(len(items) - 1, -1, -1):
            if items[index] == old:
                items[index] = new
                return 1
        return 0

    async def _range(self, key: str) -> list[bytes]:
        return list(self._live(key) or ())

    async def _length(self, key: str) -> int:
        return len(self._live(key) or ())

    # -- ordered index ----------------------------------------------------
    async def _index_add(self, key: str, member: str, score: float, ttl: int | None = None) -> None:
        self._index_add_now(key, member, score, ttl)

    def _index_add_now(self, key: str, member: str, score: float, ttl: int | None) -> None:
        index = self._container(key, dict)
        index[member] = score
        if ttl:
            for old in [m for m, s in index.items() if s < score - ttl]:
                del index[old]
            self._touch(key, ttl)

    def _index_drop(self, key: str, members: Sequence[str]) -> None:
        index = self._live(key) or {}
        for member in members:
            index.pop(member, None)
        self._drop_if_empty(key)

    async def _index_remove(self, key: str, *members: str) -> None:
        self._index_drop(key, members)

    def _ordered(self, key: str) -> list[str]:
        index = self._live(key) or {}
        return sorted(index, key=lambda m: (index[m], m), reverse=True)

    async def _index_range(self, key: str, limit: int, *, oldest: bool = False) -> list[str]:
        ordered = self._ordered(key)
        return (ordered[::-1] if oldest else ordered)[: max(limit, 0)]

    async def _index_trim(self, key: str, keep: int) -> list[str]:
        dropped = self._ordered(key)[keep:]
        self._index_drop(key, dropped)
        return dropped

    # -- streams: the atomic steps -----------------------------------------
    async def _register(self, step: RegisterStep) -> tuple[str, bytes | None]:
        if step.cmid is not None:
            earlier = (self._live(step.cmids) or {}).get(step.cmid)
            if earlier is not None:
                return "earlier", earlier
        if self._live(step.record_key) is not None:
            return "exists", None
        slots = self._live(step.slots) or set()
        if step.stream_id not in slots and len(slots) >= step.limit:
            return "full", None
        user_slots = self._live(step.user_slots) or set()
        if step.stream_id not in user_slots and len(user_slots) >= step.user_limit:
            return "user_full", None
        for key in (step.slots, step.user_slots):
            self._container(key, set).add(step.stream_id)
            self._touch(key, step.log_ttl)
        self._set_now(step.record_key, step.record, step.log_ttl)
        self._set_now(step.lease, step.owner, step.lease_ttl)
        self._container(step.index, dict)[step.stream_id] = step.started
        self._append_ordered(step.streams, step.stream_id, step.cap, step.keep_ttl)
        if step.cmid is not None:
            acks = self._container(step.cmids, dict)
            acks[step.cmid] = step.ack
            for old in self._append_ordered(step.cmid_order, step.cmid, step.cap, step.keep_ttl):
                acks.pop(old, None)
            self._data[step.cmids] = acks  # even if a sweep in between found it expired
            self._touch(step.cmids, step.keep_ttl)
        return "registered", None

    async def _finish(
        self, key: str, value: bytes, ttl: int, slots: Sequence[str], index: str, member: str
    ) -> bool:
        won = self._set_now(key, value, ttl, nx=True)
        for slot in slots:
            (self._live(slot) or set()).discard(member)
            self._drop_if_empty(slot)
        (self._live(index) or {}).pop(member, None)
        self._drop_if_empty(index)
        return won

    async def _keep_alive(
        self,
        streams: Sequence[KeepAliveKeys],
        owner: bytes,
        lease_ttl: int,
        log_ttl: int,
        keep_ttl: int | None,
    ) -> list[bool]:
        stopped = []
        for keys in streams:
            if self._live(keys.record) is not None:
                for key in (keys.record, keys.log, keys.slots, keys.user_slots):
                    self._expire(key, log_ttl)
                self._set_now(keys.lease, owner, lease_ttl)
                if keep_ttl:
                    for key in (keys.streams, keys.cmids, keys.cmid_order):
                        self._expire(key, keep_ttl)
            stopped.append(self._live(keys.stop) is not None)
        return stopped

    # -- presence ---------------------------------------------------------
    def _presence(self, key: str) -> dict[str, float]:
        """The unexpired entries (member -> deadline) of a presence set."""
        entries: dict[str, float] = self._live(key) or {}
        now = time.monotonic()
        for member in [m for m, deadline in entries.items() if deadline <= now]:
            del entries[member]
        self._drop_if_empty(key)
        return entries

    async def _presence_mark(self, key: str, member: str, ttl: float) -> None:
        entries = self._presence(key)
        if not entries:
            entries = self._data[key] = {}
        entries[member] = time.monotonic() + ttl
        self._touch(key, max(entries.values()) - time.monotonic())

    async def _presence_others(self, key: str, member: str) -> bool:
        return any(other != member for other in self._presence(key))

    # -- sets -------------------------------------------------------------
    async def _members(self, key: str) -> Sequence[str]:
        return list(self._live(key) or ())

    async def _remove_member(self, key: str, *members: str) -> None:
        found = self._live(key)
        if found is not None:
            found.difference_update(members)
            self._drop_if_empty(key)

    # -- token logs -------------------------------------------------------
    async def _log_append_many(
        self, appends: Sequence[LogAppend], ttl: int, cap: int
    ) -> list[Appended]:
        return [self._log_append(a, ttl, cap) for a in appends]

    def _log_append(self, a: LogAppend, ttl: int, cap: int) -> Appended:
        if a.fence is not None:
            holder = self._live(a.fence[0])
            if holder is not None and holder != a.fence[1]:
                return Appended.TAKEN
        log = self._live(a.key)
        epoch = None if a.epoch is None else a.epoch[1]
        if a.epoch is not None:
            # The Redis script's epoch check; the epoch outlives trimming here.
            if self._live(a.epoch[0]) is None:
                return Appended.LOST
            lost = a.seq != 1 if log is None else (log[2] != epoch or a.seq > log[0][-1] + 1)
            if lost:
                return Appended.LOST
        if log is None:
            log = self._data[a.key] = ([], [], epoch)
        seqs, items, _ = log
        if seqs and a.seq <= seqs[-1]:  # a retried write; Redis ignores it the same way
            self._touch(a.key, ttl)
            return Appended.OK
        seqs.append(a.seq)
        items.append(a.data)
        if len(seqs) > cap:
            del seqs[: len(seqs) - cap]
            del items[: len(items) - cap]
        self._touch(a.key, ttl)
        return Appended.OK

    async def _log_read(self, key: str, after: int, limit: int | None) -> list[tuple[int, bytes]]:
        log = self._live(key)
        if log is None:
            return []
        seqs, items, _ = log
        start = bisect.bisect_right(seqs, after)
        end = len(seqs) if limit is None else start + max(limit, 0)
        return list(zip(seqs[start:end], items[start:end], strict=True))

    def _last_entry(self, key: str) -> tuple[int, bytes | None]:
        log = self._live(key)
        return (log[0][-1], log[1][-1]) if log and log[0] else (0, None)

    async def _log_last(self, key: str) -> tuple[int, bytes | None]:
        return self._last_entry(key)

    async def _log_lasts(self, keys: Sequence[str]) -> list[tuple[int, bytes | None]]:
        return [self._last_entry(key) for key in keys]
