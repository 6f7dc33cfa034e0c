"""Guarantees a batched flush must keep (found by a review of the flush clock):
a batch with one rejected append ends its streams rather than reuse a seq, and a
tailer's served wait costs one shared XREAD, not two. Each failed before its fix.
"""

from __future__ import annotations

from typing import Any, cast

import orjson
import pytest
import redis.asyncio as aioredis

from chatsock.store.redis import RedisStore
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient

PREFIX = "review10"


@pytest.mark.redis
async def test_a_rejected_append_in_a_batch_never_lets_log_and_live_text_differ(
    start_server: Any, connect: Any, redis_url: str
) -> None:
    """One stream's append is rejected by Redis (its log key holds another type) in
    the same tick as another stream's append, which lands. The other stream's text
    must not be dropped from what it sends while kept in its log: what a follower
    got live, what a resume from 0 reads and the stored reply agree."""
    provider = ScriptedProvider("fake")
    a = provider.enqueue("a1 ")
    a_second = a.gate()
    a.text("a2 ")
    a_third = a.gate()
    a.text("a3")
    b = provider.enqueue("b1 ")
    b_second = b.gate()
    b.text("b2 ")
    b_third = b.gate()
    b.text("b3")
    server = await start_server(
        chain=["fake"],
        providers={"fake": provider},
        store={"redis_url": redis_url, "key_prefix": PREFIX},
        # Long enough that both second pieces go out in one tick.
        stream={"flush_interval_ms": 300},
    )
    client: RecordingClient = await connect(server)
    ack_a = await client.call("chat_stream", {"message": "a", "session_id": "rv-a"})
    await client.wait_for(lambda _: client.tokens(ack_a["stream_id"]))
    ack_b = await client.call("chat_stream", {"message": "b", "session_id": "rv-b"})
    await client.wait_for(lambda _: client.tokens(ack_b["stream_id"]))
    raw = aioredis.Redis.from_url(redis_url)
    try:
        b_log = f"{PREFIX}:stream:{ack_b['stream_id']}:log"
        await raw.delete(b_log)
        await raw.set(b_log, b"not a stream")  # its next XADD answers WRONGTYPE
        a_second.set()
        b_second.set()
        a_log = f"{PREFIX}:stream:{ack_a['stream_id']}:log"
        # Wait for the tick with both appends: a's seq 2 is logged.
        assert await raw.xread({a_log: "0-1"}, block=10_000)
        a_third.set()
        b_third.set()
        _, done = await client.wait_terminal(ack_a["stream_id"])
        entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await raw.xrange(a_log))
    finally:
        await raw.aclose()
    logged = {int(eid.rpartition(b"-")[2]): orjson.loads(f[b"d"])["token"] for eid, f in entries}
    live = {t["seq"]: t["token"] for t in client.tokens(ack_a["stream_id"])}
    # Every seq sent live is the seq the log holds, with the same text (a resume
    # never shows other text), and the stored reply is what was sent.
    assert {seq: logged.get(seq) for seq in live} == live
    assert done.get("full_response", done.get("partial")) == "".join(live.values())


async def _xreads(raw: aioredis.Redis) -> int:
    stats = await raw.info("commandstats")
    return int(stats.get("cmdstat_xread", {}).get("calls", 0))


@pytest.mark.redis
async def test_a_served_wait_costs_one_xread(redis_url: str) -> None:
    """The shared tail read (store/log_watch.py) asks Redis once per wait it serves:
    a wait it has just answered is not asked for again (that read only returns the
    entries already handed out, one wasted XREAD per relayed batch)."""
    store = RedisStore(redis_url, prefix=PREFIX)
    raw = aioredis.Redis.from_url(redis_url)
    rounds = 5
    try:
        before = await _xreads(raw)
        for seq in range(1, rounds + 1):
            await store.append_token("tailed", seq, {"token": f"t{seq}"})
            entries = await store.wait_tokens("tailed", seq - 1, 2000)
            assert [e.seq for e in entries] == [seq]
        assert await _xreads(raw) - before == rounds
    finally:
        await raw.aclose()
        await store.close()
