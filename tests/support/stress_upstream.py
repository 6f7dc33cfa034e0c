"""A fake OpenAI upstream whose reply depends on the user's message, for stress tests.

The first word of the last user message picks the reply:

- `fail500 ...`: HTTP 500 before any text;
- `failmid ...`: some text, then the connection is reset mid-stream;
- `long ...`: hundreds of quick pieces (a reply that outlives short TTLs);
- `odd ...`: a short reply whose text chunks are mixed with chunks whose
  `content` is not a string: a list of text parts (its text counts), a list of
  non-text parts, a number (both carry no text);
- anything else: a short reply, paced so that many streams overlap.

Piece counts and pacing follow from the message itself (a seeded RNG), so a
stress run is repeatable, and every piece is unique, so the test can check
that a reply is exactly what the upstream sent. `sent[message]` is the full
text the upstream streams for that message (text only: what the server must
relay), `calls[message]` how often it was asked.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from tests.fakes.upstream import FakeOpenAI, Reply

__all__ = ["LONG_PIECES", "StressUpstream", "user_message"]

LONG_PIECES = 300


def user_message(body: dict[str, Any]) -> str:
    """The content of the last user message of a chat completions request."""
    for message in reversed(body.get("messages", [])):
        if message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else str(content)
    return ""


class StressUpstream(FakeOpenAI):
    """FakeOpenAI choosing each reply from the request's user message (see module doc)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: dict[str, str] = {}
        self.calls: Counter[str] = Counter()

    def reply_for(self, message: str) -> Reply:
        kind = message.split(" ", 1)[0]
        rng = random.Random(message)
        tag = f"{rng.randrange(36**4):04x}"
        if kind == "fail500":
            return Reply(status=500, error_message="scripted upstream failure")
        if kind == "long":
            pieces = [f"{tag}.{i} " for i in range(LONG_PIECES)]
            return Reply(pieces=pieces, gap=0.02)
        count = rng.randrange(8, 30)
        pieces = [f"{tag}.{i} " for i in range(count)]
        gap = rng.uniform(0.03, 0.07)
        if kind == "failmid":
            return Reply(pieces=pieces, ending="reset", cut_after=rng.randrange(2, count), gap=gap)
        if kind == "odd":
            return Reply(prelude=_mixed(pieces, tag, rng), gap=gap)
        return Reply(pieces=pieces, gap=gap)

    def _text(self, reply: Reply) -> str:
        if reply.status != 200:
            return ""
        cut = len(reply.pieces) if reply.cut_after is None else reply.cut_after
        prelude = "".join(_text_of(d["content"]) for d in reply.prelude if isinstance(d, dict))
        return prelude + "".join(reply.pieces[:cut])

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        message = user_message(orjson.loads(await request.read()))
        reply = self.reply_for(message)
        self.sent[message] = self._text(reply)
        self.calls[message] += 1
        # The base handler pops the next queued reply. Nothing awaits between this
        # line and that pop (the body is already read, so its read() returns at
        # once), so concurrent requests cannot take each other's reply.
        self.replies.appendleft(reply)
        return await super()._handle(request)


def _mixed(pieces: list[str], tag: str, rng: random.Random) -> list[dict[str, Any]]:
    """Deltas of `pieces` with a `delta.content` that is not a string after every
    few of them (the first one before any text), as some OpenAI-compatible
    servers send: text as a list of parts (its text counts), a list of
    non-text parts, a list of bare strings, a number (these carry no text)."""
    odd: list[Any] = [
        [{"type": "text", "text": f"{tag}.part "}],
        [{"type": "image_url", "image_url": {"url": "data:,"}}],
        ["x"],
        7,
    ]
    rng.shuffle(odd)
    deltas: list[dict[str, Any]] = [{"content": odd.pop()}]
    for i, piece in enumerate(pieces):
        deltas.append({"content": piece})
        if odd and i % 3 == 1:
            deltas.append({"content": odd.pop()})
    deltas += [{"content": content} for content in odd]
    return deltas


def _text_of(content: Any) -> str:
    """The text a delta's `content` carries: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""
