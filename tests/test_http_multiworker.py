"""The HTTP API on two workers sharing a real redis-server: follow, list and stop anywhere."""

from __future__ import annotations

import pytest

from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.http import SSE, SSEReader, tokens

pytestmark = pytest.mark.redis


async def _worker(start_server, redis_url, name, provider):
    return url_of(
        await start_server(
            chain=["fake"],
            providers={"fake": provider},
            store={"redis_url": redis_url},
            server={"worker_id": name},
        )
    )


async def test_stream_started_on_a_is_followed_listed_and_stopped_over_http_on_b(
    start_server, redis_url, http
):
    provider = ScriptedProvider("fake")
    script = provider.enqueue()
    for i in range(3):
        script.text(f"t{i} ").sleep(0.05)
    gate = script.gate()
    a = await _worker(start_server, redis_url, "worker-a", provider)
    b = await _worker(start_server, redis_url, "worker-b", ScriptedProvider("fake"))

    started = await http.post(f"{a}/api/chat/stream", json={"message": "hi"}, headers=SSE)
    on_a = SSEReader(started)
    stream_id = (await on_a.event()).data["stream_id"]
    first = (await on_a.event()).data

    listed = await (await http.get(f"{b}/api/chat/stream/active")).json()
    assert [s["stream_id"] for s in listed["streams"]] == [stream_id]

    followed = await http.get(f"{b}/api/chat/stream/{stream_id}?after={first['seq']}")
    on_b = SSEReader(followed)
    await on_b.event()  # a replayed or live token: the follow has caught up
    stopped = await http.post(f"{b}/api/chat/stream/stop", json={"stream_id": stream_id})
    assert await stopped.json() == {"ok": True, "stopped": True}

    a_events = await on_a.until_end()
    b_events = await on_b.until_end()
    done = a_events[-1].data
    assert done["stopped"] is True
    assert b_events[-1].data == done
    b_tokens = tokens(on_b.events())
    assert [t["seq"] for t in b_tokens] == list(range(first["seq"] + 1, len(b_tokens) + 2))
    assert "".join(t["token"] for t in [first, *b_tokens]) == done["full_response"]
    assert tokens(on_a.events()) == [first, *b_tokens]
    assert not gate.is_set()


async def test_deleting_a_session_on_b_while_a_streams_it_leaves_nothing_behind(
    start_server, redis_url, http
):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("partial ")
    gate = script.gate()
    script.text("never sent")
    on_b_provider = ScriptedProvider("fake")
    on_b_provider.enqueue("fresh start")
    a = await _worker(start_server, redis_url, "worker-a", provider)
    b = await _worker(start_server, redis_url, "worker-b", on_b_provider)

    started = await http.post(
        f"{a}/api/chat/stream", json={"message": "old", "session_id": "gone"}, headers=SSE
    )
    on_a = SSEReader(started)
    await on_a.event()
    await on_a.event()  # the first token: the stream is running on A
    deleted = await http.delete(f"{b}/api/chat/sessions/gone")
    assert deleted.status == 200
    assert (await on_a.until_end())[-1].data["stopped"] is True
    assert (await http.get(f"{b}/api/chat/sessions/gone")).status == 404

    # The stopped reply did not land after the delete: reusing the id starts clean.
    again = await http.post(f"{b}/api/chat/stream", json={"message": "new", "session_id": "gone"})
    assert (await again.json())["full_response"] == "fresh start"
    session = await (await http.get(f"{a}/api/chat/sessions/gone")).json()
    assert [(m["role"], m["content"]) for m in session["messages"]] == [
        ("user", "new"),
        ("assistant", "fresh start"),
    ]
    assert not gate.is_set()
