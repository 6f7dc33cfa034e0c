"""The store contract: sessions, the stream registry, token logs and stop flags."""

from __future__ import annotations

import asyncio
import logging
import math
from abc import abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from chatsock import protocol  # a module reference: protocol imports the store's models
from chatsock.logsafe import shown
from chatsock.store.keys import SESSION_KEYS, STREAM_KEYS
from chatsock.store.limits import RateLimits
from chatsock.store.models import (
    Appended,
    LogEntry,
    Message,
    Registration,
    SessionInfo,
    StreamRecord,
    StreamStatus,
    Terminal,
    TokenAppend,
)
from chatsock.store.primitives import (
    GetOp,
    IndexAddOp,
    KeepAliveKeys,
    LogAppend,
    PushOnceOp,
    RegisterStep,
    SetOp,
)

MAX_SEQ = 2**64 - 1  # the largest seq a token log can address (Redis stream IDs)
# Earlier versions a message keeps (the newest); a regenerated reply past it drops
# the oldest. Bounds a session's size however often one reply is regenerated.
MAX_VERSIONS = 20
# Compare-and-set attempts of one message append (on its session's header) or
# new version (on the message) against concurrent writes.
_SWAP_ATTEMPTS = 50

log = logging.getLogger(__name__)


class StoreUnavailable(Exception):
    """The backing store cannot be reached; the message says what to do."""


class StoreRequestError(ValueError):
    """The store refused a request because of its arguments (not an outage)."""


def _dumps(value: Any) -> bytes:
    # A copy: orjson's result keeps the buffer it was built in (about 4 KB for a
    # 100-byte token entry), which the memory store would hold for the log's TTL.
    return bytes(memoryview(orjson.dumps(value)))


def _score(timestamp: str) -> float:
    """Index score of an ISO 8601 timestamp."""
    return datetime.fromisoformat(timestamp).timestamp()


def _same_session(first: SessionInfo, now: SessionInfo) -> bool:
    """Whether `now` is the header of the session `first` was read from, not of
    one made again under its id after a delete."""
    return (now.created_at, now.owner) == (first.created_at, first.owner)


def _dropped(session_id: str, message: Message) -> bool:
    """A message for a session gone (deleted, evicted) is dropped: False."""
    log.info(
        "session %s is gone: message %s (%s, stream %s) dropped",
        shown(session_id), shown(message.message_id), message.role, shown(message.stream_id),
    )  # fmt: skip
    return False


def check_seq(after: int) -> None:
    """Raise StoreRequestError unless `after` is a seq a token log can address."""
    if not 0 <= after <= MAX_SEQ:
        raise StoreRequestError(f"seq {after} is outside 0..{MAX_SEQ}")


def _fill_seqs(record: StreamRecord, position: int, last: bytes | None) -> None:
    """A record's seqs from its log's position and last entry. Each kind's seqs run
    from 1 with no gap and the log holds both, so the position is their sum: the
    last entry's seq is its kind's, the other kind's is the rest."""
    record.last_seq = position
    entry: dict[str, Any] = {} if last is None else orjson.loads(last)
    seq = int(entry.get("seq", 0))
    other = position - seq
    record.text_seq, record.reasoning_seq = (
        (other, seq) if protocol.is_reasoning(entry) else (seq, other)
    )


class Store(RateLimits):
    """Async store. Public methods are the contract; `_`-methods are the backend.

    The contract does serialisation and the domain rules once, on the keys
    `Keyspace` names; each backend implements the `Primitives`.
    """

    # -- lifecycle --------------------------------------------------------
    async def open(self) -> None:
        """Connect (a no-op in memory)."""

    async def close(self) -> None:
        """Disconnect and release resources."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StoreUnavailable when the store cannot be reached."""

    # -- sessions ---------------------------------------------------------
    async def ensure_session(self, session: SessionInfo) -> SessionInfo:
        """Create the session unless it exists; return the stored header (`session`
        itself when this call created it)."""
        key, session_id = self._sk(session.session_id), session.session_id
        value = _dumps(session.to_dict())
        while True:
            created, raw = await self._batch(
                [SetOp(key, value, self.session_ttl, nx=True), GetOp(key)]
            )
            if created:
                score = _score(session.created_at)
                await self._batch(
                    [
                        IndexAddOp(self._k("sessions"), session_id, score, self.session_ttl),
                        IndexAddOp(
                            self._uk(session.owner, "sessions"), session_id, score, self.session_ttl
                        ),
                    ]
                )
                await self._evict_sessions(session.owner)
                return session
            if isinstance(raw, bytes):
                return SessionInfo.from_dict(orjson.loads(raw))
            # Deleted between the two commands: claim it again, never hand out an
            # owner nobody stored.

    async def get_session(self, session_id: str) -> SessionInfo | None:
        raw = await self._get(self._sk(session_id))
        return SessionInfo.from_dict(orjson.loads(raw)) if raw else None

    async def list_sessions(self, limit: int = 100, owner: str | None = None) -> list[SessionInfo]:
        """Most recently updated first: those of `owner`, or everyone's when None."""
        index = self._k("sessions") if owner is None else self._uk(owner, "sessions")
        ids = await self._index_range(index, limit)
        sessions = []
        for session_id in ids:
            info = await self.get_session(session_id)
            if info is None:
                await self._index_remove(index, session_id)
            else:
                sessions.append(info)
        return sessions

    async def delete_session(self, session_id: str) -> bool:
        """Delete the session with every key of its streams (records, logs, ends,
        flags, leases). False when nothing of it was stored."""
        info = await self.get_session(session_id)
        streams = set(await self._index_range(self._sk(session_id, "streams"), self.max_messages))
        streams.update(await self._members(self._sk(session_id, "active")))
        users = {info.owner} if info is not None else set()
        for raw in await self._mget([self._tk(s) for s in streams]) if streams else []:
            if raw is not None:
                users.add(orjson.loads(raw).get("user"))
        removed = await self._delete(
            *(self._sk(session_id, *parts) for parts in SESSION_KEYS),
            *(self._tk(s, *parts) for s in streams for parts in STREAM_KEYS),
        )
        if streams:
            await self._index_remove(self._k("streams", "active"), *streams)
        await self._index_remove(self._k("sessions"), session_id)
        if info is not None:
            await self._index_remove(self._uk(info.owner, "sessions"), session_id)
        for user in users if streams else ():
            await self._remove_member(self._uk(user, "active"), *streams)
        return removed > 0

    async def add_message(self, session_id: str, message: Message) -> bool:
        """Append a message (capped at `max_messages`) and touch the session.

        Idempotent by `message.message_id`: a call retried after a lost reply
        stores nothing more (returns False). An assistant reply whose id is stored
        already, streamed by another stream (a regenerate), is a new version of
        that message: see `_add_version`.

        False, writing nothing, once the session is gone: the append is guarded
        by the header it read (`_push_once`), so a delete landing meanwhile is
        never undone, and a session deleted and made again (even by another
        user) never gets the old one's reply or header. Callers drop the reply."""
        first: SessionInfo | None = None
        for _ in range(_SWAP_ATTEMPTS):
            seen = await self._get(self._sk(session_id))
            info = SessionInfo.from_dict(orjson.loads(seen)) if seen else None
            if seen is None or info is None or not _same_session(first or info, info):
                return _dropped(session_id, message)
            first = first or info
            stored = await self._push_once(self._message_push(session_id, message, seen, info))
            if stored != -2:  # else the header changed (another message): read it again
                break
        else:
            raise StoreUnavailable(
                f"session {session_id} kept changing during {_SWAP_ATTEMPTS} attempts to "
                f"store message {message.message_id}; retry"
            )
        if stored < 0:
            return _dropped(session_id, message)
        if not stored and message.role == "assistant" and message.stream_id is not None:
            return await self._add_version(session_id, message)
        return bool(stored)

    def _message_push(
        self, session_id: str, message: Message, seen: bytes, info: SessionInfo
    ) -> PushOnceOp:
        """The guarded append of `message` to a session whose header read `seen`."""
        info.updated_at = message.created_at
        if info.title is None and message.role == "user":
            info.title = " ".join(message.content.split())[:80]
        return PushOnceOp(
            session=self._sk(session_id),
            seen=seen,
            header=_dumps(info.to_dict()),
            key=self._sk(session_id, "messages"),
            ids=self._sk(session_id, "message_ids"),
            item_id=message.message_id,
            value=_dumps(message.to_dict()),
            ttl=self.session_ttl,
            cap=self.max_messages,
            # Sessions expire session_ttl after their last write; so do their
            # entries in the indexes, and the indexes once all have.
            indexes=(self._k("sessions"), self._uk(info.owner, "sessions")),
            member=session_id,
            score=_score(message.created_at),
        )

    async def _add_version(self, session_id: str, message: Message) -> bool:
        """Store `message` in the place of the stored message with its id, which
        moves, as it was, to the end of its `versions` (the newest MAX_VERSIONS
        kept). False, writing nothing, when that message holds this stream's reply
        already (now or as a version: a retry), is not an assistant reply, or is
        gone with its session.

        A compare-and-set on the stored item (`_swap_item`), retried when another
        version landed meanwhile: two regenerates never lose one another, and one
        racing a delete writes nothing."""
        key = self._sk(session_id, "messages")
        for _ in range(_SWAP_ATTEMPTS):
            found = next(
                (
                    item
                    for item in reversed(await self._range(key))
                    if orjson.loads(item).get("message_id") == message.message_id
                ),
                None,
            )
            if found is None:
                return False  # deleted (or trimmed) meanwhile
            stored = Message.from_dict(orjson.loads(found))
            earlier = stored.versions or []
            streams = {stored.stream_id, *(v.get("stream_id") for v in earlier)}
            if stored.role != "assistant" or message.stream_id in streams:
                return False
            versions = [*earlier, stored.as_version()][-MAX_VERSIONS:]
            new = _dumps(replace(message, versions=versions).to_dict())
            swapped = await self._swap_item(key, self._sk(session_id), found, new)
            if swapped != 0:
                return swapped > 0
        raise StoreUnavailable(
            f"message {message.message_id} of session {session_id} kept changing during "
            f"{_SWAP_ATTEMPTS} attempts to store a new version; retry"
        )

    async def get_messages(self, session_id: str) -> list[Message]:
        raw = await self._range(self._sk(session_id, "messages"))
        return [Message.from_dict(orjson.loads(item)) for item in raw]

    async def count_messages(self, session_id: str) -> int:
        return await self._length(self._sk(session_id, "messages"))

    async def find_client_message(
        self, session_id: str, client_message_id: str
    ) -> dict[str, Any] | None:
        """The ack of the stream this client_message_id started, if it is remembered.
        A session remembers its newest `max_messages` ids."""
        raw = await self._field_get(self._sk(session_id, "cmids"), client_message_id)
        return orjson.loads(raw) if raw else None

    async def release_client_message(
        self, session_id: str, client_message_id: str, stream_id: str | None = None
    ) -> bool:
        """Forget a client_message_id, so that it can start a stream again. With
        `stream_id`, only if it maps to that stream. True when it was forgotten."""
        return await self._release_field(
            self._sk(session_id, "cmids"),
            self._sk(session_id, "cmid_order"),
            client_message_id,
            stream_id,
        )

    # -- streams ----------------------------------------------------------
    async def register_stream(
        self,
        record: StreamRecord,
        *,
        limit: int,
        lease_s: float,
        ack: dict[str, Any],
        user_limit: int = 2**31,
    ) -> Registration:
        """Register a streaming stream in one atomic step, or refuse it.

        Refused when its client_message_id already started another stream
        (`earlier` is that stream's ack), when the session has `limit` running
        streams, or when its user (`record.user`) has `user_limit` (`full` says
        which). Otherwise the slots, record, owner lease, index entry,
        the session's stream list and the client_message_id's ack are written
        together. A retried call (same record) is accepted and writes nothing."""
        session_id = record.session_id
        outcome, earlier = await self._register(
            RegisterStep(
                cmids=self._sk(session_id, "cmids"),
                cmid_order=self._sk(session_id, "cmid_order"),
                record_key=self._tk(record.stream_id),
                slots=self._sk(session_id, "active"),
                user_slots=self._uk(record.user, "active"),
                lease=self._tk(record.stream_id, "lease"),
                index=self._k("streams", "active"),
                streams=self._sk(session_id, "streams"),
                stream_id=record.stream_id,
                cmid=record.client_message_id,
                ack=_dumps(ack),
                record=_dumps(record.to_dict()),
                owner=record.owner.encode(),
                lease_ttl=max(1, math.ceil(lease_s)),
                started=_score(record.started_at),
                limit=limit,
                user_limit=user_limit,
                log_ttl=self.log_ttl,
                keep_ttl=self._keep_ttl,
                cap=self.max_messages,
            )
        )
        if outcome in ("full", "user_full"):
            return Registration(False, full="user" if outcome == "user_full" else "session")
        if earlier is not None:
            found: dict[str, Any] = orjson.loads(earlier)
            if found.get("stream_id") != record.stream_id:
                return Registration(False, found)
        return Registration(True)

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        raw = await self._get(self._tk(stream_id))
        if raw is None:
            return None
        record = StreamRecord.from_dict(orjson.loads(raw))
        terminal = await self.get_terminal(stream_id)
        if terminal is not None:
            record.status = terminal.status
        _fill_seqs(record, *await self._log_last(self._tk(stream_id, "log")))
        return record

    async def active_streams(
        self, session_id: str | None = None, *, user: str | None = None
    ) -> list[StreamRecord]:
        """Streams still streaming, oldest first: of `session_id`, else of `user`,
        else of everyone.

        Entries whose record is gone (expired, deleted) or that already ended
        are removed from the slots or the index as they are found."""
        slots: str | None = None
        if session_id is not None:
            slots = self._sk(session_id, "active")
        elif user is not None:
            slots = self._uk(user, "active")
        if slots is None:
            index = self._k("streams", "active")
            ids = await self._index_range(index, 10000)
        else:
            ids = sorted(await self._members(slots))
        records, stale = await self._running(ids)
        if stale:
            if slots is None:
                await self._index_remove(index, *stale)
            else:
                await self._remove_member(slots, *stale)
        return sorted(await self._with_last_seq(records), key=lambda r: (r.started_at, r.stream_id))

    async def lapsed_streams(self, limit: int = 200) -> list[StreamRecord]:
        """Indexed streams still streaming whose owner lease has lapsed (their
        worker died), among the oldest `limit` index entries; for a periodic
        reaper. Index entries of streams gone or ended are removed on the way."""
        index = self._k("streams", "active")
        ids = await self._index_range(index, limit, oldest=True)
        records, stale = await self._running(ids, lapsed_only=True)
        if stale:
            await self._index_remove(index, *stale)
        return await self._with_last_seq(records)

    async def _running(
        self, ids: Sequence[str], *, lapsed_only: bool = False
    ) -> tuple[list[StreamRecord], list[str]]:
        """The records of `ids` still streaming (only those whose lease lapsed with
        `lapsed_only`), and the ids whose record is gone or ended; one read."""
        if not ids:
            return [], []
        parts = [(), ("end",), ("lease",)] if lapsed_only else [(), ("end",)]
        raw = await self._mget([self._tk(s, *p) for p in parts for s in ids])
        n = len(ids)
        records, stale = [], []
        for i, stream_id in enumerate(ids):
            record, end = raw[i], raw[n + i]
            if record is None or end is not None:
                stale.append(stream_id)
            elif not (lapsed_only and raw[2 * n + i] is not None):
                records.append(StreamRecord.from_dict(orjson.loads(record)))
        return records, stale

    async def _with_last_seq(self, records: list[StreamRecord]) -> list[StreamRecord]:
        lasts = await self._log_lasts([self._tk(r.stream_id, "log") for r in records])
        for record, (position, entry) in zip(records, lasts, strict=True):
            _fill_seqs(record, position, entry)
        return records

    async def keep_streams_alive(
        self, records: Sequence[StreamRecord], owner: str, lease_s: float
    ) -> set[str]:
        """For every running stream of `owner`, in one round trip: renew its lease
        for `lease_s`, keep its record, log and slot for another `log_ttl` (a
        stream may run longer) and its session's stream list and acks as long,
        and return the ids whose stop flag is set.

        A stream whose record is gone (its session was deleted) is not revived."""
        if not records:
            return set()
        keys = [
            KeepAliveKeys(
                record=self._tk(r.stream_id),
                log=self._tk(r.stream_id, "log"),
                slots=self._sk(r.session_id, "active"),
                lease=self._tk(r.stream_id, "lease"),
                stop=self._tk(r.stream_id, "stop"),
                streams=self._sk(r.session_id, "streams"),
                cmids=self._sk(r.session_id, "cmids"),
                cmid_order=self._sk(r.session_id, "cmid_order"),
                user_slots=self._uk(r.user, "active"),
            )
            for r in records
        ]
        stopped = await self._keep_alive(
            keys, owner.encode(), max(1, math.ceil(lease_s)), self.log_ttl, self._keep_ttl
        )
        return {r.stream_id for r, stop in zip(records, stopped, strict=True) if stop}

    async def append_token(
        self,
        stream_id: str,
        seq: int,
        payload: dict[str, Any],
        *,
        writer: str = "",
        epoch: str = "",
    ) -> Appended:
        """Append one flushed `chat_token` payload to the stream's log.

        With `writer` (the owner's claimant name), the append is refused (TAKEN,
        falsy) once anyone else has claimed the stream's end: after a worker took
        the stream for lost and read its partial, nothing more lands in the log, so
        no follower ever sees text beyond the recorded partial. With `epoch` (the
        record's), LOST when the log is not that epoch's or lacks seq - 1: the
        store lost entries (a failover to a replica that lagged), and the stream
        must end rather than leave a log with a hole."""
        (added,) = await self.append_many([TokenAppend(stream_id, seq, payload, writer, epoch)])
        return added

    def forget_expired(self) -> int:
        """Drop expired keys a backend keeps until they are touched (the memory store;
        Redis expires keys by itself); return how many."""
        return 0

    async def append_many(self, appends: Sequence[TokenAppend]) -> list[Appended]:
        """`append_token` for a batch of streams, in one round trip where the backend
        can (the flush clock's tick): one answer per append, in order."""
        if not appends:
            return []
        return await self._log_append_many(
            [
                LogAppend(
                    self._tk(a.stream_id, "log"),
                    a.seq,
                    _dumps(a.payload),
                    (self._tk(a.stream_id, "closer"), a.writer.encode()) if a.writer else None,
                    (self._tk(a.stream_id), a.epoch.encode()) if a.epoch else None,
                )
                for a in appends
            ],
            self.log_ttl,
            self.max_log_entries,
        )

    async def read_tokens(
        self, stream_id: str, after: int, limit: int | None = None
    ) -> list[LogEntry]:
        """Log entries with seq > after, in order; at most `limit` of them.
        StoreRequestError when `after` is outside 0..MAX_SEQ."""
        check_seq(after)
        raw = await self._log_read(self._tk(stream_id, "log"), after, limit)
        return [LogEntry(seq, orjson.loads(data)) for seq, data in raw]

    async def iter_tokens(
        self, stream_id: str, after: int, page: int = 1000
    ) -> AsyncIterator[LogEntry]:
        """Every log entry with seq > after, read `page` entries at a time."""
        while True:
            entries = await self.read_tokens(stream_id, after, page)
            for entry in entries:
                yield entry
            if len(entries) < page:
                return
            after = entries[-1].seq

    async def claim_end(self, stream_id: str, by: str) -> bool:
        """Claim the right to persist and record a stream's end. Only the first
        claimant wins, so its owner and a worker taking it for lost never both
        persist a reply. `by` names the claimant uniquely: a retried claim
        whose first reply was lost still wins."""
        key = self._tk(stream_id, "closer")
        if await self._set(key, by.encode(), self.log_ttl, nx=True):
            return True
        return await self._get(key) == by.encode()

    async def finish_stream(self, record: StreamRecord, terminal: Terminal) -> bool:
        """Mark the stream ended with `terminal` and free its slot and index entry,
        in one step. Only the first caller's terminal is kept (it gets True)."""
        end = {
            "status": terminal.status,
            "event": terminal.event,
            "payload": terminal.payload,
            "user": record.user,  # who may be told how it ended once its record is gone
        }
        return await self._finish(
            self._tk(record.stream_id, "end"),
            _dumps(end),
            self.log_ttl,
            (self._sk(record.session_id, "active"), self._uk(record.user, "active")),
            self._k("streams", "active"),
            record.stream_id,
        )

    async def get_terminal(self, stream_id: str) -> Terminal | None:
        found = await self.recorded_end(stream_id)
        return None if found is None else found[0]

    async def recorded_end(self, stream_id: str) -> tuple[Terminal, str | None] | None:
        """The stream's recorded end and the user who started the stream (None for
        ends recorded before users were), even when its record is gone."""
        raw = await self._get(self._tk(stream_id, "end"))
        if raw is None:
            return None
        data = orjson.loads(raw)
        status: StreamStatus = data["status"]
        return Terminal(status, data["event"], data["payload"]), data.get("user")

    # -- stop flags -------------------------------------------------------
    async def request_stop(self, stream_id: str) -> None:
        await self._set(self._tk(stream_id, "stop"), b"1", self.log_ttl)

    async def stop_requested(self, stream_id: str) -> bool:
        return await self._get(self._tk(stream_id, "stop")) is not None

    # -- owner leases -----------------------------------------------------
    async def refresh_lease(self, stream_id: str, owner: str, lease_s: float) -> None:
        """The owner of a running stream says it is alive for another `lease_s`."""
        ttl = max(1, math.ceil(lease_s))
        await self._set(self._tk(stream_id, "lease"), owner.encode(), ttl)

    async def lease_alive(self, stream_id: str) -> bool:
        return await self._get(self._tk(stream_id, "lease")) is not None

    # -- presence: which workers have followers of a session ---------------
    async def mark_present(self, session_id: str, worker_id: str, ttl: int) -> None:
        """This worker has followers of the session, for the next `ttl` seconds."""
        await self._presence_mark(self._sk(session_id, "present"), worker_id, ttl)

    async def clear_present(self, session_id: str, worker_id: str) -> None:
        await self._index_remove(self._sk(session_id, "present"), worker_id)

    async def present_elsewhere(self, session_id: str, worker_id: str) -> bool:
        """Whether another worker has said it has followers of the session (and
        its word has not expired)."""
        return await self._presence_others(self._sk(session_id, "present"), worker_id)

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
    async def _evict_sessions(self, owner: str | None) -> None:
        """Keep `owner`'s newest `max_sessions`: one user never evicts another's."""
        if self.max_sessions is None:
            return
        index = self._uk(owner, "sessions")
        for session_id in await self._index_trim(index, self.max_sessions):
            await self.delete_session(session_id)
