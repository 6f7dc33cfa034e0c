"""Real Socket.IO clients that record every event they receive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import socketio


class RecordingClient:
    """python-socketio's AsyncClient plus a log of received events and a way to await them."""

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Condition()

        self.disconnected = asyncio.Event()

        self.connect_errors: list[Any] = []

        @self.sio.event
        async def disconnect(reason: Any = None) -> None:
            self.disconnected.set()

        @self.sio.event
        async def connect_error(data: Any = None) -> None:
            self.connect_errors.append(data)

        @self.sio.on("*")
        async def _any(event: str, data: Any = None) -> None:
            async with self._changed:
                self.events.append((event, data))
                self._changed.notify_all()

    async def connect(
        self, url: str, *, auth: Any = None, headers: dict[str, str] | None = None
    ) -> RecordingClient:
        await self.sio.connect(
            url, transports=["websocket"], wait_timeout=10, auth=auth, headers=headers or {}
        )
        return self

    async def call(self, event: str, data: Any = None, within: float = 10) -> Any:
        return await self.sio.call(event, data, timeout=within)

    def of(self, event: str, stream_id: str | None = None) -> list[Any]:
        return [
            d
            for e, d in self.events
            if e == event
            and (stream_id is None or (isinstance(d, dict) and d.get("stream_id") == stream_id))
        ]

    async def wait_for(
        self, predicate: Callable[[list[tuple[str, Any]]], Any], within: float = 10
    ) -> Any:
        async with asyncio.timeout(within):
            async with self._changed:
                while True:
                    found = predicate(self.events)
                    if found:
                        return found
                    await self._changed.wait()

    async def wait_event(self, event: str, stream_id: str | None = None, within: float = 10) -> Any:
        found = await self.wait_for(lambda _: self.of(event, stream_id), within)
        return found[0]

    async def wait_terminal(self, stream_id: str, within: float = 10) -> tuple[str, Any]:
        def terminal(events: list[tuple[str, Any]]) -> tuple[str, Any] | None:
            for event, data in events:
                if (
                    event in ("chat_complete", "chat_stream_error")
                    and data.get("stream_id") == stream_id
                ):
                    return event, data
            return None

        return await self.wait_for(terminal, within)  # type: ignore[no-any-return]

    def tokens(self, stream_id: str) -> list[Any]:
        return self.of("chat_token", stream_id)

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()


async def connected(clients: list[RecordingClient], url: str) -> RecordingClient:
    """A client connected to `url`, added to `clients` (which the test closes)."""
    client = await RecordingClient().connect(url)
    clients.append(client)
    return client
