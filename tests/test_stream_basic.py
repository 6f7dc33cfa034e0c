"""chat_stream end to end over a real Socket.IO connection."""

from __future__ import annotations

from chatsock.providers.base import Usage


async def test_stream_emits_start_tokens_and_complete(server, connect, fake_provider):
    fake_provider.enqueue("Hel", "lo", " wor", "ld", usage=Usage(3, 4))
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "hi"})
    assert ack["ok"] is True, ack
    stream_id = ack["stream_id"]
    event, done = await client.wait_terminal(stream_id)
    assert event == "chat_complete"
    start = client.of("chat_stream_start", stream_id)[0]
    assert start == {
        "stream_id": stream_id,
        "session_id": ack["session_id"],
        "message_id": ack["message_id"],
        "provider": "fake",
        "model": "fake-1",
    }
    tokens = client.tokens(stream_id)
    assert [t["seq"] for t in tokens] == list(range(1, len(tokens) + 1))
    assert "".join(t["token"] for t in tokens) == done["full_response"] == "Hello world"
    assert tokens[-1]["count"] == 4
    assert done["usage"] == {"input_tokens": 3, "output_tokens": 4}
    assert done["stopped"] is False
    assert done["finish_reason"] == "stop"
    assert done["persist_failed"] is False
    assert done["tokens"] == 4
