"""Regenerate over Socket.IO and HTTP, on a real server (in-process app, memory store).

A regenerate streams a new reply to the session's last user message; the
provider gets the history up to that message without the reply it replaces;
the new reply takes the old one's place under the same message_id and the old
one is kept in `versions`. Idempotency, the stream limit, stop and bad input
behave as for chat_stream.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from chatsock.app import RUNNER, STORE
from chatsock.providers.base import ProviderStreamError
from chatsock.store.models import Message, SessionInfo
from tests.conftest import ServerFactory, url_of
from tests.fakes.provider import ScriptedProvider
from tests.fakes.upstream import FakeAnthropic, FakeOpenAI, Reply, thinking
from tests.support.clients import RecordingClient
from tests.support.http import SSE, SSEReader, tokens
from tests.support.invariants import (
    assert_none,
    check_follower,
    check_persisted,
    check_terminals_agree,
    merge_tokens,
    seen,
)
from tests.test_ownership import SECRET, bearer, token
from tests.test_provider_chain import config_for, start_fake

__all__ = ["start_fake"]  # the fixture, re-exported for pytest


async def converse(client: RecordingClient, *messages: str, session_id: str = "s1") -> list[Any]:
    """Send each message in turn and wait for its reply; the acks."""
    acks = []
    for text in messages:
        ack = await client.call("chat_stream", {"message": text, "session_id": session_id})
        assert ack["ok"], ack
        await client.wait_terminal(ack["stream_id"])
        acks.append(ack)
    return acks


async def regenerate(client: RecordingClient, **fields: Any) -> tuple[Any, str, Any]:
    """chat_regenerate; its ack and terminal event."""
    ack = await client.call("chat_regenerate", {"session_id": "s1", **fields})
    assert ack["ok"], ack
    event, end = await client.wait_terminal(ack["stream_id"])
    return ack, event, end


async def stored(client: RecordingClient, session_id: str = "s1") -> list[dict[str, Any]]:
    join = await client.call("session_join", {"session_id": session_id})
    assert join["ok"], join
    return list(join["messages"])


async def test_a_regenerate_replaces_the_reply_under_its_id_and_keeps_the_old_as_a_version(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider
) -> None:
    fake_provider.enqueue("first ", "answer")
    fake_provider.enqueue("second ", "answer")
    client = await connect(server)
    (first,) = await converse(client, "question")
    ack, event, end = await regenerate(client)
    old_id = first["message_id"]
    assert ack["message_id"] == ack["regenerates"] == old_id
    assert set(ack) == {"ok", "stream_id", "session_id", "message_id", "epoch", "regenerates"}
    start = client.of("chat_stream_start", ack["stream_id"])[0]
    assert start["regenerates"] == old_id
    assert event == "chat_complete"
    assert (end["full_response"], end["message_id"], end["regenerates"]) == (
        "second answer",
        old_id,
        old_id,
    )
    user, reply = await stored(client)
    assert (user["role"], user["content"]) == ("user", "question")
    assert (reply["message_id"], reply["content"], reply["status"]) == (
        old_id,
        "second answer",
        "complete",
    )
    assert reply["stream_id"] == ack["stream_id"]
    (version,) = reply["versions"]
    assert version["content"] == "first answer"
    assert version["status"] == "complete"
    assert version["stream_id"] == first["stream_id"]
    assert "message_id" not in version
    assert "role" not in version
    # A chat_stream's payloads read as they always did.
    assert "regenerates" not in first
    assert "versions" not in user


async def test_two_regenerates_keep_both_earlier_replies_oldest_first(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider
) -> None:
    for text in ("one", "two", "three"):
        fake_provider.enqueue(text)
    client = await connect(server)
    (first,) = await converse(client, "question")
    await regenerate(client, message_id=first["message_id"])
    await regenerate(client, message_id=first["message_id"])
    _, reply = await stored(client)
    assert reply["content"] == "three"
    assert [v["content"] for v in reply["versions"]] == ["one", "two"]


async def test_the_provider_gets_the_history_up_to_the_last_user_message_without_the_old_reply(
    start_server: ServerFactory, make_settings: Any, clients: list[RecordingClient]
) -> None:
    """Through the real OpenAI wire format: the regenerate's request ends with the
    last user message; the reply it replaces is not in it, earlier turns are."""
    async with FakeOpenAI() as upstream:
        upstream.enqueue(Reply(["A1"]), Reply(["A2"]), Reply(["A2 again"]))
        settings = make_settings(
            providers={
                "main": {
                    "kind": "openai",
                    "base_url": upstream.base_url,
                    "api_key": "sk-test",
                    "model": "gpt-test",
                    "max_retries": 0,
                }
            },
            chain=["main"],
        )
        server = await start_server(settings)
        client = await RecordingClient().connect(url_of(server))
        clients.append(client)
        await converse(client, "Q1", "Q2")
        _, event, end = await regenerate(client, system_prompt="be brief")
        assert (event, end["full_response"]) == ("chat_complete", "A2 again")
        sent = [(m["role"], m["content"]) for m in upstream.requests[-1].body["messages"]]
        assert sent == [
            ("system", "be brief"),
            ("user", "Q1"),
            ("assistant", "A1"),
            ("user", "Q2"),
        ]
        assert upstream.requests[-1].body["model"] == "gpt-test"


async def test_an_anthropic_regenerate_sends_earlier_signed_thinking_but_not_the_replaced_turn(
    start_fake: Any, start_server: ServerFactory, make_settings: Any, connect: Any
) -> None:
    """Through the Anthropic SDK: the earlier turn goes back with its signed thinking,
    the replaced reply (and its thinking) not at all; the old reply's reasoning is
    kept in its version, shown only to a client that opted in."""
    fake: FakeAnthropic = await start_fake(FakeAnthropic)
    fake.enqueue(Reply(prelude=[thinking("First, ", "think.")], pieces=["Four."]))
    fake.enqueue(Reply(prelude=[thinking("Again.")], pieces=["Eight."]))
    fake.enqueue(Reply(prelude=[thinking("Once more.")], pieces=["Still eight."]))
    settings = make_settings(providers={"up": config_for(fake, thinking_budget=1024)}, chain=["up"])
    client = await connect(await start_server(settings))
    await converse(client, "2+2?", "and 4+4?")
    _, event, end = await regenerate(client)
    assert (event, end["full_response"]) == ("chat_complete", "Still eight.")
    turns = fake.requests[-1].body["messages"]
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"][0] == {
        "type": "thinking",
        "thinking": "First, think.",
        "signature": "c2lnbmF0dXJl",
    }
    assert "Eight." not in str(turns)
    assert "Again." not in str(turns)
    plain = (await stored(client))[-1]
    assert "reasoning" not in plain["versions"][0]
    assert "signed" not in plain["versions"][0]
    join = await client.call("session_join", {"session_id": "s1", "reasoning": True})
    reply = join["messages"][-1]
    assert (reply["content"], reply["reasoning"]) == ("Still eight.", "Once more.")
    assert [(v["content"], v["reasoning"]) for v in reply["versions"]] == [("Eight.", "Again.")]


async def test_a_repeated_client_message_id_starts_nothing_and_answers_the_first_ack(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider
) -> None:
    fake_provider.enqueue("one")
    script = fake_provider.enqueue("two ")
    gate = script.gate()
    script.text("done")
    client = await connect(server)
    await converse(client, "question")
    body = {"session_id": "s1", "client_message_id": "regen-1"}
    first = await client.call("chat_regenerate", body)
    again = await client.call("chat_regenerate", body)  # while it streams
    assert first["ok"]
    assert again == first
    gate.set()
    await client.wait_terminal(first["stream_id"])
    assert await client.call("chat_regenerate", body) == first  # after it ended
    assert len(fake_provider.requests) == 2
    _, reply = await stored(client)
    assert reply["content"] == "two done"
    assert [v["content"] for v in reply["versions"]] == ["one"]


async def test_a_regenerate_while_a_reply_streams_is_refused_with_too_many_streams(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider
) -> None:
    """limits.max_streams_per_session is 1 by default."""
    fake_provider.enqueue("one")
    script = fake_provider.enqueue("streaming ")
    gate = script.gate()
    client = await connect(server)
    await converse(client, "question")
    running = await client.call("chat_regenerate", {"session_id": "s1"})
    assert running["ok"], running
    await client.wait_event("chat_token", running["stream_id"])
    for body in (
        {"session_id": "s1"},
        {"session_id": "s1", "message_id": running["message_id"]},
    ):
        refused = await client.call("chat_regenerate", body)
        assert refused["ok"] is False
        assert refused["error"]["code"] == "too_many_streams", refused
    # A new user message's reply, still streaming: naming it is too_many_streams too.
    gate.set()
    await client.wait_terminal(running["stream_id"])
    script = fake_provider.enqueue("next ")
    gate = script.gate()
    ack = await client.call("chat_stream", {"message": "more", "session_id": "s1"})
    refused = await client.call(
        "chat_regenerate", {"session_id": "s1", "message_id": ack["message_id"]}
    )
    assert refused["error"]["code"] == "too_many_streams", refused
    assert refused["error"]["message"].startswith("message_id: ")
    gate.set()
    await client.wait_terminal(ack["stream_id"])


async def test_while_a_regenerate_streams_a_reload_shows_the_old_reply_and_the_active_stream(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider
) -> None:
    fake_provider.enqueue("old reply")
    script = fake_provider.enqueue("new ")
    gate = script.gate()
    script.text("reply")
    client = await connect(server)
    await converse(client, "question")
    ack = await client.call("chat_regenerate", {"session_id": "s1"})
    await client.wait_event("chat_token", ack["stream_id"])
    tab = await connect(server)
    join = await tab.call("session_join", {"session_id": "s1"})
    assert [m["content"] for m in join["messages"]] == ["question", "old reply"]
    assert join["active_stream"]["stream_id"] == ack["stream_id"]
    assert join["active_stream"]["regenerates"] == ack["message_id"]
    resumed = await tab.call("chat_resume", {"stream_id": ack["stream_id"], "after": 0})
    assert resumed["ok"], resumed
    gate.set()
    for follower in (client, tab):
        event, end = await follower.wait_terminal(ack["stream_id"])
        assert (event, end["full_response"], end["regenerates"]) == (
            "chat_complete",
            "new reply",
            ack["message_id"],
        )
    assert "".join(t["token"] for t in tab.tokens(ack["stream_id"])) == "new reply"


async def test_a_stopped_regenerate_stores_its_partial_as_the_reply_and_keeps_the_old(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider
) -> None:
    fake_provider.enqueue("old reply")
    script = fake_provider.enqueue("half ")
    script.gate()  # never opened: the stop ends it
    client = await connect(server)
    await converse(client, "question")
    ack = await client.call("chat_regenerate", {"session_id": "s1"})
    await client.wait_event("chat_token", ack["stream_id"])
    assert await client.call("chat_stop", {"stream_id": ack["stream_id"]}) == {
        "ok": True,
        "stopped": True,
    }
    event, end = await client.wait_terminal(ack["stream_id"])
    assert (event, end["stopped"], end["full_response"]) == ("chat_complete", True, "half ")
    _, reply = await stored(client)
    assert (reply["message_id"], reply["content"], reply["status"]) == (
        ack["message_id"],
        "half ",
        "stopped",
    )
    assert [(v["content"], v["status"]) for v in reply["versions"]] == [("old reply", "complete")]


async def test_a_failed_regenerate_stores_its_partial_marked_error_and_keeps_the_old(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider
) -> None:
    fake_provider.enqueue("old reply")
    fake_provider.enqueue("broken ").sleep(0.05).fail(ProviderStreamError("reset", provider="fake"))
    client = await connect(server)
    await converse(client, "question")
    ack, event, end = await regenerate(client)
    assert (event, end["code"], end["partial"]) == (
        "chat_stream_error",
        "provider_error",
        "broken ",
    )
    assert end["regenerates"] == ack["message_id"]
    _, reply = await stored(client)
    assert (reply["content"], reply["status"], reply["error_code"]) == (
        "broken ",
        "error",
        "provider_error",
    )
    assert [v["content"] for v in reply["versions"]] == ["old reply"]


async def test_a_regenerate_after_a_reply_that_was_never_stored_answers_the_last_user_message(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider
) -> None:
    """No reply follows the last user message (its stream's start failed, say): a
    regenerate streams one, under a new message id, with no versions."""
    store = server.app[STORE]  # the app's own: a session ending with a user turn
    await store.ensure_session(SessionInfo("s1", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"))
    await store.add_message("s1", Message("msg_u1", "user", "lonely", "2026-01-01T00:00:00Z"))
    fake_provider.enqueue("answer")
    client = await connect(server)
    ack, event, end = await regenerate(client)
    assert (event, end["full_response"]) == ("chat_complete", "answer")
    assert ack["regenerates"] == ack["message_id"]
    user, reply = await stored(client)
    assert (user["content"], reply["content"], reply["message_id"]) == (
        "lonely",
        "answer",
        ack["message_id"],
    )
    assert "versions" not in reply
    assert [m.content for m in fake_provider.requests[-1].messages] == ["lonely"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"session_id": "s1", "message_id": "msg_unknown"}, "message_id"),
        ({"session_id": "s1", "message_id": 123}, "message_id"),
        ({"session_id": "s1", "message_id": "bad id!"}, "message_id"),
        ({"session_id": "s1", "temperature": "0.5"}, "temperature"),
        ({"session_id": "s1", "max_tokens": 0}, "max_tokens"),
        ({"session_id": "s1", "provider": "nope"}, "provider"),
        ({"session_id": "s1", "client_message_id": 7}, "client_message_id"),
        ({"session_id": "s1", "message": "a new message"}, "message"),
        ({"session_id": "s1", "history": []}, "history"),
        ({"message_id": "x"}, "session_id"),
        ({"session_id": 5}, "session_id"),
        ("s1", "payload"),
    ],
)
async def test_bad_input_is_invalid_request_naming_the_field_and_starts_nothing(
    server: TestServer,
    connect: Any,
    fake_provider: ScriptedProvider,
    body: Any,
    field: str,
) -> None:
    fake_provider.enqueue("one")
    client = await connect(server)
    await converse(client, "question")
    answer = await client.call("chat_regenerate", body)
    assert answer["ok"] is False
    assert answer["error"]["code"] == "invalid_request", answer
    assert answer["error"]["message"].startswith(f"{field}: "), answer
    assert len(fake_provider.requests) == 1
    assert [m["content"] for m in await stored(client)] == ["question", "one"]


async def test_naming_an_earlier_reply_is_invalid_request_saying_which_is_the_last(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider
) -> None:
    fake_provider.enqueue("one")
    fake_provider.enqueue("two")
    client = await connect(server)
    first, second = await converse(client, "q1", "q2")
    answer = await client.call(
        "chat_regenerate", {"session_id": "s1", "message_id": first["message_id"]}
    )
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["message"].startswith("message_id: ")
    assert second["message_id"] in answer["error"]["message"]


async def test_an_unknown_session_is_not_found(server: TestServer, connect: Any) -> None:
    client = await connect(server)
    answer = await client.call("chat_regenerate", {"session_id": "nobody-here"})
    assert answer["error"]["code"] == "not_found"
    assert answer["error"]["message"].startswith("session_id: ")


@pytest.fixture
async def jwt_server(start_server: ServerFactory, fake_provider: ScriptedProvider) -> TestServer:
    return await start_server(
        chain=["fake"],
        providers={"fake": fake_provider},
        auth={"mode": "jwt", "jwt_secret": SECRET},
    )


async def test_another_users_session_is_not_found_exactly_as_a_missing_one(
    jwt_server: TestServer,
    fake_provider: ScriptedProvider,
    clients: list[RecordingClient],
    http: aiohttp.ClientSession,
) -> None:
    fake_provider.enqueue("alice's reply")
    alice = await RecordingClient().connect(url_of(jwt_server), auth={"token": token("alice")})
    bob = await RecordingClient().connect(url_of(jwt_server), auth={"token": token("bob")})
    clients.extend([alice, bob])
    await converse(alice, "alice's question")
    theirs = await bob.call("chat_regenerate", {"session_id": "s1"})
    missing = await bob.call("chat_regenerate", {"session_id": "s2"})
    assert theirs["error"]["code"] == missing["error"]["code"] == "not_found"
    assert theirs["error"]["message"] == missing["error"]["message"].replace("s2", "s1")
    base = f"{url_of(jwt_server)}/api/chat/sessions"
    for session_id in ("s1", "s2"):
        response = await http.post(
            f"{base}/{session_id}/regenerate", json={}, headers=bearer("bob")
        )
        assert response.status == 404
        assert (await response.json())["error"]["code"] == "not_found"
    assert len(fake_provider.requests) == 1
    assert [m["content"] for m in await stored(alice)] == ["alice's question", "alice's reply"]


# -- HTTP ---------------------------------------------------------------------------


async def test_http_regenerate_streams_sse_with_the_ids_in_headers(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider, http: aiohttp.ClientSession
) -> None:
    fake_provider.enqueue("old")
    fake_provider.enqueue("new ", "reply").sleep(0.02)
    client = await connect(server)
    (first,) = await converse(client, "question")
    response = await http.post(
        f"{url_of(server)}/api/chat/sessions/s1/regenerate",
        json={"client_message_id": "r1"},
        headers=SSE,
    )
    assert response.status == 200, await response.text()
    assert response.headers["X-Message-Id"] == first["message_id"]
    events = await SSEReader(response).until_end()
    start, *middle, done = events
    assert start.event == "chat_stream_start"
    assert start.data["regenerates"] == first["message_id"]
    assert "".join(t["token"] for t in tokens(middle)) == "new reply"
    assert (done.event, done.data["full_response"], done.data["regenerates"]) == (
        "chat_complete",
        "new reply",
        first["message_id"],
    )
    _, reply = await stored(client)
    assert [v["content"] for v in reply["versions"]] == ["old"]


async def test_http_regenerate_answers_one_json_reply_and_the_session_shows_versions(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider, http: aiohttp.ClientSession
) -> None:
    fake_provider.enqueue("old")
    fake_provider.enqueue("new")
    client = await connect(server)
    (first,) = await converse(client, "question")
    base = f"{url_of(server)}/api/chat/sessions/s1"
    response = await http.post(f"{base}/regenerate", json={"message_id": first["message_id"]})
    assert response.status == 200, await response.text()
    done = await response.json()
    assert (done["full_response"], done["message_id"], done["regenerates"]) == (
        "new",
        first["message_id"],
        first["message_id"],
    )
    session = await (await http.get(base)).json()
    reply = session["messages"][1]
    assert (reply["content"], [v["content"] for v in reply["versions"]]) == ("new", ["old"])


async def test_http_regenerate_bad_input_is_400_naming_the_field(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider, http: aiohttp.ClientSession
) -> None:
    fake_provider.enqueue("old")
    client = await connect(server)
    await converse(client, "question")
    base = f"{url_of(server)}/api/chat/sessions"
    for path, body, field in [
        ("s1", {"message_id": "msg_nope"}, "message_id"),
        ("s1", {"temperature": 9}, "temperature"),
        ("s1", [], "payload"),
        ("bad%20id", {}, "session_id"),
    ]:
        response = await http.post(f"{base}/{path}/regenerate", json=body)
        assert response.status == 400, (path, body)
        error = (await response.json())["error"]
        assert (error["code"], error["message"].split(":")[0]) == ("invalid_request", field)
    assert len(fake_provider.requests) == 1


# -- many at once ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_many_sessions_regenerating_at_once_keep_every_promise(
    request: pytest.FixtureRequest,
    start_server: ServerFactory,
    connect: Any,
    fake_provider: ScriptedProvider,
    backend: str,
) -> None:
    """30 sessions regenerate at once, each asked 3 times with one client_message_id
    and twice with others (limit 1: too_many_streams) while the first accepted
    streams; then all again. Every
    follower gets each seq once and one terminal spelling its tokens, each reply is
    stored once under its message id with the version before it, and no slot or
    task is left."""
    store = {"redis_url": request.getfixturevalue("redis_url")} if backend == "redis" else {}
    server = await start_server(chain=["fake"], providers={"fake": fake_provider}, store=store)
    sessions = [f"s{n}" for n in range(30)]
    client = await connect(server)
    fake_provider.scripts.clear()
    for session_id in sessions:
        fake_provider.enqueue(f"first {session_id}")
    firsts = await asyncio.gather(*(converse(client, "q", session_id=s) for s in sessions))
    reply_ids = {s: acks[0]["message_id"] for s, acks in zip(sessions, firsts, strict=True)}
    problems: list[str] = []
    for round_ in (1, 2):
        gates = []
        for _ in sessions:  # held open until every request is answered
            script = fake_provider.enqueue(f"round {round_} ")
            gates.append(script.gate())
            script.text("done")

        async def ask(session_id: str, cmid: str) -> Any:
            body = {"session_id": session_id, "client_message_id": cmid}
            return await client.call("chat_regenerate", body)

        calls = [
            ask(s, f"{s}-r{round_}" if n < 3 else f"{s}-r{round_}-other{n}")
            for s in sessions
            for n in range(5)
        ]
        answers = await asyncio.gather(*calls)
        for gate in gates:
            gate.set()
        for index, session_id in enumerate(sessions):
            mine = answers[index * 5 : index * 5 + 5]
            same, others = mine[:3], mine[3:]
            accepted = [a for a in mine if a.get("ok")]
            if not (same[0].get("ok") and same[1] == same[0] == same[2]):
                # The shared cmid may lose to an "other" cmid: then all three are refused.
                if not all(a.get("error", {}).get("code") == "too_many_streams" for a in same):
                    problems.append(f"{session_id}: repeated cmid answered {same}")
            streams = {a["stream_id"] for a in accepted}
            if len(streams) != 1:
                problems.append(f"{session_id}: {len(streams)} streams accepted: {mine}")
            for answer in others:
                if not answer.get("ok") and answer["error"]["code"] != "too_many_streams":
                    problems.append(f"{session_id}: refused with {answer}")
        acks = {a["session_id"]: a for a in answers if a.get("ok")}
        for ack in acks.values():
            await client.wait_terminal(ack["stream_id"], within=20)
        for session_id, ack in acks.items():
            view = seen(client.events, ack["stream_id"])
            label = f"round {round_} {session_id}"
            merged, clashes = merge_tokens(label, [view])
            problems += clashes
            problems += check_follower(label, view, start=1, must_end=True, tokens=merged)
            problems += check_terminals_agree(label, view.terminals)
            messages = await stored(client, session_id)
            problems += check_persisted(label, messages, reply_ids[session_id], view.terminals[0])
            if ack["message_id"] != reply_ids[session_id]:
                problems.append(f"{label}: regenerated under {ack['message_id']}")
            reply = messages[-1]
            if len(reply.get("versions", [])) != round_:
                problems.append(f"{label}: {len(reply.get('versions', []))} versions kept")
            if len(messages) != 2:
                problems.append(f"{label}: {len(messages)} messages stored")
    assert_none(problems)
    runner = server.app[RUNNER]
    assert runner.streams == {}
    assert runner.task_count == 0
    assert await server.app[STORE].active_streams() == []


async def test_a_session_without_a_user_message_is_invalid_request_naming_session_id(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider
) -> None:
    store = server.app[STORE]
    await store.ensure_session(SessionInfo("s1", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"))
    client = await connect(server)
    answer = await client.call("chat_regenerate", {"session_id": "s1"})
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["message"].startswith("session_id: ")
    assert fake_provider.requests == []


async def test_http_regenerate_retried_with_its_client_message_id_replays_it_after_last_event_id(
    server: TestServer, connect: Any, fake_provider: ScriptedProvider, http: aiohttp.ClientSession
) -> None:
    fake_provider.enqueue("old")
    fake_provider.enqueue("a", "b", "c").sleep(0.02)
    client = await connect(server)
    await converse(client, "question")
    url = f"{url_of(server)}/api/chat/sessions/s1/regenerate"
    body = {"client_message_id": "r1"}
    first = await http.post(url, json=body, headers=SSE)
    events = await SSEReader(first).until_end()
    sent = tokens(events)
    retry = await http.post(url, json=body, headers={**SSE, "Last-Event-ID": "1"})
    assert retry.headers["X-Stream-Id"] == first.headers["X-Stream-Id"]
    replayed = await SSEReader(retry).until_end()
    assert "chat_stream_start" not in [e.event for e in replayed]
    assert tokens(replayed) == sent[1:]
    assert replayed[-1].data == events[-1].data
    assert len(fake_provider.requests) == 2
