"""The official JavaScript socket.io-client, under node, against a real server."""

from __future__ import annotations

import pytest

from tests.support.node import run_node_client

pytestmark = pytest.mark.node


def _tokens(result, stream_id):
    return [d for e, d in result["events"] if e == "chat_token" and d["stream_id"] == stream_id]


@pytest.mark.parametrize("transports", [["websocket"], ["polling", "websocket"]])
async def test_node_client_streams_a_demo_reply(start_server, transports):
    server = await start_server(demo={"tokens_per_second": 2000})
    result = await run_node_client(
        f"http://127.0.0.1:{server.port}", "stream", transports=transports, message="node says hi"
    )
    assert not result.get("timedOut"), result
    ack, (event, end) = result["ack"], result["end"]
    assert ack["ok"]
    assert event == "chat_complete"
    tokens = _tokens(result, ack["stream_id"])
    assert [t["seq"] for t in tokens] == list(range(1, len(tokens) + 1))
    assert "".join(t["token"] for t in tokens) == end["full_response"]
    assert "```python" in end["full_response"]
    assert end["provider"] == "demo"


async def test_node_client_stop(start_server):
    server = await start_server(demo={"tokens_per_second": 20})
    result = await run_node_client(f"http://127.0.0.1:{server.port}", "stop")
    event, end = result["end"]
    assert result["stopAck"] == {"ok": True, "stopped": True}
    assert event == "chat_complete"
    assert end["stopped"] is True
    tokens = _tokens(result, result["ack"]["stream_id"])
    assert end["full_response"] == "".join(t["token"] for t in tokens)


async def test_node_client_resume_after_end(start_server, connect):
    server = await start_server(demo={"tokens_per_second": 2000})
    py = await connect(server)
    ack = await py.call("chat_stream", {"message": "resume me", "session_id": "node-resume"})
    _, done = await py.wait_terminal(ack["stream_id"])
    result = await run_node_client(
        f"http://127.0.0.1:{server.port}",
        "resume",
        session_id="node-resume",
        stream_id=ack["stream_id"],
        after=3,
    )
    assert result["resume"] == {"ok": True, "status": "complete"}
    tokens = _tokens(result, ack["stream_id"])
    assert [t["seq"] for t in tokens] == list(range(4, len(py.tokens(ack["stream_id"])) + 1))
    assert result["end"] == ["chat_complete", done]


async def test_node_client_bad_input_keeps_the_connection(start_server):
    server = await start_server(demo={"tokens_per_second": 2000})
    result = await run_node_client(f"http://127.0.0.1:{server.port}", "bad")
    codes = [r["error"]["code"] for r in result["replies"]]
    assert codes == ["invalid_request", "invalid_request", "not_found", "invalid_request"]
    assert result["end"][0] == "chat_complete"
