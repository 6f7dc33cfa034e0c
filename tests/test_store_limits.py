"""The store's rate limits (token buckets, holds, usage counters), one contract
run against both backends, then the promises that only Redis can keep: one
count across workers, and errors that say what to do."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chatsock.store.base import Store, StoreUnavailable
from chatsock.store.limits import RateLimits
from chatsock.store.memory import MemoryStore
from chatsock.store.memory_limits import MemoryRateLimits
from chatsock.store.redis import RedisStore
from chatsock.store.redis_limits import RedisRateLimits
from tests.support.redis_server import free_port

LimitsFactory = Callable[..., Awaitable[RateLimits]]
SLOW = 1 / 3600  # a refill too slow to matter within a test


def with_limits(backend: type[Store], mixin: type[RateLimits]) -> Callable[..., Any]:
    """The backend's class with its rate-limit primitives, whether or not they are
    wired into it yet."""
    if issubclass(backend, mixin):
        return backend
    return type(f"Limited{backend.__name__}", (mixin, backend), {})


def memory_store(**options: Any) -> RateLimits:
    store: RateLimits = with_limits(MemoryStore, MemoryRateLimits)(**options)
    return store


def redis_store(url: str, **options: Any) -> RateLimits:
    store: RateLimits = with_limits(RedisStore, RedisRateLimits)(url, **options)
    return store


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_limits(request: pytest.FixtureRequest) -> AsyncIterator[LimitsFactory]:
    """Build stores of one backend (any Store options); all closed after the test."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""
    stores: list[Any] = []

    async def make(**options: Any) -> RateLimits:
        store = redis_store(url, **options) if url else memory_store(**options)
        await store.open()  # type: ignore[attr-defined]
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()


@pytest.fixture
async def limits(make_limits: LimitsFactory) -> RateLimits:
    return await make_limits()


async def stored_keys(store: RateLimits) -> set[str]:
    if isinstance(store, MemoryStore):
        return set(store.live_keys())
    assert isinstance(store, RedisStore)
    client = aioredis.Redis.from_url(store.url)
    try:
        return {bytes(key).decode() for key in await client.keys("*")}
    finally:
        await client.aclose()


# -- token buckets ----------------------------------------------------------


async def test_take_allows_the_burst_then_refuses_the_next_with_its_wait(
    limits: RateLimits,
) -> None:
    allowed = [await limits.take("starts:alice", 30 / 60, 30) for _ in range(30)]
    refused = await limits.take("starts:alice", 30 / 60, 30)
    assert allowed == [0.0] * 30
    assert 0 < refused <= 2.0  # one start every 2 s refills


async def test_take_refused_takes_nothing(limits: RateLimits) -> None:
    assert await limits.take("k", SLOW, 5, cost=3) == 0.0
    assert await limits.take("k", SLOW, 5, cost=3) > 0
    assert await limits.take("k", SLOW, 5, cost=2) == 0.0  # the refusal cost nothing
    assert await limits.take("k", SLOW, 5) > 0


async def test_take_allows_again_once_the_returned_wait_has_passed(limits: RateLimits) -> None:
    assert await limits.take("k", 10, 2) == 0.0
    assert await limits.take("k", 10, 2) == 0.0
    wait = await limits.take("k", 10, 2)
    assert 0 < wait <= 0.1
    await asyncio.sleep(wait + 0.05)
    assert await limits.take("k", 10, 2) == 0.0


async def test_take_counts_each_key_on_its_own(limits: RateLimits) -> None:
    assert await limits.take("user:alice", SLOW, 1) == 0.0
    assert await limits.take("user:alice", SLOW, 1) > 0
    assert await limits.take("user:bob", SLOW, 1) == 0.0
    assert await limits.take("ip:alice", SLOW, 1) == 0.0


async def test_take_all_refused_by_one_bucket_takes_from_none(limits: RateLimits) -> None:
    assert await limits.take("ip:1", SLOW, 1) == 0.0
    both = [("user:alice", SLOW, 3), ("ip:1", SLOW, 1)]
    assert await limits.take_all(both) > 0
    assert [await limits.take("user:alice", SLOW, 3) for _ in range(3)] == [0.0] * 3


async def test_take_all_waits_for_the_slowest_bucket(limits: RateLimits) -> None:
    await limits.take_all([("fast", 100, 1), ("slow", 1, 1)])
    wait = await limits.take_all([("fast", 100, 1), ("slow", 1, 1)])
    assert 0.5 < wait <= 1.0


@pytest.mark.parametrize(
    ("rate", "burst", "cost"),
    [(0, 1, 1), (-1, 1, 1), (float("inf"), 1, 1), (float("nan"), 1, 1), (1, 0, 1), (1, 3, 0),
     (1, 3, 4), (1e-10, 1, 1)],
)  # fmt: skip
async def test_take_rejects_a_bucket_that_could_never_allow(
    limits: RateLimits, rate: float, burst: int, cost: int
) -> None:
    with pytest.raises(ValueError, match="must be"):
        await limits.take("k", rate, burst, cost)


async def test_concurrent_takes_on_one_store_allow_exactly_the_burst(limits: RateLimits) -> None:
    # 100: the most concurrent commands one RedisStore's connection pool allows.
    waits = await asyncio.gather(*(limits.take("k", SLOW, 30) for _ in range(100)))
    assert waits.count(0.0) == 30


# Hypothesis reuses the store across examples: each example has a key of its own.
_examples = iter(range(10**9))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rate=st.floats(5, 400),
    burst=st.integers(1, 10),
    calls=st.lists(st.tuples(st.integers(0, 4), st.integers(1, 10)), min_size=1, max_size=30),
)
async def test_take_never_allows_more_than_the_burst_plus_the_refill(
    limits: RateLimits, rate: float, burst: int, calls: list[tuple[int, int]]
) -> None:
    """In every run of calls, what is taken is at most burst + rate * (time the run
    took), and a bucket that allowed nothing yet allows its burst at once."""
    key = f"prop:{next(_examples)}"
    spans: list[tuple[float, float, int]] = []  # (start, end, cost taken)
    for gap_ms, cost in calls:
        await asyncio.sleep(gap_ms / 1000)
        cost = min(cost, burst)
        start = time.monotonic()
        wait = await limits.take(key, rate, burst, cost)
        spans.append((start, time.monotonic(), cost if wait == 0 else 0))
        assert wait >= 0
    assert spans[0][2] > 0  # the first call finds a full bucket
    for i in range(len(spans)):
        taken = 0
        for j in range(i, len(spans)):
            taken += spans[j][2]
            elapsed = spans[j][1] - spans[i][0]
            assert taken <= burst + rate * elapsed + 1e-6


# -- holds ------------------------------------------------------------------


async def test_hold_admits_up_to_the_limit_and_renews_a_member(limits: RateLimits) -> None:
    assert await limits.hold("conn:ip", "a", 2, 30)
    assert await limits.hold("conn:ip", "b", 2, 30)
    assert not await limits.hold("conn:ip", "c", 2, 30)
    assert await limits.hold("conn:ip", "a", 2, 30)  # already held: renewed
    assert await limits.held("conn:ip") == 2
    await limits.release("conn:ip", "a")
    await limits.release("conn:ip", "nobody")
    assert await limits.held("conn:ip") == 1
    assert await limits.hold("conn:ip", "c", 2, 30)


async def test_holds_expire_after_their_ttl(limits: RateLimits) -> None:
    assert await limits.hold("conn:ip", "crashed-worker", 1, 0.3)
    assert not await limits.hold("conn:ip", "b", 1, 30)
    await asyncio.sleep(0.6)
    assert await limits.held("conn:ip") == 0
    assert await limits.hold("conn:ip", "b", 1, 30)


async def test_refreshed_holds_outlive_their_ttl(limits: RateLimits) -> None:
    assert await limits.hold("conn:ip", "a", 1, 0.4)
    for _ in range(4):
        await asyncio.sleep(0.2)
        await limits.refresh_holds([("conn:ip", "a")], 0.4)
        assert not await limits.hold("conn:ip", "b", 1, 30)
    assert await limits.held("conn:ip") == 1


async def test_refresh_takes_again_a_hold_that_expired(limits: RateLimits) -> None:
    assert await limits.hold("conn:x", "a", 1, 0.2)
    assert await limits.hold("conn:y", "a", 1, 0.2)
    await asyncio.sleep(0.4)
    await limits.refresh_holds([("conn:x", "a"), ("conn:y", "a")], 30)
    await limits.refresh_holds([], 30)
    assert await limits.held("conn:x") == 1
    assert await limits.held("conn:y") == 1


async def test_concurrent_holds_on_one_store_admit_exactly_the_limit(limits: RateLimits) -> None:
    held = await asyncio.gather(*(limits.hold("conn:ip", f"s{i}", 50, 30) for i in range(100)))
    assert held.count(True) == 50
    assert await limits.held("conn:ip") == 50


# -- usage counters ---------------------------------------------------------


async def test_usage_adds_up_per_key(limits: RateLimits) -> None:
    assert await limits.usage("tokens:alice") == 0
    assert await limits.add_usage("tokens:alice", 5, 60) == 5
    assert await limits.add_usage("tokens:alice", 7, 60) == 12
    assert await limits.add_usage("tokens:alice", 0, 60) == 12
    assert await limits.usage("tokens:alice") == 12
    assert await limits.usage("tokens:bob") == 0
    with pytest.raises(ValueError, match="must not be negative"):
        await limits.add_usage("tokens:alice", -1, 60)


async def test_usage_expires_after_its_ttl(limits: RateLimits) -> None:
    await limits.add_usage("tokens:alice", 5, 1)
    await asyncio.sleep(1.3)
    assert await limits.usage("tokens:alice") == 0


# -- keys -------------------------------------------------------------------


async def test_limit_keys_carry_the_prefix_and_expire(make_limits: LimitsFactory) -> None:
    store = await make_limits(prefix="tenant")
    await store.take("k", 50, 1)
    await store.hold("conn", "a", 1, 0.2)
    await store.add_usage("tokens", 1, 1)
    keys = await stored_keys(store)
    assert keys == {"tenant:rate:k", "tenant:hold:conn", "tenant:usage:tokens"}
    await asyncio.sleep(1.3)
    assert await stored_keys(store) == set()


async def test_memory_limits_drop_expired_entries() -> None:
    store = memory_store()
    for n in range(3000):  # brief buckets, each gone 10 ms after its take
        await store.take(f"ip:{n}", 100, 1)
    await asyncio.sleep(0.05)
    for n in range(1000):
        await store.hold("conn", f"s{n % 3}", 5, 30)
    assert len(store._data) < 100  # type: ignore[attr-defined]


# -- Redis: one count for every worker ---------------------------------------


@pytest.mark.redis
async def test_two_workers_concurrent_takes_allow_exactly_the_burst(redis_url: str) -> None:
    workers = [redis_store(redis_url), redis_store(redis_url)]
    try:
        waits = await asyncio.gather(
            *(workers[n % 2].take("starts:alice", SLOW, 30) for n in range(200))
        )
        assert waits.count(0.0) == 30
        assert all(wait > 0 for wait in waits if wait != 0.0)
    finally:
        for worker in workers:
            await worker.close()  # type: ignore[attr-defined]


@pytest.mark.redis
async def test_two_workers_concurrent_holds_admit_exactly_the_limit(redis_url: str) -> None:
    workers = [redis_store(redis_url), redis_store(redis_url)]
    try:
        held = await asyncio.gather(
            *(workers[n % 2].hold("conn:ip", f"s{n}", 50, 30) for n in range(200))
        )
        assert held.count(True) == 50
        assert await workers[0].held("conn:ip") == await workers[1].held("conn:ip") == 50
    finally:
        for worker in workers:
            await worker.close()  # type: ignore[attr-defined]


@pytest.mark.redis
async def test_limits_on_an_unreachable_redis_say_what_to_do() -> None:
    store = redis_store(f"redis://:hunter2@127.0.0.1:{free_port()}/0", retries=0)
    try:
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: store.take("k", 1, 1),
            lambda: store.hold("k", "a", 1, 1),
            lambda: store.refresh_holds([("k", "a")], 1),
            lambda: store.held("k"),
            lambda: store.release("k", "a"),
            lambda: store.add_usage("k", 1, 1),
            lambda: store.usage("k"),
        ]
        for attempt in attempts:
            with pytest.raises(StoreUnavailable, match="start redis-server") as caught:
                await attempt()
            assert "hunter2" not in str(caught.value)
    finally:
        await store.close()  # type: ignore[attr-defined]
