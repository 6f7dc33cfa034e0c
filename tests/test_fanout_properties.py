"""Property-based, stateful: catch-up and live delivery never leave a gap or a duplicate.

A hypothesis state machine drives the real `Fanout` on the memory store and a
real python-socketio server (its sockets are fakes at the transport edge,
tests/fakes/sio_server.py). Rules flush tokens (log first, then emit, as the
runner does), start and end streams, and let sockets join, resume, drop and
reconnect. A resume runs as a task that later rules overtake: the event loop
is driven by hand, and the store's reads yield to it a chosen number of times,
as network round trips would.

What every socket must have seen, whatever the interleaving:
- no token seq twice, and at most one terminal event, per stream;
- once all work settles, for every stream of the session: every seq after
  the point it joined or resumed from, up to the last one flushed, with no
  gap; and exactly one terminal event if it followed the stream at its end
  or resumed it, else none;
- tokens in seq order, unless it asked for older ones while live.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from chatsock import protocol
from chatsock.fanout import Cursor, Fanout, Feed
from chatsock.store.models import StreamRecord, Terminal
from tests.fakes.counting_store import CountingStore
from tests.fakes.sio_server import RecordingServer

SESSION = "ses_prop"
MAX_STREAMS = 3
CLIENTS = 3
TERMINALS = (protocol.COMPLETE, protocol.STREAM_ERROR)


@dataclass
class Stream:
    record: StreamRecord
    feed: Feed
    count: int = 0  # the last seq flushed (logged, then emitted)
    texts: list[str] = field(default_factory=list)
    ended: bool = False


@dataclass
class Client:
    """A browser tab: it keeps what it received across reconnects."""

    sid: str
    got: dict[str, set[int]] = field(default_factory=dict)

    def prefix(self, stream_id: str) -> int:
        """The last seq of the unbroken text it has from seq 1."""
        have = self.got.get(stream_id, set())
        top = 0
        while top + 1 in have:
            top += 1
        return top


class FanoutMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = CountingStore()
        self.sio = RecordingServer()
        self.fanout = Fanout(self.sio, self.store)
        self.streams: list[Stream] = []
        self.clients = [Client(self._run(self.sio.add_socket())) for _ in range(CLIENTS)]
        self.pending: dict[asyncio.Task[str], str] = {}  # resumes running, and their sid
        self.failures: list[BaseException] = []
        # (sid, stream_id) -> every seq after this must reach the socket.
        self.bound: dict[tuple[str, str], int] = {}
        self.backfilled: set[tuple[str, str]] = set()  # may arrive out of seq order
        self.expect_end: set[tuple[str, str]] = set()
        self.dropped: set[str] = set()
        self._start()

    # -- driving the loop ---------------------------------------------------
    def _run(self, work: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(work)

    def _steps(self, n: int) -> None:
        for _ in range(n):
            self._run(asyncio.sleep(0))

    def _in_room(self, sid: str) -> bool:
        return protocol.session_room(SESSION) in self.sio.rooms(sid)

    def _live(self) -> list[Stream]:
        return [s for s in self.streams if not s.ended]

    def _tighten(self, sid: str, stream_id: str, seq: int) -> None:
        key = (sid, stream_id)
        self.bound[key] = min(self.bound.get(key, seq), seq)

    def _start(self) -> None:
        stream_id = f"st_{len(self.streams)}"
        record = StreamRecord(
            stream_id=stream_id,
            session_id=SESSION,
            message_id=f"msg_{stream_id}",
            owner="w1",
            provider="fake",
            model="fake-1",
            started_at=protocol.now_iso(),
        )
        registered = self._run(
            self.store.register_stream(record, limit=MAX_STREAMS, lease_s=3600, ack={})
        )
        assert registered.accepted
        feed = self.fanout.open(stream_id, SESSION)
        self.streams.append(Stream(record, feed))
        for sid, _ in self.sio.manager.get_participants("/", protocol.session_room(SESSION)):
            self._tighten(sid, stream_id, 0)  # it gets the new stream from its start

    # -- rules ----------------------------------------------------------------
    @initialize(yields=st.integers(0, 3))
    def latency(self, yields: int) -> None:
        """How many times each log read yields to the event loop, in this run."""
        self.store.read_yields = yields

    @precondition(lambda self: len(self.streams) < MAX_STREAMS)
    @rule()
    def start(self) -> None:
        self._start()

    @precondition(lambda self: self._live())
    @rule(pick=st.integers(0, MAX_STREAMS - 1), yields=st.integers(0, 8))
    def flush(self, pick: int, yields: int) -> None:
        stream = self._live()[pick % len(self._live())]
        seq = stream.count + 1
        text = f"{stream.record.stream_id}.{seq} "
        payload = protocol.token(stream.record.stream_id, SESSION, seq, text, seq)

        async def flush() -> None:
            await self.store.append_token(stream.record.stream_id, seq, payload)
            for _ in range(yields):  # the append's reply is on its way back
                await asyncio.sleep(0)
            stream.count = seq
            stream.texts.append(text)
            await self.fanout.emit_entry(stream.feed, seq, payload)

        self._run(flush())

    @precondition(lambda self: self._live())
    @rule(pick=st.integers(0, MAX_STREAMS - 1))
    def end(self, pick: int) -> None:
        stream = self._live()[pick % len(self._live())]
        stream.ended = True
        record = stream.record
        payload = {
            "stream_id": record.stream_id,
            "session_id": SESSION,
            "full_response": "".join(stream.texts),
        }
        terminal = Terminal("complete", protocol.COMPLETE, payload)

        async def end() -> None:
            await self.store.finish_stream(record, terminal)
            room = protocol.session_room(SESSION)
            for sid, _ in self.sio.manager.get_participants("/", room):
                self.expect_end.add((sid, record.stream_id))
            await self.fanout.end(stream.feed, terminal)

        self._run(end())

    @rule(who=st.integers(0, CLIENTS - 1))
    def join(self, who: int) -> None:
        sid = self.clients[who].sid
        assert sid is not None
        # A pending resume of this socket may enter the room first, while join runs.
        member = self._in_room(sid) or sid in self.pending.values()
        view = self._run(self.fanout.join(sid, SESSION))
        live = self._live()
        for stream in live:  # no flush ran meanwhile: live from these seqs at the latest
            self._tighten(sid, stream.record.stream_id, stream.count)
        if not live:
            assert view is None
        elif not member:
            first = live[0].record
            expected = {
                "stream_id": first.stream_id,
                "message_id": first.message_id,
                "seq": live[0].count,
                "epoch": first.epoch,
            }
            assert view == expected

    @rule(
        who=st.integers(0, CLIENTS - 1),
        pick=st.integers(0, MAX_STREAMS - 1),
        after=st.integers(0, 1000),
        steps=st.integers(0, 4),
    )
    def resume(self, who: int, pick: int, after: int, steps: int) -> None:
        client = self.clients[who]
        sid = client.sid
        assert sid is not None
        stream = self.streams[pick % len(self.streams)]
        stream_id = stream.record.stream_id
        after %= client.prefix(stream_id) + 1  # it resumes from what it has
        if self._in_room(sid):
            self.backfilled.add((sid, stream_id))
        task = self.loop.create_task(self.fanout.resume_socket(sid, stream.record, Cursor(after)))
        self.pending[task] = sid

        def resumed(task: asyncio.Task[str]) -> None:
            del self.pending[task]
            if task.cancelled() or task.exception() is not None:
                self.failures.append(task.exception() or asyncio.CancelledError())
                return
            if sid in self.dropped:
                return
            self._tighten(sid, stream_id, after)
            for other in self._live():  # it is in the room: live from here at the latest
                self._tighten(sid, other.record.stream_id, other.count)
            if task.result() != "streaming":
                self.expect_end.add((sid, stream_id))

        task.add_done_callback(resumed)
        self._steps(steps)  # often it is still replaying when the next rule runs

    @rule(steps=st.integers(1, 6))
    def step(self, steps: int) -> None:
        self._steps(steps)

    @rule()
    def settle(self) -> None:
        self._settle()

    @rule(who=st.integers(0, CLIENTS - 1))
    def reconnect(self, who: int) -> None:
        """The tab's socket drops; it connects again with a new sid (its text stays)."""
        client = self.clients[who]
        assert client.sid is not None
        self._collect(client)
        self.sio.drop_socket(client.sid)
        self.dropped.add(client.sid)
        client.sid = self._run(self.sio.add_socket())

    # -- checks -----------------------------------------------------------------
    def _settle(self) -> None:
        for _ in range(10_000):
            if not self.pending:
                break
            self._steps(1)
        assert not self.pending, "resumes never finished"

    def _received(self, sid: str, stream_id: str) -> tuple[list[int], int, bool]:
        """(token seqs in arrival order, terminal count, whether a token came after an end)."""
        seqs: list[int] = []
        terminals = 0
        late = False
        for event, payload in self.sio.sent[sid]:
            if payload.get("stream_id") != stream_id:
                continue
            if event == protocol.TOKEN:
                seqs.append(payload["seq"])
                late = late or terminals > 0
            elif event in TERMINALS:
                terminals += 1
        return seqs, terminals, late

    def _collect(self, client: Client) -> None:
        for stream in self.streams:
            seqs, _, _ = self._received(client.sid, stream.record.stream_id)
            client.got.setdefault(stream.record.stream_id, set()).update(seqs)

    @invariant()
    def never_twice(self) -> None:
        assert not self.failures, self.failures
        for sid in self.sio.sent:
            for stream in self.streams:
                seqs, terminals, _ = self._received(sid, stream.record.stream_id)
                assert len(seqs) == len(set(seqs)), (sid, stream.record.stream_id, seqs)
                assert terminals <= 1, (sid, stream.record.stream_id)
        for client in self.clients:
            self._collect(client)

    @invariant()
    def settled_followers_have_everything(self) -> None:
        if self.pending:
            return
        for client in self.clients:
            for stream in self.streams:
                self._check_follower(client.sid, stream)

    def _check_follower(self, sid: str, stream: Stream) -> None:
        key = (sid, stream.record.stream_id)
        seqs, terminals, late = self._received(*key)
        if not self._in_room(sid):
            assert seqs == [], key
            assert terminals == 0, key
            return
        got = set(seqs)
        first = min(got) if got else stream.count + 1
        # An unbroken run up to the last seq flushed...
        assert got == set(range(first, stream.count + 1)), (key, sorted(got), stream.count)
        # ...starting no later than where it joined or resumed from.
        assert first - 1 <= self.bound.get(key, math.inf), (key, first, self.bound.get(key))
        expected = 1 if stream.ended and key in self.expect_end else 0
        assert terminals == expected, (key, terminals, expected)
        if key not in self.backfilled:
            assert seqs == sorted(seqs), (key, seqs)
            assert not late, key

    def teardown(self) -> None:
        try:
            self._settle()
            self.never_twice()
            self.settled_followers_have_everything()
        finally:
            for task in list(self.pending):
                task.cancel()
            self.loop.run_until_complete(asyncio.sleep(0))
            self.loop.close()


TestFanoutDelivery = FanoutMachine.TestCase
TestFanoutDelivery.settings = settings(
    max_examples=600,
    stateful_step_count=30,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
