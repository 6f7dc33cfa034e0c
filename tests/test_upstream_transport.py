"""The providers' aiohttp transport: the SDKs build and send, aiohttp reads the body.

Against the loopback fakes of OpenAI and Anthropic: many streams through one
shared session, reads that cut events anywhere, bodies cut mid-event,
connection reuse after a complete stream and none after a cancelled one,
httpx2's exception types for aiohttp's failures, a gzip-encoded body, and
the SDK's own client kept when a proxy is configured.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx2
import pytest
from aiohttp import web

from chatsock.providers.anthropic import AnthropicProvider
from chatsock.providers.base import (
    ChatMessage,
    ChatRequest,
    ProviderConnectionError,
    ProviderStreamError,
    ProviderTimeout,
)
from chatsock.providers.openai import OpenAIProvider
from chatsock.providers.streaming import SSEStreamProvider
from chatsock.providers.transport import AiohttpTransport
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Reply, unused_port
from tests.support.provider_harness import HELLO, collect, drain_into, text_of

KEY = "sk-test-transport-0123456789"
PIECES = [f"tok{i} ñandú 猫 🐈 " for i in range(120)]


class ConnectionCounter:
    """Counts the connections a session opens and reuses (aiohttp's public trace hooks)."""

    def __init__(self) -> None:
        self.created = 0
        self.reused = 0
        self.trace = aiohttp.TraceConfig()
        self.trace.on_connection_create_end.append(self._on_created)
        self.trace.on_connection_reuseconn.append(self._on_reused)

    async def _on_created(self, *_: Any) -> None:
        self.created += 1

    async def _on_reused(self, *_: Any) -> None:
        self.reused += 1


@pytest.fixture
async def openai_fake() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def anthropic_fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
async def counter() -> ConnectionCounter:
    return ConnectionCounter()


@pytest.fixture
async def session(counter: ConnectionCounter) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        trace_configs=[counter.trace],
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
    ) as shared:
        yield shared


def _openai(fake: FakeOpenAI, **options: Any) -> OpenAIProvider:
    return OpenAIProvider(
        "oa", base_url=fake.base_url, api_key=KEY, default_model="m", max_retries=0, **options
    )


def _anthropic(fake: FakeAnthropic, **options: Any) -> AnthropicProvider:
    return AnthropicProvider(
        "an", base_url=fake.base_url, api_key=KEY, default_model="m", max_retries=0, **options
    )


async def _text(provider: SSEStreamProvider, prompt: str = "hi") -> str:
    return text_of(await collect(provider, ChatRequest([ChatMessage("user", prompt)])))


# -- many streams, one session ---------------------------------------------


async def test_many_concurrent_streams_through_one_shared_session_arrive_whole(
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    session: aiohttp.ClientSession,
    counter: ConnectionCounter,
) -> None:
    streams = 60
    for i in range(streams):
        openai_fake.enqueue(Reply(pieces=[f"o{i}-", *PIECES[:20]], gap=0.001))
        anthropic_fake.enqueue(Reply(pieces=[f"a{i}-", *PIECES[:20]], gap=0.001))
    openai = _openai(openai_fake, http_session=session)
    anthropic = _anthropic(anthropic_fake, http_session=session)
    try:
        texts = await asyncio.gather(
            *(_text(openai) for _ in range(streams)), *(_text(anthropic) for _ in range(streams))
        )
        body = "".join(PIECES[:20])
        assert sorted(texts) == sorted(
            [f"o{i}-{body}" for i in range(streams)] + [f"a{i}-{body}" for i in range(streams)]
        )
        # Every connection went back to the pool: the next streams open none.
        opened = counter.created
        assert opened <= 2 * streams
        for _ in range(3):
            assert await _text(openai) == "Hello world"
            assert await _text(anthropic) == "Hello world"
        assert counter.created == opened
    finally:
        await openai.aclose()
        await anthropic.aclose()
    assert not session.closed  # the session's owner closes it, not the providers


# -- reads and event boundaries ---------------------------------------------


@pytest.mark.parametrize("size", [997, 4096, 16384])
async def test_large_reads_cutting_events_anywhere_give_the_same_text(
    openai_fake: FakeOpenAI, anthropic_fake: FakeAnthropic, size: int
) -> None:
    openai_fake.enqueue(Reply(pieces=PIECES, chunk_size=size, gap=0.002))
    anthropic_fake.enqueue(Reply(pieces=PIECES, chunk_size=size, gap=0.002))
    openai, anthropic = _openai(openai_fake), _anthropic(anthropic_fake)
    try:
        assert await _text(openai) == "".join(PIECES)
        assert await _text(anthropic) == "".join(PIECES)
    finally:
        await openai.aclose()
        await anthropic.aclose()


async def test_a_body_written_at_once_is_read_in_a_few_large_chunks(
    openai_fake: FakeOpenAI,
) -> None:
    reply = Reply(pieces=PIECES)
    openai_fake.enqueue(Reply(raw_body=openai_fake.render(reply)))
    async with httpx2.AsyncClient(transport=AiohttpTransport()) as client:
        request = client.build_request("POST", f"{openai_fake.base_url}/chat/completions", json={})
        response = await client.send(request, stream=True)
        chunks = [chunk async for chunk in response.aiter_raw()]
        await response.aclose()
    assert b"".join(chunks) == openai_fake.render(reply)
    # One await per TCP read, whatever it holds: not one per event.
    assert len(chunks) < len(PIECES) // 10


# -- bodies that break --------------------------------------------------------

GOOD_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"par"},"finish_reason":null}]}\n\n'
HALF_CHUNK = b'data: {"choices":[{"index":0,"del'


async def test_a_reset_mid_event_is_a_broken_stream_after_the_partial_not_a_timeout(
    openai_fake: FakeOpenAI,
) -> None:
    openai_fake.enqueue(Reply(raw_body=GOOD_CHUNK + HALF_CHUNK, ending="reset"))
    provider = _openai(openai_fake)
    received: list[str] = []
    try:
        with pytest.raises(ProviderStreamError) as caught:
            await drain_into(received, provider)
    finally:
        await provider.aclose()
    assert received == ["par"]
    assert not isinstance(caught.value, ProviderTimeout)
    assert caught.value.message == "the stream from provider 'oa' broke: RemoteProtocolError"
    assert "\n" not in caught.value.detail
    assert not caught.value.fails_over  # text reached the consumer


async def test_a_reset_mid_event_before_any_text_fails_over(
    anthropic_fake: FakeAnthropic,
) -> None:
    body = anthropic_fake.render(Reply(pieces=["never"]))
    anthropic_fake.enqueue(Reply(raw_body=body[: body.index(b"never") - 20], ending="reset"))
    provider = _anthropic(anthropic_fake)
    try:
        with pytest.raises(ProviderStreamError) as caught:
            await collect(provider)
    finally:
        await provider.aclose()
    assert (caught.value.before_text, caught.value.fails_over) == (True, True)


async def test_a_clean_close_mid_event_is_a_stream_error_after_the_partial(
    openai_fake: FakeOpenAI,
) -> None:
    openai_fake.enqueue(Reply(raw_body=GOOD_CHUNK + HALF_CHUNK))
    provider = _openai(openai_fake)
    received: list[str] = []
    try:
        with pytest.raises(ProviderStreamError):
            await drain_into(received, provider)
    finally:
        await provider.aclose()
    assert received == ["par"]


# -- connections: reused when complete, dropped when cancelled ---------------


async def test_a_complete_stream_leaves_its_connection_for_reuse(
    openai_fake: FakeOpenAI, session: aiohttp.ClientSession, counter: ConnectionCounter
) -> None:
    provider = _openai(openai_fake, http_session=session)
    try:
        assert await _text(provider) == "Hello world"
        assert await _text(provider) == "Hello world"
    finally:
        await provider.aclose()
    assert (counter.created, counter.reused) == (1, 1)


async def test_cancelling_a_stream_closes_its_connection_instead_of_pooling_it(
    openai_fake: FakeOpenAI, session: aiohttp.ClientSession, counter: ConnectionCounter
) -> None:
    openai_fake.enqueue(Reply(pieces=[f"t{i} " for i in range(500)], gap=0.01))
    provider = _openai(openai_fake, http_session=session)
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in provider.stream(HELLO):
            first.set()

    try:
        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await openai_fake.requests[-1].wait_closed()
        assert openai_fake.requests[-1].finished_at is None
        # The next stream cannot get the half-read connection back.
        assert await _text(provider) == "Hello world"
    finally:
        await provider.aclose()
    assert (counter.created, counter.reused) == (2, 0)


async def test_a_finished_stream_whose_upstream_keeps_the_body_open_still_completes(
    openai_fake: FakeOpenAI, session: aiohttp.ClientSession, counter: ConnectionCounter
) -> None:
    # [DONE] came, the chunked terminator never does: the stream ends anyway
    # and the connection, not reusable, is closed.
    body = openai_fake.render(Reply(pieces=["done"]))
    openai_fake.enqueue(Reply(raw_body=body, ending="stall"))
    provider = _openai(openai_fake, http_session=session)
    try:
        deltas = await collect(provider)
        await openai_fake.requests[-1].wait_closed()
        assert await _text(provider) == "Hello world"
    finally:
        await provider.aclose()
    assert text_of(deltas) == "done"
    assert deltas[-1].finish_reason == "stop"
    assert (counter.created, counter.reused) == (2, 0)


# -- aiohttp's failures as httpx2's exceptions --------------------------------


async def test_a_stalled_body_raises_httpx2_read_timeout_and_closes_the_connection(
    openai_fake: FakeOpenAI,
) -> None:
    openai_fake.enqueue(Reply(pieces=["a", "b"], cut_after=1, ending="stall"))
    async with httpx2.AsyncClient(transport=AiohttpTransport(), timeout=0.3) as client:
        request = client.build_request("POST", f"{openai_fake.base_url}/chat/completions", json={})
        response = await client.send(request, stream=True)
        with pytest.raises(httpx2.ReadTimeout):
            async for _ in response.aiter_bytes():
                pass
        await response.aclose()
        await openai_fake.requests[-1].wait_closed()


async def test_connection_refused_is_httpx2_connect_error_caused_by_the_socket_error() -> None:
    url = f"http://127.0.0.1:{unused_port()}/v1/chat/completions"
    async with httpx2.AsyncClient(transport=AiohttpTransport()) as client:
        with pytest.raises(httpx2.ConnectError) as caught:
            await client.post(url, json={})
    causes = []
    error: BaseException | None = caught.value
    while error is not None:
        causes.append(error)
        error = error.__cause__
    assert any(isinstance(cause, ConnectionRefusedError) for cause in causes)


async def test_connection_refused_through_the_sdk_names_the_provider() -> None:
    base_url = f"http://127.0.0.1:{unused_port()}/v1"
    provider = OpenAIProvider("gone", base_url=base_url, api_key=KEY, max_retries=1)
    try:
        with pytest.raises(ProviderConnectionError) as caught:
            await collect(provider)
    finally:
        await provider.aclose()
    assert caught.value.message == "connection refused at provider 'gone'"
    assert KEY not in caught.value.detail


# -- content encoding ----------------------------------------------------------


async def test_a_gzip_encoded_stream_is_decoded_by_the_sdk_client(
    openai_fake: FakeOpenAI,
) -> None:
    plain = openai_fake.render(Reply(pieces=PIECES))
    packed = gzip.compress(plain)

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Content-Encoding": "gzip"}
        )
        await response.prepare(request)
        for start in range(0, len(packed), 500):  # a gzip member cut into pieces
            await response.write(packed[start : start + 500])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    provider = OpenAIProvider(
        "gz", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY, max_retries=0
    )
    try:
        assert await _text(provider) == "".join(PIECES)
    finally:
        await provider.aclose()
        await runner.cleanup()


# -- proxies -------------------------------------------------------------------


async def test_a_proxy_in_the_environment_is_honoured_through_the_sdk_client(
    openai_fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The transport does no proxies, so with one configured the SDK's own
    # httpx2 client is kept: requests go to the proxy (here: nothing listens)...
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{unused_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    through_proxy = _openai(openai_fake)
    # ...unless NO_PROXY exempts the upstream.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    exempt = _openai(openai_fake)
    try:
        with pytest.raises(ProviderConnectionError):
            await collect(through_proxy)
        assert await _text(exempt) == "Hello world"
    finally:
        await through_proxy.aclose()
        await exempt.aclose()
    assert len(openai_fake.requests) == 1  # only the exempt provider's
