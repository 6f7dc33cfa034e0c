"""The store contract: sessions, the stream registry, token logs and stop flags.

`Store` does key naming, serialisation and the domain rules once; a backend
implements a handful of Redis-shaped primitives (`_get`, `_set`, `_push`,
`_log_append`...). The in-memory backend and the Redis backend therefore
behave the same, and one contract suite (tests/test_store_contract.py) runs
against both.
"""

from __future__ import annotations

import asyncio
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from chatsock.store.models import (
    LogEntry,
    Message,
    SessionInfo,
    StreamRecord,
    StreamStatus,
    Terminal,
)

MAX_WORKERS = 256  # workers remembered for presence checks


class StoreUnavailable(Exception):
    """The backing store cannot be reached; the message says what to do."""


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def _score(timestamp: str) -> float:
    """Index score of an ISO 8601 timestamp."""
    return datetime.fromisoformat(timestamp).timestamp()


class Store(ABC):
    """Async store. Public methods are the contract; `_`-methods are the backend."""

    def __init__(
        self,
        *,
        prefix: str = "chatsock",
        session_ttl: int = 30 * 24 * 3600,
        log_ttl: int = 3600,
        max_log_entries: int = 20000,
        max_messages: int = 1000,
        max_sessions: int | None = None,
    ) -> None:
        self.prefix = prefix
        self.session_ttl = session_ttl or None
        self.log_ttl = log_ttl
        self.max_log_entries = max_log_entries
        self.max_messages = max_messages
        self.max_sessions = max_sessions

    # -- key naming -------------------------------------------------------
    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # -- lifecycle --------------------------------------------------------
    async def open(self) -> None:  # noqa: B027 - optional hook
        """Connect (a no-op in memory)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect and release resources."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    # -- sessions ---------------------------------------------------------
    async def ensure_session(self, session: SessionInfo) -> SessionInfo:
        """Create the session unless it exists; return the stored header."""
        key = self._k("session", session.session_id)
        created = await self._set(key, _dumps(session.to_dict()), self.session_ttl, nx=True)
        if created:
            await self._index_add(
                self._k("sessions"), session.session_id, _score(session.created_at)
            )
            await self._evict_sessions()
            return session
        found = await self.get_session(session.session_id)
        return found or session

    async def get_session(self, session_id: str) -> SessionInfo | None:
        raw = await self._get(self._k("session", session_id))
        return SessionInfo.from_dict(orjson.loads(raw)) if raw else None

    async def list_sessions(self, limit: int = 100) -> list[SessionInfo]:
        """Most recently updated first."""
        ids = await self._index_range(self._k("sessions"), limit)
        sessions = []
        for session_id in ids:
            info = await self.get_session(session_id)
            if info is None:
                await self._index_remove(self._k("sessions"), session_id)
            else:
                sessions.append(info)
        return sessions

    async def delete_session(self, session_id: str) -> bool:
        key = self._k("session", session_id)
        removed = await self._delete(
            key,
            self._k("session", session_id, "messages"),
            self._k("session", session_id, "cmids"),
        )
        await self._index_remove(self._k("sessions"), session_id)
        return removed > 0

    async def add_message(self, session_id: str, message: Message) -> None:
        """Append a message (capped at `max_messages`) and touch the session."""
        await self._push(
            self._k("session", session_id, "messages"),
            _dumps(message.to_dict()),
            self.session_ttl,
            self.max_messages,
        )
        info = await self.get_session(session_id)
        if info is not None:
            info.updated_at = message.created_at
            if info.title is None and message.role == "user":
                info.title = " ".join(message.content.split())[:80]
            await self._set(
                self._k("session", session_id), _dumps(info.to_dict()), self.session_ttl
            )
            await self._index_add(self._k("sessions"), session_id, _score(message.created_at))

    async def get_messages(self, session_id: str) -> list[Message]:
        raw = await self._range(self._k("session", session_id, "messages"))
        return [Message.from_dict(orjson.loads(item)) for item in raw]

    async def count_messages(self, session_id: str) -> int:
        return await self._length(self._k("session", session_id, "messages"))

    async def claim_client_message(
        self, session_id: str, client_message_id: str, ack: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Record `ack` for this client_message_id; return the earlier ack if one exists.

        The acks of a session live in one hash beside its messages, so they
        expire with the session and are removed with it."""
        key = self._k("session", session_id, "cmids")
        if await self._field_set(key, client_message_id, _dumps(ack), self.session_ttl, nx=True):
            return None
        raw = await self._field_get(key, client_message_id)
        return orjson.loads(raw) if raw else None

    async def release_client_message(self, session_id: str, client_message_id: str) -> None:
        await self._field_delete(self._k("session", session_id, "cmids"), client_message_id)

    async def find_client_message(
        self, session_id: str, client_message_id: str
    ) -> dict[str, Any] | None:
        raw = await self._field_get(self._k("session", session_id, "cmids"), client_message_id)
        return orjson.loads(raw) if raw else None

    # -- streams ----------------------------------------------------------
    async def create_stream(self, record: StreamRecord, max_per_session: int) -> bool:
        """Register a streaming stream unless its session already has `max_per_session`."""
        slots = self._k("session", record.session_id, "active")
        if not await self._claim_slot(slots, record.stream_id, max_per_session, self.log_ttl):
            return False
        await self._set(self._k("stream", record.stream_id), _dumps(record.to_dict()), self.log_ttl)
        await self._index_add(
            self._k("streams", "active"), record.stream_id, _score(record.started_at)
        )
        return True

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        raw = await self._get(self._k("stream", stream_id))
        if raw is None:
            return None
        record = StreamRecord.from_dict(orjson.loads(raw))
        terminal = await self.get_terminal(stream_id)
        if terminal is not None:
            record.status = terminal.status
        record.last_seq = await self._log_last(self._k("stream", stream_id, "log"))
        return record

    async def active_streams(self, session_id: str | None = None) -> list[StreamRecord]:
        """Streams still streaming, oldest first; all sessions when `session_id` is None."""
        if session_id is None:
            ids = list(reversed(await self._index_range(self._k("streams", "active"), 10000)))
        else:
            ids = sorted(await self._members(self._k("session", session_id, "active")))
        records = []
        for stream_id in ids:
            record = await self.get_stream(stream_id)
            if record is None and session_id is None:
                # Expired without finish_stream (its worker died): keep the index bounded.
                await self._index_remove(self._k("streams", "active"), stream_id)
            elif record is not None and record.status == "streaming":
                records.append(record)
        return sorted(records, key=lambda r: r.started_at)

    async def append_token(self, stream_id: str, seq: int, payload: dict[str, Any]) -> None:
        """Append one flushed `chat_token` payload to the stream's log."""
        await self._log_append(
            self._k("stream", stream_id, "log"),
            seq,
            _dumps(payload),
            self.log_ttl,
            self.max_log_entries,
        )

    async def read_tokens(self, stream_id: str, after: int) -> list[LogEntry]:
        """Log entries with seq > after, in order."""
        raw = await self._log_read(self._k("stream", stream_id, "log"), after)
        return [LogEntry(seq, orjson.loads(data)) for seq, data in raw]

    async def claim_end(self, stream_id: str, by: str) -> bool:
        """Claim the right to persist and record a stream's end. Only the first
        claimant wins, so its owner and a worker taking it for lost never both
        persist a reply. `by` names the claimant uniquely: a retried claim
        whose first reply was lost still wins."""
        key = self._k("stream", stream_id, "closer")
        if await self._set(key, by.encode(), self.log_ttl, nx=True):
            return True
        return await self._get(key) == by.encode()

    async def finish_stream(self, record: StreamRecord, terminal: Terminal) -> bool:
        """Mark the stream ended with `terminal`. Only the first caller wins (returns True)."""
        won = await self._set(
            self._k("stream", record.stream_id, "end"),
            _dumps(
                {"status": terminal.status, "event": terminal.event, "payload": terminal.payload}
            ),
            self.log_ttl,
            nx=True,
        )
        await self._remove_member(self._k("session", record.session_id, "active"), record.stream_id)
        await self._index_remove(self._k("streams", "active"), record.stream_id)
        return won

    async def get_terminal(self, stream_id: str) -> Terminal | None:
        raw = await self._get(self._k("stream", stream_id, "end"))
        if raw is None:
            return None
        data = orjson.loads(raw)
        status: StreamStatus = data["status"]
        return Terminal(status, data["event"], data["payload"])

    # -- stop flags -------------------------------------------------------
    async def request_stop(self, stream_id: str) -> None:
        await self._set(self._k("stream", stream_id, "stop"), b"1", self.log_ttl)

    async def stop_requested(self, stream_id: str) -> bool:
        return await self._get(self._k("stream", stream_id, "stop")) is not None

    # -- owner leases -----------------------------------------------------
    async def refresh_lease(self, stream_id: str, owner: str, lease_s: float) -> None:
        """The owner of a running stream says it is alive for another `lease_s`."""
        ttl = max(1, math.ceil(lease_s))
        await self._set(self._k("stream", stream_id, "lease"), owner.encode(), ttl)

    async def lease_alive(self, stream_id: str) -> bool:
        return await self._get(self._k("stream", stream_id, "lease")) is not None

    # -- presence: which workers have followers of a session ---------------
    async def mark_present(self, session_id: str, worker_id: str, ttl: int) -> None:
        """This worker has followers of the session, for the next `ttl` seconds."""
        await self._set(self._k("session", session_id, "present", worker_id), b"1", ttl)
        workers = self._k("workers")
        await self._index_add(workers, worker_id, time.time())
        await self._index_trim(workers, MAX_WORKERS)

    async def clear_present(self, session_id: str, worker_id: str) -> None:
        await self._delete(self._k("session", session_id, "present", worker_id))

    async def present_elsewhere(self, session_id: str, worker_id: str) -> bool:
        """Whether another worker has said it has followers of the session."""
        for other in await self._index_range(self._k("workers"), MAX_WORKERS):
            if other != worker_id and await self._get(
                self._k("session", session_id, "present", other)
            ):
                return True
        return False

    # -- following a stream generated elsewhere ---------------------------
    @property
    def shared(self) -> bool:
        """Whether other workers see this store (streams may run elsewhere)."""
        return False

    async def wait_tokens(self, stream_id: str, after: int, timeout_ms: int) -> list[LogEntry]:
        """Entries with seq > after, waiting up to `timeout_ms` for one (polling fallback)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            entries = await self.read_tokens(stream_id, after)
            if entries or loop.time() >= deadline:
                return entries
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))

    async def publish(self, channel: str, data: bytes) -> int:
        """Publish a signal to other workers (nobody else in memory)."""
        return 0

    # -- retention --------------------------------------------------------
    async def _evict_sessions(self) -> None:
        if self.max_sessions is None:
            return
        for session_id in await self._index_trim(self._k("sessions"), self.max_sessions):
            await self.delete_session(session_id)

    # -- backend primitives -----------------------------------------------
    @abstractmethod
    async def _get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def _set(self, key: str, value: bytes, ttl: int | None, *, nx: bool = False) -> bool:
        """Set (only if absent with nx); True when written."""

    @abstractmethod
    async def _delete(self, *keys: str) -> int: ...

    @abstractmethod
    async def _field_set(
        self, key: str, field: str, value: bytes, ttl: int | None, *, nx: bool = False
    ) -> bool:
        """Set a field of a hash (only if absent with nx); the hash expires after `ttl`."""

    @abstractmethod
    async def _field_get(self, key: str, field: str) -> bytes | None: ...

    @abstractmethod
    async def _field_delete(self, key: str, field: str) -> None: ...

    @abstractmethod
    async def _push(self, key: str, value: bytes, ttl: int | None, cap: int) -> None:
        """Append to a list, keeping the newest `cap` items."""

    @abstractmethod
    async def _range(self, key: str) -> list[bytes]: ...

    @abstractmethod
    async def _length(self, key: str) -> int: ...

    @abstractmethod
    async def _index_add(self, key: str, member: str, score: float) -> None:
        """Add/update a member of an index ordered by `score`."""

    @abstractmethod
    async def _index_remove(self, key: str, member: str) -> None: ...

    @abstractmethod
    async def _index_range(self, key: str, limit: int) -> list[str]:
        """Members, highest score first."""

    @abstractmethod
    async def _index_trim(self, key: str, keep: int) -> list[str]:
        """Remove and return the lowest-scored members beyond `keep`."""

    @abstractmethod
    async def _claim_slot(self, key: str, member: str, cap: int, ttl: int) -> bool:
        """Atomically add `member` to a set unless it already holds `cap` members."""

    @abstractmethod
    async def _members(self, key: str) -> Sequence[str]: ...

    @abstractmethod
    async def _remove_member(self, key: str, member: str) -> None: ...

    @abstractmethod
    async def _log_append(self, key: str, seq: int, data: bytes, ttl: int, cap: int) -> None: ...

    @abstractmethod
    async def _log_read(self, key: str, after: int) -> list[tuple[int, bytes]]: ...

    @abstractmethod
    async def _log_last(self, key: str) -> int:
        """The highest seq in the log, 0 when empty."""
