"""`/api/aisdk/chat`: the AI SDK UI message stream (useChat), read on the wire with aiohttp.

Event shapes and order, the stored history, resume (replay from the start,
then live; 204 without an active reply), stop by a client that leaves, the
resume grace, auth, and bad input naming the field. The same routes driven by
the real `ai` / `@ai-sdk/react` packages are in test_aisdk_node.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import jwt
import pytest

from tests.conftest import url_of
from tests.fakes.provider import ScriptedProvider
from tests.support.ui_stream import UIStreamReader

SECRET = "aisdk-test-secret-0123456789-0123456789"


def user_message(text: str, message_id: str = "u1") -> dict[str, Any]:
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def assistant_message(text: str, message_id: str = "a1") -> dict[str, Any]:
    return {"id": message_id, "role": "assistant", "parts": [{"type": "text", "text": text}]}


def body(chat_id: str, *messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """What DefaultChatTransport posts."""
    return {
        "id": chat_id,
        "messages": list(messages),
        "trigger": "submit-message",
        "messageId": None,
        **extra,
    }


async def post(
    http: aiohttp.ClientSession, url: str, payload: Any, headers: dict[str, str] | None = None
) -> UIStreamReader:
    response = await http.post(f"{url}/api/aisdk/chat", json=payload, headers=headers)
    assert response.status == 200, await response.text()
    return UIStreamReader(response)


async def stored(http: aiohttp.ClientSession, url: str, chat_id: str) -> dict[str, Any]:
    """The session's last message (the assistant's reply)."""
    async with http.get(f"{url}/api/chat/sessions/{chat_id}") as response:
        assert response.status == 200
        messages: list[dict[str, Any]] = (await response.json())["messages"]
    return messages[-1]


async def ended(http: aiohttp.ClientSession, url: str, chat_id: str) -> dict[str, Any]:
    """The reply once stored (a stopped stream stores it a moment after)."""
    async with asyncio.timeout(10):
        while True:
            last = await stored(http, url, chat_id)
            if last["role"] == "assistant":
                return last
            await asyncio.sleep(0.05)


async def test_a_reply_is_the_ui_message_stream_and_is_stored(server, fake_provider, http):
    fake_provider.enqueue("Hello", ", ", "world")
    url = url_of(server)
    reader = await post(http, url, body("chat1", user_message("hi")))
    headers = reader.response.headers
    assert headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert headers["Content-Type"] == "text/event-stream"
    chunks = await reader.until_done()
    assert reader.kinds() == ["start", "text-start", "text-delta", "text-end", "finish"]
    start, text_start, *_ = chunks
    reply = await stored(http, url, "chat1")
    assert start["messageId"] == reply["message_id"]
    assert start["messageMetadata"]["session_id"] == "chat1"
    assert {c["id"] for c in chunks if c["type"].startswith("text-")} == {text_start["id"]}
    assert reader.text() == reply["content"] == "Hello, world"
    assert chunks[-1]["finishReason"] == "stop"
    assert chunks[-1]["messageMetadata"]["stopped"] is False


async def test_history_is_the_stored_session_where_client_history_is_not_allowed(
    start_server, http
):
    provider = ScriptedProvider("fake")
    provider.enqueue("first reply")
    provider.enqueue("second reply")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, limits={"allow_client_history": False}
    )
    url = url_of(server)
    await (await post(http, url, body("chat2", user_message("one", "u1")))).until_done()
    forged = assistant_message("I said something else", "a1")
    second = body("chat2", user_message("one", "u1"), forged, user_message("two", "u2"))
    await (await post(http, url, second)).until_done()
    sent = [(m.role, m.content) for m in provider.requests[1].messages]
    assert sent == [("user", "one"), ("assistant", "first reply"), ("user", "two")]


async def test_client_history_is_used_where_the_policy_allows_it(server, fake_provider, http):
    fake_provider.enqueue("ok")
    history = [user_message("a", "u1"), assistant_message("b"), user_message("c", "u2")]
    await (await post(http, url_of(server), body("chat3", *history))).until_done()
    sent = [(m.role, m.content) for m in fake_provider.requests[0].messages]
    assert sent == [("user", "a"), ("assistant", "b"), ("user", "c")]


async def test_only_the_new_message_sent_gets_the_stored_history(server, fake_provider, http):
    """The AI SDK's advice for chats stored on the server: send only the last message."""
    fake_provider.enqueue("first reply")
    fake_provider.enqueue("second reply")
    url = url_of(server)
    await (await post(http, url, body("chat3b", user_message("one", "u1")))).until_done()
    await (await post(http, url, body("chat3b", user_message("two", "u2")))).until_done()
    sent = [(m.role, m.content) for m in fake_provider.requests[1].messages]
    assert sent == [("user", "one"), ("assistant", "first reply"), ("user", "two")]


async def test_a_provider_error_is_an_error_chunk_after_the_partial(server, fake_provider, http):
    from chatsock.providers.base import ProviderError

    fake_provider.enqueue("partial ").fail(ProviderError("upstream reset"))
    reader = await post(http, url_of(server), body("chat4", user_message("hi")))
    chunks = await reader.until_done()
    assert reader.kinds() == ["start", "text-start", "text-delta", "text-end", "error"]
    assert reader.text() == "partial "
    assert chunks[-1]["errorText"].startswith("provider_error: ")
    assert "upstream reset" in chunks[-1]["errorText"]


async def test_resume_replays_the_active_reply_from_its_start_then_follows_it(
    server, fake_provider, http
):
    script = fake_provider.enqueue("one ", "two ")
    gate = script.gate()
    script.text("three")
    url = url_of(server)
    first = await post(http, url, body("chat5", user_message("hi")))
    await first.until_text("one two ")
    resumed = await http.get(f"{url}/api/aisdk/chat/chat5/stream")
    assert resumed.status == 200
    assert resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
    again = UIStreamReader(resumed)
    await again.until("text-delta")
    gate.set()
    await again.until_done()
    await first.until_done()
    assert again.kinds() == first.kinds()
    assert again.chunks[0] == first.chunks[0]  # the same start: the same message id
    assert again.text() == first.text() == (await stored(http, url, "chat5"))["content"]


@pytest.mark.parametrize("chat_id", ["never-used", "chat6"])
async def test_resume_without_an_active_reply_is_204(server, fake_provider, http, chat_id):
    fake_provider.enqueue("done")
    url = url_of(server)
    await (await post(http, url, body("chat6", user_message("hi")))).until_done()
    async with http.get(f"{url}/api/aisdk/chat/{chat_id}/stream") as response:
        assert response.status == 204
        assert await response.read() == b""


async def test_a_retried_post_of_the_same_message_replays_its_reply(server, fake_provider, http):
    script = fake_provider.enqueue("a ", "b ")
    gate = script.gate()
    script.text("c")
    url = url_of(server)
    payload = body("chat7", user_message("hi", "same-id"))
    first = await post(http, url, payload)
    await first.until("text-delta")
    first.response.close()
    retry = await post(http, url, payload)
    await retry.until("text-delta")
    gate.set()
    await retry.until_done()
    assert len(fake_provider.requests) == 1
    assert retry.chunks[0]["messageId"] == first.chunks[0]["messageId"]
    assert retry.text() == (await stored(http, url, "chat7"))["content"] == "a b c"


async def test_a_client_that_leaves_stops_the_stream_after_the_grace(start_server, http):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("before ")
    gate = script.gate()
    script.text("never sent")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, http={"aisdk_resume_grace_s": 0.2}
    )
    url = url_of(server)
    reader = await post(http, url, body("chat8", user_message("hi")))
    await reader.until("text-delta")
    reader.response.close()  # useChat's stop(): the fetch is aborted
    reply = await ended(http, url, "chat8")
    assert reply["status"] == "stopped"
    assert reply["content"] == "before "
    assert provider.closed == [True]
    assert not gate.is_set()


async def test_a_resume_within_the_grace_keeps_the_stream_running(start_server, http):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("one ")
    gate = script.gate()
    script.text("two")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, http={"aisdk_resume_grace_s": 1.0}
    )
    url = url_of(server)
    reader = await post(http, url, body("chat9", user_message("hi")))
    await reader.until("text-delta")
    reader.response.close()  # a dropped connection
    resumed = UIStreamReader(await http.get(f"{url}/api/aisdk/chat/chat9/stream"))
    await resumed.until("text-delta")
    await asyncio.sleep(1.3)  # past the grace: the resume kept it running
    gate.set()
    await resumed.until_done()
    reply = await stored(http, url, "chat9")
    assert reply["status"] == "complete"
    assert resumed.text() == reply["content"] == "one two"


async def test_auth_is_required_on_both_routes_in_jwt_mode(start_server, http):
    provider = ScriptedProvider("fake")
    provider.enqueue("hello")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, auth={"mode": "jwt", "jwt_secret": SECRET}
    )
    url = url_of(server)
    async with http.post(f"{url}/api/aisdk/chat", json=body("c", user_message("x"))) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "unauthorized"
    async with http.get(f"{url}/api/aisdk/chat/c/stream") as response:
        assert response.status == 401
    alice = {"Authorization": "Bearer " + jwt.encode({"sub": "alice", "exp": 2**32}, SECRET)}
    bob = {"Authorization": "Bearer " + jwt.encode({"sub": "bob", "exp": 2**32}, SECRET)}
    script = provider.scripts[0]
    gate = script.gate()
    reader = await post(http, url, body("alices", user_message("x")), alice)
    await reader.until("text-delta")
    async with http.get(f"{url}/api/aisdk/chat/alices/stream", headers=bob) as response:
        assert response.status == 204  # another user's chat is as a missing one
    async with http.post(
        f"{url}/api/aisdk/chat", json=body("alices", user_message("mine")), headers=bob
    ) as response:
        assert response.status == 404
    gate.set()
    await reader.until_done()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"messages": [user_message("x")]}, "id: "),
        (body("bad id!", user_message("x")), "id: "),
        (body("c"), "messages: "),
        (body("c", assistant_message("x")), "messages.0.role: "),
        (body("c", {"id": "u", "role": "user", "parts": [{"type": "file"}]}), "messages.0.parts: "),
        (body("c", {"id": "u", "role": "robot", "parts": []}), "messages.0.role: "),
        (body("c", {"role": "user", "parts": []}), "messages.0.id: "),
        ({**body("c", user_message("x")), "trigger": "nonsense"}, "trigger: "),
        (body("c", user_message("x"), temperature="hot"), "temperature: "),
        ([1, 2], "payload: "),
    ],
)
async def test_bad_input_is_refused_naming_the_field(server, fake_provider, http, payload, field):
    async with http.post(f"{url_of(server)}/api/aisdk/chat", json=payload) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["code"] == "invalid_request"
        assert error["message"].startswith(field), error["message"]
    assert fake_provider.requests == []


async def test_a_bad_chat_id_in_the_resume_path_is_refused(server, http):
    async with http.get(f"{url_of(server)}/api/aisdk/chat/a%20b/stream") as response:
        assert response.status == 400
        assert (await response.json())["error"]["message"].startswith("id: ")


async def test_many_chats_stream_resume_and_stop_at_once(start_server, http):
    """CHATS chats at once: a third completes, a third drops and resumes, a third
    stops; every resumed text equals the stored reply, each stopped one is stored
    stopped, and no stream is left running."""
    chats = 12
    provider = ScriptedProvider("fake")
    gates = []
    for i in range(chats):
        script = provider.enqueue(*(f"c{i}.{n} " for n in range(5)))
        gates.append(script.gate())
        script.text("end")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, http={"aisdk_resume_grace_s": 0.5}
    )
    url = url_of(server)

    async def one(i: int) -> None:
        chat_id = f"many{i}"
        reader = await post(http, url, body(chat_id, user_message(f"go {i}")))
        await reader.until("text-delta")
        if i % 3 == 0:
            gates[i].set()
            await reader.until_done()
            reply = await stored(http, url, chat_id)
            assert (reply["status"], reader.text()) == ("complete", reply["content"])
        elif i % 3 == 1:
            reader.response.close()
            resumed = UIStreamReader(await http.get(f"{url}/api/aisdk/chat/{chat_id}/stream"))
            await resumed.until("text-delta")
            gates[i].set()
            await resumed.until_done()
            reply = await stored(http, url, chat_id)
            assert (reply["status"], resumed.text()) == ("complete", reply["content"])
            assert resumed.text().endswith("end")
        else:
            reader.response.close()
            reply = await ended(http, url, chat_id)
            assert reply["status"] == "stopped"
            assert not reply["content"].endswith("end")

    await asyncio.gather(*(one(i) for i in range(chats)))
    async with http.get(f"{url}/api/chat/stream/active") as response:
        assert (await response.json())["count"] == 0


async def test_an_edit_starts_a_new_reply(server, fake_provider, http):
    """sendMessage({messageId}): an edit of the last user message."""
    fake_provider.enqueue("first")
    fake_provider.enqueue("second")
    url = url_of(server)
    payload = body("chat10", user_message("hi", "same-id"))
    await (await post(http, url, payload)).until_done()
    reader = await post(http, url, {**payload, "messageId": "same-id"})
    await reader.until_done()
    assert reader.text() == "second"
    assert len(fake_provider.requests) == 2


async def test_regenerate_replaces_the_stored_reply_with_a_new_version(server, fake_provider, http):
    """useChat's regenerate() of a stored chat: the same message id, its old reply
    kept as a version, the provider asked without it; a message id that is not
    the last reply is refused, naming it."""
    fake_provider.enqueue("first")
    fake_provider.enqueue("second")
    url = url_of(server)
    payload = body("chat11", user_message("hi", "u-1"))
    first = await post(http, url, payload)
    chunks = await first.until_done()
    reply_id = chunks[0]["messageId"]
    again = {**payload, "trigger": "regenerate-message", "messageId": reply_id}
    reader = await post(http, url, again)
    chunks = await reader.until_done()
    assert (chunks[0]["messageId"], reader.text()) == (reply_id, "second")
    assert [m.content for m in fake_provider.requests[1].messages] == ["hi"]
    async with http.get(f"{url}/api/chat/sessions/chat11") as response:
        messages = (await response.json())["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == "second"
    assert [v["content"] for v in messages[1]["versions"]] == ["first"]
    bad = {**again, "messageId": "not-the-reply"}
    async with http.post(f"{url}/api/aisdk/chat", json=bad) as response:
        assert response.status == 400
        assert (await response.json())["error"]["message"].startswith("message_id")


async def test_a_dev_server_on_another_origin_may_call_both_routes(start_server, http):
    """CORS as on every /api/ route: a Vite dev server's useChat preflights the POST."""
    origin = "http://localhost:5173"
    provider = ScriptedProvider("fake")
    provider.enqueue("hi")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, server={"cors_allowed_origins": [origin]}
    )
    url = url_of(server)
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,authorization",
    }
    async with http.options(f"{url}/api/aisdk/chat", headers=preflight) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == origin
    reader = await post(http, url, body("cors1", user_message("x")), {"Origin": origin})
    assert reader.response.headers["Access-Control-Allow-Origin"] == origin
    await reader.until_done()
    async with http.get(f"{url}/api/aisdk/chat/cors1/stream", headers={"Origin": origin}) as r:
        assert r.status == 204
        assert r.headers["Access-Control-Allow-Origin"] == origin


async def test_a_stop_by_stream_id_ends_the_reply_with_a_stopped_finish(
    server, fake_provider, http
):
    script = fake_provider.enqueue("partial ")
    gate = script.gate()
    script.text("never")
    url = url_of(server)
    reader = await post(http, url, body("chat11", user_message("hi")))
    start = await reader.until("start")
    await reader.until("text-delta")
    stream_id = start["messageMetadata"]["stream_id"]
    async with http.post(f"{url}/api/chat/stream/stop", json={"stream_id": stream_id}) as r:
        assert await r.json() == {"ok": True, "stopped": True}
    chunks = await reader.until_done()
    assert reader.kinds() == ["start", "text-start", "text-delta", "text-end", "finish"]
    assert chunks[-1]["messageMetadata"]["stopped"] is True
    assert reader.text() == (await stored(http, url, "chat11"))["content"] == "partial "
    assert not gate.is_set()


async def test_an_idle_reply_gets_keep_alive_comments(start_server, http):
    provider = ScriptedProvider("fake")
    script = provider.enqueue("a")
    gate = script.gate()
    script.text("b")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, http={"sse_heartbeat_s": 0.1}
    )
    reader = await post(http, url_of(server), body("chat12", user_message("hi")))
    await reader.until("text-delta")
    # Nothing else is sent while the provider waits: the next line is a comment.
    line = await asyncio.wait_for(reader.response.content.readline(), 10)
    assert line == b": keep-alive\n"
    reader.comments.append("keep-alive")
    assert reader.comments[0] == "keep-alive"
    gate.set()
    await reader.until_done()
    assert reader.text() == "ab"


async def test_a_long_client_history_keeps_its_newest_turns_within_the_prompt_budget(
    start_server, http
):
    provider = ScriptedProvider("fake")
    provider.enqueue("ok")
    server = await start_server(
        chain=["fake"], providers={"fake": provider}, limits={"max_prompt_chars": 100}
    )
    turns = []
    for i in range(6):
        turns += [user_message(f"question {i} " + "x" * 20, f"u{i}"), assistant_message("y" * 20)]
    await (await post(http, url_of(server), body("long", *turns, user_message("now")))).until_done()
    sent = provider.requests[0].messages
    assert sum(len(m.content) for m in sent) <= 100
    assert sent[0].role == "user"
    assert sent[0].content.startswith("question 5")
    assert (sent[-1].role, sent[-1].content) == ("user", "now")
