"""The naive design chatsock is measured against: one Redis-manager emit per SDK chunk.

python-socketio on aiohttp with `AsyncRedisManager` (every emit is published
to Redis and relayed by every worker), the official openai SDK's typed
stream, and one `chat_token` per delta, no coalescing, no token log. It
speaks enough of chatsock's protocol (docs/protocol.md) for the same load
generator: `chat_stream` is acked with `stream_id` and `session_id`, then
the session room gets `chat_stream_start`, `chat_token`s with `seq` from 1
and `chat_complete` with `full_response`.

Usage: python -m bench.baseline --port P --redis-url URL --upstream URL
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import time
from typing import Any

import openai
import socketio
from aiohttp import web


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(9)}"


class Baseline:
    """The Socket.IO server and the streams it runs."""

    def __init__(self, redis_url: str, upstream: str) -> None:
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            client_manager=socketio.AsyncRedisManager(redis_url),
            cors_allowed_origins=[],
        )
        self.client = openai.AsyncOpenAI(base_url=upstream, api_key="x", max_retries=0)
        self.tasks: set[asyncio.Task[None]] = set()
        self.sio.on("chat_stream", self.chat_stream)

    async def chat_stream(self, sid: str, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, dict) or not isinstance(payload.get("message"), str):
            return {"ok": False, "error": {"code": "invalid_request", "message": "message"}}
        session_id = payload.get("session_id") or _id("ses")
        stream_id = _id("st")
        room = f"session:{session_id}"
        await self.sio.enter_room(sid, room)
        task = asyncio.create_task(self._stream(stream_id, session_id, room, payload["message"]))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return {"ok": True, "stream_id": stream_id, "session_id": session_id, "message_id": ""}

    async def _stream(self, stream_id: str, session_id: str, room: str, message: str) -> None:
        ids = {"stream_id": stream_id, "session_id": session_id}
        started = time.monotonic()
        await self.sio.emit("chat_stream_start", {**ids, "provider": "up", "model": "bench"}, room)
        text: list[str] = []
        finish: str | None = None
        try:
            stream = await self.client.chat.completions.create(
                model="bench",
                messages=[{"role": "user", "content": message}],
                stream=True,
                stream_options={"include_usage": True},
            )
            async for chunk in stream:
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                finish = choice.finish_reason or finish
                if choice.delta.content:
                    text.append(choice.delta.content)
                    token = {**ids, "seq": len(text), "token": choice.delta.content}
                    await self.sio.emit("chat_token", {**token, "count": len(text)}, room)
        except openai.OpenAIError as exc:
            error = {**ids, "code": "provider_error", "error": str(exc), "partial": "".join(text)}
            await self.sio.emit("chat_stream_error", {**error, "retryable": False}, room)
            return
        duration = time.monotonic() - started
        await self.sio.emit(
            "chat_complete",
            {
                **ids,
                "message_id": "",
                "full_response": "".join(text),
                "stopped": False,
                "finish_reason": finish,
                "tokens": len(text),
                "duration": duration,
            },
            room,
        )

    def app(self) -> web.Application:
        app = web.Application()
        self.sio.attach(app)
        app.router.add_get("/healthz", self.healthz)
        app.on_cleanup.append(self._close)
        return app

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _close(self, _app: web.Application) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.client.close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--upstream", required=True, help="OpenAI base URL, ending in /v1")
    args = parser.parse_args()
    web.run_app(
        Baseline(args.redis_url, args.upstream).app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    cli()
