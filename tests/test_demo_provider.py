"""The offline demo provider: deterministic, markdown with a code block, paced."""

from __future__ import annotations

import time

from chatsock.providers.base import ChatMessage, ChatRequest
from chatsock.providers.demo import DemoProvider, demo_reply, split_pieces


async def _collect(provider: DemoProvider, request: ChatRequest):
    return [delta async for delta in provider.stream(request)]


async def test_demo_reply_is_deterministic_and_mentions_the_message():
    provider = DemoProvider(tokens_per_second=100000)
    request = ChatRequest([ChatMessage("user", "tell me about rivers")])
    first = await _collect(provider, request)
    second = await _collect(provider, request)
    text = "".join(d.text for d in first)
    assert text == "".join(d.text for d in second) == demo_reply("tell me about rivers")
    assert "rivers" in text
    assert "```python" in text
    assert text.count("```") == 2
    assert first[-1].finish_reason == "stop"
    assert first[-1].usage is not None


def test_split_pieces_round_trips():
    text = demo_reply("héllo 世界 🙂")
    assert "".join(split_pieces(text)) == text


async def test_demo_pace_follows_tokens_per_second():
    provider = DemoProvider(tokens_per_second=200)
    request = ChatRequest([ChatMessage("user", "x")])
    started = time.monotonic()
    deltas = await _collect(provider, request)
    elapsed = time.monotonic() - started
    # N pieces at 200/s take about (N-1)/200 s; generous bounds.
    assert elapsed >= (len(deltas) - 3) / 200 * 0.8


async def test_demo_respects_max_tokens():
    provider = DemoProvider(tokens_per_second=100000)
    deltas = await _collect(provider, ChatRequest([ChatMessage("user", "x")], max_tokens=3))
    assert len([d for d in deltas if d.text]) == 3
    assert deltas[-1].finish_reason == "length"
