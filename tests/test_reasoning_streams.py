"""Reasoning streams end to end on one worker: official SDK -> fake upstream's real
reasoning wire format -> chatsock -> Socket.IO clients that opted in or not.

Pinned: an opted-in client gets `chat_reasoning` (its own contiguous seqs) and
`chat_token`; a client that did not opt in sees exactly the old protocol (no
reasoning event, contiguous token seqs, no reasoning field in messages); resume
covers reasoning with no gap and no duplicate; stop during reasoning keeps what
was sent; the stored message keeps the reasoning apart and the provider's signed
thinking goes back upstream on the next turn; many streams at once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import RUNNER, STORE
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Reply, reasoning, thinking
from tests.support.clients import RecordingClient
from tests.support.invariants import assert_none, check_follower, seen
from tests.support.waiting import poll_until
from tests.test_provider_chain import Connect, config_for, start_fake

__all__ = ["start_fake"]  # the fixture, re-exported for pytest

THOUGHTS = ("Let me see. ", "Two plus two ", "is four.")
ANSWER = ("The answer ", "is ", "4.")


def reasoning_of(client: RecordingClient, stream_id: str) -> list[dict[str, Any]]:
    """By seq: a resume after session_join may interleave its catch-up with live
    events, and a client orders by seq (as for tokens)."""
    return sorted(client.of("chat_reasoning", stream_id), key=lambda e: e["seq"])


def check_reasoning(label: str, events: list[dict[str, Any]], text: str, first: int = 1) -> None:
    """Reasoning seqs run first.. with no gap or duplicate and spell `text`'s tail."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(first, first + len(events))), (label, seqs)
    assert "".join(e["reasoning"] for e in events) == text, label


async def one_worker(start_server: Any, make_settings: Any, fake: Any, **extra: Any) -> TestServer:
    server: TestServer = await start_server(
        make_settings(providers={"up": config_for(fake, **extra)}, chain=["up"])
    )
    return server


@pytest.mark.parametrize("kind", ["openai-reasoning_content", "openai-reasoning", "anthropic"])
async def test_opted_in_and_plain_clients_on_one_stream(
    kind: str, start_fake: Any, start_server: Any, make_settings: Any, connect: Connect
) -> None:
    if kind == "anthropic":
        fake: Any = await start_fake(FakeAnthropic)
        fake.enqueue(Reply(prelude=[thinking(*THOUGHTS)], pieces=ANSWER, gap=0.05))
    else:
        fake = await start_fake(FakeOpenAI)
        field = kind.split("-", 1)[1]
        # Reasoning, then content mixed in: a delta may carry either.
        fake.enqueue(Reply(prelude=reasoning(*THOUGHTS, field=field), pieces=ANSWER, gap=0.05))
    server = await one_worker(start_server, make_settings, fake)
    starter, plain, thinker = await connect(server), await connect(server), await connect(server)
    ack = await starter.call(
        "chat_stream", {"message": "2+2?", "reasoning": True, "thinking_budget": 2048}
    )
    stream_id, session_id = ack["stream_id"], ack["session_id"]
    joined_plain = await plain.call("session_join", {"session_id": session_id})
    joined_thinker = await thinker.call(
        "session_join", {"session_id": session_id, "reasoning": True}
    )
    assert "reasoning_seq" not in (joined_plain["active_stream"] or {})
    await plain.call("chat_resume", {"stream_id": stream_id})
    await thinker.call("chat_resume", {"stream_id": stream_id, "reasoning": True})
    event, done = await starter.wait_terminal(stream_id, within=20)
    await plain.wait_terminal(stream_id)
    await thinker.wait_terminal(stream_id)

    assert event == "chat_complete"
    assert done["full_response"] == "".join(ANSWER)  # the text alone
    assert done["reasoning_chars"] == len("".join(THOUGHTS))
    assert isinstance(done["reasoning_ms"], int)
    assert done["reasoning_ms"] >= 0
    violations: list[str] = []
    for label, client in (("starter", starter), ("plain", plain), ("thinker", thinker)):
        view = seen(client.events, stream_id)
        violations += check_follower(label, view, start=1, must_end=True)
        assert "".join(t["token"] for t in view.tokens) == done["full_response"], label
    assert_none(violations)
    check_reasoning("starter", reasoning_of(starter, stream_id), "".join(THOUGHTS))
    check_reasoning("thinker", reasoning_of(thinker, stream_id), "".join(THOUGHTS))
    assert reasoning_of(plain, stream_id) == []  # exactly the old protocol
    assert joined_thinker["ok"]

    # Stored apart from the text; shown to a client that asks, never the signed blocks.
    asked = await thinker.call("session_join", {"session_id": session_id, "reasoning": True})
    reply = asked["messages"][-1]
    assert (reply["content"], reply["reasoning"]) == ("".join(ANSWER), "".join(THOUGHTS))
    assert "signed" not in reply
    old = await plain.call("session_join", {"session_id": session_id})
    assert "reasoning" not in old["messages"][-1]
    assert "signed" not in old["messages"][-1]
    assert "reasoning" not in old["messages"][0]


async def test_openai_usage_reports_reasoning_tokens_and_effort_passes_through(
    start_fake: Any, start_server: Any, make_settings: Any, connect: Connect
) -> None:
    fake: FakeOpenAI = await start_fake(FakeOpenAI)
    fake.enqueue(Reply(prelude=reasoning("hm"), pieces=["ok"], usage=(5, 9), reasoning_tokens=6))
    server = await one_worker(start_server, make_settings, fake, reasoning_effort="low")
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "q", "reasoning_effort": "high"})
    event, done = await client.wait_terminal(ack["stream_id"], within=20)
    assert event == "chat_complete"
    assert done["reasoning_chars"] == 2
    assert fake.requests[-1].body["reasoning_effort"] == "high"  # the request's wins
    assert done["usage"] == {"input_tokens": 5, "output_tokens": 9, "reasoning_tokens": 6}
    ack = await client.call("chat_stream", {"message": "q2", "session_id": ack["session_id"]})
    fake.enqueue(Reply(pieces=["ok"]))
    await client.wait_terminal(ack["stream_id"], within=20)
    assert fake.requests[-1].body["reasoning_effort"] == "low"  # else the provider's


async def test_a_multi_turn_anthropic_conversation_sends_the_signed_thinking_back(
    start_fake: Any, start_server: Any, make_settings: Any, connect: Connect
) -> None:
    fake: FakeAnthropic = await start_fake(FakeAnthropic)
    fake.enqueue(Reply(prelude=[thinking("First, ", "think.")], pieces=["Four."]))
    fake.enqueue(Reply(prelude=[thinking("Again.")], pieces=["Eight."]))
    server = await one_worker(start_server, make_settings, fake, thinking_budget=1024)
    client = await connect(server)
    first = await client.call("chat_stream", {"message": "2+2?"})
    await client.wait_terminal(first["stream_id"], within=20)
    assert fake.requests[0].body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    second = await client.call(
        "chat_stream", {"message": "and 4+4?", "session_id": first["session_id"]}
    )
    await client.wait_terminal(second["stream_id"], within=20)
    turns = fake.requests[1].body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][0] == {
        "type": "thinking",
        "thinking": "First, think.",
        "signature": "c2lnbmF0dXJl",
    }
    assert turns[1]["content"][-1] == {"type": "text", "text": "Four."}


async def test_a_thinking_budget_over_the_limit_is_refused_naming_the_field(
    start_server: Any, make_settings: Any, connect: Connect
) -> None:
    server = await start_server(make_settings(limits={"max_thinking_budget": 4000}))
    client = await connect(server)
    ack = await client.call("chat_stream", {"message": "q", "thinking_budget": 5000})
    assert ack["ok"] is False
    assert ack["error"]["message"].startswith("thinking_budget:")
    ack = await client.call("chat_stream", {"message": "q", "thinking_budget": 10})
    assert ack["ok"] is False
    assert ack["error"]["message"].startswith("thinking_budget")
    ack = await client.call("chat_stream", {"message": "q", "reasoning": "yes"})
    assert ack["ok"] is False
    assert ack["error"]["message"].startswith("reasoning")
    ack = await client.call("chat_resume", {"stream_id": "st_x", "after_reasoning": -1})
    assert ack["ok"] is False
    assert ack["error"]["message"].startswith("after_reasoning")


def demo_server(start_server: Any, make_settings: Any, tps: float) -> Any:
    """The demo provider, reasoning before it answers, at `tps` pieces a second."""
    return start_server(
        make_settings(
            demo={"tokens_per_second": tps},
            providers={"demo": {"kind": "demo", "thinking_budget": 1024}},
        )
    )


async def test_stop_during_reasoning_keeps_what_was_sent(
    start_server: Any, make_settings: Any, connect: Connect
) -> None:
    server = await demo_server(start_server, make_settings, tps=20)
    client, plain = await connect(server), await connect(server)
    ack = await client.call("chat_stream", {"message": "think hard", "reasoning": True})
    stream_id = ack["stream_id"]
    await plain.call("session_join", {"session_id": ack["session_id"]})
    await client.wait_for(lambda _: len(reasoning_of(client, stream_id)) >= 3)
    assert (await client.call("chat_stop", {"stream_id": stream_id}))["stopped"] is True
    event, done = await client.wait_terminal(stream_id)
    await plain.wait_terminal(stream_id)
    sent = "".join(e["reasoning"] for e in reasoning_of(client, stream_id))
    assert (event, done["stopped"], done["full_response"]) == ("chat_complete", True, "")
    assert done["reasoning_chars"] == len(sent)
    assert client.tokens(stream_id) == []
    assert plain.of("chat_reasoning") == []
    joined = await client.call("session_join", {"session_id": ack["session_id"], "reasoning": True})
    reply = joined["messages"][-1]
    assert (reply["status"], reply["content"], reply["reasoning"]) == ("stopped", "", sent)


async def test_resume_mid_reasoning_gets_the_rest_once(
    start_server: Any, make_settings: Any, connect: Connect
) -> None:
    server = await demo_server(start_server, make_settings, tps=40)
    owner, late = await connect(server), await connect(server)
    ack = await owner.call("chat_stream", {"message": "resume me", "reasoning": True})
    stream_id = ack["stream_id"]
    await owner.wait_for(lambda _: len(reasoning_of(owner, stream_id)) >= 4)
    have = reasoning_of(owner, stream_id)[:2]
    # A reload that had two reasoning flushes and no text yet.
    reply = await late.call(
        "chat_resume",
        {"stream_id": stream_id, "after": 0, "after_reasoning": 2, "reasoning": True},
    )
    assert reply["ok"], reply
    _event, done = await late.wait_terminal(stream_id, within=20)
    await owner.wait_terminal(stream_id)
    full = "".join(e["reasoning"] for e in reasoning_of(owner, stream_id))
    got = reasoning_of(late, stream_id)
    check_reasoning("late", got, full[len("".join(e["reasoning"] for e in have)) :], first=3)
    assert_none(check_follower("late", seen(late.events, stream_id), start=1, must_end=True))
    assert "".join(t["token"] for t in late.tokens(stream_id)) == done["full_response"]
    # After the end: an opted-in resume from 0 replays both, in log order.
    again = await late.call(
        "chat_resume", {"stream_id": stream_id, "reasoning": True, "after_reasoning": 0}
    )
    assert again == {"ok": True, "status": "complete"}


async def test_many_streams_with_reasoning_at_once(
    start_server: Any, make_settings: Any, connect: Connect
) -> None:
    """Twenty streams reasoning at once, each with an opted-in starter, a plain second
    tab and an opted-in tab that resumes mid-stream: every follower gets each seq of
    each kind once, one terminal, text equal to the stored reply; nothing is left."""
    server = await demo_server(start_server, make_settings, tps=200)
    count = 20
    starters = [await connect(server) for _ in range(count)]
    plains = [await connect(server) for _ in range(count)]
    tabs = [await connect(server) for _ in range(count)]
    acks = await asyncio.gather(
        *(
            s.call("chat_stream", {"message": f"stream {n}", "reasoning": True})
            for n, s in enumerate(starters)
        )
    )

    async def follow(n: int) -> None:
        ack = acks[n]
        await plains[n].call("session_join", {"session_id": ack["session_id"]})
        await plains[n].call("chat_resume", {"stream_id": ack["stream_id"]})
        await asyncio.sleep(0.01 * n)
        await tabs[n].call("chat_resume", {"stream_id": ack["stream_id"], "reasoning": True})

    await asyncio.gather(*(follow(n) for n in range(count)))
    violations: list[str] = []
    for n, ack in enumerate(acks):
        stream_id = ack["stream_id"]
        _, done = await starters[n].wait_terminal(stream_id, within=30)
        full = None
        for label, client in (("starter", starters[n]), ("plain", plains[n]), ("tab", tabs[n])):
            await client.wait_terminal(stream_id, within=30)
            view = seen(client.events, stream_id)
            violations += check_follower(f"{label} {n}", view, start=1, must_end=True)
            if "".join(t["token"] for t in view.tokens) != done["full_response"]:
                violations.append(f"{label} {n}: text differs")
            if label == "plain":
                if reasoning_of(client, stream_id):
                    violations.append(f"plain {n}: got reasoning")
                continue
            got = reasoning_of(client, stream_id)
            if [e["seq"] for e in got] != list(range(1, len(got) + 1)):
                violations.append(f"{label} {n}: reasoning seqs {[e['seq'] for e in got]}")
            text = "".join(e["reasoning"] for e in got)
            full = text if full is None else full
            if text != full or len(text) != done["reasoning_chars"]:
                violations.append(f"{label} {n}: reasoning differs")
        joined = await plains[n].call(
            "session_join", {"session_id": ack["session_id"], "reasoning": True}
        )
        stored = [m for m in joined["messages"] if m["role"] == "assistant"]
        if len(stored) != 1 or stored[0]["content"] != done["full_response"]:
            violations.append(f"stream {n}: stored {len(stored)} replies")
        elif stored[0]["reasoning"] != full:
            violations.append(f"stream {n}: stored reasoning differs")
    assert_none(violations)
    runner = server.app[RUNNER]
    assert await poll_until(lambda: not runner.streams and runner.task_count == 0, within=10)
    assert await server.app[STORE].active_streams() == []


async def test_a_socket_that_opts_in_after_it_joined_gets_the_reasoning_it_missed(
    start_server: Any, make_settings: Any, connect: Connect
) -> None:
    """It streamed (or joined) without reasoning, then asks for it mid-stream: the
    join says where its live reasoning begins and a resume fills in the rest."""
    server = await demo_server(start_server, make_settings, tps=40)
    client, owner = await connect(server), await connect(server)
    ack = await owner.call("chat_stream", {"message": "opt in later", "reasoning": True})
    stream_id, session_id = ack["stream_id"], ack["session_id"]
    await client.call("session_join", {"session_id": session_id})  # text only
    await owner.wait_for(lambda _: len(reasoning_of(owner, stream_id)) >= 4)
    joined = await client.call("session_join", {"session_id": session_id, "reasoning": True})
    assert joined["active_stream"]["reasoning_seq"] >= 4
    reply = await client.call(
        "chat_resume", {"stream_id": stream_id, "reasoning": True, "after_reasoning": 0}
    )
    assert reply["ok"], reply
    _, done = await client.wait_terminal(stream_id, within=20)
    await owner.wait_terminal(stream_id)
    assert_none(check_follower("late", seen(client.events, stream_id), start=1, must_end=True))
    full = "".join(e["reasoning"] for e in reasoning_of(owner, stream_id))
    check_reasoning("late", reasoning_of(client, stream_id), full)
    assert "".join(t["token"] for t in client.tokens(stream_id)) == done["full_response"]
    # After the end, another socket that had the text only asks for the reasoning.
    other = await connect(server)
    await other.call("session_join", {"session_id": session_id})
    await other.call("chat_resume", {"stream_id": stream_id})
    await other.wait_terminal(stream_id)
    await other.call("session_join", {"session_id": session_id, "reasoning": True})
    again = await other.call(
        "chat_resume",
        {"stream_id": stream_id, "reasoning": True, "after": len(other.tokens(stream_id))},
    )
    assert again == {"ok": True, "status": "complete"}
    check_reasoning("after the end", reasoning_of(other, stream_id), full)
    assert len(other.of("chat_complete", stream_id)) == 1


async def test_opting_in_on_a_resume_alone_gets_every_reasoning_entry(
    start_server: Any, make_settings: Any, connect: Connect
) -> None:
    """A client that followed the text alone asks for the reasoning with its text seq
    (chat_resume without a join; a new connection): nothing of the reasoning is
    skipped, though it lies before that seq in the log."""
    server = await demo_server(start_server, make_settings, tps=400)
    owner, plain, fresh = await connect(server), await connect(server), await connect(server)
    ack = await owner.call("chat_stream", {"message": "opt in on resume", "reasoning": True})
    stream_id = ack["stream_id"]
    await plain.call("chat_resume", {"stream_id": stream_id})
    _, done = await plain.wait_terminal(stream_id, within=20)
    full = "".join(e["reasoning"] for e in reasoning_of(owner, stream_id))
    text_seq = len(plain.tokens(stream_id))
    asked = {"stream_id": stream_id, "after": text_seq, "reasoning": True}
    assert (await plain.call("chat_resume", asked))["status"] == "complete"
    assert (await fresh.call("chat_resume", asked))["status"] == "complete"
    for label, client in (("same socket", plain), ("new socket", fresh)):
        check_reasoning(label, reasoning_of(client, stream_id), full)
    assert len(fresh.tokens(stream_id)) == 0  # it had the text
    assert done["full_response"]


async def test_a_refused_resume_that_opted_in_leaves_no_reasoning_room_behind(
    start_server: Any, make_settings: Any, connect: Connect
) -> None:
    server = await start_server(
        make_settings(
            demo={"tokens_per_second": 400},
            providers={"demo": {"kind": "demo", "thinking_budget": 1024}},
            stream={"max_log_entries": 5},  # the log keeps its last 5 entries only
        )
    )
    owner, refused = await connect(server), await connect(server)
    ack = await owner.call("chat_stream", {"message": "a long one", "reasoning": True})
    await owner.wait_terminal(ack["stream_id"], within=20)
    reply = await refused.call("chat_resume", {"stream_id": ack["stream_id"], "reasoning": True})
    assert reply["error"]["code"] == "log_unavailable"
    again = await owner.call(
        "chat_stream", {"message": "next", "session_id": ack["session_id"], "reasoning": True}
    )
    await owner.wait_terminal(again["stream_id"], within=20)
    assert refused.of("chat_reasoning") == []
    assert refused.of("chat_token") == []


async def test_a_join_with_after_sends_the_reply_so_far_before_its_end(
    start_server: Any, make_settings: Any, connect: Connect
) -> None:
    """session_join {after: 0}: the active reply's earlier tokens (and reasoning, opted
    in) come with the join, so a stream that ends right after the join never sends
    its end before them. Many streams end around their tabs' joins."""
    server = await demo_server(start_server, make_settings, tps=300)
    count = 16
    owners = [await connect(server) for _ in range(count)]
    tabs = [await connect(server) for _ in range(count)]
    acks = await asyncio.gather(
        *(
            o.call("chat_stream", {"message": f"j{n}", "reasoning": True})
            for n, o in enumerate(owners)
        )
    )

    async def join(n: int) -> None:
        await asyncio.sleep(0.02 * n)
        asked = {"session_id": acks[n]["session_id"], "after": 0, "reasoning": n % 2 == 0}
        assert (await tabs[n].call("session_join", asked))["ok"]

    await asyncio.gather(*(join(n) for n in range(count)))
    problems: list[str] = []
    for n, ack in enumerate(acks):
        stream_id = ack["stream_id"]
        _, done = await owners[n].wait_terminal(stream_id, within=30)
        joined_late = not tabs[n].of("chat_complete", stream_id)
        if joined_late:  # it ended before the join: its reply is in the messages
            continue
        view = seen(tabs[n].events, stream_id)
        problems += check_follower(f"tab {n}", view, start=1, must_end=True)
        # The catch-up and live tokens may interleave: a client orders them by seq.
        text = "".join(t["token"] for t in sorted(view.tokens, key=lambda t: t["seq"]))
        if text != done["full_response"]:
            problems.append(f"tab {n}: text differs")
        if n % 2 == 0:
            full = "".join(e["reasoning"] for e in reasoning_of(owners[n], stream_id))
            got = tabs[n].of("chat_reasoning", stream_id)
            if "".join(e["reasoning"] for e in sorted(got, key=lambda e: e["seq"])) != full:
                problems.append(f"tab {n}: reasoning differs")
    assert_none(problems)
