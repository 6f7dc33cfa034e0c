"""Where the Redis store connects: one server, a master found through Sentinel,
or a Redis Cluster; and the clients `RedisStore` opens there.

`url` is always REDIS_URL. On one server it says everything. With Sentinel it
gives the password, database and TLS (`rediss://` and its `ssl_*` query
parameters) of the master; its host is not used, the sentinels name the
master. With a Cluster it names one node to discover the others from.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

from chatsock.store.urls import mask_url, password_forms

# Options of one connection that the sentinels' own connections share.
_SENTINEL_SHARED = ("socket_timeout", "socket_connect_timeout", "retry", "ssl")


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The master's pool, bounded like the single-server one: a command waits for
    a free connection instead of failing with "Too many connections"."""


class _BoundedCluster(RedisCluster):
    """A cluster client whose commands and pipelines wait (up to `pool_timeout`)
    for one of `max_connections` turns, as the single-server pool makes them wait
    for a connection. redis-py's cluster nodes fail a command at once ("Too
    many connections") when every connection is busy; chatsock's keys all live
    on one node, so one bound for the client is the node's bound."""

    def __init__(self, *, max_connections: int, pool_timeout: float | None, **options: Any):
        # The nodes get headroom for the client's own topology refreshes.
        super().__init__(max_connections=max_connections + 8, **options)
        self._turns = asyncio.Semaphore(max_connections)
        self._turn_timeout = pool_timeout

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self._turn_timeout):
                await self._turns.acquire()
        except TimeoutError:
            raise RedisConnectionError(
                f"Too many connections: none free within {self._turn_timeout}s"
            ) from None
        try:
            yield
        finally:
            self._turns.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._turn():
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> ClusterPipeline:
        return _BoundedPipeline(self, transaction)  # type: ignore[abstract]


class _BoundedPipeline(ClusterPipeline):
    """A pipeline that takes one turn of its `_BoundedCluster` while it runs."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client = cast("_BoundedCluster", self.cluster_client)
        async with client._turn():
            return await super().execute(raise_on_error, allow_redirections)


@dataclass(frozen=True)
class RedisTopology:
    """How to reach Redis (see the module docstring for what `url` gives)."""

    url: str = field(repr=False)
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = ""
    sentinel_password: str | None = field(default=None, repr=False)
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.sentinels and not self.sentinel_master:
            raise ValueError("a Sentinel topology needs the master's name (sentinel_master)")
        if self.sentinels and self.cluster:
            raise ValueError("Redis Cluster and Sentinel cannot be combined")

    def describe(self) -> str:
        """The topology as a log line or an error may show it (passwords masked)."""
        shown = mask_url(self.url)
        if self.sentinels:
            where = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"{shown} (Sentinel master {self.sentinel_master!r} via {where})"
        if self.cluster:
            return f"{shown} (Redis Cluster)"
        return shown

    def secrets(self) -> list[str]:
        """Every form of a password that an error message may show."""
        found = password_forms(self.url)
        if self.sentinel_password:
            found.append(self.sentinel_password)
        return found


class RedisConnections:
    """Opens the store's clients on one topology, and closes them all.

    Each client is typed as `redis.asyncio.Redis`: a `RedisCluster` answers the
    same commands, scripts and pipelines for keys of one hash slot, which is
    all the store sends it (keys.py gives every key one hash tag).
    """

    def __init__(self, topology: RedisTopology) -> None:
        self.topology = topology
        self._opened: list[aioredis.Redis] = []
        self._sentinel: Sentinel | None = None

    def client(
        self,
        *,
        max_connections: int | None = None,
        pool_timeout: float | None = None,
        **options: Any,
    ) -> aioredis.Redis:
        """A client with connection `options` (socket_timeout, retry, ...). With
        `max_connections`, a command waits up to `pool_timeout` for a free
        connection (on a Cluster: for a turn, see `_BoundedCluster`)."""
        t = self.topology
        client: aioredis.Redis
        if t.cluster:
            options.update(parse_url(t.url))
            if options.pop("connection_class", None) is SSLConnection:
                options["ssl"] = True
            cluster = (
                _BoundedCluster(
                    max_connections=max_connections, pool_timeout=pool_timeout, **options
                )
                if max_connections is not None
                else RedisCluster(**options)
            )
            client = cast("aioredis.Redis", cluster)
        elif t.sentinels:
            if max_connections is not None:
                options.update(max_connections=max_connections, timeout=pool_timeout)
                options["connection_pool_class"] = _BlockingSentinelPool
            client = self._sentinels(options).master_for(t.sentinel_master, **options)
        elif max_connections is not None:
            pool = aioredis.BlockingConnectionPool.from_url(
                t.url, max_connections=max_connections, timeout=pool_timeout, **options
            )
            client = aioredis.Redis.from_pool(pool)
        else:
            client = aioredis.Redis.from_url(t.url, **options)
        self._opened.append(client)
        return client

    def _sentinels(self, options: dict[str, Any]) -> Sentinel:
        """The Sentinel manager, made once: the first client's socket options
        (and the URL's TLS) apply to the sentinels too."""
        if self._sentinel is not None:
            return self._sentinel
        t = self.topology
        master = master_options(t.url)
        shared = {**master, **options}
        sentinel_kwargs = {k: shared[k] for k in _SENTINEL_SHARED if k in shared}
        sentinel_kwargs.update({k: v for k, v in master.items() if k.startswith("ssl_")})
        if t.sentinel_password:
            sentinel_kwargs["password"] = t.sentinel_password
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(t.sentinels), sentinel_kwargs=sentinel_kwargs, **master
        )
        return self._sentinel

    async def aclose(self) -> None:
        opened, self._opened = self._opened, []
        for client in opened:
            await client.aclose()
        sentinel, self._sentinel = self._sentinel, None
        if sentinel is not None:
            for client in sentinel.sentinels:
                await client.aclose()


def master_options(url: str) -> dict[str, Any]:
    """The connection options of REDIS_URL without its host: what a Sentinel
    master's connections use (password, db, TLS and its `ssl_*` parameters)."""
    options: dict[str, Any] = dict(parse_url(url))
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return options
