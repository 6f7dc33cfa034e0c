"""Loopback fake upstream servers that speak OpenAI's and Anthropic's streaming APIs.

Each fake is a real aiohttp.web server on 127.0.0.1 that answers
`POST /v1/chat/completions` (OpenAI) or `POST /v1/messages` (Anthropic) with
the providers' wire format byte for byte (shared/FACTS.md). Tests enqueue a
`Reply` per request to script it: text pieces, non-text parts before them
(reasoning, tool calls, odd content), usage, finish reason, an HTTP error, a
mid-stream reset, an in-stream error event, a stall, or an exact chunking of
the raw bytes. Every request is recorded with its JSON body,
headers, and when the client closed the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import orjson
from aiohttp import web
from multidict import CIMultiDict

__all__ = [
    "Block",
    "Ending",
    "FakeAnthropic",
    "FakeOpenAI",
    "RecordedRequest",
    "Reply",
    "reasoning",
    "thinking",
    "unused_port",
]

Ending = Literal["complete", "reset", "stall", "error_event"]


@dataclass(frozen=True)
class Block:
    """An Anthropic content block: its `content_block_start` payload, then its deltas.

    E.g. `Block({"type": "thinking", "thinking": ""}, [{"type": "thinking_delta", ...}])`.
    """

    content_block: dict[str, Any]
    deltas: Sequence[dict[str, Any]] = ()


def reasoning(*steps: str, field: str = "reasoning_content") -> list[dict[str, Any]]:
    """OpenAI-compatible deltas carrying only reasoning, one per step."""
    return [{"role": "assistant", "content": None, field: step} for step in steps]


def thinking(*steps: str) -> Block:
    """An Anthropic thinking block: one thinking_delta per step, then its signature."""
    deltas: list[dict[str, Any]] = [{"type": "thinking_delta", "thinking": s} for s in steps]
    deltas.append({"type": "signature_delta", "signature": "c2lnbmF0dXJl"})
    return Block({"type": "thinking", "thinking": "", "signature": ""}, deltas)


@dataclass
class Reply:
    """One scripted reply to the next request.

    `finish_reason` is in the upstream's own vocabulary ("stop", "length" for
    OpenAI; "end_turn", "max_tokens" ... for Anthropic). `usage` is
    `(input_tokens, output_tokens)` or None to leave it out.
    """

    pieces: Sequence[str] = ()
    # Sent before the pieces, each as the upstream would: an OpenAI `delta`
    # object per chunk (FakeOpenAI), or a content `Block` (FakeAnthropic).
    prelude: Sequence[dict[str, Any] | Block] = ()
    finish_reason: str | None = None
    usage: tuple[int, int] | None = (11, 7)
    # Of the output tokens, how many were reasoning (OpenAI's
    # completion_tokens_details.reasoning_tokens); None: not reported.
    reasoning_tokens: int | None = None
    # An HTTP error instead of a stream: status, JSON error body, Retry-After.
    status: int = 200
    error_message: str = "scripted failure"
    error_type: str | None = None
    retry_after: str | None = None
    # How the stream ends after `cut_after` text pieces (None: after all of them).
    ending: Ending = "complete"
    cut_after: int | None = None
    error_event: tuple[str, str] = ("overloaded_error", "Overloaded")
    # Wire details.
    role_chunk: bool = True
    empty_deltas: bool = False
    send_done: bool = True
    split_at: Sequence[int] | None = None
    chunk_size: int | None = None
    gap: float | None = None  # seconds between writes; None: 10 ms if split, else 0
    raw_body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class RecordedRequest:
    """What the fake saw of one request, and how its connection ended."""

    path: str
    headers: CIMultiDict[str]  # case-insensitive, as HTTP headers are
    body: dict[str, Any]
    started_at: float
    closed_at: float | None = None
    finished_at: float | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait_closed(self, within: float = 5.0) -> float:
        """Wait until the client closes the connection; return the loop time it did."""
        async with asyncio.timeout(within):
            await self.closed.wait()
        assert self.closed_at is not None
        return self.closed_at


class _FakeUpstream:
    """The server, the reply queue and the request log shared by both fakes."""

    path: str
    default_finish: str

    def __init__(self) -> None:
        self.replies: deque[Reply] = deque()
        self.requests: list[RecordedRequest] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What the SDK's `base_url` should be for this fake."""
        raise NotImplementedError

    def enqueue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        # handler_cancellation: a client that goes away cancels the handler,
        # which is how the fake learns exactly when the connection closed.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def render(self, reply: Reply, model: str = "fake-model") -> bytes:
        """The exact body bytes `reply` streams (to pick `split_at` offsets in tests)."""
        frames, _ = self._frames(reply, model)
        return b"".join(frames)

    # -- subclasses --------------------------------------------------------

    def _frames(self, reply: Reply, model: str) -> tuple[list[bytes], Ending]:
        raise NotImplementedError

    def _error_body(self, reply: Reply) -> dict[str, Any]:
        raise NotImplementedError

    # -- serving -----------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        body = orjson.loads(await request.read())
        record = RecordedRequest(request.path, CIMultiDict(request.headers), body, loop.time())
        self.requests.append(record)
        reply = self.replies.popleft() if self.replies else Reply(pieces=["Hello", " world"])
        if reply.status != 200:
            headers = dict(reply.headers)
            if reply.retry_after is not None:
                headers["Retry-After"] = reply.retry_after
            return web.json_response(self._error_body(reply), status=reply.status, headers=headers)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                **reply.headers,
            }
        )
        try:
            await response.prepare(request)
            if reply.raw_body is not None:
                frames, ending = [reply.raw_body], reply.ending
            else:
                frames, ending = self._frames(reply, str(body.get("model", "fake-model")))
            await self._write(response, frames, reply)
            if ending == "reset":
                assert request.transport is not None
                request.transport.abort()
                record.closed_at = loop.time()
                record.closed.set()
                return response
            if ending == "stall":
                await asyncio.Future()  # No more bytes until the client gives up.
            await response.write_eof()
            record.finished_at = loop.time()
        except (asyncio.CancelledError, ConnectionResetError):
            record.closed_at = loop.time()
            record.closed.set()
            raise
        return response

    async def _write(self, response: web.StreamResponse, frames: list[bytes], reply: Reply) -> None:
        writes = frames
        if reply.split_at is not None or reply.chunk_size is not None:
            raw = b"".join(frames)
            if reply.split_at is not None:
                cuts = [0, *reply.split_at, len(raw)]
            else:
                assert reply.chunk_size is not None
                cuts = [*range(0, len(raw), reply.chunk_size), len(raw)]
            writes = [raw[a:b] for a, b in itertools.pairwise(cuts) if b > a]
        # With several writes and no gap, the kernel may merge them into one read;
        # a split is only meaningful if each piece is its own TCP read.
        gap = reply.gap if reply.gap is not None else (0.01 if writes is not frames else 0.0)
        for piece in writes:
            await response.write(piece)
            if gap:
                await asyncio.sleep(gap)

    def _cut(self, reply: Reply) -> int:
        return len(reply.pieces) if reply.cut_after is None else reply.cut_after


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class FakeOpenAI(_FakeUpstream):
    """OpenAI chat completions: `data: {chunk}\\n\\n` ... `data: [DONE]\\n\\n`."""

    path = "/v1/chat/completions"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/v1"

    def _error_body(self, reply: Reply) -> dict[str, Any]:
        kind = reply.error_type or ("rate_limit_exceeded" if reply.status == 429 else "api_error")
        return {
            "error": {"message": reply.error_message, "type": kind, "param": None, "code": None}
        }

    def _frames(self, reply: Reply, model: str) -> tuple[list[bytes], Ending]:
        chunk_id = "chatcmpl-fake"
        include_usage = reply.usage is not None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload: dict[str, Any] = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if include_usage:
                payload["usage"] = None
            return _data(payload)

        frames: list[bytes] = []
        if reply.role_chunk:
            frames.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        for delta in reply.prelude:
            assert isinstance(delta, dict), "FakeOpenAI's prelude holds delta objects"
            frames.append(chunk(delta))
        cut = self._cut(reply)
        for piece in reply.pieces[:cut]:
            frames.append(chunk({"content": piece}))
            if reply.empty_deltas:
                frames.append(chunk({"content": ""}))
                frames.append(chunk({}))
        if reply.ending == "error_event":
            # As vLLM and proxies report a failure after HTTP 200.
            kind, text = reply.error_event
            frames.append(_data({"error": {"message": text, "type": kind, "code": None}}))
            return frames, "complete"
        if reply.ending != "complete":
            return frames, reply.ending
        frames.append(chunk({}, reply.finish_reason or "stop"))
        if reply.usage is not None:
            prompt, completion = reply.usage
            frames.append(
                _data(
                    {
                        "id": chunk_id,
                        "object": "chat.completion.chunk",
                        "created": 1700000000,
                        "model": model,
                        "system_fingerprint": "fp_fake",
                        "choices": [],
                        "usage": {
                            "prompt_tokens": prompt,
                            "completion_tokens": completion,
                            "total_tokens": prompt + completion,
                            **(
                                {}
                                if reply.reasoning_tokens is None
                                else {
                                    "completion_tokens_details": {
                                        "reasoning_tokens": reply.reasoning_tokens
                                    }
                                }
                            ),
                        },
                    }
                )
            )
        if reply.send_done:
            frames.append(b"data: [DONE]\n\n")
        return frames, "complete"


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\n" + _data(payload)


class FakeAnthropic(_FakeUpstream):
    """Anthropic messages: named events from message_start to message_stop, ping included."""

    path = "/v1/messages"

    @property
    def base_url(self) -> str:
        # The anthropic SDK appends /v1/messages itself.
        return self.origin

    def _error_body(self, reply: Reply) -> dict[str, Any]:
        kinds = {401: "authentication_error", 429: "rate_limit_error", 529: "overloaded_error"}
        kind = reply.error_type or kinds.get(reply.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": reply.error_message}}

    def _frames(self, reply: Reply, model: str) -> tuple[list[bytes], Ending]:
        input_tokens, output_tokens = reply.usage or (0, 0)
        message: dict[str, Any] = {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        }
        frames = [_event("message_start", {"type": "message_start", "message": message})]
        blocks = [*reply.prelude, Block({"type": "text", "text": ""})]
        for index, block in enumerate(blocks):
            assert isinstance(block, Block), "FakeAnthropic's prelude holds Blocks"
            frames.append(
                _event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": block.content_block,
                    },
                )
            )
            if index == 0:
                # Anthropic pings after the first block starts, with a space after the colon.
                frames.append(b'event: ping\ndata: {"type": "ping"}\n\n')
            deltas = list(block.deltas)
            if index == len(blocks) - 1:
                cut = self._cut(reply)
                deltas += [{"type": "text_delta", "text": piece} for piece in reply.pieces[:cut]]
            frames.extend(
                _event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
                for delta in deltas
            )
            if index < len(blocks) - 1:
                frames.append(
                    _event("content_block_stop", {"type": "content_block_stop", "index": index})
                )
        text_index = len(blocks) - 1
        if reply.ending == "error_event":
            kind, text = reply.error_event
            frames.append(
                _event("error", {"type": "error", "error": {"type": kind, "message": text}})
            )
            return frames, "complete"
        if reply.ending != "complete":
            return frames, reply.ending
        frames.append(
            _event("content_block_stop", {"type": "content_block_stop", "index": text_index})
        )
        frames.append(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": reply.finish_reason or "end_turn",
                        "stop_sequence": None,
                    },
                    "usage": {"output_tokens": output_tokens},
                },
            )
        )
        frames.append(_event("message_stop", {"type": "message_stop"}))
        return frames, "complete"


def unused_port() -> int:
    """A loopback port nothing listens on (for connection-refused tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
