"""pytest fixtures for a real redis-server.

`redis_server` is shared by the session; `redis_url` hands each test an
empty database on it (restarting the server if an earlier test left it
stopped). Fault tests that stop or kill Redis use `private_redis_server`,
which nobody else shares.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer, RedisServerMissing


def _new_server() -> RedisServer:
    try:
        return RedisServer().start()
    except RedisServerMissing as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server for the whole session, on a free loopback port."""
    server = _new_server()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the shared redis-server, with every key removed first."""
    redis_server.start()
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def private_redis_server() -> Iterator[RedisServer]:
    """A redis-server for this test alone, free to stop, kill and restart."""
    server = _new_server()
    yield server
    server.close()
