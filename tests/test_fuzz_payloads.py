"""Property-based: whatever a client sends, it gets an answer naming what was wrong.

Hypothesis generates the payload of every Socket.IO event (and of unknown
ones) and every HTTP body, query and path parameter, each case knowing which
of its fields the server must refuse (tests/support/payloads.py). One real
server and one real client serve all the examples of a test, so each example
also checks that the same connection still answers a valid request, and that
the server logged no error or traceback for the input.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import hypothesis
import orjson
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from tests.conftest import ServerFactory, url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.clients import RecordingClient
from tests.support.http_payloads import POST_KINDS, gets, posts
from tests.support.payloads import (
    CLOSED,
    FIELDS,
    KNOWN_EVENTS,
    Case,
    any_cases,
    check_refusal,
    emit_raw,
    json_values,
    named_field,
    odd_field_cases,
    send_event,
    unknown_events,
    valid_cases,
)

FUZZ: Final = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,  # one server for every example, on purpose
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
# Not for rate limits: every example must reach validation.
UNLIMITED: Final = {"socket_events_per_second": 0, "stream_starts_per_minute": 0}
KNOWN_MESSAGE: Final = "hello, fuzz"
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass
class Served:
    """The one server and client every example of a test shares."""

    server: TestServer
    session_id: str  # a session with one exchange, to check the connection still works
    stream_id: str
    marks: int = 0  # caplog records already checked


def _check_log(caplog: pytest.LogCaptureFixture, served: Served) -> None:
    """No error and no traceback for client input; chatsock's lines carry no raw
    control character a client could have slipped in."""
    fresh = caplog.records[served.marks :]
    served.marks = len(caplog.records)
    for record in fresh:
        assert record.levelno < logging.ERROR, caplog.text
        assert record.exc_info is None, caplog.text
        if record.name.startswith("chatsock"):
            assert not _CONTROL.search(record.getMessage()), record.getMessage()


# -- Socket.IO ----------------------------------------------------------------


@pytest.fixture
async def sio_app(
    start_server: ServerFactory, fake_provider: ScriptedProvider, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[Served, RecordingClient]]:
    caplog.set_level(logging.INFO)
    server = await start_server(chain=["fake"], providers={"fake": fake_provider}, limits=UNLIMITED)
    client = await RecordingClient().connect(url_of(server))
    try:
        ack = await client.call("chat_stream", {"message": KNOWN_MESSAGE})
        assert ack["ok"], ack
        assert (await client.wait_terminal(ack["stream_id"]))[0] == "chat_complete"
        yield Served(server, ack["session_id"], ack["stream_id"], len(caplog.records)), client
    finally:
        await client.close()


async def _still_usable(client: RecordingClient, served: Served) -> None:
    reply = await client.call("session_join", {"session_id": served.session_id})
    assert reply["ok"], reply
    assert [m["content"] for m in reply["messages"]] == [KNOWN_MESSAGE, "ok"], reply


def _outcome(reply: Any) -> str:
    """How a reply ended, for hypothesis' statistics (--hypothesis-show-statistics)."""
    if reply.get("ok") is True:
        return "ok"
    error = reply.get("error") or {}
    return f"{error.get('code')} {named_field(str(error.get('message')))}"


async def _emit_and_check(
    sio_app: tuple[Served, RecordingClient],
    caplog: pytest.LogCaptureFixture,
    args: list[Any],
    case: Case,
) -> None:
    """Emit; the ack is ok or an error naming a field the case has wrong; a stream
    started runs to its end; the socket still answers; nothing was logged as an error."""
    served, client = sio_app
    event = args[0]
    reply = await emit_raw(client, args)
    assert isinstance(reply, dict), reply
    hypothesis.event(f"{event if event in KNOWN_EVENTS else '(unknown)'}: {_outcome(reply)}")
    if reply.get("ok") is True:
        assert not case.junk, f"{case!r} was accepted: {reply!r}"
        if event == "chat_stream":
            ended, _ = await client.wait_terminal(reply["stream_id"])
            assert ended == "chat_complete"
    else:
        assert reply.get("ok") is False, reply
        check_refusal(case, reply.get("error"))
    if event == "chat_stream" and not case.may_name():
        assert reply.get("ok") is True, (case, reply)  # a valid request starts a stream
    assert client.sio.connected
    await _still_usable(client, served)
    _check_log(caplog, served)


# More arguments than a handler takes are ignored.
_extra_args = st.lists(json_values, max_size=2)


@pytest.mark.parametrize(("event", "name"), FIELDS, ids=[f"{e}.{n}" for e, n in FIELDS])
@settings(FUZZ, max_examples=20)
@given(data=st.data())
async def test_a_bad_field_gets_invalid_request_naming_it_and_the_socket_carries_on(
    sio_app: tuple[Served, RecordingClient],
    caplog: pytest.LogCaptureFixture,
    event: str,
    name: str,
    data: st.DataObject,
) -> None:
    case = data.draw(odd_field_cases(event, name), label="case")
    await _emit_and_check(sio_app, caplog, [event, case.payload, *data.draw(_extra_args)], case)


@pytest.mark.parametrize("event", KNOWN_EVENTS)
@settings(FUZZ, max_examples=25)
@given(data=st.data())
async def test_a_valid_payload_is_accepted_whatever_unknown_keys_and_arguments_it_carries(
    sio_app: tuple[Served, RecordingClient],
    caplog: pytest.LogCaptureFixture,
    event: str,
    data: st.DataObject,
) -> None:
    case = data.draw(valid_cases(event), label="case")
    await _emit_and_check(sio_app, caplog, [event, case.payload, *data.draw(_extra_args)], case)


@st.composite
def _any_emit(draw: st.DrawFn) -> tuple[list[Any], Case]:
    event = draw(st.sampled_from((*KNOWN_EVENTS, "unknown")))
    if event == "unknown":
        return [draw(unknown_events), *draw(_extra_args)], Case(None, frozenset({"event"}))
    if draw(st.booleans()) and draw(st.booleans()):
        return [event], Case(None, frozenset({"payload"}))  # no argument at all
    case = draw(any_cases(event))
    return [event, case.payload, *draw(_extra_args)], case


@settings(FUZZ, max_examples=200)
@given(emit=_any_emit())
async def test_any_payload_of_any_event_gets_an_ack_naming_a_field_it_has_wrong(
    sio_app: tuple[Served, RecordingClient],
    caplog: pytest.LogCaptureFixture,
    emit: tuple[list[Any], Case],
) -> None:
    await _emit_and_check(sio_app, caplog, *emit)


# Event packets that are no event (a name that is not a string), or whose JSON the
# server's decoder refuses (numbers beyond a double, NaN, a lone surrogate). The
# server may answer or close the socket; either way with at most one log line, no
# traceback, and it keeps serving (issue 9: malformed packets).
MALFORMED: Final = {
    "name 1": '[1,{"message":"hi"}]',
    "name null": '[null,{"message":"hi"}]',
    "name 1.5": '[1.5,{"message":"hi"}]',
    "name true": '[true,{"message":"hi"}]',
    "name object": '[{"a":1},{"message":"hi"}]',
    "name list": '[["chat_stream"],{"message":"hi"}]',
    "empty array": "[]",
    "object": '{"message":"hi"}',
    "string": '"chat_stream"',
    "int beyond a double": '["chat_stream",{"message":"hi","max_tokens":1' + "0" * 400 + "}]",
    "1e999": '["chat_stream",{"message":"hi","temperature":1e999}]',
    "NaN": '["chat_stream",{"message":NaN}]',
    "lone surrogate": '["chat_stream",{"message":"\\ud800"}]',
}


@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_event_packet_is_answered_or_closed_with_one_log_line_and_no_traceback(
    sio_app: tuple[Served, RecordingClient], caplog: pytest.LogCaptureFixture, text: str
) -> None:
    served, client = sio_app
    reply = await send_event(client, text)
    said = [r.getMessage() for r in caplog.records[served.marks :] if r.name != "aiohttp.access"]
    assert len(said) <= 1, said
    if reply is not CLOSED:
        check_refusal(Case(text, frozenset({"event", "payload"})), reply["error"])
        await _still_usable(client, served)
    else:
        fresh = await RecordingClient().connect(url_of(served.server))
        try:
            await _still_usable(fresh, served)
        finally:
            await fresh.close()
    _check_log(caplog, served)


# -- HTTP -------------------------------------------------------------------


@pytest.fixture
async def http_app(
    start_server: ServerFactory, fake_provider: ScriptedProvider, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[Served, aiohttp.ClientSession]]:
    caplog.set_level(logging.INFO)
    server = await start_server(chain=["fake"], providers={"fake": fake_provider}, limits=UNLIMITED)
    async with aiohttp.ClientSession(url_of(server)) as http:
        async with http.post("/api/chat/stream", json={"message": KNOWN_MESSAGE}) as response:
            assert response.status == 200, await response.text()
            done = await response.json()
        yield Served(server, done["session_id"], done["stream_id"], len(caplog.records)), http


async def _http_still_usable(http: aiohttp.ClientSession, served: Served) -> None:
    async with http.get(f"/api/chat/sessions/{served.session_id}") as response:
        assert response.status == 200, await response.text()
        view = await response.json()
    assert [m["content"] for m in view["messages"]] == [KNOWN_MESSAGE, "ok"], view


async def _check_response(response: aiohttp.ClientResponse, case: Case, also: set[str]) -> Any:
    """Never a 5xx; a 4xx is the API's JSON error naming the field; returns the body."""
    raw = await response.read()
    assert response.status < 500, raw[:500]
    if response.status < 400:
        assert not case.junk, f"{case!r} got {response.status}: {raw[:300]!r}"
        return raw
    assert response.content_type == "application/json", raw[:300]
    body = orjson.loads(raw)
    check_refusal(case, body.get("error"), also=frozenset(also))
    return body


@pytest.mark.parametrize(("path", "kind"), POST_KINDS, ids=[f"{p}:{k}" for p, k in POST_KINDS])
@settings(FUZZ, max_examples=12)
@given(data=st.data())
async def test_every_http_body_gets_2xx_or_a_json_error_naming_the_field(
    http_app: tuple[Served, aiohttp.ClientSession],
    caplog: pytest.LogCaptureFixture,
    path: str,
    kind: str,
    data: st.DataObject,
) -> None:
    served, http = http_app
    post = data.draw(posts(path, kind), label="post")
    headers = {"Content-Type": post.content_type, "Accept": post.accept}
    # A stream, not bytes: aiohttp warns about sending a large bytes body in one go.
    async with http.post(post.path, data=io.BytesIO(post.body), headers=headers) as response:
        body = await _check_response(response, post.case, set())
    hypothesis.event(f"{post.path}: {response.status}")
    if response.status < 400 and post.path == "/api/chat/stream":
        if post.accept == "text/event-stream":
            assert b"event: chat_complete" in body, body[-500:]
        else:
            assert orjson.loads(body)["full_response"] == "ok", body[:500]
    if post.path == "/api/chat/stream" and not post.case.may_name():
        assert response.status == 200, post
    await _http_still_usable(http, served)
    _check_log(caplog, served)


@settings(FUZZ, max_examples=200)
@given(data=st.data())
async def test_every_query_path_and_header_value_gets_2xx_or_a_json_error_naming_it(
    http_app: tuple[Served, aiohttp.ClientSession],
    caplog: pytest.LogCaptureFixture,
    data: st.DataObject,
) -> None:
    served, http = http_app
    get = data.draw(gets(served.stream_id, served.session_id))
    url = URL(url_of(served.server) + get.url, encoded=True)
    async with http.request(get.method, url, headers=get.headers) as response:
        body = await _check_response(response, get.case, {"path", "method"})
    named = "" if response.status < 400 else named_field(body["error"]["message"])
    route = get.url.split("?")[0].split("/")[3]
    hypothesis.event(f"{get.method} {route}: {response.status} {named}")
    await _http_still_usable(http, served)
    _check_log(caplog, served)


# Bytes no HTTP client library sends, straight onto a socket: raw (not percent-encoded)
# non-ASCII and control bytes in the request line and in header values.
RAW_REQUESTS: Final = {
    "path byte 0xff": b"GET /api/chat/sessions/\xff\xfe HTTP/1.1",
    "query byte 0xff": b"GET /api/chat/sessions?limit=\xff HTTP/1.1",
    "path NUL": b"GET /api/chat/sessions/a\x00b HTTP/1.1",
    "header value 0x01": b"GET /api/chat/stream/st_x HTTP/1.1\r\nLast-Event-ID: 1\x012",
    "header value 0xff": b"GET /api/chat/stream/st_x HTTP/1.1\r\nLast-Event-ID: \xff\xfe",
    "header name": b"GET /api/chat/sessions HTTP/1.1\r\nLast Event(ID): 1",
}
# aiohttp's parser refuses most of those before any handler runs: chatsock's
# server logger (http_log.py) makes each one INFO line, and the `Server` default
# names no version.


async def _raw_http(served: Served, head: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", served.server.port)
    try:
        writer.write(head + b"\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(
            head,
            id=name,
            marks=[],
        )
        for name, head in RAW_REQUESTS.items()
    ],
)
async def test_raw_bytes_in_the_request_line_or_a_header_get_a_4xx_and_no_traceback(
    http_app: tuple[Served, aiohttp.ClientSession], caplog: pytest.LogCaptureFixture, head: bytes
) -> None:
    served, http = http_app
    reply = await _raw_http(served, head)
    status_line, _, rest = reply.partition(b"\r\n")
    status = int(status_line.split()[1])
    assert 400 <= status < 500, reply[:300]
    head_lines = rest.split(b"\r\n\r\n")[0].lower()
    assert b"aiohttp" not in head_lines, reply[:300]  # no Server header naming a version
    assert b"python" not in head_lines, reply[:300]
    await _http_still_usable(http, served)
    _check_log(caplog, served)
