"""Streams over HTTP as Server-Sent Events: every event, heartbeats, resume, disconnect,
and one stream followed over both transports."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from chatsock.app import create_app
from chatsock.providers.base import ProviderStreamError
from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.http import SSE, SSEReader, tokens
from tests.support.waiting import poll_until


def _seqs(items):
    return [t["seq"] for t in items]


async def _start(http, base, body):
    response = await http.post(f"{base}/api/chat/stream", json=body, headers=SSE)
    assert response.status == 200, await response.text()
    return response, SSEReader(response)


async def test_sse_stream_sends_start_tokens_with_seq_ids_and_complete(server, http, fake_provider):
    fake_provider.enqueue("Hello", ", ", "world").sleep(0.05)
    response, reader = await _start(http, url_of(server), {"message": "hi", "session_id": "s1"})
    assert response.headers["Content-Type"] == "text/event-stream"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    events = await reader.until_end()

    start, *middle, done = events
    assert start.event == "chat_stream_start"
    assert start.id is None
    assert start.data["stream_id"] == response.headers["X-Stream-Id"]
    assert start.data["session_id"] == response.headers["X-Session-Id"] == "s1"
    assert start.data["message_id"] == response.headers["X-Message-Id"]
    assert start.data["provider"] == "fake"
    assert start.raw.startswith("event: chat_stream_start\ndata: {")
    assert {e.event for e in middle} == {"chat_token"}
    assert [e.id for e in middle] == [str(t["seq"]) for t in tokens(middle)]
    assert _seqs(tokens(middle)) == list(range(1, len(middle) + 1))
    assert done.event == "chat_complete"
    assert done.id is None
    assert done.data["full_response"] == "Hello, world"
    assert "".join(t["token"] for t in tokens(middle)) == "Hello, world"
    assert done.data["stopped"] is False


async def test_sse_stream_error_event_carries_the_partial_text_and_ends_the_response(
    server, http, fake_provider
):
    fake_provider.enqueue("half").sleep(0.05).fail(ProviderStreamError("reset", provider="fake"))
    _, reader = await _start(http, url_of(server), {"message": "hi"})
    events = await reader.until_end()
    assert [e.event for e in events] == ["chat_stream_start", "chat_token", "chat_stream_error"]
    error = events[-1].data
    assert error["code"] == "provider_error"
    assert error["partial"] == "half"


async def test_sse_sends_ping_comments_while_the_stream_is_idle(start_server, http):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("a")
    gate = script.gate()
    script.text("b")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, http={"sse_heartbeat_s": 0.05}
    )
    _, reader = await _start(http, url_of(server), {"message": "hi"})
    pings = 0
    while pings < 3:
        item = await reader.next()
        assert item is not None
        if item.event == ":":
            assert item.raw == ": ping"
            pings += 1
    assert [e.event for e in reader.events()] == ["chat_stream_start", "chat_token"]
    gate.set()
    rest = await reader.until_end()
    assert rest[-1].data["full_response"] == "ab"


async def test_no_ping_before_the_heartbeat_interval(server, http, fake_provider):
    script = fake_provider.enqueue("a")
    gate = script.gate()
    _, reader = await _start(http, url_of(server), {"message": "hi"})
    await reader.event()
    await reader.event()
    await asyncio.sleep(0.3)  # default interval is 15 s
    gate.set()
    await reader.until_end()
    assert not [e for e in reader.seen if e.event == ":"]


async def _gated_stream(http, base, provider):
    """A stream with a few tokens out, held at a gate, then many more tokens."""
    script = provider.enqueue()
    for i in range(3):
        script.text(f"t{i} ").sleep(0.05)
    gate = script.gate()
    script.text(*[f"u{i} " for i in range(30)])
    _, reader = await _start(http, base, {"message": "hi"})
    start = await reader.event()
    seen = []
    while "".join(t["token"] for t in seen) != "t0 t1 t2 ":
        seen.append((await reader.event()).data)
    return start.data["stream_id"], reader, seen, gate


async def test_resume_by_after_replays_then_follows_without_gap_or_duplicate(
    server, http, fake_provider
):
    base = url_of(server)
    stream_id, first, seen, gate = await _gated_stream(http, base, fake_provider)
    after = seen[0]["seq"]
    resumed = await http.get(f"{base}/api/chat/stream/{stream_id}?after={after}")
    assert resumed.status == 200
    assert resumed.headers["Content-Type"] == "text/event-stream"
    reader = SSEReader(resumed)
    replayed = [(await reader.event()).data for _ in seen[1:]]
    assert replayed == seen[1:]
    gate.set()
    events = await reader.until_end()
    done = events[-1].data
    got = tokens([*reader.events()])
    assert _seqs(got) == list(range(after + 1, after + 1 + len(got)))
    assert "".join(t["token"] for t in seen[:1] + got) == done["full_response"]
    assert (await first.until_end())[-1].data == done


async def test_last_event_id_wins_over_after(server, http, fake_provider):
    base = url_of(server)
    stream_id, _, seen, gate = await _gated_stream(http, base, fake_provider)
    last = seen[-1]["seq"]
    resumed = await http.get(
        f"{base}/api/chat/stream/{stream_id}?after=0", headers={"Last-Event-ID": str(last)}
    )
    reader = SSEReader(resumed)
    gate.set()
    events = await reader.until_end()
    got = tokens(events)
    assert _seqs(got)[0] == last + 1
    assert _seqs(got) == list(range(last + 1, last + 1 + len(got)))
    assert "".join(t["token"] for t in seen + got) == events[-1].data["full_response"]


async def test_resume_after_end_replays_tail_and_terminal_then_closes(server, http, fake_provider):
    fake_provider.enqueue("x").sleep(0.05).text("y").sleep(0.05).text("z")
    _, first = await _start(http, url_of(server), {"message": "hi"})
    original = await first.until_end()
    stream_id = original[0].data["stream_id"]
    resumed = await http.get(f"{url_of(server)}/api/chat/stream/{stream_id}?after=1")
    events = await SSEReader(resumed).until_end()
    assert [e.data for e in events] == [e.data for e in original[2:]]
    assert events[-1].event == "chat_complete"


async def test_resume_races_a_fast_stream_without_gap_or_duplicate(start_server, http):
    provider = ScriptedProvider("fast")
    script = provider.enqueue()
    for i in range(300):
        script.text(f"p{i} ").sleep(0.002)
    server = await start_server(
        chain=["fast"], providers={"fast": provider}, stream={"flush_interval_ms": 1}
    )
    _, first = await _start(http, url_of(server), {"message": "hi"})
    stream_id = (await first.event()).data["stream_id"]
    for _ in range(5):
        await first.event()
    resumed = await http.get(f"{url_of(server)}/api/chat/stream/{stream_id}")
    events = await SSEReader(resumed).until_end(within=20)
    got = tokens(events)
    assert _seqs(got) == list(range(1, len(got) + 1))
    assert "".join(t["token"] for t in got) == events[-1].data["full_response"]


async def test_repeated_client_message_id_replays_the_first_stream(server, http, fake_provider):
    fake_provider.enqueue("once")
    body = {"message": "hi", "session_id": "idem", "client_message_id": "m-1"}
    first, reader = await _start(http, url_of(server), body)
    done = (await reader.until_end())[-1]
    again, reader2 = await _start(http, url_of(server), body)
    assert again.headers["X-Stream-Id"] == first.headers["X-Stream-Id"]
    replay = await reader2.until_end()
    assert [e.event for e in replay] == ["chat_token", "chat_complete"]
    assert replay[-1].data == done.data
    assert len(fake_provider.requests) == 1


# -- client disconnect -------------------------------------------------------
@pytest.fixture
async def run_app_like() -> AsyncIterator[object]:
    """Serve an app like `web.run_app` does: aiohttp does NOT cancel handlers when the
    client disconnects (the test server does), so the SSE writer must notice itself."""
    runners: list[web.AppRunner] = []

    async def serve(app: web.Application) -> str:
        runner = web.AppRunner(app, handler_cancellation=False)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield serve
    for runner in runners:
        await runner.cleanup()


async def _closed_within(provider, seconds):
    return await poll_until(lambda: provider.closed == [True], within=seconds, every=0.01)


@pytest.mark.parametrize("handler_cancellation", [True, False], ids=["test-server", "run_app"])
@pytest.mark.parametrize("accept", ["sse", "json"])
async def test_disconnect_with_stop_on_disconnect_stops_and_closes_upstream_within_500ms(
    start_server, make_settings, run_app_like, http, handler_cancellation, accept
):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("a ")
    gate = script.gate()
    options = {"chain": ["fake"], "stream": {"stop_on_disconnect": True}}
    if handler_cancellation:
        base = url_of(await start_server(providers={"fake": provider}, **options))
    else:
        app = create_app(make_settings(**options), providers={"fake": provider})
        base = await run_app_like(app)
    body = {"message": "hi", "session_id": "gone"}
    if accept == "sse":
        response = await http.post(f"{base}/api/chat/stream", json=body, headers=SSE)
        reader = SSEReader(response)
        await reader.event()
        await reader.event()  # the first token
        assert provider.closed == [False]
        response.close()  # drop the connection
    else:
        # The JSON reply waits for the end; the client gives up first.
        waiting = asyncio.create_task(http.post(f"{base}/api/chat/stream", json=body))
        await asyncio.wait_for(provider.started.wait(), 5)
        await asyncio.sleep(0.05)
        assert provider.closed == [False]
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert await _closed_within(provider, 0.5), "upstream not closed within 500 ms"
    assert not gate.is_set()
    for _ in range(100):
        view = await (await http.get(f"{base}/api/chat/sessions/gone")).json()
        if view["active_stream"] is None:
            break
        await asyncio.sleep(0.02)
    assert view["messages"][-1]["status"] == "stopped"


async def test_disconnect_by_default_lets_the_stream_finish(server, http, fake_provider):
    script = fake_provider.enqueue("a ")
    gate = script.gate()
    script.text("b")
    response, reader = await _start(http, url_of(server), {"message": "hi", "session_id": "on"})
    await reader.event()
    await reader.event()
    response.close()
    await asyncio.sleep(0.1)
    assert fake_provider.closed == [False]
    gate.set()
    for _ in range(100):
        view = await (await http.get(f"{url_of(server)}/api/chat/sessions/on")).json()
        if view["active_stream"] is None:
            break
        await asyncio.sleep(0.02)
    assert view["messages"][-1]["content"] == "a b"
    assert view["messages"][-1]["status"] == "complete"


async def test_one_http_follower_leaving_does_not_stop_a_stream_a_socket_follows(
    start_server, connect, http
):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("a ")
    gate = script.gate()
    script.text("b")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, stream={"stop_on_disconnect": True}
    )
    response, reader = await _start(http, url_of(server), {"message": "hi", "session_id": "two"})
    await reader.event()
    socket = await connect(server)
    assert (await socket.call("session_join", {"session_id": "two"}))["ok"]
    response.close()
    await asyncio.sleep(0.2)
    assert provider.closed == [False]
    gate.set()
    _, done = await socket.wait_terminal(response.headers["X-Stream-Id"])
    assert done["full_response"] == "a b"


# -- one stream, two transports -----------------------------------------------
async def test_stream_started_over_http_is_followed_over_socketio_with_same_seq_and_text(
    server, connect, http, fake_provider
):
    script = fake_provider.enqueue("one ", "two ")
    script.sleep(0.05)
    gate = script.gate()
    script.text("three ", "four")
    _, reader = await _start(http, url_of(server), {"message": "hi", "session_id": "both"})
    stream_id = (await reader.event()).data["stream_id"]
    await reader.event()
    joined_socket = await connect(server)
    joined = await joined_socket.call("session_join", {"session_id": "both"})
    assert joined["active_stream"]["stream_id"] == stream_id
    seen = joined["active_stream"]["seq"]
    resumed_socket = await connect(server)
    reply = await resumed_socket.call("chat_resume", {"stream_id": stream_id, "after": 0})
    assert reply == {"ok": True, "status": "streaming"}
    gate.set()
    http_events = await reader.until_end()
    http_tokens = tokens(reader.events())
    _, joined_done = await joined_socket.wait_terminal(stream_id)
    _, resumed_done = await resumed_socket.wait_terminal(stream_id)
    assert http_events[-1].data == joined_done == resumed_done
    assert resumed_socket.tokens(stream_id) == http_tokens
    assert joined_socket.tokens(stream_id) == http_tokens[seen:]
    assert "".join(t["token"] for t in http_tokens) == "one two three four"


async def test_stream_started_over_socketio_is_followed_over_http_with_same_seq_and_text(
    server, connect, http, fake_provider
):
    script = fake_provider.enqueue("one ", "two ")
    script.sleep(0.05)
    gate = script.gate()
    script.text("three ", "four")
    socket = await connect(server)
    ack = await socket.call("chat_stream", {"message": "hi"})
    stream_id = ack["stream_id"]
    await socket.wait_for(lambda _: socket.tokens(stream_id))
    followed = await http.get(f"{url_of(server)}/api/chat/stream/{stream_id}")
    assert followed.headers["X-Session-Id"] == ack["session_id"]
    reader = SSEReader(followed)
    await reader.event()
    gate.set()
    events = await reader.until_end()
    _, done = await socket.wait_terminal(stream_id)
    assert events[-1].data == done
    assert tokens(reader.events()) == socket.tokens(stream_id)
    assert [e.id for e in reader.events()[:-1]] == [str(t["seq"]) for t in socket.tokens(stream_id)]
