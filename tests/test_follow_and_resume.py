"""A second tab follows a reply; a reconnecting client resumes with no gap and no duplicate."""

from __future__ import annotations

import asyncio

from tests.fakes.provider import ScriptedProvider


def _seqs(tokens):
    return [t["seq"] for t in tokens]


async def test_second_client_session_join_receives_the_same_tokens(server, connect, fake_provider):
    script = fake_provider.enqueue("a ", "b ")
    gate = script.gate()
    script.text("c ", "d")
    first = await connect(server)
    ack = await first.call("chat_stream", {"message": "hi", "session_id": "tab"})
    sid = ack["stream_id"]
    await first.wait_for(lambda _: first.tokens(sid))
    second = await connect(server)
    joined = await second.call("session_join", {"session_id": "tab"})
    assert joined["ok"] is True
    assert joined["session_id"] == "tab"
    assert [(m["role"], m["content"]) for m in joined["messages"]] == [("user", "hi")]
    assert joined["active_stream"]["stream_id"] == sid
    seen = joined["active_stream"]["seq"]
    gate.set()
    _, done_first = await first.wait_terminal(sid)
    _, done_second = await second.wait_terminal(sid)
    assert done_first == done_second
    # The second tab got everything after the seq its ack reported, live, once.
    second_tokens = second.tokens(sid)
    assert _seqs(second_tokens) == list(range(seen + 1, len(first.tokens(sid)) + 1))
    assert first.tokens(sid)[seen:] == second_tokens


async def test_session_join_after_end_lists_messages_and_no_active_stream(
    server, connect, fake_provider
):
    fake_provider.enqueue("done")
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "hi", "session_id": "ended"})
    await client.wait_terminal(ack["stream_id"])
    other = await connect(server)
    joined = await other.call("session_join", {"session_id": "ended"})
    assert joined["active_stream"] is None
    assert [(m["role"], m["content"], m["status"]) for m in joined["messages"]] == [
        ("user", "hi", "complete"),
        ("assistant", "done", "complete"),
    ]


async def test_session_join_unknown_session_is_not_found(server, connect):
    client = await connect(server)
    reply = await client.call("session_join", {"session_id": "nope"})
    assert reply["ok"] is False
    assert reply["error"]["code"] == "not_found"
    assert "session_id" in reply["error"]["message"]


async def test_resume_mid_stream_after_disconnect_has_no_gap_or_duplicate(
    server, connect, fake_provider
):
    script = fake_provider.enqueue(*[f"t{i} " for i in range(5)])
    gate = script.gate()
    script.text(*[f"u{i} " for i in range(5)])
    gate2 = script.gate()
    script.text(*[f"v{i} " for i in range(50)])
    first = await connect(server)
    ack = await first.call("chat_stream", {"message": "hi"})
    sid = ack["stream_id"]
    await first.wait_for(lambda _: first.tokens(sid))
    await first.close()  # the stream goes on without followers (stop_on_disconnect off)
    gate.set()
    await asyncio.sleep(0.1)
    seen = first.tokens(sid)
    after = seen[-1]["seq"]
    again = await connect(server)
    reply = await again.call("chat_resume", {"stream_id": sid, "after": after})
    assert reply == {"ok": True, "status": "streaming"}
    gate2.set()
    event, done = await again.wait_terminal(sid)
    assert event == "chat_complete"
    resumed = again.tokens(sid)
    assert _seqs(resumed) == list(range(after + 1, after + 1 + len(resumed)))
    assert "".join(t["token"] for t in seen + resumed) == done["full_response"]


async def test_resume_races_a_fast_stream_without_gap_or_duplicate(start_server, connect):
    provider = ScriptedProvider("fast")
    script = provider.enqueue()
    for i in range(300):
        script.text(f"p{i} ").sleep(0.002)
    server = await start_server(
        chain=["fast"], providers={"fast": provider}, stream={"flush_interval_ms": 1}
    )
    first = await connect(server)
    ack = await first.call("chat_stream", {"message": "hi", "session_id": "race"})
    sid = ack["stream_id"]
    await first.wait_for(lambda _: len(first.tokens(sid)) >= 5)
    # A second tab resumes from zero while tokens keep flowing.
    second = await connect(server)
    assert (await second.call("chat_resume", {"stream_id": sid, "after": 0}))["ok"]
    _, done = await second.wait_terminal(sid, within=20)
    tokens = second.tokens(sid)
    assert _seqs(tokens) == list(range(1, len(tokens) + 1))
    assert "".join(t["token"] for t in tokens) == done["full_response"]
    assert len(second.of("chat_complete", sid)) == 1


async def test_resume_after_end_replays_tail_and_terminal(server, connect, fake_provider):
    fake_provider.enqueue("x", "y").sleep(0.05)
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "hi"})
    sid = ack["stream_id"]
    _, done = await client.wait_terminal(sid)
    later = await connect(server)
    reply = await later.call("chat_resume", {"stream_id": sid, "after": 1})
    assert reply == {"ok": True, "status": "complete"}
    events = [(e, d.get("seq")) for e, d in later.events if d.get("stream_id") == sid]
    assert events[-1] == ("chat_complete", None)
    assert [t["seq"] for t in later.tokens(sid)] == list(range(2, len(client.tokens(sid)) + 1))
    assert later.of("chat_complete", sid)[0] == done


async def test_resume_after_error_replays_the_error(server, connect, fake_provider):
    from chatsock.providers.base import ProviderStreamError

    fake_provider.enqueue("half").fail(ProviderStreamError("reset", provider="fake"))
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "hi"})
    await client.wait_terminal(ack["stream_id"])
    later = await connect(server)
    reply = await later.call("chat_resume", {"stream_id": ack["stream_id"], "after": 0})
    assert reply == {"ok": True, "status": "error"}
    assert later.of("chat_stream_error")[0]["partial"] == "half"


async def test_resume_unknown_stream_is_not_found(server, connect):
    client = await connect(server)
    reply = await client.call("chat_resume", {"stream_id": "st_missing", "after": 0})
    assert reply["ok"] is False
    assert reply["error"]["code"] == "not_found"
    assert "stream_id" in reply["error"]["message"]


async def test_stop_on_disconnect_stops_when_last_member_leaves(start_server, connect):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("a ")
    gate = script.gate()
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, stream={"stop_on_disconnect": True}
    )
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "hi", "session_id": "leave"})
    await client.wait_for(lambda _: client.tokens(ack["stream_id"]))
    await client.close()
    for _ in range(100):
        if provider.closed == [True]:
            break
        await asyncio.sleep(0.02)
    assert provider.closed == [True]
    assert not gate.is_set()
    watcher = await connect(server)
    joined = await watcher.call("session_join", {"session_id": "leave"})
    assert joined["active_stream"] is None
    assert joined["messages"][-1]["status"] == "stopped"


async def test_stream_continues_after_disconnect_by_default(server, connect, fake_provider):
    script = fake_provider.enqueue("a ")
    gate = script.gate()
    script.text("b")
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "hi", "session_id": "stay"})
    await client.wait_for(lambda _: client.tokens(ack["stream_id"]))
    await client.close()
    gate.set()
    back = await connect(server)
    for _ in range(100):
        joined = await back.call("session_join", {"session_id": "stay"})
        if joined["active_stream"] is None:
            break
        await asyncio.sleep(0.02)
    assert joined["messages"][-1]["content"] == "a b"
    assert joined["messages"][-1]["status"] == "complete"


async def test_join_then_resume_from_zero_sends_each_token_exactly_once(
    server, connect, fake_provider
):
    script = fake_provider.enqueue("a ", "b ")
    gate = script.gate()
    script.text("c ", "d ")
    gate2 = script.gate()
    script.text("e")
    first = await connect(server)
    ack = await first.call("chat_stream", {"message": "hi", "session_id": "jr"})
    sid = ack["stream_id"]
    await first.wait_for(lambda _: first.tokens(sid))
    gate.set()
    await first.wait_for(lambda _: "d " in "".join(t["token"] for t in first.tokens(sid)))
    tab = await connect(server)
    joined = await tab.call("session_join", {"session_id": "jr"})
    seen = joined["active_stream"]["seq"]
    assert seen >= 2
    assert await tab.call("chat_resume", {"stream_id": sid, "after": 0}) == {
        "ok": True,
        "status": "streaming",
    }
    gate2.set()
    _, done = await tab.wait_terminal(sid)
    seqs = [t["seq"] for t in tab.tokens(sid)]
    assert sorted(seqs) == list(range(1, len(first.tokens(sid)) + 1))
    assert len(seqs) == len(set(seqs))
    in_order = sorted(tab.tokens(sid), key=lambda t: t["seq"])
    assert "".join(t["token"] for t in in_order) == done["full_response"] == "a b c d e"


async def test_resume_twice_on_one_socket_sends_nothing_twice(server, connect, fake_provider):
    script = fake_provider.enqueue("a ", "b ")
    gate = script.gate()
    script.text("c")
    first = await connect(server)
    ack = await first.call("chat_stream", {"message": "hi"})
    sid = ack["stream_id"]
    await first.wait_for(lambda _: "b " in "".join(t["token"] for t in first.tokens(sid)))
    other = await connect(server)
    assert (await other.call("chat_resume", {"stream_id": sid, "after": 1}))["ok"]
    assert (await other.call("chat_resume", {"stream_id": sid, "after": 0}))["ok"]
    gate.set()
    _, done = await other.wait_terminal(sid)
    seqs = sorted(t["seq"] for t in other.tokens(sid))
    assert seqs == list(range(1, len(first.tokens(sid)) + 1))
    assert (
        "".join(t["token"] for t in sorted(other.tokens(sid), key=lambda t: t["seq"]))
        == (done["full_response"])
    )
