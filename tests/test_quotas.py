"""Quotas: stream starts per user and per address, the daily output-token budget,
connections per address (on one worker and across two on one Redis), one
socket's event budget, and which address a request comes from."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from chatsock.config import LimitsConfig
from chatsock.errors import ChatsockError
from chatsock.quotas import EventBudget, Quotas, client_ip, trusted_networks
from chatsock.store.limits import RateLimits
from tests.test_store_limits import memory_store, redis_store

QuotasFactory = Callable[..., Awaitable[Quotas]]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_quotas() -> AsyncIterator[Callable[..., Quotas]]:
    """Quotas on one memory store, shared by every Quotas the test makes (its workers)."""
    store = memory_store()

    def make(store_: RateLimits | None = None, **options: Any) -> Quotas:
        limits = {k: options.pop(k) for k in list(options) if k in LimitsConfig.model_fields}
        return Quotas(store_ or store, LimitsConfig(**limits), **options)

    yield make
    await store.close()  # type: ignore[attr-defined]


@pytest.fixture
async def redis_workers(redis_url: str) -> AsyncIterator[list[RateLimits]]:
    """Two stores on one redis-server: the stores of two workers."""
    stores = [redis_store(redis_url), redis_store(redis_url)]
    yield stores
    for store in stores:
        await store.close()  # type: ignore[attr-defined]


async def refused(attempt: Awaitable[None]) -> ChatsockError:
    with pytest.raises(ChatsockError) as caught:
        await attempt
    assert caught.value.code == "rate_limited"
    return caught.value


# -- stream starts ------------------------------------------------------------


async def test_31st_start_of_a_user_in_a_minute_is_refused_with_retry_after(
    make_quotas: Callable[..., Quotas],
) -> None:
    quotas = make_quotas()
    for n in range(30):
        await quotas.check_start("alice", f"10.0.0.{n}")
    error = await refused(quotas.check_start("alice", "10.0.1.1"))
    assert error.retry_after is not None
    assert 0 < error.retry_after <= 2.0
    assert "limits.stream_starts_per_minute" in error.message
    await quotas.check_start("bob", "10.0.1.1")  # others are not held back


async def test_31st_start_from_one_address_is_refused_whoever_asks(
    make_quotas: Callable[..., Quotas],
) -> None:
    quotas = make_quotas()
    for n in range(30):
        await quotas.check_start(f"user{n}", "203.0.113.7")
    await refused(quotas.check_start("someone-else", "203.0.113.7"))
    await refused(quotas.check_start(None, "203.0.113.7"))


async def test_a_start_refused_for_the_address_costs_the_user_nothing(
    make_quotas: Callable[..., Quotas],
) -> None:
    quotas = make_quotas()
    for _ in range(30):
        await quotas.check_start(None, "203.0.113.7")  # the anonymous user: address only
    for _ in range(5):
        await refused(quotas.check_start("alice", "203.0.113.7"))
    for _ in range(30):
        await quotas.check_start("alice", "198.51.100.1")


async def test_zero_starts_per_minute_is_unlimited(make_quotas: Callable[..., Quotas]) -> None:
    quotas = make_quotas(stream_starts_per_minute=0)
    for _ in range(200):
        await quotas.check_start("alice", "203.0.113.7")


@pytest.mark.redis
async def test_31st_start_is_refused_whichever_worker_receives_it(
    redis_workers: list[RateLimits],
) -> None:
    workers = [Quotas(store, LimitsConfig()) for store in redis_workers]
    for n in range(30):
        await workers[n % 2].check_start("alice", "203.0.113.7")
    for worker in workers:
        await refused(worker.check_start("alice", "198.51.100.1"))
        await refused(worker.check_start("bob", "203.0.113.7"))


# -- the daily output-token budget ----------------------------------------------


async def test_budget_refuses_once_spent_until_utc_midnight(
    make_quotas: Callable[..., Quotas],
) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 23, 59, 30, tzinfo=UTC).timestamp())
    quotas = make_quotas(daily_output_tokens=100, wall_clock=clock)
    await quotas.check_budget("alice")
    await quotas.charge("alice", 60)
    await quotas.check_budget("alice")
    await quotas.charge("alice", 50)
    error = await refused(quotas.check_budget("alice"))
    assert error.retry_after == 30
    assert "limits.daily_output_tokens" in error.message
    await quotas.check_budget("bob")
    clock.now += 31  # a new UTC day, a new budget
    await quotas.check_budget("alice")


async def test_no_budget_counts_nothing(make_quotas: Callable[..., Quotas]) -> None:
    await make_quotas(daily_output_tokens=0).charge("alice", 10**9)
    await make_quotas(daily_output_tokens=100).check_budget("alice")  # same store


# -- connections per address ----------------------------------------------------


async def test_connections_per_address_are_capped_and_freed_on_disconnect(
    make_quotas: Callable[..., Quotas],
) -> None:
    quotas = make_quotas(connections_per_ip=2)
    assert await quotas.connect("203.0.113.7", "s1")
    assert await quotas.connect("203.0.113.7", "s2")
    assert not await quotas.connect("203.0.113.7", "s3")
    assert await quotas.connect("198.51.100.1", "s4")
    await quotas.disconnect("203.0.113.7", "s3")  # refused: held nothing
    assert not await quotas.connect("203.0.113.7", "s3")
    await quotas.disconnect("203.0.113.7", "s1")
    assert await quotas.connect("203.0.113.7", "s3")
    assert await quotas.connect(None, "s5")  # an unknown address is not counted


async def test_zero_connections_per_ip_is_unlimited(make_quotas: Callable[..., Quotas]) -> None:
    quotas = make_quotas(connections_per_ip=0)
    assert all([await quotas.connect("203.0.113.7", f"s{n}") for n in range(100)])


@pytest.mark.redis
async def test_connections_are_counted_across_workers_and_a_dead_workers_expire(
    redis_workers: list[RateLimits],
) -> None:
    limits = LimitsConfig(connections_per_ip=3)
    alive, dead = (Quotas(store, limits, hold_ttl_s=0.6) for store in redis_workers)
    assert await dead.connect("203.0.113.7", "d1")
    assert await dead.connect("203.0.113.7", "d2")
    assert await alive.connect("203.0.113.7", "a1")
    assert not await alive.connect("203.0.113.7", "a2")
    for _ in range(6):  # `dead` stops refreshing; `alive` keeps its hold
        await asyncio.sleep(alive.refresh_every_s)
        await alive.refresh()
    assert await alive.connect("203.0.113.7", "a2")
    assert await alive.connect("203.0.113.7", "a3")
    assert not await alive.connect("203.0.113.7", "a4")


# -- one socket's events ----------------------------------------------------------


def test_event_budget_allows_the_burst_then_refuses_with_the_wait() -> None:
    clock = FakeClock()
    budget = EventBudget(20, 40, clock=clock)
    assert [budget.spend() for _ in range(40)] == [0.0] * 40
    assert budget.spend() == pytest.approx(1 / 20)
    assert not budget.exhausted()
    clock.now += 0.1  # two events refilled
    assert [budget.spend() for _ in range(2)] == [0.0, 0.0]
    assert budget.spend() > 0


def test_event_budget_is_exhausted_by_a_burst_of_refusals_in_a_row() -> None:
    clock = FakeClock()
    budget = EventBudget(20, 5, clock=clock)
    for _ in range(5):
        budget.spend()
    for _ in range(4):
        assert budget.spend() > 0
        assert not budget.exhausted()
    clock.now += 0.06  # one event refilled: allowed, the count starts again
    assert budget.spend() == 0.0
    for _ in range(4):
        budget.spend()
    assert not budget.exhausted()
    budget.spend()
    assert budget.exhausted()


def test_event_budget_is_exhausted_after_two_seconds_refused() -> None:
    clock = FakeClock()
    budget = EventBudget(0.1, 40, clock=clock)
    for _ in range(40):
        budget.spend()
    assert budget.spend() > 0
    clock.now += 2.5  # a quarter of an event refilled: still refused
    assert budget.spend() > 0
    assert budget.exhausted()


def test_event_budget_of_rate_zero_is_unlimited() -> None:
    budget = EventBudget(0, 1)
    assert all(budget.spend() == 0.0 for _ in range(1000))
    assert not budget.exhausted()


def test_quotas_give_each_socket_the_configured_event_budget(
    make_quotas: Callable[..., Quotas],
) -> None:
    budget = make_quotas(socket_events_per_second=5, socket_events_burst=3).event_budget()
    assert (budget.rate_per_s, budget.burst) == (5, 3)


# -- the client's address -----------------------------------------------------------


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "trusted", "expected"),
    [
        # Not from a trusted proxy: X-Forwarded-For is the client's say, ignored.
        ("198.51.100.1", "1.1.1.1", [], "198.51.100.1"),
        ("198.51.100.1", "1.1.1.1", ["10.0.0.1"], "198.51.100.1"),
        # From the proxy: the address it appended.
        ("10.0.0.1", "203.0.113.7", ["10.0.0.1"], "203.0.113.7"),
        # A forged entry left of it changes nothing.
        ("10.0.0.1", "1.1.1.1, 203.0.113.7", ["10.0.0.1"], "203.0.113.7"),
        # Proxies behind proxies (CIDRs): the right-most untrusted one.
        ("10.0.0.1", "1.1.1.1, 203.0.113.7, 10.0.0.9", ["10.0.0.0/8"], "203.0.113.7"),
        ("10.0.0.1", "10.0.0.8,10.0.0.9", ["10.0.0.0/8"], "10.0.0.8"),
        # Malformed entries stop at the proxy that appended them; blanks are skipped.
        ("10.0.0.1", "203.0.113.7, not-an-ip", ["10.0.0.1"], "10.0.0.1"),
        ("10.0.0.1", "203.0.113.7, ", ["10.0.0.1"], "203.0.113.7"),
        ("10.0.0.1", "", ["10.0.0.1"], "10.0.0.1"),
        ("10.0.0.1", None, ["10.0.0.1"], "10.0.0.1"),
        # Ports, brackets, IPv6 and IPv4-mapped peers.
        ("10.0.0.1", "203.0.113.7:5555", ["10.0.0.1"], "203.0.113.7"),
        ("10.0.0.1", "[2001:db8::1]:443", ["10.0.0.1"], "2001:db8::1"),
        ("::1", "2001:DB8::1", ["::1"], "2001:db8::1"),
        ("::ffff:127.0.0.1", "203.0.113.7", ["127.0.0.1"], "203.0.113.7"),
        ("::ffff:198.51.100.1", None, [], "198.51.100.1"),
        # No address to look behind.
        (None, "203.0.113.7", ["10.0.0.1"], None),
        ("unix-socket", "203.0.113.7", ["10.0.0.1"], "unix-socket"),
    ],
)
def test_client_ip_trusts_x_forwarded_for_only_from_trusted_proxies(
    peer: str | None, forwarded_for: str | None, trusted: list[str], expected: str | None
) -> None:
    assert client_ip(peer, forwarded_for, trusted) == expected


def test_trusted_proxies_name_the_entry_that_is_no_address() -> None:
    assert len(trusted_networks(("10.0.0.1", "172.16.0.0/12", "::1"))) == 3
    with pytest.raises(ValueError, match=r"server.trusted_proxies: 'nginx' is not an IP"):
        trusted_networks(("10.0.0.1", "nginx"))
