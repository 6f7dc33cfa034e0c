"""Many streams at once over two real workers and a real Redis: every promise holds.

Thirty sessions churn for CHURN_S seconds. Each session's actor, driven by its
own seeded RNG, starts streams (some retried at once with the same
client_message_id), stops them from either worker, reloads a tab and
resumes on the other worker, opens a second tab on the other worker,
disconnects tabs, and probes that a refused `chat_stream` joins no room. The
upstream is a loopback fake OpenAI whose reply depends on the message: short
paced replies, replies mixing non-string content into their text, very long
ones, HTTP 500s and resets mid-stream.

Afterwards every stream is checked (tests/support/invariants.py): each
follower got every seq from where it started, once, and exactly one terminal;
terminals agree and spell the tokens and the upstream's text; the reply is
stored once with the right status; stop acks agree with the end; no slot,
task or dead background loop is left; the worker logs hold no traceback.

Set STRESS_SEED to replay a run (the seed is printed) and STRESS_LOG_DIR to keep
the workers' logs.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.clients import RecordingClient
from tests.support.invariants import (
    TERMINALS,
    Seen,
    assert_none,
    check_follower,
    check_persisted,
    check_stop_acks,
    check_terminals_agree,
    check_text,
    half_done_streams,
    log_problems,
    merge_tokens,
    occupied_slots,
    seen,
    stream_tasks,
    terminal_text,
    worker_problems,
)
from tests.support.process import Worker
from tests.support.redis_server import RedisServer
from tests.support.stress_upstream import StressUpstream

pytestmark = [pytest.mark.redis, pytest.mark.stress]

SESSIONS = 30
CHURN_S = 20.0
LEASE_S = 1.5
LOG_TTL = 5
PREFIX = "stress"
DEFAULT_SEED = 8
KINDS = (("short", 50), ("odd", 10), ("long", 8), ("fail500", 14), ("failmid", 18))
PROVIDER_FAILURES = ("provider_error", "provider_unavailable")


def _seed() -> int:
    raw = os.environ.get("STRESS_SEED")
    return int(raw) if raw else DEFAULT_SEED


# -- the cluster ----------------------------------------------------------------
def _config(path: Path, upstream: StressUpstream) -> Path:
    path.write_text(
        f"""chain = ["up"]

[providers.up]
kind = "openai"
base_url = "{upstream.base_url}"
api_key = "sk-stress-0123456789"
model = "fake-model"
max_retries = 0

[store]
key_prefix = "{PREFIX}"

[stream]
lease_s = {LEASE_S}
log_ttl = {LOG_TTL}

[limits]
max_streams_per_session = 2
"""
    )
    return path


@dataclass
class Cluster:
    workers: tuple[Worker, Worker]
    redis: RedisServer
    upstream: StressUpstream


@pytest.fixture
async def cluster(private_redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[Cluster]:
    async with StressUpstream() as upstream:
        config = _config(tmp_path / "stress.toml", upstream)
        workers = tuple(
            Worker(
                env={"REDIS_URL": private_redis_server.url, "CHATSOCK_SERVER__WORKER_ID": name},
                config=config,
            )
            for name in ("stress-a", "stress-b")
        )
        a, b = workers
        try:
            await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
            yield Cluster((a, b), private_redis_server, upstream)
        finally:
            await asyncio.gather(asyncio.to_thread(a.stop), asyncio.to_thread(b.stop))


# -- what the run did -------------------------------------------------------------
@dataclass(eq=False)
class Tab:
    """One Socket.IO client of a session, connected to one worker."""

    client: RecordingClient
    worker: int
    name: str
    room_since: float | None = None  # when an ack proved it is in the session's room
    closed_at: float | None = None
    probe: bool = False  # sent only refused requests: must receive nothing
    # Its events by stream id, indexed as they arrive (see Stress.refresh).
    by_stream: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    indexed: int = 0

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def seen(self, stream_id: str) -> Seen:
        return seen(self.by_stream.get(stream_id, ()), stream_id)


@dataclass(eq=False)
class Follow:
    """A tab that must follow a stream from `start` (None: from wherever it joined)."""

    tab: Tab
    start: int | None
    why: str
    must_end: bool = True
    checked: bool = True  # False: what it got is legitimately ambiguous


@dataclass(eq=False)
class Run:
    """One accepted stream."""

    stream_id: str
    session_id: str
    message_id: str
    kind: str
    message: str
    owner: int
    sent_at: float
    follows: list[Follow] = field(default_factory=list)
    stop_acks: list[dict[str, Any]] = field(default_factory=list)
    stop_failed: bool = False  # a chat_stop call got no answer
    untracked: bool = False  # its end could not be observed (resumed too late)

    @property
    def label(self) -> str:
        return f"{self.stream_id} ({self.kind}, {self.session_id}, owner {'ab'[self.owner]})"


class Stress:
    """The actors of one run and everything they observed."""

    def __init__(self, cluster: Cluster, seed: int) -> None:
        self.cluster = cluster
        self.urls = [w.url for w in cluster.workers]
        self.seed = seed
        self.tabs: list[Tab] = []
        self.runs: dict[str, Run] = {}
        self.refused_messages: set[str] = set()
        self.problems: list[str] = []
        self.ended_ids: set[str] = set()
        self.max_seq: dict[str, int] = {}
        self.actions: dict[str, int] = {}
        self.loop = asyncio.get_running_loop()

    def now(self) -> float:
        return self.loop.time()

    async def tab(self, session: Session, worker: int) -> Tab:
        client = RecordingClient()
        tab = Tab(client, worker, f"{session.session_id}/t{len(session.tabs)}@{'ab'[worker]}")
        self.tabs.append(tab)
        await client.connect(self.urls[worker])
        session.tabs.append(tab)
        return tab

    async def close_tab(self, tab: Tab) -> None:
        if tab.open:
            tab.closed_at = self.now()
            await tab.client.close()

    def refresh(self) -> None:
        """Index the events that arrived since the last call, by stream."""
        for tab in self.tabs:
            events = tab.client.events
            for event, data in events[tab.indexed :]:
                stream_id = data.get("stream_id") if isinstance(data, dict) else None
                if stream_id is None:
                    continue
                tab.by_stream.setdefault(stream_id, []).append((event, data))
                if event in TERMINALS:
                    self.ended_ids.add(stream_id)
                elif event == "chat_token":
                    self.max_seq[stream_id] = max(self.max_seq.get(stream_id, 0), data["seq"])
            tab.indexed = len(events)

    def ended(self, run: Run) -> bool:
        """Some tab got its terminal event."""
        self.refresh()
        return run.stream_id in self.ended_ids

    def last_seq(self, run: Run) -> int:
        self.refresh()
        return self.max_seq.get(run.stream_id, 0)

    async def close(self) -> None:
        for tab in self.tabs:
            await tab.client.close()


@dataclass(eq=False)
class Session:
    """One session's actor: its RNG, tabs and streams."""

    stress: Stress
    session_id: str
    rng: random.Random
    max_live: int
    tabs: list[Tab] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)
    count: int = 0

    # -- views ------------------------------------------------------------------
    def running(self) -> list[Run]:
        return [r for r in self.runs if not r.untracked and not self.stress.ended(r)]

    def open_tabs(self) -> list[Tab]:
        return [t for t in self.tabs if t.open and not t.probe]

    def other(self, worker: int) -> int:
        return 1 - worker

    def fail(self, what: str) -> None:
        self.stress.problems.append(f"{self.session_id}: {what}")

    # -- the actor ----------------------------------------------------------------
    async def act(self, deadline: float) -> None:
        stress = self.stress
        action: Callable[[], Awaitable[None]] = self.start
        while stress.now() < deadline:
            stress.actions[action.__name__] = stress.actions.get(action.__name__, 0) + 1
            try:
                await action()
            except Exception as exc:
                self.fail(f"{action.__name__} raised {type(exc).__name__}: {exc}")
            await asyncio.sleep(self.rng.uniform(0.1, 0.7))
            action = self.pick()

    def pick(self) -> Callable[[], Awaitable[None]]:
        running = self.running()
        if any(not self.followed(r) for r in running) and self.rng.random() < 0.7:
            return self.resume
        if not running:
            return self.rng.choices([self.start, self.join, self.probe], [8, 1, 1])[0]
        choices: list[tuple[Callable[[], Awaitable[None]], int]] = [
            (self.stop, 3),
            (self.resume, 3),
            (self.join, 3),
            (self.disconnect, 2),
            (self.probe, 1),
            (self.idle, 4),
        ]
        if len(running) < self.max_live:
            choices.append((self.start, 4))
        actions, weights = zip(*choices, strict=True)
        return self.rng.choices(actions, weights)[0]

    def followed(self, run: Run) -> bool:
        """Whether an open tab must see `run` to its end (its room or a resume)."""
        return any(f.tab.open and f.start is not None for f in run.follows) or any(
            t.open and t.room_since is not None and t.room_since < run.sent_at
            for t in self.open_tabs()
        )

    async def idle(self) -> None:
        await asyncio.sleep(self.rng.uniform(0.2, 1.0))

    async def start(self) -> None:
        stress = self.stress
        tabs = self.open_tabs()
        if tabs and self.rng.random() < 0.75:
            tab = self.rng.choice(tabs)
        else:
            tab = await stress.tab(self, self.rng.randrange(2))
        kinds, weights = zip(*KINDS, strict=True)
        kind = self.rng.choices(kinds, weights)[0]
        self.count += 1
        message = f"{kind} {self.session_id} #{self.count}"
        request = {
            "message": message,
            "session_id": self.session_id,
            "client_message_id": f"{self.session_id}-{self.count}",
        }
        sent_at = stress.now()
        retry = self.rng.random() < 0.2
        if retry:
            # A client whose ack is late sends the same request again on the same socket.
            first, again = await asyncio.gather(
                tab.client.call("chat_stream", request),
                self._later(self.rng.uniform(0, 0.03), tab.client.call("chat_stream", request)),
            )
            if again != first:
                self.fail(f"a retried chat_stream answered {again}, the first {first}")
            if not first.get("ok") and again.get("ok"):
                first = again
        else:
            first = await tab.client.call("chat_stream", request)
        if not first.get("ok"):
            code = first.get("error", {}).get("code")
            if code == "too_many_streams" and len(self.running()) >= self.max_live:
                stress.refused_messages.add(message)
                return  # the view was stale in the safe direction
            stress.refused_messages.add(message)
            self.fail(f"chat_stream {message!r} refused with {first}")
            return
        if tab.room_since is None:
            tab.room_since = stress.now()
        run = Run(
            first["stream_id"],
            self.session_id,
            first["message_id"],
            kind,
            message,
            tab.worker,
            sent_at,
            [Follow(tab, 1, "started it")],
        )
        self.runs.append(run)
        stress.runs[run.stream_id] = run

    @staticmethod
    async def _later(delay: float, call: Awaitable[Any]) -> Any:
        await asyncio.sleep(delay)
        return await call

    async def stop(self) -> None:
        running = [r for r in self.running() if self.followed(r)]
        if not running:
            return
        run = self.rng.choice(running)
        tabs = self.open_tabs()
        if tabs and self.rng.random() < 0.6:
            tab = self.rng.choice(tabs)
        else:
            tab = await self.stress.tab(self, self.rng.randrange(2))
        try:
            ack = await tab.client.call("chat_stop", {"stream_id": run.stream_id})
        except Exception:
            run.stop_failed = True
            raise
        run.stop_acks.append(ack)

    async def resume(self) -> None:
        """A tab reloads: maybe close it, then resume on the other worker from the
        last seq it saw."""
        running = self.running()
        if not running:
            return
        unfollowed = [r for r in running if not self.followed(r)]
        run = self.rng.choice(unfollowed or running)
        holders = [f.tab for f in run.follows if f.tab.open]
        stress = self.stress
        if holders:
            source = self.rng.choice(holders)
            after = source.seen(run.stream_id).last_seq
            worker = self.other(source.worker)
            if self.rng.random() < 0.5:
                await stress.close_tab(source)
        else:
            after, worker = stress.last_seq(run), self.rng.randrange(2)
        tab = await stress.tab(self, worker)
        left = max((f.tab.closed_at or 0.0 for f in run.follows), default=0.0)
        ack = await tab.client.call("chat_resume", {"stream_id": run.stream_id, "after": after})
        if not ack.get("ok"):
            code = ack.get("error", {}).get("code")
            if not holders and code == "not_found" and stress.now() - left > LOG_TTL - 1:
                run.untracked = True  # it ended unobserved and its log expired: fine
                return
            self.fail(f"chat_resume of {run.label} after {after} answered {ack}")
            return
        tab.room_since = stress.now()
        run.follows.append(Follow(tab, after + 1, f"resumed after {after} ({ack['status']})"))

    async def join(self) -> None:
        """A second tab opens the session on the other worker than a running stream's."""
        stress = self.stress
        running = self.running()
        worker = self.other(self.rng.choice(running).owner) if running else self.rng.randrange(2)
        tab = await stress.tab(self, worker)
        ack = await tab.client.call("session_join", {"session_id": self.session_id})
        if not ack.get("ok"):
            self.fail(f"session_join answered {ack}")
            return
        tab.room_since = stress.now()
        active = ack.get("active_stream")
        named = active["stream_id"] if active else None
        for run in running:
            if run.stream_id == named:
                continue
            # Running when the join was sent but not named in the ack: it may have
            # ended meanwhile, or be a second stream of the session.
            run.follows.append(Follow(tab, None, "running at join", must_end=False))
        if named is None:
            return
        run = stress.runs.get(named)
        if run is None:
            self.fail(f"session_join names active stream {named}, which this test never started")
            return
        if self.rng.random() < 0.3:
            # As docs/protocol.md says a tab does: resume from 0 to get the earlier tokens.
            resumed = await tab.client.call("chat_resume", {"stream_id": named, "after": 0})
            if not resumed.get("ok"):
                self.fail(f"chat_resume of {run.label} after a join answered {resumed}")
            elif resumed["status"] == "streaming":
                run.follows.append(Follow(tab, 1, f"joined at {active['seq']}, resumed from 0"))
                return
            else:  # it ended meanwhile: the replay repeats what came live
                run.follows.append(Follow(tab, None, "resumed from 0 after its end", False, False))
                return
        run.follows.append(Follow(tab, active["seq"] + 1, f"joined at {active['seq']}"))

    async def disconnect(self) -> None:
        tabs = self.open_tabs()
        if tabs:
            await self.stress.close_tab(self.rng.choice(tabs))

    async def probe(self) -> None:
        """A refused chat_stream must not put its sender in the session's room."""
        stress = self.stress
        tab = await stress.tab(self, self.rng.randrange(2))
        tab.probe = True
        self.count += 1
        message = f"probe {self.session_id} #{self.count}"
        request: dict[str, Any] = {"message": message, "session_id": self.session_id}
        full = len(self.running()) >= self.max_live
        if not full:
            request["provider"] = "no-such-provider"
        sent_at = stress.now()
        ack = await tab.client.call("chat_stream", request)
        stress.refused_messages.add(message)
        if ack.get("ok"):
            if not full:
                self.fail(f"a chat_stream naming an unknown provider was accepted: {ack}")
            # The session's slots freed meanwhile: a normal stream of the probe's message.
            tab.probe = False
            stress.refused_messages.discard(message)
            run = Run(
                ack["stream_id"],
                self.session_id,
                ack["message_id"],
                "short",
                message,
                tab.worker,
                sent_at,
                [Follow(tab, 1, "started it")],
            )
            tab.room_since = stress.now()
            self.runs.append(run)
            stress.runs[run.stream_id] = run


# -- the run ---------------------------------------------------------------------
async def _drain(stress: Stress, sessions: list[Session], within: float) -> None:
    """Let every stream end and reach its followers; resume the unfollowed ones so
    their end is observed."""
    deadline = stress.now() + within
    while stress.now() < deadline:
        waiting = False
        for session in sessions:
            for run in session.running():
                waiting = True
                if not session.followed(run):
                    try:
                        await session.resume()
                    except Exception as exc:
                        session.fail(f"resume while draining raised {exc!r}")
        stress.refresh()
        pending = [
            run
            for run in stress.runs.values()
            for f in _follows(stress, run)
            if f.must_end and f.tab.open and not f.tab.seen(run.stream_id).terminals
        ]
        if not waiting and not pending:
            return
        await asyncio.sleep(0.25)


def _follows(stress: Stress, run: Run) -> list[Follow]:
    """Who must follow `run`: those recorded; every tab in the session's room before
    the stream was requested (from seq 1); and any other tab that got some of it
    (it entered the room meanwhile: from wherever it began)."""
    follows = list(run.follows)
    tracked = {id(f.tab) for f in follows}
    for tab in stress.tabs:
        if id(tab) in tracked:
            continue
        if (
            tab.room_since is not None
            and tab.room_since < run.sent_at
            and tab.name.startswith(f"{run.session_id}/")
        ):
            follows.append(Follow(tab, 1, "in the room before it started", must_end=tab.open))
        elif run.stream_id in tab.by_stream and not tab.probe:
            follows.append(Follow(tab, None, "entered the room meanwhile", must_end=False))
    return follows


def _check_run(stress: Stress, run: Run, messages: list[dict[str, Any]]) -> list[str]:
    label = run.label
    follows = _follows(stress, run)
    views = [(f, f.tab.seen(run.stream_id)) for f in follows]
    # A follower that never joined from seq 1 and got no event of it did not follow it.
    problems: list[str] = []
    tokens, conflicts = merge_tokens(label, (v for _, v in views))
    problems += conflicts
    terminals = [t for _, v in views for t in v.terminals[:1]]
    problems += check_terminals_agree(label, terminals)
    terminal = terminals[0] if terminals else None
    for follow, view in views:
        if not follow.checked:
            continue
        name = f"{label} at {follow.tab.name} ({follow.why})"
        must_end = follow.must_end and follow.tab.open
        if follow.start is None and not view.any:
            continue
        if follow.start is None and view.any:
            must_end = follow.tab.open  # it got some of it: it is in the room
        problems += check_follower(name, view, start=follow.start, must_end=must_end, tokens=tokens)
    full = any(f.start == 1 and v.terminals for f, v in views)
    if terminal is not None and full:
        problems += check_text(label, terminal, tokens)
    if terminal is None and not run.untracked:
        problems.append(f"{label}: no follower saw its end")
    problems += check_persisted(label, messages, run.message_id, terminal)
    problems += check_stop_acks(label, run.stop_acks, terminal)
    if run.stop_failed and terminal is not None:
        problems = [p for p in problems if "no chat_stop acked" not in p]
    if terminal is not None:
        problems += _check_outcome(stress, run, terminal)
    calls = stress.cluster.upstream.calls[run.message]
    if calls > 1:
        problems.append(f"{label}: the upstream was asked {calls} times")
    return problems


def _check_outcome(stress: Stress, run: Run, terminal: tuple[str, dict[str, Any]]) -> list[str]:
    """The end fits what the upstream did, and the text is what it sent."""
    event, payload = terminal
    label = run.label
    text = terminal_text(event, payload)
    sent = stress.cluster.upstream.sent.get(run.message, "")
    problems = []
    if event == "chat_stream_error":
        if run.kind not in ("fail500", "failmid") or payload["code"] not in PROVIDER_FAILURES:
            problems.append(
                f"{label}: ended chat_stream_error {payload['code']}: {payload['error']} "
                f"after {len(text)} chars"
            )
        if not sent.startswith(text):
            problems.append(f"{label}: its partial is not what the upstream sent")
    elif payload.get("stopped"):
        if not sent.startswith(text):
            problems.append(f"{label}: its stopped text is not what the upstream sent")
    else:
        if run.kind in ("fail500", "failmid"):
            problems.append(f"{label}: completed though the upstream failed")
        elif text != sent:
            problems.append(
                f"{label}: full_response has {len(text)} chars, the upstream sent {len(sent)}"
            )
    return problems


async def _session_messages(
    http: aiohttp.ClientSession, url: str, session_id: str
) -> list[dict[str, Any]]:
    async with http.get(f"{url}/api/chat/sessions/{session_id}") as reply:
        if reply.status == 404:
            return []  # no stream of it was ever accepted
        assert reply.status == 200, await reply.text()
        body = await reply.json()
    messages: list[dict[str, Any]] = body["messages"]
    return messages


async def _until_no_tasks(http: aiohttp.ClientSession, urls: list[str], within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        counts = [await stream_tasks(http, url) for url in urls]
        if all(not c for c in counts):
            return
        await asyncio.sleep(0.2)


@pytest.mark.timeout(300)  # it may wait for the other stress tests
async def test_many_streams_started_stopped_resumed_and_joined_keep_every_promise(
    cluster: Cluster,
) -> None:
    seed = _seed()
    print(f"\nstress seed {seed} (STRESS_SEED={seed} replays it)")
    stress = Stress(cluster, seed)
    sessions = [
        Session(stress, f"s{seed}-{i:02d}", random.Random(f"{seed}-{i}"), max_live=1 + (i % 3 == 0))
        for i in range(SESSIONS)
    ]
    problems: list[str] = []
    async with aiohttp.ClientSession() as http:
        try:
            deadline = stress.now() + CHURN_S
            await asyncio.gather(*(s.act(deadline) for s in sessions))
            await _drain(stress, sessions, within=30)
            problems += stress.problems
            for index, session in enumerate(sessions):
                url = stress.urls[index % 2]
                messages = await _session_messages(http, url, session.session_id)
                for run in session.runs:
                    problems += _check_run(stress, run, messages)
                problems += _check_user_messages(stress, session, messages)
            for tab in stress.tabs:
                if tab.probe and tab.client.events:
                    shown = [(e, d.get("stream_id")) for e, d in tab.client.events[:3]]
                    problems.append(f"{tab.name}: refused chat_stream, yet received {shown}")
            await _until_no_tasks(http, stress.urls, within=10)
            for url in stress.urls:
                problems += await worker_problems(http, url)
            problems += await occupied_slots(cluster.redis.url, PREFIX)
            problems += await half_done_streams(cluster.redis.url, PREFIX)
        finally:
            await stress.close()
    codes = await asyncio.gather(*(asyncio.to_thread(_shut_down, w) for w in cluster.workers))
    problems += _worker_logs(stress, codes)
    _summary(stress)
    if os.environ.get("STRESS_LOG_DIR"):
        _dump(stress, problems, Path(os.environ["STRESS_LOG_DIR"], f"stress-{seed}-streams.txt"))
    assert_none(problems)


def _check_user_messages(
    stress: Stress, session: Session, messages: list[dict[str, Any]]
) -> list[str]:
    problems = []
    users = [m["content"] for m in messages if m["role"] == "user"]
    for message in {r.message for r in session.runs}:
        if users.count(message) != 1:
            problems.append(
                f"{session.session_id}: user message {message!r} stored "
                f"{users.count(message)} times"
            )
    for message in stress.refused_messages:
        if message in users:
            problems.append(f"{session.session_id}: refused message {message!r} was stored")
    return problems


def _shut_down(worker: Worker) -> int:
    """SIGTERM and wait, keeping the log (`Worker.stop` removes it): an exception a
    dead task kept is only logged when the loop closes."""
    worker.signal(signal.SIGTERM)
    return worker.wait(30)


def _worker_logs(stress: Stress, codes: list[int]) -> list[str]:
    """Problems in the logs of the stopped workers; with STRESS_LOG_DIR, keep the logs."""
    keep = os.environ.get("STRESS_LOG_DIR")
    problems = []
    for name, worker, code in zip("ab", stress.cluster.workers, codes, strict=True):
        if code != 0:
            problems.append(f"worker {name} exited with {code} after SIGTERM")
        log = worker.log()
        if keep:
            Path(keep, f"stress-{stress.seed}-worker-{name}.log").write_text(log)
        problems += log_problems(f"worker {name}", log)
    return problems


def _dump(stress: Stress, problems: list[str], path: Path) -> None:
    """What every tab got of each stream a problem names, for debugging a run."""
    lines = [*problems, ""]
    named = dict.fromkeys(re.findall(r"\bst_[\w-]+", "\n".join(problems)))
    for stream_id in named:
        run = stress.runs.get(stream_id)
        if run is None:
            continue
        lines.append(f"== {run.label} {run.message!r} sent at {run.sent_at:.3f}")
        lines += [f"   stop ack {ack}" for ack in run.stop_acks]
        for follow in _follows(stress, run):
            tab = follow.tab
            got = []
            for event, data in tab.by_stream.get(stream_id, ()):
                got.append(str(data["seq"]) if event == "chat_token" else event)
            lines.append(
                f"   {tab.name} {follow.why} start={follow.start} room_since={tab.room_since} "
                f"closed_at={tab.closed_at}: {' '.join(got)}"
            )
    path.write_text("\n".join(lines) + "\n")


def _summary(stress: Stress) -> None:
    ends: dict[str, int] = {}
    for run in stress.runs.values():
        views = [t.seen(run.stream_id) for t in stress.tabs]
        terminal = next((v.terminals[0] for v in views if v.terminals), None)
        key = (
            "unobserved"
            if terminal is None
            else (
                terminal[1].get("code") or ("stopped" if terminal[1].get("stopped") else "complete")
            )
        )
        ends[key] = ends.get(key, 0) + 1
    print(
        f"stress: {len(stress.runs)} streams, {len(stress.tabs)} clients, ends {ends}, "
        f"actions {stress.actions}"
    )
