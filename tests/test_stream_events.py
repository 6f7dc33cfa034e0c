"""Every stream outcome and error code, pinned over a real Socket.IO connection."""

from __future__ import annotations

import asyncio

import pytest

from chatsock.app import STORE
from chatsock.providers.base import (
    ProviderConnectionError,
    ProviderHTTPError,
    ProviderStreamError,
    Usage,
)
from tests.fakes.provider import ScriptedProvider


async def test_tokens_are_coalesced_with_contiguous_seq(start_server, connect):
    provider = ScriptedProvider("fake")
    pieces = [f"w{i} " for i in range(400)]
    provider.enqueue(*pieces)
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, stream={"flush_interval_ms": 20}
    )
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    event, done = await client.wait_terminal(ack["stream_id"])
    assert event == "chat_complete"
    tokens = client.tokens(ack["stream_id"])
    assert [t["seq"] for t in tokens] == list(range(1, len(tokens) + 1))
    assert "".join(t["token"] for t in tokens) == done["full_response"] == "".join(pieces)
    assert len(tokens) < len(pieces)  # a burst of deltas is coalesced
    assert tokens[-1]["count"] == len(pieces) == done["tokens"]
    assert all("full_response" not in t for t in tokens)


async def test_chat_complete_counts_tokens_as_the_provider_did_and_deltas_apart(
    start_server, connect
):
    """With usage, `output_tokens` and `tokens_per_second` come from the provider's
    count; `deltas` (and the deprecated `tokens`) count text deltas. Without usage,
    the rate falls back to deltas and `output_tokens` is null."""
    provider = ScriptedProvider("fake")
    counted = provider.enqueue("Hello", " world", "!", usage=Usage(5, 30))
    counted.sleep(0.2)
    provider.enqueue("a", "b").sleep(0.2)
    server = await start_server(chain=["fake"], providers={"fake": provider})
    client = await connect(server)
    first = await client.call("chat_stream", {"message": "one"})
    _, done = await client.wait_terminal(first["stream_id"])
    assert done["output_tokens"] == 30
    assert done["deltas"] == done["tokens"] == 3
    assert done["usage"] == {"input_tokens": 5, "output_tokens": 30}
    assert done["tokens_per_second"] == pytest.approx(30 / done["duration"], rel=1e-3)
    second = await client.call("chat_stream", {"message": "two", "session_id": first["session_id"]})
    _, plain = await client.wait_terminal(second["stream_id"])
    assert plain["output_tokens"] is None
    assert plain["deltas"] == 2
    assert plain["tokens_per_second"] == pytest.approx(2 / plain["duration"], rel=1e-2, abs=0.02)


async def test_flush_max_chars_bounds_each_flush(start_server, connect):
    provider = ScriptedProvider("fake")
    gate_free = provider.enqueue(*["abc"] * 30)
    gate_free.sleep(0.3)
    server = await start_server(
        chain=["fake"],
        providers={"fake": provider},
        stream={"flush_interval_ms": 5000, "flush_max_chars": 10},
    )
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    await client.wait_terminal(ack["stream_id"])
    tokens = client.tokens(ack["stream_id"])
    # 90 chars in 3-char deltas: each flush holds 10..12 chars (backpressure at 10).
    assert len(tokens) == 8
    assert all(10 <= len(t["token"]) <= 12 for t in tokens[:-1])
    assert "".join(t["token"] for t in tokens) == "abc" * 30


async def test_stop_completes_stopped_and_persists_stopped(server, connect, fake_provider):
    script = fake_provider.enqueue("one ", "two ")
    gate = script.gate()
    script.text("never")
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    sid = ack["stream_id"]
    await client.wait_for(lambda _: client.tokens(sid))
    assert await client.call("chat_stop", {"stream_id": sid}) == {"ok": True, "stopped": True}
    event, done = await client.wait_terminal(sid)
    assert event == "chat_complete"
    assert done["stopped"] is True
    assert done["finish_reason"] == "stopped"
    assert done["full_response"] == "".join(t["token"] for t in client.tokens(sid)) == "one two "
    assert fake_provider.closed == [True]  # the provider's iterator was closed
    assert not gate.is_set()
    messages = await server.app[STORE].get_messages(ack["session_id"])
    assert [(m.role, m.status, m.content) for m in messages] == [
        ("user", "complete", "go"),
        ("assistant", "stopped", "one two "),
    ]
    # Idempotent: stopping an ended stream says so.
    assert await client.call("chat_stop", {"stream_id": sid}) == {"ok": True, "stopped": False}


async def test_mid_stream_provider_error_sends_exact_partial(server, connect, fake_provider):
    fake_provider.enqueue("partial ", "text").fail(
        ProviderStreamError("connection reset mid-body", provider="fake", retryable=True)
    )
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    event, err = await client.wait_terminal(ack["stream_id"])
    assert event == "chat_stream_error"
    assert err["code"] == "provider_error"
    assert (
        err["partial"]
        == "partial text"
        == "".join(t["token"] for t in client.tokens(ack["stream_id"]))
    )
    assert err["retryable"] is True
    messages = await server.app[STORE].get_messages(ack["session_id"])
    assert (messages[-1].status, messages[-1].content, messages[-1].error_code) == (
        "error",
        "partial text",
        "provider_error",
    )


async def test_failure_before_first_token_fails_over_silently(start_server, connect):
    bad, good = ScriptedProvider("bad"), ScriptedProvider("good", model="good-1")
    bad.enqueue().fail(ProviderHTTPError("HTTP 500", provider="bad", status=500))
    good.enqueue("from good")
    server = await start_server(chain=["bad", "good"], providers={"bad": bad, "good": good})
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    event, done = await client.wait_terminal(ack["stream_id"])
    assert event == "chat_complete"
    assert (done["full_response"], done["provider"], done["model"]) == (
        "from good",
        "good",
        "good-1",
    )
    assert not client.of("chat_stream_error")


async def test_every_provider_failing_is_provider_unavailable(start_server, connect):
    one, two = ScriptedProvider("one"), ScriptedProvider("two")
    one.enqueue().fail(
        ProviderConnectionError("connection refused at http://127.0.0.1:9", provider="one")
    )
    two.enqueue().fail(
        ProviderHTTPError(
            "HTTP 429 rate limited", provider="two", status=429, retryable=True, retry_after=2
        )
    )
    server = await start_server(chain=["one", "two"], providers={"one": one, "two": two})
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    event, err = await client.wait_terminal(ack["stream_id"])
    assert event == "chat_stream_error"
    assert err["code"] == "provider_unavailable"
    assert "one: connection refused" in err["error"]
    assert "two: HTTP 429" in err["error"]
    assert err["partial"] == ""
    assert err["retryable"] is True  # the last provider said 429 + Retry-After


async def test_idle_timeout_after_first_token_is_timeout_with_partial(start_server, connect):
    slow = ScriptedProvider("slow", first_token_timeout=5, idle_timeout=0.2)
    slow.enqueue("first ").sleep(3)
    server = await start_server(chain=["slow"], providers={"slow": slow})
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    event, err = await client.wait_terminal(ack["stream_id"])
    assert (event, err["code"], err["partial"]) == ("chat_stream_error", "timeout", "first ")
    assert slow.closed == [True]


async def test_first_token_timeout_fails_over(start_server, connect):
    stalled = ScriptedProvider("stalled", first_token_timeout=0.2)
    stalled.enqueue().sleep(3)
    backup = ScriptedProvider("backup")
    backup.enqueue("rescued")
    server = await start_server(
        chain=["stalled", "backup"], providers={"stalled": stalled, "backup": backup}
    )
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    event, done = await client.wait_terminal(ack["stream_id"])
    assert (event, done["full_response"], done["provider"]) == (
        "chat_complete",
        "rescued",
        "backup",
    )


async def test_provider_crash_is_internal_and_worker_survives(server, connect, fake_provider):
    fake_provider.enqueue("x").fail(RuntimeError("bug in a provider"))
    fake_provider.enqueue("still fine")
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "go"})
    event, err = await client.wait_terminal(ack["stream_id"])
    assert (event, err["code"], err["partial"]) == ("chat_stream_error", "internal", "x")
    ack2 = await client.call("chat_stream", {"message": "again", "session_id": ack["session_id"]})
    event2, done = await client.wait_terminal(ack2["stream_id"])
    assert (event2, done["full_response"]) == ("chat_complete", "still fine")


async def test_too_many_streams_per_session(server, connect, fake_provider):
    gate = fake_provider.enqueue("a").gate()
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "one", "session_id": "s1"})
    assert ack["ok"]
    second = await client.call("chat_stream", {"message": "two", "session_id": "s1"})
    assert second["ok"] is False
    assert second["error"]["code"] == "too_many_streams"
    gate.set()
    await client.wait_terminal(ack["stream_id"])
    third = await client.call("chat_stream", {"message": "three", "session_id": "s1"})
    assert third["ok"] is True


async def test_client_message_id_is_idempotent(server, connect, fake_provider):
    gate = fake_provider.enqueue("only once").gate()
    client = await connect(server)
    request = {"message": "hi", "session_id": "s2", "client_message_id": "c-1"}
    first = await client.call("chat_stream", request)
    again = await client.call("chat_stream", request)
    assert again == first
    gate.set()
    await client.wait_terminal(first["stream_id"])
    after_end = await client.call("chat_stream", request)
    assert after_end == first
    assert len(fake_provider.requests) == 1
    messages = await server.app[STORE].get_messages("s2")
    assert [m.role for m in messages] == ["user", "assistant"]


async def test_user_message_is_persisted_before_the_provider_is_called(
    server, connect, fake_provider
):
    script = fake_provider.enqueue("reply")
    gate = script.gate()
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "remember me", "session_id": "s3"})
    await asyncio.wait_for(fake_provider.started.wait(), 5)
    stored = await server.app[STORE].get_messages("s3")
    assert [(m.role, m.content) for m in stored] == [("user", "remember me")]
    gate.set()
    await client.wait_terminal(ack["stream_id"])
    stored = await server.app[STORE].get_messages("s3")
    assert [(m.role, m.status, m.content, m.message_id) for m in stored][1] == (
        "assistant",
        "complete",
        "reply",
        ack["message_id"],
    )


async def test_stored_history_and_explicit_history_reach_the_provider(
    server, connect, fake_provider
):
    fake_provider.enqueue("first reply")
    fake_provider.enqueue("second reply")
    fake_provider.enqueue("third reply")
    client = await connect(server)
    ack = await client.call(
        "chat_stream", {"message": "q1", "session_id": "h", "system_prompt": "be brief"}
    )
    await client.wait_terminal(ack["stream_id"])
    ack = await client.call("chat_stream", {"message": "q2", "session_id": "h"})
    await client.wait_terminal(ack["stream_id"])
    second = fake_provider.requests[1]
    assert [(m.role, m.content) for m in second.messages] == [
        ("user", "q1"),
        ("assistant", "first reply"),
        ("user", "q2"),
    ]
    assert fake_provider.requests[0].system_prompt == "be brief"
    ack = await client.call(
        "chat_stream",
        {
            "message": "q3",
            "session_id": "h",
            "history": [{"role": "user", "content": "other"}],
            "temperature": 0.5,
            "max_tokens": 7,
        },
    )
    await client.wait_terminal(ack["stream_id"])
    third = fake_provider.requests[2]
    assert [(m.role, m.content) for m in third.messages] == [("user", "other"), ("user", "q3")]
    assert (third.temperature, third.max_tokens) == (0.5, 7)


async def test_persist_failure_still_completes_with_persist_failed(
    start_server, connect, make_settings
):
    from chatsock.app import create_app
    from tests.fakes.store import FlakyStore

    provider = ScriptedProvider("fake")
    provider.enqueue("said")
    store = FlakyStore()
    app = create_app(make_settings(chain=["fake"]), providers={"fake": provider}, store=store)
    from aiohttp.test_utils import TestServer

    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        client = await connect(server)
        store.fail_assistant_messages = True
        ack = await client.call("chat_stream", {"message": "go"})
        event, done = await client.wait_terminal(ack["stream_id"])
        assert (event, done["full_response"], done["persist_failed"]) == (
            "chat_complete",
            "said",
            True,
        )
        await client.close()
    finally:
        await server.close()
