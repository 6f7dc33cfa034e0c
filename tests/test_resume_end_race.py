"""A chat_resume racing the stream's end gets the end once, whatever else follows the stream.

Found by the soak (stream st_cFF5G91c-hNHa2Bn): socket A resumed on worker B a
stream running on worker A; B's tailer recorded the end while A's catch-up was
still being sent, then a second follower path on B holding a record read
before the end (a session_join, another chat_resume) tailed the stream again.
That second tail sent A the end, and A's own catch-up sent it a second time.

Worker B's store is a real Redis store whose reads can be held at one step
(tests/fakes/held_store.py), so each race is played in a fixed order.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import FANOUT, RUNNER, SESSIONS, create_app
from tests.conftest import url_of
from tests.fakes.held_store import HeldRedisStore, Hold
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient
from tests.support.invariants import (
    assert_none,
    check_follower,
    check_persisted,
    check_text,
    merge_tokens,
    occupied_slots,
    seen,
)
from tests.support.waiting import poll_until

pytestmark = pytest.mark.redis

PIECES = 6  # tokens logged before the provider is held


class Pair:
    """Worker A runs the streams; worker B (held store) has the racing followers."""

    def __init__(
        self, a: TestServer, b: TestServer, store: HeldRedisStore, provider: ScriptedProvider
    ) -> None:
        self.a, self.b, self.store, self.provider = a, b, store, provider
        self.clients: list[RecordingClient] = []

    async def client(self, server: TestServer) -> RecordingClient:
        client = await RecordingClient().connect(url_of(server))
        self.clients.append(client)
        return client

    def log_key(self, stream_id: str) -> str:
        return self.store._tk(stream_id, "log")

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


@pytest.fixture
async def pair(aiohttp_server, make_settings, redis_url):
    provider = ScriptedProvider("fake")

    def settings(name: str) -> Any:
        return make_settings(
            chain=["fake"],
            store={"redis_url": redis_url},
            server={"worker_id": name},
            stream={"flush_interval_ms": 1},
            limits={"max_streams_per_session": 4},
        )

    a = await aiohttp_server(create_app(settings("worker-a"), providers={"fake": provider}))
    store = HeldRedisStore(redis_url)
    b_app = create_app(
        settings("worker-b"), providers={"fake": ScriptedProvider("fake")}, store=store
    )
    b = await aiohttp_server(b_app)
    made = Pair(a, b, store, provider)
    yield made
    await made.close()


async def _gated_stream(pair: Pair, owner: RecordingClient, session_id: str) -> tuple[Any, Any]:
    """Start a stream on A whose every token is logged and whose end waits on a gate."""
    script = pair.provider.enqueue()
    for i in range(PIECES):
        script.text(f"{session_id}-{i} ").sleep(0.01)
    gate = script.gate()
    ack = await owner.call("chat_stream", {"message": "go", "session_id": session_id})
    assert ack["ok"] is True, ack
    stream_id = ack["stream_id"]
    text = "".join(f"{session_id}-{i} " for i in range(PIECES))
    await owner.wait_for(lambda _: "".join(t["token"] for t in owner.tokens(stream_id)) == text)
    return ack, gate


async def _held(hold: Hold, call: Any) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(call)
    await asyncio.wait_for(hold.reached.wait(), 10)
    return task


async def _settled(pair: Pair, followers: list[RecordingClient]) -> None:
    """Every tail on B is over, and every event B sent before now has arrived."""
    tailers = pair.b.app[SESSIONS].tailers
    assert await poll_until(lambda: not tailers.tasks, within=10)
    assert await poll_until(lambda: not pair.a.app[RUNNER].streams, within=10)
    for client in followers:  # a round trip: the events sent before its answer are in
        await client.call("chat_resume", {"stream_id": "st_none", "after": 0})


def _problems(
    label: str, ack: dict[str, Any], owner: RecordingClient, messages: list[dict[str, Any]]
) -> tuple[list[str], dict[int, str]]:
    """The owner's view of the stream: complete, stored once with its text."""
    view = seen(owner.events, ack["stream_id"])
    tokens, problems = merge_tokens(label, [view])
    problems += check_follower(f"{label} owner", view, start=1, must_end=True, tokens=tokens)
    if view.terminals:
        problems += check_text(label, view.terminals[0], tokens)
        problems += check_persisted(label, messages, ack["message_id"], view.terminals[0])
    return problems, tokens


# -- one race, played step by step ---------------------------------------------
@pytest.mark.parametrize("second", ["session_join", "chat_resume"])
async def test_a_resume_racing_the_end_gets_one_terminal_when_a_stale_follower_tails_again(
    pair, second
):
    owner = await pair.client(pair.a)
    ack, gate = await _gated_stream(pair, owner, "race")
    stream_id, log_key = ack["stream_id"], pair.log_key(ack["stream_id"])
    # A resumes on B after seq 1: B starts a tail, and A's catch-up is held at its log read.
    a = await pair.client(pair.b)
    replay = pair.store.hold("_log_read", lambda key, after, limit: key == log_key and after == 1)
    resumed = await _held(replay, a.call("chat_resume", {"stream_id": stream_id, "after": 1}))
    feed = pair.b.app[FANOUT].feeds[stream_id]
    # The second follower path on B reads the stream as running, and is held there.
    other = await pair.client(pair.b)
    if second == "session_join":
        stale = pair.store.hold("_log_lasts", lambda keys: log_key in keys)
        call = other.call("session_join", {"session_id": "race"})
    else:
        stale = pair.store.hold("_log_last", lambda key: key == log_key)
        call = other.call("chat_resume", {"stream_id": stream_id, "after": 0})
    late = await _held(stale, call)
    # The stream ends; B's tailer relays the end while A is still catching up.
    gate.set()
    await asyncio.wait_for(feed.ended.wait(), 10)
    stale.release.set()
    answer = await asyncio.wait_for(late, 10)
    if second == "chat_resume":
        assert answer == {"ok": True, "status": "complete"}
        await other.wait_terminal(stream_id)
    else:
        assert answer["active_stream"] is None
        replies = [m for m in answer["messages"] if m["message_id"] == ack["message_id"]]
        assert [(m["status"], len(replies)) for m in replies] == [("complete", 1)]
    replay.release.set()
    assert await asyncio.wait_for(resumed, 10) == {"ok": True, "status": "complete"}
    await _settled(pair, [a, other])

    messages = (await owner.call("session_join", {"session_id": "race"}))["messages"]
    problems, tokens = _problems("race", ack, owner, messages)
    problems += check_follower(
        "A", seen(a.events, stream_id), start=2, must_end=True, tokens=tokens
    )
    other_view = seen(other.events, stream_id)
    if second == "chat_resume":
        problems += check_follower("C", other_view, start=1, must_end=True, tokens=tokens)
    elif other_view.any:
        problems.append(f"B joined after the end yet got {other_view}")
    assert_none(problems)


# -- many races at once ----------------------------------------------------------
STREAMS = 10


async def test_many_streams_ending_while_many_sockets_resume_and_join_end_once_each(
    pair, redis_url
):
    """Per stream: a held catch-up (after seq 1), a held session_join and a held
    chat_resume with records read before the end, plus a resume and a join at
    random moments around the end; every follower gets every seq once and one
    end, nothing after it, and the text its tokens spell is the stored reply."""
    rng = random.Random(13)
    owners = [await pair.client(pair.a) for _ in range(STREAMS)]
    started = [await _gated_stream(pair, owners[i], f"many{i}") for i in range(STREAMS)]
    fanout = pair.b.app[FANOUT]
    followers: dict[str, list[tuple[str, RecordingClient, str, int | None]]] = {}

    async def race(i: int) -> None:
        ack, gate = started[i]
        stream_id, session_id = ack["stream_id"], ack["session_id"]
        log_key = pair.log_key(stream_id)
        mine = followers.setdefault(stream_id, [])
        catch_up, joiner, resumer, loose_r, loose_j = [await pair.client(pair.b) for _ in range(5)]
        replay = pair.store.hold("_log_read", lambda k, after, _: k == log_key and after == 1)
        resumed = await _held(
            replay, catch_up.call("chat_resume", {"stream_id": stream_id, "after": 1})
        )
        feed = fanout.feeds[stream_id]
        join_hold = pair.store.hold("_log_lasts", lambda keys: log_key in keys)
        joined = await _held(join_hold, joiner.call("session_join", {"session_id": session_id}))
        resume_hold = pair.store.hold("_log_last", lambda key: key == log_key)
        late = await _held(
            resume_hold, resumer.call("chat_resume", {"stream_id": stream_id, "after": 0})
        )
        after = rng.randint(0, len(owners[i].tokens(stream_id)))

        async def loose_resume() -> None:
            await asyncio.sleep(rng.uniform(0, 0.3))
            answer = await loose_r.call("chat_resume", {"stream_id": stream_id, "after": after})
            assert answer["ok"] is True, answer
            mine.append(("loose resume", loose_r, "resume", after + 1))

        async def loose_join() -> None:
            await asyncio.sleep(rng.uniform(0, 0.3))
            answer = await loose_j.call("session_join", {"session_id": session_id})
            active = answer["active_stream"]
            mine.append(
                ("loose join", loose_j, "join", None if active is None else active["seq"] + 1)
            )

        loose = asyncio.gather(loose_resume(), loose_join())
        await asyncio.sleep(rng.uniform(0, 0.2))
        gate.set()
        await asyncio.wait_for(feed.ended.wait(), 10)
        join_hold.release.set()
        resume_hold.release.set()
        answer = await asyncio.wait_for(joined, 10)
        assert answer["active_stream"] is None, answer
        mine.append(("held join", joiner, "join", None))
        assert await asyncio.wait_for(late, 10) == {"ok": True, "status": "complete"}
        mine.append(("held resume", resumer, "resume", 1))
        replay.release.set()
        assert await asyncio.wait_for(resumed, 10) == {"ok": True, "status": "complete"}
        mine.append(("catch-up", catch_up, "resume", 2))
        await loose

    await asyncio.gather(*(race(i) for i in range(STREAMS)))
    await _settled(pair, [c for f in followers.values() for _, c, _, _ in f])

    problems: list[str] = []
    for i, (ack, _) in enumerate(started):
        stream_id = ack["stream_id"]
        messages = (await owners[i].call("session_join", {"session_id": ack["session_id"]}))[
            "messages"
        ]
        found, tokens = _problems(stream_id, ack, owners[i], messages)
        problems += found
        for label, client, kind, start in followers[stream_id]:
            view = seen(client.events, stream_id)
            name = f"{stream_id} {label}"
            if kind == "join" and start is None:
                if view.any:  # joined after the end: the reply is in its messages
                    problems.append(
                        f"{name}: joined after the end yet got {len(view.tokens)} tokens"
                    )
                continue
            problems += check_follower(name, view, start=start, must_end=True, tokens=tokens)
    problems += await occupied_slots(redis_url, "chatsock")
    assert_none(problems)
