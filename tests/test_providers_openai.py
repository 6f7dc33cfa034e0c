"""The openai provider through the official SDK against a loopback fake of the real API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from chatsock.providers.base import (
    ChatMessage,
    ChatRequest,
    ProviderConnectionError,
    ProviderHTTPError,
    ProviderStreamError,
    Usage,
)
from chatsock.providers.openai import OpenAIProvider
from tests.fakes.upstream import FakeOpenAI, Reply, reasoning, unused_port
from tests.support.provider_harness import (
    HELLO,
    ProviderMaker,
    collect,
    drain_into,
    ignored_notes,
    is_activity,
    text_of,
)

MODEL = "fake-model"
SECRET = "sk-test-0123456789abcdef"


@pytest.fixture
async def upstream() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def make_provider(upstream: FakeOpenAI) -> AsyncIterator[ProviderMaker[OpenAIProvider]]:
    defaults = {
        "base_url": upstream.base_url,
        "api_key": SECRET,
        "default_model": MODEL,
        "max_retries": 0,
    }
    maker = ProviderMaker(OpenAIProvider, "primary", defaults)
    yield maker
    await maker.aclose()


@pytest.fixture
def provider(make_provider: ProviderMaker[OpenAIProvider]) -> OpenAIProvider:
    return make_provider()


# -- streaming -------------------------------------------------------------


async def test_streams_text_then_one_final_delta_with_finish_and_usage(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    upstream.enqueue(Reply(pieces=["Hello", ",", " world"], usage=(12, 3)))
    deltas = await collect(provider)
    assert [d.text for d in deltas] == ["Hello", ",", " world", ""]
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage == Usage(input_tokens=12, output_tokens=3)
    assert all(d.finish_reason is None and d.usage is None for d in deltas[:-1])


async def test_role_only_first_chunk_and_empty_deltas_yield_nothing(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    reply = Reply(pieces=["a", "b"], role_chunk=True, empty_deltas=True)
    assert b'"role":"assistant","content":""' in upstream.render(reply, MODEL)
    upstream.enqueue(reply)
    deltas = await collect(provider)
    assert [d.text for d in deltas] == ["a", "b", ""]


async def test_emoji_and_cjk_arrive_intact(upstream: FakeOpenAI, provider: OpenAIProvider) -> None:
    pieces = ["你好", "、世界", " 🎉👩‍👩‍👧", " ok"]
    upstream.enqueue(Reply(pieces=pieces))
    assert text_of(await collect(provider)) == "".join(pieces)


@pytest.mark.parametrize(
    "split_after",
    [
        pytest.param(lambda body: body.index(b"\n\n") + 1, id="between-the-two-newlines"),
        pytest.param(lambda body: body.index(b'"content":"Hi') + 5, id="mid-line"),
        pytest.param(lambda body: body.index(b"data: ", 10) + 3, id="mid-field-name"),
        pytest.param(lambda body: body.index("🎉".encode()) + 2, id="mid-emoji"),
        pytest.param(lambda body: body.index("世".encode()) + 1, id="mid-cjk"),
    ],
)
async def test_chunk_boundaries_anywhere_give_the_same_text(
    upstream: FakeOpenAI,
    provider: OpenAIProvider,
    split_after: Callable[[bytes], int],
) -> None:
    reply = Reply(pieces=["Hi", " 世界", " 🎉"])
    body = upstream.render(reply, MODEL)
    cut = split_after(body)
    reply.split_at = [cut]
    upstream.enqueue(reply)
    deltas = await collect(provider)
    assert text_of(deltas) == "Hi 世界 🎉"
    assert deltas[-1].finish_reason == "stop"


async def test_tiny_chunks_of_three_bytes_give_the_same_text(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    upstream.enqueue(Reply(pieces=["日本語", "🎉", "x"], chunk_size=3, gap=0.001))
    deltas = await collect(provider)
    assert [d.text for d in deltas] == ["日本語", "🎉", "x", ""]


async def test_server_without_usage_or_done_still_completes(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    # Some OpenAI-compatible servers ignore include_usage and close without [DONE].
    upstream.enqueue(Reply(pieces=["ok"], usage=None, send_done=False))
    deltas = await collect(provider)
    assert text_of(deltas) == "ok"
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].usage is None


async def test_done_without_its_blank_line_still_completes(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"length"}]}\n\n'
    upstream.enqueue(Reply(raw_body=body + b"data: [DONE]"))
    deltas = await collect(provider)
    assert text_of(deltas) == "x"
    assert deltas[-1].finish_reason == "length"


@pytest.mark.parametrize(
    ("upstream_reason", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("abort", "error"),
        ("eos_token", "stop"),
    ],
)
async def test_finish_reasons_map_into_the_chatsock_vocabulary(
    upstream: FakeOpenAI, provider: OpenAIProvider, upstream_reason: str, expected: str
) -> None:
    upstream.enqueue(Reply(pieces=["x"], finish_reason=upstream_reason))
    deltas = await collect(provider)
    assert deltas[-1].finish_reason == expected


# -- content that is not plain text ----------------------------------------


async def test_list_content_parts_give_their_text(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    upstream.enqueue(Reply(prelude=[{"content": parts}], pieces=[" there"]))
    deltas = await collect(provider)
    assert [d.text for d in deltas] == ["Hello", " there", ""]
    assert deltas[-1].finish_reason == "stop"


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(42, id="number"),
        pytest.param(1.5, id="float"),
        pytest.param(True, id="bool"),
        pytest.param({"text": "<b>leak</b>"}, id="dict"),
        pytest.param([{"type": "image_url", "image_url": {"url": "x"}}], id="non-text-parts"),
        pytest.param(["<b>leak</b>"], id="list-of-strings"),
        pytest.param([{"type": "text", "text": 7}], id="text-part-with-a-number"),
    ],
)
async def test_non_string_content_yields_nothing_and_the_stream_completes(
    upstream: FakeOpenAI,
    provider: OpenAIProvider,
    content: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    upstream.enqueue(Reply(prelude=[{"content": content}, {"content": content}], pieces=["ok"]))
    deltas = await collect(provider)
    assert all(type(d.text) is str for d in deltas)
    assert [d.text for d in deltas] == ["ok", ""]
    assert deltas[-1].finish_reason == "stop"
    # One warning for the stream, naming the provider, never quoting the content.
    notes = ignored_notes(caplog.records)
    assert len(notes) == 1, notes
    level, message = notes[0]
    assert level == logging.WARNING
    assert "primary" in message
    assert "delta.content" in message
    assert "leak" not in message


async def test_non_string_content_is_logged_once_per_stream_not_once_per_process(
    upstream: FakeOpenAI, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    upstream.enqueue(
        Reply(prelude=[{"content": 1}, {"content": {}}], pieces=["a"]),
        Reply(prelude=[{"content": 2}], pieces=["b"]),
    )
    assert text_of(await collect(provider)) == "a"
    assert text_of(await collect(provider)) == "b"
    assert len(ignored_notes(caplog.records)) == 2


# -- activity without text -------------------------------------------------


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_deltas_stream_as_reasoning_before_the_text(
    upstream: FakeOpenAI, provider: OpenAIProvider, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    upstream.enqueue(Reply(prelude=reasoning("Let me", " think.", field=field), pieces=["Hi"]))
    deltas = await collect(provider)
    assert [(d.reasoning, d.text) for d in deltas] == [
        ("Let me", ""),
        (" think.", ""),
        ("", "Hi"),
        ("", ""),
    ]
    assert deltas[-1].finish_reason == "stop"
    assert ignored_notes(caplog.records) == []  # reasoning is expected, not worth a line


async def test_a_server_sending_reasoning_twice_streams_it_once(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    """OpenRouter repeats each thought in `reasoning` and `reasoning_details`."""
    both = {
        "role": "assistant",
        "content": None,
        "reasoning": "Hmm.",
        "reasoning_details": [{"type": "reasoning.text", "text": "Hmm.", "format": "x"}],
    }
    details_only = {
        "content": None,
        "reasoning_details": [
            {"type": "reasoning.encrypted", "data": "b3BhcXVl"},
            {"type": "reasoning.summary", "summary": " Done."},
        ],
    }
    upstream.enqueue(Reply(prelude=[both, details_only], pieces=["Hi"]))
    deltas = await collect(provider)
    assert "".join(d.reasoning for d in deltas) == "Hmm. Done."
    assert text_of(deltas) == "Hi"


async def test_reasoning_mixed_into_a_content_chunk_comes_first(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    upstream.enqueue(Reply(prelude=[{"content": "A", "reasoning_content": "why A"}], pieces=["B"]))
    deltas = await collect(provider)
    assert [(d.reasoning, d.text) for d in deltas[:3]] == [("why A", ""), ("", "A"), ("", "B")]


async def test_reasoning_that_is_not_text_is_logged_once_and_dropped(
    upstream: FakeOpenAI, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    odd = [{"content": None, "reasoning_content": {"x": 1}}] * 2
    upstream.enqueue(Reply(prelude=odd, pieces=["Hi"]))
    deltas = await collect(provider)
    assert "".join(d.reasoning for d in deltas) == ""
    assert text_of(deltas) == "Hi"
    notes = ignored_notes(caplog.records)
    assert len(notes) == 1, notes
    assert notes[0][0] == logging.WARNING


async def test_usage_reports_reasoning_tokens_and_reasoning_effort_passes_through(
    upstream: FakeOpenAI, make_provider: ProviderMaker[OpenAIProvider]
) -> None:
    provider = make_provider()
    upstream.enqueue(Reply(pieces=["ok"], usage=(12, 40), reasoning_tokens=32))
    request = ChatRequest([ChatMessage("user", "hi")], reasoning_effort="high")
    deltas = await collect(provider, request)
    assert deltas[-1].usage == Usage(12, 40, 32)
    assert upstream.requests[-1].body["reasoning_effort"] == "high"
    upstream.enqueue(Reply(pieces=["ok"]))
    await collect(provider)
    assert "reasoning_effort" not in upstream.requests[-1].body


TOOL_CALL = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}


@pytest.mark.parametrize(
    ("delta", "kind"),
    [
        pytest.param({"tool_calls": [TOOL_CALL]}, "delta.tool_calls", id="tool_calls"),
        pytest.param({"refusal": "I can't help with that."}, "delta.refusal", id="refusal"),
        pytest.param({"function_call": {"name": "f"}}, "delta.function_call", id="function_call"),
    ],
)
async def test_unsupported_parts_are_activity_without_text_and_logged_once(
    upstream: FakeOpenAI,
    provider: OpenAIProvider,
    delta: dict[str, Any],
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    upstream.enqueue(
        Reply(prelude=[delta, delta, delta], pieces=["ok"], finish_reason="tool_calls")
    )
    deltas = await collect(provider)
    assert [d.text for d in deltas] == ["", "", "", "ok", ""]
    assert all(is_activity(d) for d in deltas[:3])
    assert deltas[-1].finish_reason == "tool_calls"
    notes = ignored_notes(caplog.records)
    assert len(notes) == 1, notes
    assert "primary" in notes[0][1]
    assert kind in notes[0][1]


async def test_unknown_delta_fields_yield_nothing_and_are_logged_once(
    upstream: FakeOpenAI, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    future = {"content": None, "audio": {"data": "<b>leak</b>"}}
    upstream.enqueue(Reply(prelude=[future, future], pieces=["ok"]))
    deltas = await collect(provider)
    assert [d.text for d in deltas] == ["ok", ""]
    notes = ignored_notes(caplog.records)
    assert len(notes) == 1, notes
    assert "'audio'" in notes[0][1]
    assert "leak" not in notes[0][1]


async def test_a_flood_of_unknown_fields_logs_a_bounded_number_of_lines(
    upstream: FakeOpenAI, provider: OpenAIProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chatsock.providers")
    upstream.enqueue(Reply(prelude=[{f"field_{i}": 1} for i in range(100)], pieces=["ok"]))
    assert text_of(await collect(provider)) == "ok"
    assert 1 < len(ignored_notes(caplog.records)) <= 20


# -- the request -----------------------------------------------------------


async def test_request_body_carries_model_system_prompt_limits_and_usage_option(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    request = ChatRequest(
        [ChatMessage("user", "hi"), ChatMessage("assistant", "hello"), ChatMessage("user", "more")],
        model="picked-model",
        system_prompt="Be brief.",
        temperature=0.3,
        max_tokens=42,
    )
    await collect(provider, request)
    body = upstream.requests[-1].body
    assert body["model"] == "picked-model"
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "more"},
    ]
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 42
    assert body["temperature"] == 0.3


async def test_defaults_leave_out_unset_options_and_use_the_configured_model(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    await collect(provider)
    body = upstream.requests[-1].body
    assert body["model"] == MODEL
    assert "max_tokens" not in body
    assert "temperature" not in body


async def test_api_key_and_configured_headers_are_sent(
    upstream: FakeOpenAI, make_provider: ProviderMaker[OpenAIProvider]
) -> None:
    provider = make_provider(headers={"X-Team": "chat", "OpenAI-Organization": "org-1"})
    await collect(provider)
    headers = upstream.requests[-1].headers
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert headers["X-Team"] == "chat"
    assert headers["OpenAI-Organization"] == "org-1"


async def test_local_server_without_a_key_gets_a_placeholder(
    upstream: FakeOpenAI, make_provider: ProviderMaker[OpenAIProvider]
) -> None:
    provider = make_provider(api_key=None)
    assert not provider.has_api_key
    assert text_of(await collect(provider)) == "Hello world"
    assert upstream.requests[-1].headers["Authorization"] == "Bearer no-key"


def test_openai_itself_gets_max_completion_tokens() -> None:
    provider = OpenAIProvider("openai", api_key=SECRET)
    body = provider.request_body(ChatRequest([ChatMessage("user", "hi")], max_tokens=5))
    assert provider.base_url == "https://api.openai.com/v1"
    assert body["max_completion_tokens"] == 5
    assert "max_tokens" not in body


# -- failures before the first delta ---------------------------------------


async def test_http_401_fails_over_without_leaking_the_key(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    upstream.enqueue(Reply(status=401, error_message=f"Incorrect API key provided: {SECRET}"))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider)
    error = caught.value
    assert (error.status, error.fails_over, error.retryable) == (401, True, False)
    assert error.provider == "primary"
    assert upstream.base_url in error.detail
    assert upstream.base_url not in error.message
    assert "Incorrect API key provided" in error.message
    assert SECRET not in str(error)
    assert SECRET not in repr(error.__cause__) + repr(error.__context__)


@pytest.mark.parametrize(
    ("retry_after", "seconds"),
    [("7", 7.0), ("1.5", 1.5), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0), (None, None)],
)
async def test_http_429_is_retryable_and_reports_retry_after(
    upstream: FakeOpenAI, provider: OpenAIProvider, retry_after: str | None, seconds: float | None
) -> None:
    upstream.enqueue(Reply(status=429, retry_after=retry_after, error_message="Rate limit"))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider)
    error = caught.value
    assert (error.status, error.fails_over, error.retryable) == (429, True, True)
    assert error.retry_after == seconds


async def test_http_500_is_retryable_and_fails_over(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    upstream.enqueue(Reply(status=500, error_message="The server had an error"))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider)
    assert (caught.value.status, caught.value.fails_over, caught.value.retryable) == (
        500,
        True,
        True,
    )
    assert "The server had an error" in caught.value.message


async def test_http_400_does_not_fail_over(upstream: FakeOpenAI, provider: OpenAIProvider) -> None:
    upstream.enqueue(Reply(status=400, error_message="messages: too long"))
    with pytest.raises(ProviderHTTPError) as caught:
        await collect(provider)
    assert (caught.value.status, caught.value.fails_over, caught.value.retryable) == (
        400,
        False,
        False,
    )


async def test_sdk_retries_a_500_before_streaming_when_configured(
    upstream: FakeOpenAI, make_provider: ProviderMaker[OpenAIProvider]
) -> None:
    provider = make_provider(max_retries=1)
    upstream.enqueue(Reply(status=500, retry_after="0.05"), Reply(pieces=["second try"]))
    assert text_of(await collect(provider)) == "second try"
    assert len(upstream.requests) == 2


async def test_connection_refused_is_a_connection_error_naming_the_provider() -> None:
    base_url = f"http://127.0.0.1:{unused_port()}/v1"
    provider = OpenAIProvider("local", base_url=base_url, max_retries=0, api_key=SECRET)
    try:
        with pytest.raises(ProviderConnectionError) as caught:
            await collect(provider)
    finally:
        await provider.aclose()
    assert caught.value.fails_over
    assert caught.value.provider == "local"
    assert caught.value.message == "connection refused at provider 'local'"
    assert caught.value.detail == f"connection refused at {base_url}"


# -- failures after the first delta ----------------------------------------


async def test_mid_stream_reset_is_a_stream_error_after_the_partial(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    upstream.enqueue(Reply(pieces=["one", "two", "three"], cut_after=2, ending="reset"))
    received: list[str] = []
    with pytest.raises(ProviderStreamError) as caught:
        await drain_into(received, provider)
    assert received == ["one", "two"]
    assert not caught.value.fails_over
    assert not caught.value.before_text
    assert caught.value.provider == "primary"
    assert upstream.base_url in caught.value.detail
    assert upstream.base_url not in caught.value.message


async def test_clean_close_without_finish_reason_is_a_stream_error(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    body = b'data: {"choices":[{"index":0,"delta":{"content":"par"},"finish_reason":null}]}\n\n'
    upstream.enqueue(Reply(raw_body=body))
    received: list[str] = []
    with pytest.raises(ProviderStreamError, match="ended without a finish_reason"):
        await drain_into(received, provider)
    assert received == ["par"]


async def test_error_chunk_after_http_200_is_a_stream_error(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    body = (
        b'data: {"choices":[{"index":0,"delta":{"content":"par"},"finish_reason":null}]}\n\n'
        b'data: {"error":{"message":"model crashed","type":"server_error"}}\n\n'
    )
    upstream.enqueue(Reply(raw_body=body))
    with pytest.raises(ProviderStreamError, match="model crashed") as caught:
        await collect(provider)
    assert not caught.value.fails_over  # text reached the consumer


async def test_malformed_chunk_is_a_stream_error(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    upstream.enqueue(Reply(raw_body=b"data: {not json\n\n"))
    with pytest.raises(ProviderStreamError, match="malformed chunk"):
        await collect(provider)


# -- failures after HTTP 200 but before any text ---------------------------


async def test_error_chunk_before_any_text_fails_over(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    reply = Reply(pieces=["never"], cut_after=0, ending="error_event")
    reply.error_event = ("server_error", "model crashed")
    upstream.enqueue(reply)
    with pytest.raises(ProviderStreamError, match="model crashed") as caught:
        await collect(provider)
    error = caught.value
    assert (error.before_text, error.fails_over, error.retryable) == (True, True, True)
    assert error.provider == "primary"


async def test_error_chunk_after_only_reasoning_still_fails_over(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    # Activity is not text: the user has seen nothing yet.
    upstream.enqueue(Reply(prelude=reasoning("hmm"), cut_after=0, ending="error_event"))
    received: list[str] = []
    with pytest.raises(ProviderStreamError) as caught:
        await drain_into(received, provider)
    assert received == [""]
    assert caught.value.fails_over


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(Reply(pieces=["x"], cut_after=0, ending="reset"), id="reset"),
        pytest.param(Reply(raw_body=b"data: {not json\n\n"), id="malformed"),
        pytest.param(Reply(raw_body=b'data: {"choices":[]}\n\n'), id="cut-short"),
    ],
)
async def test_broken_body_before_any_text_fails_over(
    upstream: FakeOpenAI, provider: OpenAIProvider, reply: Reply
) -> None:
    upstream.enqueue(reply)
    with pytest.raises(ProviderStreamError) as caught:
        await collect(provider)
    assert (caught.value.before_text, caught.value.fails_over) == (True, True)


# -- cancellation ----------------------------------------------------------


async def test_cancelling_the_consumer_closes_the_upstream_within_200ms(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    upstream.enqueue(Reply(pieces=[f"t{i} " for i in range(500)], gap=0.01))
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(HELLO):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    cancelled_at = asyncio.get_running_loop().time()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    closed_at = await upstream.requests[-1].wait_closed()
    assert closed_at - cancelled_at < 0.2
    assert upstream.requests[-1].finished_at is None


async def test_aclose_of_the_stream_closes_the_upstream_within_200ms(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    upstream.enqueue(Reply(pieces=["a", "b"], cut_after=1, ending="stall"))
    stream = provider.stream(HELLO)
    assert (await anext(stream)).text == "a"
    closing_at = asyncio.get_running_loop().time()
    await stream.aclose()
    closed_at = await upstream.requests[-1].wait_closed()
    assert closed_at - closing_at < 0.2


async def test_stall_gives_no_delta_and_the_timed_out_read_closes_the_upstream(
    upstream: FakeOpenAI, provider: OpenAIProvider
) -> None:
    # The runner enforces idle_timeout by cancelling the read; this is that read.
    upstream.enqueue(Reply(pieces=["a", "b"], cut_after=1, ending="stall"))
    stream = provider.stream(HELLO)
    assert (await anext(stream)).text == "a"
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(stream), 0.3)
    timed_out_at = asyncio.get_running_loop().time()
    closed_at = await upstream.requests[-1].wait_closed()
    assert closed_at - timed_out_at < 0.2
    assert upstream.requests[-1].finished_at is None
