"""A loopback TCP proxy that drops connections on purpose, for fault tests.

`TcpProxy` listens on a free 127.0.0.1 port and forwards every connection to
a target (a real redis-server, say). Tests break the path in the ways a
network does: `drop_all()` aborts every open connection at once,
`drop_chance` aborts a connection after a forwarded chunk at random, and
`on_forward` sees each chunk a client sends and may cut the connection right
after the chunk reached the server, so the command runs but its reply is lost.
`blackout(seconds)` is a short outage: every connection is dropped and every
new one is cut at its first byte until it ends. `pause()` holds every byte
until `resume()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

__all__ = ["Cut", "TcpProxy"]

_READ = 65536


class Cut(enum.Enum):
    """What `on_forward` asks for after seeing a chunk from the client."""

    KEEP = "keep"  # forward it and carry on
    AFTER = "after"  # forward it, then drop the connection: the reply never arrives
    BEFORE = "before"  # drop the connection without forwarding it


OnForward = Callable[[bytes], Cut]


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client's side, the target's side and their pumps."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = field(default_factory=list)
    dropped: bool = False

    def drop(self) -> None:
        """Abort both sides now (an RST to the client, as a broken network gives)."""
        if self.dropped:
            return
        self.dropped = True
        self.client.transport.abort()
        # The target side closes gracefully: bytes already written to it (a
        # command this link forwarded) still reach the server.
        self.target.close()


class TcpProxy:
    """Forward 127.0.0.1:<port> to `target_host:target_port`, with faults on demand.

    `drop_chance` is the probability that a connection is dropped right after
    any chunk it forwarded (either direction); `seed` makes those drops
    repeatable for a given traffic pattern. Use as `async with TcpProxy(...)`.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        drop_chance: float = 0.0,
        seed: int | str | None = None,
        on_forward: OnForward | None = None,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.drop_chance = drop_chance
        self.on_forward = on_forward
        self.port = 0
        self.accepted = 0
        self.dropped = 0
        self._random = random.Random(seed)
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._dark_until = 0.0

    @property
    def url(self) -> str:
        """`redis://` URL of the proxy (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def drop_all(self) -> int:
        """Abort every open connection now; return how many there were."""
        links = list(self._links)
        for link in links:
            self._drop(link)
        return len(links)

    def blackout(self, seconds: float) -> None:
        """Drop every connection now, and any that sends a byte in the next `seconds`."""
        self._dark_until = max(self._dark_until, self._now() + seconds)
        self.drop_all()

    @property
    def dark(self) -> bool:
        """A blackout is under way."""
        return self._now() < self._dark_until

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def pause(self) -> None:
        """Hold every byte in both directions (connections stay open) until `resume()`."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        """Stop listening, drop every connection and wait for their tasks to end."""
        if self._server is not None:
            self._server.close()
        self._flowing.set()
        self.drop_all()
        tasks = [*self._handlers, *(p for link in self._links for p in link.pumps)]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            # Bounded: it waits for every accepted connection to be gone.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- forwarding ----------------------------------------------------------
    def _drop(self, link: _Link) -> None:
        if not link.dropped:
            self.dropped += 1
        link.drop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            target_reader, target_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            writer.transport.abort()
            return
        except BaseException:
            # Cancelled by close(): an accepted connection left open would hold
            # the server's wait_closed() for ever (one hung a test's teardown).
            writer.transport.abort()
            raise
        link = _Link(writer, target_writer)
        self._links.add(link)
        link.pumps = [
            asyncio.create_task(self._pump(link, reader, target_writer, upstream=True)),
            asyncio.create_task(self._pump(link, target_reader, writer, upstream=False)),
        ]
        try:
            await asyncio.gather(*link.pumps, return_exceptions=True)
        finally:
            self._links.discard(link)
            link.client.transport.abort()
            link.target.transport.abort()

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        upstream: bool,
    ) -> None:
        """Copy `source` to `sink` until either side ends; then end the link."""
        try:
            while not link.dropped:
                data = await source.read(_READ)
                if not data:
                    break
                await self._flowing.wait()
                if link.dropped:
                    break
                if self.dark:
                    self._drop(link)
                    break
                cut = self.on_forward(data) if upstream and self.on_forward else Cut.KEEP
                if cut is Cut.BEFORE:
                    self._drop(link)
                    break
                sink.write(data)
                await sink.drain()
                if cut is Cut.AFTER or (
                    self.drop_chance and self._random.random() < self.drop_chance
                ):
                    self._drop(link)
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            # One side ended: end the other, as a plain TCP relay would.
            if not link.dropped:
                with contextlib.suppress(Exception):
                    sink.close()
                other = link.client if upstream else link.target
                with contextlib.suppress(Exception):
                    other.close()
