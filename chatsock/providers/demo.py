"""The offline `demo` provider: a deterministic reply, streamed at a set pace."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from chatsock.providers.base import ChatRequest, Delta, Provider, Usage

_PIECES = re.compile(r"\s*\S+|\s+")


def demo_reply(message: str) -> str:
    """The reply the demo provider gives to `message` (deterministic)."""
    topic = " ".join(message.split())
    short = topic if len(topic) <= 80 else topic[:77] + "..."
    words = len(topic.split())
    return (
        f'You said: "{short}". That is {words} word{"s" if words != 1 else ""} '
        f"and {len(message)} character{'s' if len(message) != 1 else ''}.\n\n"
        "This reply comes from chatsock's offline **demo** provider, so no API key "
        "or network is needed. It streams a few dozen tokens at a steady pace, "
        "which makes it handy for trying the stop button, reloading mid-reply, "
        "or opening a second tab.\n\n"
        "Here is a small code block, to check that markdown survives streaming:\n\n"
        "```python\n"
        "def echo(message: str) -> str:\n"
        f"    return {short!r}\n"
        "```\n\n"
        "Point `CHATSOCK_PROVIDERS` at `openai` or `anthropic` for real replies."
    )


def demo_reasoning(message: str) -> str:
    """What the demo provider "thinks" before `demo_reply(message)`, when asked to reason."""
    words = len(message.split())
    return (
        f"The user sent {words} word{'s' if words != 1 else ''}. I have no model behind "
        "me, so I will describe the message, say where this reply comes from, and show "
        "a code block so the markdown rendering can be checked."
    )


def split_pieces(text: str) -> list[str]:
    """Split text into word-sized pieces whose concatenation is `text`."""
    return _PIECES.findall(text)


class DemoProvider(Provider):
    """Streams `demo_reply(last user message)` at `tokens_per_second`."""

    kind = "demo"

    def __init__(
        self,
        name: str = "demo",
        *,
        tokens_per_second: float = 40.0,
        model: str = "demo-1",
        reasons: bool = False,
    ) -> None:
        super().__init__(name, default_model=model)
        self.tokens_per_second = tokens_per_second
        self.reasons = reasons

    async def stream(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        pieces = split_pieces(demo_reply(last_user))
        if request.max_tokens is not None:
            pieces = pieces[: request.max_tokens]
        finish = "length" if len(pieces) < len(split_pieces(demo_reply(last_user))) else "stop"
        # Asked to reason (by the request or the provider's config): think aloud first.
        reasons = self.reasons or bool(request.thinking_budget or request.reasoning_effort)
        thoughts = split_pieces(demo_reasoning(last_user)) if reasons else []
        loop = asyncio.get_running_loop()
        interval = 1.0 / self.tokens_per_second
        start = loop.time()
        for index, piece in enumerate([*thoughts, *pieces]):
            # Pace against a schedule so sleeps shorter than a millisecond batch up.
            delay = start + index * interval - loop.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
            yield Delta(reasoning=piece) if index < len(thoughts) else Delta(piece)
        prompt_words = sum(len(m.content.split()) for m in request.messages)
        # Its "thoughts" are output too, counted apart as a reasoning model's are.
        output = len(thoughts) + len(pieces)
        usage = Usage(prompt_words, output, len(thoughts) if thoughts else None)
        yield Delta(finish_reason=finish, usage=usage)
