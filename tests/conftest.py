"""Shared fixtures: settings isolated from the environment, a real server, real clients."""

from __future__ import annotations

import fcntl
import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import create_app
from chatsock.config import Settings, load_settings
from chatsock.providers.base import Provider
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient
from tests.support.leaks import leaked_resources
from tests.support.limits import RELAXED_LIMITS

ROOT = Path(__file__).resolve().parent.parent

pytest_plugins = ["tests.support.fixtures"]  # redis_server, redis_url, private_redis_server


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up the developer's keys, Redis or config."""
    for name in list(os.environ):
        if name.startswith(("CHATSOCK_", "OPENAI_", "ANTHROPIC_")) or name == "REDIS_URL":
            monkeypatch.delenv(name, raising=False)


def pytest_collection_finish(session: pytest.Session) -> None:
    # Everything imported so far lives for the whole run; keeping it out of
    # the collector makes the per-test collection below cheap.
    gc.freeze()


@pytest.fixture(autouse=True)
def _one_stress_test_at_a_time(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """The load tests (marked `stress`) saturate the box by design: each holds a
    lock shared by the run's xdist processes, so they never run together (the
    soak once lost a client on a box saturated by three of them at once)."""
    if request.node.get_closest_marker("stress") is None:
        yield
        return
    lock = tmp_path_factory.getbasetemp().parent / "stress.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # released when the file closes
        yield


@pytest.fixture(autouse=True)
def _no_leaked_resources() -> Iterator[None]:
    """Collect garbage after every test, so a leaked socket or transport fails
    the test that leaked it instead of whichever test the collector runs in."""
    yield
    leaks = leaked_resources()
    if leaks:
        pytest.fail("leaked resources:\n" + "\n".join(leaks))


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    empty = tmp_path / "empty.toml"
    empty.write_text("")

    def make(**overrides: Any) -> Settings:
        # The per-address limits are off unless a test names them (tests/support/limits.py).
        overrides["limits"] = {**RELAXED_LIMITS, **overrides.get("limits", {})}
        return load_settings(empty, **overrides)

    return make


@pytest.fixture
def fake_provider() -> ScriptedProvider:
    return ScriptedProvider("fake")


ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def start_server(
    aiohttp_server: Any, make_settings: Callable[..., Settings]
) -> ServerFactory:
    """Start a real chatsock app on a loopback port: `await start_server(settings, providers)`."""

    async def start(
        settings: Settings | None = None, providers: dict[str, Provider] | None = None, **kw: Any
    ) -> TestServer:
        app = create_app(settings or make_settings(**kw), providers=providers)
        server: TestServer = await aiohttp_server(app)
        return server

    return start


@pytest.fixture
async def server(start_server: ServerFactory, fake_provider: ScriptedProvider) -> TestServer:
    """A server whose default chain is the scripted fake provider."""
    return await start_server(chain=["fake"], providers={"fake": fake_provider})


def url_of(server: TestServer) -> str:
    return f"http://127.0.0.1:{server.port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def clients() -> AsyncIterator[list[RecordingClient]]:
    """Clients a test opens (append them); all closed after it."""
    made: list[RecordingClient] = []
    yield made
    for client in made:
        await client.close()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[TestServer], Awaitable[RecordingClient]]]:
    clients: list[RecordingClient] = []

    async def make(server: TestServer) -> RecordingClient:
        client = await RecordingClient().connect(url_of(server))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
