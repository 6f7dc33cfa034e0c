"""Per-flush cost of chatsock's token path, and emit cost with the Redis manager.

Not a test: prints numbers for the closing notes. Runs a real app on a
loopback port with one python-socketio client connected and measures

1. flushes/s through the runner (provider delta -> token log -> room emit ->
   client), with flush_interval_ms=0 so every delta is its own chat_token,
   on the memory store and on a real redis-server;
2. room emits/s with python-socketio's Redis manager, local-only
   (`ignore_queue=True`, what the owner does) against published to every
   worker (the default, what chatsock avoids for tokens).

Usage: python -m bench.micro_stream_path
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from aiohttp.test_utils import TestServer

from chatsock.app import SIO, create_app
from chatsock.config import load_settings
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient
from tests.support.redis_server import RedisServer

DELTAS = 5000
EMITS = 5000


async def _flushes_per_second(redis_url: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "c.toml"
        empty.write_text("")
        provider = ScriptedProvider("bench")
        script = provider.enqueue()
        for i in range(DELTAS):
            script.text(f"t{i} ").sleep(0)
        settings = load_settings(
            empty, chain=["bench"], stream={"flush_interval_ms": 0}, store={"redis_url": redis_url}
        )
        server = TestServer(create_app(settings, providers={"bench": provider}), host="127.0.0.1")
        await server.start_server()
        client = await RecordingClient().connect(f"http://127.0.0.1:{server.port}")
        try:
            started = time.perf_counter()
            ack = await client.call("chat_stream", {"message": "bench"})
            _, done = await client.wait_terminal(ack["stream_id"], within=300)
            elapsed = time.perf_counter() - started
            flushes = len(client.tokens(ack["stream_id"]))
            assert done["full_response"].count(" ") == DELTAS
            return flushes / elapsed
        finally:
            await client.close()
            await server.close()


async def _emits_per_second(redis_url: str, ignore_queue: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "c.toml"
        empty.write_text("")
        settings = load_settings(empty, store={"redis_url": redis_url})
        app = create_app(settings)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        client = await RecordingClient().connect(f"http://127.0.0.1:{server.port}")
        sio = app[SIO]
        try:
            sid = next(iter(sio.manager.get_participants("/", None)))[0]
            await sio.enter_room(sid, "bench")
            payload = {"stream_id": "st_x", "session_id": "s", "seq": 1, "token": "ab", "count": 1}
            started = time.perf_counter()
            for _ in range(EMITS):
                await sio.emit("chat_token", payload, room="bench", ignore_queue=ignore_queue)
            await client.wait_for(lambda _: len(client.events) >= EMITS, within=120)
            return EMITS / (time.perf_counter() - started)
        finally:
            await client.close()
            await server.close()


async def main() -> None:
    with RedisServer() as redis:
        memory = await _flushes_per_second("")
        redis_path = await _flushes_per_second(redis.url)
        local = await _emits_per_second(redis.url, ignore_queue=True)
        published = await _emits_per_second(redis.url, ignore_queue=False)
    print(f"runner flushes/s, memory store : {memory:8.0f}")
    print(f"runner flushes/s, redis store  : {redis_path:8.0f}")
    print(f"redis manager emits/s, local only (owner path): {local:8.0f}")
    print(f"redis manager emits/s, published to all workers: {published:8.0f}")


if __name__ == "__main__":
    asyncio.run(main())
