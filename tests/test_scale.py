"""Hundreds of concurrent streams over two real workers and one real Redis.

The load comes from node's socket.io-client (tests/js/scale.mjs), so the
test's own clients cost the box little; each stream is the demo provider's
reply of ~90 tokens at TOKENS_PER_SECOND, a few seconds long. Every stream is
checked (tests/support/scale.py): seq 1..N once per follower, one terminal,
the text equal to `full_response`, to the demo reply and to the stored
reply; no `chat_stream_error` anywhere. Then both workers must be idle and
Redis hold no slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support.invariants import assert_none, log_problems
from tests.support.process import Worker
from tests.support.redis_server import RedisServer
from tests.support.scale import (
    ScaleRun,
    check_drained,
    check_streams,
    late_joins,
    run_scale,
    store_warnings,
)

pytestmark = [pytest.mark.redis, pytest.mark.node, pytest.mark.stress]

PREFIX = "scale"
TOKENS_PER_SECOND = 20  # the load: 300 streams x 20 tok/s
RAMP_MS = 1000  # starts spread over a second, all running at once
WITHIN_S = 90.0  # a ~4 s stream may take far longer on a loaded 2-core box


@pytest.fixture
async def workers(private_redis_server: RedisServer) -> AsyncIterator[tuple[Worker, Worker]]:
    """Two workers on one Redis, limits raised so one anonymous user may run 300 streams."""
    env = {
        "REDIS_URL": private_redis_server.url,
        "CHATSOCK_STORE__KEY_PREFIX": PREFIX,
        "CHATSOCK_DEMO_TOKENS_PER_SECOND": str(TOKENS_PER_SECOND),
        "CHATSOCK_LIMITS__MAX_STREAMS_PER_USER": "1000",
    }
    pair = (
        Worker(env={**env, "CHATSOCK_SERVER__WORKER_ID": "scale-a"}),
        Worker(env={**env, "CHATSOCK_SERVER__WORKER_ID": "scale-b"}),
    )
    try:
        # A loaded box may take a while to answer /healthz.
        await asyncio.gather(*(asyncio.to_thread(w.start, 60) for w in pair))
        yield pair
    finally:
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in pair))


def _summary(name: str, run: ScaleRun, problems: list[str]) -> None:
    tokens = sum(1 for s in run.sockets for e, _ in s["events"] if e == "chat_token")
    print(
        f"\n{name}: {len(run.accepted())}/{len(run.streams)} streams accepted, "
        f"{tokens} chat_token events in {run.wall_s:.1f} s, "
        f"{late_joins(run)} second tabs joined after the end, "
        f"{len(problems)} problem(s)"
    )


async def _verify(
    name: str, run: ScaleRun, workers: tuple[Worker, Worker], redis: RedisServer, followed: bool
) -> None:
    urls = [w.url for w in workers]
    async with aiohttp.ClientSession() as http:
        # Stored replies are read from the worker that ran none of the test-2 streams.
        problems = await check_streams(run, http, urls[1], followed=followed)
        problems += await check_drained(http, urls, redis.url, PREFIX, within=30)
    for worker in workers:
        log = worker.log()
        problems += log_problems(worker.url, log) + store_warnings(worker.url, log)
    _summary(name, run, problems)
    assert_none(problems)


@pytest.mark.timeout(240)
async def test_300_concurrent_streams_over_two_workers_on_redis_all_complete_and_verified(
    workers: tuple[Worker, Worker], private_redis_server: RedisServer
) -> None:
    run = await run_scale(
        WITHIN_S + 60,
        ownerUrls=[w.url for w in workers],
        streams=300,
        streamsPerSocket=10,
        followUrls=None,
        rampMs=RAMP_MS,
        withinMs=WITHIN_S * 1000,
        prefix="scale three hundred",
    )
    await _verify("300 streams", run, workers, private_redis_server, followed=False)


@pytest.mark.timeout(240)
async def test_100_streams_each_followed_by_a_second_tab_on_the_other_worker_gap_free_once(
    workers: tuple[Worker, Worker], private_redis_server: RedisServer
) -> None:
    a, b = workers
    run = await run_scale(
        WITHIN_S + 60,
        ownerUrls=[a.url],
        streams=100,
        streamsPerSocket=10,
        followUrls=[b.url],
        rampMs=RAMP_MS,
        withinMs=WITHIN_S * 1000,
        prefix="scale followed",
    )
    await _verify("100 followed streams", run, workers, private_redis_server, followed=True)
