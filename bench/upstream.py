"""A paced fake OpenAI Chat Completions upstream that stamps every delta with its send time.

Run as a process of its own (`python -m bench.upstream --port P`) so its CPU
is not a worker's. The user message picks the reply: `... n=<tokens>
r=<tokens per second> ...`. The first delta is written as soon as the request
arrives; the others follow at `r` per second, each a short ASCII word, then a
chunk with `finish_reason` and `usage`, then `data: [DONE]`.

One clock drives every stream (a tick every `TICK_S`), so 10k deltas a second
cost writes, not timers. For each stream (keyed by its user message)
`GET /stamps` returns when the request arrived, and for every delta the
character offset where it ends and the wall-clock time (`time.time()` in ms)
just before it was written: the load generator's receive times, taken on the
same clock, give the added latency of each character.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

TICK_S = 0.002
_PARAM = re.compile(r"\b([nr])=(\d+(?:\.\d+)?)")


def word(i: int) -> str:
    """The text of delta `i`: short, ASCII (JS and Python count it alike), unique in a stream."""
    return f"w{i} "


def params(message: str) -> tuple[int, float]:
    """(tokens, tokens per second) named in a bench message; (20, 20.0) by default."""
    found = dict(_PARAM.findall(message))
    return int(found.get("n", 20)), float(found.get("r", 20))


def last_user_message(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            content: str = message["content"]
            return content
    return ""


@dataclass(eq=False)
class Stream:
    """One streaming response being paced, and its stamps."""

    response: web.StreamResponse
    model: str
    tokens: int
    interval: float
    received_ms: float
    next_at: float = 0.0
    sent: int = 0
    offset: int = 0
    stamps: list[tuple[int, float]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return b"data: " + orjson.dumps(payload) + b"\n\n"

    def next_word(self) -> bytes:
        text = word(self.sent)
        self.sent += 1
        self.offset += len(text)
        self.stamps.append((self.offset, time.time() * 1000))
        return self.chunk({"content": text})

    def ending(self) -> bytes:
        usage = {
            "prompt_tokens": 5,
            "completion_tokens": self.tokens,
            "total_tokens": 5 + self.tokens,
        }
        last = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
                "model": self.model, "choices": [], "usage": usage}  # fmt: skip
        return self.chunk({}, "stop") + b"data: " + orjson.dumps(last) + b"\n\ndata: [DONE]\n\n"


class PacedUpstream:
    """The server: paced streams, one clock, and the stamps of every stream."""

    def __init__(self) -> None:
        self.pacing: list[Stream] = []
        self.stamps: dict[str, dict[str, Any]] = {}
        self._clock: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completions)
        app.router.add_get("/stamps", self.get_stamps)
        app.router.add_get("/healthz", self.healthz)
        app.cleanup_ctx.append(self._clock_ctx)
        return app

    async def _clock_ctx(self, _app: web.Application) -> Any:
        self._clock = asyncio.create_task(self._tick())
        yield
        self._clock.cancel()
        await asyncio.gather(self._clock, return_exceptions=True)

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def get_stamps(self, request: web.Request) -> web.Response:
        body = orjson.dumps(self.stamps)
        if request.query.get("clear"):
            self.stamps = {}
        return web.Response(body=body, content_type="application/json")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        received_ms = time.time() * 1000
        body = orjson.loads(await request.read())
        message = last_user_message(body)
        tokens, rate = params(message)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        stream = Stream(response, str(body.get("model", "bench")), tokens, 1 / rate, received_ms)
        self.stamps[message] = {"received_ms": received_ms, "deltas": stream.stamps}
        # The first delta at once: the time to first token is then all the server's.
        await response.write(
            stream.chunk({"role": "assistant", "content": ""}) + stream.next_word()
        )
        if stream.sent < tokens:
            stream.next_at = time.monotonic() + stream.interval
            self.pacing.append(stream)
        else:
            await self._finish(stream)
        await stream.done.wait()
        return response

    async def _finish(self, stream: Stream) -> None:
        try:
            await stream.response.write(stream.ending())
            await stream.response.write_eof()
        finally:
            stream.done.set()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            # Streams arriving while this tick writes join the next one.
            pacing, self.pacing = self.pacing, []
            for stream in pacing:
                try:
                    while stream.sent < stream.tokens and stream.next_at <= now:
                        await stream.response.write(stream.next_word())
                        stream.next_at += stream.interval
                    if stream.sent >= stream.tokens:
                        await self._finish(stream)
                    else:
                        self.pacing.append(stream)
                except (ConnectionError, RuntimeError):
                    stream.done.set()  # The client went away; its handler returns.


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(PacedUpstream().app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    cli()
