"""A reader of the AI SDK's UI message stream (SSE, one JSON chunk per `data:` line),
written for the tests so they pin exactly what the server sends."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson

DONE = "[DONE]"


class UIStreamReader:
    """Reads chunks from an open `x-vercel-ai-ui-message-stream: v1` response."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.chunks: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.done = False

    async def chunk(self, within: float = 10) -> dict[str, Any] | None:
        """The next chunk; None after `data: [DONE]` (which must end the response)."""
        async with asyncio.timeout(within):
            while True:
                raw = await self.response.content.readline()
                assert raw, "the response ended without data: [DONE]"
                assert raw.endswith(b"\n"), raw
                line = raw.decode()[:-1]
                if line == "":
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                assert line.startswith("data: "), line
                data = line[len("data: ") :]
                blank = await self.response.content.readline()
                assert blank == b"\n", f"an event of more than one line: {line!r} {blank!r}"
                if data == DONE:
                    self.done = True
                    assert await self.response.content.read() == b"", "more after [DONE]"
                    return None
                found: dict[str, Any] = orjson.loads(data)
                self.chunks.append(found)
                return found

    async def until(self, kind: str, within: float = 10) -> dict[str, Any]:
        while True:
            found = await self.chunk(within)
            assert found is not None, f"[DONE] before a {kind!r} chunk"
            if found["type"] == kind:
                return found

    async def until_text(self, text: str, within: float = 10) -> None:
        """Until the deltas so far add up to `text` (flushes coalesce deltas)."""
        while self.text() != text:
            assert text.startswith(self.text()), (self.text(), text)
            await self.until("text-delta", within)

    async def until_done(self, within: float = 10) -> list[dict[str, Any]]:
        while await self.chunk(within) is not None:
            pass
        return self.chunks

    def text(self) -> str:
        return "".join(c["delta"] for c in self.chunks if c["type"] == "text-delta")

    def kinds(self) -> list[str]:
        """The chunk types in order, runs of text-delta collapsed to one."""
        kinds: list[str] = []
        for chunk in self.chunks:
            if not (chunk["type"] == "text-delta" and kinds and kinds[-1] == "text-delta"):
                kinds.append(chunk["type"])
        return kinds
