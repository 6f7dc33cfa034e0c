"""Background loops are supervised: a failure is logged and restarted, never silent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from chatsock.app import LOOPS
from chatsock.loops import BackgroundLoops
from tests.conftest import url_of
from tests.support.redis_server import RedisServer
from tests.support.waiting import poll_until


@pytest.fixture
async def loops() -> AsyncIterator[tuple[BackgroundLoops, list[str]]]:
    restarted: list[str] = []
    supervisor = BackgroundLoops(on_restart=restarted.append)
    yield supervisor, restarted
    await supervisor.close()


async def test_a_loop_whose_factory_raises_twice_then_runs_is_restarted_and_logged(
    loops, caplog: pytest.LogCaptureFixture
):
    supervisor, restarted = loops
    calls = 0
    running = asyncio.Event()

    async def upkeep() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise RuntimeError(f"dictionary changed size during iteration ({calls})")
        running.set()
        await asyncio.Event().wait()  # runs until cancelled

    with caplog.at_level(logging.ERROR, logger="chatsock.loops"):
        supervisor.start("lease upkeep", upkeep)
        await asyncio.wait_for(running.wait(), 10)
    assert calls == 3
    assert restarted == ["lease upkeep", "lease upkeep"]
    failures = [r for r in caplog.records if r.name == "chatsock.loops"]
    assert [r.levelno for r in failures] == [logging.ERROR, logging.ERROR]
    assert all("lease upkeep" in r.getMessage() for r in failures)
    assert all(r.exc_info is not None for r in failures)  # the traceback is logged
    status = supervisor.status()["lease upkeep"]
    assert status.state == "running"
    assert status.failures == 2
    assert status.last_error == "RuntimeError: dictionary changed size during iteration (2)"
    assert supervisor.failing() == []


async def test_a_loop_that_keeps_raising_is_failing_and_keeps_being_restarted(loops):
    supervisor, restarted = loops

    def broken() -> asyncio.Future[None]:
        raise ValueError("the factory itself is broken")

    supervisor.start("presence upkeep", broken)
    assert await poll_until(lambda: supervisor.failing() == ["presence upkeep"], within=10)
    status = supervisor.status()["presence upkeep"]
    assert status.state == "failing"
    assert status.failures >= 3
    assert status.last_error == "ValueError: the factory itself is broken"
    assert await poll_until(lambda: len(restarted) >= 3, within=10)


async def test_a_loop_that_returns_is_done_and_not_restarted(loops):
    supervisor, restarted = loops
    calls = 0

    async def nothing_to_do() -> None:  # the memory store needs no lease upkeep
        nonlocal calls
        calls += 1

    supervisor.start("lease upkeep", nothing_to_do)
    assert await poll_until(lambda: supervisor.status()["lease upkeep"].state == "done", 10)
    await asyncio.sleep(0.3)  # longer than the first restart delay
    assert calls == 1
    assert restarted == []
    assert supervisor.status()["lease upkeep"].failures == 0


async def test_close_cancels_every_loop_and_waits_for_it_to_finish(loops):
    supervisor, _ = loops
    finished: list[str] = []
    started = asyncio.Event()

    async def listener() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)  # a cleanup that itself awaits
            finished.append("listener")

    supervisor.start("signals", listener)
    await asyncio.wait_for(started.wait(), 10)
    await supervisor.close()
    assert finished == ["listener"]


async def test_two_loops_cannot_share_a_name(loops):
    supervisor, _ = loops
    supervisor.start("signals", asyncio.Event().wait)
    with pytest.raises(ValueError, match="signals"):
        supervisor.start("signals", asyncio.Event().wait)


# -- through a real app -------------------------------------------------------------
# The app's own loops catch every failure they expect (a store outage), so a
# failure from outside cannot be provoked without patching chatsock; a loop
# that always fails is registered through the app's supervisor instead.


@pytest.mark.redis
async def test_readyz_lists_the_workers_loops_with_redis(start_server, http, redis_url):
    server = await start_server(store={"redis_url": redis_url})
    ready = await http.get(f"{url_of(server)}/readyz")
    body = await ready.json()
    assert set(body["loops"]) == {
        "signals",
        "lease upkeep",
        "presence upkeep",
        "socket.io watchdog",
        "connection holds",
    }
    for name in ("signals", "lease upkeep", "socket.io watchdog", "connection holds"):
        assert body["loops"][name] == {"state": "running", "failures": 0, "last_error": None}
    # Without stop_on_disconnect there are no presence records to keep.
    assert body["loops"]["presence upkeep"]["state"] == "done"


@pytest.mark.redis
async def test_a_loop_that_keeps_failing_makes_readyz_503_and_is_counted(
    start_server, http, private_redis_server: RedisServer
):
    server = await start_server(store={"redis_url": private_redis_server.url})

    async def readyz() -> tuple[int, dict]:
        response = await http.get(f"{url_of(server)}/readyz")
        return response.status, await response.json()

    async def until(condition) -> tuple[int, dict]:
        deadline = asyncio.get_running_loop().time() + 10
        status, body = await readyz()
        while not condition(status, body) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            status, body = await readyz()
        return status, body

    status, _ = await until(lambda status, _: status == 200)  # listeners hear: ready
    assert status == 200

    async def doomed() -> None:
        raise ConnectionResetError("peer reset")

    server.app[LOOPS].start("doomed", doomed)
    status, body = await until(lambda _, body: body["loops"]["doomed"]["state"] == "failing")
    assert status == 503
    assert body["status"] == "unavailable"
    assert "'doomed'" in body["reason"]
    assert "ConnectionResetError: peer reset" in body["reason"]
    assert body["loops"]["doomed"]["state"] == "failing"
    assert body["loops"]["doomed"]["failures"] >= 3
    assert body["loops"]["lease upkeep"]["state"] == "running"
    metrics = await (await http.get(f"{url_of(server)}/metrics")).text()
    assert 'chatsock_background_loop_restarts_total{loop="doomed"}' in metrics
