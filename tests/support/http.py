"""A small SSE reader over a real aiohttp client response, written for the tests.

It parses the wire format itself (rather than trusting a library) so the tests
pin exactly what the server sends: `event:`, `data:`, `id:` lines, comment
lines, and the blank line that ends each event.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

SSE = {"Accept": "text/event-stream"}
TERMINAL = ("chat_complete", "chat_stream_error")


@dataclass
class Event:
    """One SSE event, or a comment line (`event == ":"`, `data` the comment text)."""

    event: str
    data: Any
    id: str | None = None
    raw: str = ""


class SSEReader:
    """Reads events from an open `text/event-stream` response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.seen: list[Event] = []

    async def next(self, within: float = 10) -> Event | None:
        """The next event or comment; None at the end of the response."""
        fields: dict[str, str] = {}
        lines: list[str] = []
        async with asyncio.timeout(within):
            while True:
                raw = await self.response.content.readline()
                if not raw:
                    assert not fields, f"response ended mid-event: {lines}"
                    return None
                assert raw.endswith(b"\n"), raw
                line = raw.decode()[:-1]
                if line.startswith(":"):
                    assert not fields, "comment inside an event"
                    event = Event(":", line[1:].strip(), raw=line)
                    self.seen.append(event)
                    return event
                if line == "" and not fields:
                    continue  # the blank line that ends a comment block
                if line == "":
                    event = Event(
                        fields.get("event", "message"),
                        orjson.loads(fields["data"]),
                        fields.get("id"),
                        "\n".join(lines),
                    )
                    self.seen.append(event)
                    return event
                name, _, value = line.partition(":")
                assert name in ("event", "data", "id"), line
                assert name not in fields, f"repeated field {name}: {lines}"
                fields[name] = value[1:] if value.startswith(" ") else value
                lines.append(line)

    async def event(self, within: float = 10) -> Event:
        """The next event, skipping comments."""
        while True:
            found = await self.next(within)
            assert found is not None, "the response ended"
            if found.event != ":":
                return found

    async def until_end(self, within: float = 10) -> list[Event]:
        """Every event (not comments) up to the terminal one; asserts the response then ends."""
        events = []
        while True:
            event = await self.event(within)
            events.append(event)
            if event.event in TERMINAL:
                assert await self.next(within) is None, "more after the terminal event"
                return events

    def events(self) -> list[Event]:
        return [e for e in self.seen if e.event != ":"]


def tokens(events: list[Event]) -> list[Any]:
    return [e.data for e in events if e.event == "chat_token"]
