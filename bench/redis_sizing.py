"""Redis memory per stream log and per session, measured with MEMORY USAGE.

Runs a throwaway redis-server (tests/support/redis_server.py) and writes through
chatsock's own RedisStore what a worker writes: a stream's registration, its
token log as the flush clock appends it (one `chat_token` entry per flush at the
default 20 ms flush, so a model's tokens per second decide how many 4-character
deltas share an entry), its end; a session's messages, acks and indexes.

    python -m bench.redis_sizing [--tokens 1000] [--messages 10 100]

Prints a Markdown table for docs/operations.md ("Redis sizing").
"""

from __future__ import annotations

import argparse
import asyncio
import math
from collections.abc import Iterable

import redis.asyncio as aioredis

from chatsock import protocol
from chatsock.ids import new_id
from chatsock.store.models import Message, SessionInfo, StreamRecord, Terminal, TokenAppend
from chatsock.store.redis import RedisStore
from tests.support.redis_server import RedisServer

FLUSH_S = 0.020  # stream.flush_interval_ms's default
DELTA = "abcd"  # a typical delta: about 4 characters
RATES = (30, 100, 300)  # a model's tokens per second
USER_CHARS = 200
REPLY_CHARS = 1500


async def _usage(client: aioredis.Redis, keys: Iterable[str]) -> int:
    """Bytes Redis holds for `keys` (MEMORY USAGE with every sample)."""
    total = 0
    for key in keys:
        used = await client.memory_usage(key, samples=0)
        total += int(used or 0)
    return total


async def _keys(client: aioredis.Redis, pattern: str) -> list[str]:
    return [bytes(k).decode() async for k in client.scan_iter(match=pattern, count=1000)]


def _record(session_id: str, user: str = "user-1") -> StreamRecord:
    return StreamRecord(
        stream_id=new_id("st"),
        session_id=session_id,
        message_id=new_id("msg"),
        owner="worker-a",
        provider="openai",
        model="gpt-4o-mini",
        started_at=protocol.now_iso(),
        client_message_id=new_id("cm"),
        user=user,
    )


async def _register(store: RedisStore, record: StreamRecord) -> None:
    ack = protocol.stream_ack(record.stream_id, record.session_id, record.message_id, record.epoch)
    await store.register_stream(record, limit=10, lease_s=15, ack=ack)


async def stream_log_bytes(
    store: RedisStore, client: aioredis.Redis, tokens: int, rate: int
) -> int:
    """MEMORY USAGE of one stream's token log after `tokens` deltas at `rate` tokens/s."""
    session_id = new_id("ses")
    await store.ensure_session(SessionInfo(session_id, protocol.now_iso(), protocol.now_iso()))
    record = _record(session_id)
    await _register(store, record)
    per_entry = max(1, math.floor(rate * FLUSH_S))
    seq = count = 0
    appends = []
    while count < tokens:
        n = min(per_entry, tokens - count)
        count += n
        seq += 1
        payload = protocol.token(record.stream_id, session_id, seq, DELTA * n, count)
        appends.append(TokenAppend(record.stream_id, seq, payload, "worker-a", record.epoch))
    for start in range(0, len(appends), 500):
        await store.append_many(appends[start : start + 500])
    return await _usage(client, [store._tk(record.stream_id, "log")])


async def session_bytes(
    store: RedisStore, client: aioredis.Redis, messages: int
) -> tuple[int, int, int]:
    """(bytes of the session's own keys, bytes of its ended streams' keys kept for
    `log_ttl`, stream count) for a session of `messages` messages: each user
    message starts a stream whose reply is stored."""
    session_id = new_id("ses")
    now = protocol.now_iso()
    await store.ensure_session(SessionInfo(session_id, now, now, owner="user-1"))
    streams = []
    for n in range(messages // 2):
        record = _record(session_id)
        await _register(store, record)
        user = Message(new_id("msg"), "user", "u" * USER_CHARS, protocol.now_iso())
        await store.add_message(session_id, user)
        reply = "r" * REPLY_CHARS
        await store.append_token(
            record.stream_id, 1, protocol.token(record.stream_id, session_id, 1, reply, 1)
        )
        assistant = Message(
            record.message_id, "assistant", reply, protocol.now_iso(), stream_id=record.stream_id
        )
        await store.add_message(session_id, assistant)
        await store.claim_end(record.stream_id, "worker-a")
        end = {"stream_id": record.stream_id, "full_response": reply, "n": n}
        await store.finish_stream(record, Terminal("complete", protocol.COMPLETE, end))
        streams.append(record.stream_id)
    own = await _usage(client, await _keys(client, store._sk(session_id, "*")))
    own += await _usage(client, [store._sk(session_id)])
    kept = 0
    for stream_id in streams:
        kept += await _usage(client, await _keys(client, store._tk(stream_id) + "*"))
    return own, kept, len(streams)


async def main(tokens: int, sizes: list[int]) -> None:
    with RedisServer() as server:
        store = RedisStore(server.url)
        client = aioredis.Redis.from_url(server.url)
        try:
            await store.open()
            print(f"| token log, {tokens} tokens of {len(DELTA)} chars | entries | bytes |")
            print("|---|---|---|")
            for rate in RATES:
                used = await stream_log_bytes(store, client, tokens, rate)
                entries = math.ceil(tokens / max(1, math.floor(rate * FLUSH_S)))
                print(f"| {rate} tokens/s, 20 ms flush | {entries} | {used:,} |")
            print()
            print("| session | its keys | ended streams' keys (for log_ttl) |")
            print("|---|---|---|")
            for size in sizes:
                own, kept, count = await session_bytes(store, client, size)
                print(f"| {size} messages | {own:,} | {kept:,} ({count} streams) |")
        finally:
            await client.aclose()
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--messages", type=int, nargs="+", default=[10, 100])
    args = parser.parse_args()
    asyncio.run(main(args.tokens, args.messages))
