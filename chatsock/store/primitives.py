"""The backend primitives: what a store backend implements for `Store`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from chatsock.store.models import Appended


@dataclass(frozen=True, slots=True)
class RegisterStep:
    """Keys and values of one stream registration, written by `_register` at once."""

    cmids: str  # hash: client_message_id -> ack
    cmid_order: str  # ordered set: client_message_ids, oldest first
    record_key: str
    slots: str  # set: the session's running streams
    user_slots: str  # set: the running streams of the session's owner
    lease: str
    index: str  # ordered set: running streams of every session
    streams: str  # ordered set: every stream of the session
    stream_id: str
    cmid: str | None
    ack: bytes
    record: bytes
    owner: bytes
    lease_ttl: int
    started: float
    limit: int
    user_limit: int
    log_ttl: int
    keep_ttl: int | None  # of `streams` and the cmids (None: no expiry)
    cap: int  # of `streams` and the cmids


@dataclass(frozen=True, slots=True)
class GetOp:
    key: str


@dataclass(frozen=True, slots=True)
class SetOp:
    key: str
    value: bytes
    ttl: int | None
    nx: bool = False


@dataclass(frozen=True, slots=True)
class IndexAddOp:
    """Add or rescore `member`. With `ttl`, the index forgets members scored more
    than `ttl` below this one and lives `ttl` past this add: an index of things
    that expire (sessions) forgets them too, and goes once they all have."""

    key: str
    member: str
    score: float
    ttl: int | None = None


@dataclass(frozen=True, slots=True)
class PushOnceOp:
    """One message append (`_push_once`), guarded by its session's header: done
    only while `session` still holds `seen` (the header add_message read), so an
    append racing a delete writes nothing."""

    session: str  # the header's key
    seen: bytes  # the header as read
    header: bytes  # the header to write (touched, titled)
    key: str  # list: the messages
    ids: str  # ordered set: the ids of the messages in `key`
    item_id: str
    value: bytes
    ttl: int | None  # of all of them, the header and the indexes
    cap: int
    indexes: tuple[str, ...]  # ordered sets the session is (re)scored in
    member: str  # the session id, in `indexes`
    score: float


# The operations `_batch` sends together: `_get`, `_set`, `_index_add`.
Op = GetOp | SetOp | IndexAddOp


@dataclass(frozen=True, slots=True)
class LogAppend:
    """One token-log append of a batch (`_log_append_many`)."""

    key: str
    seq: int
    data: bytes
    fence: tuple[str, bytes] | None = None  # (key, value): refused while key holds another
    epoch: tuple[str, bytes] | None = None  # (record key, epoch): checked when given


@dataclass(frozen=True, slots=True)
class KeepAliveKeys:
    """The keys `_keep_alive` refreshes for one running stream."""

    record: str
    log: str
    slots: str
    lease: str
    stop: str
    streams: str  # the session's stream list
    cmids: str
    cmid_order: str
    user_slots: str  # the running streams of the session's owner


class Primitives(ABC):
    """Redis-shaped operations on keys and values, one backend each.

    What must be atomic is one primitive (`_register`, `_push_once`,
    `_finish`...): one Lua script on Redis, a method with no `await` inside in
    memory. The backends therefore behave the same, and one contract suite
    (tests/test_store_contract.py) runs against both.
    """

    @abstractmethod
    async def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def _mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of string keys, in one round trip (None where absent)."""

    @abstractmethod
    async def _set(self, key: str, value: bytes, ttl: int | None, *, nx: bool = False) -> bool:
        """Set (only if absent with nx); True when written."""

    @abstractmethod
    async def _delete(self, *keys: str) -> int: ...

    @abstractmethod
    async def _field_get(self, key: str, field: str) -> bytes | None: ...

    @abstractmethod
    async def _release_field(self, key: str, order: str, field: str, stream_id: str | None) -> bool:
        """Atomically delete a field of a hash (and from its `order` index), only
        if its JSON value's "stream_id" is `stream_id` when that is given."""

    @abstractmethod
    async def _push_once(self, op: PushOnceOp) -> int:
        """Atomically, unless the header `op.session` is gone (-1) or no longer
        `op.seen` (-2, changed meanwhile: read it again), each writing nothing:
        write `op.header`, rescore the session in `op.indexes`, and append
        `op.value` to the list unless `op.item_id` is in the ordered set `op.ids`
        (keeping the newest `cap` of both): 1 when appended, else 0."""

    @abstractmethod
    async def _swap_item(self, key: str, guard: str, old: bytes, new: bytes) -> int:
        """Atomically replace the last item of list `key` equal to `old` by `new`:
        1 when replaced, 0 when no item equals `old` (it changed meanwhile), -1
        (nothing written) when the key `guard` does not exist."""

    @abstractmethod
    async def _range(self, key: str) -> list[bytes]: ...

    @abstractmethod
    async def _length(self, key: str) -> int: ...

    @abstractmethod
    async def _index_add(self, key: str, member: str, score: float, ttl: int | None = None) -> None:
        """Add/update a member of an index ordered by `score` (`ttl`: see IndexAddOp)."""

    @abstractmethod
    async def _index_remove(self, key: str, *members: str) -> None: ...

    @abstractmethod
    async def _index_range(self, key: str, limit: int, *, oldest: bool = False) -> list[str]:
        """Members, highest score first (lowest first with `oldest`)."""

    @abstractmethod
    async def _index_trim(self, key: str, keep: int) -> list[str]:
        """Remove and return the lowest-scored members beyond `keep`."""

    @abstractmethod
    async def _register(self, step: RegisterStep) -> tuple[str, bytes | None]:
        """Atomically: ("earlier", ack) when `step.cmid` is known; ("exists", None)
        when the record exists; ("full", None) when the session's slots are full;
        ("user_full", None) when its owner's are; else write everything and
        return ("registered", None)."""

    @abstractmethod
    async def _finish(
        self, key: str, value: bytes, ttl: int, slots: Sequence[str], index: str, member: str
    ) -> bool:
        """Atomically set `key` unless it exists and remove `member` from the
        sets `slots` and the index `index`. True when `key` was set."""

    @abstractmethod
    async def _keep_alive(
        self,
        streams: Sequence[KeepAliveKeys],
        owner: bytes,
        lease_ttl: int,
        log_ttl: int,
        keep_ttl: int | None,
    ) -> list[bool]:
        """For each stream whose record exists: set its lease, re-expire record,
        log and slots to `log_ttl`, and its session's stream list and acks to
        `keep_ttl` (unless None).
        Return, for each, whether its stop key exists. One round trip."""

    @abstractmethod
    async def _presence_mark(self, key: str, member: str, ttl: float) -> None:
        """Record `member` in the ordered set `key` until `ttl` from now."""

    @abstractmethod
    async def _presence_others(self, key: str, member: str) -> bool:
        """Whether `key` holds an unexpired member other than `member` (one command)."""

    @abstractmethod
    async def _members(self, key: str) -> Sequence[str]: ...

    @abstractmethod
    async def _remove_member(self, key: str, *members: str) -> None: ...

    async def _batch(self, ops: Sequence[Op]) -> list[object]:
        """Run `ops` in order, in one round trip where the backend can; one result
        each, as its primitive returns it. Not atomic as a whole: what must be
        atomic is one primitive. For writes that are each safe to see alone."""
        results: list[object] = []
        for op in ops:
            match op:
                case GetOp():
                    results.append(await self._get(op.key))
                case SetOp():
                    results.append(await self._set(op.key, op.value, op.ttl, nx=op.nx))
                case IndexAddOp():
                    await self._index_add(op.key, op.member, op.score, op.ttl)
                    results.append(None)
        return results

    @abstractmethod
    async def _log_append_many(
        self, appends: Sequence[LogAppend], ttl: int, cap: int
    ) -> list[Appended]:
        """Each append at its `seq` (a seq at or below the log's last is ignored:
        OK), in order, in one round trip where the backend can; one answer each.
        With a `fence` = (key, value): TAKEN while that key holds another value.
        With an `epoch` = (record key, epoch): LOST unless the record exists and
        the log is this epoch's (its seq 1 carries the epoch) and holds every seq
        before `seq`, so that a log that lost entries never gets a hole. Each
        append is atomic; the batch need not be."""

    @abstractmethod
    async def _log_read(self, key: str, after: int, limit: int | None) -> list[tuple[int, bytes]]:
        """Entries with seq > after, at most `limit` (all when None)."""

    @abstractmethod
    async def _log_last(self, key: str) -> tuple[int, bytes | None]:
        """The highest seq (log position) in the log and that entry, (0, None) when empty."""

    @abstractmethod
    async def _log_lasts(self, keys: Sequence[str]) -> list[tuple[int, bytes | None]]:
        """`_log_last` of several logs, in one round trip."""
