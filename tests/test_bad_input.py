"""Bad input gets an error naming the field; the connection and the worker carry on."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    ("event", "payload", "field"),
    [
        ("chat_stream", {}, "message"),
        ("chat_stream", {"message": 42}, "message"),
        ("chat_stream", {"message": ""}, "message"),
        ("chat_stream", {"message": "x" * 33000}, "message"),
        ("chat_stream", {"message": "hi", "session_id": "bad id!"}, "session_id"),
        ("chat_stream", {"message": "hi", "session_id": "x" * 129}, "session_id"),
        ("chat_stream", {"message": "hi", "history": "nope"}, "history"),
        (
            "chat_stream",
            {"message": "hi", "history": [{"role": "system", "content": "x"}]},
            "history.0.role",
        ),
        ("chat_stream", {"message": "hi", "temperature": "hot"}, "temperature"),
        ("chat_stream", {"message": "hi", "temperature": 9}, "temperature"),
        ("chat_stream", {"message": "hi", "max_tokens": 0}, "max_tokens"),
        ("chat_stream", {"message": "hi", "provider": "nope"}, "provider"),
        ("chat_stream", "just a string", "payload"),
        ("chat_stream", None, "payload"),
        ("chat_stream", [1, 2], "payload"),
        ("chat_stop", {}, "stream_id"),
        ("chat_stop", {"stream_id": 5}, "stream_id"),
        ("session_join", {"session_id": "../etc"}, "session_id"),
        ("chat_resume", {"stream_id": "st_x", "after": -1}, "after"),
        ("chat_resume", {"stream_id": "st_x", "after": "3"}, "after"),
        ("no_such_event", {"x": 1}, "event"),
    ],
)
async def test_malformed_requests_get_invalid_request_naming_the_field(
    server, connect, event, payload, field
):
    client = await connect(server)
    reply = await client.call(event, payload)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_request"
    assert reply["error"]["message"].startswith(field), reply
    # The same connection still works.
    ok = await client.call("chat_stream", {"message": "still here"})
    assert ok["ok"] is True
    await client.wait_terminal(ok["stream_id"])


@pytest.mark.parametrize(
    ("event", "payload"),
    [
        ("chat_stop", {"stream_id": "st_unknown"}),
        ("chat_resume", {"stream_id": "st_unknown", "after": 0}),
        ("session_join", {"session_id": "unknown"}),
    ],
)
async def test_unknown_ids_are_not_found(server, connect, event, payload):
    client = await connect(server)
    reply = await client.call(event, payload)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "not_found"


async def test_spoofed_reserved_event_is_rejected(server, connect):
    client = await connect(server)
    reply = await client.call("disconnect", {"x": 1})
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_request"
    assert client.sio.connected
    ok = await client.call("chat_stream", {"message": "still here"})
    assert ok["ok"] is True


async def test_event_without_ack_and_extra_args_does_not_break_the_connection(server, connect):
    client = await connect(server)
    await client.sio.emit("chat_stream", {"message": 1})
    await client.sio.emit("chat_stop", ({"stream_id": "a"}, "extra", 3))
    ok = await client.call("chat_stream", {"message": "fine"})
    assert ok["ok"] is True
