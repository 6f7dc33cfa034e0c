"""The HTTP API's JSON side: replies, stop, the active list, sessions, errors, health."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from chatsock.app import create_app
from chatsock.errors import ERROR_CODES
from chatsock.http_api import STATUS_BY_CODE
from chatsock.providers.base import ProviderConnectionError, ProviderStreamError
from chatsock.store import StoreUnavailable
from chatsock.store.memory import MemoryStore
from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.http import SSE, SSEReader


async def _json(response: aiohttp.ClientResponse) -> dict:
    assert response.content_type == "application/json", await response.text()
    return await response.json()


async def _gated(http, base, provider, session_id):
    """Start an SSE stream held at a gate after its first token."""
    script = provider.enqueue("first ")
    gate = script.gate()
    script.text("second")
    response = await http.post(
        f"{base}/api/chat/stream",
        json={"message": f"hello from {session_id}", "session_id": session_id},
        headers=SSE,
    )
    reader = SSEReader(response)
    await reader.event()
    await reader.event()
    return response.headers["X-Stream-Id"], reader, gate


# -- the JSON reply ------------------------------------------------------------
@pytest.mark.parametrize("accept", [None, "application/json", "*/*"])
async def test_post_without_sse_accept_waits_and_returns_chat_complete(
    server, http, fake_provider, accept
):
    fake_provider.enqueue("Hello", " there")
    headers = {"Accept": accept} if accept else {}
    response = await http.post(
        f"{url_of(server)}/api/chat/stream",
        json={"message": "hi", "session_id": "j1"},
        headers=headers,
    )
    assert response.status == 200
    body = await _json(response)
    assert body["full_response"] == "Hello there"
    assert body["stopped"] is False
    assert body["session_id"] == "j1"
    assert body["stream_id"] == response.headers["X-Stream-Id"]
    assert set(body) >= {"message_id", "tokens", "duration", "provider", "model", "usage"}


async def test_json_reply_of_a_failed_stream_is_an_error_with_status_and_partial(
    server, http, fake_provider
):
    fake_provider.enqueue("half").fail(ProviderStreamError("reset", provider="fake"))
    response = await http.post(f"{url_of(server)}/api/chat/stream", json={"message": "hi"})
    assert response.status == 502
    body = await _json(response)
    assert body["error"]["code"] == "provider_error"
    assert body["error"]["message"]
    assert body["partial"] == "half"
    assert body["stream_id"] == response.headers["X-Stream-Id"]


async def test_every_provider_failing_is_503_provider_unavailable(start_server, http):
    first, second = ScriptedProvider("a"), ScriptedProvider("b")
    for provider in (first, second):
        provider.enqueue().fail(ProviderConnectionError("refused", provider=provider.name))
    server = await start_server(chain=["a", "b"], providers={"a": first, "b": second})
    response = await http.post(f"{url_of(server)}/api/chat/stream", json={"message": "hi"})
    assert response.status == 503
    body = await _json(response)
    assert body["error"]["code"] == "provider_unavailable"
    assert "a: refused" in body["error"]["message"]


# -- stop and the active list -------------------------------------------------------
async def test_stop_ends_the_stream_with_stopped_complete_and_is_idempotent(
    server, http, fake_provider
):
    base = url_of(server)
    stream_id, reader, gate = await _gated(http, base, fake_provider, "stop")
    response = await http.post(f"{base}/api/chat/stream/stop", json={"stream_id": stream_id})
    assert response.status == 200
    assert await _json(response) == {"ok": True, "stopped": True}
    done = (await reader.until_end())[-1]
    assert done.event == "chat_complete"
    assert done.data["stopped"] is True
    assert done.data["full_response"] == "first "
    assert not gate.is_set()
    again = await http.post(f"{base}/api/chat/stream/stop", json={"stream_id": stream_id})
    assert await _json(again) == {"ok": True, "stopped": False}


async def test_stop_unknown_stream_is_404(server, http):
    response = await http.post(
        f"{url_of(server)}/api/chat/stream/stop", json={"stream_id": "st_missing"}
    )
    assert response.status == 404
    body = await _json(response)
    assert body["error"]["code"] == "not_found"
    assert body["error"]["message"].startswith("stream_id")


async def test_active_list_shows_running_streams_then_none(server, http, fake_provider):
    base = url_of(server)
    stream_id, reader, gate = await _gated(http, base, fake_provider, "act")
    body = await _json(await http.get(f"{base}/api/chat/stream/active"))
    assert body["count"] == 1
    (entry,) = body["streams"]
    assert entry["stream_id"] == stream_id
    assert entry["session_id"] == "act"
    assert entry["seq"] == 1
    assert entry["provider"] == "fake"
    assert entry["model"] == "fake-1"
    assert entry["started_at"].endswith("Z")
    other = await _json(await http.get(f"{base}/api/chat/stream/active?session_id=other"))
    assert other == {"streams": [], "count": 0}
    gate.set()
    await reader.until_end()
    assert await _json(await http.get(f"{base}/api/chat/stream/active")) == {
        "streams": [],
        "count": 0,
    }


# -- sessions ----------------------------------------------------------------------
async def test_session_list_get_and_delete(server, http, fake_provider):
    base = url_of(server)
    for session_id, text in (("older", "first   question\nhere"), ("newer", "second")):
        fake_provider.enqueue(f"answer to {session_id}")
        reply = await http.post(
            f"{base}/api/chat/stream", json={"message": text, "session_id": session_id}
        )
        assert reply.status == 200
        await asyncio.sleep(0.01)  # timestamps have millisecond resolution
    listed = await _json(await http.get(f"{base}/api/chat/sessions"))
    assert [s["session_id"] for s in listed["sessions"]] == ["newer", "older"]
    older = listed["sessions"][1]
    assert older["title"] == "first question here"
    assert older["message_count"] == 2
    assert older["created_at"] <= older["updated_at"]
    assert [
        s["session_id"]
        for s in (await _json(await http.get(f"{base}/api/chat/sessions?limit=1")))["sessions"]
    ] == ["newer"]

    view = await _json(await http.get(f"{base}/api/chat/sessions/older"))
    assert view["session_id"] == "older"
    assert view["created_at"] == older["created_at"]
    assert view["active_stream"] is None
    assert [(m["role"], m["content"], m["status"]) for m in view["messages"]] == [
        ("user", "first   question\nhere", "complete"),
        ("assistant", "answer to older", "complete"),
    ]

    deleted = await http.delete(f"{base}/api/chat/sessions/older")
    assert deleted.status == 200
    assert await _json(deleted) == {"ok": True}
    again = await http.delete(f"{base}/api/chat/sessions/older")
    assert again.status == 404
    assert (await _json(again))["error"]["code"] == "not_found"
    gone = await http.get(f"{base}/api/chat/sessions/older")
    assert gone.status == 404
    listed = await _json(await http.get(f"{base}/api/chat/sessions"))
    assert [s["session_id"] for s in listed["sessions"]] == ["newer"]


async def test_session_view_names_the_active_stream(server, http, fake_provider):
    base = url_of(server)
    stream_id, reader, gate = await _gated(http, base, fake_provider, "live")
    view = await _json(await http.get(f"{base}/api/chat/sessions/live"))
    active = view["active_stream"]
    assert active == {
        "stream_id": stream_id,
        "message_id": reader.response.headers["X-Message-Id"],
        "seq": 1,
        "epoch": active["epoch"],
    }
    assert active["epoch"]  # names the stream's log (docs/protocol.md)
    gate.set()
    await reader.until_end()


async def test_deleting_a_session_stops_its_active_stream(server, http, fake_provider):
    base = url_of(server)
    _, reader, gate = await _gated(http, base, fake_provider, "doomed")
    response = await http.delete(f"{base}/api/chat/sessions/doomed")
    assert await _json(response) == {"ok": True}
    done = (await reader.until_end())[-1]
    assert done.data["stopped"] is True
    assert fake_provider.closed == [True]
    assert not gate.is_set()


async def test_a_deleted_session_id_used_again_starts_empty(server, http, fake_provider):
    base = url_of(server)
    _, reader, _ = await _gated(http, base, fake_provider, "reused")
    assert await _json(await http.delete(f"{base}/api/chat/sessions/reused")) == {"ok": True}
    await reader.until_end()
    fake_provider.enqueue("fresh")
    reply = await http.post(
        f"{base}/api/chat/stream", json={"message": "again", "session_id": "reused"}
    )
    assert (await _json(reply))["full_response"] == "fresh"
    view = await _json(await http.get(f"{base}/api/chat/sessions/reused"))
    assert [(m["role"], m["content"]) for m in view["messages"]] == [
        ("user", "again"),
        ("assistant", "fresh"),
    ]
    # The provider saw no history from the deleted session.
    assert [m.content for m in fake_provider.requests[-1].messages] == ["again"]


# -- errors ------------------------------------------------------------------------
async def _still_works(http, base):
    response = await http.post(f"{base}/api/chat/stream", json={"message": "still here"})
    assert response.status == 200
    assert (await _json(response))["full_response"] == "ok"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        (b"", "body"),
        (b"[1, 2]", "payload"),
        (b'"just a string"', "payload"),
        (b"null", "payload"),
        (b"{}", "message"),
        (b'{"message": 42}', "message"),
        (b'{"message": ""}', "message"),
        (b'{"message": "hi", "temperature": "hot"}', "temperature"),
        (b'{"message": "hi", "max_tokens": 1.5}', "max_tokens"),
        (b'{"message": "hi", "session_id": "bad id!"}', "session_id"),
        (b'{"message": "hi", "history": [{"role": "system", "content": "x"}]}', "history.0.role"),
        (b'{"message": "hi", "provider": "nope"}', "provider"),
    ],
)
async def test_bad_bodies_are_400_invalid_request_naming_the_field(server, http, body, field):
    base = url_of(server)
    response = await http.post(
        f"{base}/api/chat/stream", data=body, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    error = (await _json(response))["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(field), error
    await _still_works(http, base)


async def test_message_over_the_limit_is_400(start_server, http):
    server = await start_server(limits={"max_message_chars": 10})
    response = await http.post(f"{url_of(server)}/api/chat/stream", json={"message": "x" * 11})
    assert response.status == 400
    assert (await _json(response))["error"]["message"].startswith("message: at most 10")


@pytest.mark.parametrize(
    ("path", "body"),
    [("/api/chat/stream", {"message": "hi"}), ("/api/chat/stream/stop", {"stream_id": "st_x"})],
)
async def test_wrong_content_type_is_415(server, http, path, body):
    import orjson

    response = await http.post(
        f"{url_of(server)}{path}", data=orjson.dumps(body), headers={"Content-Type": "text/plain"}
    )
    assert response.status == 415
    error = (await _json(response))["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("Content-Type")
    await _still_works(http, url_of(server))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_oversize_body_is_413_and_the_worker_carries_on(
    start_server, http, fake_provider, chunked
):
    server = await start_server(
        chain=["fake"], providers={"fake": fake_provider}, http={"client_max_size": 4096}
    )
    huge = b'{"message": "' + b"x" * 20000 + b'"}'

    async def body():
        for start in range(0, len(huge), 1000):
            yield huge[start : start + 1000]

    response = await http.post(
        f"{url_of(server)}/api/chat/stream",
        data=body() if chunked else huge,
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 413
    error = (await _json(response))["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("body")
    await _still_works(http, url_of(server))


async def test_second_stream_in_a_session_is_429_too_many_streams(server, http, fake_provider):
    base = url_of(server)
    _, reader, gate = await _gated(http, base, fake_provider, "busy")
    response = await http.post(
        f"{base}/api/chat/stream", json={"message": "again", "session_id": "busy"}, headers=SSE
    )
    assert response.status == 429
    assert (await _json(response))["error"]["code"] == "too_many_streams"
    gate.set()
    await reader.until_end()


@pytest.mark.parametrize(
    ("method", "path", "status", "field"),
    [
        ("GET", "/api/chat/stream/st_missing", 404, "stream_id"),
        ("GET", "/api/chat/stream/bad%20id", 400, "stream_id"),
        ("GET", "/api/chat/stream/st_x?after=-1", 400, "after"),
        ("GET", "/api/chat/stream/st_x?after=two", 400, "after"),
        ("GET", "/api/chat/sessions/missing", 404, "session_id"),
        ("DELETE", "/api/chat/sessions/missing", 404, "session_id"),
        ("GET", "/api/chat/sessions/bad%20id", 400, "session_id"),
        ("GET", "/api/chat/sessions?limit=0", 400, "limit"),
        ("GET", "/api/chat/stream/active?session_id=../x", 400, "session_id"),
        ("GET", "/api/no/such/route", 404, "path"),
        ("PUT", "/api/chat/stream", 405, "method"),
    ],
)
async def test_bad_paths_and_queries_get_json_errors(server, http, method, path, status, field):
    response = await http.request(method, f"{url_of(server)}{path}")
    assert response.status == status
    error = (await _json(response))["error"]
    assert error["code"] == ("not_found" if status == 404 else "invalid_request")
    assert error["message"].startswith(field), error


async def test_bad_last_event_id_is_400(server, http):
    response = await http.get(
        f"{url_of(server)}/api/chat/stream/st_x", headers={"Last-Event-ID": "abc"}
    )
    assert response.status == 400
    assert (await _json(response))["error"]["message"].startswith("Last-Event-ID")


# -- health ---------------------------------------------------------------------
class UnreachableStore(MemoryStore):
    """A memory store whose ping fails, as a Redis store's does when Redis is down."""

    async def ping(self) -> None:
        raise StoreUnavailable("redis://127.0.0.1:1 is not reachable: connection refused")


MEMORY_LOOPS = {"signals", "lease upkeep", "presence upkeep", "connection holds"}


async def test_healthz_and_readyz_answer_200(server, http):
    health = await http.get(f"{url_of(server)}/healthz")
    assert health.status == 200
    ready = await http.get(f"{url_of(server)}/readyz")
    assert ready.status == 200
    body = await _json(ready)
    assert body["status"] == "ready"
    assert set(body) == {"status", "loops"}
    # Every background loop is reported, even when it has nothing to do.
    assert set(body["loops"]) == MEMORY_LOOPS
    for status in body["loops"].values():
        assert status["state"] in ("running", "done")
        assert (status["failures"], status["last_error"]) == (0, None)


async def test_readyz_is_503_with_the_reason_when_the_store_is_unreachable(
    aiohttp_server, make_settings, http
):
    server = await aiohttp_server(create_app(make_settings(), store=UnreachableStore()))
    ready = await http.get(f"{url_of(server)}/readyz")
    assert ready.status == 503
    body = await _json(ready)
    assert {k: v for k, v in body.items() if k != "loops"} == {
        "status": "unavailable",
        "reason": "redis://127.0.0.1:1 is not reachable: connection refused",
    }
    assert set(body["loops"]) == MEMORY_LOOPS
    health = await http.get(f"{url_of(server)}/healthz")
    assert health.status == 200  # alive, just not ready


async def test_concurrent_json_requests_in_different_sessions(server, http, fake_provider):
    for i in range(5):
        fake_provider.enqueue(f"reply {i}")
    replies = await asyncio.gather(
        *(
            http.post(
                f"{url_of(server)}/api/chat/stream", json={"message": "hi", "session_id": f"c{i}"}
            )
            for i in range(5)
        )
    )
    bodies = [await _json(r) for r in replies]
    assert sorted(b["full_response"] for b in bodies) == [f"reply {i}" for i in range(5)]


# -- seqs past the 64-bit range are bad input, not a store outage ---------------------
HUGE_SEQ = "99999999999999999999"


@pytest.mark.redis
@pytest.mark.parametrize(
    ("headers", "query", "field"),
    [
        ({"Last-Event-ID": HUGE_SEQ}, "", "Last-Event-ID"),
        ({}, f"?after={HUGE_SEQ}", "after"),
        ({}, f"?after={2**63}", "after"),
        ({}, "?after=" + "9" * 5000, "after"),  # past int()'s digit limit
    ],
)
async def test_a_seq_past_the_64_bit_range_is_400_naming_where_it_came_from(
    start_server, http, redis_url, caplog, headers, query, field
):
    """It used to reach Redis, whose refusal was reported as a 503 store_unavailable
    with a WARNING telling operators to check Redis."""
    provider = ScriptedProvider("fake")
    provider.enqueue("done")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, store={"redis_url": redis_url}
    )
    base = url_of(server)
    reply = await http.post(f"{base}/api/chat/stream", json={"message": "hi"})
    stream_id = (await _json(reply))["stream_id"]
    with caplog.at_level(logging.WARNING):
        response = await http.get(
            f"{base}/api/chat/stream/{stream_id}{query}", headers={**SSE, **headers}
        )
        assert response.status == 400
        error = (await _json(response))["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{field}: expected an integer from 0 to {2**63 - 1}")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.redis
async def test_the_largest_seq_is_accepted_and_replays_only_the_end(start_server, http, redis_url):
    provider = ScriptedProvider("fake")
    provider.enqueue("done")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, store={"redis_url": redis_url}
    )
    base = url_of(server)
    stream_id = (await _json(await http.post(f"{base}/api/chat/stream", json={"message": "x"})))[
        "stream_id"
    ]
    response = await http.get(
        f"{base}/api/chat/stream/{stream_id}", headers={**SSE, "Last-Event-ID": str(2**63 - 1)}
    )
    assert response.status == 200
    events = await SSEReader(response).until_end()
    assert [e.event for e in events] == ["chat_complete"]


async def test_chat_resume_with_a_seq_past_the_64_bit_range_is_invalid_request(server, connect):
    """The Socket.IO side of the same rule (requests.ResumeRequest). 2**63 is the
    smallest such seq that still travels as a JSON integer (orjson's limit)."""
    client = await connect(server)
    ack = await client.call("chat_resume", {"stream_id": "st_x", "after": 2**63})
    assert ack["ok"] is False
    assert ack["error"]["code"] == "invalid_request"
    assert ack["error"]["message"].startswith("after:")


def test_every_error_code_has_an_http_status():
    """An unmapped code would reach clients as a 500 internal."""
    assert set(ERROR_CODES) <= set(STATUS_BY_CODE)
    if "log_unavailable" in ERROR_CODES:
        assert STATUS_BY_CODE["log_unavailable"] == 410  # the log is gone: resume cannot work


# -- deleting a session tells its room and closes it ----------------------------------
async def test_deleting_a_session_tells_its_room_and_closes_it(
    server, http, connect, fake_provider
):
    base = url_of(server)
    fake_provider.enqueue("first")
    await http.post(f"{base}/api/chat/stream", json={"message": "hi", "session_id": "gone"})
    tab = await connect(server)
    assert (await tab.call("session_join", {"session_id": "gone"}))["ok"]
    assert await _json(await http.delete(f"{base}/api/chat/sessions/gone")) == {"ok": True}
    assert await tab.wait_event("session_deleted") == {"session_id": "gone"}
    # Out of the room: a stream in a new session with the same id does not reach it.
    fake_provider.enqueue("second")
    again = await _json(
        await http.post(f"{base}/api/chat/stream", json={"message": "hi", "session_id": "gone"})
    )
    assert again["full_response"] == "second"
    await asyncio.sleep(0.2)
    assert [e for e, _ in tab.events] == ["session_deleted"]
